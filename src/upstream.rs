//! Upstream clusters at run time: address selection (DNS, static endpoints, `--connect-to`),
//! load balancing over the addresses, and a pool of keep-alive HTTP/1.1 connections per
//! (cluster, host, address).
//!
//! One pool per cluster means one TLS policy per pool: connections opened under one policy are
//! never reused under another. Wildcard and passthrough clusters add the request's host to the
//! key, so different hosts (and SNI names) never share a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::body::{RequestBody, UpstreamBody};
use crate::config::{Cluster, Endpoints, LbPolicy, Protocol, UpstreamOverrides};
use crate::connect::{self, Transport, UpstreamIo};
use crate::dns::Dns;
use crate::error::{AttemptError, ConnectFailure, ProxyError};
use crate::h1client::{ActiveGuard, ExchangeError, RawConn};
use crate::metrics::{ClusterStats, Metrics};
use crate::tls::TlsContext;

/// Why one connection attempt did not produce a connection.
enum DialError {
    /// Try the next address.
    Attempt(AttemptError),
    /// No address can work (e.g. the host is not a valid TLS name).
    Fatal(ProxyError),
}

/// At most this many addresses are tried for one request (Envoy's default retry policy allows
/// two retries on connect failure).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// How often a pool with idle connections looks at them (or at its idle timeout, if shorter):
/// a connection the upstream closed is closed here within this time instead of sitting in
/// CLOSE_WAIT until the next request, and one idle for longer than the timeout is closed
/// without waiting for a request to find it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shortest sweep period, whatever the idle timeout.
const SWEEP_MIN: Duration = Duration::from_millis(20);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One upstream connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub transport: Transport,
    pub requests: AtomicU32,
}

/// A pooled connection, by the client that drives it.
enum Idle {
    Relay(RawConn),
    Hyper(http1::SendRequest<RequestBody>),
}

struct IdleConn {
    kind: Idle,
    conn: Arc<ConnInfo>,
    since: Instant,
}

impl IdleConn {
    /// Whether the connection can still take a request: the upstream has not closed it (nor
    /// sent anything unasked). Never waits.
    fn is_open(&mut self) -> bool {
        match &mut self.kind {
            Idle::Relay(c) => c.is_reusable(),
            Idle::Hyper(s) => !s.is_closed(),
        }
    }
}

#[derive(Default)]
struct Endpoint {
    idle: Vec<IdleConn>,
    /// Requests in flight (least-request balancing).
    active: u32,
}

/// The run-time side of one cluster.
pub struct ClusterPool {
    pub cluster: Arc<Cluster>,
    pub tls: Option<Arc<TlsContext>>,
    pub stats: Arc<ClusterStats>,
    /// host ("" for fixed-host clusters) -> address -> endpoint state.
    endpoints: Mutex<crate::FastMap<Box<str>, crate::FastMap<SocketAddr, Endpoint>>>,
    rr: AtomicUsize,
    /// A sweep task watches the idle connections. Set and cleared under `endpoints`' lock.
    sweeping: AtomicBool,
    /// Precomputed SNI / verified name for clusters whose host does not come from the request.
    server_name: Option<ServerName<'static>>,
    alpn: &'static [&'static [u8]],
    pub(crate) name: Arc<str>,
    strip_port: bool,
    /// `destination()` for clusters whose host does not come from the request.
    fixed_destination: Option<(Arc<str>, Arc<str>)>,
}

impl std::fmt::Debug for ClusterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("cluster", &self.cluster.name)
            .finish_non_exhaustive()
    }
}

/// What the pool needs from the rest of the runtime.
pub struct UpstreamCtx {
    pub dns: Arc<Dns>,
    pub overrides: UpstreamOverrides,
    pub metrics: Arc<Metrics>,
}

/// A successful exchange: the response head arrived. The lease goes back to the pool when the
/// response (and request) bodies are complete.
pub struct Exchange {
    pub response: http::Response<UpstreamBody>,
    pub conn: Arc<ConnInfo>,
    pub lease: Lease,
}

/// A failed exchange, with the connection it failed on (if any) for the access log.
pub struct SendError {
    pub error: ProxyError,
    pub conn: Option<Arc<ConnInfo>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        SendError { error, conn: None }
    }
}

/// Addresses to try, without allocating for the common cases (one DNS name, static endpoints).
enum Addrs<'a> {
    One { ips: Arc<[IpAddr]>, port: u16 },
    Static(&'a [SocketAddr]),
    Many(Vec<SocketAddr>),
}

