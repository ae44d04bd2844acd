//! The validated runtime model: what a loaded configuration is.
//!
//! One [`Config`]: listeners with route tables, clusters (`outbound|PORT|SUBSET|HOST`) with
//! their endpoints and TLS policy, and the global settings (outbound policy, DNS, access log,
//! the connect-time `--resolve` / `--connect-to` overrides).
//! A `Config` only exists without errors (`load` returns the problems instead); the runtime
//! (tls, dns, upstream, proxy, admin) reads it and nothing else of the configuration.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::diag::Problem;
use crate::route::RouteTable;

/// The address egret's outbound listener uses when nothing else is configured.
pub const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:15001";
/// Envoy's and Istio's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled upstream connection is kept. Envoy keeps them for an hour, which
/// outlives most servers' keep-alive (nginx 75 s, AWS ALB 60 s) and produces the classic
/// "503 UC on a stale connection"; 45 s stays under the common server values.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a proxied TCP connection may stay silent in both directions (Envoy's TCP proxy
/// default, DestinationRule `connectionPool.tcp.idleTimeout`).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Where sidecar TCP listeners bind when `--tcp-listen-address` is not given.
pub const DEFAULT_TCP_LISTEN_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Arc<Cluster>>,
    pub outbound_policy: OutboundPolicy,
    pub dns: DnsConfig,
    pub access_log: AccessLogConfig,
    pub upstream_overrides: UpstreamOverrides,
    /// Warnings found while loading (errors never make it into a `Config`).
    pub warnings: Vec<Problem>,
    /// `meshConfig.defaultConfig.drainDuration`, when given.
    pub drain_duration: Option<Duration>,
    /// `meshConfig.defaultConfig.concurrency`, when given (0: the CPUs egret may use).
    pub concurrency: Option<usize>,
    /// What the DNS proxy answers itself (`--dns-capture`).
    pub names: Arc<DnsNames>,
    /// Ports that go to 443 in plaintext because a DestinationRule's workloadSelector leaves
    /// this proxy out (counted in `egret_insecure_destinations`).
    pub plaintext_tls_ports: usize,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub routes: Arc<RouteTable>,
    /// Gateways append the peer to `x-forwarded-for` (Envoy `use_remote_address: true`).
    pub use_remote_address: bool,
    /// TLS termination (Gateway servers with `tls` SIMPLE or MUTUAL).
    pub tls: Option<Arc<ServerTlsPolicy>>,
    /// `Some`: a TCP or TLS-passthrough listener (`routes` is then unused).
    pub l4: Option<Arc<crate::route::L4Routes>>,
}

impl Listener {
    /// The listener's identity across reloads: its address, or with an ephemeral port (0) its
    /// name and address. A reload keeps a listener (and its socket) whose key did not change.
    pub fn key(&self) -> Arc<str> {
        if self.address.port() == 0 {
            Arc::from(format!("{}@{}", self.name, self.address))
        } else {
            Arc::from(self.address.to_string())
        }
    }
}

/// TLS a listener terminates (Istio's ServerTLSSettings, SIMPLE or MUTUAL).
#[derive(Clone, Debug)]
pub struct ServerTlsPolicy {
    pub cert: PemSource,
    pub key: PemSource,
    /// MUTUAL: client certificates must chain to these roots.
    pub client_ca: Option<PemSource>,
    /// OPTIONAL_MUTUAL: ask for a client certificate but accept connections without one.
    pub client_cert_optional: bool,
    pub origin: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundPolicy {
    RegistryOnly,
    AllowAny,
}

impl OutboundPolicy {
    pub const NAMES: [&'static str; 2] = ["REGISTRY_ONLY", "ALLOW_ANY"];

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "REGISTRY_ONLY" => Ok(OutboundPolicy::RegistryOnly),
            "ALLOW_ANY" => Ok(OutboundPolicy::AllowAny),
            other => Err(match crate::text::suggest(other, Self::NAMES) {
                Some(s) => format!(
                    "unknown outbound traffic policy \"{other}\"; expected REGISTRY_ONLY or ALLOW_ANY (did you mean \"{s}\"?)"
                ),
                None => format!(
                    "unknown outbound traffic policy \"{other}\"; expected REGISTRY_ONLY or ALLOW_ANY"
                ),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
            OutboundPolicy::AllowAny => "ALLOW_ANY",
        }
    }
}

/// The protocol of a service port (`ServiceEntry.ports[].protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    /// No protocol given and none inferable: Istio sniffs; egret's HTTP listeners treat it as HTTP.
    Unspecified,
}

impl Protocol {
    pub const NAMES: [&'static str; 10] = [
        "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "REDIS", "MYSQL",
    ];

    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            "REDIS" => Protocol::Redis,
            "MYSQL" => Protocol::Mysql,
            _ => return None,
        })
    }

    /// Istio's port-name convention: `http-foo` is HTTP, `tcp-kafka` is TCP, `grpc-web-x` is
    /// gRPC-Web.
    pub fn from_port_name(name: &str) -> Option<Protocol> {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("grpc-web") {
            return Some(Protocol::GrpcWeb);
        }
        let prefix = lower.split('-').next().unwrap_or("");
        match prefix {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "https" => Some(Protocol::Https),
            "grpc" => Some(Protocol::Grpc),
            "tcp" => Some(Protocol::Tcp),
            "tls" => Some(Protocol::Tls),
            "mongo" => Some(Protocol::Mongo),
            "redis" => Some(Protocol::Redis),
            "mysql" => Some(Protocol::Mysql),
            _ => None,
        }
    }

    /// TLS the client originates (HTTPS, TLS): served by passthrough (SNI) and CONNECT.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Opaque TCP (TCP and the database protocols egret does not parse).
    pub fn is_opaque_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Mongo | Protocol::Redis | Protocol::Mysql
        )
    }

    /// Ports whose traffic egret's HTTP listeners route.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::Unspecified
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "MONGO",
            Protocol::Redis => "REDIS",
            Protocol::Mysql => "MYSQL",
            Protocol::Unspecified => "UNSPECIFIED",
        }
    }
}

