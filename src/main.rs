//! The `egret` command line: `egret` (run on the embedded default), `egret run`, `egret check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use egret::config::istio::Role;
use egret::config::{
    self, ConnectTo, OutboundPolicy, Overrides, Problem, Severity, Source, UpstreamOverrides,
};

#[derive(Parser, Debug)]
#[command(
    name = "egret",
    version,
    about = "A TLS-originating egress proxy: plain HTTP in, verified TLS out (a drop-in for Envoy in Istio's egress jobs)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default). Without --config, the embedded default configuration is used.
    Run(RunArgs),
    /// Validate the configuration, load its certificates and print the effective routes;
    /// exits non-zero on any error.
    Check(RunArgs),
    /// Run with Istio pilot-agent's argument list and pod environment: `egret proxy router
    /// [FLAGS]` (a gateway) or `egret proxy sidecar [FLAGS]`, so an Istio proxy container runs
    /// egret by changing only its image.
    #[command(long_about = PROXY_HELP)]
    Proxy {
        /// `router` or `sidecar`, then pilot-agent's flags and egret's own (`egret run --help`).
        #[arg(
            value_name = "TYPE [FLAGS]",
            num_args = 0..,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// Install (or --remove) the NAT rules that send the pod's outbound TCP (and with
    /// --dns-capture its DNS) to egret, as istio-init does: run it in the pod's init container
    /// (NET_ADMIN). --dry-run prints the exact rules.
    Capture(egret::cli::capture::CaptureArgs),
}