impl Addrs<'_> {
    fn len(&self) -> usize {
        match self {
            Addrs::One { ips, .. } => ips.len(),
            Addrs::Static(v) => v.len(),
            Addrs::Many(v) => v.len(),
        }
    }
    fn get(&self, i: usize) -> SocketAddr {
        match self {
            Addrs::One { ips, port } => SocketAddr::new(ips[i], *port),
            Addrs::Static(v) => v[i],
            Addrs::Many(v) => v[i],
        }
    }
}

impl ClusterPool {
    pub fn new(
        cluster: Arc<Cluster>,
        tls: Option<Arc<TlsContext>>,
        stats: Arc<ClusterStats>,
    ) -> ClusterPool {
        let server_name = if cluster.host_from_request() {
            None
        } else {
            let name = tls
                .as_ref()
                .and_then(|t| t.policy.sni.clone())
                .unwrap_or_else(|| cluster.host.clone());
            ServerName::try_from(name).ok()
        };
        let alpn: &'static [&'static [u8]] = match cluster.protocol {
            p if p.is_http() && p != Protocol::Http2 && p != Protocol::Grpc => &[b"http/1.1"],
            _ => &[],
        };
        let connect_port_differs = match &cluster.endpoints {
            Endpoints::Dns(eps) => eps
                .iter()
                .any(|e| e.port.is_some_and(|p| p != cluster.port)),
            Endpoints::Static(a) => a.iter().any(|a| a.port() != cluster.port),
        };
        let mut pool = ClusterPool {
            fixed_destination: None,
            name: Arc::from(cluster.name.as_str()),
            strip_port: tls.is_some() && connect_port_differs,
            cluster,
            tls,
            stats,
            endpoints: Mutex::new(Default::default()),
            rr: AtomicUsize::new(0),
            sweeping: AtomicBool::new(false),
            server_name,
            alpn,
        };
        if pool.server_name.is_some() && !pool.cluster.host_from_request() {
            pool.fixed_destination = Some(pool.compute_destination(""));
        }
        pool
    }

    /// (host, address, idle connections, requests in flight) for every address used so far.
    pub fn snapshot(&self) -> Vec<(String, SocketAddr, usize, u32)> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, SocketAddr, usize, u32)> = map
            .iter()
            .flat_map(|(h, eps)| {
                eps.iter()
                    .map(move |(a, e)| (h.to_string(), *a, e.idle.len(), e.active))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether this pool can keep serving `cluster` with `tls` after a reload: same cluster
    /// definition and the same TLS material.
    pub fn same_as(&self, cluster: &Cluster, tls: Option<&Arc<TlsContext>>) -> bool {
        format!("{:?}", self.cluster) == format!("{cluster:?}")
            && match (&self.tls, tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.fingerprint == b.fingerprint,
                _ => false,
            }
    }

    /// Istio's `destination_service` and `destination_service_namespace` for a request.
    pub fn destination(&self, host: &str) -> (Arc<str>, Arc<str>) {
        if let Some(d) = &self.fixed_destination {
            return d.clone();
        }
        self.compute_destination(host)
    }

    fn compute_destination(&self, host: &str) -> (Arc<str>, Arc<str>) {
        let service: Arc<str> = if self.cluster.name == "PassthroughCluster" {
            Arc::from("PassthroughCluster")
        } else if self.server_name.is_some() || self.cluster.host.contains('*') && host.is_empty() {
            Arc::from(self.cluster.host.as_str())
        } else {
            Arc::from(host)
        };
        let ns = service
            .split_once(".svc.")
            .and_then(|(h, _)| h.rsplit_once('.').map(|(_, ns)| ns.to_string()))
            .unwrap_or_else(|| "unknown".into());
        (service, Arc::from(ns))
    }

    /// Whether an explicit service port is dropped from Host (TLS originated to another port).
    pub fn strips_port_from_host(&self) -> bool {
        self.strip_port
    }

    /// Number of idle pooled connections (for `/clusters`).
    pub fn idle_connections(&self) -> usize {
        self.endpoints
            .lock()
            .map(|m| {
                m.values()
                    .flat_map(|h| h.values())
                    .map(|e| e.idle.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Sends `req` to the cluster. `host` is the routed host (the DNS name and SNI for wildcard
    /// and passthrough clusters), `req_port` the request's port (passthrough).
    ///
    /// A request without a body goes through egret's own HTTP/1.1 client (`h1client`); one
    /// with a body through hyper's.
    pub async fn send(
        self: &Arc<Self>,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
        mut req: Request<RequestBody>,
    ) -> Result<Exchange, SendError> {
        self.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        let host_key: &str = if self.server_name.is_some() { "" } else { host };
        let (addrs, logical_port) = self.addresses(ctx, host, req_port).await?;
        let target_host = if host.is_empty()
            || self.server_name.is_some() && !self.cluster.host.starts_with('*')
        {
            self.cluster.host.as_str()
        } else {
            host
        };
        let relay = http_body::Body::is_end_stream(req.body());
        let n = addrs.len();
        let start = self.pick(host_key, &addrs);
        let tries = n.min(MAX_CONNECT_ATTEMPTS);
        let mut last: Option<(SocketAddr, AttemptError)> = None;
        for attempt in 0..tries {
            let addr = addrs.get((start + attempt) % n);
            // A pooled connection first.
            while let Some((idle, lease)) = self.checkout(host_key, addr) {
                if idle.since.elapsed() > self.cluster.idle_timeout {
                    self.stats.cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let IdleConn { kind, conn, .. } = idle;
                conn.requests.fetch_add(1, Ordering::Relaxed);
                let mut sender = match kind {
                    Idle::Relay(raw) if relay => {
                        match self.relay(raw, lease, &conn, &req).await {
                            Ok(x) => {
                                crate::h1client::recycle_header_map(req.into_parts().0.headers);
                                return Ok(x);
                            }
                            // Closed under us before answering: another connection may serve a
                            // request that is safe to repeat.
                            Err(e) if e.nothing_received() && is_idempotent(req.method()) => {
                                self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err(e) => {
                                return Err(self.exchange_error(
                                    &e,
                                    e.is_protocol(),
                                    &conn,
                                    target_host,
                                    logical_port,
                                ));
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
                match sender.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(Exchange {
                            response: response.map(UpstreamBody::Hyper),
                            conn,
                            lease: lease.with_idle(Idle::Hyper(sender)),
                        });
                    }
                    Err(mut e) => match e.take_message() {
                        // Not written: the connection closed under us; try another one.
                        Some(r) => {
                            self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                            req = r;
                        }
                        None => {
                            let e = e.into_error();
                            return Err(self.exchange_error(
                                &e,
                                is_parse(&e),
                                &conn,
                                target_host,
                                logical_port,
                            ));
                        }
                    },
                }
            }

            // A new connection.
            self.check_capacity()?;
            match self.dial(addr, host, true).await {
                Err(DialError::Fatal(e)) => return Err(e.into()),
                Err(DialError::Attempt(e)) => last = Some((addr, e)),
                Ok((io, transport)) => {
                    let conn = Arc::new(ConnInfo {
                        id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                        transport,
                        requests: AtomicU32::new(1),
                    });
                    let raw = RawConn::new(io, ActiveGuard::new(&self.stats));
                    if relay {
                        self.mark_active(host_key, addr, 1);
                        let lease = Lease::new(self.clone(), host_key, addr, conn.clone());
                        return match self.relay(raw, lease, &conn, &req).await {
                            Ok(x) => Ok(x),
                            Err(e) => Err(self.exchange_error(
                                &e,
                                e.is_protocol(),
                                &conn,
                                target_host,
                                logical_port,
                            )),
                        };
                    }
                    let mut sender = match self.start_hyper(raw, conn.id).await {
                        Ok(s) => s,
                        Err(e) => {
                            return Err(self.exchange_error(
                                &e,
                                is_parse(&e),
                                &conn,
                                target_host,
                                logical_port,
                            ));
                        }
                    };
                    self.mark_active(host_key, addr, 1);
                    let lease = Lease::new(self.clone(), host_key, addr, conn.clone());
                    return match sender.try_send_request(req).await {
                        Ok(response) => Ok(Exchange {
                            response: response.map(UpstreamBody::Hyper),
                            conn,
                            lease: lease.with_idle(Idle::Hyper(sender)),
                        }),
                        Err(e) => {
                            let e = e.into_error();
                            Err(self.exchange_error(
                                &e,
                                is_parse(&e),
                                &conn,
                                target_host,
                                logical_port,
                            ))
                        }
                    };
                }
            }
        }
        Err(self.connect_failure(host, last, tries).into())
    }

    /// One exchange through egret's own client. The lease (and with it the connection) comes
    /// back through the response body.
    async fn relay(
        &self,
        raw: RawConn,
        lease: Lease,
        conn: &Arc<ConnInfo>,
        req: &Request<RequestBody>,
    ) -> Result<Exchange, ExchangeError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (head, body) = raw.send(req.method(), path, req.headers()).await?;
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

    /// Opens a raw stream for TCP proxying: DNS, connect with failover over the addresses (up
    /// to three), and the cluster's TLS unless `originate_tls` is false (passthrough: the
    /// client's own TLS is spliced through).
    pub async fn open_stream(
        &self,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
        originate_tls: bool,
    ) -> Result<(UpstreamIo, Arc<ConnInfo>), ProxyError> {
        let host_key: &str = if self.server_name.is_some() { "" } else { host };
        let (addrs, _) = self.addresses(ctx, host, req_port).await?;
        let n = addrs.len();
        let start = self.pick(host_key, &addrs);
        let tries = n.min(MAX_CONNECT_ATTEMPTS);
        let mut last = None;
        for attempt in 0..tries {
            let addr = addrs.get((start + attempt) % n);
            self.check_capacity()?;
            match self.dial(addr, host, originate_tls).await {
                Ok((io, transport)) => {
                    let conn = Arc::new(ConnInfo {
                        id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                        transport,
                        requests: AtomicU32::new(1),
                    });
                    return Ok((io, conn));
                }
                Err(DialError::Fatal(e)) => return Err(e),
                Err(DialError::Attempt(e)) => last = Some((addr, e)),
            }
        }
        Err(self.connect_failure(host, last, tries))
    }

    /// The circuit breaker (`connectionPool.tcp.maxConnections`): no new connection beyond it.
    fn check_capacity(&self) -> Result<(), ProxyError> {
        if let Some(max) = self.cluster.max_connections
            && self.stats.cx_active.load(Ordering::Relaxed) >= u64::from(max)
        {
            self.stats.cx_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Overflow {
                cluster: self.cluster.name.clone(),
                max,
            });
        }
        Ok(())
    }

    /// One connection attempt to `addr` (TCP, then TLS when the cluster has a policy and
    /// `tls` is true), counted in the cluster's stats.
    async fn dial(
        &self,
        addr: SocketAddr,
        host: &str,
        tls: bool,
    ) -> Result<(UpstreamIo, Transport), DialError> {
        let policy = if tls { self.tls.as_deref() } else { None };
        let tls = match policy {
            None => None,
            Some(t) => {
                let server_name = match &self.server_name {
                    Some(n) => n.clone(),
                    None => ServerName::try_from(host.to_string()).map_err(|_| {
                        DialError::Fatal(ProxyError::BadRequest(format!(
                            "\"{host}\" is not a valid host name"
                        )))
                    })?,
                };
                Some((t, server_name))
            }
        };
        match connect::connect(addr, self.cluster.connect_timeout, tls, self.alpn).await {
            Err(e) => {
                self.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                if e.is_timeout() {
                    self.stats
                        .cx_connect_timeout
                        .fetch_add(1, Ordering::Relaxed);
                }
                if matches!(e, AttemptError::Tls(_)) {
                    self.stats
                        .ssl_connection_error
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(cluster = %self.cluster.name, %addr, error = e.code(), "upstream connect failed");
                Err(DialError::Attempt(e))
            }
            Ok(ok) => {
                self.stats.cx_total.fetch_add(1, Ordering::Relaxed);
                if policy.is_some() {
                    self.stats.ssl_handshake.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ok)
            }
        }
    }

    /// The error once every attempt failed (or there was nothing to try).
    fn connect_failure(
        &self,
        host: &str,
        last: Option<(SocketAddr, AttemptError)>,
        tries: usize,
    ) -> ProxyError {
        let Some((addr, error)) = last else {
            return ProxyError::NoHealthyUpstream {
                target: host.to_string(),
                reason: format!("{} has no addresses", self.cluster.name),
                code: "upstream.no_healthy_upstream",
            };
        };
        ProxyError::Connect(ConnectFailure {
            target: format!(
                "{}:{}",
                if host.is_empty() {
                    &self.cluster.host
                } else {
                    host
                },
                addr.port()
            ),
            attempts: tries as u32,
            addr,
            error,
        })
    }

    /// Maps a failure after the connection was established.
    fn exchange_error(
        &self,
        e: &(dyn std::error::Error + 'static),
        parse: bool,
        conn: &Arc<ConnInfo>,
        host: &str,
        port: u16,
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
        }
    }

    /// The addresses to try, and the port they stand for (before `--connect-to`).
    async fn addresses(
        &self,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
    ) -> Result<(Addrs<'_>, u16), ProxyError> {
        match &self.cluster.endpoints {
            Endpoints::Static(v) => Ok((
                Addrs::Static(v),
                v.first().map_or(self.cluster.port, |a| a.port()),
            )),
            Endpoints::Dns(eps) if eps.len() == 1 => {
                let ep = &eps[0];
                let name = ep.name.as_deref().unwrap_or(host);
                let port = ep.port.unwrap_or(req_port);
                if let Some(to) = ctx.overrides.connect_to(name, port) {
                    return Ok((Addrs::Many(vec![to]), port));
                }
                let dynamic = ep.name.is_none();
                let ips = ctx.dns.resolve(name).await.map_err(|e| {
                    ctx.metrics.dns_failure(name);
                    let target = format!("{name}:{port}");
                    let reason = format!("{e} (cluster {})", self.cluster.name);
                    let code = e.code();
                    if dynamic {
                        ProxyError::DnsFailed {
                            target,
                            reason,
                            code,
                        }
                    } else {
                        ProxyError::NoHealthyUpstream {
                            target,
                            reason,
                            code,
                        }
                    }
                })?;
                Ok((Addrs::One { ips, port }, port))
            }
            Endpoints::Dns(eps) => {
                let mut out = Vec::new();
                let mut last_err = None;
                for ep in eps {
                    let name = ep.name.as_deref().unwrap_or(host);
                    let port = ep.port.unwrap_or(req_port);
                    if let Some(to) = ctx.overrides.connect_to(name, port) {
                        out.push(to);
                        continue;
                    }
                    match ctx.dns.resolve(name).await {
                        Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port))),
                        Err(e) => {
                            ctx.metrics.dns_failure(name);
                            last_err = Some(e);
                        }
                    }
                }
                if out.is_empty() {
                    return Err(ProxyError::NoHealthyUpstream {
                        target: self.cluster.host.clone(),
                        code: last_err
                            .as_ref()
                            .map_or("upstream.no_healthy_upstream", |e| e.code()),
                        reason: last_err.map_or_else(
                            || format!("cluster {} has no endpoints", self.cluster.name),
                            |e| format!("{e} (cluster {})", self.cluster.name),
                        ),
                    });
                }
                let port = eps.first().and_then(|e| e.port).unwrap_or(req_port);
                Ok((Addrs::Many(out), port))
            }
        }
    }

    /// The first address to try, per the cluster's load-balancing policy.
    fn pick(&self, host_key: &str, addrs: &Addrs) -> usize {
        let n = addrs.len();
        if n <= 1 {
            return 0;
        }
        match self.cluster.lb {
            LbPolicy::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random => random_below(n),
            LbPolicy::LeastRequest => {
                // Power of two choices over the requests in flight.
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
                let active = |i: usize| {
                    map.get(host_key)
                        .and_then(|h| h.get(&addrs.get(i)))
                        .map_or(0, |e| e.active)
                };
                if active(b) < active(a) { b } else { a }
            }
        }
    }

    /// A pooled connection to `addr` that is still open, counted in flight (in the same lock)
    /// and leased to the caller; dropping the lease gives the count back.
    fn checkout(self: &Arc<Self>, host_key: &str, addr: SocketAddr) -> Option<(IdleConn, Lease)> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ep = map.get_mut(host_key)?.get_mut(&addr)?;
        while let Some(mut idle) = ep.idle.pop() {
            if idle.is_open() {
                ep.active = ep.active.saturating_add(1);
                drop(map);
                self.stats.rq_active.fetch_add(1, Ordering::Relaxed);
                let lease = Lease::new(self.clone(), host_key, addr, idle.conn.clone());
                return Some((idle, lease));
            }
        }
        None
    }

    fn mark_active(&self, host_key: &str, addr: SocketAddr, delta: i32) {
        self.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ep = match map.get_mut(host_key) {
            Some(h) => h.entry(addr).or_default(),
            None => map
                .entry(host_key.into())
                .or_default()
                .entry(addr)
                .or_default(),
        };
        ep.active = ep.active.saturating_add_signed(delta);
    }

    /// A request is over; `idle` is its connection if it can serve another. Entries for
    /// addresses (and hosts) with nothing in flight and nothing pooled are dropped, so a
    /// wildcard or passthrough pool does not grow with every host it ever saw.
    fn release(self: &Arc<Self>, host_key: &str, addr: SocketAddr, idle: Option<IdleConn>) {
        self.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(eps) = map.get_mut(host_key) else {
            return;
        };
        let Some(ep) = eps.get_mut(&addr) else {
            return;
        };
        ep.active = ep.active.saturating_sub(1);
        match idle {
            Some(idle) => {
                ep.idle.push(idle);
                // Under the lock: a load and a store, no atomic read-modify-write per request.
                if !self.sweeping.load(Ordering::Relaxed) {
                    self.sweeping.store(true, Ordering::Relaxed);
                    self.start_sweeper();
                }
            }
            None if ep.active == 0 && ep.idle.is_empty() => {
                eps.remove(&addr);
                if eps.is_empty() {
                    map.remove(host_key);
                }
            }
            None => {}
        }
    }

    /// Starts the task that watches this pool's idle connections (see [`SWEEP_EVERY`]). It
    /// holds the pool weakly (a pool replaced by a reload goes away with its connections) and
    /// ends when no idle connection is left.
    fn start_sweeper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self.cluster.idle_timeout.clamp(SWEEP_MIN, SWEEP_EVERY);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                if !pool.sweep() {
                    return;
                }
            }
        });
    }

    /// Closes the idle connections that outlived the idle timeout (Envoy's
    /// `upstream_cx_idle_timeout`) or that the upstream closed, and drops empty entries.
    /// Returns whether any idle connection is left to watch; if not, the sweep ends here.
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let limit = self.cluster.idle_timeout;
        let mut closed: Vec<IdleConn> = Vec::new();
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut left = 0;
        map.retain(|_, eps| {
            eps.retain(|_, ep| {
                let mut i = 0;
                while i < ep.idle.len() {
                    let c = &mut ep.idle[i];
                    if now.saturating_duration_since(c.since) > limit {
                        self.stats.cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
                        closed.push(ep.idle.remove(i));
                    } else if !c.is_open() {
                        self.stats.cx_stale.fetch_add(1, Ordering::Relaxed);
                        closed.push(ep.idle.remove(i));
                    } else {
                        i += 1;
                    }
                }
                left += ep.idle.len();
                ep.active > 0 || !ep.idle.is_empty()
            });
            !eps.is_empty()
        });
        if left == 0 {
            self.sweeping.store(false, Ordering::Relaxed);
        }
        drop(map);
        // Closing sockets (and deregistering them) happens outside the lock.
        drop(closed);
        left > 0
    }
}

fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    (h.finish() % n as u64) as usize
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

/// A connection lent to one request. [`Lease::finish`] returns it to the pool when both bodies
/// completed; dropping it otherwise closes the connection.
pub struct Lease {
    pool: Arc<ClusterPool>,
    host_key: Box<str>,
    addr: SocketAddr,
    conn: Arc<ConnInfo>,
    idle: Option<Idle>,
    released: bool,
}

impl Lease {
    fn new(pool: Arc<ClusterPool>, host_key: &str, addr: SocketAddr, conn: Arc<ConnInfo>) -> Lease {
        Lease {
            pool,
            host_key: host_key.into(),
            addr,
            conn,
            idle: None,
            released: false,
        }
    }

    fn with_idle(mut self, idle: Idle) -> Lease {
        self.idle = Some(idle);
        self
    }

    /// The connection egret's client read the response on, back after the body ended.
    pub fn give_back(&mut self, conn: RawConn) {
        self.idle = Some(Idle::Relay(conn));
    }

    /// The exchange is over. `reusable`: both bodies completed and nothing asked to close.
    pub fn finish(mut self, reusable: bool) {
        let max = self.pool.cluster.max_requests_per_connection;
        let under_limit = max == 0 || self.conn.requests.load(Ordering::Relaxed) < max;
        let kind = match self.idle.take() {
            Some(Idle::Hyper(sender)) if !sender.is_closed() => Some(Idle::Hyper(sender)),
            Some(Idle::Relay(c)) => Some(Idle::Relay(c)),
            _ => None,
        };
        let idle = kind
            .filter(|_| reusable && under_limit)
            .map(|kind| IdleConn {
                kind,
                conn: self.conn.clone(),
                since: Instant::now(),
            });
        self.released = true;
        self.pool.release(&self.host_key, self.addr, idle);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.pool.release(&self.host_key, self.addr, None);
        }
    }
}
