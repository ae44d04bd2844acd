//! The validated runtime model, and loading it from files.
//!
//! Raw YAML (egret's native schema in [`native`], Istio manifests in [`istio`]) is parsed into
//! serde shapes ([`spec`]), then lowered into one [`Config`]: listeners with route tables,
//! clusters (`outbound|PORT|SUBSET|HOST`) with their endpoints and TLS policy. Every problem found
//! on the way is collected ([`diag`]) so a broken config is reported in one run, and a config
//! with errors is never used.

pub mod diag;
pub mod istio;
pub mod k8s;
pub mod native;
pub mod spec;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diag::{ConfigError, Origin, Problem, Problems, Severity};

use crate::route::{
    ClusterId, Fallback, HttpRoute, PortSource, RouteAction, RouteTable, VirtualHost,
    WeightedClusters,
};
use spec::{EndpointSpec, TlsModeSpec, TlsSpec, TrafficPolicySpec};

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

/// The embedded default configuration (`egret` with no `--config`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.yaml");
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default>";

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

    /// Ports whose traffic egret's HTTP listeners route.
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

/// Settings given on the command line; they win over the files.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub outbound_listen: Option<SocketAddr>,
    pub dns_servers: Vec<SocketAddr>,
    pub upstream: UpstreamOverrides,
    pub outbound_policy: Option<OutboundPolicy>,
    pub access_log: Option<String>,
    /// `--ca-bundle`: the trust roots of every TLS policy without `caCertificates`.
    pub ca_bundle: Option<PathBuf>,
    /// `--mount FROM=TO`: files under FROM (e.g. a pod's /etc/istio/egress-certs) are read from TO.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// `--tcp-listen-address`: where sidecar TCP listeners bind (default 127.0.0.1).
    pub tcp_listen_address: Option<IpAddr>,
    pub istio: istio::IstioOptions,
}

/// Applies `--mount FROM=TO` to a path.
pub fn map_path(mounts: &[(PathBuf, PathBuf)], p: &Path) -> PathBuf {
    for (from, to) in mounts {
        if let Ok(rest) = p.strip_prefix(from) {
            return to.join(rest);
        }
    }
    p.to_path_buf()
}

/// One configuration input: a name for messages and its text.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// Directory that relative paths in this source are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Template parameters that apply to this source only (`--param-file` after `--config`).
    pub params: Vec<(String, String)>,
}

impl Source {
    pub fn embedded_default() -> Source {
        Source {
            name: EMBEDDED_DEFAULT_NAME.into(),
            text: EMBEDDED_DEFAULT.into(),
            base_dir: None,
            params: Vec::new(),
        }
    }

    pub fn inline(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            base_dir: None,
            params: Vec::new(),
        }
    }
}

/// Reads files and directories (`*.yaml`, `*.yml`, `*.json`, sorted by name) into sources.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, ConfigError> {
    let mut out = Vec::new();
    let mut problems = Problems::default();
    for path in paths {
        let origin = Origin::file(path.display().to_string());
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                problems.error(
                    &origin,
                    "",
                    format!("cannot read the configuration: {e}"),
                    Some("check the --config path".into()),
                );
                continue;
            }
        };
        let files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                    })
                    .collect(),
                Err(e) => {
                    problems.error(&origin, "", format!("cannot list the directory: {e}"), None);
                    continue;
                }
            };
            files.sort();
            if files.is_empty() {
                problems.error(
                    &origin,
                    "",
                    "the directory holds no *.yaml, *.yml or *.json file",
                    None,
                );
            }
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => out.push(Source {
                    name: file.display().to_string(),
                    text,
                    base_dir: file.parent().map(Path::to_path_buf),
                    params: Vec::new(),
                }),
                Err(e) => problems.error(
                    &Origin::file(file.display().to_string()),
                    "",
                    format!("cannot read the file: {e}"),
                    None,
                ),
            }
        }
    }
    if problems.has_errors() {
        return Err(ConfigError {
            problems: problems.list,
        });
    }
    Ok(out)
}

