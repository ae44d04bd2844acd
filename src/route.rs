//! Pure request routing: (listener, port, host, request line, headers) -> decision. No I/O.
//!
//! The shape follows Envoy's: a listener has a route table; the table picks the route
//! configuration for the destination port (the port the app called, as Istio's sidecar does with
//! its per-port listeners, or the gateway server's fixed port); the route configuration picks a
//! virtual host by Host (exact name, then the longest `*.suffix`, then `*`; the port in Host is
//! ignored); the virtual host's routes are tried in order and the first match wins. No virtual
//! host means the listener's fallback (`block_all`, `allow_any` or 404).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};

mod policy;
pub use policy::{
    AttemptFailure, DEFAULT_BACKOFF_BASE, Fault, FaultAbort, FaultDelay, RetryOn, RetryPolicy,
    fault_applies,
};

/// Index of a cluster in `Config::clusters`.
pub type ClusterId = usize;

/// Where the route configuration's port comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSource {
    /// The port of the request's authority (default 80): the sidecar's outbound listener.
    Request,
    /// A fixed port: a gateway server listener.
    Fixed(u16),
}

/// What happens to a host that no virtual host claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// REGISTRY_ONLY: a local 502, route name `block_all`.
    BlockAll,
    /// ALLOW_ANY: forward to the passthrough cluster, route name `allow_any`.
    AllowAny(ClusterId),
    /// Gateways: 404 `NR` (`route_not_found`).
    NotFound,
}

#[derive(Debug)]
pub struct RouteTable {
    pub port_source: PortSource,
    pub ports: crate::FastMap<u16, VirtualHosts>,
    pub fallback: Fallback,
    /// Hosts declared on non-HTTP ports (TLS, HTTPS, TCP): where `CONNECT host:port` may go.
    pub tunnels: crate::FastMap<u16, VirtualHosts>,
    /// Under transparent capture (the outbound listener only): opaque TCP by original
    /// destination.
    pub captured: Option<CapturedRoutes>,
}

/// Routing of a listener that is not HTTP.
#[derive(Debug)]
pub enum L4Routes {
    /// Opaque TCP: every connection goes to the clusters (VirtualService `tcp` or the port's
    /// one host).
    Tcp {
        clusters: WeightedClusters,
        route_name: Option<std::sync::Arc<str>>,
    },
    /// TLS passthrough: the ClientHello's SNI picks the virtual host (exact, `*.suffix`, `*`).
    Sni {
        port: u16,
        hosts: VirtualHosts,
        fallback: L4Fallback,
    },
}

/// What happens to an SNI (or CONNECT host) no virtual host claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Fallback {
    /// REGISTRY_ONLY and gateways: the connection is refused and logged.
    Refuse,
    /// ALLOW_ANY: spliced to the host the client named, at the listener's port.
    AllowAny(ClusterId),
}

impl L4Routes {
    /// The cluster for a connection with `sni` (TLS passthrough) or any (TCP).
    pub fn pick(&self, sni: Option<&str>) -> Option<(ClusterId, Option<std::sync::Arc<str>>)> {
        match self {
            L4Routes::Tcp {
                clusters,
                route_name,
            } => Some((clusters.pick(), route_name.clone())),
            L4Routes::Sni {
                hosts, fallback, ..
            } => {
                let sni = sni?;
                match hosts.find(sni) {
                    Some(vh) => vh.routes.first().and_then(|r| match &r.action {
                        RouteAction::Forward(w) => Some((w.pick(), r.name.clone())),
                        _ => None,
                    }),
                    None => match fallback {
                        L4Fallback::AllowAny(c) => {
                            Some((*c, Some(std::sync::Arc::from("allow_any"))))
                        }
                        L4Fallback::Refuse => None,
                    },
                }
            }
        }
    }
}

