//! Composition root: builds the runtime from a `Config`, binds every listener (or fails), and
//! spawns the accept loops. Tests start egret in-process through [`build`] on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access_log::{AccessLog, LogFormat, Sink};
use crate::config::{AccessLogPath, Config, ConfigError, Problem};
use crate::dns::Dns;
use crate::listener;
use crate::proxy::Runtime;
use crate::tls::TlsContexts;
use crate::upstream::{ClusterPool, UpstreamCtx};

/// Why egret could not start.
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

/// Builds the runtime (TLS material, DNS, pools, access log) for a config. Warnings found while
/// loading TLS material are appended to `warnings`.
pub fn runtime(config: Config, warnings: &mut Vec<Problem>) -> Result<Runtime, StartError> {
    let tls = TlsContexts::build(&config, warnings)?;
    let listener_tls = tls
        .by_listener
        .iter()
        .map(|c| c.clone().map(tokio_rustls::TlsAcceptor::from))
        .collect();
    let dns = Arc::new(Dns::new(&config.dns, &config.upstream_overrides.resolve));
    let pools = config
        .clusters
        .iter()
        .zip(tls.by_cluster)
        .map(|(c, t)| Arc::new(ClusterPool::new(c.clone(), t)))
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
    let access_log = match &config.access_log.path {
        AccessLogPath::Stdout => AccessLog::start(Sink::Stdout, format),
        AccessLogPath::File(p) => AccessLog::start(Sink::File(p.clone()), format),
        AccessLogPath::Off => Ok(AccessLog::disabled()),
    }
    .map_err(StartError::AccessLog)?;
    Ok(Runtime {
        upstream: UpstreamCtx {
            dns,
            overrides: config.upstream_overrides.clone(),
        },
        config: Arc::new(config),
        pools,
        access_log: Arc::new(access_log),
        listener_tls,
    })
}

/// A running egret.
pub struct Bound {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub state: Arc<ArcSwap<Runtime>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bound {
    /// The bound address of a listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, lets in-flight requests finish for up to `deadline`, flushes the log.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(deadline + Duration::from_secs(1), t).await;
        }
        self.state.load().access_log.flush();
    }

    /// Waits until every queued access-log line is written.
    pub fn flush_access_log(&self) {
        self.state.load().access_log.flush();
    }
}

/// Builds the runtime and binds every listener. Listeners with port 0 get an ephemeral port
/// (see [`Bound::listeners`]).
pub async fn build(config: Config, drain: Duration) -> Result<(Bound, Vec<Problem>), StartError> {
    let mut warnings = config.warnings.clone();
    let rt = runtime(config, &mut warnings)?;
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for l in &rt.config.listeners {
        let sock = listener::bind(l.address).map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.address,
            source,
        })?;
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.address,
            source,
        })?;
        bound.push((l.name.clone(), addr));
        sockets.push(sock);
    }
    let state = Arc::new(ArcSwap::from_pointee(rt));
    let (tx, rx) = watch::channel(false);
    let tasks = sockets
        .into_iter()
        .enumerate()
        .map(|(i, sock)| {
            tokio::spawn(listener::serve_http(
                sock,
                i,
                state.clone(),
                rx.clone(),
                drain,
            ))
        })
        .collect();
    Ok((
        Bound {
            listeners: bound,
            state,
            shutdown: tx,
            tasks,
        },
        warnings,
    ))
}
