//! Clusters: one per host and service port of every declared service, one per subset a route
//! names, and the passthrough cluster (ALLOW_ANY). Each applies its destination's traffic
//! policy as Istio does: port-level settings win wholesale, and a subset's policy overrides
//! field by field.
//!
//! The phase also records what the listeners phase needs: the default route of every HTTP port
//! and the hosts declared on the other (L4) ports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::decl::{Model, PortDecl, Resolution, ServiceDecl};
use crate::config::diag::Problems;
use crate::config::lower::tls::{TlsCtx, lower_tls};
use crate::config::model::{
    Cluster, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_TCP_IDLE_TIMEOUT, DnsEndpoint,
    Endpoints, LbPolicy, Protocol, TcpKeepalive, TlsPolicy,
};
use crate::config::overrides::Overrides;
use crate::config::spec::{
    ConnectionPoolSpec, EndpointSpec, LoadBalancerSpec, OutlierSpec, SimpleLbSpec, SubsetSpec,
    TlsSpec, TrafficPolicySpec,
};
use crate::route::ClusterId;

/// A default route (no VirtualService).
pub(crate) struct DefaultRoute {
    pub port: u16,
    pub host: String,
    pub cluster: ClusterId,
    pub timeout: Option<Duration>,
    /// The destination's `retries` (egret's own config), else Istio's default.
    pub retry: Option<crate::route::RetryPolicy>,
    pub origin: String,
}

/// A declared host on a port that is not HTTP (TCP, TLS, HTTPS).
#[derive(Clone)]
pub(crate) struct L4Port {
    pub port: u16,
    pub host: String,
    pub cluster: ClusterId,
    pub protocol: Protocol,
    pub origin: String,
}

/// What the clusters phase hands to the listeners phase.
pub(crate) struct Clusters {
    /// Every cluster, indexed by `ClusterId`; the passthrough cluster is the last.
    pub list: Vec<Arc<Cluster>>,
    pub by_name: HashMap<String, ClusterId>,
    pub default_routes: Vec<DefaultRoute>,
    pub l4_ports: Vec<L4Port>,
    pub passthrough: ClusterId,
}

impl Clusters {
    /// Adds a lowered cluster, unless its name is already taken (reported). A service port's
    /// own cluster (no subset) also gets its default route or its L4 port.
    fn add(
        &mut self,
        svc: &ServiceDecl,
        port: &PortDecl,
        subset: Option<&str>,
        cluster: Cluster,
        problems: &mut Problems,
    ) {
        if let Some(&prev) = self.by_name.get(&cluster.name) {
            problems.error(
                &svc.origin,
                format!("{}.ports[number={}]", svc.path, port.number),
                format!(
                    "host {} port {} is declared twice (also by {})",
                    svc.host, port.number, self.list[prev].origin
                ),
                Some("declare each host and port once; merge the two entries".into()),
            );
            return;
        }
        let id = self.list.len();
        self.by_name.insert(cluster.name.clone(), id);
        if subset.is_none() && !port.protocol.is_http() {
            self.l4_ports.push(L4Port {
                port: port.number,
                host: svc.host.clone(),
                cluster: id,
                protocol: port.protocol,
                origin: cluster.origin.clone(),
            });
        }
        if subset.is_none() && port.protocol.is_http() {
            self.default_routes.push(DefaultRoute {
                port: port.number,
                host: svc.host.clone(),
                cluster: id,
                timeout: svc.timeout,
                retry: svc.retry.clone(),
                origin: cluster.origin.clone(),
            });
        }
        self.list.push(Arc::new(cluster));
    }
}