/// The virtual hosts of one route configuration (one port).
#[derive(Debug, Default)]
pub struct VirtualHosts {
    exact: crate::FastMap<Box<str>, usize>,
    /// `".example.com"` -> index, for `*.example.com`.
    suffixes: crate::FastMap<Box<str>, usize>,
    any: Option<usize>,
    pub hosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub struct VirtualHost {
    /// `host:port`, as Envoy names virtual hosts.
    pub name: String,
    /// The domain pattern (`www.oracle.com`, `*.example.com`, `*`).
    pub domain: String,
    pub routes: Vec<HttpRoute>,
}

#[derive(Debug)]
pub struct HttpRoute {
    /// Logged as `%ROUTE_NAME%`; `None` prints `-`.
    pub name: Option<std::sync::Arc<str>>,
    /// OR of the matches; empty matches everything.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    /// Whole-request timeout (VirtualService `timeout`); `None` = no timeout, as in Istio.
    pub timeout: Option<Duration>,
    /// VirtualService `retries`, or Istio's default policy.
    pub retry: RetryPolicy,
    /// VirtualService `fault`.
    pub fault: Option<Fault>,
    /// VirtualService `rewrite`.
    pub rewrite: Option<Rewrite>,
    /// VirtualService `headers.request` / `headers.response`.
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl HttpRoute {
    /// A route that forwards everything to `clusters`.
    pub fn forward(
        name: Option<std::sync::Arc<str>>,
        clusters: WeightedClusters,
        timeout: Option<Duration>,
    ) -> HttpRoute {
        HttpRoute {
            name,
            matches: Vec::new(),
            action: RouteAction::Forward(clusters),
            timeout,
            retry: RetryPolicy::istio_default(),
            fault: None,
            rewrite: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(WeightedClusters),
    Direct { status: u16, body: Option<String> },
    Redirect(Redirect),
}

/// `HTTPRewrite`: `uri` replaces the matched prefix (or the whole path), `authority` the Host.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

/// `HTTPRedirect`.
#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub uri: Option<String>,
    pub code: u16,
}

/// Header mutations (`set` overwrites, `add` appends, `remove` deletes).
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[derive(Debug)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    /// Cluster indices in smooth weighted round-robin order, one cycle.
    schedule: Vec<u32>,
    next: AtomicU32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: ClusterId,
    pub weight: u32,
}

impl WeightedClusters {
    pub fn single(cluster: ClusterId) -> Self {
        Self::new(vec![WeightedCluster { cluster, weight: 1 }])
    }

    /// Weights are relative; a single destination gets everything whatever its weight, and
    /// when all weights are 0 they count as equal.
    pub fn new(mut clusters: Vec<WeightedCluster>) -> Self {
        if clusters.len() == 1 || clusters.iter().all(|c| c.weight == 0) {
            for c in &mut clusters {
                c.weight = 1;
            }
        }
        // One cycle of nginx's smooth weighted round robin over the weights reduced by their
        // gcd: any window of the cycle's length has each cluster exactly its share, and the
        // picks are interleaved (75/25 gives a,a,b,a, not 75 a's then 25 b's).
        let g = clusters
            .iter()
            .map(|c| c.weight)
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let weights: Vec<i64> = clusters.iter().map(|c| i64::from(c.weight / g)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..current.len())
                .max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))
                .unwrap_or(0);
            current[best] -= total;
            schedule.push(best as u32);
        }
        WeightedClusters {
            clusters,
            schedule,
            next: AtomicU32::new(0),
        }
    }

    /// The next cluster in the schedule.
    pub fn pick(&self) -> ClusterId {
        if self.clusters.len() == 1 || self.schedule.is_empty() {
            return self.clusters[0].cluster;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.schedule.len();
        self.clusters[self.schedule[n] as usize].cluster
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One `HTTPMatchRequest`: all present conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    /// Header name (lowercase) -> condition; `None` = must be present.
    pub headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub without_headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub ignore_uri_case: bool,
}

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2-style full-string match, as Envoy's `safe_regex`.
    Regex(regex::Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r
                .find(value)
                .is_some_and(|m| m.start() == 0 && m.end() == value.len()),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value.eq_ignore_ascii_case(s),
            StringMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|v| v.eq_ignore_ascii_case(p)),
            StringMatch::Regex(_) => self.matches(value),
        }
    }
}

/// What routing needs from a request.
pub struct RequestInfo<'a> {
    /// Lowercase host without port or trailing dot.
    pub host: &'a str,
    /// The authority's port (default 80).
    pub port: u16,
    pub method: &'a Method,
    /// Path with query.
    pub path_and_query: &'a str,
    /// The authority as received (`:authority` / Host), for `authority` matches.
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub enum Decision<'a> {
    /// A route matched; for `RouteAction::Forward`, `cluster` is the picked destination.
    Route {
        route: &'a HttpRoute,
        /// The match that selected the route (`None` for a route without matches).
        matched: Option<&'a RouteMatch>,
        cluster: Option<ClusterId>,
    },
    /// REGISTRY_ONLY refusal (`block_all`).
    BlockAll,
    /// ALLOW_ANY passthrough to the original destination.
    AllowAny { cluster: ClusterId },
    /// A virtual host matched but none of its routes did, or the gateway has no such host.
    NoRoute,
}

