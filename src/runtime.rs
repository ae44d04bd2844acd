//! What the data path shares while it runs: the [`Runtime`] of one configuration generation
//! (the validated config, the cluster pools, the access log, the listeners' TLS), the
//! [`ConnCtx`] of each downstream connection, and the process's [`Health`].
//!
//! It sits between the wings that serve traffic (`listener`, `proxy`, `admin`) and the ones
//! they drive (`upstream`, `access_log`, `metrics`): every request loads the current `Runtime`
//! once, so a reload swaps all of it at once and no request sees half of two configurations.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::access_log::AccessLog;
use crate::config::{Config, Listener};
use crate::metrics::Metrics;
use crate::upstream::{ClusterPool, UpstreamCtx};

/// Everything a request needs, for one configuration generation.
pub struct Runtime {
    pub config: Arc<Config>,
    pub pools: Vec<Arc<ClusterPool>>,
    pub upstream: UpstreamCtx,
    pub access_log: Arc<AccessLog>,
    /// TLS termination per listener (indexed like `Config::listeners`).
    pub listener_tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Every certificate loaded (for `/certs`).
    pub certs: Vec<crate::tls::CertInfo>,
    /// `Listener::key` -> index in `config.listeners` (looked up per request).
    pub listener_index: crate::FastMap<Arc<str>, usize>,
    /// Where egret itself listens (for the ALLOW_ANY guard).
    pub own: Arc<OwnAddrs>,
}

impl Runtime {
    /// Requests in flight to any cluster (for the drain and `/stats`).
    pub fn in_flight(&self) -> u64 {
        self.pools
            .iter()
            .map(|p| p.stats.rq_active.load(Ordering::Relaxed))
            .sum()
    }

    /// The listener a connection was accepted on, if this configuration still has it.
    pub fn listener(&self, key: &str) -> Option<(usize, &Listener)> {
        let i = *self.listener_index.get(key)?;
        self.config.listeners.get(i).map(|l| (i, l))
    }
}

/// The downstream connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnCtx {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub id: u64,
    /// The listener's key (`Listener::key`).
    pub listener: Arc<str>,
    /// SNI the client sent, on a listener that terminates TLS.
    pub sni: Option<Arc<str>>,
    /// Where the app connected, when the capture rules redirected the connection here (then
    /// `local` is that address too, as Envoy logs `%DOWNSTREAM_LOCAL_ADDRESS%`).
    pub original_dst: Option<SocketAddr>,
}

/// Where egret is in its life.
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    pending: Mutex<Vec<String>>,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Default for Health {
    fn default() -> Self {
        Health {
            state: AtomicU8::new(STARTING),
            pending: Mutex::new(vec!["configuration not loaded yet".into()]),
        }
    }
}

impl Health {
    pub fn set_pending(&self, reasons: Vec<String>) {
        if let Ok(mut p) = self.pending.lock() {
            *p = reasons;
        }
    }

    pub fn set_ready(&self) {
        self.set_pending(Vec::new());
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.state.store(DRAINING, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DRAINING
    }

    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Relaxed) == READY
    }

    /// Envoy's server state word.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            READY => "LIVE",
            DRAINING => "DRAINING",
            _ => "PRE_INITIALIZING",
        }
    }

    /// Why egret is not ready (for `/healthz/ready`).
    pub fn reasons(&self) -> Vec<String> {
        match self.state.load(Ordering::Relaxed) {
            DRAINING => vec!["draining: egret is shutting down".into()],
            _ => self.pending.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }
}

/// The addresses egret's own sockets are bound to (proxy listeners and operational servers),
/// shared by every configuration generation and updated when listeners are bound.
#[derive(Debug, Default)]
pub struct OwnAddrs(RwLock<Vec<SocketAddr>>);

impl OwnAddrs {
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    /// Whether connecting to `to` would reach one of egret's own sockets: the same port, and
    /// the bound address itself, the unspecified address (which connects to this host), or,
    /// for a wildcard bind, any address of this host (one a socket can bind to).
    pub fn reaches(&self, to: SocketAddr) -> bool {
        let ip = to.ip().to_canonical();
        let own = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut wildcard = false;
        for b in own.iter().filter(|b| b.port() == to.port()) {
            let bound = b.ip().to_canonical();
            if bound == ip || ip.is_unspecified() {
                return true;
            }
            wildcard |= bound.is_unspecified();
        }
        wildcard && is_local_address(ip)
    }
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind to it only then.
fn is_local_address(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}