/// The clusters of every declared service port (and of the subsets routes name), then the
/// passthrough cluster.
pub(crate) fn clusters(model: &Model, overrides: &Overrides, problems: &mut Problems) -> Clusters {
    let mut out = Clusters {
        list: Vec::new(),
        by_name: HashMap::new(),
        default_routes: Vec::new(),
        l4_ports: Vec::new(),
        passthrough: 0,
    };
    let mut tls_cache: HashMap<String, Option<Arc<TlsPolicy>>> = HashMap::new();
    let ca_bundle = overrides.ca_bundle.as_deref();
    let mounts = overrides.mounts.as_slice();
    let mut wanted_subsets: Vec<(String, u16, String)> = model
        .routing
        .as_ref()
        .map(|r| r.subset_refs())
        .unwrap_or_default();
    wanted_subsets.sort();
    wanted_subsets.dedup();
    for svc in &model.services {
        for port in &svc.ports {
            let subsets = wanted_subsets
                .iter()
                .filter(|(h, p, _)| *h == svc.host && *p == port.number)
                .map(|(_, _, s)| Some(s.as_str()));
            for subset in std::iter::once(None).chain(subsets) {
                let subset_spec = match subset {
                    None => None,
                    Some(name) => {
                        match svc
                            .policy
                            .as_ref()
                            .and_then(|p| p.subsets.iter().find(|s| s.name == name))
                        {
                            Some(s) => Some(s),
                            None => continue, // reported by the Istio resolver
                        }
                    }
                };
                let Some(cluster) = lower_cluster(
                    svc,
                    port,
                    subset_spec,
                    problems,
                    &mut tls_cache,
                    ca_bundle,
                    mounts,
                ) else {
                    continue;
                };
                out.add(svc, port, subset, cluster, problems);
            }
        }
    }

    // The passthrough cluster (ALLOW_ANY): the request's host and port, plaintext.
    out.passthrough = out.list.len();
    out.list.push(Arc::new(Cluster {
        name: "PassthroughCluster".into(),
        host: "-".into(),
        port: 0,
        protocol: Protocol::Http,
        endpoints: Endpoints::Dns(vec![DnsEndpoint {
            name: None,
            port: None,
        }]),
        tls: None,
        lb: LbPolicy::RoundRobin,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        max_requests_per_connection: 0,
        max_connections: None,
        max_pending_requests: None,
        max_requests: None,
        max_retries: None,
        max_connection_duration: None,
        tcp_keepalive: None,
        outlier: None,
        origin: "outbound traffic policy ALLOW_ANY".into(),
    }));
    out
}

/// Builds the cluster for one host and port (and subset), applying the destination's traffic
/// policy: port-level settings win wholesale, and a subset's policy overrides field by field,
/// as in Istio.
pub(crate) fn lower_cluster(
    svc: &ServiceDecl,
    port: &PortDecl,
    subset: Option<&SubsetSpec>,
    problems: &mut Problems,
    tls_cache: &mut HashMap<String, Option<Arc<TlsPolicy>>>,
    ca_bundle: Option<&Path>,
    mounts: &[(PathBuf, PathBuf)],
) -> Option<Cluster> {
    let name = format!(
        "outbound|{}|{}|{}",
        port.number,
        subset.map_or("", |s| s.name.as_str()),
        svc.host
    );
    let target_port = port.target_port.unwrap_or(port.number);
    let policy = EffectivePolicy::of(svc, port.number, subset);
    let tls = cluster_tls(
        svc,
        policy.tls.as_ref(),
        problems,
        tls_cache,
        ca_bundle,
        mounts,
    );
    let endpoints_src = subset_endpoints(svc, subset, problems)?;
    let endpoints = endpoints(svc, port, target_port, &endpoints_src, problems);
    let pool = Pool::of(policy.pool.as_ref());
    let outlier = match (&policy.outlier, &svc.policy) {
        (Some((spec, path)), Some(p)) => {
            let o = crate::config::policies::outlier(Some(spec), &p.origin, path, problems);
            if let (Some(o), Endpoints::Static(addrs)) = (&o, &endpoints) {
                crate::config::policies::warn_no_ejection(
                    o,
                    addrs.len(),
                    &name,
                    &p.origin,
                    path,
                    problems,
                );
            }
            o
        }
        _ => None,
    };
    let lb = match policy.lb.and_then(|l| l.simple) {
        Some(SimpleLbSpec::Random) => LbPolicy::Random,
        Some(SimpleLbSpec::LeastRequest | SimpleLbSpec::LeastConn) => LbPolicy::LeastRequest,
        _ => LbPolicy::RoundRobin,
    };

    Some(Cluster {
        name,
        host: svc.host.clone(),
        port: port.number,
        protocol: port.protocol,
        endpoints,
        tls,
        lb,
        connect_timeout: pool.connect_timeout,
        idle_timeout: pool.idle_timeout,
        tcp_idle_timeout: pool.tcp_idle_timeout,
        max_requests_per_connection: pool.max_requests_per_connection,
        max_connections: pool.max_connections,
        max_pending_requests: pool.max_pending_requests,
        max_requests: pool.max_requests,
        max_retries: pool.max_retries,
        max_connection_duration: pool.max_connection_duration,
        tcp_keepalive: pool.tcp_keepalive,
        outlier,
        origin: format!("{}: {}", svc.origin, svc.path),
    })
}

/// The parts of a traffic policy that apply to one service port (and subset).
#[derive(Default)]
struct EffectivePolicy {
    /// The `tls` block and its field path.
    tls: Option<(TlsSpec, String)>,
    pool: Option<ConnectionPoolSpec>,
    lb: Option<LoadBalancerSpec>,
    /// The `outlierDetection` block and its field path.
    outlier: Option<(OutlierSpec, String)>,
}

