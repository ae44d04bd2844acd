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

/// `egret capture ARGS` inside the namespace, as its init container would run it; its output.
fn capture(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec![env!("CARGO_BIN_EXE_egret"), "capture"];
    all.extend_from_slice(args);
    let out = ns.exec_ok(&all);
    String::from_utf8_lossy(&out.stdout).into_owned()
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

fn service_entry(name: &str, host: &str, port: u16, proto: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: p-{port}, protocol: {proto}}}]\n  resolution: DNS\n---\n"
    )
}

/// Two redis servers on the same port (two TCP hosts that only their VIPs tell apart), each
/// reached over mutual TLS by a plain redis-cli; the app's own HTTPS routed by SNI; and what
/// nothing declares refused under REGISTRY_ONLY (HTTP 502 `block_all`, TLS and TCP to
/// BlackHoleCluster), each logged as Envoy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hosts_by_vip_tls_by_sni_and_registry_only() {
    use support::redis::{have, start_redis};
    let Some(ns) = Netns::create("tcp").map(std::sync::Arc::new) else {
        return;
    };
    if !(have("redis-server") && have("redis-cli")) {
        assert!(
            std::env::var_os("EGRET_REQUIRE_REDIS").is_none(),
            "EGRET_REQUIRE_REDIS is set but redis-server/redis-cli are missing"
        );
        eprintln!(
            "SKIPPED tcp_hosts_by_vip_tls_by_sni_and_registry_only: no redis-server/redis-cli"
        );
        return;
    }
    let a_ip = IpAddr::V4(ns.host_ip);
    let b_ip = IpAddr::V4(ns.add_host_ip(3));
    let pki = Pki::new("capture-tcp");
    let ra = pki.server_leaf(&["redis-a.example.com"]);
    let rb = pki.server_leaf(&["redis-b.example.com"]);
    let client = pki.client_leaf("sidecar");
    let ca = format!("{}{}", pki.root_pem(), pki.intermediate_pem());
    let mut yaml = String::new();
    for h in ["redis-a", "redis-b"] {
        yaml += &service_entry(h, &format!("{h}.example.com"), 6379, "TCP");
    }
    yaml += &service_entry("api", "api.example.com", 443, "HTTPS");
    // istio.io "Egress Gateway for HTTPS traffic": the sidecar's TLS for edition.cnn.com must
    // go to the egress gateway (here a TLS origin standing in for it), not straight out.
    yaml += &service_entry("cnn", "edition.cnn.com", 443, "TLS");
    yaml += &service_entry(
        "egressgateway",
        "istio-egressgateway.istio-system.svc.cluster.local",
        443,
        "TLS",
    );
    yaml += "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: direct-cnn-through-egress-gateway}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [mesh]\n  tls:\n  - match:\n    - gateways: [mesh]\n      port: 443\n      sniHosts: [edition.cnn.com]\n    route:\n    - destination:\n        host: istio-egressgateway.istio-system.svc.cluster.local\n        port: {number: 443}\n---\n";
    let dir = readable_dir(&[
        ("ra.crt", &ra.chain_pem),
        ("ra.key", &ra.key_pem),
        ("rb.crt", &rb.chain_pem),
        ("rb.key", &rb.key_pem),
        ("ca.pem", &ca),
        ("client.crt", &client.chain_pem),
        ("client.key", &client.key_pem),
    ]);
    for h in ["redis-a", "redis-b"] {
        yaml += &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {h}}}\nspec:\n  host: {h}.example.com\n  trafficPolicy:\n    tls: {{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}}}\n---\n",
            path(&dir, "ca.pem"),
            path(&dir, "client.crt"),
            path(&dir, "client.key")
        );
    }
    std::fs::write(dir.path().join("mesh.yaml"), &yaml).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path().join("mesh.yaml");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (d, ca_p) = (dir.path().to_path_buf(), path(&dir, "ca.pem"));
    let (ra_c, ra_k, rb_c, rb_k) = (
        path(&dir, "ra.crt"),
        path(&dir, "ra.key"),
        path(&dir, "rb.crt"),
        path(&dir, "rb.key"),
    );
    let (redis_a, redis_b) = blocking(move || {
        (
            start_redis(&d, a_ip, Some(6379), &ra_c, &ra_k, &ca_p),
            start_redis(&d, b_ip, Some(6379), &rb_c, &rb_k, &ca_p),
        )
    })
    .await;
    let api = start_tls_at(
        UpstreamOptions::from_leaf(&pki.server_leaf(&["api.example.com"]), "api"),
        SocketAddr::new(a_ip, 443),
    )
    .await;
    let gateway = start_tls_at(
        UpstreamOptions::from_leaf(&pki.server_leaf(&["edition.cnn.com"]), "gateway"),
        SocketAddr::new(b_ip, 443),
    )
    .await;
    let l80 = tokio::net::TcpListener::bind((a_ip, 80))
        .await
        .expect("bind :80");
    let undeclared =
        start_scripted_on(l80, "undeclared", std::sync::Arc::new(|_| Act::Status(200)));
    let dns = support::TestDns::start_on(SocketAddr::new(a_ip, 53)).await;
    dns.set("redis-a.example.com", &[a_ip], 300);
    dns.set("redis-b.example.com", &[b_ip], 300);
    dns.set("api.example.com", &[a_ip], 300);
    dns.set("undeclared.example.com", &[a_ip], 300);
    dns.set("edition.cnn.com", &[a_ip], 300);
    dns.set(
        "istio-egressgateway.istio-system.svc.cluster.local",
        &[b_ip],
        300,
    );
    ns.set_resolv_conf(ns.host_ip);
    capture(&ns, &["--dns-capture"]);

    let mesh = path(&dir, "mesh.yaml");
    let wrapper = as_proxy(&ns);
    let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let sidecar = EgretProcess::start_wrapped(
        &w,
        &["run", "-c", &mesh, "--dns-capture", "--access-log", "-"],
    );

    // redis-cli, plain, by name: each name reaches its own server through egret's mTLS.
    for (host, value) in [
        ("redis-a.example.com", "from-a"),
        ("redis-b.example.com", "from-b"),
    ] {
        let ns = ns.clone();
        let (code, out, err) = blocking(move || {
            app(
                &ns,
                &["redis-cli", "-h", host, "-p", "6379", "SET", "who", value],
            )
        })
        .await;
        assert_eq!(
            (code, out.trim()),
            (0, "OK"),
            "{host}: {err}\nredis: {}",
            redis_a.log()
        );
    }
    for (host, value) in [
        ("redis-a.example.com", "from-a"),
        ("redis-b.example.com", "from-b"),
    ] {
        let ns = ns.clone();
        let (code, out, err) =
            blocking(move || app(&ns, &["redis-cli", "-h", host, "-p", "6379", "GET", "who"]))
                .await;
        assert_eq!(
            (code, out.trim()),
            (0, value),
            "{host}: {err}\nredis b: {}",
            redis_b.log()
        );
    }
    let lines: Vec<LogLine> = sidecar
        .wait_stdout(4)
        .iter()
        .map(|l| LogLine::parse(l))
        .collect();
    for (l, host) in lines
        .iter()
        .zip(["redis-a", "redis-b", "redis-a", "redis-b"])
    {
        assert_eq!(
            l.cluster,
            format!("outbound|6379||{host}.example.com"),
            "{l:?}"
        );
        assert!(l.downstream_local.starts_with("240.240."), "{l:?}");
    }
    assert_ne!(
        lines[0].downstream_local, lines[1].downstream_local,
        "two VIPs"
    );

    // The app's own HTTPS: routed by SNI and the original port, its TLS untouched.
    let root = path(&dir, "ca.pem");
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || {
            app(
                &ns,
                &["curl", "-sS", "--cacert", &root, "https://api.example.com/"],
            )
        })
        .await
    };
    assert_eq!((code, out.as_str()), (0, "hello from api\n"), "{err}");
    let l = LogLine::parse(&sidecar.wait_stdout(5)[4]);
    assert_eq!(
        (l.cluster.as_str(), l.sni.as_str()),
        ("outbound|443||api.example.com", "api.example.com")
    );
    assert_eq!(api.handshakes(), 1);

    // The VirtualService tls route bound to mesh: captured TLS and CONNECT both go to the
    // egress gateway.
    for explicit in [false, true] {
        let root = path(&dir, "ca.pem");
        let ns = ns.clone();
        let (code, out, err) = blocking(move || {
            let mut args = vec!["curl", "-sS", "--cacert", &root];
            if explicit {
                args.extend(["-p", "-x", "http://127.0.0.1:15001"]);
            }
            args.push("https://edition.cnn.com/");
            app(&ns, &args)
        })
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "hello from gateway\n"),
            "explicit={explicit}: {err}"
        );
    }
    assert_eq!(gateway.handshakes(), 2);
    let l = LogLine::parse(&sidecar.wait_stdout(6)[5]);
    assert_eq!(
        l.cluster, "outbound|443||istio-egressgateway.istio-system.svc.cluster.local",
        "{l:?}"
    );
    let log_base = 7;

    // REGISTRY_ONLY: an undeclared HTTP host is 502 block_all; its TLS goes nowhere.
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || {
            app(
                &ns,
                &[
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://undeclared.example.com/",
                ],
            )
        })
        .await
    };
    assert_eq!((code, out.as_str()), (0, "502"), "{err}");
    let l = LogLine::parse(&sidecar.wait_stdout(log_base + 1)[log_base]);
    assert_eq!((l.code, l.route.as_str()), (502, "block_all"), "{l:?}");
    let (code, _, _) = {
        let ns = ns.clone();
        blocking(move || {
            app(
                &ns,
                &["curl", "-sS", "-k", "https://undeclared.example.com/"],
            )
        })
        .await
    };
    assert_ne!(code, 0);
    let l = LogLine::parse(&sidecar.wait_stdout(log_base + 2)[log_base + 1]);
    assert_eq!(
        (l.cluster.as_str(), l.flags.as_str()),
        ("BlackHoleCluster", "UH"),
        "{l:?}"
    );
    assert_eq!(l.sni, "undeclared.example.com");
    assert_eq!(undeclared.count(), 0, "nothing undeclared got through");
}

