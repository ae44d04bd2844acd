//! Istio resources as configuration: ServiceEntry, DestinationRule, VirtualService and Gateway,
//! with Istio's semantics (see `../shared/docs/istio-envoy-semantics.md`): short names expand to
//! `name.namespace.svc.cluster.local`, `exportTo` and namespaces decide visibility, a
//! DestinationRule's port-level settings win wholesale, VirtualService routes are tried in order
//! and bound to the `mesh` (sidecar) or to Gateways (egress gateway), and clusters keep Envoy's
//! `outbound|PORT|SUBSET|HOST` names.
//!
//! Fields egret cannot honour are reported: an error when ignoring them would change routing or
//! security, a warning otherwise.
//!
//! The Kubernetes front end adds each object to the [`store`]; [`resolve`] then runs the
//! phases ([`resolve::resolve`]: ServiceEntries, VirtualServices, destinations,
//! DestinationRules, Gateways) into declared services and the [`routing`] the lowering reads.

pub mod credentials;
mod destination_rule;
mod destinations;
mod gateway;
mod names;
pub mod options;
pub mod resolve;
pub mod resources;
pub mod routing;
mod service_entry;
pub mod store;
mod virtual_service;

pub use credentials::{Credential, Credentials, SecretData};
pub use options::{IstioOptions, Role};
pub use resolve::resolve;
pub use resources::{
    BodySpec, DestinationRuleSpec, DestinationSpec, DirectResponseSpec, GatewaySpec, HeaderOpsSpec,
    HeadersSpec, HttpMatchSpec, HttpRouteDestinationSpec, HttpRouteSpec, L4MatchSpec, LocationSpec,
    MeshConfigSpec, MeshEncodingSpec, MeshOutboundMode, MeshOutboundSpec, MeshProxyConfig,
    RedirectSpec, RewriteSpec, RouteDestinationSpec, SeResolution, ServerPortSpec, ServerSpec,
    ServerTlsMode, ServerTlsSpec, ServiceEntrySpec, StringMatchSpec, TcpRouteSpec, TlsMatchSpec,
    TlsRouteSpec, VirtualServiceSpec, WorkloadSelectorSpec,
};
pub use routing::Routing;
pub use store::{Obj, Store, add_object};