/// Parses, lowers and validates the sources into one `Config`.
pub fn load(sources: &[Source], overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut model = Model::default();
    for source in sources {
        let mut params = source.params.clone();
        params.extend(overrides.istio.params.iter().cloned());
        for doc in k8s::split_documents(&source.text) {
            if k8s::is_kubernetes(doc.text) {
                k8s::parse_doc(source, &doc, &params, &mut model, &mut problems);
            } else {
                native::parse_doc(source, &doc, &mut model, &mut problems);
            }
        }
    }
    if let Some(mesh) = &overrides.istio.mesh_config {
        let src = k8s::ObjSource {
            origin: Origin::file(&mesh.name),
            prefix: String::new(),
            base_dir: mesh.base_dir.clone(),
        };
        k8s::mesh_config(&mesh.text, &src, &mut model, &mut problems);
    }
    let mut istio_opts = overrides.istio.clone();
    istio_opts.mounts = overrides.mounts.clone();
    istio::resolve(&mut model, &istio_opts, &mut problems);
    let config = build(model, overrides, &mut problems);
    if problems.has_errors() {
        return Err(ConfigError {
            problems: problems.list,
        });
    }
    let mut config = config;
    config.warnings = problems.list;
    Ok(config)
}

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
    pub istio: Option<istio::Store>,
    /// Routing produced by Istio VirtualServices and Gateways.
    pub routing: Option<istio::Routing>,
    /// `meshConfig.defaultConfig.drainDuration`, when given.
    pub drain_duration: Option<Duration>,
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
    pub namespace: Option<String>,
    /// ServiceEntry `subjectAltNames`: used when the TLS policy gives none.
    pub subject_alt_names: Vec<String>,
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
    pub subsets: Vec<spec::SubsetSpec>,
    /// Where `credentialName` is looked up.
    pub credentials: Option<Arc<istio::Credentials>>,
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

/// A default route (no VirtualService): port, host, cluster, timeout, origin.
pub(crate) type DefaultRoute = (u16, String, ClusterId, Option<Duration>, String);

/// A declared host on a port that is not HTTP (TCP, TLS, HTTPS).
#[derive(Clone)]
pub(crate) struct L4Port {
    pub port: u16,
    pub host: String,
    pub cluster: ClusterId,
    pub protocol: Protocol,
    pub origin: String,
}

/// The routing of a native `protocol: TCP` or `protocol: TLS` listener.
fn declared_l4(
    decl: &ListenerDecl,
    ports: &[L4Port],
    policy: OutboundPolicy,
    passthrough: ClusterId,
    problems: &mut Problems,
) -> Option<crate::route::L4Routes> {
    use crate::route::{L4Fallback, L4Routes, VirtualHosts};
    let port = decl.port?;
    match decl.kind {
        ListenerKind::Http => None,
        ListenerKind::Tcp => {
            let hosts: Vec<&L4Port> = ports
                .iter()
                .filter(|p| p.port == port && p.protocol.is_opaque_tcp())
                .collect();
            match hosts.as_slice() {
                [one] => Some(L4Routes::Tcp {
                    clusters: WeightedClusters::single(one.cluster),
                    route_name: None,
                }),
                [] => {
                    problems.error(
                        &decl.origin,
                        format!("listeners[{}]", decl.name),
                        format!("no destination declares TCP port {port}"),
                        Some("add a destination with this port and protocol TCP".into()),
                    );
                    None
                }
                [a, b, ..] => {
                    problems.error(
                        &decl.origin,
                        format!("listeners[{}]", decl.name),
                        format!("TCP port {port} is declared by {} and by {}; a TCP listener cannot tell them apart", a.host, b.host),
                        Some("give each TCP destination its own port".into()),
                    );
                    None
                }
            }
        }
        ListenerKind::Tls => {
            let mut hosts = VirtualHosts::default();
            for p in ports
                .iter()
                .filter(|p| p.port == port && p.protocol.is_tls())
            {
                hosts.insert(VirtualHost {
                    name: format!("{}:{port}", p.host),
                    domain: p.host.clone(),
                    routes: vec![HttpRoute::forward(
                        None,
                        WeightedClusters::single(p.cluster),
                        None,
                    )],
                });
            }
            if hosts.hosts.is_empty() && policy == OutboundPolicy::RegistryOnly {
                problems.warn(
                    &decl.origin,
                    format!("listeners[{}]", decl.name),
                    format!("no destination declares an HTTPS or TLS port {port}: under REGISTRY_ONLY every connection to this listener will be refused"),
                    Some(format!("declare the hosts with a port {{number: {port}, protocol: TLS}} (or HTTPS)")),
                );
            }
            Some(L4Routes::Sni {
                port,
                hosts,
                fallback: match policy {
                    OutboundPolicy::AllowAny => L4Fallback::AllowAny(passthrough),
                    OutboundPolicy::RegistryOnly => L4Fallback::Refuse,
                },
            })
        }
    }
}

