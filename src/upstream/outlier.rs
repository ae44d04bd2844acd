//! Outlier detection (DestinationRule `outlierDetection`, Envoy's consecutive-errors
//! detectors): per address of one cluster, consecutive 5xx answers, gateway errors (502/503/504)
//! and local-origin failures (connect failures, resets, per-try timeouts) eject the address for
//! `baseEjectionTime` times the number of times it was ejected (at most `max_ejection_time`).
//! An interval timer brings ejected addresses back, as Envoy's does; `maxEjectionPercent` and
//! `minHealthPercent` (panic: use every address) apply as in Envoy.
//!
//! Only clusters with a policy have an [`Outlier`]; the others pay nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::OutlierPolicy;
use crate::metrics::ClusterStats;

/// What one attempt on an address came to, as the detectors see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status.
    Status(u16),
    /// No usable response: connect failure, reset, per-try timeout.
    LocalFailure,
}

#[derive(Debug, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// Ejected until the first interval tick at or after this time.
    ejected_until: Option<Instant>,
    /// How many times the address was ejected (the ejection-time multiplier); one is taken
    /// off for each interval the address stays healthy.
    times_ejected: u32,
}

/// The detector state of one cluster.
#[derive(Debug)]
pub struct Outlier {
    pub policy: OutlierPolicy,
    hosts: Mutex<crate::FastMap<SocketAddr, HostState>>,
    /// Addresses ejected now (also the gauge `ejections_active`).
    ejected: AtomicU64,
    timer_running: std::sync::atomic::AtomicBool,
}

/// Which detector ejected an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detector {
    Consecutive5xx,
    Gateway,
    LocalOrigin,
}

impl Outlier {
    pub fn new(policy: OutlierPolicy) -> Outlier {
        Outlier {
            policy,
            hosts: Mutex::new(Default::default()),
            ejected: AtomicU64::new(0),
            timer_running: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records an attempt's outcome on `addr`; `hosts` is how many addresses the cluster has
    /// now (for `maxEjectionPercent`). May eject the address.
    pub fn report(
        self: &Arc<Self>,
        addr: SocketAddr,
        outcome: Outcome,
        hosts: usize,
        stats: &Arc<ClusterStats>,
    ) {
        let p = &self.policy;
        let mut map = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 4096 && !map.contains_key(&addr) {
            // A passthrough cluster sees unbounded addresses: forget the healthy ones.
            map.retain(|_, h| h.ejected_until.is_some() || h.times_ejected > 0);
        }
        let h = map.entry(addr).or_default();
        if h.ejected_until.is_some() {
            return;
        }
        // Envoy without split_external_local_origin_errors maps local failures to 503.
        let (is_5xx, is_gateway, is_local) = match outcome {
            Outcome::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504), false),
            Outcome::LocalFailure if p.split_local_origin => (false, false, true),
            Outcome::LocalFailure => (true, true, false),
        };
        let mut fired = None;
        if is_local {
            h.consecutive_local += 1;
            if p.consecutive_local_origin > 0 && h.consecutive_local >= p.consecutive_local_origin {
                fired = Some(Detector::LocalOrigin);
            }
        } else {
            if matches!(outcome, Outcome::Status(_)) {
                // A response means the connection worked.
                h.consecutive_local = 0;
            }
            if is_5xx {
                h.consecutive_5xx += 1;
            } else {
                h.consecutive_5xx = 0;
            }
            if is_gateway {
                h.consecutive_gateway += 1;
            } else {
                h.consecutive_gateway = 0;
            }
            if p.consecutive_gateway > 0 && h.consecutive_gateway >= p.consecutive_gateway {
                fired = Some(Detector::Gateway);
            } else if p.consecutive_5xx > 0 && h.consecutive_5xx >= p.consecutive_5xx {
                fired = Some(Detector::Consecutive5xx);
            }
        }
        let Some(detector) = fired else {
            return;
        };
        let (detected, enforced) = match detector {
            Detector::Consecutive5xx => (
                &stats.outlier_ejections_detected_consecutive_5xx,
                &stats.outlier_ejections_enforced_consecutive_5xx,
            ),
            Detector::Gateway => (
                &stats.outlier_ejections_detected_consecutive_gateway_failure,
                &stats.outlier_ejections_enforced_consecutive_gateway_failure,
            ),
            Detector::LocalOrigin => (
                &stats.outlier_ejections_detected_consecutive_local_origin_failure,
                &stats.outlier_ejections_enforced_consecutive_local_origin_failure,
            ),
        };
        detected.fetch_add(1, Ordering::Relaxed);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        h.consecutive_local = 0;
        // Envoy: eject only while (ejected + 1) / hosts stays within maxEjectionPercent.
        let ejected = self.ejected.load(Ordering::Relaxed);
        let hosts = hosts.max(1) as u64;
        if (ejected + 1) * 100 > u64::from(p.max_ejection_percent) * hosts {
            stats
                .outlier_ejections_overflow
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        h.times_ejected = h.times_ejected.saturating_add(1);
        let time = p
            .base_ejection_time
            .saturating_mul(h.times_ejected)
            .min(p.max_ejection_time.max(p.base_ejection_time));
        h.ejected_until = Some(Instant::now() + time);
        drop(map);
        self.ejected.fetch_add(1, Ordering::Relaxed);
        stats
            .outlier_ejections_active
            .fetch_add(1, Ordering::Relaxed);
        stats
            .outlier_ejections_enforced_total
            .fetch_add(1, Ordering::Relaxed);
        enforced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%addr, ?detector, ejection = ?time, "outlier detection ejected an upstream address");
        self.start_timer(stats);
    }

