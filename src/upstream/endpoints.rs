//! Which addresses a request may go to, and which one first: static endpoints, DNS names
//! (through the resolver's TTL cache), `--connect-to` overrides, and the cluster's load
//! balancing policy (round robin, random, least request by power of two choices).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Endpoints, LbPolicy};
use crate::error::ProxyError;

use super::pool::{ClusterPool, UpstreamCtx};

/// Addresses to try, without allocating for the common cases (one DNS name, static endpoints).
pub(super) enum Addrs<'a> {
    One { ips: Arc<[IpAddr]>, port: u16 },
    Static(&'a [SocketAddr]),
    Many(Vec<SocketAddr>),
}

impl Addrs<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Addrs::One { ips, .. } => ips.len(),
            Addrs::Static(v) => v.len(),
            Addrs::Many(v) => v.len(),
        }
    }
    pub(super) fn get(&self, i: usize) -> SocketAddr {
        match self {
            Addrs::One { ips, port } => SocketAddr::new(ips[i], *port),
            Addrs::Static(v) => v[i],
            Addrs::Many(v) => v[i],
        }
    }
}

impl ClusterPool {
    /// The addresses to try, and the port they stand for (before `--connect-to`).
    pub(super) async fn addresses(
        &self,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
    ) -> Result<(Addrs<'_>, u16), ProxyError> {
        match &self.cluster.endpoints {
            Endpoints::Static(v) => Ok((
                Addrs::Static(v),
                v.first().map_or(self.cluster.port, |a| a.port()),
            )),
            Endpoints::Dns(eps) if eps.len() == 1 => {
                let ep = &eps[0];
                let name = ep.name.as_deref().unwrap_or(host);
                let port = ep.port.unwrap_or(req_port);
                if let Some(to) = ctx.overrides.connect_to(name, port) {
                    return Ok((Addrs::Many(vec![to]), port));
                }
                let dynamic = ep.name.is_none();
                let ips = ctx.dns.resolve(name).await.map_err(|e| {
                    ctx.metrics.dns_failure(name);
                    let target = format!("{name}:{port}");
                    let reason = format!("{e} (cluster {})", self.cluster.name);
                    let code = e.code();
                    if dynamic {
                        ProxyError::DnsFailed {
                            target,
                            reason,
                            code,
                        }
                    } else {
                        ProxyError::NoHealthyUpstream {
                            target,
                            reason,
                            code,
                        }
                    }
                })?;
                Ok((Addrs::One { ips, port }, port))
            }
            Endpoints::Dns(eps) => {
                let mut out = Vec::new();
                let mut last_err = None;
                for ep in eps {
                    let name = ep.name.as_deref().unwrap_or(host);
                    let port = ep.port.unwrap_or(req_port);
                    if let Some(to) = ctx.overrides.connect_to(name, port) {
                        out.push(to);
                        continue;
                    }
                    match ctx.dns.resolve(name).await {
                        Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port))),
                        Err(e) => {
                            ctx.metrics.dns_failure(name);
                            last_err = Some(e);
                        }
                    }
                }
                if out.is_empty() {
                    return Err(ProxyError::NoHealthyUpstream {
                        target: self.cluster.host.clone(),
                        code: last_err
                            .as_ref()
                            .map_or("upstream.no_healthy_upstream", |e| e.code()),
                        reason: last_err.map_or_else(
                            || format!("cluster {} has no endpoints", self.cluster.name),
                            |e| format!("{e} (cluster {})", self.cluster.name),
                        ),
                    });
                }
                let port = eps.first().and_then(|e| e.port).unwrap_or(req_port);
                Ok((Addrs::Many(out), port))
            }
        }
    }

    /// The first address to try, per the cluster's load-balancing policy.
    pub(super) fn pick(&self, host_key: &str, addrs: &Addrs) -> usize {
        let n = addrs.len();
        if n <= 1 {
            return 0;
        }
        match self.cluster.lb {
            LbPolicy::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random => random_below(n),
            LbPolicy::LeastRequest => {
                // Power of two choices over the requests in flight.
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
                let active = |i: usize| {
                    map.get(host_key)
                        .and_then(|h| h.get(&addrs.get(i)))
                        .map_or(0, |e| e.active)
                };
                if active(b) < active(a) { b } else { a }
            }
        }
    }
}

/// A uniform draw in [0, 1) (back-off jitter, fault percentages).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn random_below(n: usize) -> usize {
    (random_u64() % n as u64) as usize
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
