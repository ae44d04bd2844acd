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
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Configuration file or directory (egret YAML or Istio manifests); repeatable.
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Address of the outbound listener (default 127.0.0.1:15001).
    #[arg(long, value_name = "ADDR")]
    outbound_listen: Option<SocketAddr>,
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
    /// What to do with hosts that are not declared: REGISTRY_ONLY (502) or ALLOW_ANY (pass through).
    #[arg(long, value_name = "POLICY")]
    outbound_policy: Option<String>,
    /// Access log destination: a file path, `-` or /dev/stdout (default), or `off`.
    #[arg(long, value_name = "PATH|-")]
    access_log: Option<String>,
    /// Worker threads (default: one per CPU; 1 runs everything on one thread).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, value_name = "DURATION", default_value = "45s")]
    drain_duration: String,
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
    /// The gateway pod's labels, which Gateway selectors match (repeatable).
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
    /// Bind Gateway server port PORT on BIND instead (like a Service targetPort; 0 = any free
    /// port) (repeatable).
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (check, args, sub) = match cli.command {
        Some(Command::Run(a)) => (false, a, matches.subcommand_matches("run")),
        Some(Command::Check(a)) => (true, a, matches.subcommand_matches("check")),
        None => (false, cli.run, Some(&matches)),
    };
    init_tracing(&args.log_level);

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
    let drain = match config::spec::Dur::parse(&args.drain_duration) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("egret: --drain-duration {e}");
            return ExitCode::from(2);
        }
    };
    let sources = if args.config.is_empty() {
        vec![Source::embedded_default()]
    } else {
        let mut all = Vec::new();
        for (i, path) in args.config.iter().enumerate() {
            match config::read_sources(std::slice::from_ref(path)) {
                Ok(mut s) => {
                    for src in &mut s {
                        src.params = placed.per_config.get(i).cloned().unwrap_or_default();
                    }
                    all.extend(s);
                }
                Err(e) => {
                    eprint!("egret: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        all
    };
    let cfg = match config::load(&sources, &overrides) {
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

    let threads = args
        .concurrency
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
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
    rt.block_on(run(cfg, drain))
}

async fn run(cfg: config::Config, drain: Duration) -> ExitCode {
    let describe = cfg.describe();
    let (bound, warnings) = match egret::app::build(cfg, drain).await {
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
    for (name, addr) in &bound.listeners {
        eprintln!("egret: listening on {addr} (listener {name})");
    }

    let signals = wait_for_signals(&bound).await;
    eprintln!("egret: {signals}; draining (up to {drain:?})");
    bound.shutdown(drain).await;
    eprintln!("egret: stopped");
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signals(bound: &egret::app::Bound) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM received",
            _ = int.recv() => return "SIGINT received",
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                bound.state.load().access_log.reopen();
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_bound: &egret::app::Bound) -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
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

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
