//! The ALLOW_ANY guard: passthrough (a host no destination declares) never reaches egret's own
//! ports or a cloud metadata service. Envoy has no such check; a sidecar that passes anything
//! through would otherwise hand the app egret's admin API (`/quitquitquit`, `/config_dump`) and
//! the node's metadata credentials through a name or address the app chose.
//!
//! Refused: a destination whose address (the literal IP, or every address the host resolves
//! to, from the same DNS cache the upstream connect uses) is
//! - in 169.254.0.0/16 (IPv4 link-local: AWS, GCP, Azure and OpenStack metadata live at
//!   169.254.169.254) or AWS's IPv6 metadata address `fd00:ec2::254`;
//! - egret itself: one of its listener or operational-server ports, on the address it is bound
//!   to, or on any local address for a wildcard bind.
//!
//! A declared destination (a ServiceEntry naming the host and port) is routed normally: the
//! guard sees only the passthrough cluster.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::error::ProxyError;
use crate::runtime::Runtime;
use crate::upstream::ClusterPool;

/// AWS's IPv6 instance metadata address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Refuses a passthrough destination that is egret itself or cloud metadata; any other
/// destination, and every declared one, passes. A host that does not resolve passes too (the
/// upstream then fails with its own DNS error).
pub(super) async fn check(
    rt: &Runtime,
    pool: &ClusterPool,
    host: &str,
    port: u16,
) -> Result<(), ProxyError> {
    if !is_passthrough(pool) {
        return Ok(());
    }
    let Ok(addrs) = rt.upstream.dns.resolve(host).await else {
        return Ok(());
    };
    for ip in addrs.iter() {
        let ip = ip.to_canonical();
        let what = if is_metadata(ip) {
            Some("a cloud metadata address (169.254.0.0/16 or fd00:ec2::254)")
        } else if rt.own.reaches(SocketAddr::new(ip, port)) {
            Some("egret itself (one of its own listener or admin/stats ports)")
        } else {
            None
        };
        if let Some(what) = what {
            tracing::debug!(%host, port, %ip, "ALLOW_ANY passthrough refused: {what}");
            return Err(ProxyError::SelfOrMetadata {
                host: host.to_string(),
                port,
                addr: ip,
                what,
            });
        }
    }
    Ok(())
}

/// The passthrough cluster (ALLOW_ANY): the request's own host and port.
pub(super) fn is_passthrough(pool: &ClusterPool) -> bool {
    pool.cluster.host == "-"
}

fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6 == AWS_METADATA_V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(is_metadata(ip.to_canonical()), "{ip}");
        }
        for ip in ["169.253.1.1", "10.0.0.1", "fd00:ec2::253", "127.0.0.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!is_metadata(ip.to_canonical()), "{ip}");
        }
    }
}
