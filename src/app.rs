//! Composition root: builds the runtime from a `Config`, binds every listener (or fails), runs
//! the accept loops and the operational servers, swaps in new configurations (reload) and
//! drains on shutdown. Tests start egret in-process through [`build`] on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::access_log::{AccessLog, LogFormat, Sink};
use crate::admin::{self, Command, LogLevelHandle, Ops, Server};
use crate::config::{AccessLogPath, Config, ConfigError, Problem};
use crate::dns::Dns;
use crate::listener;
use crate::metrics::{CertExpiry, Metrics, Workload};
use crate::runtime::{Health, OwnAddrs, Runtime};
use crate::tls::TlsContexts;
use crate::upstream::{ClusterPool, UpstreamCtx};

/// Why egret could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} (listener \"{name}\"): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    AccessLog(std::io::Error),
}

/// Addresses of the operational servers (`None` = off).
#[derive(Clone, Debug, Default)]
pub struct OpsAddrs {
    pub ready: Option<SocketAddr>,
    pub stats: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Called with (server name, bound address).
pub type Announce = Arc<dyn Fn(&str, SocketAddr) + Send + Sync>;

/// A bound listener socket waiting for its accept loop: (key, name, bound address, socket).
type Prepared = (Arc<str>, String, SocketAddr, tokio::net::TcpListener);

/// How the process runs.
#[derive(Clone)]
pub struct Options {
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// How long egret keeps accepting after readiness turns 503 (so load balancers notice).
    pub drain_grace: Duration,
    /// The largest request head a listener accepts (bytes; `431` past it).
    pub max_request_head: usize,
    /// Open connections per listener (`--max-connections`); `None`: unlimited, as Envoy.
    pub max_connections: Option<usize>,
    pub ops: OpsAddrs,
    /// The DNS proxy's address (UDP and TCP), `--dns-capture` / `--dns-listen`.
    pub dns_listen: Option<SocketAddr>,
    pub log_level: Option<LogLevelHandle>,
    pub workload: Workload,
    /// Called with (server name, address) as soon as each operational server is bound, before
    /// the configuration's TLS material is loaded (so readiness can be watched from the start).
    pub announce: Option<Announce>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drain: Duration::from_secs(45),
            drain_grace: Duration::from_secs(0),
            max_request_head: crate::http::server::DEFAULT_MAX_REQUEST_HEAD,
            max_connections: None,
            ops: OpsAddrs::default(),
            dns_listen: None,
            log_level: None,
            workload: Workload::default(),
            announce: None,
        }
    }
}

/// What lives for the whole process, across reloads.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Where egret listens (proxy listeners and operational servers).
    pub own: Arc<OwnAddrs>,
}

