//! Installing and removing `egret capture`'s rules (`rules.rs`) in the current network
//! namespace: with `iptables-restore --noflush` (and `ip6tables-restore` where the kernel has
//! IPv6), or with `nft -f -` where iptables is absent. Each family is one transaction, so a
//! failure leaves that family's table as it was. Runs once, in an init container: blocking
//! `std::process` is what it needs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::{self, Family, Present, Spec};

/// Which tool writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables if installed, else nft.
    Auto,
    Iptables,
    Nft,
}

/// One command and its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    pub args: Vec<&'static str>,
    pub input: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "# {} {}", self.program, self.args.join(" "))?;
        f.write_str(&self.input)
    }
}

/// What went wrong, with what to do about it.
#[derive(Debug)]
pub struct CaptureError(pub String);

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaptureError {}

const NET_ADMIN_HINT: &str = "egret capture changes the network namespace's NAT table, which \
needs the NET_ADMIN capability: in Kubernetes, run it in an init container with \
`securityContext: {capabilities: {add: [NET_ADMIN, NET_RAW]}, runAsUser: 0}`; on a machine, \
as root (e.g. `sudo ip netns exec NS egret capture`)";

/// A program on `PATH`.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The backend `choice` resolves to on this machine, or what is missing.
pub fn resolve(choice: Backend) -> Result<Backend, CaptureError> {
    let iptables = || find("iptables-restore").is_some() && find("iptables-save").is_some();
    let nft = || find("nft").is_some();
    match choice {
        Backend::Iptables if iptables() => Ok(Backend::Iptables),
        Backend::Iptables => Err(CaptureError(
            "--backend iptables: iptables-restore and iptables-save are not on PATH (Debian: \
             apt-get install iptables)"
                .into(),
        )),
        Backend::Nft if nft() => Ok(Backend::Nft),
        Backend::Nft => Err(CaptureError(
            "--backend nft: nft is not on PATH (Debian: apt-get install nftables)".into(),
        )),
        Backend::Auto if iptables() => Ok(Backend::Iptables),
        Backend::Auto if nft() => Ok(Backend::Nft),
        Backend::Auto => Err(CaptureError(
            "neither iptables (iptables-restore, iptables-save) nor nft is on PATH: install one \
             (Debian: apt-get install iptables, or nftables); egret's image has neither, so run \
             `egret capture` from an image that has (e.g. in the init container)"
                .into(),
        )),
    }
}

/// Whether IPv6 rules are written too: the kernel has IPv6 and ip6tables is installed.
fn ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
        && find("ip6tables-restore").is_some()
        && find("ip6tables-save").is_some()
}

/// The steps that install `spec` (or, with `spec` `None`, remove egret's rules) on a table
/// that holds `now` (per family). Also what `--dry-run` prints.
pub fn plan(
    spec: Option<&Spec>,
    backend: Backend,
    now: impl Fn(Family) -> Present,
    with_v6: bool,
) -> Vec<Step> {
    match backend {
        Backend::Nft | Backend::Auto => vec![Step {
            program: "nft",
            args: vec!["-f", "-"],
            input: spec.map_or_else(rules::nft_remove, rules::nft_apply),
        }],
        Backend::Iptables => {
            let mut fams = vec![(Family::V4, "iptables-restore")];
            if with_v6 {
                fams.push((Family::V6, "ip6tables-restore"));
            }
            fams.into_iter()
                .filter_map(|(fam, program)| {
                    let input = match spec {
                        Some(s) => rules::iptables_apply(s, fam, now(fam)),
                        None => rules::iptables_remove(now(fam))?,
                    };
                    Some(Step {
                        program,
                        args: vec!["--noflush"],
                        input,
                    })
                })
                .collect()
        }
    }
}