    /// Whether `addr` is ejected now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&addr).is_some_and(|h| h.ejected_until.is_some())
    }

    /// Addresses ejected now, for `/clusters`.
    pub fn ejected_addresses(&self) -> Vec<SocketAddr> {
        let map = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<SocketAddr> = map
            .iter()
            .filter(|(_, h)| h.ejected_until.is_some())
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        v
    }

    /// Starts the interval timer (one per cluster, while anything is ejected or remembered).
    fn start_timer(self: &Arc<Self>, stats: &Arc<ClusterStats>) {
        if self.timer_running.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.timer_running.store(false, Ordering::Relaxed);
            return;
        };
        let me: Weak<Outlier> = Arc::downgrade(self);
        let stats = stats.clone();
        let every = self.policy.interval.max(Duration::from_millis(10));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = me.upgrade() else {
                    return;
                };
                if !me.tick(&stats) {
                    me.timer_running.store(false, Ordering::Relaxed);
                    return;
                }
            }
        });
    }

    /// One interval: brings back addresses whose ejection is over, and lowers the multiplier
    /// of those that stayed healthy. Returns whether the timer is still needed.
    fn tick(&self, stats: &ClusterStats) -> bool {
        let now = Instant::now();
        let mut map = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut back = 0;
        for (addr, h) in map.iter_mut() {
            match h.ejected_until {
                Some(t) if t <= now => {
                    h.ejected_until = None;
                    back += 1;
                    tracing::info!(%addr, "outlier detection brought an upstream address back");
                }
                Some(_) => {}
                None => h.times_ejected = h.times_ejected.saturating_sub(1),
            }
        }
        let needed = map
            .values()
            .any(|h| h.ejected_until.is_some() || h.times_ejected > 0);
        drop(map);
        if back > 0 {
            self.ejected.fetch_sub(back, Ordering::Relaxed);
            stats
                .outlier_ejections_active
                .fetch_sub(back, Ordering::Relaxed);
        }
        needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            max_ejection_percent: 100,
            base_ejection_time: Duration::from_secs(30),
            ..OutlierPolicy::default()
        }
    }

    #[test]
    fn three_consecutive_5xx_eject_and_a_success_resets() {
        let o = Arc::new(Outlier::new(policy()));
        let s = Arc::new(ClusterStats::default());
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        o.report(a, Outcome::Status(503), 2, &s);
        o.report(a, Outcome::Status(500), 2, &s);
        o.report(a, Outcome::Status(200), 2, &s);
        o.report(a, Outcome::Status(503), 2, &s);
        o.report(a, Outcome::LocalFailure, 2, &s);
        assert!(!o.is_ejected(a));
        o.report(a, Outcome::Status(502), 2, &s);
        assert!(o.is_ejected(a), "503, reset (counted as 503), 502");
        assert_eq!(s.outlier_ejections_active.load(Ordering::Relaxed), 1);
        assert_eq!(
            s.outlier_ejections_enforced_consecutive_5xx
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn max_ejection_percent_bounds_ejections() {
        let o = Arc::new(Outlier::new(OutlierPolicy {
            max_ejection_percent: 10,
            ..policy()
        }));
        let s = Arc::new(ClusterStats::default());
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        for _ in 0..3 {
            o.report(a, Outcome::Status(503), 3, &s);
        }
        assert!(!o.is_ejected(a), "1 of 3 hosts is 33% > 10%");
        assert_eq!(s.outlier_ejections_overflow.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn split_local_origin_counts_apart() {
        let o = Arc::new(Outlier::new(OutlierPolicy {
            split_local_origin: true,
            consecutive_local_origin: 2,
            ..policy()
        }));
        let s = Arc::new(ClusterStats::default());
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        o.report(a, Outcome::Status(503), 1, &s);
        o.report(a, Outcome::Status(503), 1, &s);
        o.report(a, Outcome::LocalFailure, 1, &s);
        assert!(!o.is_ejected(a));
        o.report(a, Outcome::LocalFailure, 1, &s);
        assert!(o.is_ejected(a));
        assert_eq!(
            s.outlier_ejections_enforced_consecutive_local_origin_failure
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn the_interval_brings_an_address_back() {
        let o = Arc::new(Outlier::new(OutlierPolicy {
            base_ejection_time: Duration::ZERO,
            ..policy()
        }));
        let s = Arc::new(ClusterStats::default());
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        for _ in 0..3 {
            o.report(a, Outcome::Status(500), 1, &s);
        }
        assert!(o.is_ejected(a));
        assert!(o.tick(&s), "the multiplier is still remembered");
        assert!(!o.is_ejected(a));
        assert_eq!(s.outlier_ejections_active.load(Ordering::Relaxed), 0);
    }
}