/// Builds the runtime (TLS material, DNS, pools, access log) for a config. Warnings found while
/// loading TLS material are appended to `warnings`. Pools of `previous` whose cluster and TLS
/// material did not change are kept (with their warm connections).
pub fn runtime(
    config: Config,
    shared: &Shared,
    previous: Option<&Runtime>,
    warnings: &mut Vec<Problem>,
) -> Result<Runtime, StartError> {
    let tls = TlsContexts::build(&config, warnings)?;
    let listener_tls = tls
        .by_listener
        .iter()
        .map(|c| c.clone().map(tokio_rustls::TlsAcceptor::from))
        .collect();
    let dns = Arc::new(Dns::new(&config.dns, &config.upstream_overrides.resolve));
    let mut certs: Vec<crate::tls::CertInfo> = tls.listener_certs.clone();
    let mut insecure = 0;
    let pools = config
        .clusters
        .iter()
        .zip(tls.by_cluster)
        .map(|(c, t)| {
            if let Some(t) = &t {
                for ci in &t.certs {
                    if !certs
                        .iter()
                        .any(|x| x.source == ci.source && x.subject == ci.subject)
                    {
                        certs.push(ci.clone());
                    }
                }
                if t.policy.insecure_skip_verify {
                    insecure += 1;
                }
            }
            if let Some(p) =
                previous.and_then(|r| r.pools.iter().find(|p| p.cluster.name == c.name))
                && p.same_as(c, t.as_ref())
            {
                return p.clone();
            }
            Arc::new(ClusterPool::new(
                c.clone(),
                t,
                shared.metrics.cluster(&c.name),
            ))
        })
        .collect();
    let format = LogFormat::from_mesh(
        config.access_log.encoding,
        config.access_log.format.as_deref(),
    )
    .map_err(|e| {
        ConfigError::single(
            &crate::config::Origin::file("access log"),
            "accessLogFormat",
            e,
            None,
        )
    })?;
    // A reload with the same destination keeps the writer (no reopen, no lost lines).
    let access_log = match previous {
        Some(p)
            if p.config.access_log.path == config.access_log.path
                && p.access_log.format_is(&format) =>
        {
            p.access_log.clone()
        }
        _ => Arc::new(
            match &config.access_log.path {
                AccessLogPath::Stdout => AccessLog::start(Sink::Stdout, format),
                AccessLogPath::File(p) => AccessLog::start(Sink::File(p.clone()), format),
                AccessLogPath::Off => Ok(AccessLog::disabled()),
            }
            .map_err(StartError::AccessLog)?,
        ),
    };
    if let Ok(mut d) = shared.metrics.access_log_dropped.write() {
        *d = Some(access_log.dropped.clone());
    }
    if let Ok(mut c) = shared.metrics.certs.write() {
        *c = certs
            .iter()
            .map(|ci| CertExpiry {
                role: ci.role,
                source: ci.source.clone(),
                subject: ci.subject.clone(),
                not_after: ci.not_after,
            })
            .collect();
    }
    shared.metrics.insecure_destinations.store(
        insecure + config.plaintext_tls_ports as u64,
        Ordering::Relaxed,
    );
    let listener_index = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.key(), i))
        .collect();
    Ok(Runtime {
        listener_index,
        upstream: UpstreamCtx {
            dns,
            overrides: config.upstream_overrides.clone(),
            metrics: shared.metrics.clone(),
        },
        config: Arc::new(config),
        pools,
        access_log,
        listener_tls,
        metrics: shared.metrics.clone(),
        health: shared.health.clone(),
        certs,
        own: shared.own.clone(),
    })
}

