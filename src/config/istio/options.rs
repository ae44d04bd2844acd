//! Command-line settings for Istio manifests ([`IstioOptions`]): which proxy egret plays, its
//! namespace and labels, where gateway listeners bind, Template parameters, the MeshConfig and
//! where `credentialName` Secrets are mounted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::source::Source;

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