impl RouteTable {
    pub fn new(port_source: PortSource, fallback: Fallback) -> Self {
        RouteTable {
            port_source,
            ports: Default::default(),
            fallback,
            tunnels: Default::default(),
            captured: None,
        }
    }

    /// Where `CONNECT host:port` goes: a declared TLS/HTTPS/TCP host and port, else the
    /// passthrough cluster under ALLOW_ANY.
    pub fn tunnel(
        &self,
        host: &str,
        port: u16,
    ) -> Option<(ClusterId, Option<std::sync::Arc<str>>)> {
        if let Some(vh) = self.tunnels.get(&port).and_then(|v| v.find(host))
            && let Some(r) = vh.routes.first()
            && let RouteAction::Forward(w) = &r.action
        {
            return Some((w.pick(), r.name.clone()));
        }
        match &self.fallback {
            Fallback::AllowAny(c) => Some((*c, Some(std::sync::Arc::from("allow_any")))),
            _ => None,
        }
    }

    /// The route configuration port for a request to `request_port`.
    pub fn port_for(&self, request_port: u16) -> u16 {
        match self.port_source {
            PortSource::Request => request_port,
            PortSource::Fixed(p) => p,
        }
    }

    pub fn route<'a>(&'a self, req: &RequestInfo<'_>) -> Decision<'a> {
        let port = self.port_for(req.port);
        let vhost = self.ports.get(&port).and_then(|v| v.find(req.host));
        let Some(vhost) = vhost else {
            return match &self.fallback {
                Fallback::BlockAll => Decision::BlockAll,
                Fallback::AllowAny(cluster) => Decision::AllowAny { cluster: *cluster },
                Fallback::NotFound => Decision::NoRoute,
            };
        };
        for route in &vhost.routes {
            let matched = if route.matches.is_empty() {
                None
            } else {
                match route.matches.iter().find(|m| m.matches(req)) {
                    Some(m) => Some(m),
                    None => continue,
                }
            };
            let cluster = match &route.action {
                RouteAction::Forward(w) => Some(w.pick()),
                _ => None,
            };
            return Decision::Route {
                route,
                matched,
                cluster,
            };
        }
        Decision::NoRoute
    }

    /// The virtual hosts for `port`, created on first use.
    pub fn vhosts_mut(&mut self, port: u16) -> &mut VirtualHosts {
        self.ports.entry(port).or_default()
    }
}

impl VirtualHosts {
    /// Finds the virtual host for `host` (already lowercase, no port).
    pub fn find(&self, host: &str) -> Option<&VirtualHost> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.hosts[i]);
        }
        if !self.suffixes.is_empty() {
            // Longest suffix first: try ".b.c" then ".c" for "a.b.c". The label before the dot
            // is never empty, so `*.example.com` does not match "example.com".
            for (i, b) in host.bytes().enumerate().skip(1) {
                if b == b'.'
                    && let Some(&v) = self.suffixes.get(&host[i..])
                {
                    return Some(&self.hosts[v]);
                }
            }
        }
        self.any.map(|i| &self.hosts[i])
    }

    /// The virtual host for the domain pattern, if one was added.
    pub fn get_mut(&mut self, domain: &str) -> Option<&mut VirtualHost> {
        let i = if domain == "*" {
            self.any?
        } else if let Some(suffix) = domain.strip_prefix('*') {
            *self.suffixes.get(suffix)?
        } else {
            *self.exact.get(domain)?
        };
        self.hosts.get_mut(i)
    }

    /// Adds a virtual host for a domain pattern; returns `false` if the pattern already has one.
    pub fn insert(&mut self, vhost: VirtualHost) -> bool {
        let domain = vhost.domain.clone();
        if self.get_mut(&domain).is_some() {
            return false;
        }
        let i = self.hosts.len();
        self.hosts.push(vhost);
        if domain == "*" {
            self.any = Some(i);
        } else if let Some(suffix) = domain.strip_prefix('*') {
            self.suffixes.insert(suffix.into(), i);
        } else {
            self.exact.insert(domain.into(), i);
        }
        true
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        if let Some(m) = &self.uri {
            let path = req.path_and_query;
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let ok = if self.ignore_uri_case {
                m.matches_ignore_case(path)
            } else {
                m.matches(path)
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method
            && !m.matches(req.method.as_str())
        {
            return false;
        }
        if let Some(m) = &self.authority
            && !m.matches(req.authority)
        {
            return false;
        }
        if let Some(m) = &self.scheme
            && !m.matches(req.scheme)
        {
            return false;
        }
        for (name, cond) in &self.headers {
            if !header_matches(req.headers, name, cond.as_ref()) {
                return false;
            }
        }
        for (name, cond) in &self.without_headers {
            if header_matches(req.headers, name, cond.as_ref()) {
                return false;
            }
        }
        if !self.query_params.is_empty() {
            let query = req.path_and_query.split_once('?').map_or("", |(_, q)| q);
            for (key, cond) in &self.query_params {
                let value = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == key).then_some(v)
                });
                if !value.is_some_and(|v| cond.matches(v)) {
                    return false;
                }
            }
        }
        true
    }
}