struct Running {
    /// `Listener::key`: the identity across reloads.
    key: Arc<str>,
    name: String,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running egret.
pub struct App {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    /// (server name, bound address) of the operational servers.
    pub ops: Vec<(String, SocketAddr)>,
    pub state: Arc<ArcSwap<Runtime>>,
    /// The same runtime, for the operational servers (empty until built).
    ops_state: Arc<ArcSwapOption<Runtime>>,
    pub shared: Arc<Shared>,
    /// Requests from the admin API (`/quitquitquit`, `/drain_listeners`).
    pub commands: mpsc::UnboundedReceiver<Command>,
    running: Vec<Running>,
    ops_stop: watch::Sender<bool>,
    ops_tasks: Vec<JoinHandle<()>>,
    options: Options,
}

/// Binds the operational servers, builds the runtime and binds every listener. Listeners with
/// port 0 get an ephemeral port (see [`App::listeners`]).
pub async fn build(config: Config, options: Options) -> Result<(App, Vec<Problem>), StartError> {
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::default()),
        own: Arc::new(OwnAddrs::default()),
    });
    if let Ok(mut w) = shared.metrics.workload.write() {
        *w = options.workload.clone();
    }
    // The operational servers come up first, so readiness can say what is pending.
    let mut ops_sockets = Vec::new();
    for (which, addr) in [
        (Server::Ready, options.ops.ready),
        (Server::Stats, options.ops.stats),
        (Server::Admin, options.ops.admin),
    ] {
        if let Some(addr) = addr {
            let sock = admin::bind(addr).map_err(|source| StartError::Bind {
                name: which.name().to_string(),
                addr,
                source,
            })?;
            ops_sockets.push((which, sock));
        }
    }
    // The operational servers run before the runtime exists (readiness says what is pending).
    let ops_state: Arc<ArcSwapOption<Runtime>> = Arc::new(ArcSwapOption::empty());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let ops = Arc::new(Ops {
        state: ops_state.clone(),
        metrics: shared.metrics.clone(),
        health: shared.health.clone(),
        commands: cmd_tx,
        log_level: options.log_level.clone(),
    });
    let (ops_stop, ops_rx) = watch::channel(false);
    let mut ops_bound = Vec::new();
    let mut ops_tasks = Vec::new();
    for (which, sock) in ops_sockets {
        if let Ok(a) = sock.local_addr() {
            ops_bound.push((which.name().to_string(), a));
            if let Some(f) = &options.announce {
                f(which.name(), a);
            }
        }
        ops_tasks.push(tokio::spawn(admin::serve(
            sock,
            which,
            ops.clone(),
            ops_rx.clone(),
        )));
    }
    shared
        .health
        .set_pending(vec!["loading TLS material and binding listeners".into()]);
    let mut warnings = config.warnings.clone();
    let rt = Arc::new(runtime(config, &shared, None, &mut warnings)?);
    ops_state.store(Some(rt.clone()));
    let state = Arc::new(ArcSwap::new(rt));
    let mut app = App {
        listeners: Vec::new(),
        ops: ops_bound,
        ops_state,
        state,
        shared,
        commands: cmd_rx,
        running: Vec::new(),
        ops_stop,
        ops_tasks,
        options,
    };
    if let Some(addr) = app.options.dns_listen {
        app.start_dns_proxy(addr).await?;
    }
    let config = app.state.load().config.clone();
    let socks = app.prepare(&config)?;
    app.start(&config, socks);
    app.shared.health.set_ready();
    Ok((app, warnings))
}

impl App {
    /// Binds the DNS proxy (UDP and TCP on `addr`; port 0 takes one free port for both) and
    /// serves it until shutdown. It answers from the configuration current at each query.
    async fn start_dns_proxy(&mut self, addr: SocketAddr) -> Result<(), StartError> {
        let bind_err = |source| StartError::Bind {
            name: "dns".into(),
            addr,
            source,
        };
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        let tcp = crate::listener::bind(bound).map_err(bind_err)?;
        let rt = self.state.load();
        let upstream = crate::dns::server::upstream_servers(&rt.config.dns.servers);
        tracing::info!(
            "DNS proxy on {bound}: {} declared host(s) answered by egret, the rest forwarded to {upstream:?}",
            rt.config.names.hosts.len()
        );
        let state = self.state.clone();
        let view: crate::dns::server::ViewSource = Arc::new(move || {
            let rt = state.load();
            crate::dns::server::View {
                names: rt.config.names.clone(),
                dns: rt.upstream.dns.clone(),
            }
        });
        self.ops_tasks.push(tokio::spawn(crate::dns::server::serve(
            udp,
            tcp,
            upstream,
            view,
            self.ops_stop.subscribe(),
        )));
        if let Some(f) = &self.options.announce {
            f("dns", bound);
        }
        self.ops.push(("dns".into(), bound));
        Ok(())
    }