/// An upstream cluster: one host and service port of a declared destination (or the
/// passthrough cluster).
#[derive(Debug)]
pub struct Cluster {
    /// `outbound|PORT|SUBSET|HOST` (or `PassthroughCluster`).
    pub name: String,
    /// The declared host (`www.oracle.com`, `*.example.com`, `*`), or `-` for passthrough.
    pub host: String,
    /// The service port (`ports[].number`); the connect port may differ (`targetPort`).
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Endpoints,
    /// `None` = plaintext (DISABLE).
    pub tls: Option<Arc<TlsPolicy>>,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// TCP proxying: a connection silent this long in both directions is closed (`UT`).
    pub tcp_idle_timeout: Duration,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// Circuit breaker: most upstream connections at once (`None` = unlimited).
    pub max_connections: Option<u32>,
    /// Circuit breaker: most requests waiting for a connection when `max_connections` are all
    /// busy (`http1MaxPendingRequests`; `None` = unlimited).
    pub max_pending_requests: Option<u32>,
    /// Circuit breaker: most requests in flight to the cluster (`http2MaxRequests`, which
    /// Envoy applies to HTTP/1.1 too; `None` = unlimited).
    pub max_requests: Option<u32>,
    /// Circuit breaker: most retries in flight across the cluster (`maxRetries`; `None` =
    /// unlimited, Istio's default).
    pub max_retries: Option<u32>,
    /// `connectionPool.tcp.maxConnectionDuration`: an upstream connection is not reused past
    /// this age (`None` = no limit).
    pub max_connection_duration: Option<Duration>,
    /// `connectionPool.tcp.tcpKeepalive`: SO_KEEPALIVE on upstream sockets.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `outlierDetection` (`None` = no ejection).
    pub outlier: Option<OutlierPolicy>,
    /// Where the cluster was declared, for messages.
    pub origin: String,
}

impl Cluster {
    /// Whether the DNS name / SNI comes from the request (wildcard hosts and passthrough).
    pub fn host_from_request(&self) -> bool {
        matches!(&self.endpoints, Endpoints::Dns(eps) if eps.iter().any(|e| e.name.is_none()))
    }

