//! End to end with the real binary and the real curl: forward-proxy (`curl -x`) and Host-header
//! requests, the embedded default config, the access log on stdout, and a clean SIGTERM exit.

mod support;

use support::*;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_egret_binary_with_a_config_file() {
    let pki = Pki::new("curl");
    let leaf = pki.server_leaf(&["api.test"]);
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "simple")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let cfg = write(dir.path(), "egret.yaml", &simple_tls_yaml(&ca));
    let connect_to = format!("api.test:443={}", upstream.addr);
    let egret = EgretProcess::start(&[
        "run",
        "--config",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect_to,
        "--access-log",
        "-",
    ]);
    let proxy = format!("http://{}", egret.addr);
    let base = format!("http://{}/", egret.addr);

    let p = proxy.clone();
    let (code, body, err) = blocking(move || curl(&["-x", &p, "http://api.test/"])).await;
    assert_eq!(code, 0, "curl -x failed: {err}");
    assert_eq!(body, "hello from simple\n");

    let b = base.clone();
    let (code, body, err) = blocking(move || curl(&[&b, "-H", "Host: api.test"])).await;
    assert_eq!(code, 0, "curl with Host failed: {err}");
    assert_eq!(body, "hello from simple\n");

    let p = proxy.clone();
    let (code, out, _) = blocking(move || {
        curl(&[
            "-x",
            &p,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://undeclared.test/",
        ])
    })
    .await;
    assert_eq!((code, out.as_str()), (0, "502"));

    // h2c with prior knowledge: :authority carries the host.
    let b = base.clone();
    let (code, body, err) =
        blocking(move || curl(&["--http2-prior-knowledge", &b, "-H", "Host: api.test"])).await;
    assert_eq!(code, 0, "curl h2c failed: {err}");
    assert_eq!(body, "hello from simple\n");

    let lines = egret.wait_stdout(4);
    let l: Vec<LogLine> = lines.iter().map(|l| LogLine::parse(l)).collect();
    assert!(l[0].user_agent.starts_with("curl/"), "{:?}", l[0]);
    assert_eq!(
        (l[0].code, l[0].cluster.as_str(), l[0].route.as_str()),
        (200, "outbound|80||api.test", "default")
    );
    assert_eq!(l[0].upstream_host, upstream.addr.to_string());
    assert_eq!((l[1].code, l[1].authority.as_str()), (200, "api.test"));
    assert_eq!(
        (l[2].code, l[2].route.as_str(), l[2].cluster.as_str()),
        (502, "block_all", "-")
    );
    assert_eq!(
        upstream.handshakes(),
        1,
        "curl's two connections shared one pooled upstream connection"
    );

    let status = blocking(move || egret.terminate()).await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_originates_verified_tls_to_443() {
    // `egret run` with flags and no --config uses the embedded default: any host, port 80 ->
    // HTTPS 443, verified against the webpki roots. A test CA is not among them, so the
    // handshake must fail with the reason, which proves TLS, SNI and verification.
    let pki = Pki::new("default");
    let leaf = pki.server_leaf(&["example.com"]);
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "fake-example")).await;
    let connect_to = format!("example.com:443={}", upstream.addr);
    let egret = EgretProcess::start(&[
        "run",
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect_to,
    ]);
    let proxy = format!("http://{}", egret.addr);
    let (code, body, err) = blocking(move || curl(&["-x", &proxy, "http://example.com/"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        body.contains("tls.unknown_issuer: example.com sent [CN=example.com (issuer 'Egret Test Intermediate default')"),
        "{body}"
    );
    assert!(
        body.contains("it is not signed by the default trust roots (webpki/Mozilla)"),
        "{body}"
    );
    assert_eq!(upstream.handshakes(), 0);
    assert!(
        upstream.failed_handshakes() >= 1,
        "egret spoke TLS to port 443"
    );
    let l = LogLine::parse(&egret.wait_stdout(1)[0]);
    assert_eq!(
        (l.code, l.flags.as_str(), l.cluster.as_str()),
        (503, "UF,URX", "outbound|80||*")
    );
    assert!(
        egret
            .stderr()
            .iter()
            .any(|l| l.contains("listening on 127.0.0.1:")),
        "prints where it listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_routes_and_fails_on_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(
        dir.path(),
        "good.yaml",
        "destinations:\n  - hosts: [www.oracle.com]\n    ports:\n      - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}\n      - {number: 443, name: https-port, protocol: HTTPS}\n    resolution: DNS\n    trafficPolicy:\n      portLevelSettings:\n        - port: {number: 80}\n          tls: {mode: SIMPLE}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["check", "--config", &good])
        .output()
        .expect("run egret check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.contains("outbound|80||www.oracle.com"))
        .unwrap_or_else(|| panic!("{stdout}"));
    for want in [
        "80",
        "www.oracle.com",
        "www.oracle.com:443",
        "SIMPLE",
        "webpki roots",
    ] {
        assert!(row.contains(want), "{want} in {row}");
    }

    let bad = write(
        dir.path(),
        "bad.yaml",
        "outboundTrafficPolicy:\n  mode: REGISTER_ONLY\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["check", "--config", &bad])
        .output()
        .expect("run egret check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{bad}:2:9: outboundTrafficPolicy.mode: unknown value \"REGISTER_ONLY\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean \"REGISTRY_ONLY\"?"),
        "{stderr}"
    );
}