/// Where `CONNECT host:port` may go on an outbound listener: every host declared on a TLS,
/// HTTPS or TCP port.
fn add_tunnels(table: &mut RouteTable, ports: &[L4Port]) {
    for p in ports {
        let vhosts = table.tunnels.entry(p.port).or_default();
        if vhosts.get_mut(&p.host).is_some() {
            continue;
        }
        vhosts.insert(VirtualHost {
            name: format!("{}:{}", p.host, p.port),
            domain: p.host.clone(),
            routes: vec![HttpRoute::forward(
                None,
                WeightedClusters::single(p.cluster),
                None,
            )],
        });
    }
}

/// The sidecar's TCP listeners: each opaque-TCP port is served at `ip` and the same port (or
/// the `--bind-port` mapping). Without transparent capture a listener cannot tell hosts apart,
/// so a port claimed by two hosts is an error.
fn tcp_listeners(
    listeners: &mut Vec<Listener>,
    ports: &[L4Port],
    ip: IpAddr,
    bind_ports: &HashMap<u16, u16>,
    routing: Option<&istio::Routing>,
    clusters: &HashMap<String, ClusterId>,
    problems: &mut Problems,
) {
    let mut by_port: std::collections::BTreeMap<u16, Vec<&L4Port>> = Default::default();
    for p in ports.iter().filter(|p| p.protocol.is_opaque_tcp()) {
        by_port.entry(p.port).or_default().push(p);
    }
    for (port, hosts) in by_port {
        if let [a, b, ..] = hosts.as_slice() {
            problems.error(
                &Origin::file(b.origin.clone()),
                "",
                format!(
                    "TCP port {port} is declared by {} and by {} ({}); a sidecar TCP listener on {ip}:{port} cannot tell them apart",
                    a.host, b.host, a.origin
                ),
                Some("give each TCP destination its own port number, or route them through an egress gateway".into()),
            );
            continue;
        }
        let p = hosts[0];
        let (clusters, route_name) =
            match routing.and_then(|r| r.sidecar_tcp(&p.host, port, clusters, problems)) {
                Some((w, name)) => (w, name),
                None => (WeightedClusters::single(p.cluster), None),
            };
        listeners.push(Listener {
            name: format!("{ip}_{port}"),
            address: SocketAddr::new(ip, bind_ports.get(&port).copied().unwrap_or(port)),
            routes: Arc::new(RouteTable::new(PortSource::Fixed(port), Fallback::NotFound)),
            use_remote_address: false,
            tls: None,
            l4: Some(Arc::new(crate::route::L4Routes::Tcp {
                clusters,
                route_name,
            })),
        });
    }
}

