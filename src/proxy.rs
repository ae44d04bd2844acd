//! The HTTP proxy path, in named steps: authority (Host, absolute-form URI or :authority) ->
//! route -> rewrite (hop-by-hop headers, x-request-id, Host) -> upstream -> response. Failures
//! become local replies with Envoy's status, flags and details. Every request produces exactly
//! one access-log line, written when the response completes or, if the client goes away, when
//! the request is dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, AccessRecord};
use crate::admin::Health;
use crate::body::{BodyError, BodyProgress, Downstream, RequestBody, UpstreamBody};
use crate::config::{Config, Listener};
use crate::error::{Flags, ProxyError};
use crate::metrics::{ClusterStats, ListenerStats, Metrics, RequestReport};
use crate::route::{
    Decision, Redirect, RequestInfo, RouteAction, RouteMatch, StringMatch, normalize_host,
};
use crate::upstream::{ClusterPool, Exchange, Lease, SendError, UpstreamCtx};

/// Everything a request needs, for one configuration generation.
pub struct Runtime {
    pub config: Arc<Config>,
    pub pools: Vec<Arc<ClusterPool>>,
    pub upstream: UpstreamCtx,
    pub access_log: Arc<AccessLog>,
    /// TLS termination per listener (indexed like `Config::listeners`).
    pub listener_tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Every certificate loaded (for `/certs`).
    pub certs: Vec<crate::tls::CertInfo>,
    /// `Listener::key` -> index in `config.listeners` (looked up per request).
    pub listener_index: crate::FastMap<Arc<str>, usize>,
}

impl Runtime {
    /// The listener a connection was accepted on, if this configuration still has it.
    pub fn listener(&self, key: &str) -> Option<(usize, &Listener)> {
        let i = *self.listener_index.get(key)?;
        self.config.listeners.get(i).map(|l| (i, l))
    }
}

/// The downstream connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnCtx {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub id: u64,
    /// The listener's key (`Listener::key`).
    pub listener: Arc<str>,
    /// SNI the client sent, on a listener that terminates TLS.
    pub sni: Option<Arc<str>>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_EGRET_ERROR: HeaderName = HeaderName::from_static("x-egret-error");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Handles one request. Never fails: errors become local replies.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: &ConnCtx,
    req: Request<Downstream>,
) -> Response<ProxyBody> {
    let mut rec = AccessRecord::new(conn.local, conn.remote, conn.id);
    rec.method = Some(req.method().clone());
    rec.protocol = Some(req.version());
    rec.path = req.uri().path_and_query().cloned();
    rec.requested_server_name = conn.sni.as_deref().map(str::to_string);
    let http1 = req.version() < Version::HTTP_2;
    let Some((_, listener)) = rt.listener(&conn.listener) else {
        let mut pending = Pending::new(rec, rt.access_log.clone(), None);
        return pending.reply(
            ProxyError::BadRequest("the listener is gone (configuration reloaded)".into()),
            None,
        );
    };
    let lstats = rt.metrics.listener(&listener.name);
    lstats.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
    lstats.downstream_rq_active.fetch_add(1, Ordering::Relaxed);
    let mut pending = Pending::new(
        rec,
        rt.access_log.clone(),
        Some(Telemetry::new(&rt.metrics, lstats)),
    );
    let result = forward(&rt, listener, conn, req, &mut pending).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err((err, req_headers)) => pending.reply(err, req_headers.as_ref()),
    };
    // Draining: tell HTTP/1 clients not to reuse the connection.
    if http1 && rt.health.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

type Failure = (ProxyError, Option<HeaderMap>);

