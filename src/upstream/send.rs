//! One HTTP request to a cluster: the address to try, a pooled connection or a new one, egret's
//! own HTTP/1.1 client for a bodiless request or hyper's for one with a body, and the failure
//! mapped to Envoy's taxonomy with the connection it happened on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::http::body::{RequestBody, UpstreamBody};
use crate::http::client::{ActiveGuard, ExchangeError, RawConn};
use crate::http::wire::recycle_header_map;

use crate::tls::UpstreamIo;

use super::connect::{self, Transport};
use super::dial::{DialError, new_conn};
use super::pool::{ClusterPool, ConnInfo, Idle, IdleConn, Lease};

/// A successful exchange: the response head arrived. The lease goes back to the pool when the
/// response (and request) bodies are complete.
pub struct Exchange {
    pub response: http::Response<UpstreamBody>,
    pub conn: Arc<ConnInfo>,
    pub lease: Lease,
}

/// How a request fared over all its attempts: the exchange or the last failure, how many
/// attempts were made, and the flags the retries add (`URX`, `UO`).
pub struct Sent {
    pub result: Result<Exchange, SendError>,
    pub attempts: u32,
    pub flags: crate::error::Flags,
}

/// A failed exchange, with the connection it failed on (if any) for the access log.
pub struct SendError {
    pub error: ProxyError,
    pub conn: Option<Arc<ConnInfo>>,
    /// The request, when none of it went out (a failed connect): another attempt can send it.
    pub unsent: Option<Box<Request<RequestBody>>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        SendError {
            error,
            conn: None,
            unsent: None,
        }
    }
}

/// `$f.await` within the per-try timeout `$t` when there is one (`None`: it ran out first).
/// A macro, not a function: without a timeout the future is awaited as is, with no wrapper
/// future to build and move on the hot path.
macro_rules! within {
    ($t:expr, $f:expr) => {
        match $t {
            None => Some($f.await),
            Some(t) => tokio::time::timeout(t, $f).await.ok(),
        }
    };
}

/// What every attempt of one request shares.
pub(super) struct Attempt<'a> {
    /// The pool key's host ("" for fixed-host clusters).
    pub(super) host_key: &'a str,
    /// The host and port failures name.
    pub(super) target: (&'a str, u16),
    /// Whether egret's own client takes the request (it has no body).
    pub(super) relay: bool,
    /// `perTryTimeout`: from the moment the attempt has a connection (as Envoy's, which starts
    /// it when the pool is ready) to the response head.
    pub(super) per_try: Option<Duration>,
    /// `x-envoy-attempt-count` goes on the request (the route has retries), and the number
    /// of the attempt under way, set by the retry loop before each one.
    pub(super) stamp: bool,
    pub(super) number: std::sync::atomic::AtomicU32,
}

static X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");

impl Attempt<'_> {
    /// `x-envoy-attempt-count` as a header line for egret's own client: written straight into
    /// the request head, with no header-map insert (static for the usual counts).
    fn attempt_line(&self) -> std::borrow::Cow<'static, [u8]> {
        if !self.stamp {
            return std::borrow::Cow::Borrowed(b"");
        }
        match self.number.load(Ordering::Relaxed) {
            1 => std::borrow::Cow::Borrowed(b"x-envoy-attempt-count: 1\r\n"),
            2 => std::borrow::Cow::Borrowed(b"x-envoy-attempt-count: 2\r\n"),
            3 => std::borrow::Cow::Borrowed(b"x-envoy-attempt-count: 3\r\n"),
            n => std::borrow::Cow::Owned(format!("x-envoy-attempt-count: {n}\r\n").into_bytes()),
        }
    }

    /// The same header in the request's map, for hyper's client (requests with a body).
    fn stamp_map(&self, req: &mut Request<RequestBody>) {
        if self.stamp {
            let n = self.number.load(Ordering::Relaxed);
            req.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), http::HeaderValue::from(n));
        }
    }
}

/// How the pooled connections of one address answered.
enum Pooled {
    /// One took the request (or failed in a way no other connection would fix).
    Done(Result<Exchange, SendError>),
    /// None could take it: the request, still unsent.
    NoneLeft(Request<RequestBody>),
}

