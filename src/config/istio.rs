//! Istio resources as configuration: ServiceEntry, DestinationRule, VirtualService and Gateway,
//! with Istio's semantics (see `../shared/docs/istio-envoy-semantics.md`): short names expand to
//! `name.namespace.svc.cluster.local`, `exportTo` and namespaces decide visibility, a
//! DestinationRule's port-level settings win wholesale, VirtualService routes are tried in order
//! and bound to the `mesh` (sidecar) or to Gateways (egress gateway), and clusters keep Envoy's
//! `outbound|PORT|SUBSET|HOST` names.
//!
//! Fields egret cannot honour are reported: an error when ignoring them would change routing or
//! security, a warning otherwise.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::diag::{Origin, Problems};
use super::k8s::{Input, MeshConfigSpec, Meta, ObjSource, SecretData, decode};
use super::spec::{
    Dur, EndpointSpec, PortSelectorSpec, PortSpec, SubsetSpec, TrafficPolicySpec,
    serde_ignored_any::Any,
};
use super::{
    AccessLogConfig, AccessLogPath, Listener, Model, OutboundPolicy, PemSource, PolicyDecl,
    PortDecl, Protocol, Resolution, ServerTlsPolicy, ServiceDecl, Source,
};
use crate::route::{
    ClusterId, Fallback, HeaderOps, HttpRoute, L4Fallback, L4Routes, PortSource, Redirect, Rewrite,
    RouteAction, RouteMatch, RouteTable, StringMatch, VirtualHost, VirtualHosts, WeightedCluster,
    WeightedClusters,
};
use crate::text::suggest;

/// Which proxy egret plays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The sidecar: the outbound listener serves the `mesh` gateway.
    #[default]
    Sidecar,
    /// An egress gateway: one listener per port of the Gateways selected by `--gateway-selector`.
    Gateway,
}

