//! What the command line says over the files ([`Overrides`]): the listen address, DNS servers,
//! outbound policy, access log, `--ca-bundle`, `--mount` (and [`map_path`], which applies it),
//! the Istio options, and the connect-time overrides the loaded `Config` carries.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::istio::options::IstioOptions;
use crate::config::model::{OutboundPolicy, UpstreamOverrides};

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
    pub istio: IstioOptions,
    /// `--capture`: the outbound listener receives redirected connections (`egret capture`)
    /// and routes them by original destination; TCP ports get no listener of their own.
    pub capture: bool,
    /// `--dns-capture`: declared hosts without addresses get a VIP (240.240.0.0/16) from the
    /// DNS proxy, as Istio's `ISTIO_META_DNS_AUTO_ALLOCATE`.
    pub dns_auto_allocate: bool,
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
