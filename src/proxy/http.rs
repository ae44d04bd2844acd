//! An HTTP request through the proxy, in named steps: authority (Host, absolute-form URI or
//! :authority) -> route -> rewrite (hop-by-hop headers, x-request-id, Host) -> upstream ->
//! response. Failures become local replies (see `finish`) with Envoy's status, flags and
//! details.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri, Version};

use crate::access_log::AccessRecord;
use crate::config::Listener;
use crate::error::{Flags, ProxyError};
use crate::http::body::{BodyProgress, Downstream, RequestBody};
use crate::route::{
    ClusterId, Decision, Fault, HttpRoute, Redirect, RequestInfo, RetryPolicy, RouteAction,
    RouteMatch, StringMatch, fault_applies, normalize_host,
};
use crate::runtime::{ConnCtx, Runtime};
use crate::upstream::{ClusterPool, Exchange, SendError, Sent, random_unit};

use super::authority::authority_of;
use super::finish::{Failure, Inner, Pending, ProxyBody, Telemetry};
use super::tunnel::connect_tunnel;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
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

async fn forward(
    rt: &Arc<Runtime>,
    listener: &Listener,
    conn: &ConnCtx,
    mut req: Request<Downstream>,
    pending: &mut Pending,
) -> Result<Response<ProxyBody>, Failure> {
    // Before anything reads them, even the log line of a refused request.
    strip_envoy_internal(req.headers_mut());
    // 1. The authority: absolute-form URI (forward proxy) or HTTP/2 :authority, else Host; and
    // the HTTP rules a proxy enforces.
    let (authority, default_port) = match authority_of(&req) {
        Ok(a) => a,
        Err(e) => return Err((e, Some(req.headers().clone()))),
    };
    if req.method() == Method::CONNECT {
        // Boxed: a tunnel's future would otherwise enlarge every request's.
        return Box::pin(connect_tunnel(rt, listener, req, &authority, pending)).await;
    }
    let host = normalize_host(authority.host());
    // A redirected connection is routed by the port the app connected to (Istio's per-port
    // route configurations), whatever its Host says.
    let port = match conn.original_dst {
        Some(orig) => orig.port(),
        None => authority.port_u16().unwrap_or(default_port),
    };
    pending.rec_mut().authority = Some(authority.as_str().to_string());

    // 2. Route.
    // The request's own path (a reference-counted clone): it becomes the upstream URI as is
    // unless a route rewrites it.
    let original_path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let target = match route_request(
        listener,
        &req,
        &host,
        port,
        &authority,
        &original_path,
        pending,
    ) {
        Routed::Forward(t) => t,
        Routed::Local(resp) => return Ok(resp),
        Routed::Refused(e) => return Err((e, Some(req.headers().clone()))),
    };
    let Some(pool) = rt.pools.get(target.cluster) else {
        return Err((
            ProxyError::BadRequest("the route's cluster is gone (configuration reloaded)".into()),
            None,
        ));
    };
    // Under capture, PassthroughCluster is Envoy's ORIGINAL_DST cluster: the request goes to
    // the address the app connected to, not to a fresh DNS answer for its Host.
    let passthrough = super::guard::is_passthrough(pool);
    let original = conn.original_dst.filter(|_| passthrough);
    let original_ip = original.map(|o| o.ip().to_string());
    // ALLOW_ANY never passes through to egret itself or to cloud metadata.
    if passthrough
        && let Err(e) =
            super::guard::check(rt, pool, original_ip.as_deref().unwrap_or(&host), port).await
    {
        return Err((e, Some(req.headers().clone())));
    }
    // VirtualService `fault`: Envoy's fault filter runs before the router.
    if let Some(fault) = target.route.and_then(|r| r.fault.as_ref())
        && let Err(e) = inject_fault(fault, pending).await
    {
        return Err((e, Some(req.headers().clone())));
    }

    // 3. Rewrite the request for the upstream.
    let (up, dns_host) = rewrite(
        rt,
        listener,
        conn,
        req,
        &authority,
        &host,
        pool,
        &target,
        original_path,
        pending,
    );

    // 4. Upstream.
    let sent_at = Instant::now();
    let dns_host = match original_ip {
        Some(ip) => Cow::Owned(ip),
        None => dns_host,
    };
    let exchange = send(rt, pool, &dns_host, port, up, target.route, pending).await?;

    // 5. The response.
    Ok(respond(rt, exchange, sent_at, target.route, pending))
}