/// Lowers the model into a `Config`, checking everything that needs the whole picture.
fn build(mut model: Model, overrides: &Overrides, problems: &mut Problems) -> Config {
    let outbound_policy = overrides
        .outbound_policy
        .or(model.outbound_policy.as_ref().map(|(p, _)| *p))
        .unwrap_or(OutboundPolicy::RegistryOnly);

    let mut dns = model.dns.take().map(|(d, _)| d).unwrap_or_default();
    if !overrides.dns_servers.is_empty() {
        dns.servers = overrides.dns_servers.clone();
    }
    let (mut access_log, log_origin) = model.access_log.take().unwrap_or_else(|| {
        (
            AccessLogConfig::default(),
            Origin::file(EMBEDDED_DEFAULT_NAME),
        )
    });
    if let Some(path) = &overrides.access_log {
        access_log.path = AccessLogConfig::parse_path(path);
    }
    if let Err(e) =
        crate::access_log::LogFormat::from_mesh(access_log.encoding, access_log.format.as_deref())
    {
        problems.error(
            &log_origin,
            "accessLogFormat",
            e,
            Some(
                "see the operator list in the README; Envoy's syntax is %OPERATOR(ARG):MAXLEN%"
                    .into(),
            ),
        );
    }

    // Clusters: one per (host, service port) of every declared service, plus the subset
    // clusters that routes name.
    let mut clusters: Vec<Arc<Cluster>> = Vec::new();
    let mut by_name: HashMap<String, ClusterId> = HashMap::new();
    let mut tls_cache: HashMap<String, Option<Arc<TlsPolicy>>> = HashMap::new();
    let mut default_routes: Vec<DefaultRoute> = Vec::new();
    let mut l4_ports: Vec<L4Port> = Vec::new();
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
                if let Some(&prev) = by_name.get(&cluster.name) {
                    problems.error(
                        &svc.origin,
                        format!("{}.ports[number={}]", svc.path, port.number),
                        format!(
                            "host {} port {} is declared twice (also by {})",
                            svc.host, port.number, clusters[prev].origin
                        ),
                        Some("declare each host and port once; merge the two entries".into()),
                    );
                    continue;
                }
                let id = clusters.len();
                by_name.insert(cluster.name.clone(), id);
                if subset.is_none() && !port.protocol.is_http() {
                    l4_ports.push(L4Port {
                        port: port.number,
                        host: svc.host.clone(),
                        cluster: id,
                        protocol: port.protocol,
                        origin: cluster.origin.clone(),
                    });
                }
                if subset.is_none() && port.protocol.is_http() {
                    default_routes.push((
                        port.number,
                        svc.host.clone(),
                        id,
                        svc.timeout,
                        cluster.origin.clone(),
                    ));
                }
                clusters.push(Arc::new(cluster));
            }
        }
    }

    // The passthrough cluster (ALLOW_ANY): the request's host and port, plaintext.
    let passthrough = clusters.len();
    clusters.push(Arc::new(Cluster {
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
        origin: "outbound traffic policy ALLOW_ANY".into(),
    }));
    let fallback = match outbound_policy {
        OutboundPolicy::RegistryOnly => Fallback::BlockAll,
        OutboundPolicy::AllowAny => Fallback::AllowAny(passthrough),
    };

    // Listeners: the outbound (sidecar) listeners, then the gateway listeners.
    let gateway_role = model
        .routing
        .as_ref()
        .is_some_and(istio::Routing::is_gateway);
    let mut listeners = Vec::new();
    let mut decls = model.listeners.clone();
    if decls.is_empty() && !gateway_role {
        decls.push(ListenerDecl {
            name: "outbound".into(),
            address: DEFAULT_OUTBOUND_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 15001))),
            port: None,
            kind: ListenerKind::Http,
            origin: Origin::file(EMBEDDED_DEFAULT_NAME),
        });
    }
    if let Some(addr) = overrides.outbound_listen {
        match decls
            .iter_mut()
            .find(|l| l.port.is_none() && l.kind == ListenerKind::Http)
        {
            Some(l) => l.address = addr,
            None => decls.push(ListenerDecl {
                name: "outbound".into(),
                address: addr,
                port: None,
                kind: ListenerKind::Http,
                origin: Origin::file("<command line>"),
            }),
        }
    }
    for decl in &decls {
        if decl.kind != ListenerKind::Http {
            if let Some(l4) = declared_l4(decl, &l4_ports, outbound_policy, passthrough, problems) {
                listeners.push(Listener {
                    name: decl.name.clone(),
                    address: decl.address,
                    routes: Arc::new(RouteTable::new(
                        PortSource::Fixed(decl.port.unwrap_or(0)),
                        Fallback::NotFound,
                    )),
                    use_remote_address: false,
                    tls: None,
                    l4: Some(Arc::new(l4)),
                });
            }
            continue;
        }
        let port_source = decl.port.map_or(PortSource::Request, PortSource::Fixed);
        let mut table = RouteTable::new(port_source, fallback.clone());
        if let Some(r) = &model.routing {
            r.sidecar_routes(&mut table, &by_name, decl.port, problems);
        }
        add_default_routes(&mut table, &default_routes, decl.port, problems);
        if decl.port.is_none() {
            add_tunnels(&mut table, &l4_ports);
        }
        listeners.push(Listener {
            name: decl.name.clone(),
            address: decl.address,
            routes: Arc::new(table),
            use_remote_address: false,
            tls: None,
            l4: None,
        });
    }
    if !gateway_role {
        let ip = overrides
            .tcp_listen_address
            .unwrap_or(DEFAULT_TCP_LISTEN_ADDRESS);
        let bind_ports = &overrides.istio.bind_ports;
        // Ports a declared `protocol: TCP` listener already serves get no automatic one.
        let declared: Vec<u16> = decls
            .iter()
            .filter(|d| d.kind == ListenerKind::Tcp)
            .filter_map(|d| d.port)
            .collect();
        let auto: Vec<L4Port> = l4_ports
            .iter()
            .filter(|p| !declared.contains(&p.port))
            .cloned()
            .collect();
        tcp_listeners(
            &mut listeners,
            &auto,
            ip,
            bind_ports,
            model.routing.as_ref(),
            &by_name,
            problems,
        );
    }
    if let Some(r) = &model.routing {
        r.gateway_listeners(&mut listeners, &by_name, problems);
    }
    let mut seen_addrs: HashMap<Arc<str>, String> = HashMap::new();
    for l in &listeners {
        if let Some(prev) = seen_addrs.insert(l.key(), l.name.clone()) {
            problems.error(
                &Origin::file("listeners"),
                "",
                format!("listener \"{}\" and listener \"{prev}\" both use {}", l.name, l.address),
                Some("give each listener its own address or port (--bind-port maps a Gateway port to another)".into()),
            );
        }
    }

    Config {
        listeners,
        clusters,
        outbound_policy,
        dns,
        access_log,
        upstream_overrides: overrides.upstream.clone(),
        warnings: Vec::new(),
        drain_duration: model.drain_duration,
    }
}

