//! The byte pump that TCP listeners and HTTP `CONNECT` tunnels share.
//!
//! It copies both directions at once with fixed 8 KiB buffers (memory does not grow with the
//! transfer), passes a half-close on (a client FIN becomes a TLS close_notify and FIN upstream
//! while the other direction keeps flowing), and closes connections that stay silent in both
//! directions for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::access_log::AccessRecord;
use crate::error::Flags;
use crate::metrics::ClusterStats;
use crate::tls::UpstreamIo;
use crate::upstream::connect;
use crate::upstream::{ClusterPool, ConnInfo};

/// Counts bytes and activity on one side, records whether that side failed, and (upstream TLS)
/// treats a missing close_notify as an ordinary end of stream.
struct Side<S> {
    io: S,
    read: u64,
    written: u64,
    activity: Arc<AtomicU64>,
    epoch: Instant,
    error: Option<SideError>,
    /// The peer sent its FIN (a read returned end of stream).
    eof: bool,
    /// Upstream only: the cluster's byte counters.
    stats: Option<Arc<ClusterStats>>,
}

impl<S> Side<S> {
    fn new(
        io: S,
        activity: Arc<AtomicU64>,
        epoch: Instant,
        stats: Option<Arc<ClusterStats>>,
    ) -> Self {
        Side {
            io,
            read: 0,
            written: 0,
            activity,
            epoch,
            error: None,
            eof: false,
            stats,
        }
    }

    fn touch(&self) {
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Keeps the first failure: its text, and the TLS error inside it if there is one (the
    /// io::Error itself goes to the copy loop).
    fn fail(&mut self, e: &io::Error) {
        if self.error.is_none() {
            let tls = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .cloned();
            self.error = Some(SideError {
                text: e.to_string(),
                tls,
            });
        }
    }
}

struct SideError {
    text: String,
    tls: Option<rustls::Error>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Side<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n == 0 && buf.remaining() > 0 {
                    this.eof = true;
                }
                this.read += n;
                if let Some(s) = &this.stats {
                    s.cx_rx_bytes.fetch_add(n, Ordering::Relaxed);
                }
                this.touch();
                Poll::Ready(Ok(()))
            }
            // A peer that closes TCP without close_notify: the data it sent is complete as far
            // as TCP says; treat it as the end of the stream, as Envoy does.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                this.eof = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.fail(&e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Side<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written += n as u64;
                if let Some(s) = &this.stats {
                    s.cx_tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                this.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                this.fail(&e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => {
                this.fail(&e);
                Poll::Ready(Err(e))
            }
            p => p,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            // The peer already went away: nothing left to tell it.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                this.fail(&e);
                Poll::Ready(Err(e))
            }
            p => p,
        }
    }
}

/// How a spliced connection ended.
#[derive(Debug, Default)]
pub struct PumpResult {
    /// Bytes read from / written to the downstream.
    pub downstream_read: u64,
    pub downstream_written: u64,
    pub flags: Flags,
    pub transport_failure: Option<String>,
    pub termination: Option<String>,
}

/// Copies both ways between `down` and `up` until both directions are done, one side fails,
/// or nothing moves for `idle`. `prefix` (bytes already read from the client, such as a
/// ClientHello) is sent upstream first.
pub async fn pump<D>(
    down: D,
    prefix: &[u8],
    up: UpstreamIo,
    pool: &ClusterPool,
    conn: &ConnInfo,
    server: &str,
    idle: Duration,
) -> PumpResult
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut down = Side::new(down, activity.clone(), epoch, None);
    let mut up = Side::new(up, activity.clone(), epoch, Some(pool.stats.clone()));
    let mut out = PumpResult::default();

    if !prefix.is_empty()
        && let Err(e) = up.write_all(prefix).await
    {
        up.fail(&e);
    }
    let copied = if up.error.is_some() {
        Some(Err(()))
    } else {
        let watchdog = async {
            loop {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                let since = epoch.elapsed().saturating_sub(last);
                if since >= idle {
                    return;
                }
                tokio::time::sleep(idle - since).await;
            }
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut down, &mut up) => Some(r.map(|_| ()).map_err(|_| ())),
            () = watchdog => None,
        }
    };
    out.downstream_read = down.read;
    out.downstream_written = down.written;
    match copied {
        None => {
            out.flags |= Flags::UT;
            out.termination = Some(format!(
                "idle_timeout:no_bytes_in_either_direction_for_{}",
                crate::error::humanize(idle).replace(' ', "_")
            ));
        }
        Some(Ok(())) => {}
        Some(Err(_)) => {
            if let Some(e) = up.error.take() {
                // A TLS failure after the handshake (a TLS 1.3 server rejecting our client
                // certificate when it reads it) is a connection failure with its reason.
                let tls = e.tls.as_ref().and_then(|t| {
                    connect::tls_failure_in(
                        t,
                        pool.tls.as_deref(),
                        conn.transport.tls.as_deref(),
                        server,
                    )
                });
                match tls {
                    Some(t) => {
                        pool.stats
                            .ssl_connection_error
                            .fetch_add(1, Ordering::Relaxed);
                        out.flags |= Flags::UF;
                        out.transport_failure = Some(t.to_string());
                    }
                    // A reset after the upstream's own FIN is the end of an ordinary close.
                    None if up.eof => {}
                    None => {
                        out.flags |= Flags::UC;
                        out.termination = Some(format!("upstream_reset:{}", underscored(&e.text)));
                    }
                }
            } else if let Some(e) = down.error.take() {
                // A client that resets instead of closing: Envoy's tcp_proxy treats it as an
                // ordinary close (no flag). Clients do this routinely (closing a socket with
                // unread TLS session tickets sends RST), so only the details record it.
                out.termination = Some(format!("downstream_reset:{}", underscored(&e.text)));
            }
        }
    }
    // Best effort: tell both peers we are done.
    let _ = tokio::time::timeout(Duration::from_secs(1), down.io.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), up.io.shutdown()).await;
    out
}

/// The upstream connection's facts for the log.
pub fn record_upstream(rec: &mut AccessRecord, conn: &ConnInfo) {
    rec.upstream_host = Some(conn.transport.remote);
    rec.upstream_local = Some(conn.transport.local);
    rec.upstream_tls = conn.transport.tls.clone();
    rec.upstream_conn_id = Some(conn.id);
    rec.attempts = 1;
}

/// Text for a log field that is not quoted: words joined with `_`, no double quotes.
pub fn underscored(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .replace('"', "'")
}
