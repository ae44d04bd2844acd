//! egret's own YAML schema (documented key by key in `config/README.md`).
//!
//! A destination is a ServiceEntry and its DestinationRule in one object, with Istio's field
//! names: `hosts`, `ports` (`number`, `name`, `protocol`, `targetPort`), `resolution`,
//! `endpoints`, and `trafficPolicy` (`tls`, `portLevelSettings`, `connectionPool`,
//! `loadBalancer`).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::diag::{Origin, Problems};
use super::spec::{Dur, EndpointSpec, PortSpec, TrafficPolicySpec};
use super::{
    AccessLogConfig, DnsConfig, IpFamily, ListenerDecl, ListenerKind, Model, OutboundPolicy,
    PolicyDecl, PortDecl, Protocol, Resolution, ServiceDecl, Source, check_host,
};

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
    doc: &super::k8s::Doc<'_>,
    model: &mut Model,
    problems: &mut Problems,
) {
    let mut origin = Origin::file(&source.name);
    if doc.multi {
        origin = origin.doc(doc.index);
    }
    let src = super::k8s::ObjSource {
        origin: origin.clone(),
        prefix: String::new(),
        base_dir: source.base_dir.clone(),
    };
    let Some(cfg) = super::k8s::decode::<NativeConfig>(
        super::k8s::Input::Text(doc.text, doc.first_line - 1),
        &src,
        problems,
    ) else {
        return;
    };
    lower(cfg, source.base_dir.as_deref(), &origin, model, problems);
}

