//! The pool of one cluster: its keep-alive connections per (host, address), the requests in
//! flight per address (for least-request balancing), the [`Lease`] that lends a connection to
//! one request and gives it back, and the sweep that closes idle connections the upstream
//! closed or that outlived the idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use rustls::pki_types::ServerName;

use super::connect::Transport;
use super::outlier::Outlier;
use crate::config::{Cluster, Endpoints, Protocol, UpstreamOverrides};
use crate::dns::Dns;
use crate::http::body::RequestBody;
use crate::http::client::RawConn;
use crate::metrics::{ClusterStats, Metrics};
use crate::tls::TlsContext;

/// How often a pool with idle connections looks at them (or at its idle timeout, if shorter):
/// a connection the upstream closed is closed here within this time instead of sitting in
/// CLOSE_WAIT until the next request, and one idle for longer than the timeout is closed
/// without waiting for a request to find it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shortest sweep period, whatever the idle timeout.
const SWEEP_MIN: Duration = Duration::from_millis(20);

/// One upstream connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub transport: Transport,
    pub requests: AtomicU32,
    /// When the connection was opened (`maxConnectionDuration`).
    pub opened: Instant,
}

/// A pooled connection, by the client that drives it.
pub(super) enum Idle {
    Relay(RawConn),
    Hyper(http1::SendRequest<RequestBody>),
}

pub(super) struct IdleConn {
    pub(super) kind: Idle,
    pub(super) conn: Arc<ConnInfo>,
    pub(super) since: Instant,
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
pub(super) struct Endpoint {
    pub(super) idle: Vec<IdleConn>,
    /// Requests in flight (least-request balancing).
    pub(super) active: u32,
}

/// The run-time side of one cluster.
pub struct ClusterPool {
    pub cluster: Arc<Cluster>,
    pub tls: Option<Arc<TlsContext>>,
    pub stats: Arc<ClusterStats>,
    /// host ("" for fixed-host clusters) -> address -> endpoint state.
    pub(super) endpoints: Mutex<crate::FastMap<Box<str>, crate::FastMap<SocketAddr, Endpoint>>>,
    pub(super) rr: AtomicUsize,
    /// A sweep task watches the idle connections. Set and cleared under `endpoints`' lock.
    pub(super) sweeping: AtomicBool,
    /// Precomputed SNI / verified name for clusters whose host does not come from the request.
    pub(super) server_name: Option<ServerName<'static>>,
    pub(super) alpn: &'static [&'static [u8]],
    pub(crate) name: Arc<str>,
    pub(super) strip_port: bool,
    /// `destination()` for clusters whose host does not come from the request.
    pub(super) fixed_destination: Option<(Arc<str>, Arc<str>)>,
    /// Outlier detection, for clusters with `outlierDetection`.
    pub outlier: Option<Arc<Outlier>>,
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
            outlier: cluster.outlier.map(|p| Arc::new(Outlier::new(p))),
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

    /// The cluster name for logs, shared.
    pub fn cluster_name(&self) -> Arc<str> {
        self.name.clone()
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

    /// A pooled connection to `addr` that is still open, counted in flight (in the same lock)
    /// and leased to the caller; dropping the lease gives the count back.
    pub(super) fn checkout(
        self: &Arc<Self>,
        host_key: &str,
        addr: SocketAddr,
    ) -> Option<(IdleConn, Lease)> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ep = map.get_mut(host_key)?.get_mut(&addr)?;
        while let Some(mut idle) = ep.idle.pop() {
            if self.outlived(&idle.conn) {
                continue;
            }
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

    /// Whether a connection is past `maxConnectionDuration` (then it serves no more requests).
    pub(super) fn outlived(&self, conn: &ConnInfo) -> bool {
        let old = self
            .cluster
            .max_connection_duration
            .is_some_and(|d| conn.opened.elapsed() >= d);
        if old {
            self.stats
                .cx_max_duration_reached
                .fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    pub(super) fn mark_active(&self, host_key: &str, addr: SocketAddr, delta: i32) {
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
                if self.stats.rq_pending_active.load(Ordering::Relaxed) > 0 {
                    self.stats.capacity.notify_one();
                }
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
                    } else if self.outlived(&c.conn) {
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
    pub(super) fn new(
        pool: Arc<ClusterPool>,
        host_key: &str,
        addr: SocketAddr,
        conn: Arc<ConnInfo>,
    ) -> Lease {
        Lease {
            pool,
            host_key: host_key.into(),
            addr,
            conn,
            idle: None,
            released: false,
        }
    }

    pub(super) fn with_idle(mut self, idle: Idle) -> Lease {
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
        let under_limit = (max == 0 || self.conn.requests.load(Ordering::Relaxed) < max)
            && !self.pool.outlived(&self.conn);
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
