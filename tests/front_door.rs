//! The front door: requests a trusted proxy must refuse (or repair) before routing, on the wire,
//! against a real origin that counts what reaches it. Each refusal is a `400` (or `431`) with
//! the rule in `%RESPONSE_CODE_DETAILS%` and the `DPE` flag, and nothing goes upstream.

mod support;

use egret::config::Overrides;
use support::*;

async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    exchange(addr, bytes).await.0
}

fn status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// One request per case on its own connection: (request bytes, rule in the log).
const REFUSED: &[(&str, &str)] = &[
    (
        "GET /headers HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        "http1.multiple_host_headers",
    ),
    (
        "POST /headers HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        "http1.multiple_host_headers",
    ),
    (
        "GET http://user:pass@app.test/headers HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "http1.userinfo_in_authority",
    ),
    (
        "GET /headers HTTP/1.1\r\nHost: user:pass@app.test\r\nConnection: close\r\n\r\n",
        "http1.userinfo_in_authority",
    ),
    (
        "GET * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "http1.invalid_asterisk_form",
    ),
    (
        "GET ftp://app.test/s HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "http1.unsupported_scheme",
    ),
    (
        "CONNECT app.test HTTP/1.1\r\nHost: app.test\r\n\r\n",
        "http1.invalid_connect_authority",
    ),
];

#[tokio::test]
async fn requests_that_break_http_rules_are_refused_before_routing() {
    let origin = start_plain("front").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let long_host = format!(
        "GET / HTTP/1.1\r\nHost: {}.test\r\nConnection: close\r\n\r\n",
        "a".repeat(300)
    );
    let mut cases: Vec<(String, &str)> = REFUSED.iter().map(|(r, d)| (r.to_string(), *d)).collect();
    cases.push((long_host, "http1.host_too_long"));
    for (i, (req, _)) in cases.iter().enumerate() {
        let raw = send(e.addr, req.as_bytes()).await;
        assert_eq!(status(&raw), 400, "case {i}: {req:?} got {raw}");
    }
    let lines = e.log_entries(cases.len()).await;
    for (i, ((req, rule), l)) in cases.iter().zip(&lines).enumerate() {
        assert_eq!(
            (l.code, l.flags.as_str(), l.details.as_str()),
            (400, "DPE", *rule),
            "case {i}: {req:?}"
        );
    }
    assert_eq!(origin.requests(), 0, "nothing reached the origin");

    // OPTIONS is the one method that takes `*`: it is routed, not refused.
    let raw = send(
        e.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status(&raw), 400, "{raw}");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn absolute_form_wins_over_host_and_client_envoy_headers_are_dropped() {
    let origin = start_plain("abs").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let raw = send(
        e.addr,
        b"GET http://app.test/headers HTTP/1.1\r\nHost: evil.test\r\nX-Envoy-Original-Path: /admin\r\nx-envoy-peer-metadata: forged\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&raw), 200, "{raw}");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    assert!(
        body.contains("host: app.test\n"),
        "Host rebuilt from the URI: {body}"
    );
    assert!(!body.contains("evil.test"), "{body}");
    assert!(!body.contains("x-envoy-original-path"), "{body}");
    assert!(!body.contains("x-envoy-peer-metadata"), "{body}");
    // Istio's format prints %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%: the real path, not the forged one.
    let l = e.log_entry(1).await;
    assert_eq!(
        (l.code, l.path.as_str(), l.authority.as_str()),
        (200, "/headers", "app.test")
    );

    // A refused request's log line does not show the forged header either.
    let raw = send(
        e.addr,
        b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\nX-Envoy-Original-Path: /forged\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&raw), 502, "{raw}");
    let l = &e.log_entries(2).await[1];
    assert_eq!((l.code, l.path.as_str()), (502, "/x"));
}

#[tokio::test]
async fn request_heads_past_60_kib_get_431_on_both_http1_paths() {
    let origin = start_plain("limits").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let big = "x".repeat(100 * 1024);
    let fits = "y".repeat(50 * 1024);
    // egret's own loop (no body) and hyper's path (a body) alike.
    for (i, (req, want)) in [
        (format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"), 431),
        (format!("POST / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"), 431),
        (format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Fits: {fits}\r\nConnection: close\r\n\r\n"), 200),
        (format!("POST /echo HTTP/1.1\r\nHost: app.test\r\nX-Fits: {fits}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"), 200),
    ]
    .into_iter()
    .enumerate()
    {
        let raw = send(e.addr, req.as_bytes()).await;
        assert_eq!(status(&raw), want, "case {i}: {}", &raw[..raw.len().min(200)]);
    }
    let lines = e.log_entries(4).await;
    let got: Vec<(u16, &str)> = lines.iter().map(|l| (l.code, l.flags.as_str())).collect();
    assert_eq!(got, [(431, "DPE"), (431, "DPE"), (200, "-"), (200, "-")]);
    assert_eq!(lines[0].details, "http1.headers_too_large");
    assert_eq!(
        origin.requests(),
        2,
        "only the heads that fit went upstream"
    );

    // More than 100 headers: 431 as well.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app.test\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let raw = send(e.addr, many.as_bytes()).await;
    assert_eq!(status(&raw), 431, "{raw}");
}

#[test]
fn the_head_limit_is_a_flag_and_h2c_keeps_it_too() {
    let origin = tokio::runtime::Runtime::new().expect("runtime");
    let up = origin.block_on(start_plain("h2limit"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("egret.yaml");
    std::fs::write(&cfg, static_app_yaml(up.addr.port())).expect("write config");
    let cfg = cfg.display().to_string();

    // Out of range: a clear error, and egret does not start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["--config", &cfg, "--max-request-headers-kb", "4"])
        .output()
        .expect("run egret");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-request-headers-kb 4: must be between 8 and 8192"),
        "{err}"
    );

    let egret = EgretProcess::start(&[
        "--config",
        &cfg,
        "--max-request-headers-kb",
        "16",
        "--access-log",
        "-",
    ]);
    let url = format!("http://{}/", egret.addr);
    let status_of = |extra: &[&str], header: &str| {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: app.test",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-H", header, &url]);
        curl(&args).1
    };
    let big = format!("X-Big: {}", "z".repeat(20 * 1024));
    let small = format!("X-Small: {}", "s".repeat(8 * 1024));
    // HTTP/1.1: 20 KiB is past the 16 KiB limit; 8 KiB is within it.
    assert_eq!(status_of(&[], &big), "431");
    assert_eq!(status_of(&[], &small), "200");
    // h2c: the same limit as max_header_list_size; the request never reaches the origin.
    let h2c = ["--http2-prior-knowledge"];
    let before = up.requests();
    assert_ne!(
        status_of(&h2c, &big),
        "200",
        "an h2c head past the limit is not served"
    );
    assert_eq!(up.requests(), before, "nothing went upstream");
    assert_eq!(status_of(&h2c, &small), "200");
    egret.terminate();
}