/// ALLOW_ANY: an undeclared HTTP host goes to the address the app connected to (Envoy's
/// ORIGINAL_DST), not to a fresh DNS answer for its Host; explicit-proxy requests keep working
/// on the same listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_goes_to_the_original_destination() {
    let Some(ns) = Netns::create("any").map(std::sync::Arc::new) else {
        return;
    };
    let internet = IpAddr::V4(ns.host_ip);
    let l = tokio::net::TcpListener::bind((internet, 8080))
        .await
        .expect("bind");
    let origin = start_scripted_on(l, "origin", std::sync::Arc::new(|_| Act::Status(200)));
    let dns = support::TestDns::start_on(SocketAddr::new(internet, 53)).await;
    dns.set("plain.example.com", &[internet], 300);
    ns.set_resolv_conf(ns.host_ip);
    capture(&ns, &[]);
    let wrapper = as_proxy(&ns);
    let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let sidecar = EgretProcess::start_wrapped(
        &w,
        &[
            "run",
            "--capture",
            "--outbound-policy",
            "ALLOW_ANY",
            "--access-log",
            "-",
        ],
    );
    let url = format!("http://{internet}:8080/x");
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || app(&ns, &["curl", "-sS", "-H", "Host: nowhere.invalid", &url])).await
    };
    assert_eq!((code, out.as_str()), (0, "origin\n"), "{err}");
    assert_eq!(
        dns.queries("nowhere.invalid"),
        0,
        "no DNS lookup for the Host"
    );
    let l = LogLine::parse(&sidecar.wait_stdout(1)[0]);
    assert_eq!(
        (
            l.cluster.as_str(),
            l.route.as_str(),
            l.upstream_host.clone()
        ),
        (
            "PassthroughCluster",
            "allow_any",
            format!("{internet}:8080")
        )
    );
    assert_eq!(l.downstream_local, format!("{internet}:8080"));
    // The same listener as an explicit proxy (loopback is never captured).
    let (code, out, err) = {
        let ns = ns.clone();
        blocking(move || {
            app(
                &ns,
                &[
                    "curl",
                    "-sS",
                    "-x",
                    "http://127.0.0.1:15001",
                    "http://plain.example.com:8080/y",
                ],
            )
        })
        .await
    };
    assert_eq!((code, out.as_str()), (0, "origin\n"), "{err}");
    assert_eq!(origin.count(), 2);
}

