//! egret's own YAML schema (documented key by key in `config/README.md`).
//!
//! A destination is a ServiceEntry and its DestinationRule in one object, with Istio's field
//! names: `hosts`, `ports` (`number`, `name`, `protocol`, `targetPort`), `resolution`,
//! `endpoints`, and `trafficPolicy` (`tls`, `portLevelSettings`, `connectionPool`,
//! `loadBalancer`).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::config::decl::{
    ListenerDecl, ListenerKind, Model, PolicyDecl, Resolution, ServiceDecl, check_host,
    check_port_level, lower_ports,
};
use crate::config::diag::{Origin, Problems};
use crate::config::doc::{Doc, Input, ObjSource, decode};
use crate::config::model::{AccessLogConfig, DnsConfig, IpFamily, OutboundPolicy};
use crate::config::source::Source;
use crate::config::spec::{Dur, EndpointSpec, PortSpec, TrafficPolicySpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeConfig {
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    #[serde(default)]
    pub dns: Option<DnsSpec>,
    #[serde(default)]
    pub access_log: Option<AccessLogSpec>,
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub address: String,
    /// Route every request as this port (like Istio's per-port `0.0.0.0_80` listener) instead
    /// of taking the port from the request's authority.
    #[serde(default)]
    pub port: Option<u32>,
    /// HTTP (default), TCP (opaque bytes to the one TCP destination on `port`) or TLS
    /// (passthrough, routed by the ClientHello's SNI over the TLS/HTTPS destinations on `port`).
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicySpec {
    pub mode: OutboundModeSpec,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundModeSpec {
    RegistryOnly,
    AllowAny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub min_ttl: Option<Dur>,
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    #[serde(default)]
    pub ip_family: Option<IpFamilySpec>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub enum IpFamilySpec {
    #[serde(rename = "ANY")]
    Any,
    #[serde(rename = "V4_ONLY")]
    V4Only,
    #[serde(rename = "V6_ONLY")]
    V6Only,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogSpec {
    /// `-` or `/dev/stdout`, a file path, or empty to turn logging off.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub encoding: Option<EncodingSpec>,
    /// TEXT: an Envoy format string. JSON: a map of key -> format string.
    #[serde(default)]
    pub format: Option<FormatSpec>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EncodingSpec {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FormatSpec {
    Text(String),
    Map(std::collections::BTreeMap<String, String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub hosts: Vec<String>,
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub resolution: Option<ResolutionSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    /// Whole-request timeout (Istio's VirtualService `timeout`); default none.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Istio's VirtualService `retries` block; default: Istio's default policy.
    #[serde(default)]
    pub retries: Option<crate::config::spec::RetrySpec>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResolutionSpec {
    Dns,
    DnsRoundRobin,
    Static,
    None,
}

impl From<ResolutionSpec> for Resolution {
    fn from(r: ResolutionSpec) -> Self {
        match r {
            ResolutionSpec::Dns => Resolution::Dns,
            ResolutionSpec::DnsRoundRobin => Resolution::DnsRoundRobin,
            ResolutionSpec::Static => Resolution::Static,
            ResolutionSpec::None => Resolution::None,
        }
    }
}

/// Parses one native document into the model.
pub(crate) fn parse_doc(
    source: &Source,
    doc: &Doc<'_>,
    model: &mut Model,
    problems: &mut Problems,
) {
    let mut origin = Origin::file(&source.name);
    if doc.multi {
        origin = origin.doc(doc.index);
    }
    let src = ObjSource {
        origin: origin.clone(),
        prefix: String::new(),
        base_dir: source.base_dir.clone(),
    };
    let Some(cfg) =
        decode::<NativeConfig>(Input::Text(doc.text, doc.first_line - 1), &src, problems)
    else {
        return;
    };
    lower(cfg, source.base_dir.as_deref(), &origin, model, problems);
}

/// Lowers one native document: listeners, the global settings, then the destinations.
fn lower(
    cfg: NativeConfig,
    base_dir: Option<&Path>,
    origin: &Origin,
    model: &mut Model,
    problems: &mut Problems,
) {
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(decl) = lower_listener(l, i, origin, problems) {
            model.listeners.push(decl);
        }
    }

    if let Some(p) = cfg.outbound_traffic_policy {
        let policy = match p.mode {
            OutboundModeSpec::RegistryOnly => OutboundPolicy::RegistryOnly,
            OutboundModeSpec::AllowAny => OutboundPolicy::AllowAny,
        };
        set_once(
            &mut model.outbound_policy,
            policy,
            origin,
            "outboundTrafficPolicy",
            problems,
        );
    }

    if let Some(d) = cfg.dns {
        let dns = lower_dns(d, origin, problems);
        set_once(&mut model.dns, dns, origin, "dns", problems);
    }

    if let Some(a) = cfg.access_log {
        let log = lower_access_log(a, origin, problems);
        set_once(&mut model.access_log, log, origin, "accessLog", problems);
    }

    for (i, d) in cfg.destinations.into_iter().enumerate() {
        let path = format!("destinations[{i}]");
        lower_destination(d, &path, base_dir, origin, model, problems);
    }
}

/// Checks one `listeners[]` entry: its address, the port it routes as, and what it speaks.
fn lower_listener(
    l: &ListenerSpec,
    i: usize,
    origin: &Origin,
    problems: &mut Problems,
) -> Option<ListenerDecl> {
    let path = format!("listeners[{i}]");
    let address = match l.address.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            problems.error(
                origin,
                format!("{path}.address"),
                format!("\"{}\" is not IP:PORT", l.address),
                Some("write it like 127.0.0.1:15001, 0.0.0.0:80 or [::]:80".into()),
            );
            return None;
        }
    };
    let port = match l.port {
        None => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.error(
                    origin,
                    format!("{path}.port"),
                    format!("{p} is not a port number (1-65535)"),
                    None,
                );
                return None;
            }
        },
    };
    let kind = match l
        .protocol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("HTTP") => ListenerKind::Http,
        Some("TCP") => ListenerKind::Tcp,
        Some("TLS") => ListenerKind::Tls,
        Some(other) => {
            problems.error(
                origin,
                format!("{path}.protocol"),
                format!("unknown listener protocol \"{other}\""),
                Some("use HTTP, TCP or TLS".into()),
            );
            return None;
        }
    };
    if kind != ListenerKind::Http && port.is_none() {
        problems.error(
            origin,
            format!("{path}.port"),
            format!("a {kind:?} listener needs the destination port it serves"),
            Some("add port: <the destinations' port number>".into()),
        );
        return None;
    }
    Some(ListenerDecl {
        name: l.name.clone().unwrap_or_else(|| match port {
            Some(p) => format!("{}_{p}", address.ip()),
            None => "outbound".into(),
        }),
        address,
        port,
        kind,
        origin: origin.clone(),
    })
}

/// The `dns` block over the defaults.
fn lower_dns(d: DnsSpec, origin: &Origin, problems: &mut Problems) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for (i, s) in d.servers.iter().enumerate() {
        match parse_dns_server(s) {
            Ok(a) => dns.servers.push(a),
            Err(e) => problems.error(origin, format!("dns.servers[{i}]"), e, None),
        }
    }
    if let Some(t) = d.timeout {
        dns.timeout = t.0;
    }
    if let Some(a) = d.attempts {
        dns.attempts = a.max(1) as usize;
    }
    if let Some(t) = d.min_ttl {
        dns.min_ttl = t.0;
    }
    if let Some(t) = d.max_ttl {
        dns.max_ttl = t.0;
    }
    if dns.min_ttl > dns.max_ttl {
        problems.error(
            origin,
            "dns.minTtl",
            format!(
                "minTtl ({:?}) is larger than maxTtl ({:?})",
                dns.min_ttl, dns.max_ttl
            ),
            None,
        );
    }
    if let Some(f) = d.ip_family {
        dns.family = match f {
            IpFamilySpec::Any => IpFamily::Any,
            IpFamilySpec::V4Only => IpFamily::V4Only,
            IpFamilySpec::V6Only => IpFamily::V6Only,
        };
    }
    dns
}

/// The `accessLog` block over the defaults; a JSON `format` map becomes one JSON object string.
fn lower_access_log(a: AccessLogSpec, origin: &Origin, problems: &mut Problems) -> AccessLogConfig {
    let mut log = AccessLogConfig::default();
    if let Some(p) = &a.path {
        log.path = AccessLogConfig::parse_path(p);
    }
    if let Some(e) = a.encoding {
        log.encoding = match e {
            EncodingSpec::Text => crate::access_log::Encoding::Text,
            EncodingSpec::Json => crate::access_log::Encoding::Json,
        };
    }
    match a.format {
        None => {}
        Some(FormatSpec::Text(t)) => log.format = Some(t),
        Some(FormatSpec::Map(m)) => {
            if log.encoding != crate::access_log::Encoding::Json {
                problems.error(
                    origin,
                    "accessLog.format",
                    "a map of keys is a JSON format, but accessLog.encoding is TEXT",
                    Some("set accessLog.encoding: JSON, or write format as one string".into()),
                );
            }
            let mut obj = String::from("{");
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    obj.push(',');
                }
                obj.push_str(&json_quote(k));
                obj.push(':');
                obj.push_str(&json_quote(v));
            }
            obj.push('}');
            log.format = Some(obj);
        }
    }
    log
}