async fn forward(
    rt: &Arc<Runtime>,
    listener: &Listener,
    conn: &ConnCtx,
    req: Request<Downstream>,
    pending: &mut Pending,
) -> Result<Response<ProxyBody>, Failure> {
    // 1. The authority: absolute-form URI (forward proxy) or HTTP/2 :authority, else Host.
    let (authority, default_port) = match authority_of(&req) {
        Ok(a) => a,
        Err(e) => return Err((e, Some(req.headers().clone()))),
    };
    if req.method() == Method::CONNECT {
        return connect_tunnel(rt, listener, req, &authority, pending).await;
    }
    let host = normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or(default_port);
    let rec = pending.rec_mut();
    rec.authority = Some(authority.as_str().to_string());

    // 2. Route.
    // The request's own path (a reference-counted clone): it becomes the upstream URI as is
    // unless a route rewrites it.
    let original_path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path_and_query = original_path.as_str();
    let info = RequestInfo {
        host: &host,
        port,
        method: req.method(),
        path_and_query,
        authority: authority.as_str(),
        scheme: "http",
        headers: req.headers(),
    };
    let (cluster, route, matched) = match listener.routes.route(&info) {
        Decision::Route {
            route,
            matched,
            cluster,
        } => {
            pending.rec_mut().route_name = route.name.clone();
            match (&route.action, cluster) {
                (RouteAction::Forward(_), Some(c)) => (c, Some(route), matched),
                (RouteAction::Direct { status, body }, _) => {
                    let headers = req.headers().clone();
                    return Ok(pending.direct(
                        *status,
                        body.clone(),
                        &headers,
                        None,
                        &route.response_headers,
                    ));
                }
                (RouteAction::Redirect(r), _) => {
                    let location = redirect_location(r, &host, port, path_and_query);
                    let headers = req.headers().clone();
                    return Ok(pending.direct(
                        r.code,
                        None,
                        &headers,
                        Some(location),
                        &route.response_headers,
                    ));
                }
                (RouteAction::Forward(_), None) => {
                    return Err((
                        ProxyError::NoRoute {
                            host: host.into_owned(),
                        },
                        Some(req.headers().clone()),
                    ));
                }
            }
        }
        Decision::AllowAny { cluster } => {
            pending.rec_mut().route_name = Some(Arc::from("allow_any"));
            (cluster, None, None)
        }
        Decision::BlockAll => {
            pending.rec_mut().route_name = Some(Arc::from("block_all"));
            if let Some(t) = pending.telemetry() {
                t.destination.0 = Arc::from("BlackHoleCluster");
            }
            return Err((
                ProxyError::BlockAll {
                    host: host.into_owned(),
                    port,
                },
                Some(req.headers().clone()),
            ));
        }
        Decision::NoRoute => {
            return Err((
                ProxyError::NoRoute {
                    host: host.into_owned(),
                },
                Some(req.headers().clone()),
            ));
        }
    };
    let timeout = route.and_then(|r| r.timeout);
    let Some(pool) = rt.pools.get(cluster) else {
        return Err((
            ProxyError::BadRequest("the route's cluster is gone (configuration reloaded)".into()),
            None,
        ));
    };

    // 3. Rewrite the request for the upstream.
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    if !headers.contains_key(&X_REQUEST_ID) {
        let id = uuid::Uuid::new_v4();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(s) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if listener.use_remote_address {
        append_xff(&mut headers, conn.remote.ip());
    }
    let host_header = upstream_host_header(&authority, pool, &headers);
    if let Some(h) = host_header {
        headers.insert(header::HOST, h);
    }
    let mut rewritten_path: Option<String> = None;
    let mut dns_host = host.clone();
    if let Some(route) = route {
        route.request_headers.apply(&mut headers);
        if let Some(rw) = &route.rewrite {
            if let Some(uri) = &rw.uri {
                rewritten_path = Some(rewrite_path(path_and_query, matched, uri));
                if let Ok(v) = HeaderValue::from_str(path_and_query) {
                    headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
                }
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::from_str(a)
            {
                headers.insert(header::HOST, v);
                let h = a
                    .rsplit_once(':')
                    .filter(|(_, p)| p.parse::<u16>().is_ok())
                    .map_or(a.as_str(), |(h, _)| h);
                dns_host = std::borrow::Cow::Owned(normalize_host(h).into_owned());
            }
        }
    }
    let cluster_name = pool.cluster_name();
    {
        let rec = pending.rec_mut();
        rec.upstream_cluster = Some(cluster_name);
        rt.access_log.format.capture_request(rec, &headers);
    }
    if let Some(t) = pending.telemetry() {
        t.cluster = Some(pool.stats.clone());
        t.destination = pool.destination(&dns_host);
        t.upstream_start = Some(Instant::now());
    }
    let progress = Arc::new(BodyProgress::default());
    let body = RequestBody::new(body, progress.clone());
    pending.set_progress(progress.clone());
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = match &rewritten_path {
        Some(p) => Uri::from_str(p).unwrap_or_else(|_| Uri::from_static("/")),
        None => Uri::from(original_path),
    };
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    // 4. Upstream.
    let sent_at = Instant::now();
    let send = pool.send(&rt.upstream, &dns_host, port, up);
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err(SendError {
                error: ProxyError::Timeout(t),
                conn: None,
            }),
        },
        None => send.await,
    };
    let exchange = match result {
        Ok(x) => x,
        Err(SendError { error, conn }) => {
            if let Some(c) = conn {
                let rec = pending.rec_mut();
                rec.upstream_host = Some(c.transport.remote);
                rec.upstream_local = Some(c.transport.local);
                rec.upstream_tls = c.transport.tls.clone();
                rec.upstream_conn_id = Some(c.id);
                rec.attempts = 1;
            }
            return Err((error, None));
        }
    };

    // 5. The response.
    let Exchange {
        response,
        conn: upconn,
        lease,
    } = exchange;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let service_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    parts.headers.insert(
        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
        HeaderValue::from(service_ms),
    );
    if let Some(route) = route {
        route.response_headers.apply(&mut parts.headers);
    }
    let mut finish = pending.take();
    {
        let rec = &mut finish.rec;
        rec.first_upstream_byte = Some(Instant::now());
        rec.upstream_host = Some(upconn.transport.remote);
        rec.upstream_local = Some(upconn.transport.local);
        rec.upstream_tls = upconn.transport.tls.clone();
        rec.upstream_conn_id = Some(upconn.id);
        rec.attempts = 1;
        rec.status = parts.status.as_u16();
        rec.details = Some("via_upstream".into());
        rt.access_log.format.capture_response(rec, &parts.headers);
    }
    finish.lease = Some(lease);
    Ok(Response::from_parts(
        parts,
        ProxyBody {
            inner: Inner::Upstream(body),
            finish: Some(finish),
        },
    ))
}