/// A DestinationRule whose workloadSelector leaves this proxy out would have given TLS to a
/// port that goes to 443: Istio sends it in plaintext; egret does the same but says so, at
/// start, in `egret check`, and in `egret_insecure_destinations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unselected_tls_rule_is_named_and_counted() {
    let manifest = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: oracle, namespace: work}
spec:
  hosts: [www.oracle.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: oracle-tls, namespace: work}
spec:
  host: www.oracle.com
  workloadSelector: {matchLabels: {app: billing}}
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE}
";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "mesh.yaml", manifest);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args([
            "check",
            "-c",
            &file,
            "--namespace",
            "work",
            "--workload-label",
            "app=web",
        ])
        .output()
        .expect("egret check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for want in [
        "DestinationRule work/oracle-tls",
        "workloadSelector {app: billing}",
        "labels {app: web}",
        "port 80 of www.oracle.com goes to port 443 in PLAINTEXT",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Selected, it applies and nothing is said.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args([
            "check",
            "-c",
            &file,
            "--namespace",
            "work",
            "--workload-label",
            "app=billing",
        ])
        .output()
        .expect("egret check");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("PLAINTEXT"));
    // Counted at run time.
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &file,
        "--namespace",
        "work",
        "--workload-label",
        "app=web",
        "--outbound-listen",
        "127.0.0.1:0",
    ]);
    let stats = egret.listener("stats");
    let body = get(stats, "localhost", "/stats/prometheus").await.body;
    assert!(body.contains("egret_insecure_destinations 1"), "{body}");
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|l| l.trim() == line).count()
}

