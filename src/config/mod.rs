//! The validated runtime model, and loading it from files.
//!
//! Raw YAML (egret's native schema in [`native`], Istio manifests in [`istio`], read as
//! Kubernetes documents by [`k8s`]) is parsed into serde shapes ([`spec`]), gathered as
//! declarations ([`decl`]), then lowered into one [`Config`] ([`model`]): listeners with route
//! tables, clusters (`outbound|PORT|SUBSET|HOST`) with their endpoints and TLS policy. Every
//! problem found on the way is collected ([`diag`]) so a broken config is reported in one run,
//! and a config with errors is never used.
//!
//! Inside the wing, files import each other one way only: `load` → the front ends (`k8s`,
//! `native`, the Istio resolver) and `lower` → `decl` → the Istio data (`istio::store`,
//! `istio::routing`, `istio::credentials`) → `model`, `overrides`, `source`, `doc`, `spec`,
//! `diag`. Siblings are reached by their own paths, never through this façade.

pub mod decl;
mod describe;
pub mod diag;
pub mod doc;
pub mod istio;
pub mod k8s;
mod load;
mod lower;
pub mod model;
pub mod native;
pub mod overrides;
mod policies;
pub mod source;
pub mod spec;

pub use decl::{ListenerDecl, ListenerKind, Model, PolicyDecl, PortDecl, Resolution, ServiceDecl};
pub use diag::{ConfigError, Origin, Problem, Problems, Severity};
pub use load::load;
pub use model::{
    AccessLogConfig, AccessLogPath, Cluster, Config, ConnectTo, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_OUTBOUND_LISTEN, DEFAULT_TCP_IDLE_TIMEOUT,
    DEFAULT_TCP_LISTEN_ADDRESS, DnsConfig, DnsEndpoint, DnsNames, Endpoints, IpFamily, LbPolicy,
    Listener, NameAnswer, OutboundPolicy, OutlierPolicy, PemSource, Protocol, ServerTlsPolicy,
    TcpKeepalive, TlsMode, TlsPolicy, TrustRoots, UpstreamOverrides,
};
pub use overrides::{Overrides, map_path};
pub use source::{EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME, Source, read_sources};
