//! The front ends' common intermediate form: declared services and their traffic policies,
//! listeners and global settings, each with its origin ([`Model`]), and the checks both front
//! ends share on what they declare (hosts, `ports[]`, `portLevelSettings`).
//!
//! egret's native schema and the Istio resources both lower into these declarations; the
//! `lower` step turns them into the runtime `Config`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::diag::{Origin, Problems};
use crate::config::istio::credentials::Credentials;
use crate::config::istio::routing::Routing;
use crate::config::istio::store::Store;
use crate::config::model::{AccessLogConfig, DnsConfig, OutboundPolicy, Protocol};
use crate::config::spec::{
    ConnectionPoolSpec, EndpointSpec, LoadBalancerSpec, PortSpec, SubsetSpec, TrafficPolicySpec,
};

/// The front ends' common intermediate form: declared services and their traffic policies,
/// listeners and global settings, each with its origin.
#[derive(Debug, Default)]
pub struct Model {
    pub services: Vec<ServiceDecl>,
    pub listeners: Vec<ListenerDecl>,
    pub outbound_policy: Option<(OutboundPolicy, Origin)>,
    pub dns: Option<(DnsConfig, Origin)>,
    pub access_log: Option<(AccessLogConfig, Origin)>,
    /// Kubernetes objects collected from the sources (Istio resources, Secrets, MeshConfig).
    pub istio: Option<Store>,
    /// Routing produced by Istio VirtualServices and Gateways.
    pub routing: Option<Routing>,
    /// `meshConfig.defaultConfig.drainDuration`, when given.
    pub drain_duration: Option<Duration>,
    /// `meshConfig.defaultConfig.concurrency`, when given.
    pub concurrency: Option<usize>,
}

