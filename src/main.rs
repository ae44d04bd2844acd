//! The `egret` command line: `egret` (run on the embedded default), `egret run`, `egret check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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

#[derive(Args, Debug, Clone, Default)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (check, args) = match cli.command {
        Some(Command::Run(a)) => (false, a),
        Some(Command::Check(a)) => (true, a),
        None => (false, cli.run),
    };
    init_tracing(&args.log_level);

    let overrides = match overrides(&args) {
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
        match config::read_sources(&args.config) {
            Ok(s) => s,
            Err(e) => {
                eprint!("egret: {e}");
                return ExitCode::from(1);
            }
        }
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

fn overrides(args: &RunArgs) -> Result<Overrides, String> {
    let mut o = Overrides {
        outbound_listen: args.outbound_listen,
        access_log: args.access_log.clone(),
        ..Overrides::default()
    };
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