/// Command-line settings for Istio manifests.
#[derive(Clone, Debug)]
pub struct IstioOptions {
    /// The proxy's namespace (`--namespace`), also the default for objects without one.
    pub namespace: String,
    pub cluster_domain: String,
    pub role: Role,
    /// `--gateway-selector`: the labels of this gateway's pod.
    pub gateway_selector: BTreeMap<String, String>,
    /// `--workload-label`: the labels of the workload (for `workloadSelector`).
    pub workload_labels: BTreeMap<String, String>,
    /// `--listen-address`: where gateway listeners bind.
    pub listen_address: IpAddr,
    /// `--bind-port PORT=BIND`: bind a Gateway server port elsewhere (like a Service's
    /// targetPort); 0 takes an ephemeral port.
    pub bind_ports: HashMap<u16, u16>,
    /// `--param` / `--param-file` for every Template.
    pub params: Vec<(String, String)>,
    /// `--mesh-config`.
    pub mesh_config: Option<Source>,
    /// `--credentials-dir`: mounted Secrets, `DIR/<name>/tls.crt` etc.
    pub credentials_dir: Option<PathBuf>,
    /// `--mount FROM=TO` (filled in from `Overrides::mounts`).
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

impl Default for IstioOptions {
    fn default() -> Self {
        IstioOptions {
            namespace: "default".into(),
            cluster_domain: "cluster.local".into(),
            role: Role::Sidecar,
            gateway_selector: BTreeMap::new(),
            workload_labels: BTreeMap::new(),
            listen_address: IpAddr::from([0, 0, 0, 0]),
            bind_ports: HashMap::new(),
            params: Vec::new(),
            mesh_config: None,
            credentials_dir: None,
            mounts: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resource shapes (Istio's field names; unknown fields are errors).

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Full<S> {
    #[serde(rename = "apiVersion")]
    _api_version: serde_json::Value,
    #[serde(rename = "kind")]
    _kind: serde_json::Value,
    #[serde(default, rename = "metadata")]
    _metadata: serde_json::Value,
    spec: S,
    #[serde(default, rename = "status")]
    _status: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub location: Option<LocationSpec>,
    #[serde(default)]
    pub resolution: Option<SeResolution>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelectorSpec>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LocationSpec {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SeResolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelectorSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelectorSpec {
    fn labels(&self) -> &BTreeMap<String, String> {
        if self.match_labels.is_empty() {
            &self.labels
        } else {
            &self.match_labels
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelectorSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRouteSpec>,
    #[serde(default)]
    pub tls: Vec<TlsRouteSpec>,
    #[serde(default)]
    pub tcp: Vec<TcpRouteSpec>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchSpec>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestinationSpec>,
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    #[serde(default)]
    pub direct_response: Option<DirectResponseSpec>,
    #[serde(default)]
    pub delegate: Option<Any>,
    #[serde(default)]
    pub rewrite: Option<RewriteSpec>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub retries: Option<Any>,
    #[serde(default)]
    pub fault: Option<Any>,
    #[serde(default)]
    pub mirror: Option<Any>,
    #[serde(default)]
    pub mirrors: Option<Any>,
    #[serde(default)]
    pub mirror_percentage: Option<Any>,
    #[serde(default)]
    pub mirror_percent: Option<Any>,
    #[serde(default)]
    pub cors_policy: Option<Any>,
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatchSpec>,
    #[serde(default)]
    pub scheme: Option<StringMatchSpec>,
    #[serde(default)]
    pub method: Option<StringMatchSpec>,
    #[serde(default)]
    pub authority: Option<StringMatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestinationSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelectorSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectSpec {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    pub status: u32,
    #[serde(default)]
    pub body: Option<BodySpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RewriteSpec {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<Any>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    #[serde(default)]
    pub request: Option<HeaderOpsSpec>,
    #[serde(default)]
    pub response: Option<HeaderOpsSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteSpec {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchSpec>,
    #[serde(default)]
    pub route: Vec<RouteDestinationSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchSpec {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRouteSpec {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchSpec>,
    #[serde(default)]
    pub route: Vec<RouteDestinationSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatchSpec {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestinationSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub weight: Option<i32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub port: ServerPortSpec,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTlsSpec>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerPortSpec {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSpec {
    #[serde(default)]
    pub https_redirect: Option<bool>,
    #[serde(default)]
    pub mode: Option<ServerTlsMode>,
    #[serde(default)]
    pub server_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[serde(default)]
    pub ca_cert_credential_name: Option<String>,
    #[serde(default)]
    pub tls_certificates: Option<Any>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

// ---------------------------------------------------------------------------------------------
// Collected objects.

/// An Istio object with where it came from.
#[derive(Debug)]
pub struct Obj<S> {
    pub name: String,
    pub namespace: String,
    pub src: ObjSource,
    pub spec: S,
}

impl<S> Obj<S> {
    fn origin(&self) -> &Origin {
        &self.src.origin
    }

    /// A field path under `spec`.
    fn path(&self, rest: &str) -> String {
        if rest.is_empty() {
            self.src.path("spec")
        } else {
            self.src.path(&format!("spec.{rest}"))
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the Kubernetes documents held, before resolution.
#[derive(Debug, Default)]
pub struct Store {
    service_entries: Vec<Obj<ServiceEntrySpec>>,
    destination_rules: Vec<Obj<DestinationRuleSpec>>,
    virtual_services: Vec<Obj<VirtualServiceSpec>>,
    gateways: Vec<Obj<GatewaySpec>>,
    /// (namespace or None, name) -> secret.
    secrets: Vec<(Option<String>, String, SecretData)>,
    pub mesh: Option<(MeshConfigSpec, Origin)>,
}

impl Store {
    pub fn add_secret(&mut self, namespace: Option<String>, name: String, data: SecretData) {
        self.secrets.push((namespace, name, data));
    }
}

/// Adds one Istio object to the store.
pub fn add_object(
    kind: &str,
    input: Input<'_>,
    meta: Meta,
    src: &ObjSource,
    model: &mut Model,
    problems: &mut Problems,
) {
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.error(
            &src.origin,
            src.path("metadata.name"),
            format!("the {kind} has no name"),
            None,
        );
        return;
    };
    // The namespace is filled in at resolution (objects without one get --namespace).
    let namespace = meta.namespace.clone().unwrap_or_default();
    let store = model.istio.get_or_insert_with(Store::default);
    macro_rules! add {
        ($ty:ty, $list:ident) => {
            if let Some(full) = decode::<Full<$ty>>(input, src, problems) {
                store.$list.push(Obj {
                    name,
                    namespace,
                    src: src.clone(),
                    spec: full.spec,
                });
            }
        };
    }
    match kind {
        "ServiceEntry" => add!(ServiceEntrySpec, service_entries),
        "DestinationRule" => add!(DestinationRuleSpec, destination_rules),
        "VirtualService" => add!(VirtualServiceSpec, virtual_services),
        "Gateway" => add!(GatewaySpec, gateways),
        _ => {}
    }
}

/// `credentialName` lookup: Secret manifests given with `--config`, then mounted Secret
/// directories under `--credentials-dir`.
#[derive(Debug, Default)]
pub struct Credentials {
    secrets: HashMap<(String, String), SecretData>,
    dir: Option<PathBuf>,
}

/// A Secret's TLS material.
#[derive(Clone, Debug, Default)]
pub struct Credential {
    pub cert: Option<PemSource>,
    pub key: Option<PemSource>,
    pub ca: Option<PemSource>,
}

impl Credentials {
    pub fn lookup(&self, namespace: &str, name: &str) -> Result<Credential, String> {
        let pick = |keys: &HashMap<String, Vec<u8>>,
                    ns: &str,
                    sname: &str,
                    names: &[&str]|
         -> Option<PemSource> {
            names.iter().find_map(|k| {
                keys.get(*k).map(|v| PemSource::Inline {
                    label: format!("secret {ns}/{sname} key {k}"),
                    pem: Arc::from(v.as_slice()),
                })
            })
        };
        if let Some(s) = self.secrets.get(&(namespace.to_string(), name.to_string())) {
            let mut c = Credential {
                cert: pick(&s.keys, namespace, name, &["tls.crt", "cert"]),
                key: pick(&s.keys, namespace, name, &["tls.key", "key"]),
                ca: pick(&s.keys, namespace, name, &["ca.crt", "cacert"]),
            };
            let ca_name = format!("{name}-cacert");
            if c.ca.is_none()
                && let Some(ca) = self.secrets.get(&(namespace.to_string(), ca_name.clone()))
            {
                c.ca = pick(&ca.keys, namespace, &ca_name, &["ca.crt", "cacert"]);
            }
            if c.cert.is_none() && c.key.is_none() && c.ca.is_none() {
                return Err(format!(
                    "secret {namespace}/{name} ({}) has none of tls.crt, tls.key, ca.crt (or cert, key, cacert)",
                    s.origin
                ));
            }
            return Ok(c);
        }
        if let Some(dir) = &self.dir {
            let d = dir.join(name);
            if d.is_dir() {
                let file = |names: &[&str]| -> Option<PemSource> {
                    names
                        .iter()
                        .map(|n| d.join(n))
                        .find(|p| p.is_file())
                        .map(PemSource::File)
                };
                let c = Credential {
                    cert: file(&["tls.crt", "cert"]),
                    key: file(&["tls.key", "key"]),
                    ca: file(&["ca.crt", "cacert"]),
                };
                if c.cert.is_none() && c.key.is_none() && c.ca.is_none() {
                    return Err(format!(
                        "{} holds none of tls.crt, tls.key, ca.crt",
                        d.display()
                    ));
                }
                return Ok(c);
            }
            return Err(format!(
                "secret {namespace}/{name} was not given with --config, and {} does not exist",
                d.display()
            ));
        }
        Err(format!(
            "secret {namespace}/{name} was not given with --config, and no --credentials-dir is set"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Resolved routing, consumed by `config::build`.

type GwKey = String;

const MESH: &str = "mesh";

#[derive(Debug, Clone)]
struct DestKey {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
    weight: u32,
}

#[derive(Debug, Clone)]
enum ActionSpec {
    Forward(Vec<DestKey>),
    Direct { status: u16, body: Option<String> },
    Redirect(Redirect),
}

#[derive(Debug, Clone)]
struct MatchSpec {
    m: RouteMatch,
    port: Option<u16>,
    gateways: Option<Vec<GwKey>>,
    name: Option<String>,
}

#[derive(Debug, Clone)]
struct RouteSpec {
    name: Option<String>,
    matches: Vec<MatchSpec>,
    action: ActionSpec,
    timeout: Option<std::time::Duration>,
    rewrite: Option<Rewrite>,
    request_headers: HeaderOps,
    response_headers: HeaderOps,
    origin: Origin,
    path: String,
}

#[derive(Debug, Clone)]
struct VsRoutes {
    id: String,
    hosts: Vec<String>,
    gateways: Vec<GwKey>,
    routes: Vec<RouteSpec>,
    /// `tcp` and `tls` routes, in order.
    l4: Vec<L4RouteSpec>,
}

/// A VirtualService `tcp` or `tls` route.
#[derive(Debug, Clone)]
struct L4RouteSpec {
    tls: bool,
    /// OR of the matches; empty matches everything.
    matches: Vec<L4Match>,
    dests: Vec<DestKey>,
    origin: Origin,
    path: String,
}

#[derive(Debug, Clone)]
struct L4Match {
    port: Option<u16>,
    gateways: Option<Vec<GwKey>>,
    /// `tls` routes: the SNI names (`*.example.com` allowed).
    sni_hosts: Vec<String>,
}

/// The fields `TCPRoute` and `TLSRoute` matches share.
struct L4MatchView<'a> {
    port: Option<u32>,
    gateways: &'a [String],
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: Option<&'a str>,
}

impl<'a> From<&'a L4MatchSpec> for L4MatchView<'a> {
    fn from(m: &'a L4MatchSpec) -> Self {
        L4MatchView {
            port: m.port,
            gateways: &m.gateways,
            sni_hosts: &[],
            destination_subnets: &m.destination_subnets,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

impl<'a> From<&'a TlsMatchSpec> for L4MatchView<'a> {
    fn from(m: &'a TlsMatchSpec) -> Self {
        L4MatchView {
            port: m.port,
            gateways: &m.gateways,
            sni_hosts: &m.sni_hosts,
            destination_subnets: &m.destination_subnets,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

/// What a gateway port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GatewayKind {
    /// HTTP (or HTTPS terminated with `tls`).
    Http,
    /// Opaque TCP (`protocol: TCP`, VirtualService `tcp` routes).
    Tcp,
    /// TLS passthrough (`protocol: TLS` with `tls.mode: PASSTHROUGH`, VirtualService `tls`
    /// routes by SNI).
    TlsPassthrough,
}

#[derive(Debug)]
struct GatewayListener {
    name: String,
    address: SocketAddr,
    port: u16,
    kind: GatewayKind,
    tls: Option<Arc<ServerTlsPolicy>>,
    /// (gateway key, gateway namespace, server hosts).
    servers: Vec<(GwKey, String, Vec<String>)>,
}

/// VirtualService and Gateway routing, resolved against the registry.
#[derive(Debug, Default)]
pub struct Routing {
    role: Role,
    virtual_services: Vec<VsRoutes>,
    gateway_listeners: Vec<GatewayListener>,
    /// (host, port, subset) that routes name.
    subsets: Vec<(String, u16, String)>,
    /// Every known service host -> its ports.
    service_ports: BTreeMap<String, Vec<(u16, Protocol)>>,
}

impl Routing {
    pub fn is_gateway(&self) -> bool {
        self.role == Role::Gateway
    }

    /// The subset clusters routes refer to.
    pub fn subset_refs(&self) -> Vec<(String, u16, String)> {
        self.subsets.clone()
    }

    /// Virtual hosts for the sidecar's outbound listener: hosts with a VirtualService bound to
    /// `mesh` get its routes; the rest keep their default routes (added afterwards).
    pub fn sidecar_routes(
        &self,
        table: &mut RouteTable,
        clusters: &HashMap<String, ClusterId>,
        only_port: Option<u16>,
        problems: &mut Problems,
    ) {
        let ctx = [MESH.to_string()];
        for (host, ports) in &self.service_ports {
            let Some(vs) = self.virtual_services.iter().find(|v| {
                v.gateways.iter().any(|g| g == MESH) && v.hosts.iter().any(|h| h == host)
            }) else {
                continue;
            };
            for (port, proto) in ports {
                if !proto.is_http() || only_port.is_some_and(|p| p != *port) {
                    continue;
                }
                let routes = self.build_routes(vs, &ctx, *port, clusters, problems);
                if !routes.is_empty() {
                    table.vhosts_mut(*port).insert(VirtualHost {
                        name: format!("{host}:{port}"),
                        domain: host.clone(),
                        routes,
                    });
                }
            }
        }
    }

    /// One listener per Gateway server port (gateway role).
    pub fn gateway_listeners(
        &self,
        listeners: &mut Vec<Listener>,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) {
        for gl in &self.gateway_listeners {
            let mut table = RouteTable::new(PortSource::Fixed(gl.port), Fallback::NotFound);
            if gl.kind != GatewayKind::Http {
                if let Some(l4) = self.gateway_l4(gl, clusters, problems) {
                    listeners.push(Listener {
                        name: gl.name.clone(),
                        address: gl.address,
                        routes: Arc::new(table),
                        use_remote_address: true,
                        tls: None,
                        l4: Some(Arc::new(l4)),
                    });
                }
                continue;
            }
            for (gw_key, gw_ns, server_hosts) in &gl.servers {
                let ctx = [gw_key.clone()];
                for vs in &self.virtual_services {
                    let bound = vs.gateways.iter().any(|g| g == gw_key)
                        || vs.routes.iter().any(|r| {
                            r.matches
                                .iter()
                                .any(|m| m.gateways.as_ref().is_some_and(|g| g.contains(gw_key)))
                        });
                    if !bound {
                        continue;
                    }
                    let vs_ns = vs.id.split('/').next().unwrap_or("");
                    for host in &vs.hosts {
                        if !server_hosts
                            .iter()
                            .any(|sh| server_host_matches(sh, host, vs_ns, gw_ns))
                        {
                            continue;
                        }
                        let routes = self.build_routes(vs, &ctx, gl.port, clusters, problems);
                        if routes.is_empty() {
                            continue;
                        }
                        let vhosts = table.vhosts_mut(gl.port);
                        match vhosts.get_mut(host) {
                            // Several VirtualServices for one host on a gateway are merged, in
                            // load order (Istio merges them too).
                            Some(existing) => existing.routes.extend(routes),
                            None => {
                                vhosts.insert(VirtualHost {
                                    name: format!("{host}:{}", gl.port),
                                    domain: host.clone(),
                                    routes,
                                });
                            }
                        }
                    }
                }
            }
            if table.ports.is_empty() {
                problems.warn(
                    &Origin::file(gl.name.clone()),
                    "",
                    format!(
                        "no VirtualService routes traffic on gateway port {}: every request will get 404",
                        gl.port
                    ),
                    Some("bind a VirtualService to the Gateway (gateways: [<name>]) with a route for this port".into()),
                );
            }
            listeners.push(Listener {
                name: gl.name.clone(),
                address: gl.address,
                routes: Arc::new(table),
                use_remote_address: true,
                tls: gl.tls.clone(),
                l4: None,
            });
        }
    }

    /// The clusters of a route's destinations (a destination without a port takes the host's
    /// only port, else `port`); `None` (with errors) when none is declared.
    fn weighted(
        &self,
        dests: &[DestKey],
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        origin: &Origin,
        path: &str,
        problems: &mut Problems,
    ) -> Option<WeightedClusters> {
        let mut wc = Vec::new();
        for d in dests {
            let dport = match d.port {
                Some(p) => p,
                None => match self.service_ports.get(&d.host).map(Vec::as_slice) {
                    Some([(only, _)]) => *only,
                    _ => port,
                },
            };
            let name = format!(
                "outbound|{dport}|{}|{}",
                d.subset.as_deref().unwrap_or(""),
                d.host
            );
            match clusters.get(&name) {
                Some(id) => wc.push(WeightedCluster {
                    cluster: *id,
                    weight: d.weight,
                }),
                None => {
                    let ports = self
                        .service_ports
                        .get(&d.host)
                        .map(|p| {
                            p.iter()
                                .map(|(n, _)| n.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    problems.error(
                        origin,
                        format!("{path}.route"),
                        format!(
                            "the route on port {port} goes to {}:{dport}, which is not a declared port of {} (ports: {ports})",
                            d.host, d.host
                        ),
                        Some("set destination.port.number to one of the host's ports".into()),
                    );
                }
            }
        }
        (!wc.is_empty()).then(|| WeightedClusters::new(wc))
    }

    /// The VirtualService `tcp` route (bound to `mesh`) for a sidecar TCP listener of `host`
    /// on `port`: the first route whose match applies.
    pub fn sidecar_tcp(
        &self,
        host: &str,
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Option<(WeightedClusters, Option<Arc<str>>)> {
        let vs = self
            .virtual_services
            .iter()
            .find(|v| v.gateways.iter().any(|g| g == MESH) && v.hosts.iter().any(|h| h == host))?;
        let ctx = [MESH.to_string()];
        let r = vs
            .l4
            .iter()
            .filter(|r| !r.tls)
            .find(|r| l4_applies(r, &vs.gateways, &ctx, port))?;
        let w = self.weighted(&r.dests, port, clusters, &r.origin, &r.path, problems)?;
        Some((w, None))
    }

    /// The L4 routing of a gateway TCP or TLS-passthrough listener.
    fn gateway_l4(
        &self,
        gl: &GatewayListener,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Option<L4Routes> {
        let tls = gl.kind == GatewayKind::TlsPassthrough;
        let mut sni_hosts = VirtualHosts::default();
        for (gw_key, gw_ns, server_hosts) in &gl.servers {
            let ctx = [gw_key.clone()];
            for vs in &self.virtual_services {
                let vs_ns = vs.id.split('/').next().unwrap_or("");
                if !vs.hosts.iter().any(|h| {
                    server_hosts
                        .iter()
                        .any(|sh| server_host_matches(sh, h, vs_ns, gw_ns))
                }) {
                    continue;
                }
                for r in vs.l4.iter().filter(|r| r.tls == tls) {
                    if !tls {
                        if l4_applies(r, &vs.gateways, &ctx, gl.port) {
                            let w = self.weighted(
                                &r.dests, gl.port, clusters, &r.origin, &r.path, problems,
                            )?;
                            return Some(L4Routes::Tcp {
                                clusters: w,
                                route_name: None,
                            });
                        }
                        continue;
                    }
                    // TLS: each SNI name of each applying match gets the route (first wins).
                    let names: Vec<&String> = r
                        .matches
                        .iter()
                        .filter(|m| {
                            m.port.is_none_or(|p| p == gl.port)
                                && m.gateways
                                    .as_deref()
                                    .unwrap_or(&vs.gateways)
                                    .iter()
                                    .any(|g| ctx.contains(g))
                        })
                        .flat_map(|m| m.sni_hosts.iter())
                        .collect();
                    if names.is_empty() {
                        continue;
                    }
                    let Some(w) =
                        self.weighted(&r.dests, gl.port, clusters, &r.origin, &r.path, problems)
                    else {
                        continue;
                    };
                    for name in names {
                        if sni_hosts.get_mut(name).is_some() {
                            continue;
                        }
                        sni_hosts.insert(VirtualHost {
                            name: format!("{name}:{}", gl.port),
                            domain: name.clone(),
                            routes: vec![HttpRoute::forward(
                                None,
                                WeightedClusters::new(w.clusters.clone()),
                                None,
                            )],
                        });
                    }
                }
            }
        }
        if tls {
            if sni_hosts.hosts.is_empty() {
                problems.warn(
                    &Origin::file(gl.name.clone()),
                    "",
                    format!("no VirtualService tls route (sniHosts) serves gateway port {}: every connection will be refused", gl.port),
                    Some("bind a VirtualService with tls: [{match: [{port, sniHosts}], route: [...]}] to the Gateway".into()),
                );
            }
            return Some(L4Routes::Sni {
                port: gl.port,
                hosts: sni_hosts,
                fallback: L4Fallback::Refuse,
            });
        }
        problems.warn(
            &Origin::file(gl.name.clone()),
            "",
            format!("no VirtualService tcp route serves gateway port {}: every connection will be refused", gl.port),
            Some("bind a VirtualService with tcp: [{match: [{port}], route: [...]}] to the Gateway".into()),
        );
        None
    }

    /// The routes of `vs` that apply on `port` for the gateways in `ctx`, in order; one route
    /// per kept match (so each keeps its name).
    fn build_routes(
        &self,
        vs: &VsRoutes,
        ctx: &[GwKey],
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Vec<HttpRoute> {
        let mut out = Vec::new();
        let bound = |gws: &[GwKey]| gws.iter().any(|g| ctx.contains(g));
        for r in &vs.routes {
            let kept: Vec<Option<&MatchSpec>> = if r.matches.is_empty() {
                if !bound(&vs.gateways) {
                    continue;
                }
                vec![None]
            } else {
                r.matches
                    .iter()
                    .filter(|m| {
                        bound(m.gateways.as_deref().unwrap_or(&vs.gateways))
                            && m.port.is_none_or(|p| p == port)
                    })
                    .map(Some)
                    .collect()
            };
            if kept.is_empty() {
                continue;
            }
            let action = match &r.action {
                ActionSpec::Direct { status, body } => RouteAction::Direct {
                    status: *status,
                    body: body.clone(),
                },
                ActionSpec::Redirect(rd) => RouteAction::Redirect(rd.clone()),
                ActionSpec::Forward(dests) => {
                    match self.weighted(dests, port, clusters, &r.origin, &r.path, problems) {
                        Some(w) => RouteAction::Forward(w),
                        None => continue,
                    }
                }
            };
            // The action is shared by all kept matches of the route; build it once per match.
            let mut first = Some(action);
            for m in kept {
                let action = match first.take() {
                    Some(a) => a,
                    None => match &out.last() {
                        Some(HttpRoute { action, .. }) => clone_action(action),
                        None => continue,
                    },
                };
                let name = match (&r.name, m.and_then(|m| m.name.as_ref())) {
                    (Some(rn), Some(mn)) => Some(format!("{rn}.{mn}")),
                    (Some(rn), None) => Some(rn.clone()),
                    (None, _) => None,
                };
                out.push(HttpRoute {
                    name: name.map(|n| Arc::from(n.as_str())),
                    matches: m.map(|m| vec![m.m.clone()]).unwrap_or_default(),
                    action,
                    timeout: r.timeout,
                    rewrite: r.rewrite.clone(),
                    request_headers: r.request_headers.clone(),
                    response_headers: r.response_headers.clone(),
                });
            }
        }
        out
    }
}

fn clone_action(a: &RouteAction) -> RouteAction {
    match a {
        RouteAction::Forward(w) => RouteAction::Forward(WeightedClusters::new(w.clusters.clone())),
        RouteAction::Direct { status, body } => RouteAction::Direct {
            status: *status,
            body: body.clone(),
        },
        RouteAction::Redirect(r) => RouteAction::Redirect(r.clone()),
    }
}

/// Whether an L4 route applies on `port` for the gateways in `ctx`.
fn l4_applies(r: &L4RouteSpec, vs_gateways: &[GwKey], ctx: &[GwKey], port: u16) -> bool {
    let bound = |gws: &[GwKey]| gws.iter().any(|g| ctx.contains(g));
    if r.matches.is_empty() {
        return bound(vs_gateways);
    }
    r.matches.iter().any(|m| {
        bound(m.gateways.as_deref().unwrap_or(vs_gateways)) && m.port.is_none_or(|p| p == port)
    })
}

/// Gateway server host `[ns/]dnsName` against a VirtualService host in namespace `vs_ns`.
fn server_host_matches(server_host: &str, vs_host: &str, vs_ns: &str, gw_ns: &str) -> bool {
    let (ns, name) = match server_host.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("*", server_host),
    };
    let ns_ok = match ns {
        "*" => true,
        "." => vs_ns == gw_ns,
        other => other == vs_ns,
    };
    ns_ok && host_matches(name, vs_host)
}

/// `pattern` (exact, `*.suffix` or `*`) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution.

fn visible(export_to: &[String], obj_ns: &str, proxy_ns: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => obj_ns == proxy_ns,
            "~" => false,
            ns => ns == proxy_ns,
        })
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

struct Names<'a> {
    domain: &'a str,
}

impl Names<'_> {
    /// Istio's short-name expansion: `svc` in namespace `ns` is `svc.ns.svc.cluster.local`.
    fn fqdn(&self, host: &str, ns: &str) -> String {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h.contains('.') || h.starts_with('*') || h.parse::<IpAddr>().is_ok() {
            h
        } else {
            format!("{h}.{ns}.svc.{}", self.domain)
        }
    }

    fn is_cluster_local(&self, host: &str) -> bool {
        host.ends_with(&format!(".svc.{}", self.domain))
    }
}

fn string_match(
    spec: &StringMatchSpec,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> Option<StringMatch> {
    let n = usize::from(spec.exact.is_some())
        + usize::from(spec.prefix.is_some())
        + usize::from(spec.regex.is_some());
    if n > 1 {
        problems.error(
            origin,
            path.to_string(),
            "set one of exact, prefix or regex",
            None,
        );
        return None;
    }
    if let Some(e) = &spec.exact {
        return Some(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &spec.prefix {
        return Some(StringMatch::Prefix(p.clone()));
    }
    if let Some(r) = &spec.regex {
        return match regex::Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(StringMatch::Regex(re)),
            Err(e) => {
                problems.error(
                    origin,
                    format!("{path}.regex"),
                    format!("invalid regex \"{r}\": {e}"),
                    None,
                );
                None
            }
        };
    }
    None
}

fn header_ops(
    spec: Option<&HeaderOpsSpec>,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let Some(spec) = spec else { return ops };
    let mut pair =
        |k: &str, v: &str, what: &str| -> Option<(http::HeaderName, http::HeaderValue)> {
            match (
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    problems.error(
                        origin,
                        format!("{path}.{what}.{k}"),
                        format!("\"{k}: {v}\" is not a valid header"),
                        None,
                    );
                    None
                }
            }
        };
    ops.set = spec
        .set
        .iter()
        .filter_map(|(k, v)| pair(k, v, "set"))
        .collect();
    ops.add = spec
        .add
        .iter()
        .filter_map(|(k, v)| pair(k, v, "add"))
        .collect();
    ops.remove = spec
        .remove
        .iter()
        .filter_map(|k| http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    ops
}

/// Resolves the collected Istio objects into services (in `model.services`) and routing.
pub fn resolve(model: &mut Model, opts: &IstioOptions, problems: &mut Problems) {
    let Some(mut store) = model.istio.take() else {
        return;
    };
    let proxy_ns = opts.namespace.as_str();
    let names = Names {
        domain: &opts.cluster_domain,
    };
    for o in store.service_entries.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.destination_rules.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.virtual_services.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.gateways.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    let credentials = Arc::new(Credentials {
        secrets: store
            .secrets
            .drain(..)
            .map(|(ns, name, data)| ((ns.unwrap_or_else(|| proxy_ns.to_string()), name), data))
            .collect(),
        dir: opts.credentials_dir.clone(),
    });

    // MeshConfig.
    if let Some((mesh, origin)) = store.mesh.take() {
        apply_mesh(mesh, &origin, model, problems);
    }

    // ServiceEntries visible to this proxy.
    let mut services: Vec<ServiceDecl> = Vec::new();
    for se in &store.service_entries {
        if !visible(&se.spec.export_to, &se.namespace, proxy_ns) {
            tracing::debug!(
                "{}: ServiceEntry {} is not exported to namespace {proxy_ns}",
                se.origin(),
                se.id()
            );
            continue;
        }
        if se.spec.workload_selector.is_some() {
            problems.error(
                se.origin(),
                se.path("workloadSelector"),
                "workloadSelector selects mesh workloads as endpoints, which egret cannot see",
                Some("list the endpoints (endpoints[].address), or use resolution: DNS".into()),
            );
            continue;
        }
        if se.spec.hosts.is_empty() {
            problems.error(se.origin(), se.path("hosts"), "no hosts", None);
        }
        let ports = super::native::lower_ports(&se.spec.ports, &se.path(""), se.origin(), problems);
        let resolution = match se.spec.resolution.unwrap_or(SeResolution::None) {
            SeResolution::None | SeResolution::DynamicDns => Resolution::None,
            SeResolution::Static => Resolution::Static,
            SeResolution::Dns => Resolution::Dns,
            SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        };
        if resolution == Resolution::Static && se.spec.endpoints.is_empty() {
            problems.error(
                se.origin(),
                se.path("endpoints"),
                "resolution STATIC needs endpoints",
                Some("add endpoints with IP addresses, or use resolution: DNS".into()),
            );
        }
        if resolution == Resolution::None && !se.spec.endpoints.is_empty() {
            problems.error(
                se.origin(),
                se.path("endpoints"),
                "resolution NONE cannot have endpoints (Istio rejects it too)",
                Some("use resolution: STATIC or DNS".into()),
            );
        }
        for (i, h) in se.spec.hosts.iter().enumerate() {
            let host = h.trim_end_matches('.').to_ascii_lowercase();
            if let Err(e) = super::check_host(&host, false) {
                problems.error(se.origin(), se.path(&format!("hosts[{i}]")), e, None);
                continue;
            }
            if host.starts_with('*')
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && se.spec.endpoints.is_empty()
            {
                problems.error(
                    se.origin(),
                    se.path(&format!("hosts[{i}]")),
                    format!("wildcard host {host} with resolution DNS and no endpoints: there is no name to resolve"),
                    Some("use resolution: NONE (egret resolves the requested host), or list endpoints".into()),
                );
                continue;
            }
            services.push(ServiceDecl {
                host,
                ports: ports.clone(),
                resolution,
                endpoints: se.spec.endpoints.clone(),
                origin: se.origin().clone(),
                path: se.path(""),
                policy: None,
                timeout: None,
                namespace: Some(se.namespace.clone()),
                subject_alt_names: se.spec.subject_alt_names.clone(),
            });
        }
    }

    // VirtualServices (all are parsed and validated; visibility decides which ones route).
    let gateway_keys: Vec<(String, &Obj<GatewaySpec>)> = store
        .gateways
        .iter()
        .map(|g| (format!("{}/{}", g.namespace, g.name), g))
        .collect();
    let mut vss: Vec<VsRoutes> = Vec::new();
    let mut k8s_refs: BTreeMap<String, Vec<(u16, Protocol, Origin)>> = BTreeMap::new();
    let mut dest_refs: Vec<(DestKey, Origin, String)> = Vec::new();
    for vs in &store.virtual_services {
        let gw_ref = |g: &str, problems: &mut Problems, path: String| -> Option<GwKey> {
            if g == MESH {
                return Some(MESH.to_string());
            }
            let key = if g.contains('/') {
                g.to_string()
            } else {
                format!("{}/{g}", vs.namespace)
            };
            if gateway_keys.iter().any(|(k, _)| *k == key) {
                Some(key)
            } else {
                let known: Vec<&str> = gateway_keys.iter().map(|(k, _)| k.as_str()).collect();
                let hint = suggest(&key, known.iter().copied())
                    .map(|s| format!("did you mean \"{s}\"?"))
                    .or_else(|| Some(format!("declare a Gateway named {key}, or use \"mesh\" for sidecars (Gateways known: {})", if known.is_empty() { "none".into() } else { known.join(", ") })));
                problems.error(
                    vs.origin(),
                    path,
                    format!(
                        "the VirtualService {} names Gateway \"{g}\", which does not exist",
                        vs.id()
                    ),
                    hint,
                );
                None
            }
        };
        // What HTTP, TCP and TLS route matches share: sourceLabels/sourceNamespace (does the
        // match apply to this proxy at all), port and gateways. `None`: it does not apply here,
        // or it is invalid (reported).
        let scope = |labels: &BTreeMap<String, String>,
                     ns: Option<&str>,
                     port: Option<u32>,
                     gateways: &[String],
                     mpath: &str,
                     problems: &mut Problems|
         -> Option<(Option<u16>, Option<Vec<GwKey>>)> {
            if (!labels.is_empty() || ns.is_some())
                && !(selects(labels, &opts.workload_labels) && ns.is_none_or(|n| n == proxy_ns))
            {
                return None;
            }
            let port = match port {
                None => None,
                Some(p) => match u16::try_from(p).ok().filter(|p| *p > 0) {
                    Some(p) => Some(p),
                    None => {
                        problems.error(
                            vs.origin(),
                            format!("{mpath}.port"),
                            format!("{p} is not a port number"),
                            None,
                        );
                        return None;
                    }
                },
            };
            let gws = (!gateways.is_empty()).then(|| {
                gateways
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| gw_ref(g, problems, format!("{mpath}.gateways[{i}]")))
                    .collect()
            });
            Some((port, gws))
        };
        let gateways: Vec<GwKey> = if vs.spec.gateways.is_empty() {
            vec![MESH.to_string()]
        } else {
            vs.spec
                .gateways
                .iter()
                .enumerate()
                .filter_map(|(i, g)| gw_ref(g, problems, vs.path(&format!("gateways[{i}]"))))
                .collect()
        };
        if vs.spec.hosts.is_empty() {
            problems.error(
                vs.origin(),
                vs.path("hosts"),
                "no hosts",
                Some("list the hosts this VirtualService routes".into()),
            );
        }
        let hosts: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .map(|h| names.fqdn(h, &vs.namespace))
            .collect();
        let mut routes = Vec::new();
        for (ri, r) in vs.spec.http.iter().enumerate() {
            let rpath = vs.path(&format!("http[{ri}]"));
            for (field, set, fatal) in [
                ("delegate", r.delegate.is_some(), true),
                ("fault", r.fault.is_some(), true),
                ("retries", r.retries.is_some(), false),
                (
                    "mirror",
                    r.mirror.is_some()
                        || r.mirrors.is_some()
                        || r.mirror_percentage.is_some()
                        || r.mirror_percent.is_some(),
                    false,
                ),
                ("corsPolicy", r.cors_policy.is_some(), false),
            ] {
                if !set {
                    continue;
                }
                if fatal {
                    problems.error(
                        vs.origin(),
                        format!("{rpath}.{field}"),
                        format!("{field} changes how requests are answered, and egret does not implement it"),
                        Some(format!("remove {field}; egret would not honour it")),
                    );
                } else {
                    let what = match field {
                        "retries" => {
                            "egret retries only connection failures, on the next address (up to 3)"
                        }
                        "mirror" => "egret does not mirror traffic",
                        _ => "egret does not apply CORS policies",
                    };
                    problems.warn(
                        vs.origin(),
                        format!("{rpath}.{field}"),
                        format!("{field} is ignored: {what}"),
                        None,
                    );
                }
            }
            let mut matches = Vec::new();
            for (mi, m) in r.matches.iter().enumerate() {
                let mpath = format!("{rpath}.match[{mi}]");
                let mut rm = RouteMatch {
                    name: m.name.clone(),
                    ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
                    ..RouteMatch::default()
                };
                rm.uri = m
                    .uri
                    .as_ref()
                    .and_then(|s| string_match(s, vs.origin(), &format!("{mpath}.uri"), problems));
                rm.method = m.method.as_ref().and_then(|s| {
                    string_match(s, vs.origin(), &format!("{mpath}.method"), problems)
                });
                rm.authority = m.authority.as_ref().and_then(|s| {
                    string_match(s, vs.origin(), &format!("{mpath}.authority"), problems)
                });
                rm.scheme = m.scheme.as_ref().and_then(|s| {
                    string_match(s, vs.origin(), &format!("{mpath}.scheme"), problems)
                });
                for (list, src, what) in [
                    (&mut rm.headers, &m.headers, "headers"),
                    (
                        &mut rm.without_headers,
                        &m.without_headers,
                        "withoutHeaders",
                    ),
                ] {
                    for (k, v) in src {
                        let Ok(n) = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        else {
                            problems.error(
                                vs.origin(),
                                format!("{mpath}.{what}.{k}"),
                                format!("\"{k}\" is not a header name"),
                                None,
                            );
                            continue;
                        };
                        list.push((
                            n,
                            string_match(v, vs.origin(), &format!("{mpath}.{what}.{k}"), problems),
                        ));
                    }
                }
                for (k, v) in &m.query_params {
                    if let Some(sm) = string_match(
                        v,
                        vs.origin(),
                        &format!("{mpath}.queryParams.{k}"),
                        problems,
                    ) {
                        rm.query_params.push((k.clone(), sm));
                    }
                }
                let Some((port, mgws)) = scope(
                    &m.source_labels,
                    m.source_namespace.as_deref(),
                    m.port,
                    &m.gateways,
                    &mpath,
                    problems,
                ) else {
                    continue;
                };
                matches.push(MatchSpec {
                    m: rm,
                    port,
                    gateways: mgws,
                    name: m.name.clone(),
                });
            }
            if !r.matches.is_empty() && matches.is_empty() {
                // Every match was for other workloads (sourceLabels): the route does not apply.
                continue;
            }
            let n_actions = usize::from(!r.route.is_empty())
                + usize::from(r.redirect.is_some())
                + usize::from(r.direct_response.is_some());
            if n_actions != 1 {
                problems.error(
                    vs.origin(),
                    rpath.clone(),
                    if n_actions == 0 {
                        "the route has no route, redirect or directResponse".to_string()
                    } else {
                        "route, redirect and directResponse are exclusive".to_string()
                    },
                    None,
                );
                continue;
            }
            let action = if let Some(d) = &r.direct_response {
                let Some(status) = u16::try_from(d.status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                else {
                    problems.error(
                        vs.origin(),
                        format!("{rpath}.directResponse.status"),
                        format!("{} is not an HTTP status", d.status),
                        None,
                    );
                    continue;
                };
                let body = d.body.as_ref().and_then(|b| {
                    b.string.clone().or_else(|| {
                        b.bytes.as_ref().and_then(|x| {
                            use base64::Engine as _;
                            base64::engine::general_purpose::STANDARD
                                .decode(x)
                                .ok()
                                .map(|v| String::from_utf8_lossy(&v).into_owned())
                        })
                    })
                });
                ActionSpec::Direct { status, body }
            } else if let Some(rd) = &r.redirect {
                if rd.derive_port.is_some() {
                    problems.warn(
                        vs.origin(),
                        format!("{rpath}.redirect.derivePort"),
                        "derivePort is ignored: the request's port is kept unless port is set",
                        None,
                    );
                }
                ActionSpec::Redirect(Redirect {
                    scheme: rd.scheme.clone(),
                    authority: rd.authority.clone(),
                    port: rd.port.and_then(|p| u16::try_from(p).ok()),
                    uri: rd.uri.clone(),
                    code: rd
                        .redirect_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(301),
                })
            } else {
                let mut dests = Vec::new();
                for (di, d) in r.route.iter().enumerate() {
                    let dpath = format!("{rpath}.route[{di}]");
                    if d.headers.is_some() {
                        problems.warn(
                            vs.origin(),
                            format!("{dpath}.headers"),
                            "per-destination headers are ignored; use the route's headers",
                            None,
                        );
                    }
                    let host = names.fqdn(&d.destination.host, &vs.namespace);
                    let port = match &d.destination.port {
                        None => None,
                        Some(p) => match u16::try_from(p.number).ok().filter(|p| *p > 0) {
                            Some(p) => Some(p),
                            None => {
                                problems.error(
                                    vs.origin(),
                                    format!("{dpath}.destination.port.number"),
                                    format!("{} is not a port number", p.number),
                                    None,
                                );
                                continue;
                            }
                        },
                    };
                    let weight = match d.weight {
                        Some(w) if w < 0 => {
                            problems.error(
                                vs.origin(),
                                format!("{dpath}.weight"),
                                "weights cannot be negative",
                                None,
                            );
                            continue;
                        }
                        Some(w) => w as u32,
                        None => 0,
                    };
                    let key = DestKey {
                        host: host.clone(),
                        port,
                        subset: d.destination.subset.clone(),
                        weight,
                    };
                    dest_refs.push((
                        key.clone(),
                        vs.origin().clone(),
                        format!("{dpath}.destination"),
                    ));
                    dests.push(key);
                }
                if dests.is_empty() {
                    continue;
                }
                ActionSpec::Forward(dests)
            };
            let rewrite = r.rewrite.as_ref().map(|rw| {
                if rw.uri_regex_rewrite.is_some() {
                    problems.error(
                        vs.origin(),
                        format!("{rpath}.rewrite.uriRegexRewrite"),
                        "uriRegexRewrite is not supported",
                        Some("use rewrite.uri with a prefix match".into()),
                    );
                }
                Rewrite {
                    uri: rw.uri.clone(),
                    authority: rw.authority.clone(),
                }
            });
            let hdrs = r.headers.clone().unwrap_or_default();
            routes.push(RouteSpec {
                name: r.name.clone(),
                matches,
                action,
                timeout: r.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
                rewrite,
                request_headers: header_ops(
                    hdrs.request.as_ref(),
                    vs.origin(),
                    &format!("{rpath}.headers.request"),
                    problems,
                ),
                response_headers: header_ops(
                    hdrs.response.as_ref(),
                    vs.origin(),
                    &format!("{rpath}.headers.response"),
                    problems,
                ),
                origin: vs.origin().clone(),
                path: rpath,
            });
        }
        // tcp and tls routes: served by TCP and TLS-passthrough listeners.
        let mut l4_routes: Vec<L4RouteSpec> = Vec::new();
        let l4 = vs
            .spec
            .tcp
            .iter()
            .map(|r| (false, &r.matches, &r.route))
            .map(|(t, m, r)| (t, m.iter().map(L4MatchView::from).collect::<Vec<_>>(), r))
            .chain(vs.spec.tls.iter().map(|r| {
                (
                    true,
                    r.matches.iter().map(L4MatchView::from).collect::<Vec<_>>(),
                    &r.route,
                )
            }));
        let (mut tcp_i, mut tls_i) = (0, 0);
        for (is_tls, matches, route) in l4 {
            let (kind, ri) = if is_tls {
                tls_i += 1;
                ("tls", tls_i - 1)
            } else {
                tcp_i += 1;
                ("tcp", tcp_i - 1)
            };
            let mut dests = Vec::new();
            for (di, d) in route.iter().enumerate() {
                let host = names.fqdn(&d.destination.host, &vs.namespace);
                let dpath = vs.path(&format!("{kind}[{ri}].route[{di}]"));
                if d.weight.is_some_and(|w| w < 0) {
                    problems.error(
                        vs.origin(),
                        format!("{dpath}.weight"),
                        "weights cannot be negative",
                        None,
                    );
                    continue;
                }
                let key = DestKey {
                    host,
                    port: d
                        .destination
                        .port
                        .as_ref()
                        .and_then(|p| u16::try_from(p.number).ok()),
                    subset: d.destination.subset.clone(),
                    weight: d.weight.unwrap_or(0).max(0) as u32,
                };
                dest_refs.push((
                    key.clone(),
                    vs.origin().clone(),
                    format!("{dpath}.destination"),
                ));
                dests.push(key);
            }
            let mut kept = Vec::new();
            for (mi, m) in matches.iter().enumerate() {
                let mpath = vs.path(&format!("{kind}[{ri}].match[{mi}]"));
                if is_tls && m.sni_hosts.is_empty() {
                    problems.error(
                        vs.origin(),
                        format!("{mpath}.sniHosts"),
                        "sniHosts is required in a tls route match",
                        Some(
                            "list the SNI names this route takes, e.g. sniHosts: [api.example.com]"
                                .into(),
                        ),
                    );
                    continue;
                }
                if !m.destination_subnets.is_empty() {
                    problems.error(
                        vs.origin(),
                        format!("{mpath}.destinationSubnets"),
                        "destinationSubnets needs transparent capture of the original destination, which egret does not have",
                        Some("remove destinationSubnets; egret routes a TCP listener by its port".into()),
                    );
                }
                let Some((port, gateways)) = scope(
                    m.source_labels,
                    m.source_namespace,
                    m.port,
                    m.gateways,
                    &mpath,
                    problems,
                ) else {
                    continue;
                };
                let sni_hosts = m
                    .sni_hosts
                    .iter()
                    .map(|h| names.fqdn(h, &vs.namespace))
                    .collect();
                kept.push(L4Match {
                    port,
                    gateways,
                    sni_hosts,
                });
            }
            if !matches.is_empty() && kept.is_empty() {
                continue;
            }
            if dests.is_empty() {
                problems.error(
                    vs.origin(),
                    vs.path(&format!("{kind}[{ri}].route")),
                    format!("a {kind} route needs at least one destination"),
                    None,
                );
                continue;
            }
            l4_routes.push(L4RouteSpec {
                tls: is_tls,
                matches: kept,
                dests,
                origin: vs.origin().clone(),
                path: vs.path(&format!("{kind}[{ri}]")),
            });
        }
        if visible(&vs.spec.export_to, &vs.namespace, proxy_ns) {
            vss.push(VsRoutes {
                id: vs.id(),
                hosts,
                gateways,
                routes,
                l4: l4_routes,
            });
        }
    }

    // Destinations: declared by a ServiceEntry, or Kubernetes services (name.ns.svc.domain),
    // which the cluster DNS resolves.
    for (d, origin, path) in &dest_refs {
        if services.iter().any(|s| s.host == d.host) {
            continue;
        }
        if names.is_cluster_local(&d.host) {
            match d.port {
                Some(p) => k8s_refs.entry(d.host.clone()).or_default().push((p, Protocol::Http, origin.clone())),
                None => problems.error(
                    origin,
                    format!("{path}.port"),
                    format!("{} is a Kubernetes service, and egret does not read Service objects, so the port is needed", d.host),
                    Some("set destination.port.number".into()),
                ),
            }
            continue;
        }
        let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
        let hint = suggest(&d.host, known.iter().copied())
            .map(|s| format!("did you mean \"{s}\"?"))
            .unwrap_or_else(|| {
                "declare the host in a ServiceEntry (hosts, ports, resolution)".into()
            });
        problems.error(
            origin,
            format!("{path}.host"),
            format!(
                "the route goes to {}, which no ServiceEntry declares",
                d.host
            ),
            Some(hint),
        );
    }
    for (host, refs) in k8s_refs {
        let mut ports: Vec<PortDecl> = Vec::new();
        for (p, proto, _) in &refs {
            if !ports.iter().any(|x| x.number == *p) {
                ports.push(PortDecl {
                    number: *p,
                    name: None,
                    protocol: *proto,
                    target_port: None,
                });
            }
        }
        tracing::debug!("{host}: a Kubernetes service, resolved through the cluster DNS");
        let origin = refs[0].2.clone();
        services.push(ServiceDecl {
            host: host.clone(),
            ports,
            resolution: Resolution::Dns,
            endpoints: Vec::new(),
            origin,
            path: "(Kubernetes service)".into(),
            policy: None,
            timeout: None,
            namespace: host.split('.').nth(1).map(str::to_string),
            subject_alt_names: Vec::new(),
        });
    }

    // Port and subset checks of the destinations.
    let mut subsets: Vec<(String, u16, String)> = Vec::new();
    // DestinationRules: attach to services, in Istio's lookup order.
    attach_destination_rules(&store, &mut services, &names, opts, &credentials, problems);
    for (d, origin, path) in &dest_refs {
        let Some(svc) = services.iter().find(|s| s.host == d.host) else {
            continue;
        };
        if let Some(p) = d.port
            && !svc.ports.iter().any(|x| x.number == p)
        {
            let declared: Vec<String> = svc.ports.iter().map(|x| x.number.to_string()).collect();
            let target_hint = svc
                .ports
                .iter()
                .find(|x| x.target_port == Some(p))
                .map(|x| {
                    format!(
                        "destination.port is the service port: use {} (whose targetPort is {p})",
                        x.number
                    )
                });
            problems.error(
                origin,
                format!("{path}.port.number"),
                format!(
                    "{} does not expose port {p} (declared: {})",
                    d.host,
                    declared.join(", ")
                ),
                target_hint.or_else(|| Some("use one of the declared ports".into())),
            );
            continue;
        }
        if let Some(s) = &d.subset {
            let defined = svc
                .policy
                .as_ref()
                .is_some_and(|p| p.subsets.iter().any(|x| &x.name == s));
            if !defined {
                let names: Vec<&str> = svc
                    .policy
                    .as_ref()
                    .map(|p| p.subsets.iter().map(|x| x.name.as_str()).collect())
                    .unwrap_or_default();
                problems.error(
                    origin,
                    format!("{path}.subset"),
                    format!(
                        "subset \"{s}\" of {} is not defined by a DestinationRule",
                        d.host
                    ),
                    Some(match suggest(s, names.iter().copied()) {
                        Some(x) => format!("did you mean \"{x}\"?"),
                        None => "add it to the DestinationRule's subsets".into(),
                    }),
                );
                continue;
            }
            let ports: Vec<u16> = match d.port {
                Some(p) => vec![p],
                None => svc.ports.iter().map(|p| p.number).collect(),
            };
            for p in ports {
                subsets.push((d.host.clone(), p, s.clone()));
            }
        }
    }

    // One VirtualService per host for the sidecar (Istio does not merge them on sidecars).
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for vs in &vss {
        if !vs.gateways.iter().any(|g| g == MESH) {
            continue;
        }
        for h in &vs.hosts {
            if let Some(prev) = seen.insert(h.as_str(), vs.id.as_str()) {
                let origin = vs
                    .routes
                    .first()
                    .map(|r| r.origin.clone())
                    .unwrap_or_default();
                problems.error(
                    &origin,
                    "spec.hosts",
                    format!("host {h} is routed by two VirtualServices bound to mesh: {prev} and {}", vs.id),
                    Some("Istio sidecars use only one of them; merge their http routes into one VirtualService".into()),
                );
            }
        }
    }
    // VirtualService hosts must be declared (sidecar routes are keyed by declared hosts).
    for vs in &vss {
        if !vs.gateways.iter().any(|g| g == MESH) {
            continue;
        }
        for h in &vs.hosts {
            if !services.iter().any(|s| &s.host == h) {
                let origin = vs
                    .routes
                    .first()
                    .map(|r| r.origin.clone())
                    .unwrap_or_default();
                let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
                problems.error(
                    &origin,
                    "spec.hosts",
                    format!("VirtualService {} routes host {h} for the mesh, but no ServiceEntry declares it", vs.id),
                    Some(match suggest(h, known.iter().copied()) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => "declare the host in a ServiceEntry".into(),
                    }),
                );
            }
        }
    }

    // Gateways (gateway role).
    let mut gateway_listeners = Vec::new();
    if opts.role == Role::Gateway {
        gateway_listeners = build_gateways(&store, opts, &credentials, problems);
    }

    let mut service_ports: BTreeMap<String, Vec<(u16, Protocol)>> = BTreeMap::new();
    for s in &services {
        let e = service_ports.entry(s.host.clone()).or_default();
        for p in &s.ports {
            if !e.iter().any(|(n, _)| *n == p.number) {
                e.push((p.number, p.protocol));
            }
        }
    }
    model.services.extend(services);
    model.routing = Some(Routing {
        role: opts.role,
        virtual_services: vss,
        gateway_listeners,
        subsets,
        service_ports,
    });
}

fn apply_mesh(mesh: MeshConfigSpec, origin: &Origin, model: &mut Model, problems: &mut Problems) {
    if let Some(o) = mesh.outbound_traffic_policy {
        if let Some((_, prev)) = &model.outbound_policy {
            problems.error(
                origin,
                "outboundTrafficPolicy",
                format!("the outbound traffic policy is also set in {prev}"),
                Some("set it in one place".into()),
            );
        } else {
            let p = match o.mode {
                super::k8s::MeshOutboundMode::RegistryOnly => OutboundPolicy::RegistryOnly,
                super::k8s::MeshOutboundMode::AllowAny => OutboundPolicy::AllowAny,
            };
            if o.egress_proxy.is_some() {
                problems.error(
                    origin,
                    "outboundTrafficPolicy.egressProxy",
                    "egressProxy is not supported",
                    Some("route through an egress gateway with a VirtualService instead".into()),
                );
            }
            model.outbound_policy = Some((p, origin.clone()));
        }
    }
    let log_given = mesh.access_log_file.is_some()
        || mesh.access_log_encoding.is_some()
        || mesh.access_log_format.is_some();
    if log_given {
        if let Some((_, prev)) = &model.access_log {
            problems.error(
                origin,
                "accessLogFile",
                format!("the access log is also configured in {prev}"),
                Some("configure it in one place".into()),
            );
        } else {
            let mut log = AccessLogConfig::default();
            if let Some(f) = &mesh.access_log_file {
                // Istio: an empty accessLogFile turns logging off.
                log.path = if f.is_empty() {
                    AccessLogPath::Off
                } else {
                    AccessLogConfig::parse_path(f)
                };
            }
            if let Some(e) = mesh.access_log_encoding {
                log.encoding = match e {
                    super::k8s::MeshEncodingSpec::Text => crate::access_log::Encoding::Text,
                    super::k8s::MeshEncodingSpec::Json => crate::access_log::Encoding::Json,
                };
            }
            log.format = mesh.access_log_format.filter(|f| !f.trim().is_empty());
            model.access_log = Some((log, origin.clone()));
        }
    }
    if let Some(d) = mesh.default_config.and_then(|c| c.drain_duration) {
        model.drain_duration = Some(d.0);
    }
}

/// Finds each service's DestinationRule (the proxy's namespace first, then the service's, then
/// any other that is exported), and reports rules that match nothing or collide.
fn attach_destination_rules(
    store: &Store,
    services: &mut [ServiceDecl],
    names: &Names<'_>,
    opts: &IstioOptions,
    credentials: &Arc<Credentials>,
    problems: &mut Problems,
) {
    let proxy_ns = opts.namespace.as_str();
    let labels = match opts.role {
        Role::Sidecar => &opts.workload_labels,
        Role::Gateway => &opts.gateway_selector,
    };
    let mut applicable: Vec<(&Obj<DestinationRuleSpec>, String)> = Vec::new();
    for dr in &store.destination_rules {
        let host = names.fqdn(&dr.spec.host, &dr.namespace);
        if let Some(ws) = &dr.spec.workload_selector
            && (dr.namespace != proxy_ns || !selects(ws.labels(), labels))
        {
            continue;
        }
        if !visible(&dr.spec.export_to, &dr.namespace, proxy_ns) {
            continue;
        }
        if !services
            .iter()
            .any(|s| host_matches(&host, &s.host) || s.host == host)
        {
            let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
            problems.error(
                dr.origin(),
                dr.path("host"),
                format!(
                    "DestinationRule {} is for {host}, which no ServiceEntry declares",
                    dr.id()
                ),
                Some(match suggest(&host, known.iter().copied()) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => "declare the host in a ServiceEntry, or fix the host".into(),
                }),
            );
            continue;
        }
        let mut seen_subsets: Vec<&str> = Vec::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if seen_subsets.contains(&s.name.as_str()) {
                problems.error(
                    dr.origin(),
                    dr.path(&format!("subsets[{i}].name")),
                    format!("subset \"{}\" is defined twice", s.name),
                    None,
                );
            }
            seen_subsets.push(&s.name);
        }
        applicable.push((dr, host));
    }
    // Two rules for the same host in the same namespace: Istio keeps the first one's
    // trafficPolicy and silently drops the other's.
    for (i, (a, ha)) in applicable.iter().enumerate() {
        for (b, hb) in applicable.iter().skip(i + 1) {
            if ha == hb && a.namespace == b.namespace {
                problems.error(
                    b.origin(),
                    b.path("host"),
                    format!("DestinationRules {} and {} both apply to {ha}", a.id(), b.id()),
                    Some("Istio would silently drop the second rule's trafficPolicy (including portLevelSettings); merge them into one rule".into()),
                );
            }
        }
    }
    for svc in services.iter_mut() {
        let svc_ns = svc.namespace.clone().unwrap_or_default();
        let candidates =
            |ns_pred: &dyn Fn(&str) -> bool| -> Option<&(&Obj<DestinationRuleSpec>, String)> {
                // Exact host first, then the most specific wildcard.
                let in_ns: Vec<&(&Obj<DestinationRuleSpec>, String)> = applicable
                    .iter()
                    .filter(|(dr, _)| ns_pred(&dr.namespace))
                    .collect();
                in_ns
                    .iter()
                    .find(|(_, h)| *h == svc.host)
                    .copied()
                    .or_else(|| {
                        in_ns
                            .iter()
                            .filter(|(_, h)| h.starts_with('*') && host_matches(h, &svc.host))
                            .max_by_key(|(_, h)| h.len())
                            .copied()
                    })
            };
        let found = candidates(&|ns| ns == proxy_ns)
            .or_else(|| candidates(&|ns| ns == svc_ns))
            .or_else(|| candidates(&|_| true));
        let Some((dr, _)) = found else { continue };
        let tp = dr.spec.traffic_policy.clone().unwrap_or_default();
        let ports: Vec<PortDecl> = svc.ports.clone();
        super::native::check_port_level(
            &tp,
            &ports,
            &svc.host,
            &dr.path("trafficPolicy"),
            dr.origin(),
            problems,
        );
        if tp.outlier_detection.is_some() {
            problems.warn(
                dr.origin(),
                dr.path("trafficPolicy.outlierDetection"),
                "outlierDetection is accepted but not acted on: egret does not eject hosts",
                None,
            );
        }
        if tp.tunnel.is_some() || tp.proxy_protocol.is_some() {
            problems.error(
                dr.origin(),
                dr.path("trafficPolicy"),
                "tunnel and proxyProtocol are not supported",
                Some("remove them; egret would not honour them".into()),
            );
        }
        svc.policy = Some(PolicyDecl {
            spec: tp,
            origin: dr.origin().clone(),
            path: dr.path("trafficPolicy"),
            base_dir: dr.src.base_dir.clone(),
            subsets: dr.spec.subsets.clone(),
            credentials: Some(credentials.clone()),
            namespace: dr.namespace.clone(),
        });
    }
}

/// The listeners of the Gateways selected by `--gateway-selector`.
fn build_gateways(
    store: &Store,
    opts: &IstioOptions,
    credentials: &Credentials,
    problems: &mut Problems,
) -> Vec<GatewayListener> {
    let origin = Origin::file("<command line>");
    if opts.gateway_selector.is_empty() {
        problems.error(&origin, "--gateway-selector", "--role gateway needs --gateway-selector KEY=VALUE (the gateway pod's labels, e.g. istio=egressgateway)", None);
        return Vec::new();
    }
    let mut by_port: BTreeMap<u16, GatewayListener> = BTreeMap::new();
    let mut selected = 0;
    for gw in &store.gateways {
        if gw.spec.selector.is_empty() || !selects(&gw.spec.selector, &opts.gateway_selector) {
            continue;
        }
        selected += 1;
        let key = format!("{}/{}", gw.namespace, gw.name);
        for (si, server) in gw.spec.servers.iter().enumerate() {
            let spath = gw.path(&format!("servers[{si}]"));
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p > 0) else {
                problems.error(
                    gw.origin(),
                    format!("{spath}.port.number"),
                    format!("{} is not a port number", server.port.number),
                    None,
                );
                continue;
            };
            let protocol = match server
                .port
                .protocol
                .as_deref()
                .map(|p| (p, Protocol::parse(p)))
            {
                Some((_, Some(p))) => p,
                Some((p, None)) => {
                    problems.error(
                        gw.origin(),
                        format!("{spath}.port.protocol"),
                        format!("unknown protocol \"{p}\""),
                        suggest(p, Protocol::NAMES).map(|s| format!("did you mean \"{s}\"?")),
                    );
                    continue;
                }
                None => {
                    problems.error(
                        gw.origin(),
                        format!("{spath}.port.protocol"),
                        "the server port has no protocol",
                        Some("set HTTP, HTTPS, TCP or TLS".into()),
                    );
                    continue;
                }
            };
            if server.hosts.is_empty() {
                problems.error(
                    gw.origin(),
                    format!("{spath}.hosts"),
                    "a Gateway server needs hosts",
                    None,
                );
                continue;
            }
            let kind = match (protocol, server.tls.as_ref().and_then(|t| t.mode)) {
                (p, _) if p.is_opaque_tcp() => GatewayKind::Tcp,
                (Protocol::Tls | Protocol::Https, Some(ServerTlsMode::Passthrough)) => {
                    GatewayKind::TlsPassthrough
                }
                (Protocol::Tls | Protocol::Https, Some(ServerTlsMode::AutoPassthrough)) => {
                    problems.error(
                        gw.origin(),
                        format!("{spath}.tls.mode"),
                        "AUTO_PASSTHROUGH routes by Istio's mTLS SNI (outbound_.PORT_.SUBSET_.HOST), which needs a mesh identity egret does not have",
                        Some("use PASSTHROUGH with a VirtualService tls route (sniHosts)".into()),
                    );
                    continue;
                }
                (Protocol::Tls, _) => {
                    problems.error(
                        gw.origin(),
                        format!("{spath}.tls.mode"),
                        "a TLS server is served as passthrough: set tls.mode PASSTHROUGH",
                        Some("use PASSTHROUGH (route by SNI with a VirtualService tls route), or protocol HTTPS with SIMPLE/MUTUAL to terminate".into()),
                    );
                    continue;
                }
                _ => GatewayKind::Http,
            };
            let tls = match (protocol, &server.tls) {
                _ if kind != GatewayKind::Http => None,
                (p, None) if p.is_http() => None,
                (p, Some(t)) if p.is_http() => {
                    if t.https_redirect == Some(true) {
                        problems.warn(
                            gw.origin(),
                            format!("{spath}.tls.httpsRedirect"),
                            "httpsRedirect is ignored: egret serves this plaintext port",
                            None,
                        );
                    }
                    None
                }
                (Protocol::Https, Some(t)) => match t.mode {
                    Some(
                        ServerTlsMode::Simple
                        | ServerTlsMode::Mutual
                        | ServerTlsMode::OptionalMutual,
                    ) => match server_tls(t, gw, &spath, credentials, &opts.mounts, problems) {
                        Some(p) => Some(Arc::new(p)),
                        None => continue,
                    },
                    Some(ServerTlsMode::IstioMutual) => {
                        problems.error(gw.origin(), format!("{spath}.tls.mode"), "ISTIO_MUTUAL needs an Istio mesh identity, which egret does not have", Some("use SIMPLE or MUTUAL with serverCertificate/privateKey or credentialName".into()));
                        continue;
                    }
                    // Passthrough modes were taken above: what is left is a missing mode.
                    _ => {
                        problems.error(
                            gw.origin(),
                            format!("{spath}.tls.mode"),
                            "an HTTPS server's tls has no mode",
                            Some("set SIMPLE or MUTUAL (egret terminates TLS) or PASSTHROUGH (routed by SNI with a VirtualService tls route)".into()),
                        );
                        continue;
                    }
                },
                (Protocol::Https, None) => {
                    problems.error(gw.origin(), format!("{spath}.tls"), "an HTTPS server needs tls", Some("add tls with mode SIMPLE and serverCertificate/privateKey (or credentialName)".into()));
                    continue;
                }
                (p, _) => {
                    problems.error(
                        gw.origin(),
                        format!("{spath}.port.protocol"),
                        format!(
                            "{} gateway servers are not served by egret's HTTP listeners",
                            p.as_str()
                        ),
                        Some("use protocol HTTP (or HTTPS with tls termination)".into()),
                    );
                    continue;
                }
            };
            let ip = match &server.bind {
                Some(b) => match b.parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        problems.error(
                            gw.origin(),
                            format!("{spath}.bind"),
                            format!("\"{b}\" is not an IP address"),
                            None,
                        );
                        continue;
                    }
                },
                None => opts.listen_address,
            };
            let bind_port = opts.bind_ports.get(&port).copied().unwrap_or(port);
            let address = SocketAddr::new(ip, bind_port);
            let entry = by_port.entry(port).or_insert_with(|| GatewayListener {
                name: format!("{ip}_{port}"),
                address,
                port,
                kind,
                tls: tls.clone(),
                servers: Vec::new(),
            });
            if entry.kind != kind {
                problems.error(
                    gw.origin(),
                    format!("{spath}.port"),
                    format!(
                        "port {port} is served as {:?} by one server and as {kind:?} by another",
                        entry.kind
                    ),
                    Some("use one port per protocol".into()),
                );
                continue;
            }
            if entry.tls.is_some() != tls.is_some() {
                problems.error(
                    gw.origin(),
                    format!("{spath}.tls"),
                    format!("port {port} is served both with and without TLS"),
                    Some("use one port per protocol".into()),
                );
                continue;
            }
            entry
                .servers
                .push((key.clone(), gw.namespace.clone(), server.hosts.clone()));
        }
    }
    if selected == 0 {
        let sel: Vec<String> = opts
            .gateway_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let known: Vec<String> = store
            .gateways
            .iter()
            .map(|g| format!("{} (selector {:?})", g.id(), g.spec.selector))
            .collect();
        problems.error(
            &origin,
            "--gateway-selector",
            format!("no Gateway selects {}", sel.join(",")),
            Some(if known.is_empty() {
                "no Gateway objects were given".into()
            } else {
                format!("Gateways: {}", known.join("; "))
            }),
        );
    }
    by_port.into_values().collect()
}

fn server_tls(
    t: &ServerTlsSpec,
    gw: &Obj<GatewaySpec>,
    spath: &str,
    credentials: &Credentials,
    mounts: &[(PathBuf, PathBuf)],
    problems: &mut Problems,
) -> Option<ServerTlsPolicy> {
    let file = |p: &str| -> PemSource {
        let pb = PathBuf::from(p);
        let pb = match &gw.src.base_dir {
            Some(d) if pb.is_relative() => d.join(pb),
            _ => pb,
        };
        PemSource::File(super::map_path(mounts, &pb))
    };
    let mutual = matches!(
        t.mode,
        Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    );
    for (field, set) in [
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
        ("caCrl", t.ca_crl.is_some()),
    ] {
        if set {
            problems.error(
                gw.origin(),
                format!("{spath}.tls.{field}"),
                format!(
                    "{field} restricts which clients are accepted, and egret does not implement it"
                ),
                Some(format!("remove {field}")),
            );
            return None;
        }
    }
    if !t.cipher_suites.is_empty()
        || t.min_protocol_version.is_some()
        || t.max_protocol_version.is_some()
    {
        problems.warn(gw.origin(), format!("{spath}.tls"), "cipherSuites and min/maxProtocolVersion are ignored: egret serves TLS 1.2 and 1.3 with AEAD ciphers", None);
    }
    let (cert, key, ca) =
        if let Some(name) = t.credential_name.as_ref().or(t.credential_names.first()) {
            match credentials.lookup(&gw.namespace, name) {
                Ok(c) => (c.cert, c.key, c.ca),
                Err(e) => {
                    problems.error(gw.origin(), format!("{spath}.tls.credentialName"), e, None);
                    return None;
                }
            }
        } else {
            (
                t.server_certificate.as_deref().map(file),
                t.private_key.as_deref().map(file),
                t.ca_certificates.as_deref().map(file),
            )
        };
    let (Some(cert), Some(key)) = (cert, key) else {
        problems.error(
            gw.origin(),
            format!("{spath}.tls"),
            "a TLS server needs serverCertificate and privateKey (or credentialName)",
            None,
        );
        return None;
    };
    let client_ca = if mutual {
        match ca {
            Some(ca) => Some(ca),
            None => {
                problems.error(gw.origin(), format!("{spath}.tls.caCertificates"), "mode MUTUAL needs caCertificates (or ca.crt in the credential) to verify clients", None);
                return None;
            }
        }
    } else {
        None
    };
    Some(ServerTlsPolicy {
        cert,
        key,
        client_ca,
        client_cert_optional: t.mode == Some(ServerTlsMode::OptionalMutual),
        origin: format!("{}: {spath}.tls", gw.origin()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_like_istio() {
        let n = Names {
            domain: "cluster.local",
        };
        assert_eq!(
            n.fqdn("ci00000000-test-egress", "work"),
            "ci00000000-test-egress.work.svc.cluster.local"
        );
        assert_eq!(n.fqdn("www.oracle.com", "work"), "www.oracle.com");
        assert_eq!(n.fqdn("*.example.com", "work"), "*.example.com");
    }

    #[test]
    fn export_to_and_gateway_hosts() {
        assert!(visible(&[], "a", "b"));
        assert!(visible(&[".".into()], "a", "a"));
        assert!(!visible(&[".".into()], "a", "b"));
        assert!(visible(&["b".into()], "a", "b"));
        assert!(!visible(&["~".into()], "a", "a"));
        assert!(server_host_matches("*", "x.example.com", "ns", "gw"));
        assert!(server_host_matches(
            "./x.example.com",
            "x.example.com",
            "gw",
            "gw"
        ));
        assert!(!server_host_matches(
            "./x.example.com",
            "x.example.com",
            "other",
            "gw"
        ));
        assert!(server_host_matches(
            "*/*.example.com",
            "a.example.com",
            "ns",
            "gw"
        ));
        assert!(!server_host_matches(
            "*.example.com",
            "example.com",
            "ns",
            "gw"
        ));
    }
}