impl ClusterPool {
    /// One attempt of `req` on `addr`: a pooled connection first, else a new one, waiting for
    /// a free connection slot when `maxConnections` are all busy (the pending queue). A request
    /// that never went out comes back in the error, for another attempt.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        to: &Attempt<'_>,
        addr: SocketAddr,
        host: &str,
        mut req: Request<RequestBody>,
    ) -> Result<Exchange, SendError> {
        let mut waited = false;
        let _slot = loop {
            req = match self.send_pooled(to, addr, req).await {
                Pooled::Done(result) => return result,
                Pooled::NoneLeft(req) => req,
            };
            if let Some(slot) = self.reserve_connection() {
                break slot;
            }
            // Boxed: the rare paths' futures would otherwise enlarge (and be copied with)
            // every request's future.
            if let Err(error) = Box::pin(self.wait_for_slot(&mut waited)).await {
                return Err(SendError {
                    error,
                    conn: None,
                    unsent: None,
                });
            }
        };
        Box::pin(self.dial_and_send(to, addr, host, req)).await
    }

    /// A new connection to `addr` and the exchange on it.
    async fn dial_and_send(
        self: &Arc<Self>,
        to: &Attempt<'_>,
        addr: SocketAddr,
        host: &str,
        req: Request<RequestBody>,
    ) -> Result<Exchange, SendError> {
        match self.dial(addr, host, true).await {
            Err(DialError::Fatal(e)) => Err(e.into()),
            Err(DialError::Attempt(e)) => Err(SendError {
                error: self.connect_failure(host, Some((addr, e)), 1),
                conn: None,
                unsent: Some(Box::new(req)),
            }),
            Ok((io, transport)) => self.send_new(to, addr, io, transport, req).await,
        }
    }

    /// Tries the pooled connections to `addr`, newest first, until one answers. A connection
    /// found closed (stale) is dropped and the next one tried; the request comes back when no
    /// pooled connection could take it.
    async fn send_pooled(
        self: &Arc<Self>,
        to: &Attempt<'_>,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Pooled {
        while let Some((idle, lease)) = self.checkout(to.host_key, addr) {
            if idle.since.elapsed() > self.cluster.idle_timeout {
                self.stats.cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let IdleConn { kind, conn, .. } = idle;
            conn.requests.fetch_add(1, Ordering::Relaxed);
            let mut sender = match kind {
                Idle::Relay(raw) if to.relay => {
                    let Some(r) = within!(
                        to.per_try,
                        self.relay(raw, lease, &conn, &req, &to.attempt_line())
                    ) else {
                        return Pooled::Done(Err(self.per_try_timeout(to, &conn)));
                    };
                    match r {
                        Ok(x) => {
                            recycle_header_map(req.into_parts().0.headers);
                            return Pooled::Done(Ok(x));
                        }
                        // Closed under us before answering: another connection may serve a
                        // request that is safe to repeat.
                        Err(e) if e.nothing_received() && is_idempotent(req.method()) => {
                            self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => {
                            return Pooled::Done(Err(self.exchange_error(
                                &e,
                                e.is_protocol(),
                                &conn,
                                to.target,
                            )));
                        }
                    }
                }
                Idle::Relay(raw) => match self.start_hyper(raw, conn.id).await {
                    Ok(s) => s,
                    Err(_) => {
                        self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
                Idle::Hyper(sender) => sender,
            };
            match tokio::time::timeout(Duration::from_secs(5), sender.ready()).await {
                Ok(Ok(())) => {}
                _ => {
                    self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            to.stamp_map(&mut req);
            let Some(r) = within!(to.per_try, sender.try_send_request(req)) else {
                return Pooled::Done(Err(self.per_try_timeout(to, &conn)));
            };
            match r {
                Ok(response) => {
                    return Pooled::Done(Ok(Exchange {
                        response: response.map(UpstreamBody::Hyper),
                        conn,
                        lease: lease.with_idle(Idle::Hyper(sender)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection closed under us; try another one.
                    Some(r) => {
                        self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                        req = r;
                    }
                    None => {
                        let e = e.into_error();
                        return Pooled::Done(Err(self.exchange_error(
                            &e,
                            is_parse(&e),
                            &conn,
                            to.target,
                        )));
                    }
                },
            }
        }
        Pooled::NoneLeft(req)
    }

    /// The exchange on a connection just opened to `addr`.
    async fn send_new(
        self: &Arc<Self>,
        to: &Attempt<'_>,
        addr: SocketAddr,
        io: UpstreamIo,
        transport: Transport,
        mut req: Request<RequestBody>,
    ) -> Result<Exchange, SendError> {
        let conn = new_conn(transport);
        let raw = RawConn::new(io, ActiveGuard::new(&self.stats));
        if to.relay {
            self.mark_active(to.host_key, addr, 1);
            let lease = Lease::new(self.clone(), to.host_key, addr, conn.clone());
            let Some(r) = within!(
                to.per_try,
                self.relay(raw, lease, &conn, &req, &to.attempt_line())
            ) else {
                return Err(self.per_try_timeout(to, &conn));
            };
            return match r {
                Ok(x) => Ok(x),
                Err(e) => Err(self.exchange_error(&e, e.is_protocol(), &conn, to.target)),
            };
        }
        let mut sender = match self.start_hyper(raw, conn.id).await {
            Ok(s) => s,
            Err(e) => {
                return Err(self.exchange_error(&e, is_parse(&e), &conn, to.target));
            }
        };
        self.mark_active(to.host_key, addr, 1);
        let lease = Lease::new(self.clone(), to.host_key, addr, conn.clone());
        to.stamp_map(&mut req);
        let Some(r) = within!(to.per_try, sender.try_send_request(req)) else {
            return Err(self.per_try_timeout(to, &conn));
        };
        match r {
            Ok(response) => Ok(Exchange {
                response: response.map(UpstreamBody::Hyper),
                conn,
                lease: lease.with_idle(Idle::Hyper(sender)),
            }),
            Err(e) => {
                let e = e.into_error();
                Err(self.exchange_error(&e, is_parse(&e), &conn, to.target))
            }
        }
    }

    /// One exchange through egret's own client. The lease (and with it the connection) comes
    /// back through the response body.
    async fn relay(
        &self,
        raw: RawConn,
        lease: Lease,
        conn: &Arc<ConnInfo>,
        req: &Request<RequestBody>,
        extra: &[u8],
    ) -> Result<Exchange, ExchangeError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (head, body) = raw.send(req.method(), path, req.headers(), extra).await?;
        let mut response = http::Response::new(UpstreamBody::Relay(body));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(Exchange {
            response,
            conn: conn.clone(),
            lease,
        })
    }

    /// Hands a connection to hyper's client (a request with a body).
    async fn start_hyper(
        &self,
        raw: RawConn,
        id: u64,
    ) -> Result<http1::SendRequest<RequestBody>, hyper::Error> {
        let (io, active) = raw.into_parts();
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(1 << 20)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(conn = id, "upstream connection ended: {e}");
            }
            drop(active);
        });
        Ok(sender)
    }

    /// `perTryTimeout` fired on `conn` (logged as the upstream host, as Envoy does).
    fn per_try_timeout(&self, to: &Attempt<'_>, conn: &Arc<ConnInfo>) -> SendError {
        self.stats
            .rq_per_try_timeout
            .fetch_add(1, Ordering::Relaxed);
        SendError {
            error: ProxyError::PerTryTimeout(to.per_try.unwrap_or_default()),
            conn: Some(conn.clone()),
            unsent: None,
        }
    }

    /// Maps a failure after the connection was established.
    fn exchange_error(
        &self,
        e: &(dyn std::error::Error + 'static),
        parse: bool,
        conn: &Arc<ConnInfo>,
        (host, port): (&str, u16),
    ) -> SendError {
        let server = format!("{host}:{port}");
        let tls = connect::tls_failure_in(
            e,
            self.tls.as_deref(),
            conn.transport.tls.as_deref(),
            &server,
        );
        let error = if let Some(t) = tls {
            self.stats
                .ssl_connection_error
                .fetch_add(1, Ordering::Relaxed);
            ProxyError::UpstreamTls(t)
        } else if parse {
            ProxyError::UpstreamProtocol {
                reason: format!(
                    "{server} ({}) sent an invalid HTTP response: {e}",
                    conn.transport.remote
                ),
            }
        } else {
            let first = if conn.requests.load(Ordering::Relaxed) <= 1 {
                "on a new connection"
            } else {
                "on a reused connection"
            };
            ProxyError::UpstreamTerminated {
                reason: format!(
                    "{server} ({}) closed the connection before sending response headers {first}: {}",
                    conn.transport.remote,
                    error_chain(e)
                ),
            }
        };
        SendError {
            error,
            conn: Some(conn.clone()),
            unsent: None,
        }
    }
}

fn is_parse(e: &hyper::Error) -> bool {
    e.is_parse() || e.is_parse_status()
}

/// RFC 9110 9.2.2: methods a client may repeat after a connection failed under it.
fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}