/// Where routing sent a request.
enum Routed<'a> {
    /// To a cluster (through the route, if one matched).
    Forward(Target<'a>),
    /// Answered by the route itself (direct response or redirect).
    Local(Response<ProxyBody>),
    /// Refused (`block_all`, no route).
    Refused(ProxyError),
}

/// The cluster a request goes to and the route (and match) that sent it there.
struct Target<'a> {
    cluster: ClusterId,
    route: Option<&'a HttpRoute>,
    matched: Option<&'a RouteMatch>,
}

/// Step 2: the listener's routes decide; the route's name goes into the record.
fn route_request<'a>(
    listener: &'a Listener,
    req: &Request<Downstream>,
    host: &str,
    port: u16,
    authority: &Authority,
    original_path: &PathAndQuery,
    pending: &mut Pending,
) -> Routed<'a> {
    let path_and_query = original_path.as_str();
    let info = RequestInfo {
        host,
        port,
        method: req.method(),
        path_and_query,
        authority: authority.as_str(),
        scheme: "http",
        headers: req.headers(),
    };
    match listener.routes.route(&info) {
        Decision::Route {
            route,
            matched,
            cluster,
        } => {
            pending.rec_mut().route_name = route.name.clone();
            match (&route.action, cluster) {
                (RouteAction::Forward(_), Some(cluster)) => Routed::Forward(Target {
                    cluster,
                    route: Some(route),
                    matched,
                }),
                (RouteAction::Direct { status, body }, _) => Routed::Local(pending.direct(
                    *status,
                    body.clone(),
                    req.headers(),
                    None,
                    &route.response_headers,
                )),
                (RouteAction::Redirect(r), _) => {
                    let location = redirect_location(r, host, port, path_and_query);
                    Routed::Local(pending.direct(
                        r.code,
                        None,
                        req.headers(),
                        Some(location),
                        &route.response_headers,
                    ))
                }
                (RouteAction::Forward(_), None) => Routed::Refused(ProxyError::NoRoute {
                    host: host.to_string(),
                }),
            }
        }
        Decision::AllowAny { cluster } => {
            pending.rec_mut().route_name = Some(Arc::from("allow_any"));
            Routed::Forward(Target {
                cluster,
                route: None,
                matched: None,
            })
        }
        Decision::BlockAll => {
            pending.rec_mut().route_name = Some(Arc::from("block_all"));
            if let Some(t) = pending.telemetry() {
                t.destination.0 = Arc::from("BlackHoleCluster");
            }
            Routed::Refused(ProxyError::BlockAll {
                host: host.to_string(),
                port,
            })
        }
        Decision::NoRoute => Routed::Refused(ProxyError::NoRoute {
            host: host.to_string(),
        }),
    }
}

/// Step 3: the upstream request (hop-by-hop headers out, x-request-id and x-forwarded-* in,
/// Host, the route's header operations and rewrites), and the host it is resolved and
/// verified as. Fills the record's cluster and the request's telemetry.
#[allow(clippy::too_many_arguments)]
fn rewrite<'h>(
    rt: &Runtime,
    listener: &Listener,
    conn: &ConnCtx,
    req: Request<Downstream>,
    authority: &Authority,
    host: &'h str,
    pool: &ClusterPool,
    target: &Target<'_>,
    original_path: PathAndQuery,
    pending: &mut Pending,
) -> (Request<RequestBody>, Cow<'h, str>) {
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
    if let Some(h) = upstream_host_header(authority, pool, &headers) {
        headers.insert(header::HOST, h);
    }
    let path_and_query = original_path.as_str();
    let mut rewritten_path: Option<String> = None;
    let mut dns_host = Cow::Borrowed(host);
    if let Some(route) = target.route {
        route.request_headers.apply(&mut headers);
        if let Some(rw) = &route.rewrite {
            if let Some(uri) = &rw.uri {
                rewritten_path = Some(rewrite_path(path_and_query, target.matched, uri));
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
                dns_host = Cow::Owned(normalize_host(h).into_owned());
            }
        }
    }
    {
        let rec = pending.rec_mut();
        rec.upstream_cluster = Some(pool.cluster_name());
        rt.access_log.format.capture_request(rec, &headers);
    }
    if let Some(t) = pending.telemetry() {
        t.cluster = Some(pool.stats.clone());
        t.destination = pool.destination(&dns_host);
        t.upstream_start = Some(Instant::now());
    }
    let progress = Arc::new(BodyProgress::default());
    let body = RequestBody::new(body, progress.clone());
    pending.set_progress(progress);
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = match &rewritten_path {
        Some(p) => Uri::from_str(p).unwrap_or_else(|_| Uri::from_static("/")),
        None => Uri::from(original_path),
    };
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;
    (up, dns_host)
}

