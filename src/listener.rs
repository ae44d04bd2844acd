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
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::limit::{Admission, ConnLimit};
use crate::http::server::{self, HEADER_READ_TIMEOUT, stopped};
use crate::proxy;
use crate::runtime::{ConnCtx, Runtime};

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

/// What a listener limits downstream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest request head (bytes; `431` past it).
    pub max_head: usize,
    /// Open connections (`--max-connections`); `None`: unlimited.
    pub max_connections: Option<usize>,
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish their
/// in-flight requests (keep-alive connections are closed after their current response) for up
/// to `drain`. At `limits.max_connections` open, a new connection closes the longest-idle
/// HTTP/1 keep-alive connection, or is closed at once if none is idle
/// (`envoy_listener_downstream_cx_overflow`).
pub async fn serve_http(
    listener: TcpListener,
    key: Arc<str>,
    name: String,
    state: Arc<ArcSwap<Runtime>>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: Limits,
) {
    let stats = state.load().metrics.listener(&name);
    let builders = Arc::new(Builders::new(limits.max_head));
    let limit = limits.max_connections.map(|n| ConnLimit::new(&name, n));
    // Open connections of every kind, and the signal that asks them to finish (HTTP connections
    // close after their current response; TCP connections run until they end or the deadline).
    let open = Arc::new(AtomicUsize::new(0));
    let (stop_conns, conns_stopped) = watch::channel(false);
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
                let slot = match limit.as_ref().map(ConnLimit::admit) {
                    None => None,
                    Some(Admission::Admitted(s) | Admission::MadeRoom(s)) => Some(s),
                    Some(Admission::Refused) => {
                        // Envoy closes the socket at once; so does egret (a FIN, nothing read).
                        stats.downstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(remote);
                let mut ctx = ConnCtx {
                    local,
                    remote,
                    id: NEXT_DOWNSTREAM_ID.fetch_add(1, Ordering::Relaxed),
                    listener: key.clone(),
                    sni: None,
                    original_dst: None,
                };
                let (acceptor, l4, captured) = {
                    let rt = state.load();
                    match rt.listener(&key) {
                        Some((i, l)) => (
                            rt.listener_tls.get(i).cloned().flatten(),
                            l.l4.clone(),
                            l.routes.captured.is_some(),
                        ),
                        None => (None, None, false),
                    }
                };
                // Redirected by the capture rules: the original destination decides.
                if captured && let Some(orig) = crate::capture::original_destination(&stream, local) {
                    ctx.local = orig;
                    ctx.original_dst = Some(orig);
                }
                stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
                stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
                let cx_stats = stats.clone();
                let guard = OpenGuard::new(&open);
                if let Some(l4) = l4 {
                    let rt = state.load_full();
                    tokio::spawn(async move {
                        let _active = ActiveGuard(cx_stats);
                        let _open = guard;
                        let _slot = slot;
                        proxy::tcp::serve(stream, ctx, rt, l4).await;
                    });
                    continue;
                }
                let state = state.clone();
                let builders = builders.clone();
                let stop = conns_stopped.clone();
                tokio::spawn(async move {
                    let _active = ActiveGuard(cx_stats);
                    let _open = guard;
                    // Held until the connection ends, whoever serves it; only egret's HTTP/1
                    // loop marks it idle between requests.
                    let slot = slot;
                    if let Some(orig) = ctx.original_dst {
                        let rt = state.load_full();
                        if let Some(seen) = sniff_captured(&stream, &rt, &ctx, orig).await {
                            proxy::captured::serve(stream, ctx, rt, orig, seen).await;
                            return;
                        }
                    }
                    match acceptor {
                        None => serve_plain(stream, ctx, state, builders, stop, slot).await,
                        Some(acc) => {
                            Box::pin(serve_tls(acc, stream, ctx, state, builders, stop)).await;
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = stop_conns.send(true);
    let all_done = async {
        while open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        tracing::warn!("drain deadline reached with connections still open; closing them");
    }
}

/// The HTTP/1.1 and HTTP/2 server settings of a listener.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// The request-head limit, for egret's own HTTP/1 loop.
    max_head: usize,
}

impl Builders {
    /// `max_head`: the largest request head (bytes); hyper answers `431` past it. hyper's read
    /// buffer is at least 8 KiB, so that is the smallest limit.
    fn new(max_head: usize) -> Builders {
        let max_head = max_head.max(8 * 1024);
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_buf_size(max_head);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Rapid reset (CVE-2023-44487): a client that resets more than 20 streams the server
        // has not yet accepted gets GOAWAY (ENHANCE_YOUR_CALM). h2's default, set here so it
        // stays one (tests/h2_rapid_reset.rs).
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(20);
        Builders { h1, h2, max_head }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// Serves a plaintext HTTP connection: h2c by prior knowledge, else egret's own HTTP/1 loop
/// (hyper takes over for what it does not do).
async fn serve_plain(
    stream: tokio::net::TcpStream,
    ctx: ConnCtx,
    state: Arc<ArcSwap<Runtime>>,
    builders: Arc<Builders>,
    mut stop: watch::Receiver<bool>,
    slot: Option<crate::http::limit::ConnSlot>,
) {
    if is_h2c(&stream).await {
        Box::pin(serve_conn(stream, Proto::H2, ctx, state, builders, stop)).await;
        return;
    }
    let handle = |req| proxy::handle(state.load_full(), &ctx, req);
    if let Some(rest) =
        server::serve(stream, handle, &mut stop, builders.max_head, slot.as_ref()).await
    {
        Box::pin(serve_conn(
            rest.into_io(),
            Proto::H1,
            ctx,
            state,
            builders,
            stop,
        ))
        .await;
    }
}

/// How long a redirected connection may stay silent before it is taken for a server-first
/// protocol (opaque TCP), as Envoy's listener-filter timeout with
/// `continue_on_listener_filters_timeout`.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// Envoy's http_inspector and tls_inspector on a redirected connection: `None` for HTTP
/// (served as HTTP, routed by Host and the original port), else TLS or opaque. A destination a
/// TCP ServiceEntry declares, and egret's own address, are not sniffed: a server-first
/// protocol must not wait for bytes that never come.
async fn sniff_captured(
    stream: &tokio::net::TcpStream,
    rt: &Runtime,
    ctx: &ConnCtx,
    orig: SocketAddr,
) -> Option<proxy::captured::Sniffed> {
    use crate::route::CapturedMatch;
    use proxy::captured::Sniffed;
    let declared_tcp = rt
        .listener(&ctx.listener)
        .and_then(|(_, l)| l.routes.captured.as_ref())
        .is_some_and(|t| matches!(t.lookup(orig), CapturedMatch::Tcp(_)));
    if declared_tcp || proxy::captured::own_address(rt, orig) {
        return Some(Sniffed::Opaque);
    }
    let mut buf = [0u8; 16];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Some(Sniffed::Opaque),
            Err(_) => return Some(Sniffed::Opaque),
        };
        if n == 0 {
            return Some(Sniffed::Opaque);
        }
        if buf[0] == 0x16 {
            return Some(Sniffed::Tls);
        }
        match looks_like_http(&buf[..n]) {
            Some(true) => return None,
            Some(false) => return Some(Sniffed::Opaque),
            // Too few bytes to tell: wait for more (peek returns at once while data is queued).
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Whether the first bytes are an HTTP/1 request line's method and space (or the h2c
/// preface); `None` while a prefix of one.
fn looks_like_http(b: &[u8]) -> Option<bool> {
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
        b"PRI * HTTP/2.0",
    ];
    let mut partial = false;
    for s in STARTS {
        let k = s.len().min(b.len());
        if b[..k] == s[..k] {
            if k == s.len() {
                return Some(true);
            }
            partial = true;
        }
    }
    if partial { None } else { Some(false) }
}

/// Whether a plaintext connection starts with the HTTP/2 preface (h2c with prior knowledge).
/// Decided from the first bytes without consuming them: only a connection starting with `P`
/// (POST, PUT, PATCH or the preface's PRI) needs more than one byte. Choosing the protocol
/// here, instead of hyper-util's auto-detecting connection, saves ~5 KiB per idle connection.
async fn is_h2c(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            // Closed, failed or silent: HTTP/1 handling reports it as usual.
            _ => return false,
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A partial preface: wait for more bytes (peek returns at once while data is queued).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Counts a listener's open connections (for the drain).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: &Arc<AtomicUsize>) -> OpenGuard {
        count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(count.clone())
    }
}

impl Drop for OpenGuard {
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

/// Terminates TLS on an accepted connection and serves HTTP/1.1 or HTTP/2 (by ALPN) on it.
async fn serve_tls(
    acc: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    mut ctx: ConnCtx,
    state: Arc<ArcSwap<Runtime>>,
    builders: Arc<Builders>,
    stop: watch::Receiver<bool>,
) {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
        Ok(Ok(tls)) => {
            let session = tls.get_ref().1;
            ctx.sni = session.server_name().map(Arc::from);
            let proto = if session.alpn_protocol() == Some(b"h2") {
                Proto::H2
            } else {
                Proto::H1
            };
            serve_conn(tls, proto, ctx, state, builders, stop).await;
        }
        Ok(Err(e)) => tracing::debug!(remote = %ctx.remote, "downstream TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(remote = %ctx.remote, "downstream TLS handshake timed out"),
    }
}

/// Serves HTTP on one accepted connection (plain or TLS) until it closes; when `stop` turns
/// true it finishes the request in flight and closes (keep-alive connections close at once).
async fn serve_conn<IO>(
    io: IO,
    proto: Proto,
    ctx: ConnCtx,
    state: Arc<ArcSwap<Runtime>>,
    builders: Arc<Builders>,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let rt = svc_state.load_full();
        let ctx = svc_ctx.clone();
        // Boxed: hyper keeps the service future's allocation for the connection's lifetime
        // (in_flight), so an idle keep-alive connection would hold the whole request state
        // machine. Boxing it per request costs one allocation and keeps idle connections small.
        async move { Ok::<_, Infallible>(Box::pin(proxy::handle(rt, &ctx, req.map(Some))).await) }
    });
    let io = TokioIo::new(io);
    let result = match proto {
        Proto::H1 => {
            let conn = builders.h1.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Proto::H2 => {
            let conn = builders.h2.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result
        && e.is_parse()
    {
        proxy::log_codec_error(&state.load().access_log, &ctx, &e);
    }
}
