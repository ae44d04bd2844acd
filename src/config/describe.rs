//! What a `Config` says about itself: the TLS files it reads (watched for changes) and what
//! `egret check` prints: the effective routing table, one line per route with its timeout,
//! retry policy and fault under it, then every cluster's timeouts, connection-pool limits and
//! outlier detection. Values nobody wrote are printed too, marked as the default that applies.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::model::{
    Cluster, Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_RETRIES,
    DEFAULT_TCP_IDLE_TIMEOUT, Endpoints, OutlierPolicy, PemSource, TrustRoots,
};
use crate::route::{ClusterId, Fallback, Fault, HttpRoute, PortSource, RetryPolicy, RouteAction};

/// Indentation of the lines under a route row (under the HOST column).
const UNDER_ROUTE: &str = "         ";

impl Config {
    /// The TLS files the configuration reads (watched for changes).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut add = |p: &PemSource| {
            if let PemSource::File(f) = p {
                out.push(f.clone());
            }
        };
        for c in &self.clusters {
            if let Some(t) = &c.tls {
                if let TrustRoots::Pem(p) = &t.roots {
                    add(p);
                }
                if let Some((a, b)) = &t.client_cert {
                    add(a);
                    add(b);
                }
                if let Some(c) = &t.crl {
                    add(c);
                }
            }
        }
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                add(&t.cert);
                add(&t.key);
                if let Some(c) = &t.client_ca {
                    add(c);
                }
            }
        }
        out
    }

    /// One row of the route listing: where a route goes and with what TLS.
    fn cluster_row(&self, out: &mut String, port: &str, domain: &str, route: &str, id: ClusterId) {
        let Some(c) = self.clusters.get(id) else {
            return;
        };
        let (mode, sni, ca) = match &c.tls {
            None => ("DISABLE".to_string(), "-".to_string(), "-".to_string()),
            Some(t) => (
                t.mode_str().to_string(),
                t.sni.clone().unwrap_or_else(|| {
                    if c.host_from_request() {
                        "<request host>".into()
                    } else {
                        c.host.clone()
                    }
                }),
                t.describe_roots(),
            ),
        };
        let _ = writeln!(
            out,
            "  {port:<6} {domain:<40} {route:<10} {:<48} {:<28} {mode:<7} {sni:<28} {ca}",
            c.name,
            c.describe_endpoints()
        );
    }

    /// The rows of one port's HTTP routes, with each route's timeout, retries and fault.
    fn http_rows(&self, out: &mut String, port: u16, vhosts: &crate::route::VirtualHosts) {
        for vh in &vhosts.hosts {
            for r in &vh.routes {
                let route = r.name.as_deref().unwrap_or("-");
                match &r.action {
                    RouteAction::Direct { status, .. } => {
                        let _ = writeln!(
                            out,
                            "  {port:<6} {:<40} {route:<10} direct response {status}",
                            vh.domain
                        );
                    }
                    RouteAction::Redirect(r) => {
                        let _ = writeln!(
                            out,
                            "  {port:<6} {:<40} {route:<10} redirect {} to {}{}",
                            vh.domain,
                            r.code,
                            r.authority.as_deref().unwrap_or("<same host>"),
                            r.uri.as_deref().unwrap_or("")
                        );
                    }
                    RouteAction::Forward(w) => {
                        for wc in &w.clusters {
                            self.cluster_row(out, &port.to_string(), &vh.domain, route, wc.cluster);
                        }
                        route_policy(out, r);
                    }
                }
                if let Some(f) = &r.fault {
                    let _ = writeln!(out, "{UNDER_ROUTE}fault: {}", describe_fault(f));
                }
            }
        }
    }

    /// The effective routing table, one line per route: what `egret check` prints.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self
            .listeners
            .iter()
            .any(|l| l.routes.fallback != Fallback::NotFound)
        {
            let _ = writeln!(
                out,
                "outbound traffic policy: {}",
                self.outbound_policy.as_str()
            );
        }
        for l in &self.listeners {
            let ports = match l.routes.port_source {
                PortSource::Request => "routes by the request's port".to_string(),
                PortSource::Fixed(p) => format!("routes as port {p}"),
            };
            let _ = writeln!(out, "listener {} {} ({ports}):", l.name, l.address);
            let mut ports: Vec<_> = l.routes.ports.keys().copied().collect();
            ports.sort_unstable();
            let _ = writeln!(
                out,
                "  {:<6} {:<40} {:<10} {:<48} {:<28} {:<7} {:<28} CA",
                "PORT", "HOST", "ROUTE", "CLUSTER", "CONNECT", "TLS", "SNI"
            );
            for port in ports {
                self.http_rows(&mut out, port, &l.routes.ports[&port]);
            }
            if let Some(l4) = &l.l4 {
                use crate::route::{L4Fallback, L4Routes};
                match &**l4 {
                    L4Routes::Tcp { clusters, .. } => {
                        for wc in &clusters.clusters {
                            self.cluster_row(&mut out, "tcp", "*", "-", wc.cluster);
                        }
                        let _ = writeln!(out, "  every connection: TCP proxy");
                    }
                    L4Routes::Sni {
                        port,
                        hosts,
                        fallback,
                    } => {
                        for vh in &hosts.hosts {
                            for r in &vh.routes {
                                if let RouteAction::Forward(w) = &r.action {
                                    for wc in &w.clusters {
                                        self.cluster_row(
                                            &mut out,
                                            &format!("sni:{port}"),
                                            &vh.domain,
                                            "-",
                                            wc.cluster,
                                        );
                                    }
                                }
                            }
                        }
                        let _ = writeln!(
                            out,
                            "  TLS passthrough by SNI (egret never terminates it); any other SNI: {}",
                            match fallback {
                                L4Fallback::Refuse => "refused (NR)",
                                L4Fallback::AllowAny(_) => "passthrough (allow_any, ALLOW_ANY)",
                            }
                        );
                    }
                }
                continue;
            }
            let mut tunnel_ports: Vec<_> = l.routes.tunnels.keys().copied().collect();
            tunnel_ports.sort_unstable();
            for port in tunnel_ports {
                for vh in &l.routes.tunnels[&port].hosts {
                    if let Some(RouteAction::Forward(w)) = vh.routes.first().map(|r| &r.action) {
                        for wc in &w.clusters {
                            let c = &self.clusters[wc.cluster];
                            if !c.protocol.is_tls() {
                                self.cluster_row(
                                    &mut out,
                                    &format!("C:{port}"),
                                    &vh.domain,
                                    "CONNECT",
                                    wc.cluster,
                                );
                                continue;
                            }
                            let _ = writeln!(
                                out,
                                "  {:<6} {:<40} {:<10} {:<48} {:<28} tunnel  (the client's own TLS, SNI checked)",
                                format!("C:{port}"),
                                vh.domain,
                                "CONNECT",
                                c.name,
                                c.describe_endpoints()
                            );
                        }
                    }
                }
            }
            let fallback = match &l.routes.fallback {
                Fallback::BlockAll => "any other host: 502 (block_all, REGISTRY_ONLY)".to_string(),
                Fallback::AllowAny(_) => {
                    "any other host: passthrough in plaintext (allow_any, ALLOW_ANY)".to_string()
                }
                Fallback::NotFound => "any other host: 404 (route_not_found)".to_string(),
            };
            let _ = writeln!(out, "  {fallback}");
        }
        if !self.clusters.is_empty() {
            let _ = writeln!(out, "clusters:");
            for c in &self.clusters {
                describe_cluster(&mut out, c);
            }
        }
        out
    }
}