/// `egret capture` as an init container runs it: idempotent (a second run adds no second
/// jump), `--dns-capture` toggled off removes its chain, `--remove` removes everything and is
/// itself idempotent, the nft backend does the same with its own table, and what is missing
/// (NET_ADMIN, iptables and nft) is said.
#[test]
fn egret_capture_is_idempotent_removable_and_says_what_is_missing() {
    let Some(ns) = Netns::create("rules") else {
        return;
    };
    ns.set_resolv_conf(ns.host_ip);
    let said = capture(&ns, &["--dns-capture"]);
    assert!(said.contains("outbound TCP -> 127.0.0.1:15001"), "{said}");
    assert!(said.contains(&format!("UDP to {}", ns.host_ip)), "{said}");
    capture(&ns, &["--dns-capture"]);
    let save = ns.iptables_save();
    assert_eq!(
        count(&save, "-A OUTPUT -p tcp -j EGRET_OUTPUT"),
        1,
        "{save}"
    );
    assert_eq!(count(&save, "-A OUTPUT -p udp -j EGRET_DNS"), 1, "{save}");
    assert_eq!(
        count(
            &save,
            "-A EGRET_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
        ),
        1,
        "{save}"
    );
    let v6 =
        String::from_utf8_lossy(&ns.exec_ok(&["ip6tables-save", "-t", "nat"]).stdout).into_owned();
    assert_eq!(count(&v6, "-A OUTPUT -p tcp -j EGRET_OUTPUT"), 1, "{v6}");
    // Every rule --dry-run prints is what was installed.
    let dry = capture(&ns, &["--dns-capture", "--dry-run"]);
    for rule in dry
        .lines()
        .filter(|l| l.starts_with("-A EGRET_OUTPUT -m owner"))
    {
        assert_eq!(count(&save, rule), 1, "{rule}\n{save}");
    }
    // Without --dns-capture, the DNS chain goes.
    capture(&ns, &[]);
    let save = ns.iptables_save();
    assert!(!save.contains("EGRET_DNS"), "{save}");
    assert_eq!(
        count(&save, "-A OUTPUT -p tcp -j EGRET_OUTPUT"),
        1,
        "{save}"
    );
    capture(&ns, &["--remove"]);
    let save = ns.iptables_save();
    assert!(!save.contains("EGRET"), "{save}");
    assert!(capture(&ns, &["--remove"]).contains("nothing to remove"));

    // nftables: its own table, replaced on re-apply, gone on remove.
    capture(&ns, &["--backend", "nft", "--dns-capture"]);
    capture(&ns, &["--backend", "nft", "--dns-capture"]);
    let table = String::from_utf8_lossy(
        &ns.exec_ok(&["nft", "list", "table", "inet", "egret"])
            .stdout,
    )
    .into_owned();
    assert_eq!(table.matches("redirect to :15001").count(), 1, "{table}");
    assert_eq!(table.matches("meta skuid 1337").count(), 1, "{table}");
    capture(&ns, &["--backend", "nft", "--remove"]);
    assert!(
        !ns.exec(&["nft", "list", "table", "inet", "egret"])
            .status
            .success()
    );

    // Without NET_ADMIN (uid 1337, no capabilities): refused, saying what it needs.
    let mut args = as_proxy(&ns);
    args.extend([
        env!("CARGO_BIN_EXE_egret").to_string(),
        "capture".to_string(),
    ]);
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .expect("run egret capture as uid 1337");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains("init container"),
        "{err}"
    );
    // Without iptables or nft.
    let out = ns.exec(&[
        "env",
        "PATH=/nonexistent",
        env!("CARGO_BIN_EXE_egret"),
        "capture",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("neither iptables") && err.contains("nft"),
        "{err}"
    );
    // A bad value names the flag.
    let out = ns.exec(&[env!("CARGO_BIN_EXE_egret"), "capture", "-x", "10.0.0.0/40"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--exclude-outbound-cidrs") && err.contains("0..=32"),
        "{err}"
    );
    assert!(
        !ns.iptables_save().contains("EGRET"),
        "nothing installed on an error"
    );
}

/// The flags act on real traffic, with iptables and with nft: an excluded port or network goes
/// straight out (egret never sees it), `--include-outbound-cidrs` narrows what is captured,
/// and a connection redirected to one of egret's own listeners is refused, not looped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_flags_on_real_traffic_and_no_proxy_loop() {
    let Some(ns) = Netns::create("flags").map(std::sync::Arc::new) else {
        return;
    };
    let first = IpAddr::V4(ns.host_ip);
    let second = IpAddr::V4(ns.add_host_ip(3));
    let mut origins = Vec::new();
    for (ip, port, name) in [
        (first, 8080, "p8080"),
        (first, 8081, "p8081"),
        (second, 8081, "second"),
    ] {
        let l = tokio::net::TcpListener::bind((ip, port))
            .await
            .expect("bind");
        origins.push(start_scripted_on(
            l,
            name,
            std::sync::Arc::new(|_| Act::Status(200)),
        ));
    }
    let wrapper = as_proxy(&ns);
    let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let sidecar = EgretProcess::start_wrapped(
        &w,
        &[
            "run",
            "--capture",
            "--outbound-policy",
            "REGISTRY_ONLY",
            "--ready",
            "0.0.0.0:0",
            "--access-log",
            "-",
        ],
    );
    let ready_port = sidecar
        .listeners
        .iter()
        .find(|(n, _)| n == "readiness")
        .map(|(_, a)| a.port())
        .expect("readiness announced")
        .to_string();
    let get = |url: String| {
        let ns = ns.clone();
        async move {
            let u = url.clone();
            let (code, out, err) =
                blocking(move || app(&ns, &["curl", "-sS", "-w", " %{http_code}", &u])).await;
            assert_eq!(code, 0, "{url}: {err}");
            out
        }
    };
    let mut logged = 0;
    for backend in ["iptables", "nft"] {
        let other = if backend == "nft" { "iptables" } else { "nft" };
        capture(&ns, &["--backend", other, "--remove"]);
        let x = format!("{second}/32");
        capture(&ns, &["--backend", backend, "-o", "8080", "-x", &x]);
        assert_eq!(
            get(format!("http://{first}:8080/")).await,
            "p8080\n 200",
            "{backend}: excluded port"
        );
        assert_eq!(
            get(format!("http://{second}:8081/")).await,
            "second\n 200",
            "{backend}: excluded CIDR"
        );
        let blocked = get(format!("http://{first}:8081/")).await;
        assert!(
            blocked.ends_with(" 502"),
            "{backend}: captured, REGISTRY_ONLY: {blocked}"
        );
        logged += 1;
        let l = LogLine::parse(&sidecar.wait_stdout(logged)[logged - 1]);
        assert_eq!((l.route.as_str(), l.code), ("block_all", 502), "{l:?}");
        assert_eq!(l.downstream_local, format!("{first}:8081"));
        // Only the second network captured.
        capture(&ns, &["--backend", backend, "-i", &x]);
        assert_eq!(
            get(format!("http://{first}:8081/")).await,
            "p8081\n 200",
            "{backend}: not included"
        );
        assert!(
            get(format!("http://{second}:8081/"))
                .await
                .ends_with(" 502"),
            "{backend}: included"
        );
        logged += 1;
        sidecar.wait_stdout(logged);
    }
    assert_eq!(
        origins.iter().map(|o| o.count()).collect::<Vec<_>>(),
        vec![2, 2, 2],
        "what was excluded reached its origin; what was captured did not"
    );

    // A rule that (wrongly) captures the pod's own address on egret's readiness port (on
    // 0.0.0.0, as in a pod): the
    // redirected connection is refused as a loop, never served or forwarded to itself.
    capture(&ns, &["--backend", "nft", "--remove"]);
    capture(&ns, &[]);
    let app_ip = ns.app_ip.to_string();
    ns.exec_ok(&[
        "iptables",
        "-t",
        "nat",
        "-I",
        "OUTPUT",
        "1",
        "-p",
        "tcp",
        "-d",
        &app_ip,
        "--dport",
        &ready_port,
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "1337",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ]);
    let url = format!("http://{app_ip}:{ready_port}/healthz/ready");
    let (code, out, _) = {
        let ns = ns.clone();
        blocking(move || app(&ns, &["curl", "-sS", "-w", " %{http_code}", &url])).await
    };
    assert_ne!(
        (code, out.trim()),
        (0, "200"),
        "served through itself: {out}"
    );
    logged += 1;
    let l = LogLine::parse(&sidecar.wait_stdout(logged)[logged - 1]);
    assert!(
        l.termination.contains("self_loop") || l.details.contains("self_loop"),
        "{l:?}"
    );
    assert_eq!(l.downstream_local, format!("{app_ip}:{ready_port}"));
    assert_eq!(l.cluster, "BlackHoleCluster", "{l:?}");
}