/// One declared host with its ports (a ServiceEntry host, or a native destination host).
#[derive(Debug, Clone)]
pub struct ServiceDecl {
    pub host: String,
    pub ports: Vec<PortDecl>,
    pub resolution: Resolution,
    pub endpoints: Vec<EndpointSpec>,
    pub origin: Origin,
    /// Field path of the declaration (`destinations[0]`, `spec`).
    pub path: String,
    pub policy: Option<PolicyDecl>,
    /// Request timeout for the default route (native `timeout`).
    pub timeout: Option<Duration>,
    /// Retry policy for the default route (native `retries`); `None`: Istio's default.
    pub retry: Option<crate::route::RetryPolicy>,
    pub namespace: Option<String>,
    /// ServiceEntry `subjectAltNames`: used when the TLS policy gives none.
    pub subject_alt_names: Vec<String>,
    /// ServiceEntry `addresses` (network, prefix length): under capture, connections to these
    /// (on the host's TCP ports) are this host's, and the DNS proxy answers with them.
    pub addresses: Vec<(std::net::IpAddr, u8)>,
    /// Ports a DestinationRule would have given TLS but its workloadSelector leaves this
    /// proxy out, so they go to port 443 in plaintext (counted as insecure destinations).
    pub plaintext_tls_ports: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct PortDecl {
    pub number: u16,
    pub name: Option<String>,
    pub protocol: Protocol,
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Dns,
    DnsRoundRobin,
    Static,
    /// Istio's "original destination": egret resolves the host the request names, which is what
    /// the app itself would have connected to.
    None,
}

/// A traffic policy (DestinationRule `trafficPolicy`, or a native destination's) with its origin.
#[derive(Debug, Clone)]
pub struct PolicyDecl {
    pub spec: TrafficPolicySpec,
    pub origin: Origin,
    /// Field path of the `trafficPolicy` key.
    pub path: String,
    /// Directory relative file paths are resolved against.
    pub base_dir: Option<PathBuf>,
    /// DestinationRule `subsets`.
    pub subsets: Vec<SubsetSpec>,
    /// Where `credentialName` is looked up.
    pub credentials: Option<Arc<Credentials>>,
    /// The namespace of the rule (for `credentialName`).
    pub namespace: String,
}

impl PolicyDecl {
    pub fn native(
        spec: TrafficPolicySpec,
        origin: &Origin,
        path: String,
        base_dir: Option<PathBuf>,
    ) -> PolicyDecl {
        PolicyDecl {
            spec,
            origin: origin.clone(),
            path,
            base_dir,
            subsets: Vec::new(),
            credentials: None,
            namespace: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerDecl {
    pub name: String,
    pub address: SocketAddr,
    /// `Some(port)`: route as that port whatever the Host says (a per-port listener).
    pub port: Option<u16>,
    pub kind: ListenerKind,
    pub origin: Origin,
}

/// What a declared listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    /// Opaque TCP to the one TCP destination of the port.
    Tcp,
    /// TLS passthrough by SNI.
    Tls,
}

/// Checks a host as written in a destination / ServiceEntry.
pub(crate) fn check_host(host: &str, allow_any: bool) -> Result<(), String> {
    if host == "*" {
        return if allow_any {
            Ok(())
        } else {
            Err("\"*\" alone is not allowed; use a suffix such as *.example.com".into())
        };
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host.contains('*') && !host.starts_with("*.") {
        return Err(format!(
            "\"{host}\": a wildcard is only allowed as the first label (*.example.com)"
        ));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.is_empty()
        || name.len() > 253
        || !name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        return Err(format!("\"{host}\" is not a valid host name"));
    }
    Ok(())
}

/// Checks and converts `ports[]`; shared with ServiceEntry.
pub(crate) fn lower_ports(
    ports: &[PortSpec],
    path: &str,
    origin: &Origin,
    problems: &mut Problems,
) -> Vec<PortDecl> {
    let mut out: Vec<PortDecl> = Vec::new();
    if ports.is_empty() {
        problems.error(
            origin,
            format!("{path}.ports"),
            "no ports declared",
            Some("declare the ports the app calls, e.g. {number: 80, name: http, protocol: HTTP, targetPort: 443}".into()),
        );
    }
    for (i, p) in ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        let Some(number) = u16::try_from(p.number).ok().filter(|n| *n > 0) else {
            problems.error(
                origin,
                format!("{ppath}.number"),
                format!("{} is not a port number (1-65535)", p.number),
                None,
            );
            continue;
        };
        let target_port = match p.target_port {
            None => None,
            Some(t) => match u16::try_from(t).ok().filter(|n| *n > 0) {
                Some(t) => Some(t),
                None => {
                    problems.error(
                        origin,
                        format!("{ppath}.targetPort"),
                        format!("{t} is not a port number (1-65535)"),
                        None,
                    );
                    continue;
                }
            },
        };
        let protocol = match &p.protocol {
            Some(s) => match Protocol::parse(s) {
                Some(proto) => proto,
                None => {
                    let hint = crate::text::suggest(s, Protocol::NAMES)
                        .map(|s| format!("did you mean \"{s}\"?"));
                    problems.error(
                        origin,
                        format!("{ppath}.protocol"),
                        format!(
                            "unknown protocol \"{s}\"; expected one of {}",
                            Protocol::NAMES.join(", ")
                        ),
                        hint,
                    );
                    continue;
                }
            },
            None => p
                .name
                .as_deref()
                .and_then(Protocol::from_port_name)
                .unwrap_or(Protocol::Unspecified),
        };
        if out.iter().any(|o| o.number == number) {
            problems.error(
                origin,
                format!("{ppath}.number"),
                format!("port {number} is declared twice"),
                None,
            );
            continue;
        }
        out.push(PortDecl {
            number,
            name: p.name.clone(),
            protocol,
            target_port,
        });
    }
    out
}

/// Checks that every `portLevelSettings[].port.number` is a port of the destination.
pub(crate) fn check_port_level(
    tp: &TrafficPolicySpec,
    ports: &[PortDecl],
    host: &str,
    path: &str,
    origin: &Origin,
    problems: &mut Problems,
) {
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        if !ports.iter().any(|p| u32::from(p.number) == pl.port.number) {
            let declared: Vec<String> = ports.iter().map(|p| p.number.to_string()).collect();
            let target_hint = ports
                .iter()
                .find(|p| p.target_port.map(u32::from) == Some(pl.port.number))
                .map(|p| {
                    format!(
                        "portLevelSettings match the service port number, not targetPort: use {} (which targets {})",
                        p.number, pl.port.number
                    )
                });
            problems.error(
                origin,
                format!("{path}.portLevelSettings[{i}].port.number"),
                format!(
                    "{} is not a port of {host} (declared: {})",
                    pl.port.number,
                    declared.join(", ")
                ),
                target_hint.or_else(|| Some("use one of the declared port numbers".into())),
            );
        }
    }
}

/// Warns, by name, about each traffic-policy field that egret parses (so Istio manifests load)
/// but does not act on, at the top level and in every `portLevelSettings[]`: an operator must
/// never believe a setting applies when it does not. Each warning says what egret does instead.
///
/// What egret does act on is not warned about: `outlierDetection`, `connectionPool.tcp`
/// (`maxConnections`, `connectTimeout`, `idleTimeout`, `maxConnectionDuration`,
/// `tcpKeepalive`), `connectionPool.http` (`http1MaxPendingRequests`, `http2MaxRequests`,
/// `maxRequestsPerConnection`, `maxRetries`, `idleTimeout`) and `loadBalancer.simple`.
pub(crate) fn warn_unapplied(
    tp: &TrafficPolicySpec,
    path: &str,
    origin: &Origin,
    problems: &mut Problems,
) {
    let mut warn = |field: String, why: &str| {
        problems.warn(
            origin,
            field.clone(),
            format!(
                "{} is accepted but not acted on: {why}",
                field.rsplit('.').next().unwrap_or(&field)
            ),
            None,
        );
    };
    if tp.retry_budget.is_some() {
        warn(
            format!("{path}.retryBudget"),
            "egret has no retry budget; retries are bounded by each route's retries.attempts and, \
             across the cluster, by connectionPool.http.maxRetries (concurrent retries)",
        );
    }
    pool_and_lb(
        tp.connection_pool.as_ref(),
        tp.load_balancer.as_ref(),
        path,
        &mut warn,
    );
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        pool_and_lb(
            pl.connection_pool.as_ref(),
            pl.load_balancer.as_ref(),
            &format!("{path}.portLevelSettings[{i}]"),
            &mut warn,
        );
    }
}

/// The `connectionPool` and `loadBalancer` fields egret does not act on.
fn pool_and_lb(
    pool: Option<&ConnectionPoolSpec>,
    lb: Option<&LoadBalancerSpec>,
    path: &str,
    warn: &mut impl FnMut(String, &str),
) {
    if let Some(h) = pool.and_then(|p| p.http.as_ref()) {
        let at = |f: &str| format!("{path}.connectionPool.http.{f}");
        for (set, field, why) in [
            (
                h.max_concurrent_streams.is_some(),
                "maxConcurrentStreams",
                "egret speaks HTTP/1.1 to upstreams (one request per connection at a time), so \
                 there are no streams to limit; use http2MaxRequests to cap requests in flight",
            ),
            (
                h.h2_upgrade_policy.is_some(),
                "h2UpgradePolicy",
                "egret speaks HTTP/1.1 to upstreams and never upgrades a connection to HTTP/2",
            ),
            (
                h.use_client_protocol.is_some(),
                "useClientProtocol",
                "egret speaks HTTP/1.1 to upstreams whatever the client spoke",
            ),
        ] {
            if set {
                warn(at(field), why);
            }
        }
    }
    if let Some(l) = lb {
        let at = |f: &str| format!("{path}.loadBalancer.{f}");
        if l.consistent_hash.is_some() {
            warn(
                at("consistentHash"),
                "egret does not hash requests to endpoints; it balances round robin (or as \
                 loadBalancer.simple says: RANDOM, LEAST_REQUEST)",
            );
        }
        if l.locality_lb_setting.is_some() {
            warn(
                at("localityLbSetting"),
                "egret has no locality information and treats every endpoint as one locality \
                 (no failover or distribution by locality)",
            );
        }
        if l.warmup_duration_secs.is_some() || l.warmup.is_some() {
            let f = if l.warmup.is_some() {
                "warmup"
            } else {
                "warmupDurationSecs"
            };
            warn(
                at(f),
                "egret has no slow start; a new endpoint gets its full share of requests at once",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        assert!(check_host("www.oracle.com", false).is_ok());
        assert!(check_host("*.example.com", false).is_ok());
        assert!(check_host("*", false).is_err());
        assert!(check_host("*", true).is_ok());
        assert!(check_host("a.*.com", false).is_err());
        assert!(check_host("bad host", false).is_err());
        assert!(check_host("10.0.0.1", false).is_ok());
    }
}
