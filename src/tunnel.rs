//! TCP proxying: TCP listeners (opaque bytes, with TLS originated per the destination's
//! policy), TLS passthrough routed by the ClientHello's SNI, and the byte pump HTTP `CONNECT`
//! tunnels share. One access-log line per connection, Envoy style (`"- - -" 0`).
//!
//! The pump copies both directions at once with fixed 8 KiB buffers (memory does not grow with
//! the transfer), passes a half-close on (a client FIN becomes a TLS close_notify and FIN
//! upstream while the other direction keeps flowing), and closes connections that stay silent
//! in both directions for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::access_log::AccessRecord;
use crate::connect::{self, UpstreamIo};
use crate::error::{Flags, ProxyError};
use crate::metrics::{ClusterStats, RequestReport};
use crate::proxy::{ConnCtx, Runtime};
use crate::route::L4Routes;
use crate::upstream::{ClusterPool, ConnInfo};

/// How long a client may take to send its ClientHello (Envoy's listener filter timeout).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes read while looking for a complete ClientHello.
const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a TLS handshake record.
    NotTls,
    /// A ClientHello without a server_name extension.
    NoSni,
    /// The (lowercased) server name.
    Sni(String),
}

/// Parses the SNI out of the start of a TLS connection, reassembling a ClientHello that spans
/// several records. Every length is checked; malformed input is `NotTls`.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        // Each complete record was tried already: what is left is more to come, or not TLS.
        if rest.is_empty() {
            return Hello::Incomplete;
        }
        if rest[0] != 22 || rest.len() >= 2 && rest[1] != 3 {
            return Hello::NotTls;
        }
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        if rest.len() < 5 + len {
            // Enough for what we have? Try parsing the fragment we hold first.
            hs.extend_from_slice(&rest[5..]);
            return match parse_handshake(&hs) {
                Some(h) => h,
                None => Hello::Incomplete,
            };
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if let Some(h) = parse_handshake(&hs) {
            return h;
        }
    }
}