    /// The bound address of a listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound address of an operational server (`readiness`, `stats`, `admin`).
    pub fn ops_addr(&self, name: &str) -> Option<SocketAddr> {
        self.ops.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Binds the config's listeners that are not running yet (nothing changes on failure).
    fn prepare(&self, config: &Config) -> Result<Vec<Prepared>, StartError> {
        let mut socks = Vec::new();
        for l in &config.listeners {
            if self.running.iter().any(|r| r.key == l.key()) {
                continue;
            }
            let err = |source| StartError::Bind {
                name: l.name.clone(),
                addr: l.address,
                source,
            };
            let sock = listener::bind(l.address).map_err(err)?;
            let bound = sock.local_addr().map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.address,
                source,
            })?;
            socks.push((l.key(), l.name.clone(), bound, sock));
        }
        Ok(socks)
    }

    /// Starts accept loops on the prepared sockets and stops the listeners the config no
    /// longer has.
    fn start(&mut self, config: &Config, socks: Vec<Prepared>) {
        for (key, name, bound, sock) in socks {
            let (stop, rx) = watch::channel(false);
            let task = tokio::spawn(listener::serve_http(
                sock,
                key.clone(),
                name.clone(),
                self.state.clone(),
                rx,
                self.options.drain,
                listener::Limits {
                    max_head: self.options.max_request_head,
                    max_connections: self.options.max_connections,
                },
            ));
            self.running.push(Running {
                key,
                name,
                bound,
                stop,
                task,
            });
        }
        let keep: Vec<Arc<str>> = config.listeners.iter().map(|l| l.key()).collect();
        for r in self.running.iter().filter(|r| !keep.contains(&r.key)) {
            tracing::info!(
                "listener {} on {} removed by the new configuration; draining it",
                r.name,
                r.bound
            );
            let _ = r.stop.send(true);
        }
        self.running.retain(|r| keep.contains(&r.key));
        self.listeners = config
            .listeners
            .iter()
            .filter_map(|l| {
                self.running
                    .iter()
                    .find(|r| r.key == l.key())
                    .map(|r| (l.name.clone(), r.bound))
            })
            .collect();
        let own = self.running.iter().map(|r| r.bound);
        let own = own.chain(self.ops.iter().map(|(_, a)| *a)).collect();
        self.shared.own.set(own);
    }

    /// Swaps in a new configuration. It is fully validated and its TLS material loaded first;
    /// on any error the running configuration stays (and the failure is counted). Requests in
    /// flight finish on the old configuration; listeners whose address did not change are not
    /// touched.
    pub fn reload(&mut self, config: Config) -> Result<Vec<Problem>, StartError> {
        let result = self.try_reload(config);
        let m = &self.shared.metrics;
        match &result {
            Ok(_) => m.reload_success.fetch_add(1, Ordering::Relaxed),
            Err(_) => m.reload_failure.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn try_reload(&mut self, config: Config) -> Result<Vec<Problem>, StartError> {
        let mut warnings = config.warnings.clone();
        let previous = self.state.load_full();
        let rt = runtime(config, &self.shared, Some(&previous), &mut warnings)?;
        let new_config = rt.config.clone();
        let socks = self.prepare(&new_config)?;
        let rt = Arc::new(rt);
        self.ops_state.store(Some(rt.clone()));
        self.state.store(rt);
        self.start(&new_config, socks);
        Ok(warnings)
    }

    /// `/drain_listeners`: readiness turns 503 and the listeners stop accepting; connections
    /// finish what they have in flight.
    pub fn drain_listeners(&mut self) {
        self.shared.health.set_draining();
        for r in &self.running {
            let _ = r.stop.send(true);
        }
    }

    /// Graceful shutdown: readiness 503 at once, accept for `drain_grace` more (responses then
    /// carry `Connection: close`), stop accepting, let in-flight requests finish for up to
    /// `drain`, flush the access log.
    pub async fn shutdown(self) {
        self.shared.health.set_draining();
        if !self.options.drain_grace.is_zero() {
            tokio::time::sleep(self.options.drain_grace).await;
        }
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        let deadline = self.options.drain + Duration::from_secs(1);
        for r in self.running {
            let _ = tokio::time::timeout(deadline, r.task).await;
        }
        let _ = self.ops_stop.send(true);
        for t in self.ops_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        self.state.load().access_log.flush();
    }

    /// Waits until every queued access-log line is written.
    pub fn flush_access_log(&self) {
        self.state.load().access_log.flush();
    }

    /// The configured drain deadline.
    pub fn drain_duration(&self) -> Duration {
        self.options.drain
    }

    /// Requests in flight, over all clusters.
    pub fn in_flight(&self) -> u64 {
        self.state.load().in_flight()
    }
}

/// Compatibility name used by tests and benches.
pub type Bound = App;