fn set_once<T>(
    slot: &mut Option<(T, Origin)>,
    value: T,
    origin: &Origin,
    key: &str,
    problems: &mut Problems,
) {
    if let Some((_, prev)) = slot {
        problems.error(
            origin,
            key,
            format!("{key} is also set in {prev}"),
            Some(format!("set {key} in one file only")),
        );
        return;
    }
    *slot = Some((value, origin.clone()));
}

fn json_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `IP` or `IP:PORT` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "\"{s}\" is not a DNS server address; write IP or IP:PORT (e.g. 10.96.0.10 or 127.0.0.1:5353)"
    ))
}

fn lower_destination(
    d: DestinationSpec,
    path: &str,
    base_dir: Option<&Path>,
    origin: &Origin,
    model: &mut Model,
    problems: &mut Problems,
) {
    if d.hosts.is_empty() {
        problems.error(
            origin,
            format!("{path}.hosts"),
            "no hosts",
            Some("list the host names the app calls, e.g. [www.oracle.com]".into()),
        );
    }
    let ports = lower_ports(&d.ports, path, origin, problems);
    let resolution = d.resolution.map_or(
        if d.endpoints.is_empty() {
            Resolution::Dns
        } else {
            Resolution::Static
        },
        Resolution::from,
    );
    let mut hosts = Vec::new();
    for (i, h) in d.hosts.iter().enumerate() {
        let host = h.trim_end_matches('.').to_ascii_lowercase();
        match check_host(&host, true) {
            Ok(()) => hosts.push(host),
            Err(e) => problems.error(origin, format!("{path}.hosts[{i}]"), e, None),
        }
    }
    if let Some(tp) = &d.traffic_policy {
        check_port_level(
            tp,
            &ports,
            &hosts.join(","),
            &format!("{path}.trafficPolicy"),
            origin,
            problems,
        );
        crate::config::decl::warn_unapplied(tp, &format!("{path}.trafficPolicy"), origin, problems);
    }
    if resolution == Resolution::Static && hosts.iter().any(|h| h.starts_with('*')) {
        problems.warn(
            origin,
            format!("{path}.hosts"),
            "a wildcard host with STATIC endpoints sends every matching host to the same addresses",
            None,
        );
    }
    for host in hosts {
        model.services.push(ServiceDecl {
            host,
            ports: ports.clone(),
            resolution,
            endpoints: d.endpoints.clone(),
            origin: origin.clone(),
            path: path.to_string(),
            policy: d.traffic_policy.clone().map(|spec| {
                PolicyDecl::native(
                    spec,
                    origin,
                    format!("{path}.trafficPolicy"),
                    base_dir.map(Path::to_path_buf),
                )
            }),
            timeout: d.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
            retry: d.retries.as_ref().map(|r| {
                crate::config::policies::retry_policy(
                    Some(r),
                    origin,
                    &format!("{path}.retries"),
                    problems,
                )
            }),
            namespace: None,
            subject_alt_names: Vec::new(),
            addresses: Vec::new(),
            plaintext_tls_ports: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests;
