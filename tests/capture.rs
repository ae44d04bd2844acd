//! A real sidecar in a network namespace as real as a pod's: `egret capture` installs the NAT
//! rules an init container would, egret runs as uid 1337 inside the namespace, and unmodified
//! clients (curl, python's urllib, redis-cli; no proxy variables) reach "internet" hosts on
//! the other side of a veth pair through egret's DNS proxy and outbound listener, never
//! knowing egret is there. Root only (CI runs as root and sets EGRET_REQUIRE_NETNS, so these
//! never skip there).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use support::netns::Netns;
use support::*;

const ORACLE: &str = "www.oracle.com";

/// The wrapper that runs a command inside `ns` as egret's uid/gid (Istio's 1337).
fn as_proxy(ns: &Netns) -> Vec<String> {
    [
        "ip",
        "netns",
        "exec",
        &ns.name,
        "setpriv",
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `egret capture ARGS` inside the namespace (as its init container would run it).
fn capture(ns: &Netns, args: &[&str]) {
    // TEMPORARY until `egret capture` lands.
    let _ = args;
    for r in [
        "-t nat -A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN",
        "-t nat -A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053",
        "-t nat -A OUTPUT -o lo -j RETURN",
        "-t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN",
        "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        let mut a = vec!["iptables"];
        a.extend(r.split(' '));
        ns.exec_ok(&a);
    }
}

/// A directory uid 1337 can read (tempdirs are 0700), with `files` written into it.
fn readable_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    dir
}

fn seed(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/seeds")
            .join(name),
    )
    .expect("seed manifest")
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// Runs a command in the namespace with no environment but PATH (no proxy variables), bounded.
fn app(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "env",
        "-i",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "timeout",
        "20",
    ];
    all.extend_from_slice(args);
    let out = ns.exec(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real python3 (not a pyenv shim, which needs its environment).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Seed 01 verbatim: the app calls `http://www.oracle.com/`, the name resolves through
/// egret's DNS proxy to a VIP, the connection is redirected to egret, which originates TLS on
/// 443 to the "internet" origin (that answers 301 on port 80, as the real one does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_seed_through_capture_and_the_dns_proxy() {
    let Some(ns) = Netns::create("orcl").map(std::sync::Arc::new) else {
        return;
    };
    let internet = IpAddr::V4(ns.host_ip);
    let pki = Pki::new("capture");
    let origin = start_tls_at(
        UpstreamOptions::from_leaf(&pki.server_leaf(&[ORACLE]), "oracle-443"),
        SocketAddr::new(internet, 443),
    )
    .await;
    let l80 = tokio::net::TcpListener::bind((internet, 80))
        .await
        .expect("bind :80 on the internet side");
    let plain = start_scripted_on(l80, "oracle-80", std::sync::Arc::new(|_| Act::Status(301)));
    let dns = support::TestDns::start_on(SocketAddr::new(internet, 53)).await;
    dns.set(ORACLE, &[internet], 300);
    ns.set_resolv_conf(ns.host_ip);

    let dir = readable_dir(&[
        ("oracle-se.yaml", &seed("oracle-se.yaml")),
        ("oracle-dr.yaml", &seed("oracle-dr.yaml")),
        ("bundle.pem", &pki.root_pem()),
    ]);
    capture(&ns, &["--dns-capture"]);
    let mut wrapper = as_proxy(&ns);
    let (se, dr, bundle) = (
        path(&dir, "oracle-se.yaml"),
        path(&dir, "oracle-dr.yaml"),
        path(&dir, "bundle.pem"),
    );
    let args = [
        "run",
        "-c",
        &se,
        "-c",
        &dr,
        "--dns-capture",
        "--ca-bundle",
        &bundle,
        "--access-log",
        "-",
    ];
    let w: Vec<&str> = wrapper.iter_mut().map(|s| s.as_str()).collect();
    let sidecar = EgretProcess::start_wrapped(&w, &args);

    // curl, knowing nothing of egret.
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || app(&ns, &["curl", "-sS", "-D", "-", "http://www.oracle.com/"])).await
    };
    assert_eq!(code, 0, "curl: {err}\negret: {:#?}", sidecar.stderr());
    assert!(out.contains("hello from oracle-443"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-upstream-sni: www.oracle.com"),
        "{out}"
    );
    assert_eq!(plain.count(), 0, "nothing reached port 80");
    let line = LogLine::parse(&sidecar.wait_stdout(1)[0]);
    let local: SocketAddr = line.downstream_local.parse().expect("downstream local");
    let IpAddr::V4(vip) = local.ip() else {
        panic!("{line:?}")
    };
    assert_eq!(
        (vip.octets()[0], vip.octets()[1], local.port()),
        (240, 240, 80),
        "{line:?}"
    );
    assert_eq!(
        (line.cluster.as_str(), line.route.as_str(), line.code),
        ("outbound|80||www.oracle.com", "default", 200)
    );
    assert_eq!(line.upstream_host, origin.addr.to_string());
    // egret's own connection to 443 was not captured back into itself.
    assert_eq!(origin.handshakes(), 1);
    assert_eq!(sidecar.wait_stdout(1).len(), 1, "one access-log line");

    // python's urllib, no proxy variables.
    let py = python();
    let script = "import urllib.request as u; print(u.urlopen('http://www.oracle.com/', timeout=10).read().decode())";
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || app(&ns, &[&py, "-c", script])).await
    };
    assert_eq!(code, 0, "python: {err}");
    assert!(out.contains("hello from oracle-443"), "{out}");
    // The VIP is the DNS proxy's, stable: the app resolved the same address twice.
    let second = LogLine::parse(&sidecar.wait_stdout(2)[1]);
    assert_eq!(second.downstream_local, line.downstream_local);
    drop(sidecar);
    drop(dns);
}
