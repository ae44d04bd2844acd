//! Network namespaces for tests that need a pod's network: an "app" namespace joined to the
//! test's own namespace (the "internet") by a veth pair, each test in its own /24 of
//! 10.201.0.0/16 so tests run in parallel. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for
//! `ip netns`). [`Netns::create`] returns `None` with a message when the test cannot run here;
//! with `EGRET_REQUIRE_NETNS` set (CI sets it) it panics instead, so CI never skips.
//!
//! Dropping a [`Netns`] deletes the namespace (and with it the veth pair) and its
//! `/etc/netns/NAME` directory.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

/// One namespace: `name`, with `app_ip` on its veth end; `host_ip` is the test's side.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The namespace's address (its default route goes to `host_ip`).
    pub app_ip: Ipv4Addr,
    /// The address of the test's own end of the veth pair, reachable from the namespace.
    pub host_ip: Ipv4Addr,
    host_if: String,
    etc: PathBuf,
}

static NEXT: AtomicU8 = AtomicU8::new(0);

/// Why tests that need namespaces cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // The effective uid, from the "Uid:" line of /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "not root (euid {euid}): network namespaces need CAP_NET_ADMIN"
        ));
    }
    for tool in ["ip", "iptables-restore", "nft", "setpriv"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!(
                "`{tool}` is not installed (apt-get install -y iproute2 iptables nftables util-linux)"
            ));
        }
    }
    None
}

/// Skips (returns `None` after printing why) or panics under `EGRET_REQUIRE_NETNS`.
pub fn require(test: &str) -> Option<()> {
    match unavailable() {
        None => Some(()),
        Some(why) => {
            assert!(
                std::env::var_os("EGRET_REQUIRE_NETNS").is_none(),
                "{test}: EGRET_REQUIRE_NETNS is set but this machine cannot run it: {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    /// A namespace joined to this one by a veth pair, or `None` (skipped) when not possible.
    /// `label` goes into the names (keep it short: interface names are at most 15 bytes).
    pub fn create(label: &str) -> Option<Netns> {
        require(label)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // The process id keeps concurrent test binaries apart; n the tests of one binary.
        let pid = std::process::id();
        let subnet = ((pid as u8) ^ (n.wrapping_mul(37))).max(1);
        let name = format!("eg-{label}-{pid}-{n}");
        let host_if = format!("egh{}x{n}", pid % 100_000);
        let app_if = format!("ega{}x{n}", pid % 100_000);
        let host_ip = Ipv4Addr::new(10, 201, subnet, 1);
        let app_ip = Ipv4Addr::new(10, 201, subnet, 2);
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name,
            app_ip,
            host_ip,
            host_if,
            etc,
        };
        let name = ns.name.as_str();
        sh(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &app_if,
        ]);
        sh(&["ip", "link", "set", &app_if, "netns", name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &ns.host_if,
        ]);
        sh(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{app_ip}/24"), "dev", &app_if]);
        ns.exec_ok(&["ip", "link", "set", &app_if, "up"]);
        ns.exec_ok(&["ip", "route", "add", "default", "via", &host_ip.to_string()]);
        Some(ns)
    }

    /// Adds another address on the test's side of the veth (a second "internet" host).
    pub fn add_host_ip(&self, last_octet: u8) -> Ipv4Addr {
        let o = self.host_ip.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], last_octet);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &self.host_if,
        ]);
        ip
    }

    /// Writes `/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts over
    /// `/etc/resolv.conf` for the commands it runs.
    pub fn set_resolv_conf(&self, nameserver: Ipv4Addr) {
        std::fs::create_dir_all(&self.etc).expect("mkdir /etc/netns/NAME");
        std::fs::write(
            self.etc.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .expect("write resolv.conf");
    }

    /// `ip netns exec NAME args...` as a `Command` (not yet run).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` in the namespace and returns its output, whatever its status.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }

    /// Runs `args` in the namespace, panicking with its output when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `iptables-save` of the namespace (every table).
    pub fn iptables_save(&self) -> String {
        String::from_utf8_lossy(&self.exec_ok(&["iptables-save"]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
