//! Transparent capture's view of the declarations: the VIPs egret's DNS proxy hands out (Istio's
//! `ISTIO_META_DNS_AUTO_ALLOCATE`), what the DNS proxy answers for each declared host, and the
//! opaque-TCP routes of the captured outbound listener, by original destination.
//!
//! VIPs come from 240.240.0.0/16, the range Istio's sidecar uses (the seed's sidecar log shows
//! `240.240.0.2:80`). Each host gets the address its name hashes to (FNV-1a over the lowercase
//! name), the next free one on a collision, hosts taken in name order: the same host keeps its
//! VIP across restarts, reloads and replicas, and adding a host moves no other host's VIP
//! unless the two collide.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::config::decl::{Model, Resolution};
use crate::config::diag::{Origin, Problems};
use crate::config::istio::routing::Routing;
use crate::config::lower::clusters::Clusters;
use crate::config::model::{DnsNames, Endpoints, NameAnswer, OutboundPolicy};
use crate::config::overrides::Overrides;
use crate::route::{CapturedRoutes, L4Fallback, TcpTarget, WeightedClusters};

/// The first VIP block: 240.240.0.0/16 (addresses .0.1 to .255.254).
const VIP_BASE: u32 = 0xF0F0_0000;
const VIP_COUNT: u32 = 65_534;

