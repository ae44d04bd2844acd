//! The serde shapes of the Istio resources egret reads (ServiceEntry, DestinationRule,
//! VirtualService, Gateway) and of the MeshConfig, with Istio's field names. Unknown fields are
//! errors; fields egret accepts but cannot honour are reported where they are resolved.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::spec::{
    Dur, EndpointSpec, FaultSpec, PortSelectorSpec, PortSpec, RetrySpec, SubsetSpec,
    TrafficPolicySpec, serde_ignored_any::Any,
};

/// A whole object: only its `spec` is kept (metadata was read before, status is ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Full<S> {
    #[serde(rename = "apiVersion")]
    _api_version: serde_json::Value,
    #[serde(rename = "kind")]
    _kind: serde_json::Value,
    #[serde(default, rename = "metadata")]
    _metadata: serde_json::Value,
    pub(super) spec: S,
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
    pub(super) fn labels(&self) -> &BTreeMap<String, String> {
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
    pub retries: Option<RetrySpec>,
    #[serde(default)]
    pub fault: Option<FaultSpec>,
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

/// The MeshConfig fields egret honours. Other MeshConfig fields are accepted and ignored: they
/// configure the control plane, tracing, etc.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    #[serde(default)]
    pub outbound_traffic_policy: Option<MeshOutboundSpec>,
    #[serde(default)]
    pub access_log_file: Option<String>,
    #[serde(default)]
    pub access_log_encoding: Option<MeshEncodingSpec>,
    #[serde(default)]
    pub access_log_format: Option<String>,
    #[serde(default)]
    pub default_config: Option<MeshProxyConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshOutboundSpec {
    pub mode: MeshOutboundMode,
    #[serde(default, rename = "egressProxy")]
    pub egress_proxy: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshOutboundMode {
    RegistryOnly,
    AllowAny,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshEncodingSpec {
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshProxyConfig {
    #[serde(default)]
    pub drain_duration: Option<Dur>,
    /// Worker threads (Istio: Envoy's `--concurrency`; 0 is every CPU).
    #[serde(default)]
    pub concurrency: Option<u32>,
}
