//! `egret capture`: the NAT rules istio-init installs, for the pod's init container. Flags are
//! Istio's (`istio-iptables`' long names spelled egret's way, with its short letters), and the
//! pod annotations that set them in Istio are named in each flag's help.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, ValueEnum};

use crate::capture::rules::{self, DnsCapture, Include, Spec};
use crate::capture::{self, Backend};

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Remove egret's rules instead (Istio's istio-clean-iptables).
    #[arg(long, alias = "cleanup")]
    pub remove: bool,
    /// Print the exact rules (iptables-restore / nft input) and change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// egret's uid: its own connections are never redirected (Istio: 1337). Comma-separated.
    #[arg(short = 'u', long, value_name = "UID[,UID]", default_value = "1337")]
    pub proxy_uid: String,
    /// egret's gid (Istio: 1337; default: the uids). Comma-separated.
    #[arg(short = 'g', long, value_name = "GID[,GID]")]
    pub proxy_gid: Option<String>,
    /// The outbound listener's port (egret's --outbound-listen; Istio's 15001).
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Destinations redirected: `*` or CIDRs (annotation
    /// traffic.sidecar.istio.io/includeOutboundIPRanges).
    #[arg(
        short = 'i',
        long,
        value_name = "CIDRS",
        default_value = "*",
        alias = "include-outbound-ip-ranges"
    )]
    pub include_outbound_cidrs: String,
    /// Destinations never redirected (traffic.sidecar.istio.io/excludeOutboundIPRanges).
    #[arg(
        short = 'x',
        long,
        value_name = "CIDRS",
        default_value = "",
        alias = "exclude-outbound-ip-ranges"
    )]
    pub exclude_outbound_cidrs: String,
    /// Ports redirected whatever the destination
    /// (traffic.sidecar.istio.io/includeOutboundPorts).
    #[arg(short = 'q', long, value_name = "PORTS", default_value = "")]
    pub include_outbound_ports: String,
    /// Ports never redirected (traffic.sidecar.istio.io/excludeOutboundPorts).
    #[arg(short = 'o', long, value_name = "PORTS", default_value = "")]
    pub exclude_outbound_ports: String,
    /// Also send the app's DNS (UDP and TCP port 53) to egret's DNS proxy, as Istio's
    /// ISTIO_META_DNS_CAPTURE=true (which also turns this on).
    #[arg(long, alias = "redirect-dns", env = "ISTIO_META_DNS_CAPTURE", action = ArgAction::SetTrue)]
    pub dns_capture: bool,
    /// The DNS proxy's port (egret's --dns-listen, 127.0.0.1:15053 by default).
    #[arg(long, value_name = "PORT", default_value_t = 15053)]
    pub dns_port: u16,
    /// Capture UDP DNS to any server, not only the resolv.conf nameservers (Istio's default).
    #[arg(long, alias = "capture-all-dns")]
    pub dns_capture_all: bool,
    /// Where the nameservers whose UDP DNS is captured are read.
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Which tool writes the rules: iptables (iptables-restore) if installed, else nft.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Auto,
    Iptables,
    Nft,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Iptables => Backend::Iptables,
            BackendArg::Nft => Backend::Nft,
        }
    }
}

fn ids(flag: &str, s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{flag}: `{p}` is not a numeric id"))
        })
        .collect()
}

fn field<T>(flag: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{flag}: {e}"))
}

/// The validated rule set the flags describe.
pub fn spec(a: &CaptureArgs) -> Result<Spec, String> {
    let proxy_uid = ids("--proxy-uid", &a.proxy_uid)?;
    let proxy_gid = match &a.proxy_gid {
        Some(g) => ids("--proxy-gid", g)?,
        None => proxy_uid.clone(),
    };
    if proxy_uid.is_empty() && proxy_gid.is_empty() {
        return Err(
            "--proxy-uid/--proxy-gid: at least one id is needed, or egret's own \
                    connections would be redirected back into it"
                .into(),
        );
    }
    let dns = if a.dns_capture {
        let servers = if a.dns_capture_all {
            Vec::new()
        } else {
            match std::fs::read_to_string(&a.resolv_conf) {
                Ok(t) => rules::resolv_conf_servers(&t),
                Err(e) => {
                    return Err(format!(
                        "--dns-capture: cannot read {} ({e}); pass --resolv-conf FILE or \
                         --dns-capture-all",
                        a.resolv_conf.display()
                    ));
                }
            }
        };
        if servers.is_empty() && !a.dns_capture_all {
            return Err(format!(
                "--dns-capture: {} names no nameserver; pass --dns-capture-all to capture DNS \
                 to any server",
                a.resolv_conf.display()
            ));
        }
        Some(DnsCapture {
            port: a.dns_port,
            servers,
        })
    } else {
        None
    };
    Ok(Spec {
        proxy_uid,
        proxy_gid,
        outbound_port: a.outbound_port,
        include_cidrs: field(
            "--include-outbound-cidrs",
            Include::parse(&a.include_outbound_cidrs),
        )?,
        exclude_cidrs: field(
            "--exclude-outbound-cidrs",
            rules::parse_cidrs(&a.exclude_outbound_cidrs),
        )?,
        include_ports: field(
            "--include-outbound-ports",
            rules::parse_ports(&a.include_outbound_ports),
        )?,
        exclude_ports: field(
            "--exclude-outbound-ports",
            rules::parse_ports(&a.exclude_outbound_ports),
        )?,
        dns,
    })
}

/// `egret capture [--remove] [--dry-run] ...`: exit 0 when done, 1 when it failed (the message
/// says what is missing), 2 for bad flags.
pub fn run(a: &CaptureArgs) -> ExitCode {
    let spec = if a.remove {
        None
    } else {
        match spec(a) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("egret capture: {e}");
                return ExitCode::from(2);
            }
        }
    };
    if a.dry_run {
        print!("{}", capture::dry_run(spec.as_ref(), a.backend.into()));
        return ExitCode::SUCCESS;
    }
    match capture::run(spec.as_ref(), a.backend.into()) {
        Ok(summary) => {
            println!("egret capture: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret capture: {e}");
            ExitCode::FAILURE
        }
    }
}