/// The request's authority and the default port for its scheme.
/// `CONNECT host:port`: a tunnel to a host declared on a TLS, HTTPS or TCP port (any host
/// under ALLOW_ANY). The upstream is connected before the `200`, so a failure is an ordinary
/// 5xx with its flags; then the client's bytes are spliced through untouched. For TLS ports
/// the ClientHello must name the CONNECT host, so a tunnel opened for one host cannot carry
/// TLS to another; a mismatch is refused before a byte goes upstream.
async fn connect_tunnel(
    rt: &Arc<Runtime>,
    listener: &Listener,
    req: Request<Downstream>,
    authority: &Authority,
    pending: &mut Pending,
) -> Result<Response<ProxyBody>, Failure> {
    let host = normalize_host(authority.host()).into_owned();
    let port = authority.port_u16().unwrap_or(443);
    pending.rec_mut().authority = Some(authority.as_str().to_string());
    if listener.l4.is_some()
        || !matches!(
            listener.routes.port_source,
            crate::route::PortSource::Request
        )
    {
        return Err((
            ProxyError::BadRequest(format!(
                "CONNECT {authority} is served on the outbound (forward-proxy) listener only"
            )),
            Some(req.headers().clone()),
        ));
    }
    let Some((cluster, route_name)) = listener.routes.tunnel(&host, port) else {
        pending.rec_mut().route_name = Some(Arc::from("block_all"));
        if let Some(t) = pending.telemetry() {
            t.destination.0 = Arc::from("BlackHoleCluster");
        }
        return Err((
            ProxyError::BlockAll { host, port },
            Some(req.headers().clone()),
        ));
    };
    let Some(pool) = rt.pools.get(cluster).cloned() else {
        return Err((
            ProxyError::BadRequest("the route's cluster is gone (configuration reloaded)".into()),
            None,
        ));
    };
    pending.rec_mut().route_name = route_name;
    pending.rec_mut().upstream_cluster = Some(pool.cluster_name());
    if let Some(t) = pending.telemetry() {
        t.destination = pool.destination(&host);
        t.cluster = Some(pool.stats.clone());
    }
    // Opaque TCP destinations get their DestinationRule TLS; TLS ports carry the client's own.
    let originate = pool.cluster.protocol.is_opaque_tcp();
    let (up, conn) = match pool.open_stream(&rt.upstream, &host, port, originate).await {
        Ok(c) => c,
        Err(e) => {
            if let ProxyError::Connect(c) = &e {
                pending.rec_mut().upstream_host = Some(c.addr);
            }
            return Err((e, Some(req.headers().clone())));
        }
    };
    let mut finish = pending.take();
    finish
        .log
        .format
        .capture_request(&mut finish.rec, req.headers());
    crate::tunnel::record_upstream(&mut finish.rec, &conn);
    finish.rec.status = 200;
    finish.rec.details = Some("via_upstream".into());
    // TLS ports (and ALLOW_ANY to 443) must carry a ClientHello for the CONNECT host.
    let check_sni = pool.cluster.protocol.is_tls() || (pool.cluster.host == "-" && port == 443);
    let server = format!("{host}:{port}");
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                finish.rec.termination_details = Some(format!(
                    "upgrade_failed:{}",
                    e.to_string().replace(' ', "_")
                ));
                finish.complete(Outcome::DownstreamGone);
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(upgraded);
        let mut prefix = Vec::new();
        if check_sni {
            use crate::tunnel::Hello;
            let refusal = match crate::tunnel::read_client_hello(&mut down).await {
                Ok((bytes, Hello::Sni(name))) => {
                    finish.rec.requested_server_name = Some(name.clone());
                    prefix = bytes;
                    (name != host).then(|| {
                        format!("sni_mismatch:the_tunnel_is_for_'{host}'_but_the_ClientHello_names_'{name}'")
                    })
                }
                Ok((bytes, Hello::NoSni)) if host.parse::<std::net::IpAddr>().is_ok() => {
                    prefix = bytes;
                    None
                }
                Ok((_, Hello::NoSni)) => Some(format!(
                    "sni_missing:the_tunnel_is_for_'{host}'_but_the_ClientHello_names_no_server"
                )),
                Ok((_, _)) => Some(format!(
                    "not_tls:{host}:{port}_is_a_TLS_port_but_the_tunnel_does_not_start_with_a_ClientHello"
                )),
                Err(e) => Some(format!(
                    "client_hello_unread:{}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join("_")
                )),
            };
            if let Some(why) = refusal {
                tracing::debug!(%server, "CONNECT tunnel refused: {why}");
                finish.rec.flags |= Flags::NR;
                finish.rec.termination_details = Some(why);
                finish.complete(Outcome::Complete);
                return;
            }
        }
        pool.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let r = crate::tunnel::pump(
            down,
            &prefix,
            up,
            &pool,
            &conn,
            &server,
            pool.cluster.tcp_idle_timeout,
        )
        .await;
        pool.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        finish.rec.bytes_received = r.downstream_read;
        finish.rec.bytes_sent = r.downstream_written;
        finish.rec.flags |= r.flags;
        finish.rec.transport_failure = r.transport_failure;
        finish.rec.termination_details = r.termination;
        finish.complete(Outcome::Complete);
    });
    let mut resp = Response::new(ProxyBody {
        inner: Inner::Full(None),
        finish: None,
    });
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

