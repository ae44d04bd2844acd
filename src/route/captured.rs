//! Routing of connections the capture rules redirected to the outbound listener, by their
//! original destination, as Envoy's outbound listener chooses a filter chain by destination
//! address and port before anything is read:
//!
//! 1. an exact `IP:port`: a ServiceEntry address, the VIP egret's DNS proxy gave the host
//!    (240.240.0.0/16, Istio's `ISTIO_META_DNS_AUTO_ALLOCATE`), or a STATIC endpoint;
//! 2. a ServiceEntry `addresses` CIDR and port (the longest prefix wins);
//! 3. the port alone, when exactly one TCP host declares it and has no address (Istio's
//!    `0.0.0.0:PORT` listener): any destination on that port is that host;
//! 4. else the fallback: ALLOW_ANY's PassthroughCluster (to the original destination) or
//!    REGISTRY_ONLY's BlackHoleCluster.
//!
//! Only opaque-TCP ports are in the table; HTTP and TLS are told by the first bytes instead
//! (the listener sniffs them) and routed by Host or SNI and the original port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{ClusterId, L4Fallback, WeightedClusters};

/// Where one opaque-TCP destination goes.
#[derive(Debug)]
pub struct TcpTarget {
    /// The declared host (logged; the TLS name when the DestinationRule originates TLS).
    pub host: Arc<str>,
    pub clusters: WeightedClusters,
    /// VirtualService `tcp` route name, if one applies.
    pub route_name: Option<Arc<str>>,
}

/// The opaque-TCP routes of a captured outbound listener.
#[derive(Debug)]
pub struct CapturedRoutes {
    exact: crate::FastMap<SocketAddr, Arc<TcpTarget>>,
    /// (network, prefix length, port, target), longest prefix first.
    cidrs: Vec<(IpAddr, u8, u16, Arc<TcpTarget>)>,
    by_port: crate::FastMap<u16, Arc<TcpTarget>>,
    pub fallback: L4Fallback,
}

/// What the table says about an original destination.
#[derive(Debug)]
pub enum CapturedMatch<'a> {
    /// A declared TCP destination.
    Tcp(&'a TcpTarget),
    /// Nothing declared: sniff for HTTP or TLS, else the fallback.
    Unknown,
}

impl CapturedRoutes {
    pub fn new(fallback: L4Fallback) -> CapturedRoutes {
        CapturedRoutes {
            exact: Default::default(),
            cidrs: Vec::new(),
            by_port: Default::default(),
            fallback,
        }
    }

    /// Routes `addr` (an exact address) to `target`; `false` if the address was taken.
    pub fn add_exact(&mut self, addr: SocketAddr, target: Arc<TcpTarget>) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if self.exact.contains_key(&addr) {
            return false;
        }
        self.exact.insert(addr, target);
        true
    }

    /// Routes `net/prefix` on `port` to `target` (a prefix of the full length is exact).
    pub fn add_cidr(&mut self, net: IpAddr, prefix: u8, port: u16, target: Arc<TcpTarget>) {
        let full = if net.is_ipv4() { 32 } else { 128 };
        if prefix >= full {
            self.add_exact(SocketAddr::new(net, port), target);
            return;
        }
        self.cidrs.push((mask(net, prefix), prefix, port, target));
        self.cidrs.sort_by_key(|c| std::cmp::Reverse(c.1));
    }

    /// Routes every destination on `port` to `target`.
    pub fn add_port(&mut self, port: u16, target: Arc<TcpTarget>) {
        self.by_port.insert(port, target);
    }

    /// Whether any TCP destination is declared (else every connection is sniffed).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.cidrs.is_empty() && self.by_port.is_empty()
    }

    pub fn lookup(&self, dst: SocketAddr) -> CapturedMatch<'_> {
        let ip = dst.ip().to_canonical();
        if let Some(t) = self.exact.get(&SocketAddr::new(ip, dst.port())) {
            return CapturedMatch::Tcp(t);
        }
        for (net, prefix, port, t) in &self.cidrs {
            if *port == dst.port() && net.is_ipv4() == ip.is_ipv4() && mask(ip, *prefix) == *net {
                return CapturedMatch::Tcp(t);
            }
        }
        match self.by_port.get(&dst.port()) {
            Some(t) => CapturedMatch::Tcp(t),
            None => CapturedMatch::Unknown,
        }
    }

    /// The passthrough cluster under ALLOW_ANY.
    pub fn passthrough(&self) -> Option<ClusterId> {
        match self.fallback {
            L4Fallback::AllowAny(c) => Some(c),
            L4Fallback::Refuse => None,
        }
    }
}

/// `ip` with all but the first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, c: ClusterId) -> Arc<TcpTarget> {
        Arc::new(TcpTarget {
            host: Arc::from(host),
            clusters: WeightedClusters::single(c),
            route_name: None,
        })
    }

    fn host_of(m: CapturedMatch<'_>) -> Option<String> {
        match m {
            CapturedMatch::Tcp(t) => Some(t.host.to_string()),
            CapturedMatch::Unknown => None,
        }
    }

    #[test]
    fn exact_then_longest_prefix_then_port_then_unknown() {
        let mut t = CapturedRoutes::new(L4Fallback::Refuse);
        assert!(t.add_exact("240.240.0.7:9092".parse().unwrap(), target("kafka-a", 1)));
        assert!(!t.add_exact("240.240.0.7:9092".parse().unwrap(), target("dup", 9)));
        t.add_cidr("10.0.0.0".parse().unwrap(), 8, 5432, target("wide", 2));
        t.add_cidr("10.1.0.0".parse().unwrap(), 16, 5432, target("narrow", 3));
        t.add_port(6379, target("redis", 4));
        let look = |s: &str| host_of(t.lookup(s.parse().unwrap()));
        assert_eq!(look("240.240.0.7:9092").as_deref(), Some("kafka-a"));
        assert_eq!(look("240.240.0.8:9092"), None);
        assert_eq!(look("10.1.2.3:5432").as_deref(), Some("narrow"));
        assert_eq!(look("10.9.2.3:5432").as_deref(), Some("wide"));
        assert_eq!(look("10.9.2.3:5433"), None);
        assert_eq!(look("192.0.2.1:6379").as_deref(), Some("redis"));
        // IPv4-mapped IPv6 is the same destination.
        assert_eq!(
            look("[::ffff:240.240.0.7]:9092").as_deref(),
            Some("kafka-a")
        );
        assert!(t.passthrough().is_none());
    }
}