fn header_matches(
    headers: &HeaderMap,
    name: &http::HeaderName,
    cond: Option<&StringMatch>,
) -> bool {
    match headers.get(name) {
        None => false,
        Some(v) => match cond {
            None => true,
            Some(m) => v.to_str().is_ok_and(|v| m.matches(v)),
        },
    }
}

/// Normalizes a host for matching: lowercase, no trailing dot, no brackets around IPv6.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(domain: &str, cluster: ClusterId) -> VirtualHost {
        VirtualHost {
            name: format!("{domain}:80"),
            domain: domain.into(),
            routes: vec![HttpRoute::forward(
                None,
                WeightedClusters::single(cluster),
                None,
            )],
        }
    }

    fn req<'a>(host: &'a str, port: u16, headers: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            host,
            port,
            method: &Method::GET,
            path_and_query: "/a/b?x=1",
            authority: host,
            scheme: "http",
            headers,
        }
    }

    fn forward_to(d: Decision<'_>) -> Option<ClusterId> {
        match d {
            Decision::Route { cluster, .. } => cluster,
            _ => None,
        }
    }

    #[test]
    fn exact_then_longest_suffix_then_any() {
        let mut t = RouteTable::new(PortSource::Request, Fallback::BlockAll);
        let v = t.vhosts_mut(80);
        assert!(v.insert(vhost("www.example.com", 1)));
        assert!(v.insert(vhost("*.example.com", 2)));
        assert!(v.insert(vhost("*.a.example.com", 3)));
        assert!(!v.insert(vhost("*.example.com", 9)), "duplicate domain");
        let h = HeaderMap::new();
        assert_eq!(
            forward_to(t.route(&req("www.example.com", 80, &h))),
            Some(1)
        );
        assert_eq!(
            forward_to(t.route(&req("x.a.example.com", 80, &h))),
            Some(3)
        );
        assert_eq!(forward_to(t.route(&req("b.example.com", 80, &h))), Some(2));
        // The suffix wildcard does not cover the bare domain.
        assert!(matches!(
            t.route(&req("example.com", 80, &h)),
            Decision::BlockAll
        ));
        // Another port has no virtual hosts.
        assert!(matches!(
            t.route(&req("www.example.com", 8080, &h)),
            Decision::BlockAll
        ));
        t.vhosts_mut(80).insert(vhost("*", 7));
        assert_eq!(forward_to(t.route(&req("example.com", 80, &h))), Some(7));
    }

    #[test]
    fn fixed_port_tables_ignore_the_request_port() {
        let mut t = RouteTable::new(PortSource::Fixed(3000), Fallback::NotFound);
        t.vhosts_mut(3000).insert(vhost("svc.example.com", 4));
        let h = HeaderMap::new();
        assert_eq!(
            forward_to(t.route(&req("svc.example.com", 80, &h))),
            Some(4)
        );
        assert!(matches!(
            t.route(&req("other.example.com", 80, &h)),
            Decision::NoRoute
        ));
    }

    #[test]
    fn weighted_round_robin_is_exact() {
        let w = WeightedClusters::new(vec![
            WeightedCluster {
                cluster: 0,
                weight: 75,
            },
            WeightedCluster {
                cluster: 1,
                weight: 25,
            },
        ]);
        let picks: Vec<ClusterId> = (0..8).map(|_| w.pick()).collect();
        assert_eq!(
            picks,
            vec![0, 0, 1, 0, 0, 0, 1, 0],
            "smooth: 3:1 interleaved"
        );
        let ones = (0..400).filter(|_| w.pick() == 1).count();
        assert_eq!(ones, 100);
        let w = WeightedClusters::new(vec![
            WeightedCluster {
                cluster: 7,
                weight: 1,
            },
            WeightedCluster {
                cluster: 8,
                weight: 0,
            },
        ]);
        assert!((0..10).all(|_| w.pick() == 7), "weight 0 gets nothing");
    }

    #[test]
    fn first_matching_route_wins_and_matches_are_anded() {
        let mut headers = HeaderMap::new();
        headers.insert("x-env", "canary".parse().expect("header"));
        let mut t = RouteTable::new(PortSource::Request, Fallback::BlockAll);
        let mut vh = vhost("api.example.com", 0);
        let mut canary = HttpRoute::forward(
            Some(std::sync::Arc::from("canary")),
            WeightedClusters::single(5),
            None,
        );
        canary.matches = vec![RouteMatch {
            uri: Some(StringMatch::Prefix("/a/".into())),
            headers: vec![(
                http::HeaderName::from_static("x-env"),
                Some(StringMatch::Exact("canary".into())),
            )],
            ..RouteMatch::default()
        }];
        vh.routes.insert(0, canary);
        t.vhosts_mut(80).insert(vh);
        match t.route(&req("api.example.com", 80, &headers)) {
            Decision::Route { cluster, route, .. } => {
                assert_eq!(cluster, Some(5));
                assert_eq!(route.name.as_deref(), Some("canary"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let empty = HeaderMap::new();
        assert_eq!(
            forward_to(t.route(&req("api.example.com", 80, &empty))),
            Some(0)
        );
    }

    #[test]
    fn regex_is_a_full_match() {
        let m = StringMatch::Regex(regex::Regex::new("/v[0-9]+").expect("regex"));
        assert!(m.matches("/v12"));
        assert!(!m.matches("/v12/x"));
        assert!(!m.matches("x/v12"));
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("WWW.Example.COM."), "www.example.com");
        assert_eq!(normalize_host("[::1]"), "::1");
        assert!(matches!(
            normalize_host("plain.example"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Routing of connections the capture rules redirected to the outbound listener, by their
// original destination, as Envoy's outbound listener chooses a filter chain by destination
// address and port before anything is read:
//
// 1. an exact `IP:port`: a ServiceEntry address, the VIP egret's DNS proxy gave the host
//    (240.240.0.0/16, Istio's `ISTIO_META_DNS_AUTO_ALLOCATE`), or a STATIC endpoint;
// 2. a ServiceEntry `addresses` CIDR and port (the longest prefix wins);
// 3. the port alone, when exactly one TCP host declares it and has no address (Istio's
//    `0.0.0.0:PORT` listener): any destination on that port is that host;
// 4. else the fallback: ALLOW_ANY's PassthroughCluster (to the original destination) or
//    REGISTRY_ONLY's BlackHoleCluster.
//
// Only opaque-TCP ports are in the table; HTTP and TLS are told by the first bytes instead
// (the listener sniffs them) and routed by Host or SNI and the original port.

/// Where one opaque-TCP destination goes.
#[derive(Debug)]
pub struct TcpTarget {
    /// The declared host (logged; the TLS name when the DestinationRule originates TLS).
    pub host: std::sync::Arc<str>,
    pub clusters: WeightedClusters,
    /// VirtualService `tcp` route name, if one applies.
    pub route_name: Option<std::sync::Arc<str>>,
}

/// The opaque-TCP routes of a captured outbound listener.
#[derive(Debug)]
pub struct CapturedRoutes {
    exact: crate::FastMap<std::net::SocketAddr, std::sync::Arc<TcpTarget>>,
    /// (network, prefix length, port, target), longest prefix first.
    cidrs: Vec<(std::net::IpAddr, u8, u16, std::sync::Arc<TcpTarget>)>,
    by_port: crate::FastMap<u16, std::sync::Arc<TcpTarget>>,
    pub fallback: L4Fallback,
}

/// What the table says about an original destination.
#[derive(Debug)]
pub enum CapturedMatch<'a> {
    /// A declared TCP destination.
    Tcp(&'a TcpTarget),
    /// Nothing declared: sniff for HTTP or TLS, else the fallback.
    Unknown,
}

impl CapturedRoutes {
    pub fn new(fallback: L4Fallback) -> CapturedRoutes {
        CapturedRoutes {
            exact: Default::default(),
            cidrs: Vec::new(),
            by_port: Default::default(),
            fallback,
        }
    }

    /// Routes `addr` (an exact address) to `target`; `false` if the address was taken.
    pub fn add_exact(
        &mut self,
        addr: std::net::SocketAddr,
        target: std::sync::Arc<TcpTarget>,
    ) -> bool {
        let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if self.exact.contains_key(&addr) {
            return false;
        }
        self.exact.insert(addr, target);
        true
    }

    /// Routes `net/prefix` on `port` to `target` (a prefix of the full length is exact).
    pub fn add_cidr(
        &mut self,
        net: std::net::IpAddr,
        prefix: u8,
        port: u16,
        target: std::sync::Arc<TcpTarget>,
    ) {
        let full = if net.is_ipv4() { 32 } else { 128 };
        if prefix >= full {
            self.add_exact(std::net::SocketAddr::new(net, port), target);
            return;
        }
        self.cidrs.push((mask(net, prefix), prefix, port, target));
        self.cidrs.sort_by_key(|c| std::cmp::Reverse(c.1));
    }

    /// Routes every destination on `port` to `target`.
    pub fn add_port(&mut self, port: u16, target: std::sync::Arc<TcpTarget>) {
        self.by_port.insert(port, target);
    }

    /// Whether any TCP destination is declared (else every connection is sniffed).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.cidrs.is_empty() && self.by_port.is_empty()
    }

    pub fn lookup(&self, dst: std::net::SocketAddr) -> CapturedMatch<'_> {
        let ip = dst.ip().to_canonical();
        if let Some(t) = self.exact.get(&std::net::SocketAddr::new(ip, dst.port())) {
            return CapturedMatch::Tcp(t);
        }
        for (net, prefix, port, t) in &self.cidrs {
            if *port == dst.port() && net.is_ipv4() == ip.is_ipv4() && mask(ip, *prefix) == *net {
                return CapturedMatch::Tcp(t);
            }
        }
        match self.by_port.get(&dst.port()) {
            Some(t) => CapturedMatch::Tcp(t),
            None => CapturedMatch::Unknown,
        }
    }

    /// The passthrough cluster under ALLOW_ANY.
    pub fn passthrough(&self) -> Option<ClusterId> {
        match self.fallback {
            L4Fallback::AllowAny(c) => Some(c),
            L4Fallback::Refuse => None,
        }
    }
}

/// `ip` with all but the first `prefix` bits cleared.
fn mask(ip: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            std::net::IpAddr::V4((bits & m).into())
        }
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            std::net::IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod captured_tests {
    use super::*;
    use std::sync::Arc;

    fn target(host: &str, c: ClusterId) -> std::sync::Arc<TcpTarget> {
        Arc::new(TcpTarget {
            host: Arc::from(host),
            clusters: WeightedClusters::single(c),
            route_name: None,
        })
    }

    fn host_of(m: CapturedMatch<'_>) -> Option<String> {
        match m {
            CapturedMatch::Tcp(t) => Some(t.host.to_string()),
            CapturedMatch::Unknown => None,
        }
    }

    #[test]
    fn exact_then_longest_prefix_then_port_then_unknown() {
        let mut t = CapturedRoutes::new(L4Fallback::Refuse);
        assert!(t.add_exact("240.240.0.7:9092".parse().unwrap(), target("kafka-a", 1)));
        assert!(!t.add_exact("240.240.0.7:9092".parse().unwrap(), target("dup", 9)));
        t.add_cidr("10.0.0.0".parse().unwrap(), 8, 5432, target("wide", 2));
        t.add_cidr("10.1.0.0".parse().unwrap(), 16, 5432, target("narrow", 3));
        t.add_port(6379, target("redis", 4));
        let look = |s: &str| host_of(t.lookup(s.parse().unwrap()));
        assert_eq!(look("240.240.0.7:9092").as_deref(), Some("kafka-a"));
        assert_eq!(look("240.240.0.8:9092"), None);
        assert_eq!(look("10.1.2.3:5432").as_deref(), Some("narrow"));
        assert_eq!(look("10.9.2.3:5432").as_deref(), Some("wide"));
        assert_eq!(look("10.9.2.3:5433"), None);
        assert_eq!(look("192.0.2.1:6379").as_deref(), Some("redis"));
        // IPv4-mapped IPv6 is the same destination.
        assert_eq!(
            look("[::ffff:240.240.0.7]:9092").as_deref(),
            Some("kafka-a")
        );
        assert!(t.passthrough().is_none());
    }
}