/// `None` = need more bytes.
fn parse_handshake(hs: &[u8]) -> Option<Hello> {
    if hs.len() < 4 {
        return None;
    }
    if hs[0] != 1 {
        return Some(Hello::NotTls);
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if hs.len() < 4 + len {
        return None;
    }
    let mut r = Reader(&hs[4..4 + len]);
    let parsed = (|| {
        r.skip(2)?; // client_version
        r.skip(32)?; // random
        let n = usize::from(r.u8()?);
        r.skip(n)?; // session id
        let n = usize::from(r.u16()?);
        r.skip(n)?; // cipher suites
        let n = usize::from(r.u8()?);
        r.skip(n)?; // compression methods
        if r.0.is_empty() {
            return Some(Hello::NoSni);
        }
        let n = usize::from(r.u16()?);
        let mut exts = Reader(r.take(n)?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let n = usize::from(exts.u16()?);
            let data = exts.take(n)?;
            if ty != 0 {
                continue;
            }
            let mut d = Reader(data);
            let n = usize::from(d.u16()?);
            let mut list = Reader(d.take(n)?);
            while !list.0.is_empty() {
                let kind = list.u8()?;
                let n = usize::from(list.u16()?);
                let name = list.take(n)?;
                if kind == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                        return None;
                    }
                    return Some(Hello::Sni(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return Some(Hello::NoSni);
        }
        Some(Hello::NoSni)
    })();
    Some(parsed.unwrap_or(Hello::NotTls))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Reads until the ClientHello is complete (or is clearly not one). Returns the bytes read
/// (to be replayed upstream) and the verdict.
pub async fn read_client_hello<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(Vec<u8>, Hello)> {
    let mut buf = Vec::with_capacity(2048);
    let fut = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before a complete ClientHello",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_client_hello(&buf) {
                Hello::Incomplete if buf.len() < MAX_HELLO => continue,
                Hello::Incomplete => return Ok(Hello::NotTls),
                h => return Ok(h),
            }
        }
    };
    match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, fut).await {
        Ok(Ok(h)) => Ok((buf, h)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no complete ClientHello within {}s",
                CLIENT_HELLO_TIMEOUT.as_secs()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The pump.

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

// ---------------------------------------------------------------------------------------------
// TCP and TLS-passthrough listeners.

/// Serves one connection accepted on a TCP or TLS-passthrough listener.
pub async fn serve(mut stream: TcpStream, ctx: ConnCtx, rt: Arc<Runtime>, l4: Arc<L4Routes>) {
    let mut rec = AccessRecord::new(ctx.local, ctx.remote, ctx.id);
    rec.http = false;
    let mut prefix = Vec::new();
    let mut sni = None;
    if let L4Routes::Sni { .. } = &*l4 {
        match read_client_hello(&mut stream).await {
            Ok((bytes, Hello::Sni(name))) => {
                prefix = bytes;
                rec.requested_server_name = Some(name.clone());
                sni = Some(name);
            }
            Ok((_, verdict)) => {
                let why = if verdict == Hello::NoSni {
                    "sni_missing:the_ClientHello_names_no_server;_egret_routes_TLS_passthrough_by_SNI"
                } else {
                    "not_tls:the_first_bytes_are_not_a_TLS_ClientHello"
                };
                return refuse(&rt, rec, why);
            }
            Err(e) => {
                let why = format!(
                    "client_hello_unread:{}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join("_")
                );
                return refuse(&rt, rec, &why);
            }
        }
    }
    let Some((cluster, route_name)) = l4.pick(sni.as_deref()) else {
        let why = format!(
            "sni_not_allowed:no_route_or_declared_host_for_'{}'",
            sni.as_deref().unwrap_or("-")
        );
        return refuse(&rt, rec, &why);
    };
    rec.route_name = route_name;
    let Some(pool) = rt.pools.get(cluster).cloned() else {
        return refuse(&rt, rec, "cluster_missing");
    };
    let (host, port, originate) = match &*l4 {
        L4Routes::Sni { port, .. } => (sni.clone().unwrap_or_default(), *port, false),
        L4Routes::Tcp { .. } => (pool.cluster.host.clone(), pool.cluster.port, true),
    };
    let _ = stream.set_nodelay(true);
    splice(&rt, stream, &prefix, &pool, &host, port, originate, rec).await;
}

/// Connects upstream, pumps, and writes the connection's log line and metrics.
#[allow(clippy::too_many_arguments)]
async fn splice(
    rt: &Arc<Runtime>,
    down: TcpStream,
    prefix: &[u8],
    pool: &Arc<ClusterPool>,
    host: &str,
    port: u16,
    originate_tls: bool,
    mut rec: AccessRecord,
) {
    rec.upstream_cluster = Some(pool.cluster_name());
    let open = pool.open_stream(&rt.upstream, host, port, originate_tls);
    let (up, conn) = tokio::select! {
        r = open => match r {
            Ok(c) => c,
            Err(e) => return fail(rt, rec, pool, host, &e),
        },
        // The client went away while egret was still connecting: Envoy's DC.
        () = closed(&down) => {
            rec.flags |= Flags::DC;
            rec.termination_details = Some("downstream_closed_while_connecting_upstream".into());
            return finish(rt, rec, Some(pool), host);
        }
    };
    pool.stats.cx_active.fetch_add(1, Ordering::Relaxed);
    record_upstream(&mut rec, &conn);
    let server = format!("{host}:{port}");
    let r = pump(
        down,
        prefix,
        up,
        pool,
        &conn,
        &server,
        pool.cluster.tcp_idle_timeout,
    )
    .await;
    pool.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    rec.bytes_received = r.downstream_read;
    rec.bytes_sent = r.downstream_written;
    rec.flags |= r.flags;
    rec.transport_failure = r.transport_failure;
    rec.termination_details = r.termination;
    finish(rt, rec, Some(pool), host);
}

/// Resolves when the client closes or resets the connection without sending anything more;
/// never when it sends data (that waits in the socket for the pump).
async fn closed(s: &TcpStream) {
    let mut b = [0u8; 1];
    match s.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// The upstream connection's facts for the log.
pub fn record_upstream(rec: &mut AccessRecord, conn: &ConnInfo) {
    rec.upstream_host = Some(conn.transport.remote);
    rec.upstream_local = Some(conn.transport.local);
    rec.upstream_tls = conn.transport.tls.clone();
    rec.upstream_conn_id = Some(conn.id);
    rec.attempts = 1;
}

/// A connection refused before anything was sent upstream (`NR`).
fn refuse(rt: &Arc<Runtime>, mut rec: AccessRecord, why: &str) {
    rec.flags |= Flags::NR;
    rec.details = Some("filter_chain_not_found".into());
    rec.termination_details = Some(why.to_string());
    tracing::debug!(remote = %rec.downstream_remote, "TCP connection refused: {why}");
    finish(rt, rec, None, "");
}

/// The upstream could not be reached.
fn fail(rt: &Arc<Runtime>, mut rec: AccessRecord, pool: &ClusterPool, host: &str, e: &ProxyError) {
    rec.flags |= e.flags();
    rec.transport_failure = e.transport_failure_reason();
    if rec.transport_failure.is_none() {
        rec.termination_details = Some(format!(
            "{}:{}",
            e.code(),
            underscored(e.body().lines().last().unwrap_or_default())
        ));
    }
    if let ProxyError::Connect(c) = e {
        rec.upstream_host = Some(c.addr);
        rec.attempts = c.attempts;
    }
    tracing::debug!(cluster = %pool.cluster.name, code = e.code(), "TCP upstream failed");
    finish(rt, rec, Some(pool), host);
}

/// Text for a log field that is not quoted: words joined with `_`, no double quotes.
pub fn underscored(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .replace('"', "'")
}

/// Writes the log line and the istio_tcp_* metrics.
fn finish(rt: &Arc<Runtime>, mut rec: AccessRecord, pool: Option<&ClusterPool>, host: &str) {
    let end = Instant::now();
    rec.end = Some(end);
    let (svc, ns) = match pool {
        Some(p) => p.destination(host),
        None => (Arc::from("unknown"), Arc::from("unknown")),
    };
    rt.metrics.record_request(RequestReport {
        destination_service: &svc,
        destination_namespace: &ns,
        code: 0,
        flags: rec.flags,
        duration: end.saturating_duration_since(rec.start_instant),
        request_bytes: rec.bytes_received,
        response_bytes: rec.bytes_sent,
        tcp: true,
    });
    rt.access_log.log(&rec);
}

#[cfg(test)]
mod tests {
    use super::{Hello, parse_client_hello};
    use std::sync::Arc;

    /// A real ClientHello from rustls for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), sn).expect("conn");
        let mut out = Vec::new();
        c.write_tls(&mut out).expect("write");
        out
    }

    #[test]
    fn finds_sni_in_a_real_client_hello() {
        let hello = client_hello("API.example.com");
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Sni("api.example.com".into())
        );
        // Every prefix is incomplete, never a wrong verdict or a panic.
        for n in 0..hello.len() {
            assert_eq!(parse_client_hello(&hello[..n]), Hello::Incomplete, "{n}");
        }
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let hello = client_hello("kafka-1.example.com");
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            parse_client_hello(&split),
            Hello::Sni("kafka-1.example.com".into())
        );
    }

    #[test]
    fn no_sni_and_not_tls() {
        assert_eq!(parse_client_hello(&client_hello("10.0.0.1")), Hello::NoSni);
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse_client_hello(b"\x16\x03\x01\x00\x00"), Hello::NotTls);
        // Corrupt lengths inside a complete record: NotTls, not a panic.
        let mut bad = client_hello("a.example.com");
        for i in 5..bad.len().min(120) {
            let saved = bad[i];
            bad[i] = 0xff;
            let _ = parse_client_hello(&bad);
            bad[i] = saved;
        }
    }
}