fn lower(
    cfg: NativeConfig,
    base_dir: Option<&Path>,
    origin: &Origin,
    model: &mut Model,
    problems: &mut Problems,
) {
    for (i, l) in cfg.listeners.iter().enumerate() {
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
                continue;
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
                    continue;
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
                continue;
            }
        };
        if kind != ListenerKind::Http && port.is_none() {
            problems.error(
                origin,
                format!("{path}.port"),
                format!("a {kind:?} listener needs the destination port it serves"),
                Some("add port: <the destinations' port number>".into()),
            );
            continue;
        }
        model.listeners.push(ListenerDecl {
            name: l.name.clone().unwrap_or_else(|| match port {
                Some(p) => format!("{}_{p}", address.ip()),
                None => "outbound".into(),
            }),
            address,
            port,
            kind,
            origin: origin.clone(),
        });
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
        set_once(&mut model.dns, dns, origin, "dns", problems);
    }

    if let Some(a) = cfg.access_log {
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
        set_once(&mut model.access_log, log, origin, "accessLog", problems);
    }

    for (i, d) in cfg.destinations.into_iter().enumerate() {
        let path = format!("destinations[{i}]");
        lower_destination(d, &path, base_dir, origin, model, problems);
    }
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
        if tp.outlier_detection.is_some() {
            problems.warn(
                origin,
                format!("{path}.trafficPolicy.outlierDetection"),
                "outlierDetection is accepted but not acted on: egret does not eject hosts",
                None,
            );
        }
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
            namespace: None,
            subject_alt_names: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load};

    fn errors(yaml: &str) -> Vec<String> {
        match load(&[Source::inline("test.yaml", yaml)], &Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.messages(),
        }
    }

    #[test]
    fn unknown_field_names_the_path_and_suggests() {
        let e = errors(
            "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n    trafficPolicy:\n      portLevelSetting: []\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("error: test.yaml:5:7: destinations[0].trafficPolicy.portLevelSetting: unknown field \"portLevelSetting\""), "{}", e[0]);
        assert!(
            e[0].contains("did you mean \"portLevelSettings\"?"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn misspelled_enum_values_are_errors() {
        let e = errors("outboundTrafficPolicy:\n  mode: REGISTER_ONLY\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("outboundTrafficPolicy.mode: unknown value \"REGISTER_ONLY\""),
            "{}",
            e[0]
        );
        assert!(e[0].contains("did you mean \"REGISTRY_ONLY\"?"), "{}", e[0]);
        let e = errors(
            "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 443}]\n    trafficPolicy:\n      tls: {mode: MUTAL}\n",
        );
        assert!(e[0].contains("did you mean \"MUTUAL\"?"), "{}", e[0]);
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = errors(
            "destinations:\n  - hosts: [a.example.com, 'bad host']\n    ports: [{number: 80, protocol: HTTPX}, {number: 70000}]\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 443}\n          tls: {mode: MUTUAL}\n",
        );
        let all = e.join("\n");
        assert!(
            all.contains("destinations[0].hosts[1]: \"bad host\" is not a valid host name"),
            "{all}"
        );
        assert!(
            all.contains("destinations[0].ports[0].protocol: unknown protocol \"HTTPX\""),
            "{all}"
        );
        assert!(all.contains("did you mean \"HTTP\"?"), "{all}");
        assert!(
            all.contains("destinations[0].ports[1].number: 70000 is not a port number"),
            "{all}"
        );
        assert!(
            all.contains("portLevelSettings[0].port.number: 443 is not a port of a.example.com"),
            "{all}"
        );
    }

    #[test]
    fn mutual_without_key_is_an_error_not_plaintext() {
        let e = errors(
            "destinations:\n  - hosts: [kafka.example.com]\n    ports: [{number: 9093, protocol: TLS}]\n    trafficPolicy:\n      tls: {mode: MUTUAL, clientCertificate: /c.pem}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("mode MUTUAL but privateKey is missing"),
            "{}",
            e[0]
        );
        assert!(e[0].contains("never falls back to plaintext"), "{}", e[0]);
    }

    #[test]
    fn istio_mutual_says_what_to_use() {
        let e = errors(
            "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 443}]\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL}\n",
        );
        assert!(
            e[0].contains("ISTIO_MUTUAL needs an Istio mesh identity"),
            "{}",
            e[0]
        );
        assert!(e[0].contains("use mode: MUTUAL"), "{}", e[0]);
    }

    #[test]
    fn port_level_settings_pointing_at_target_port_get_a_hint() {
        let e = errors(
            "destinations:\n  - hosts: [www.oracle.com]\n    ports: [{number: 80, targetPort: 443}]\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 443}\n          tls: {mode: SIMPLE}\n",
        );
        assert!(e[0].contains("use 80 (which targets 443)"), "{}", e[0]);
    }

    #[test]
    fn duplicate_host_port_is_reported_with_both_places() {
        let e = errors(
            "destinations:\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n  - hosts: [a.example.com]\n    ports: [{number: 80}]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(
                "host a.example.com port 80 is declared twice (also by test.yaml: destinations[0])"
            ),
            "{}",
            e[0]
        );
    }

    #[test]
    fn oracle_style_destination_lowers_to_envoy_clusters() {
        let cfg = load(
            &[Source::inline(
                "t.yaml",
                "destinations:\n  - hosts: [www.oracle.com]\n    ports:\n      - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}\n      - {number: 443, name: https-port, protocol: HTTPS}\n    resolution: DNS\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 80}\n          tls: {mode: SIMPLE}\n",
            )],
            &Overrides::default(),
        )
        .expect("loads");
        let c80 = cfg
            .clusters
            .iter()
            .find(|c| c.name == "outbound|80||www.oracle.com")
            .expect("cluster 80");
        assert_eq!(
            c80.endpoints,
            crate::config::Endpoints::Dns(vec![crate::config::DnsEndpoint {
                name: Some("www.oracle.com".into()),
                port: Some(443)
            }])
        );
        assert_eq!(
            c80.tls.as_ref().map(|t| t.mode),
            Some(crate::config::TlsMode::Simple)
        );
        let c443 = cfg
            .clusters
            .iter()
            .find(|c| c.name == "outbound|443||www.oracle.com")
            .expect("cluster 443");
        assert!(
            c443.tls.is_none(),
            "port-level settings do not leak to other ports"
        );
        let d = cfg.describe();
        assert!(d.contains("www.oracle.com"), "{d}");
        assert!(d.contains("outbound|80||www.oracle.com"), "{d}");
        assert!(d.contains("www.oracle.com:443"), "{d}");
    }
}