/// Adds the route Istio generates when no VirtualService applies: every request for the host
/// and port goes to its cluster (route name `default`). Hosts that already have a virtual host
/// (from a VirtualService) are left alone.
pub(crate) fn add_default_routes(
    table: &mut RouteTable,
    routes: &[DefaultRoute],
    only_port: Option<u16>,
    problems: &mut Problems,
) {
    for (port, host, cluster, timeout, origin) in routes {
        if only_port.is_some_and(|p| p != *port) {
            continue;
        }
        let vhosts = table.vhosts_mut(*port);
        if vhosts.get_mut(host).is_some() {
            continue;
        }
        let inserted = vhosts.insert(VirtualHost {
            name: format!("{host}:{port}"),
            domain: host.clone(),
            routes: vec![HttpRoute::forward(
                Some(Arc::from("default")),
                WeightedClusters::single(*cluster),
                *timeout,
            )],
        });
        if !inserted {
            problems.error(
                &Origin::file(origin.clone()),
                "",
                format!("host {host} port {port} is routed twice"),
                None,
            );
        }
    }
}

/// Builds the cluster for one host and port (and subset), applying the destination's traffic
/// policy: port-level settings win wholesale, and a subset's policy overrides field by field,
/// as in Istio.
pub(crate) fn lower_cluster(
    svc: &ServiceDecl,
    port: &PortDecl,
    subset: Option<&spec::SubsetSpec>,
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
    let wildcard = svc.host.starts_with('*');

    // Effective policy: port-level entry for this service port, else the top level; then the
    // subset's policy (its port-level entry, else its top level) over that.
    let mut tls_spec: Option<(TlsSpec, String)> = None;
    let mut pool = None;
    let mut lb = None;
    let mut apply = |tp: &TrafficPolicySpec, path: &str| {
        let port_level = tp
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| p.port.number == u32::from(port.number));
        if let Some((i, pl)) = port_level {
            tls_spec = pl
                .tls
                .clone()
                .map(|t| (t, format!("{path}.portLevelSettings[{i}].tls")));
            pool = pl.connection_pool.clone();
            lb = pl.load_balancer.clone();
        } else {
            if tp.tls.is_some() {
                tls_spec = tp.tls.clone().map(|t| (t, format!("{path}.tls")));
            }
            if tp.connection_pool.is_some() {
                pool = tp.connection_pool.clone();
            }
            if tp.load_balancer.is_some() {
                lb = tp.load_balancer.clone();
            }
        }
    };
    if let Some(p) = &svc.policy {
        apply(&p.spec, &p.path);
        if let Some(s) = subset
            && let Some(stp) = &s.traffic_policy
        {
            let base = p.path.trim_end_matches(".trafficPolicy");
            apply(
                stp,
                &format!("{base}.subsets[name={}].trafficPolicy", s.name),
            );
        }
    }

    let tls = match (&tls_spec, &svc.policy) {
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
    let tls = match tls {
        Some(t) if t.subject_alt_names.is_empty() && !svc.subject_alt_names.is_empty() => {
            let mut t = (*t).clone();
            t.subject_alt_names = svc.subject_alt_names.clone();
            Some(Arc::new(t))
        }
        t => t,
    };

    // Subset labels select endpoints by their labels.
    let endpoints_src: Vec<&EndpointSpec> = match subset {
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
            selected
        }
        _ => svc.endpoints.iter().collect(),
    };

    let endpoints = match svc.resolution {
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
    };

    let (connect_timeout, idle_timeout, tcp_idle_timeout, max_rpc, max_conns) = match &pool {
        Some(p) => {
            let tcp = p.tcp.clone().unwrap_or_default();
            let http = p.http.clone().unwrap_or_default();
            (
                tcp.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
                // Envoy: 0 disables the pool's idle timeout.
                match http.idle_timeout.or(tcp.idle_timeout).map(|d| d.0) {
                    Some(d) if d.is_zero() => Duration::MAX,
                    Some(d) => d,
                    None => DEFAULT_IDLE_TIMEOUT,
                },
                // Envoy: 0 disables the TCP idle timeout.
                match tcp.idle_timeout.map(|d| d.0) {
                    Some(d) if d.is_zero() => Duration::MAX,
                    Some(d) => d,
                    None => DEFAULT_TCP_IDLE_TIMEOUT,
                },
                http.max_requests_per_connection.unwrap_or(0),
                tcp.max_connections,
            )
        }
        None => (
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_IDLE_TIMEOUT,
            DEFAULT_TCP_IDLE_TIMEOUT,
            0,
            None,
        ),
    };
    let lb = match lb.and_then(|l| l.simple) {
        Some(spec::SimpleLbSpec::Random) => LbPolicy::Random,
        Some(spec::SimpleLbSpec::LeastRequest | spec::SimpleLbSpec::LeastConn) => {
            LbPolicy::LeastRequest
        }
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
        connect_timeout,
        idle_timeout,
        tcp_idle_timeout,
        max_requests_per_connection: max_rpc,
        max_connections: max_conns,
        origin: format!("{}: {}", svc.origin, svc.path),
    })
}