/// A stable VIP for each host, given the hosts that want one.
pub(crate) fn allocate_vips<'a>(
    hosts: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Ipv4Addr> {
    let mut sorted: Vec<&str> = hosts.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut taken = std::collections::HashSet::new();
    let mut out = BTreeMap::new();
    for host in sorted.into_iter().take(VIP_COUNT as usize) {
        let mut slot = fnv1a(host.as_bytes()) % VIP_COUNT;
        while !taken.insert(slot) {
            slot = (slot + 1) % VIP_COUNT;
        }
        out.insert(host.to_string(), Ipv4Addr::from(VIP_BASE + 1 + slot));
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// What capture adds to a configuration.
pub(crate) struct Captured {
    /// The captured outbound listener's opaque-TCP routes (`--capture` only).
    pub routes: Option<CapturedRoutes>,
    pub names: DnsNames,
}

/// The DNS proxy's answers and, under `--capture`, the routes by original destination.
pub(crate) fn captured(
    model: &Model,
    overrides: &Overrides,
    clusters: &Clusters,
    policy: OutboundPolicy,
    problems: &mut Problems,
) -> Captured {
    // The hosts a VIP is for: declared, not wildcard, not resolution NONE (the app's own DNS
    // answer is the destination then), without ServiceEntry addresses.
    let vips = if overrides.dns_auto_allocate {
        allocate_vips(
            model
                .services
                .iter()
                .filter(|s| {
                    !s.host.starts_with('*')
                        && s.resolution != Resolution::None
                        && s.addresses.is_empty()
                })
                .map(|s| s.host.as_str()),
        )
    } else {
        BTreeMap::new()
    };
    let names = dns_names(model, clusters, &vips);
    let routes = overrides
        .capture
        .then(|| tcp_routes(model, clusters, &vips, policy, problems));
    Captured { routes, names }
}

/// What the DNS proxy answers for each declared host (first declaration wins).
fn dns_names(model: &Model, clusters: &Clusters, vips: &BTreeMap<String, Ipv4Addr>) -> DnsNames {
    let mut hosts: HashMap<String, NameAnswer> = HashMap::new();
    for s in &model.services {
        if s.host.starts_with('*') || hosts.contains_key(&s.host) {
            continue;
        }
        let answer = if let Some(vip) = vips.get(&s.host) {
            NameAnswer::Fixed(vec![IpAddr::V4(*vip)])
        } else if !s.addresses.is_empty() {
            // Only whole addresses can be answered; a CIDR names no one host.
            let ips: Vec<IpAddr> = s
                .addresses
                .iter()
                .filter(|(ip, p)| *p == if ip.is_ipv4() { 32 } else { 128 })
                .map(|(ip, _)| *ip)
                .collect();
            if ips.is_empty() {
                continue;
            }
            NameAnswer::Fixed(ips)
        } else {
            match s.resolution {
                Resolution::Static => {
                    let mut ips: Vec<IpAddr> = clusters
                        .list
                        .iter()
                        .filter(|c| c.host == s.host)
                        .filter_map(|c| match &c.endpoints {
                            Endpoints::Static(v) => Some(v.iter().map(SocketAddr::ip)),
                            Endpoints::Dns(_) => None,
                        })
                        .flatten()
                        .collect();
                    ips.sort();
                    ips.dedup();
                    NameAnswer::Fixed(ips)
                }
                Resolution::Dns | Resolution::DnsRoundRobin => NameAnswer::Resolve,
                Resolution::None => continue,
            }
        };
        hosts.insert(s.host.clone(), answer);
    }
    DnsNames { hosts }
}

/// The opaque-TCP routes by original destination.
fn tcp_routes(
    model: &Model,
    clusters: &Clusters,
    vips: &BTreeMap<String, Ipv4Addr>,
    policy: OutboundPolicy,
    problems: &mut Problems,
) -> CapturedRoutes {
    let fallback = match policy {
        OutboundPolicy::AllowAny => L4Fallback::AllowAny(clusters.passthrough),
        OutboundPolicy::RegistryOnly => L4Fallback::Refuse,
    };
    let mut routes = CapturedRoutes::new(fallback);
    let addresses: HashMap<&str, &[(IpAddr, u8)]> = model
        .services
        .iter()
        .map(|s| (s.host.as_str(), s.addresses.as_slice()))
        .collect();
    // Hosts per port that only the port can tell apart (no address, no VIP).
    let mut by_port: BTreeMap<u16, Vec<Arc<TcpTarget>>> = BTreeMap::new();
    for p in clusters
        .l4_ports
        .iter()
        .filter(|p| p.protocol.is_opaque_tcp())
    {
        let (w, route_name) = match model
            .routing
            .as_ref()
            .and_then(|r: &Routing| r.sidecar_tcp(&p.host, p.port, &clusters.by_name, problems))
        {
            Some(x) => x,
            None => (WeightedClusters::single(p.cluster), None),
        };
        let target = Arc::new(TcpTarget {
            host: Arc::from(p.host.as_str()),
            clusters: w,
            route_name,
        });
        let mut addressed = false;
        for (net, prefix) in addresses.get(p.host.as_str()).copied().unwrap_or_default() {
            routes.add_cidr(*net, *prefix, p.port, target.clone());
            addressed = true;
        }
        if let Some(vip) = vips.get(&p.host) {
            routes.add_exact(SocketAddr::new(IpAddr::V4(*vip), p.port), target.clone());
            addressed = true;
        }
        if let Some(c) = clusters.list.get(p.cluster)
            && let Endpoints::Static(eps) = &c.endpoints
        {
            for ep in eps {
                routes.add_exact(SocketAddr::new(ep.ip(), p.port), target.clone());
            }
        }
        if !addressed && !p.host.starts_with('*') {
            by_port.entry(p.port).or_default().push(target);
        }
    }
    for (port, targets) in by_port {
        match targets.as_slice() {
            [one] => routes.add_port(port, one.clone()),
            [a, b, ..] => problems.warn(
                &Origin::file("<capture>"),
                "",
                format!(
                    "TCP port {port} is declared by {} and by {} with no addresses: a captured connection to port {port} cannot be told apart by port alone, so only connections to their VIPs or addresses reach them (others: {})",
                    a.host,
                    b.host,
                    match policy {
                        OutboundPolicy::AllowAny => "PassthroughCluster",
                        OutboundPolicy::RegistryOnly => "BlackHoleCluster",
                    }
                ),
                Some("run with --dns-capture (the DNS proxy gives each host a VIP), or give the ServiceEntries addresses".into()),
            ),
            [] => {}
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_are_stable_distinct_and_in_range() {
        let a = allocate_vips([
            "kafka-a.example.com",
            "kafka-b.example.com",
            "www.oracle.com",
        ]);
        let b = allocate_vips([
            "www.oracle.com",
            "kafka-b.example.com",
            "kafka-a.example.com",
            "new.example.com",
        ]);
        assert_eq!(a.len(), 3);
        for (host, vip) in &a {
            assert_eq!(b.get(host), Some(vip), "{host} moved when a host was added");
            let o = vip.octets();
            assert_eq!((o[0], o[1]), (240, 240));
            assert!(
                *vip != Ipv4Addr::new(240, 240, 0, 0) && *vip != Ipv4Addr::new(240, 240, 255, 255)
            );
        }
        let mut seen: Vec<_> = b.values().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn a_collision_takes_the_next_free_address() {
        let many: Vec<String> = (0..3000).map(|i| format!("h{i}.example")).collect();
        let v = allocate_vips(many.iter().map(String::as_str));
        let mut ips: Vec<_> = v.values().collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3000);
    }
}
