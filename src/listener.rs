//! Listeners: bind (fail fast), accept, and serve each connection with hyper (HTTP/1.1 with
//! keep-alive, and h2c by prior knowledge). Knows nothing about routing: each request goes to
//! `proxy::handle` with the runtime current when it arrives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{self, ConnCtx, Runtime};

static NEXT_DOWNSTREAM_ID: AtomicU64 = AtomicU64::new(1);

/// Binds a listening socket with SO_REUSEADDR (so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish their
/// in-flight requests (keep-alive connections are closed after their current response) for up
/// to `drain`.
pub async fn serve_http(
    listener: TcpListener,
    key: Arc<str>,
    name: String,
    state: Arc<ArcSwap<Runtime>>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let stats = state.load().metrics.listener(&name);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .max_buf_size(256 * 1024);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let l4_active = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(remote);
                let ctx = ConnCtx {
                    local,
                    remote,
                    id: NEXT_DOWNSTREAM_ID.fetch_add(1, Ordering::Relaxed),
                    listener: key.clone(),
                    sni: None,
                };
                let (acceptor, l4) = {
                    let rt = state.load();
                    match rt.listener(&key) {
                        Some((i, l)) => (rt.listener_tls.get(i).cloned().flatten(), l.l4.clone()),
                        None => (None, None),
                    }
                };
                stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
                stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
                let cx_stats = stats.clone();
                if let Some(l4) = l4 {
                    let rt = state.load_full();
                    let guard = L4Guard::new(&l4_active);
                    tokio::spawn(async move {
                        let _active = ActiveGuard(cx_stats);
                        let _l4 = guard;
                        crate::tunnel::serve(stream, ctx, rt, l4).await;
                    });
                    continue;
                }
                let watcher = graceful.watcher();
                let state = state.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _active = ActiveGuard(cx_stats);
                    match acceptor {
                        None => serve_conn(stream, ctx, state, builder, watcher).await,
                        Some(acc) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let mut ctx = ctx;
                                    ctx.sni = tls.get_ref().1.server_name().map(Arc::from);
                                    serve_conn(tls, ctx, state, builder, watcher).await;
                                }
                                Ok(Err(e)) => tracing::debug!(remote = %ctx.remote, "downstream TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!(remote = %ctx.remote, "downstream TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // TCP connections have no request boundary to stop at: they run until they end or the
    // drain deadline, as in Envoy.
    let l4_done = async {
        while l4_active.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(drain, async { tokio::join!(graceful.shutdown(), l4_done) })
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with connections still open; closing them");
    }
}

/// Counts a listener's open TCP connections (for the drain).
struct L4Guard(Arc<AtomicUsize>);

impl L4Guard {
    fn new(count: &Arc<AtomicUsize>) -> L4Guard {
        count.fetch_add(1, Ordering::Relaxed);
        L4Guard(count.clone())
    }
}

impl Drop for L4Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Decrements the listener's active connections when a connection ends.
struct ActiveGuard(Arc<crate::metrics::ListenerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP on one accepted connection (plain or TLS).
async fn serve_conn<IO>(
    io: IO,
    ctx: ConnCtx,
    state: Arc<ArcSwap<Runtime>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let rt = svc_state.load_full();
        let ctx = svc_ctx.clone();
        // Boxed: hyper keeps the service future's allocation for the connection's lifetime
        // (in_flight), so an idle keep-alive connection would hold the whole request state
        // machine. Boxing it per request costs one allocation and keeps idle connections small.
        async move { Ok::<_, Infallible>(Box::pin(proxy::handle(rt, &ctx, req)).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await
        && let Some(he) = e.downcast_ref::<hyper::Error>()
        && he.is_parse()
    {
        proxy::log_codec_error(&state.load().access_log, &ctx, he);
    }
}
