//! Name resolution: `--resolve` overrides, then a TTL-bounded cache in front of hickory.
//!
//! hickory honours `/etc/hosts` and the system resolver configuration (or the configured
//! servers). Answers are cached for their TTL (clamped to `dns.minTtl`/`dns.maxTtl`); when a
//! refresh fails, the expired answer is served for up to [`STALE_FOR`] (RFC 8767) and the failure
//! is logged, so one DNS hiccup does not take a destination down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::{DnsConfig, IpFamily};

/// How long an expired answer may still be used when refreshing it fails.
pub const STALE_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("dns.nxdomain: {name} does not exist (NXDOMAIN)")]
    NxDomain { name: String },
    #[error("dns.no_records: {name} has no address records")]
    NoRecords { name: String },
    #[error("dns.timeout: no answer for {name} from the name servers")]
    Timeout { name: String },
    #[error("dns.error: resolving {name} failed: {detail}")]
    Other { name: String, detail: String },
}

impl DnsError {
    /// The stable code (first word of the message).
    pub fn code(&self) -> &'static str {
        match self {
            DnsError::NxDomain { .. } => "dns.nxdomain",
            DnsError::NoRecords { .. } => "dns.no_records",
            DnsError::Timeout { .. } => "dns.timeout",
            DnsError::Other { .. } => "dns.error",
        }
    }
}

#[derive(Clone)]
struct Entry {
    addrs: Arc<[IpAddr]>,
    valid_until: Instant,
}

pub struct Dns {
    resolver: TokioResolver,
    overrides: HashMap<String, Arc<[IpAddr]>>,
    cache: RwLock<HashMap<Box<str>, Entry>>,
    min_ttl: Duration,
    max_ttl: Duration,
    family: IpFamily,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

impl Dns {
    /// Builds the resolver. With no servers configured, the system configuration is used; if it
    /// cannot be read, only `/etc/hosts` and `--resolve` answer (and a warning says so).
    pub fn new(cfg: &DnsConfig, overrides: &HashMap<String, Vec<IpAddr>>) -> Dns {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(
                        "cannot read the system DNS configuration ({e}); only /etc/hosts and --resolve will answer. Use --dns-server to name a server"
                    );
                    TokioResolver::builder_with_config(ResolverConfig::default(), provider)
                }
            }
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        opts.use_hosts_file = ResolveHosts::Always;
        opts.positive_min_ttl = Some(cfg.min_ttl);
        opts.positive_max_ttl = Some(cfg.max_ttl);
        opts.negative_max_ttl = Some(Duration::from_secs(5));
        opts.ip_strategy = match cfg.family {
            IpFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
            IpFamily::V4Only => LookupIpStrategy::Ipv4Only,
            IpFamily::V6Only => LookupIpStrategy::Ipv6Only,
        };
        let resolver = match builder.build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot build the DNS resolver ({e}); falling back to /etc/hosts only"
                );
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                );
                b.options_mut().use_hosts_file = ResolveHosts::Always;
                #[allow(clippy::expect_used)]
                b.build()
                    .expect("a resolver without name servers always builds")
            }
        };
        Dns {
            resolver,
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.clone(), Arc::from(v.as_slice())))
                .collect(),
            cache: RwLock::new(HashMap::new()),
            min_ttl: cfg.min_ttl,
            max_ttl: cfg.max_ttl,
            family: cfg.family,
        }
    }

    /// The addresses for `name` (an IP literal resolves to itself).
    pub async fn resolve(&self, name: &str) -> Result<Arc<[IpAddr]>, DnsError> {
        if let Some(a) = self.overrides.get(name) {
            return Ok(a.clone());
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Arc::from([ip].as_slice()));
        }
        let now = Instant::now();
        let stale = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            match cache.get(name) {
                Some(e) if e.valid_until > now => return Ok(e.addrs.clone()),
                Some(e) => Some(e.clone()),
                None => None,
            }
        };
        match self.lookup(name).await {
            Ok(entry) => {
                let addrs = entry.addrs.clone();
                self.cache
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.into(), entry);
                Ok(addrs)
            }
            Err(e) => match stale {
                Some(s) if now.duration_since(s.valid_until) < STALE_FOR => {
                    tracing::warn!(
                        "{e}; using the previous answer for {name} (expired {:?} ago)",
                        now.duration_since(s.valid_until)
                    );
                    Ok(s.addrs)
                }
                _ => Err(e),
            },
        }
    }

    async fn lookup(&self, name: &str) -> Result<Entry, DnsError> {
        // A trailing dot makes the name absolute: no search-domain expansion for external hosts.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else if name.contains('.') {
            format!("{name}.")
        } else {
            name.to_string()
        };
        let lookup = self
            .resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| classify(name, &e))?;
        let mut v4: Vec<IpAddr> = Vec::new();
        let mut v6: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            let list = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
        let addrs: Vec<IpAddr> = match self.family {
            IpFamily::V6Only => v6,
            IpFamily::V4Only => v4,
            IpFamily::Any => v4.into_iter().chain(v6).collect(),
        };
        if addrs.is_empty() {
            return Err(DnsError::NoRecords { name: name.into() });
        }
        let now = Instant::now();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(now)
            .clamp(self.min_ttl, self.max_ttl);
        Ok(Entry {
            addrs: Arc::from(addrs),
            valid_until: now + ttl,
        })
    }
}

fn classify(name: &str, e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain { name: name.into() }
    } else if e.is_no_records_found() {
        DnsError::NoRecords { name: name.into() }
    } else if matches!(e, NetError::Timeout) {
        DnsError::Timeout { name: name.into() }
    } else {
        DnsError::Other {
            name: name.into(),
            detail: e.to_string(),
        }
    }
}