/// The rules `--dry-run` prints: as they would be applied to tables that hold none of egret's
/// rules yet (reading the current tables needs NET_ADMIN, which a dry run must not).
pub fn dry_run(spec: Option<&Spec>, choice: Backend) -> String {
    let backend = match choice {
        Backend::Auto => resolve(choice).unwrap_or(Backend::Iptables),
        b => b,
    };
    let now = |_| match spec {
        Some(_) => Present::default(),
        // What removing would do if everything were there.
        None => Present {
            tcp_jump: true,
            udp_jump: true,
            chains: true,
        },
    };
    let steps = plan(spec, backend, now, backend == Backend::Iptables);
    steps.iter().map(ToString::to_string).collect()
}

/// Installs `spec` (`None`: removes egret's rules); returns a summary of what was done.
pub fn run(spec: Option<&Spec>, choice: Backend) -> Result<String, CaptureError> {
    let backend = resolve(choice)?;
    if !has_net_admin() {
        return Err(CaptureError(format!(
            "this process lacks CAP_NET_ADMIN. {NET_ADMIN_HINT}"
        )));
    }
    let with_v6 = backend == Backend::Iptables && ipv6();
    let save = |fam: Family| -> Result<Present, CaptureError> {
        let prog = match fam {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        };
        exec(prog, &["-t", "nat"], None).map(|out| Present::from_save(&out))
    };
    let mut now = Vec::new();
    if backend == Backend::Iptables {
        now.push((Family::V4, save(Family::V4)?));
        if with_v6 {
            now.push((Family::V6, save(Family::V6)?));
        }
    }
    let lookup = |fam| {
        now.iter()
            .find(|(f, _)| *f == fam)
            .map(|(_, p)| *p)
            .unwrap_or_default()
    };
    let steps = plan(spec, backend, lookup, with_v6);
    for step in &steps {
        exec(step.program, &step.args, Some(&step.input))?;
    }
    // Read back: the jumps must be there (or gone).
    if backend == Backend::Iptables {
        let fams: &[Family] = if with_v6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        };
        for &fam in fams {
            let p = save(fam)?;
            let want = spec.is_some();
            let dns = spec.is_some_and(|s| s.dns.is_some());
            if p.tcp_jump != want || p.udp_jump != dns {
                return Err(CaptureError(format!(
                    "the {fam:?} nat table does not hold what was written (OUTPUT jumps: tcp \
                     {}, udp {}); another process may be rewriting it",
                    p.tcp_jump, p.udp_jump
                )));
            }
        }
    }
    let tool = match backend {
        Backend::Iptables if with_v6 => "iptables-restore and ip6tables-restore",
        Backend::Iptables => "iptables-restore (IPv4; no IPv6 in this kernel or no ip6tables)",
        _ => "nft (table inet egret)",
    };
    Ok(match spec {
        None if steps.is_empty() => "nothing to remove: no egret rules in this namespace".into(),
        None => format!("removed egret's rules with {tool}"),
        Some(s) => summary(s, tool),
    })
}

fn summary(s: &Spec, tool: &str) -> String {
    let list = |v: &[u32]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = format!(
        "installed with {tool}: outbound TCP -> 127.0.0.1:{} except from uid {} / gid {} and \
         through lo",
        s.outbound_port,
        list(&s.proxy_uid),
        list(&s.proxy_gid)
    );
    if let Some(d) = &s.dns {
        let to = if d.servers.is_empty() {
            "any server".to_string()
        } else {
            d.servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("; DNS (UDP to {to}, TCP port 53) -> :{}", d.port));
    }
    out
}

/// Runs `program args` with `input` on stdin; its stdout, or an error that says why it failed.
fn exec(program: &str, args: &[&str], input: Option<&str>) -> Result<String, CaptureError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CaptureError(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| CaptureError(format!("{program}: writing the rules: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CaptureError(format!("{program}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let denied = [
            "Permission denied",
            "Operation not permitted",
            "must be root",
        ]
        .iter()
        .any(|m| stderr.contains(m));
        let hint = if denied {
            format!(" {NET_ADMIN_HINT}")
        } else {
            String::new()
        };
        return Err(CaptureError(format!(
            "{program} {} failed ({}): {}{hint}",
            args.join(" "),
            out.status,
            stderr.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the effective capability set holds CAP_NET_ADMIN (bit 12), from /proc/self/status.
/// Unknown (no /proc): assumed yes, and the tools say so if not.
fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