impl EffectivePolicy {
    /// Effective policy: port-level entry for this service port, else the top level; then the
    /// subset's policy (its port-level entry, else its top level) over that.
    fn of(svc: &ServiceDecl, port: u16, subset: Option<&SubsetSpec>) -> EffectivePolicy {
        let mut out = EffectivePolicy::default();
        if let Some(p) = &svc.policy {
            out.apply(&p.spec, &p.path, port);
            if let Some(s) = subset
                && let Some(stp) = &s.traffic_policy
            {
                let base = p.path.trim_end_matches(".trafficPolicy");
                out.apply(
                    stp,
                    &format!("{base}.subsets[name={}].trafficPolicy", s.name),
                    port,
                );
            }
        }
        out
    }

    /// A port-level entry replaces all three; otherwise each field given replaces its own.
    fn apply(&mut self, tp: &TrafficPolicySpec, path: &str, port: u16) {
        let port_level = tp
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| p.port.number == u32::from(port));
        if let Some((i, pl)) = port_level {
            self.tls = pl
                .tls
                .clone()
                .map(|t| (t, format!("{path}.portLevelSettings[{i}].tls")));
            self.pool = pl.connection_pool.clone();
            self.lb = pl.load_balancer.clone();
            self.outlier = pl
                .outlier_detection
                .clone()
                .map(|o| (o, format!("{path}.portLevelSettings[{i}].outlierDetection")));
        } else {
            if tp.outlier_detection.is_some() {
                self.outlier = tp
                    .outlier_detection
                    .clone()
                    .map(|o| (o, format!("{path}.outlierDetection")));
            }
            if tp.tls.is_some() {
                self.tls = tp.tls.clone().map(|t| (t, format!("{path}.tls")));
            }
            if tp.connection_pool.is_some() {
                self.pool = tp.connection_pool.clone();
            }
            if tp.load_balancer.is_some() {
                self.lb = tp.load_balancer.clone();
            }
        }
    }
}

/// The cluster's TLS policy: each written `tls` block is lowered once (cached by origin and
/// path), and the ServiceEntry's subjectAltNames apply when the rule gives none.
fn cluster_tls(
    svc: &ServiceDecl,
    tls_spec: Option<&(TlsSpec, String)>,
    problems: &mut Problems,
    tls_cache: &mut HashMap<String, Option<Arc<TlsPolicy>>>,
    ca_bundle: Option<&Path>,
    mounts: &[(PathBuf, PathBuf)],
) -> Option<Arc<TlsPolicy>> {
    let tls = match (tls_spec, &svc.policy) {
        (Some((spec, path)), Some(p)) => {
            let key = format!("{}|{path}", p.origin);
            match tls_cache.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let ctx = TlsCtx {
                        base_dir: p.base_dir.as_deref(),
                        ca_bundle,
                        credentials: p.credentials.as_deref().map(|c| (c, p.namespace.as_str())),
                        mounts,
                    };
                    let t = lower_tls(spec, &p.origin, path, &ctx, problems);
                    tls_cache.insert(key, t.clone());
                    t
                }
            }
        }
        _ => None,
    };
    // ServiceEntry subjectAltNames apply when the rule gives none.
    match tls {
        Some(t) if t.subject_alt_names.is_empty() && !svc.subject_alt_names.is_empty() => {
            let mut t = (*t).clone();
            t.subject_alt_names = svc.subject_alt_names.clone();
            Some(Arc::new(t))
        }
        t => t,
    }
}

/// The endpoints a subset selects by their labels (all of them without a subset or labels);
/// `None` (reported) when a subset selects none.
fn subset_endpoints<'a>(
    svc: &'a ServiceDecl,
    subset: Option<&SubsetSpec>,
    problems: &mut Problems,
) -> Option<Vec<&'a EndpointSpec>> {
    match subset {
        Some(s) if !s.labels.is_empty() => {
            let selected: Vec<&EndpointSpec> = svc
                .endpoints
                .iter()
                .filter(|ep| s.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                .collect();
            if selected.is_empty() {
                problems.error(
                    &svc.policy.as_ref().map_or_else(|| svc.origin.clone(), |p| p.origin.clone()),
                    format!("subsets[name={}].labels", s.name),
                    format!(
                        "subset {} of {} selects no endpoint: no endpoint of the ServiceEntry carries the labels {:?}",
                        s.name, svc.host, s.labels
                    ),
                    Some("add the labels to ServiceEntry endpoints, or remove them from the subset".into()),
                );
                return None;
            }
            Some(selected)
        }
        _ => Some(svc.endpoints.iter().collect()),
    }
}