/// Endpoint port precedence (pilot): `endpoints[].ports[<port name>]` > `targetPort` > `number`.
fn endpoint_port(ep: &EndpointSpec, port: &PortDecl, target_port: u16) -> u16 {
    port.name
        .as_ref()
        .and_then(|n| ep.ports.get(n))
        .and_then(|p| u16::try_from(*p).ok())
        .unwrap_or(target_port)
}

/// What `lower_tls` needs besides the spec.
pub(crate) struct TlsCtx<'a> {
    /// Relative paths are resolved against this directory.
    pub base_dir: Option<&'a Path>,
    /// `--ca-bundle`.
    pub ca_bundle: Option<&'a Path>,
    /// `credentialName` lookup, with the rule's namespace.
    pub credentials: Option<(&'a istio::Credentials, &'a str)>,
    /// `--mount`.
    pub mounts: &'a [(PathBuf, PathBuf)],
}

/// Validates a `ClientTLSSettings` block. Returns `None` for DISABLE (and on error).
pub(crate) fn lower_tls(
    spec: &TlsSpec,
    origin: &Origin,
    path: &str,
    ctx: &TlsCtx<'_>,
    problems: &mut Problems,
) -> Option<Arc<TlsPolicy>> {
    let resolve_path = |p: &str| -> PemSource {
        let pb = PathBuf::from(p);
        let pb = match ctx.base_dir {
            Some(dir) if pb.is_relative() => dir.join(pb),
            _ => pb,
        };
        PemSource::File(map_path(ctx.mounts, &pb))
    };
    let has_material = spec.ca_certificates.is_some()
        || spec.client_certificate.is_some()
        || spec.private_key.is_some()
        || spec.sni.is_some()
        || !spec.subject_alt_names.is_empty()
        || spec.credential_name.is_some();
    let mode = match spec.mode {
        Some(m) => m,
        None if has_material => {
            problems.error(
                origin,
                format!("{path}.mode"),
                "tls has settings but no mode",
                Some("set mode: SIMPLE (verify the server) or MUTUAL (also present a client certificate)".into()),
            );
            return None;
        }
        None => TlsModeSpec::Disable,
    };
    match mode {
        TlsModeSpec::Disable => {
            if has_material {
                problems.warn(
                    origin,
                    format!("{path}.mode"),
                    "mode is DISABLE, so the other tls settings are ignored and traffic is plaintext",
                    Some("set mode: SIMPLE or MUTUAL to originate TLS".into()),
                );
            }
            return None;
        }
        TlsModeSpec::IstioMutual => {
            problems.error(
                origin,
                format!("{path}.mode"),
                "ISTIO_MUTUAL needs an Istio mesh identity (SPIFFE certificates from istiod), which egret does not have",
                Some("use mode: MUTUAL with clientCertificate, privateKey and caCertificates (or credentialName)".into()),
            );
            return None;
        }
        TlsModeSpec::Simple | TlsModeSpec::Mutual => {}
    }
    let mut ok = true;

    // credentialName: a Kubernetes Secret (tls.crt, tls.key, ca.crt), exclusive with the files.
    let credential = match &spec.credential_name {
        None => None,
        Some(name) => {
            if spec.client_certificate.is_some()
                || spec.private_key.is_some()
                || spec.ca_certificates.is_some()
            {
                problems.error(
                    origin,
                    format!("{path}.credentialName"),
                    "credentialName cannot be combined with clientCertificate, privateKey or caCertificates",
                    Some("use either the Secret or the files".into()),
                );
                return None;
            }
            match ctx.credentials {
                None => {
                    problems.error(
                        origin,
                        format!("{path}.credentialName"),
                        format!("credentialName \"{name}\" cannot be resolved here"),
                        Some("give the Secret as a Kubernetes manifest with --config, or its mounted directory with --credentials-dir".into()),
                    );
                    return None;
                }
                Some((store, ns)) => match store.lookup(ns, name) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        problems.error(origin, format!("{path}.credentialName"), e, Some("the Secret needs tls.crt and tls.key (MUTUAL) and/or ca.crt; give it with --config or --credentials-dir".into()));
                        return None;
                    }
                },
            }
        }
    };

    let roots = match (spec.ca_certificates.as_deref().map(str::trim), &credential) {
        (_, Some(c)) if c.ca.is_some() => TrustRoots::Pem(c.ca.clone()?),
        (None | Some(""), _) => match ctx.ca_bundle {
            Some(b) => TrustRoots::Pem(PemSource::File(map_path(ctx.mounts, b))),
            None => TrustRoots::WebPki,
        },
        (Some("system"), _) => TrustRoots::System,
        (Some(p), _) => TrustRoots::Pem(resolve_path(p)),
    };
    if let Some(sni) = &spec.sni {
        if sni.parse::<IpAddr>().is_ok() {
            problems.error(
                origin,
                format!("{path}.sni"),
                format!("\"{sni}\" is an IP address; SNI must be a host name"),
                Some(
                    "remove sni to send none for IP destinations, or use the server's host name"
                        .into(),
                ),
            );
            ok = false;
        } else if rustls_pki_types::DnsName::try_from(sni.as_str()).is_err() {
            problems.error(
                origin,
                format!("{path}.sni"),
                format!("\"{sni}\" is not a valid DNS name"),
                None,
            );
            ok = false;
        }
    }
    for (i, san) in spec.subject_alt_names.iter().enumerate() {
        if rustls_pki_types::ServerName::try_from(san.as_str()).is_err() {
            problems.error(
                origin,
                format!("{path}.subjectAltNames[{i}]"),
                format!("\"{san}\" is neither a DNS name nor an IP address"),
                Some(
                    "egret checks DNS and IP SANs; URI SANs (spiffe://...) are not supported"
                        .into(),
                ),
            );
            ok = false;
        }
    }
    let skip = spec.insecure_skip_verify.unwrap_or(false);
    if skip {
        problems.warn(
            origin,
            format!("{path}.insecureSkipVerify"),
            "the server certificate will NOT be verified for this destination: anyone on the path can impersonate it",
            Some("remove insecureSkipVerify and put the server's root and intermediate CAs in caCertificates".into()),
        );
        if spec.ca_certificates.is_some() || !spec.subject_alt_names.is_empty() {
            problems.warn(
                origin,
                format!("{path}.insecureSkipVerify"),
                "caCertificates and subjectAltNames are ignored because insecureSkipVerify is true",
                None,
            );
        }
    }
    let crl = spec.ca_crl.as_deref().map(resolve_path);
    let client_cert = match mode {
        TlsModeSpec::Mutual => match (&credential, &spec.client_certificate, &spec.private_key) {
            (Some(c), _, _) => match (&c.cert, &c.key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                _ => {
                    problems.error(
                        origin,
                        format!("{path}.credentialName"),
                        "mode MUTUAL but the Secret has no tls.crt/tls.key",
                        Some("the Secret must hold tls.crt and tls.key (or cert and key)".into()),
                    );
                    ok = false;
                    None
                }
            },
            (None, Some(c), Some(k)) => Some((resolve_path(c), resolve_path(k))),
            (None, c, k) => {
                let missing = match (c, k) {
                    (None, None) => "clientCertificate and privateKey are",
                    (None, Some(_)) => "clientCertificate is",
                    _ => "privateKey is",
                };
                problems.error(
                    origin,
                    path.to_string(),
                    format!("mode MUTUAL but {missing} missing"),
                    Some("MUTUAL presents a client certificate: set clientCertificate and privateKey (PEM files), or use mode: SIMPLE. egret never falls back to plaintext".into()),
                );
                ok = false;
                None
            }
        },
        _ => {
            if spec.client_certificate.is_some() || spec.private_key.is_some() {
                problems.warn(
                    origin,
                    format!("{path}.clientCertificate"),
                    "mode SIMPLE does not present a client certificate, so clientCertificate/privateKey are ignored",
                    Some("use mode: MUTUAL to present it".into()),
                );
            }
            None
        }
    };
    if !ok {
        return None;
    }
    Some(Arc::new(TlsPolicy {
        mode: if mode == TlsModeSpec::Mutual {
            TlsMode::Mutual
        } else {
            TlsMode::Simple
        },
        roots,
        client_cert,
        crl,
        sni: spec.sni.clone(),
        subject_alt_names: spec.subject_alt_names.clone(),
        insecure_skip_verify: skip,
        origin: format!("{origin}: {path}"),
    }))
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

    /// The effective routing table, one line per route: what `egret check` prints.
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
                let vhosts = &l.routes.ports[&port];
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
                                    self.cluster_row(
                                        &mut out,
                                        &port.to_string(),
                                        &vh.domain,
                                        route,
                                        wc.cluster,
                                    );
                                }
                            }
                        }
                    }
                }
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
        out
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
    fn hosts_are_checked() {
        assert!(check_host("www.oracle.com", false).is_ok());
        assert!(check_host("*.example.com", false).is_ok());
        assert!(check_host("*", false).is_err());
        assert!(check_host("*", true).is_ok());
        assert!(check_host("a.*.com", false).is_err());
        assert!(check_host("bad host", false).is_err());
        assert!(check_host("10.0.0.1", false).is_ok());
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