    /// A short description of where connections go, for `egret check` and `/clusters`.
    pub fn describe_endpoints(&self) -> String {
        match &self.endpoints {
            Endpoints::Static(addrs) => addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Endpoints::Dns(eps) => eps
                .iter()
                .map(|e| {
                    let name = e.name.as_deref().unwrap_or("<request host>");
                    match e.port {
                        Some(p) => format!("{name}:{p}"),
                        None => format!("{name}:<request port>"),
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Concurrent retries per cluster when `maxRetries` is unset. Istio leaves it unlimited; egret
/// bounds it so that retries cannot multiply an outage.
pub const DEFAULT_MAX_RETRIES: u32 = 1024;

/// `connectionPool.tcp.tcpKeepalive`; unset fields keep the kernel's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// `outlierDetection`, with Envoy's defaults for what is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx answers (and, unless split, local-origin failures) that eject a host; 0
    /// disables.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 that eject a host; 0 disables (Istio's default).
    pub consecutive_gateway: u32,
    /// With `split_local_origin`: consecutive connect failures, resets and timeouts that eject.
    pub consecutive_local_origin: u32,
    pub split_local_origin: bool,
    pub interval: Duration,
    /// An ejection lasts this times the number of times the host was ejected.
    pub base_ejection_time: Duration,
    /// The longest ejection (Envoy's `max_ejection_time`, 300 s).
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Below this share of healthy hosts the cluster panics and uses every host (0: never).
    pub min_health_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split_local_origin: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Names resolved through DNS (`resolution: DNS`).
    Dns(Vec<DnsEndpoint>),
    /// Fixed addresses (`resolution: STATIC`).
    Static(Vec<SocketAddr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEndpoint {
    /// `None`: the request's host (wildcard destinations, passthrough).
    pub name: Option<String>,
    /// `None`: the request's port (passthrough).
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Simple,
    Mutual,
}

/// PEM material: a file, or bytes from a Kubernetes Secret (`credentialName`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum PemSource {
    File(PathBuf),
    /// `label` says where it came from (`secret default/egress-certs key tls.key`); the bytes are
    /// never printed.
    Inline {
        label: String,
        pem: Arc<[u8]>,
    },
}

impl PemSource {
    /// The file path, or where the bytes came from.
    pub fn describe(&self) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Inline { label, .. } => label.clone(),
        }
    }

    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            PemSource::File(p) => std::fs::read(p),
            PemSource::Inline { pem, .. } => Ok(pem.to_vec()),
        }
    }
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Where trust anchors for the upstream's certificate come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TrustRoots {
    /// Mozilla's roots as shipped in `webpki-roots` (default).
    WebPki,
    /// The operating system's store (`caCertificates: system`).
    System,
    /// A PEM bundle (`caCertificates: /path`, `--ca-bundle`, or a Secret's `ca.crt`).
    Pem(PemSource),
}

/// A client TLS policy (`ClientTLSSettings` after validation). Paths only; the material is
/// read by `tls.rs` when the runtime is built.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    pub mode: TlsMode,
    pub roots: TrustRoots,
    /// MUTUAL: certificate chain and key.
    pub client_cert: Option<(PemSource, PemSource)>,
    pub crl: Option<PemSource>,
    /// Explicit SNI; `None` = the routed host (never an IP).
    pub sni: Option<String>,
    /// Names the server certificate must carry (any one of them); empty = the SNI name.
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    /// Where the policy was written, e.g. `config.yaml: destinations[0].trafficPolicy.tls`.
    pub origin: String,
}

impl TlsPolicy {
    /// The parts of the policy that shape a rustls `ClientConfig` (SNI is chosen per connection).
    pub fn material_key(&self) -> impl std::hash::Hash + Eq + use<> {
        (
            self.mode == TlsMode::Mutual,
            self.roots.clone(),
            self.client_cert.clone(),
            self.crl.clone(),
            self.subject_alt_names.clone(),
            self.insecure_skip_verify,
        )
    }

    /// The material key, printable (for fingerprints).
    pub fn material_key_debug(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {}",
            self.mode,
            self.roots,
            self.client_cert,
            self.crl,
            self.subject_alt_names,
            self.insecure_skip_verify
        )
    }

    pub fn mode_str(&self) -> &'static str {
        match self.mode {
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
        }
    }

    pub fn describe_roots(&self) -> String {
        if self.insecure_skip_verify {
            return "NOT VERIFIED (insecureSkipVerify)".into();
        }
        match &self.roots {
            TrustRoots::WebPki => "webpki roots".into(),
            TrustRoots::System => "system roots".into(),
            TrustRoots::Pem(p) => p.describe(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers; empty = the system's (`/etc/resolv.conf`), always with `/etc/hosts`.
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: usize,
    /// Answers are cached for their TTL, clamped to these bounds.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub family: IpFamily,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(300),
            family: IpFamily::Any,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 and IPv6 answers, IPv4 first.
    Any,
    V4Only,
    V6Only,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogPath {
    Stdout,
    File(PathBuf),
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub path: AccessLogPath,
    pub encoding: crate::access_log::Encoding,
    /// A TEXT format string, or for JSON a JSON object of format strings; `None` = Istio's
    /// default for the encoding.
    pub format: Option<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: AccessLogPath::Stdout,
            encoding: crate::access_log::Encoding::Text,
            format: None,
        }
    }
}

impl AccessLogConfig {
    pub fn parse_path(s: &str) -> AccessLogPath {
        match s {
            "-" | "/dev/stdout" => AccessLogPath::Stdout,
            "" | "off" => AccessLogPath::Off,
            p => AccessLogPath::File(PathBuf::from(p)),
        }
    }
}

/// Connect-time overrides from the command line (`--resolve`, `--connect-to`), like curl's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamOverrides {
    /// Lowercase host -> addresses, used instead of DNS.
    pub resolve: HashMap<String, Vec<IpAddr>>,
    pub connect_to: Vec<ConnectTo>,
    /// TLS session resumption toward upstreams (tickets / session IDs, kept in memory);
    /// `--no-tls-resumption` turns it off.
    pub tls_resumption: bool,
}