/// A duration as Istio writes one: `10s`, `250ms`, `1h30m`; `Duration::MAX` is `disabled`.
fn dur(d: Duration) -> String {
    if d == Duration::MAX {
        return "disabled".into();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    if d.subsec_millis() != 0 || d.is_zero() {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let secs = d.as_secs();
    let mut out = String::new();
    for (unit, n) in [("h", secs / 3600), ("m", secs / 60 % 60), ("s", secs % 60)] {
        if n != 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// `what` followed by `(default)` when it is the value that applies when nothing is written.
fn marked(what: String, is_default: bool, default: &str) -> String {
    if is_default {
        format!("{what} ({default})")
    } else {
        what
    }
}

/// The lines under a forwarding route: its timeout and its retry policy.
fn route_policy(out: &mut String, r: &HttpRoute) {
    let timeout = match r.timeout {
        None => "none (Istio default)".to_string(),
        Some(t) => dur(t),
    };
    let _ = writeln!(out, "{UNDER_ROUTE}timeout: {timeout}");
    let _ = writeln!(out, "{UNDER_ROUTE}retries: {}", describe_retry(&r.retry));
}

/// A retry policy on one line: attempts and conditions, then perTryTimeout, status codes and
/// back-off. Istio's default (which applies to every route without `retries`) says so.
fn describe_retry(p: &RetryPolicy) -> String {
    if p.retries == 0 {
        return "off (attempts: 0)".into();
    }
    let on = p.on.names();
    let head = if *p == RetryPolicy::istio_default() {
        format!("{} (Istio default: {on})", p.retries)
    } else {
        format!("{} on {on}", p.retries)
    };
    let codes = if p.status_codes.is_empty() {
        "none".to_string()
    } else {
        p.status_codes
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{head}; perTryTimeout {}; status codes {codes}; backoff {} (at most {}); retryIgnorePreviousHosts {}",
        p.per_try_timeout.map_or_else(|| "none".to_string(), dur),
        dur(p.backoff_base),
        dur(p.backoff_max),
        p.other_hosts,
    )
}

/// A route's fault injection on one line.
fn describe_fault(f: &Fault) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &f.delay {
        parts.push(format!(
            "delay {} for {}% of requests",
            dur(d.fixed),
            d.percent
        ));
    }
    if let Some(a) = &f.abort {
        let what = match a.grpc_status {
            Some(g) => format!("abort with grpc-status {g}"),
            None => format!("abort with {}", a.status),
        };
        parts.push(format!("{what} for {}% of requests", a.percent));
    }
    parts.join("; ")
}

/// One cluster: where it goes, then its timeouts, its limits and its outlier detection.
fn describe_cluster(out: &mut String, c: &Cluster) {
    let _ = writeln!(out, "  {} ({}):", c.name, c.describe_endpoints());
    let idle = if c.protocol.is_http() {
        marked(
            dur(c.idle_timeout),
            c.idle_timeout == DEFAULT_IDLE_TIMEOUT,
            "egret default; Envoy's is 1h",
        )
    } else {
        marked(
            format!("{} (TCP)", dur(c.tcp_idle_timeout)),
            c.tcp_idle_timeout == DEFAULT_TCP_IDLE_TIMEOUT,
            "Istio default",
        )
    };
    let keepalive = match &c.tcp_keepalive {
        None => "time 300s, interval 75s (egret default)".to_string(),
        Some(k) => {
            let or_os = |d: Option<Duration>| d.map_or_else(|| "OS default".to_string(), dur);
            format!(
                "probes {}, time {}, interval {}",
                k.probes
                    .map_or_else(|| "OS default".to_string(), |p| p.to_string()),
                or_os(k.time),
                or_os(k.interval)
            )
        }
    };
    let _ = writeln!(
        out,
        "    timeouts: connectTimeout {}; idleTimeout {idle}; maxConnectionDuration {}; tcpKeepalive {keepalive}",
        marked(
            dur(c.connect_timeout),
            c.connect_timeout == DEFAULT_CONNECT_TIMEOUT,
            "Istio default"
        ),
        c.max_connection_duration
            .map_or_else(|| "none (Istio default)".to_string(), dur),
    );
    let limit = |v: Option<u32>, unit: &str| match v {
        None => format!("unlimited{unit} (Istio default)"),
        Some(n) => format!("{n}{unit}"),
    };
    let per_conn = if c.max_requests_per_connection == 0 {
        "unlimited (Istio default)".to_string()
    } else {
        c.max_requests_per_connection.to_string()
    };
    let _ = writeln!(
        out,
        "    limits: maxConnections {}; http1MaxPendingRequests {}; http2MaxRequests {}; maxRequestsPerConnection {per_conn}; maxRetries {}",
        limit(c.max_connections, ""),
        limit(c.max_pending_requests, " waiting"),
        limit(c.max_requests, " in flight"),
        c.max_retries.map_or_else(
            || format!("{DEFAULT_MAX_RETRIES} concurrent retries (egret default; Istio leaves it unlimited)"),
            |n| format!("{n} concurrent retries")
        ),
    );
    let _ = writeln!(
        out,
        "    outlierDetection: {}",
        match &c.outlier {
            None => "none".to_string(),
            Some(o) => describe_outlier(o, &c.endpoints),
        }
    );
}

/// Outlier detection on one line, the defaults marked; with static endpoints, whether
/// `maxEjectionPercent` lets anything be ejected at all.
fn describe_outlier(o: &OutlierPolicy, endpoints: &Endpoints) -> String {
    let d = OutlierPolicy::default();
    let count = |n: u32| {
        if n == 0 {
            "off".to_string()
        } else {
            n.to_string()
        }
    };
    let mut s = format!(
        "consecutive5xxErrors {}; consecutiveGatewayErrors {}",
        marked(
            count(o.consecutive_5xx),
            o.consecutive_5xx == d.consecutive_5xx,
            "default"
        ),
        marked(
            count(o.consecutive_gateway),
            o.consecutive_gateway == d.consecutive_gateway,
            "default"
        ),
    );
    if o.split_local_origin {
        let _ = write!(
            s,
            "; consecutiveLocalOriginFailures {} (split from 5xx)",
            count(o.consecutive_local_origin)
        );
    }
    let _ = write!(
        s,
        "; interval {}; baseEjectionTime {}; maxEjectionTime {}; maxEjectionPercent {}; minHealthPercent {}",
        marked(dur(o.interval), o.interval == d.interval, "default"),
        marked(
            dur(o.base_ejection_time),
            o.base_ejection_time == d.base_ejection_time,
            "default"
        ),
        dur(o.max_ejection_time),
        marked(
            o.max_ejection_percent.to_string(),
            o.max_ejection_percent == d.max_ejection_percent,
            "default"
        ),
        marked(
            o.min_health_percent.to_string(),
            o.min_health_percent == d.min_health_percent,
            "default"
        ),
    );
    if let Endpoints::Static(addrs) = endpoints
        && !addrs.is_empty()
        && !crate::config::policies::can_eject(o, addrs.len())
    {
        let _ = write!(
            s,
            " -- ejects nothing with {} endpoint{}: needs maxEjectionPercent >= {}",
            addrs.len(),
            if addrs.len() == 1 { "" } else { "s" },
            crate::config::policies::min_ejection_percent(addrs.len())
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load;
    use crate::config::overrides::Overrides;
    use crate::config::source::Source;

    #[test]
    fn durations_print_as_istio_writes_them() {
        assert_eq!(dur(Duration::from_secs(10)), "10s");
        assert_eq!(dur(Duration::from_millis(250)), "250ms");
        assert_eq!(dur(Duration::from_millis(1500)), "1500ms");
        assert_eq!(dur(Duration::from_secs(5400)), "1h30m");
        assert_eq!(dur(Duration::from_secs(3600)), "1h");
        assert_eq!(dur(Duration::ZERO), "0s");
        assert_eq!(dur(Duration::MAX), "disabled");
    }

    #[test]
    fn the_istio_default_retry_policy_says_so() {
        assert_eq!(
            describe_retry(&RetryPolicy::istio_default()),
            "2 (Istio default: connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable); \
             perTryTimeout none; status codes none; backoff 25ms (at most 250ms); retryIgnorePreviousHosts true"
        );
        assert_eq!(
            describe_retry(&RetryPolicy::disabled()),
            "off (attempts: 0)"
        );
    }

    /// egret's own schema: a destination's `retries` reaches its default route, and the
    /// cluster lines show what its traffic policy sets and what defaults apply.
    #[test]
    fn native_destinations_describe_their_retries_and_pool() {
        let yaml = "destinations:
  - hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: STATIC
    endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2}]
    timeout: 5s
    retries: {attempts: 0}
    trafficPolicy:
      connectionPool: {http: {maxRetries: 2}}
      outlierDetection: {maxEjectionPercent: 50}
";
        let cfg = load(&[Source::inline("t.yaml", yaml)], &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let d = cfg.describe();
        assert!(d.contains("timeout: 5s\n"), "{d}");
        assert!(d.contains("retries: off (attempts: 0)\n"), "{d}");
        assert!(d.contains("maxRetries 2 concurrent retries\n"), "{d}");
        assert!(
            d.contains("maxConnections unlimited (Istio default);"),
            "{d}"
        );
        assert!(d.contains("maxEjectionPercent 50;"), "{d}");
        assert!(!d.contains("ejects nothing"), "50% of 2 hosts is 1: {d}");
        assert!(
            !cfg.warnings
                .iter()
                .any(|w| w.to_string().contains("maxEjectionPercent")),
            "{:?}",
            cfg.warnings
        );
    }

    /// A single static endpoint can only be ejected with maxEjectionPercent 100.
    #[test]
    fn one_endpoint_needs_max_ejection_percent_100() {
        let yaml = "destinations:
  - hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: STATIC
    endpoints: [{address: 127.0.0.1}]
    trafficPolicy:
      outlierDetection: {maxEjectionPercent: 99}
";
        let cfg = load(&[Source::inline("t.yaml", yaml)], &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let w: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
        let w = w.join("\n");
        assert!(
            w.contains(
                "destinations[0].trafficPolicy.outlierDetection.maxEjectionPercent: outbound|80||a.example.com has 1 endpoint and maxEjectionPercent is 99:"
            ),
            "{w}"
        );
        assert!(
            w.contains("hint: set maxEjectionPercent: 100, or at least 100"),
            "{w}"
        );
        assert!(
            cfg.describe()
                .contains("ejects nothing with 1 endpoint: needs maxEjectionPercent >= 100"),
            "{}",
            cfg.describe()
        );
    }
}