/// Step 4: the exchange with the upstream, over the route's retries, within the route's
/// timeout (which covers every attempt, as Envoy's). A failed attempt's connection still goes
/// into the record.
async fn send(
    rt: &Runtime,
    pool: &Arc<ClusterPool>,
    dns_host: &str,
    port: u16,
    up: Request<RequestBody>,
    route: Option<&HttpRoute>,
    pending: &mut Pending,
) -> Result<Exchange, Failure> {
    let policy = route.map_or_else(|| &*DEFAULT_RETRY, |r| &r.retry);
    let send = pool.send(&rt.upstream, dns_host, port, up, policy);
    let sent = match route.and_then(|r| r.timeout) {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(s) => s,
            Err(_) => Sent {
                result: Err(ProxyError::Timeout(t).into()),
                attempts: 1,
                flags: Flags::NONE,
            },
        },
        None => send.await,
    };
    let Sent {
        result,
        attempts,
        flags,
    } = sent;
    let rec = pending.rec_mut();
    rec.flags |= flags;
    rec.attempts = attempts;
    result.map_err(|SendError { error, conn, .. }| {
        if let Some(c) = conn {
            rec.upstream_host = Some(c.transport.remote);
            rec.upstream_local = Some(c.transport.local);
            rec.upstream_tls = c.transport.tls.clone();
            rec.upstream_conn_id = Some(c.id);
        }
        (error, None)
    })
}

/// The retry policy of requests no route matched (ALLOW_ANY): Istio's default.
static DEFAULT_RETRY: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(RetryPolicy::istio_default);

/// VirtualService `fault`: the delay (`DI`) and then the abort (`FI`), each for its share of
/// requests.
async fn inject_fault(fault: &Fault, pending: &mut Pending) -> Result<(), ProxyError> {
    if let Some(d) = &fault.delay
        && fault_applies(d.percent, random_unit())
    {
        pending.rec_mut().flags |= Flags::DI;
        tokio::time::sleep(d.fixed).await;
    }
    if let Some(a) = &fault.abort
        && fault_applies(a.percent, random_unit())
    {
        return Err(ProxyError::FaultAbort {
            status: a.status,
            grpc_status: a.grpc_status,
        });
    }
    Ok(())
}

/// Step 5: the upstream's response goes downstream (hop-by-hop headers out, service time and
/// the route's response headers in); the record moves into the body, which finishes it.
fn respond(
    rt: &Runtime,
    exchange: Exchange,
    sent_at: Instant,
    route: Option<&HttpRoute>,
    pending: &mut Pending,
) -> Response<ProxyBody> {
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
        rec.status = parts.status.as_u16();
        rec.details = Some("via_upstream".into());
        rt.access_log.format.capture_response(rec, &parts.headers);
    }
    finish.lease = Some(lease);
    Response::from_parts(
        parts,
        ProxyBody {
            inner: Inner::Upstream(body),
            finish: Some(finish),
        },
    )
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

/// Removes the `x-envoy-*` headers a client sent. They are Envoy's (and egret's) own: taken
/// from the app they would be believed by the next hop and printed in the access log
/// (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` in Istio's format), so they are dropped, as Envoy does
/// for requests from untrusted downstreams. egret honors none of them from clients; the ones it
/// sets itself (`x-envoy-original-path` on a rewrite) are added later, in step 3.
fn strip_envoy_internal(headers: &mut HeaderMap) {
    let is_internal = |n: &HeaderName| n.as_str().as_bytes().starts_with(b"x-envoy-");
    if !headers.keys().any(is_internal) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_internal(n)).cloned().collect();
    for n in names {
        headers.remove(n);
    }
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