impl Default for UpstreamOverrides {
    fn default() -> Self {
        UpstreamOverrides {
            resolve: HashMap::new(),
            connect_to: Vec::new(),
            tls_resumption: true,
        }
    }
}

/// `--connect-to HOST:PORT=IP:PORT`: connect to `to` instead, keeping Host, SNI and the name
/// verified. An empty HOST or PORT matches any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub to: SocketAddr,
}

impl ConnectTo {
    pub fn parse(s: &str) -> Result<ConnectTo, String> {
        let (from, to) = s
            .split_once('=')
            .ok_or_else(|| format!("--connect-to \"{s}\": expected HOST:PORT=IP:PORT"))?;
        let (host, port) = from
            .rsplit_once(':')
            .ok_or_else(|| format!("--connect-to \"{s}\": expected HOST:PORT=IP:PORT"))?;
        let port =
            if port.is_empty() {
                None
            } else {
                Some(port.parse::<u16>().map_err(|_| {
                    format!("--connect-to \"{s}\": \"{port}\" is not a port number")
                })?)
            };
        let to: SocketAddr = to.parse().map_err(|_| {
            format!(
                "--connect-to \"{s}\": \"{to}\" is not IP:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)"
            )
        })?;
        let host = (!host.is_empty()).then(|| host.trim_matches(['[', ']']).to_ascii_lowercase());
        Ok(ConnectTo { host, port, to })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

impl UpstreamOverrides {
    /// Parses `HOST=IP[,IP]` (`--resolve`).
    pub fn parse_resolve(s: &str) -> Result<(String, Vec<IpAddr>), String> {
        let (host, ips) = s
            .split_once('=')
            .ok_or_else(|| format!("--resolve \"{s}\": expected HOST=IP[,IP]"))?;
        if host.is_empty() {
            return Err(format!("--resolve \"{s}\": the host is empty"));
        }
        let ips = ips
            .split(',')
            .map(|ip| {
                ip.trim()
                    .trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .map_err(|_| format!("--resolve \"{s}\": \"{ip}\" is not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((host.to_ascii_lowercase(), ips))
    }

    /// Where to connect for `host:port`, if an override applies.
    pub fn connect_to(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.connect_to
            .iter()
            .find(|c| c.matches(host, port))
            .map(|c| c.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_parses_like_curl() {
        let c = ConnectTo::parse("example.com:443=127.0.0.1:8443").expect("parse");
        assert_eq!(c.host.as_deref(), Some("example.com"));
        assert_eq!(c.port, Some(443));
        assert!(c.matches("EXAMPLE.com", 443));
        assert!(!c.matches("example.com", 80));
        let any = ConnectTo::parse(":443=[::1]:9443").expect("parse");
        assert!(any.matches("whatever", 443));
        assert!(ConnectTo::parse("example.com=1.2.3.4:5").is_err());
        assert!(
            ConnectTo::parse("example.com:443=localhost:1")
                .unwrap_err()
                .contains("not IP:PORT")
        );
    }

    #[test]
    fn resolve_parses_lists() {
        let (h, ips) = UpstreamOverrides::parse_resolve("Api.Example.com=10.0.0.1,::1").expect("p");
        assert_eq!(h, "api.example.com");
        assert_eq!(ips.len(), 2);
        assert!(UpstreamOverrides::parse_resolve("a=nope").is_err());
    }

    #[test]
    fn protocol_from_port_name() {
        assert_eq!(Protocol::from_port_name("http-3000"), Some(Protocol::Http));
        assert_eq!(
            Protocol::from_port_name("https-port"),
            Some(Protocol::Https)
        );
        assert_eq!(Protocol::from_port_name("tcp-kafka"), Some(Protocol::Tcp));
        assert_eq!(
            Protocol::from_port_name("grpc-web-x"),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(Protocol::from_port_name("web"), None);
    }
}

/// What egret's DNS proxy (`--dns-capture`) answers from its own view, per declared host
/// (lowercase, no trailing dot). Every other name is forwarded to the upstream resolvers.
#[derive(Debug, Default)]
pub struct DnsNames {
    pub hosts: HashMap<String, NameAnswer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameAnswer {
    /// These addresses: the host's VIP, its ServiceEntry addresses, or its STATIC endpoints.
    Fixed(Vec<IpAddr>),
    /// What egret's own resolver answers for the name (resolution DNS without a VIP).
    Resolve,
}