/// Where the cluster connects: fixed addresses (STATIC), or names to resolve (the endpoints',
/// else the host itself; a wildcard host resolves the request's host).
fn endpoints(
    svc: &ServiceDecl,
    port: &PortDecl,
    target_port: u16,
    endpoints_src: &[&EndpointSpec],
    problems: &mut Problems,
) -> Endpoints {
    let wildcard = svc.host.starts_with('*');
    match svc.resolution {
        Resolution::Static => {
            let mut addrs = Vec::new();
            for (i, ep) in endpoints_src.iter().enumerate() {
                let Ok(ip) = ep.address.parse::<IpAddr>() else {
                    problems.error(
                        &svc.origin,
                        format!("{}.endpoints[{i}].address", svc.path),
                        format!(
                            "\"{}\" is not an IP address, which resolution STATIC needs",
                            ep.address
                        ),
                        Some("use an IP address, or set resolution: DNS for host names".into()),
                    );
                    continue;
                };
                addrs.push(SocketAddr::new(ip, endpoint_port(ep, port, target_port)));
            }
            if svc.endpoints.is_empty() {
                problems.error(
                    &svc.origin,
                    format!("{}.endpoints", svc.path),
                    "resolution STATIC needs at least one endpoint",
                    Some("add endpoints with IP addresses, or use resolution: DNS".into()),
                );
            }
            Endpoints::Static(addrs)
        }
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::None => {
            if endpoints_src.is_empty() {
                Endpoints::Dns(vec![DnsEndpoint {
                    name: (!wildcard).then(|| svc.host.clone()),
                    port: Some(target_port),
                }])
            } else {
                Endpoints::Dns(
                    endpoints_src
                        .iter()
                        .map(|ep| DnsEndpoint {
                            name: Some(ep.address.to_ascii_lowercase()),
                            port: Some(endpoint_port(ep, port, target_port)),
                        })
                        .collect(),
                )
            }
        }
    }
}

/// Endpoint port precedence (pilot): `endpoints[].ports[<port name>]` > `targetPort` > `number`.
fn endpoint_port(ep: &EndpointSpec, port: &PortDecl, target_port: u16) -> u16 {
    port.name
        .as_ref()
        .and_then(|n| ep.ports.get(n))
        .and_then(|p| u16::try_from(*p).ok())
        .unwrap_or(target_port)
}

/// The connection pool's timeouts and limits (`connectionPool`), with Envoy's defaults.
struct Pool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    tcp_idle_timeout: Duration,
    /// 0 = unlimited.
    max_requests_per_connection: u32,
    max_connections: Option<u32>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
    max_connection_duration: Option<Duration>,
    tcp_keepalive: Option<TcpKeepalive>,
}

impl Pool {
    fn of(pool: Option<&ConnectionPoolSpec>) -> Pool {
        match pool {
            Some(p) => {
                let tcp = p.tcp.clone().unwrap_or_default();
                let http = p.http.clone().unwrap_or_default();
                Pool {
                    connect_timeout: tcp.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
                    // Envoy: 0 disables the pool's idle timeout.
                    idle_timeout: match http.idle_timeout.or(tcp.idle_timeout).map(|d| d.0) {
                        Some(d) if d.is_zero() => Duration::MAX,
                        Some(d) => d,
                        None => DEFAULT_IDLE_TIMEOUT,
                    },
                    // Envoy: 0 disables the TCP idle timeout.
                    tcp_idle_timeout: match tcp.idle_timeout.map(|d| d.0) {
                        Some(d) if d.is_zero() => Duration::MAX,
                        Some(d) => d,
                        None => DEFAULT_TCP_IDLE_TIMEOUT,
                    },
                    max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
                    max_connections: tcp.max_connections,
                    // Istio: 0 means unset (the default).
                    max_pending_requests: http.http1_max_pending_requests.filter(|n| *n > 0),
                    max_requests: http.http2_max_requests.filter(|n| *n > 0),
                    max_retries: http.max_retries.filter(|n| *n > 0),
                    max_connection_duration: tcp
                        .max_connection_duration
                        .map(|d| d.0)
                        .filter(|d| !d.is_zero()),
                    tcp_keepalive: tcp.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
                        probes: k.probes,
                        time: k.time.map(|d| d.0),
                        interval: k.interval.map(|d| d.0),
                    }),
                }
            }
            None => Pool {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
                max_requests_per_connection: 0,
                max_connections: None,
                max_pending_requests: None,
                max_requests: None,
                max_retries: None,
                max_connection_duration: None,
                tcp_keepalive: None,
            },
        }
    }
}