const PROXY_HELP: &str = "\
Run with Istio pilot-agent's argument list and pod environment, so an Istio proxy container
(an egress gateway Deployment's `args: [proxy, router, --domain, ...]`) runs egret by changing
only its image.

`proxy router` is --role gateway, `proxy sidecar` (or no type) --role sidecar. Mapped:
  --domain NS.svc.DOMAIN       --namespace NS (when POD_NAMESPACE is not set), --cluster-domain
  --proxyLogLevel LEVEL        --log-level (warning -> warn, critical -> error; component
                               levels such as ,misc:error are dropped)
  --concurrency N              --concurrency (the same flag)
  --statusPort P               --ready 0.0.0.0:P (default 15021)
  --proxyAdminPort P           --admin 127.0.0.1:P (default 15000)
  --drainDuration D            --drain-duration D
  --meshConfig FILE            --mesh-config FILE (default /etc/istio/config/mesh, if present)
  POD_NAMESPACE                --namespace
  (sidecar)                    --capture: the pod's traffic arrives through `egret capture`'s
                               (istio-init's) REDIRECT rules; ISTIO_META_INTERCEPTION_MODE=NONE:
                               no capture (TPROXY is refused)
  ISTIO_META_DNS_CAPTURE=true  --dns-capture (DNS proxy on 127.0.0.1:15053, VIPs auto-allocated)
  PROXY_CONFIG (YAML or JSON)  concurrency, drainDuration, statusPort, proxyAdminPort
  /etc/istio/pod/labels        --gateway-selector (router) and --workload-label, one per label:
                               a Gateway selects this pod when its selector is a subset
  POD_NAME, INSTANCE_IP, --serviceCluster, ISTIO_META_ROUTER_MODE: named at start-up only
Every other pilot-agent flag (--proxyComponentLogLevel, --log_output_level, --trust-domain,
...) and Istio variable (ISTIO_META_*, JWT_POLICY, CA_ADDR, ...) is accepted and named in one
start-up line. A flag that is neither Istio's nor egret's is an error.

Manifests (egret has no istiod): --config after the type, else $EGRET_CONFIG (paths separated
by ':'), else every *.yaml/*.yml/*.json in /etc/egret (e.g. a mounted ConfigMap). egret's own
flags may follow the type and win over what is derived. Pod paths honour --mount FROM=TO.

`egret check proxy router ...` validates what `egret proxy router ...` would run.";

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Configuration file or directory (egret YAML or Istio manifests); repeatable. Under
    /// `egret proxy`, without it: $EGRET_CONFIG (paths separated by `:`), else /etc/egret.
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Address of the outbound listener (default 127.0.0.1:15001).
    #[arg(long, value_name = "ADDR")]
    outbound_listen: Option<SocketAddr>,
    /// Transparent capture (after `egret capture` in the pod's init container): the outbound
    /// listener routes redirected connections by their original destination (HTTP by Host and
    /// the original port, the app's TLS by SNI, opaque TCP by address), and TCP ports need no
    /// listener of their own. Explicit-proxy clients keep working on the same listener.
    #[arg(long)]
    capture: bool,
    /// Istio's ISTIO_META_DNS_CAPTURE with DNS_AUTO_ALLOCATE: serve DNS on --dns-listen (where
    /// `egret capture --dns-capture` sends the app's queries), answer declared hosts from
    /// egret's own view, and give each host without addresses a stable VIP in 240.240.0.0/16.
    /// Implies --capture.
    #[arg(long)]
    dns_capture: bool,
    /// Where the DNS proxy listens, UDP and TCP (default 127.0.0.1:15053 with --dns-capture;
    /// given alone, it runs the DNS proxy without VIPs).
    #[arg(long, value_name = "ADDR")]
    dns_listen: Option<SocketAddr>,
    /// DNS server, IP or IP:PORT (repeatable); default: the system's resolv.conf.
    #[arg(long = "dns-server", value_name = "ADDR")]
    dns_server: Vec<String>,
    /// Answer HOST with these addresses instead of DNS, like curl's --resolve (repeatable).
    #[arg(long, value_name = "HOST=IP[,IP]")]
    resolve: Vec<String>,
    /// Connect to IP:PORT when the upstream is HOST:PORT, keeping Host, SNI and the verified
    /// name, like curl's --connect-to (repeatable; an empty HOST or PORT matches any).
    #[arg(long = "connect-to", value_name = "HOST:PORT=IP:PORT")]
    connect_to: Vec<String>,
    /// Do not resume TLS sessions with upstreams (every new connection makes a full handshake).
    #[arg(long)]
    no_tls_resumption: bool,
    /// What to do with hosts that are not declared: REGISTRY_ONLY (502) or ALLOW_ANY (pass through).
    #[arg(long, value_name = "POLICY")]
    outbound_policy: Option<String>,
    /// Access log destination: a file path, `-` or /dev/stdout (default), or `off`.
    #[arg(long, value_name = "PATH|-")]
    access_log: Option<String>,
    /// Worker threads (default or 0: the CPUs this process may use, i.e. its cgroup CPU quota
    /// and affinity mask, not the host's core count; 1 runs everything on one thread). Without
    /// it, the MeshConfig's defaultConfig.concurrency applies.
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown (default 45s, or the
    /// MeshConfig's defaultConfig.drainDuration).
    #[arg(long, value_name = "DURATION")]
    drain_duration: Option<String>,
    /// How long egret keeps accepting after readiness turns 503 on shutdown, so load balancers
    /// stop sending first.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    drain_grace: String,
    /// The largest request head (request line and headers) a listener accepts, in KiB; a
    /// larger one is answered 431. Envoy's max_request_headers_kb (default 60; 8 to 8192).
    #[arg(long, value_name = "KIB", default_value_t = 60)]
    max_request_headers_kb: u32,
    /// Open downstream connections per listener. When a listener has N open and another
    /// arrives, egret closes its longest-idle HTTP/1 keep-alive connection to make room, or,
    /// with none idle, closes the new one at once (counted in
    /// envoy_listener_downstream_cx_overflow), like Envoy's listener max_connections. Default
    /// (or 0): unlimited, as Envoy and Istio's sidecar; the open-files limit (ulimit -n) bounds
    /// it then.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_connections: usize,
    /// Readiness server (GET /healthz/ready), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15021")]
    ready: String,
    /// Prometheus server (GET /stats/prometheus, /metrics), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15090")]
    stats: String,
    /// Admin API (keep it on localhost), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    admin: String,
    /// How often configuration and certificate files are checked for changes (0s: only SIGHUP
    /// reloads).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    watch_interval: String,
    /// Log level for egret's own messages (the access log is separate): error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", env = "EGRET_LOG", default_value = "info")]
    log_level: String,
    /// Trust roots for every TLS policy that has no caCertificates (default: webpki roots).
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Read files under FROM from TO instead, like a volume mount (e.g.
    /// /etc/istio/egress-certs=./certs/dev to run pod manifests on a laptop) (repeatable).
    #[arg(long, value_name = "FROM=TO")]
    mount: Vec<String>,

    /// Which proxy egret plays: `sidecar` (the outbound listener serves the mesh) or `gateway`
    /// (one listener per port of the Gateways selected by --gateway-selector).
    #[arg(
        long,
        value_name = "ROLE",
        default_value = "sidecar",
        help_heading = "Istio manifests"
    )]
    role: String,
    /// The gateway pod's labels, which Gateway selectors match: a Gateway is served when its
    /// selector is a subset of them (repeatable). Under `egret proxy router`, without it: the
    /// labels in /etc/istio/pod/labels.
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Istio manifests")]
    gateway_selector: Vec<String>,
    /// Where gateway listeners bind.
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        help_heading = "Istio manifests"
    )]
    listen_address: std::net::IpAddr,
    /// Where the sidecar's TCP listeners bind: each TCP ServiceEntry port is served here at
    /// the same port number (or its --bind-port).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    tcp_listen_address: std::net::IpAddr,
    /// Bind port PORT (a Gateway server port, or a sidecar TCP port) on BIND instead (like a
    /// Service targetPort; 0 = any free port) (repeatable).
    #[arg(long, value_name = "PORT=BIND", help_heading = "Istio manifests")]
    bind_port: Vec<String>,
    /// The proxy's namespace; also the namespace of manifests without one.
    #[arg(
        long,
        value_name = "NS",
        default_value = "default",
        help_heading = "Istio manifests"
    )]
    namespace: String,
    /// The cluster domain short names expand with.
    #[arg(
        long,
        value_name = "DOMAIN",
        default_value = "cluster.local",
        help_heading = "Istio manifests"
    )]
    cluster_domain: String,
    /// The workload's labels, for workloadSelector and sourceLabels (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Istio manifests")]
    workload_label: Vec<String>,
    /// MeshConfig (outboundTrafficPolicy, accessLogFile, accessLogEncoding, accessLogFormat).
    #[arg(long, value_name = "FILE", help_heading = "Istio manifests")]
    mesh_config: Option<PathBuf>,
    /// Directory of mounted Secrets for credentialName (DIR/<name>/tls.crt, tls.key, ca.crt).
    #[arg(long, value_name = "DIR", help_heading = "Istio manifests")]
    credentials_dir: Option<PathBuf>,
    /// OpenShift Template parameters (KEY=VALUE lines). Right after a --config it applies to that
    /// file only; before any --config, to all (repeatable).
    #[arg(long, value_name = "FILE", help_heading = "Istio manifests")]
    param_file: Vec<PathBuf>,
    /// One Template parameter; placed like --param-file (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Istio manifests")]
    param: Vec<String>,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // `egret check proxy ...` checks what `egret proxy ...` would run.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let check_proxy =
        raw.get(1).is_some_and(|a| a == "check") && raw.get(2).is_some_and(|a| a == "proxy");
    let mut matches = Cli::command().get_matches_from(
        raw.iter()
            .enumerate()
            .filter(|(i, _)| !(check_proxy && *i == 1))
            .map(|(_, a)| a.clone()),
    );
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(Command::Capture(a)) = &cli.command {
        return egret::cli::capture::run(a);
    }
    // `egret proxy ...`: translate, then parse egret's own arguments.
    let mut agent_notice = None;
    if let Some(Command::Proxy { args }) = &cli.command {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let t = match egret::cli::translate(args, &vars, &egret_flags()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("egret: {e}");
                return ExitCode::from(2);
            }
        };
        let mut targs = t.args;
        if check_proxy {
            targs[0] = "check".into();
        }
        let argv = std::iter::once(raw.first().cloned().unwrap_or_else(|| "egret".into()))
            .chain(targs.into_iter().map(Into::into));
        matches = Cli::command().get_matches_from(argv);
        cli = match Cli::from_arg_matches(&matches) {
            Ok(c) => c,
            Err(e) => e.exit(),
        };
        agent_notice = Some(t.notice);
    }
    let (check, args, sub) = match cli.command {
        Some(Command::Run(a)) => (false, a, matches.subcommand_matches("run")),
        Some(Command::Check(a)) => (true, a, matches.subcommand_matches("check")),
        Some(Command::Proxy { .. }) => unreachable!("translated above"),
        Some(Command::Capture(_)) => unreachable!("run above"),
        None => (false, cli.run, Some(&matches)),
    };
    let log_level = init_tracing(&args.log_level);
    if let Some(n) = agent_notice {
        eprintln!("egret: {n}");
    }

    let placed = match sub.map(|m| placed_params(m, &args)).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("egret: {e}");
            return ExitCode::from(2);
        }
    };
    let overrides = match overrides(&args, placed.global.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("egret: {e}");
            return ExitCode::from(2);
        }
    };
    let loader = Loader {
        args: args.clone(),
        placed,
        overrides,
    };
    let cfg = match loader.load() {
        Ok(c) => c,
        Err(e) => {
            eprint!("egret: {e}");
            eprintln!("egret: refusing to start with this configuration");
            return ExitCode::from(1);
        }
    };

    if check {
        let mut warnings = cfg.warnings.clone();
        // Load every certificate and key, as start-up would.
        if let Err(e) = egret::tls::TlsContexts::build(&cfg, &mut warnings) {
            eprint!("egret: {e}");
            return ExitCode::from(1);
        }
        print_problems(&warnings);
        print!("{}", cfg.describe());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }

    let options = match app_options(&args, &cfg, &loader.overrides, log_level) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("egret: {e}");
            return ExitCode::from(2);
        }
    };
    let watch_every = match config::spec::Dur::parse(&args.watch_interval) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("egret: --watch-interval {e}");
            return ExitCode::from(2);
        }
    };
    // std's count honours the cgroup CPU quota (v1 and v2) and the affinity mask, so a sidecar
    // limited to one CPU on a 64-core node runs one thread, not 64.
    // --concurrency, else the MeshConfig's defaultConfig.concurrency; 0 in either is "all".
    let asked = match (args.concurrency, cfg.concurrency) {
        (Some(n), _) => Some((n, "--concurrency")),
        (None, Some(n)) => Some((n, "MeshConfig defaultConfig.concurrency")),
        (None, None) => None,
    };
    let (threads, why) = match asked.filter(|(n, _)| *n > 0) {
        Some(n) => n,
        None => (
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            "the CPUs this process may use: cgroup quota and affinity",
        ),
    };
    eprintln!(
        "egret: {threads} worker thread{} ({why})",
        if threads == 1 { "" } else { "s" }
    );
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egret: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(cfg, options, loader, watch_every))
}

/// `egret run`'s flags, for `egret proxy` (which passes them through after Istio's).
fn egret_flags() -> Vec<egret::cli::EgretFlag> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let Some(run) = cmd.find_subcommand("run") else {
        return Vec::new();
    };
    run.get_arguments()
        .filter_map(|a| {
            Some(egret::cli::EgretFlag {
                long: a.get_long()?.to_string(),
                short: a.get_short(),
                takes_value: a.get_action().takes_values(),
            })
        })
        .collect()
}

/// Reads and validates the configuration the command line names (at start and on reload).
struct Loader {
    args: RunArgs,
    placed: Placed,
    overrides: Overrides,
}

impl Loader {
    fn sources(&self) -> Result<Vec<Source>, String> {
        if self.args.config.is_empty() {
            return Ok(vec![Source::embedded_default()]);
        }
        let mut all = Vec::new();
        for (i, path) in self.args.config.iter().enumerate() {
            let mut s =
                config::read_sources(std::slice::from_ref(path)).map_err(|e| e.to_string())?;
            for src in &mut s {
                src.params = self.placed.per_config.get(i).cloned().unwrap_or_default();
            }
            all.extend(s);
        }
        Ok(all)
    }

    fn load(&self) -> Result<config::Config, String> {
        let sources = self.sources()?;
        config::load(&sources, &self.overrides).map_err(|e| e.to_string())
    }

    /// Every file whose change reloads egret: the configuration (files, directory listings,
    /// parameter files, MeshConfig) and the TLS material it refers to.
    fn watched(&self, cfg: &config::Config) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.args.config.clone();
        files.extend(self.args.param_file.iter().cloned());
        files.extend(self.args.mesh_config.iter().cloned());
        for f in &self.args.config {
            if let Ok(rd) = std::fs::read_dir(f) {
                files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        files.extend(cfg.watched_files());
        files.sort();
        files.dedup();
        files
    }
}

/// A fingerprint of files: what they resolve to (following symlinks, so Kubernetes' atomic
/// `..data` swap of a mounted Secret or ConfigMap counts) and their content.
fn fingerprint(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        match std::fs::metadata(f) {
            Ok(m) if m.is_file() => {
                m.len().hash(&mut h);
                m.modified().ok().hash(&mut h);
                if let Ok(bytes) = std::fs::read(f) {
                    bytes.hash(&mut h);
                }
            }
            Ok(m) => m.is_dir().hash(&mut h),
            Err(_) => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

fn parse_ops_addr(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" || v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{flag} \"{v}\": expected IP:PORT or off"))
}

fn app_options(
    args: &RunArgs,
    cfg: &config::Config,
    overrides: &Overrides,
    log_level: Option<egret::admin::LogLevelHandle>,
) -> Result<egret::app::Options, String> {
    // The MeshConfig's drainDuration applies unless --drain-duration is given.
    let drain = match (&args.drain_duration, cfg.drain_duration) {
        (Some(d), _) => config::spec::Dur::parse(d).map_err(|e| format!("--drain-duration {e}"))?,
        (None, Some(d)) => d,
        (None, None) => Duration::from_secs(45),
    };
    let drain_grace =
        config::spec::Dur::parse(&args.drain_grace).map_err(|e| format!("--drain-grace {e}"))?;
    let labels = match overrides.istio.role {
        Role::Gateway => &overrides.istio.gateway_selector,
        Role::Sidecar => &overrides.istio.workload_labels,
    };
    let app = labels
        .get("app")
        .or_else(|| labels.get("istio"))
        .cloned()
        .unwrap_or_default();
    if !(8..=8192).contains(&args.max_request_headers_kb) {
        return Err(format!(
            "--max-request-headers-kb {}: must be between 8 and 8192 (KiB; Envoy's default is 60)",
            args.max_request_headers_kb
        ));
    }
    Ok(egret::app::Options {
        drain,
        drain_grace,
        max_request_head: args.max_request_headers_kb as usize * 1024,
        max_connections: (args.max_connections > 0).then_some(args.max_connections),
        dns_listen: args.dns_listen.or_else(|| {
            args.dns_capture
                .then(|| SocketAddr::from(([127, 0, 0, 1], 15053)))
        }),
        ops: egret::app::OpsAddrs {
            ready: parse_ops_addr("--ready", &args.ready)?,
            stats: parse_ops_addr("--stats", &args.stats)?,
            admin: parse_ops_addr("--admin", &args.admin)?,
        },
        log_level,
        announce: Some(std::sync::Arc::new(|name: &str, addr: SocketAddr| {
            eprintln!("egret: listening on {addr} ({name})");
        })),
        workload: egret::metrics::Workload {
            name: app.clone(),
            namespace: overrides.istio.namespace.clone(),
            app,
            version: labels.get("version").cloned().unwrap_or_default(),
        },
    })
}

async fn run(
    cfg: config::Config,
    options: egret::app::Options,
    loader: Loader,
    watch_every: Duration,
) -> ExitCode {
    let mut watched = loader.watched(&cfg);
    let describe = cfg.describe();
    let (mut app, warnings) = match egret::app::build(cfg, options).await {
        Ok(b) => b,
        Err(e) => {
            eprint!("egret: {e}");
            if !e.to_string().ends_with('\n') {
                eprintln!();
            }
            eprintln!("egret: refusing to start");
            return ExitCode::from(1);
        }
    };
    print_problems(&warnings);
    tracing::debug!("effective routes:\n{describe}");
    for (name, addr) in &app.listeners {
        eprintln!("egret: listening on {addr} (listener {name})");
    }

    let mut seen = fingerprint(&watched);
    let period = if watch_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        watch_every
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut signals = Signals::new();
    let mut commands_open = true;
    let why = loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Sig::Stop(why) => break why,
                Sig::Reopen => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    app.state.load().access_log.reopen();
                }
                Sig::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload(&mut app, &loader, &mut watched, &mut seen);
                }
            },
            // With --admin off nothing sends commands: the closed channel must not be polled
            // again (it is always ready and would spin the loop).
            cmd = app.commands.recv(), if commands_open => match cmd {
                Some(egret::admin::Command::Quit) => break "POST /quitquitquit",
                Some(egret::admin::Command::DrainListeners) => {
                    tracing::info!("POST /drain_listeners: not ready, no longer accepting connections");
                    app.drain_listeners();
                }
                None => commands_open = false,
            },
            _ = tick.tick(), if !watch_every.is_zero() => {
                if fingerprint(&watched) != seen {
                    tracing::info!("a configuration or certificate file changed; reloading");
                    reload(&mut app, &loader, &mut watched, &mut seen);
                }
            }
        }
    };
    eprintln!(
        "egret: {why}; draining (readiness is 503; up to {:?} for requests in flight)",
        app.drain_duration()
    );
    tokio::select! {
        _ = app.shutdown() => {}
        _ = signals.next_stop() => {
            eprintln!("egret: second signal: exiting now");
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("egret: stopped");
    ExitCode::SUCCESS
}

/// Reloads; a configuration that fails to load or validate leaves the running one in place.
fn reload(app: &mut egret::app::App, loader: &Loader, watched: &mut Vec<PathBuf>, seen: &mut u64) {
    let result = loader.load().and_then(|cfg| {
        let files = loader.watched(&cfg);
        app.reload(cfg)
            .map(|w| (w, files))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok((warnings, files)) => {
            print_problems(&warnings);
            *watched = files;
            tracing::info!("configuration reloaded");
        }
        Err(e) => {
            tracing::error!("reload rejected; the previous configuration keeps serving:\n{e}");
        }
    }
    // Either way, do not retry the same content until it changes again.
    *seen = fingerprint(watched);
}

enum Sig {
    Stop(&'static str),
    Reopen,
    Reload,
}

/// SIGTERM/SIGINT (stop), SIGUSR1 (reopen the access log), SIGHUP (reload).
struct Signals {
    #[cfg(unix)]
    inner: Option<[tokio::signal::unix::Signal; 4]>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let inner = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::user_defined1()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => Some([a, b, c, d]),
                _ => None,
            };
            Signals { inner }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        if let Some([term, int, usr1, hup]) = &mut self.inner {
            return tokio::select! {
                _ = term.recv() => Sig::Stop("SIGTERM received"),
                _ = int.recv() => Sig::Stop("SIGINT received"),
                _ = usr1.recv() => Sig::Reopen,
                _ = hup.recv() => Sig::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Sig::Stop("interrupted")
    }

    async fn next_stop(&mut self) {
        loop {
            if let Sig::Stop(_) = self.next().await {
                return;
            }
        }
    }
}

/// Template parameters, placed: those after a `--config` apply to it alone, the others to all.
#[derive(Default)]
struct Placed {
    global: Vec<(String, String)>,
    /// Indexed like `--config`.
    per_config: Vec<Vec<(String, String)>>,
}

fn placed_params(m: &clap::ArgMatches, args: &RunArgs) -> Result<Placed, String> {
    let idx =
        |id: &str| -> Vec<usize> { m.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    let config_idx = idx("config");
    let mut placed = Placed {
        global: Vec::new(),
        per_config: vec![Vec::new(); args.config.len()],
    };
    // The --config a parameter follows (the nearest one before it), if any.
    let owner = |i: usize| config_idx.iter().rposition(|c| *c < i);
    let mut items: Vec<(usize, Vec<(String, String)>)> = Vec::new();
    for (file, i) in args.param_file.iter().zip(idx("param_file")) {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--param-file {}: {e}", file.display()))?;
        items.push((
            i,
            egret::config::k8s::parse_param_file(&text, &file.display().to_string())?,
        ));
    }
    for (p, i) in args.param.iter().zip(idx("param")) {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--param \"{p}\": expected KEY=VALUE"))?;
        items.push((i, vec![(k.trim().to_string(), v.to_string())]));
    }
    items.sort_by_key(|(i, _)| *i);
    for (i, params) in items {
        match owner(i) {
            Some(c) => placed.per_config[c].extend(params),
            None => placed.global.extend(params),
        }
    }
    Ok(placed)
}

fn labels(
    list: &[String],
    flag: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    list.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{flag} \"{l}\": expected KEY=VALUE"))
        })
        .collect()
}

fn overrides(args: &RunArgs, params: Vec<(String, String)>) -> Result<Overrides, String> {
    let mut o = Overrides {
        outbound_listen: args.outbound_listen,
        access_log: args.access_log.clone(),
        ca_bundle: args.ca_bundle.clone(),
        tcp_listen_address: Some(args.tcp_listen_address),
        capture: args.capture || args.dns_capture,
        dns_auto_allocate: args.dns_capture,
        ..Overrides::default()
    };
    for m in &args.mount {
        let (from, to) = m
            .split_once('=')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "--mount \"{m}\": expected FROM=TO, e.g. /etc/istio/egress-certs=./certs/dev"
                )
            })?;
        o.mounts.push((PathBuf::from(from), PathBuf::from(to)));
    }
    let istio = &mut o.istio;
    istio.role = match args.role.as_str() {
        "sidecar" => Role::Sidecar,
        "gateway" => Role::Gateway,
        other => return Err(format!("--role \"{other}\": expected sidecar or gateway")),
    };
    istio.gateway_selector = labels(&args.gateway_selector, "--gateway-selector")?;
    istio.workload_labels = labels(&args.workload_label, "--workload-label")?;
    istio.listen_address = args.listen_address;
    istio.namespace = args.namespace.clone();
    istio.cluster_domain = args.cluster_domain.clone();
    istio.credentials_dir = args.credentials_dir.clone();
    istio.params = params;
    for b in &args.bind_port {
        let (p, to) = b
            .split_once('=')
            .and_then(|(p, t)| Some((p.parse::<u16>().ok()?, t.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("--bind-port \"{b}\": expected PORT=BIND (e.g. 3000=8080, or 3000=0 for any free port)"))?;
        istio.bind_ports.insert(p, to);
    }
    if let Some(m) = &args.mesh_config {
        let text = std::fs::read_to_string(m)
            .map_err(|e| format!("--mesh-config {}: {e}", m.display()))?;
        istio.mesh_config = Some(Source {
            name: m.display().to_string(),
            text,
            base_dir: m.parent().map(std::path::Path::to_path_buf),
            params: Vec::new(),
        });
    }
    for s in &args.dns_server {
        o.dns_servers
            .push(config::native::parse_dns_server(s).map_err(|e| format!("--dns-server: {e}"))?);
    }
    for r in &args.resolve {
        let (host, ips) = UpstreamOverrides::parse_resolve(r)?;
        o.upstream.resolve.entry(host).or_default().extend(ips);
    }
    for c in &args.connect_to {
        o.upstream.connect_to.push(ConnectTo::parse(c)?);
    }
    o.upstream.tls_resumption = !args.no_tls_resumption;
    if let Some(p) = &args.outbound_policy {
        o.outbound_policy =
            Some(OutboundPolicy::parse(p).map_err(|e| format!("--outbound-policy: {e}"))?);
    }
    Ok(o)
}

fn print_problems(problems: &[Problem]) {
    for p in problems {
        match p.severity {
            Severity::Warning => {
                tracing::warn!("{}", p.to_string().trim_start_matches("warning: "))
            }
            Severity::Error => tracing::error!("{}", p.to_string().trim_start_matches("error: ")),
        }
    }
}

fn init_tracing(level: &str) -> Option<egret::admin::LogLevelHandle> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
    Some(std::sync::Arc::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| format!("\"{level}\" is not a log level or filter: {e}"))?;
        let shown = f.to_string();
        handle.reload(f).map_err(|e| e.to_string())?;
        Ok(shown)
    }))
}