fn authority_of(req: &Request<Downstream>) -> Result<(Authority, u16), ProxyError> {
    let uri = req.uri();
    if let Some(a) = uri.authority() {
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        return Ok((a.clone(), default_port));
    }
    let Some(host) = req.headers().get(header::HOST) else {
        return Err(ProxyError::MissingHost);
    };
    let a = host
        .to_str()
        .ok()
        .and_then(|h| Authority::from_str(h).ok())
        .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        .ok_or_else(|| {
            ProxyError::BadRequest(format!(
                "the Host header '{}' is not a valid host[:port]",
                String::from_utf8_lossy(host.as_bytes())
            ))
        })?;
    Ok((a, 80))
}

/// The Host header sent upstream. Istio forwards Host as received; egret does too, with two
/// exceptions: absolute-form and HTTP/2 requests get Host from the authority (RFC 9112 3.2.2),
/// and when egret originates TLS to another port (80 -> 443) an explicit `:80` is dropped, so
/// an HTTPS origin never sees a Host naming its plaintext port.
fn upstream_host_header(
    authority: &Authority,
    pool: &ClusterPool,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    let from_uri_differs = headers
        .get(header::HOST)
        .is_none_or(|h| h.as_bytes() != authority.as_str().as_bytes());
    if pool.strips_port_from_host() && authority.port_u16() == Some(pool.cluster.port) {
        return HeaderValue::from_str(authority.host()).ok();
    }
    if from_uri_differs {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    None
}

fn append_xff(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`, `Trailer`, and
/// `Proxy-Authorization` (meant for this proxy, never for the origin).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned()
        && let Ok(v) = conn.to_str()
    {
        for name in v.split(',') {
            let name = name.trim();
            if !name.is_empty()
                && let Ok(n) = HeaderName::from_bytes(name.as_bytes())
                && n != header::HOST
            {
                headers.remove(n);
            }
        }
    }
    const HOP: [&HeaderName; 8] = [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
    ];
    // Most requests carry none of them: one pass over the (few) headers instead of eight
    // hashed removals.
    // Hop-by-hop names are 2, 7, 10, 16, 17 or 19 bytes long: most headers are ruled out by
    // their length alone.
    let is_hop =
        |k: &HeaderName| matches!(k.as_str().len(), 2 | 7 | 10 | 16 | 17 | 19) && HOP.contains(&k);
    if !headers.keys().any(is_hop) {
        return;
    }
    for h in HOP {
        headers.remove(h);
    }
}

/// The access-log state of a request before its response exists; dropping it (the client went
/// away) still writes the line.
struct Pending(Option<Box<Finish>>, Arc<AccessLog>);

impl Pending {
    fn new(rec: AccessRecord, log: Arc<AccessLog>, telemetry: Option<Telemetry>) -> Pending {
        Pending(
            Some(Box::new(Finish {
                rec,
                log: log.clone(),
                lease: None,
                progress: None,
                telemetry,
            })),
            log,
        )
    }

    fn telemetry(&mut self) -> Option<&mut Telemetry> {
        self.state().telemetry.as_mut()
    }

    /// The state; it is only absent after `take`, which ends its use. Should that invariant ever
    /// break, a fresh (unlogged) record keeps the request path panic-free.
    fn state(&mut self) -> &mut Finish {
        let log = &self.1;
        self.0
            .get_or_insert_with(|| Box::new(Finish::orphan(log.clone())))
    }

    fn rec_mut(&mut self) -> &mut AccessRecord {
        &mut self.state().rec
    }

    fn set_progress(&mut self, p: Arc<BodyProgress>) {
        self.state().progress = Some(p);
    }

    fn take(&mut self) -> Box<Finish> {
        match self.0.take() {
            Some(f) => f,
            None => Box::new(Finish::orphan(self.1.clone())),
        }
    }

    /// A local reply for `err`.
    fn reply(&mut self, err: ProxyError, req_headers: Option<&HeaderMap>) -> Response<ProxyBody> {
        let mut finish = self.take();
        let body = err.body();
        let rec = &mut finish.rec;
        if let Some(h) = req_headers {
            finish.log.format.capture_request(rec, h);
        }
        rec.status = err.status();
        rec.flags |= err.flags();
        rec.details = Some(err.details().into());
        rec.transport_failure = err.transport_failure_reason();
        rec.local_reply_body = Some(body.clone());
        if !matches!(
            err,
            ProxyError::BlockAll { .. }
                | ProxyError::NoRoute { .. }
                | ProxyError::MissingHost
                | ProxyError::BadRequest(_)
        ) {
            tracing::debug!(
                status = rec.status,
                code = err.code(),
                "{}",
                body.trim_end()
            );
        }
        let mut resp = Response::new(ProxyBody {
            inner: Inner::Full(Some(Bytes::from(body))),
            finish: None,
        });
        *resp.status_mut() = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(X_EGRET_ERROR.clone(), HeaderValue::from_static(err.code()));
        finish.log.format.capture_response(rec, h);
        resp.body_mut().finish = Some(finish);
        resp
    }

    /// A route's direct response or redirect.
    fn direct(
        &mut self,
        status: u16,
        body: Option<String>,
        req_headers: &HeaderMap,
        location: Option<String>,
        response_ops: &crate::route::HeaderOps,
    ) -> Response<ProxyBody> {
        let mut finish = self.take();
        let rec = &mut finish.rec;
        finish.log.format.capture_request(rec, req_headers);
        rec.status = status;
        rec.details = Some("direct_response".into());
        let bytes = body.map(Bytes::from);
        let mut resp = Response::new(ProxyBody {
            inner: Inner::Full(bytes.clone()),
            finish: None,
        });
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        if bytes.is_some() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, l);
        }
        response_ops.apply(resp.headers_mut());
        finish.log.format.capture_response(rec, resp.headers());
        resp.body_mut().finish = Some(finish);
        resp
    }
}

/// `HTTPRedirect`: the Location for a request to `host:port` + `path`.
fn redirect_location(r: &Redirect, host: &str, port: u16, path: &str) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let authority = r.authority.as_deref().unwrap_or(host);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = r.port.unwrap_or(if r.scheme.is_some() {
        default_port
    } else {
        port
    });
    let path = r.uri.as_deref().unwrap_or(path);
    if port == default_port {
        format!("{scheme}://{authority}{path}")
    } else {
        format!("{scheme}://{authority}:{port}{path}")
    }
}

/// `rewrite.uri`: replaces the matched prefix, or the whole path for other matches; the query
/// is kept.
fn rewrite_path(path_and_query: &str, matched: Option<&RouteMatch>, uri: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let new_path = match matched.and_then(|m| m.uri.as_ref()) {
        Some(StringMatch::Prefix(p)) if path.starts_with(p.as_str()) => {
            format!("{uri}{}", &path[p.len()..])
        }
        _ => uri.to_string(),
    };
    match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.complete(Outcome::DownstreamGone);
        }
    }
}

/// What is needed to finish a request: the record, the log, the pooled connection and the
/// metrics to update.
struct Finish {
    rec: AccessRecord,
    log: Arc<AccessLog>,
    lease: Option<Lease>,
    progress: Option<Arc<BodyProgress>>,
    telemetry: Option<Telemetry>,
}

/// The metrics a request updates when it finishes.
struct Telemetry {
    metrics: Arc<Metrics>,
    listener: Arc<ListenerStats>,
    cluster: Option<Arc<ClusterStats>>,
    /// `destination_service` / `destination_service_namespace`.
    destination: (Arc<str>, Arc<str>),
    upstream_start: Option<Instant>,
}

impl Telemetry {
    fn new(metrics: &Arc<Metrics>, listener: Arc<ListenerStats>) -> Telemetry {
        Telemetry {
            metrics: metrics.clone(),
            listener,
            cluster: None,
            destination: {
                static UNKNOWN: std::sync::LazyLock<Arc<str>> =
                    std::sync::LazyLock::new(|| Arc::from("unknown"));
                (UNKNOWN.clone(), UNKNOWN.clone())
            },
            upstream_start: None,
        }
    }

    fn finish(self, rec: &AccessRecord) {
        self.listener
            .downstream_rq_active
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.record_response(rec.status);
            if let (Some(start), Some(end)) = (self.upstream_start, rec.end) {
                c.rq_time.record(end.saturating_duration_since(start));
            }
        }
        self.metrics.record_request(RequestReport {
            destination_service: &self.destination.0,
            destination_namespace: &self.destination.1,
            code: rec.status,
            flags: rec.flags,
            duration: rec
                .end
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(rec.start_instant),
            request_bytes: rec.bytes_received,
            response_bytes: rec.bytes_sent,
            tcp: false,
        });
    }
}

enum Outcome {
    /// The response was sent completely.
    Complete,
    /// The client went away before the response was complete.
    DownstreamGone,
    /// The upstream failed while the response body was streaming.
    UpstreamFailed(String),
}

impl Finish {
    fn orphan(log: Arc<AccessLog>) -> Finish {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Finish {
            rec: AccessRecord::new(unspecified, unspecified, 0),
            log,
            lease: None,
            progress: None,
            telemetry: None,
        }
    }

    fn complete(mut self: Box<Self>, outcome: Outcome) {
        let now = Instant::now();
        let rec = &mut self.rec;
        rec.end = Some(now);
        let request_done = self.progress.as_ref().is_none_or(|p| p.is_done());
        if let Some(p) = &self.progress {
            rec.bytes_received = p.bytes();
        }
        if request_done && rec.request_done.is_none() {
            rec.request_done = Some(now);
        }
        match outcome {
            Outcome::Complete => {
                if let Some(lease) = self.lease.take() {
                    lease.finish(request_done);
                }
            }
            Outcome::DownstreamGone => {
                rec.flags |= Flags::DC;
                if rec.status == 0 || rec.details.is_none() {
                    rec.details = Some("downstream_remote_disconnect".into());
                }
            }
            Outcome::UpstreamFailed(why) => {
                rec.flags |= Flags::UC;
                rec.details =
                    Some(format!("upstream_reset_after_response_started{{{why}}}").into());
            }
        }
        if let Some(t) = self.telemetry.take() {
            t.finish(&self.rec);
        }
        self.log.log(&self.rec);
    }
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The response body sent downstream: streamed from the upstream (or a local reply), counted,
/// and finishing the access record exactly once.
pub struct ProxyBody {
    inner: Inner,
    finish: Option<Box<Finish>>,
}

impl ProxyBody {
    /// The response went out whole: the access line, and the upstream connection back to the
    /// pool when egret's client read it.
    fn complete(&mut self) {
        if let Some(mut f) = self.finish.take() {
            if let Inner::Upstream(b) = &mut self.inner
                && let Some(conn) = b.take_idle()
                && let Some(lease) = f.lease.as_mut()
            {
                lease.give_back(conn);
            }
            f.complete(Outcome::Complete);
        }
    }

    fn is_end(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => match b.take() {
                Some(bytes) => {
                    if let Some(f) = this.finish.as_mut() {
                        f.rec.bytes_sent += bytes.len() as u64;
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                None => {
                    this.complete();
                    Poll::Ready(None)
                }
            },
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(f) = this.finish.as_mut() {
                        if let Some(d) = frame.data_ref() {
                            f.rec.bytes_sent += d.len() as u64;
                        } else if let Some(t) = frame.trailers_ref()
                            && f.log.format.wants_trailers()
                        {
                            let log = f.log.clone();
                            log.format.capture_trailers(&mut f.rec, t);
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    this.complete();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(f) = this.finish.take() {
                        f.complete(Outcome::UpstreamFailed(e.to_string()));
                    }
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper does not poll bodies it knows are empty (HEAD, 204, 304, content-length 0).
        if self.is_end() {
            self.complete();
        } else if let Some(f) = self.finish.take() {
            f.complete(Outcome::DownstreamGone);
        }
    }
}

/// Logs a request hyper rejected before egret saw it (a malformed request line or headers):
/// hyper has already answered it with a 4xx.
pub fn log_codec_error(log: &AccessLog, conn: &ConnCtx, err: &hyper::Error) {
    let mut rec = AccessRecord::new(conn.local, conn.remote, conn.id);
    let msg = err.to_string();
    let (status, details) = if msg.contains("too large") {
        (431, "http1.headers_too_large")
    } else if msg.contains("version") {
        (505, "http1.codec_error")
    } else {
        (400, "http1.codec_error")
    };
    rec.status = status;
    rec.flags = Flags::DPE;
    rec.details = Some(details.into());
    rec.end = Some(Instant::now());
    rec.local_reply_body = Some(msg);
    log.log(&rec);
}

impl ClusterPool {
    /// The cluster name for logs, shared.
    pub fn cluster_name(&self) -> Arc<str> {
        self.name.clone()
    }
}

/// Counts in-flight requests (for drain and stats).
pub fn in_flight(rt: &Runtime) -> u64 {
    rt.pools
        .iter()
        .map(|p| p.stats.rq_active.load(Ordering::Relaxed))
        .sum()
}
