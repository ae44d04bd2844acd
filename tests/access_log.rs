//! The access log against real failures: one test per response flag and failure reason, the
//! seeds' sample lines, custom TEXT and JSON formats, a client leaving mid-body, and SIGUSR1.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use egret::config::Overrides;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn the_seed_sample_lines_parse_with_the_istio_regex() {
    let sidecar = r#"[2022-10-23T18:28:33.789Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 44 28 27 "-" "curl/7.64.0" "56140728-4722-972f-afaa-299e00837e1a" "349bc685-0338-48e8-bb74-414c2fd9f301.apps.sbc-okd.pcbltools.ru" "10.128.2.35:3000" outbound|3000||ci00000000-test-egress.sbercode-a06d6040-d4da-456c-ae55-2725df9438f0-work.svc.cluster.local 10.128.2.33:50174 240.240.0.2:80 10.128.2.33:56948 - -"#;
    let l = LogLine::parse(sidecar);
    assert_eq!(
        (
            l.code,
            l.bytes_sent,
            l.duration,
            l.upstream_service_time.as_str()
        ),
        (200, 44, 28, "27")
    );
    assert_eq!(
        l.cluster,
        "outbound|3000||ci00000000-test-egress.sbercode-a06d6040-d4da-456c-ae55-2725df9438f0-work.svc.cluster.local"
    );
    let blocked = r#"[2022-10-26T22:22:30.254Z] "GET / HTTP/1.1" 502 - direct_response - "-" 0 0 0 - "-" "curl/7.85.0-DEV" "3cc763c2-8d13-9675-be67-f8f665fafaec" "495aa19d-72cd-4f6d-a488-14175d4087d8.apps.sbc-okd.pcbltools.ru" "-" - - 178.170.196.65:80 10.131.0.186:38118 - block_all"#;
    let l = LogLine::parse(blocked);
    assert_eq!(
        (
            l.code,
            l.details.as_str(),
            l.route.as_str(),
            l.upstream_host.as_str()
        ),
        (502, "direct_response", "block_all", "-")
    );
}

/// A plaintext destination on `port` with optional traffic policy YAML.
fn plain_yaml(port: u16, policy: &str) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [app.test]\n    ports: [{{number: 80, targetPort: {port}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n{policy}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uo_when_the_connection_pool_is_full() {
    let origin = start_plain("slow").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &plain_yaml(
            origin.addr.port(),
            "    trafficPolicy:\n      connectionPool:\n        tcp: {maxConnections: 1}\n        http: {http1MaxPendingRequests: 1}\n",
        ),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let addr = e.addr;
    let first = tokio::spawn(async move { get(addr, "app.test", "/slow/800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one connection is busy: the second request waits in the pending queue (its one
    // place), the third overflows it.
    let second = tokio::spawn(async move { get(addr, "app.test", "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(e.addr, "app.test", "/").await;
    assert_eq!(r.header("x-envoy-overloaded"), "true", "{r:?}");
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (503, "upstream.overflow"),
        "{r:?}"
    );
    assert!(r.body.contains("reset reason: overflow"), "{}", r.body);
    assert_eq!(
        first.await.expect("first").status,
        200,
        "the request holding the connection completes"
    );
    assert_eq!(
        second.await.expect("second").status,
        200,
        "the pending request got the connection when it came back"
    );
    let lines = e.wait_log_lines(3).await;
    let l = LogLine::parse(&lines[0]);
    assert_eq!(
        (l.code, l.flags.as_str(), l.details.as_str()),
        (
            503,
            "UO",
            "upstream_reset_before_response_started{overflow}"
        )
    );
}

/// A server that reads the request and answers something that is not HTTP.
async fn garbage_server() -> (SocketAddr, ServerHandle) {
    let l = bind_loopback().await;
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    (addr, ServerHandle::new(h))
}

#[tokio::test]
async fn upe_when_the_upstream_does_not_speak_http() {
    let (addr, _h) = garbage_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &plain_yaml(addr.port(), ""),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let r = get(e.addr, "app.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (502, "upstream.protocol_error"),
        "{r:?}"
    );
    let l = e.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str()), (502, "UPE"));
    assert_eq!(
        l.details,
        "upstream_reset_before_response_started{protocol_error}"
    );
    assert_eq!(
        l.upstream_host,
        addr.to_string(),
        "the upstream that failed is named"
    );
}

#[tokio::test]
async fn df_when_a_dynamic_host_does_not_resolve() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndns: {{servers: [\"{}\"]}}\ndestinations:\n  - hosts: [\"*.dyn.test\"]\n    ports: [{{number: 80}}]\n  - hosts: [fixed.test]\n    ports: [{{number: 80}}]\n",
        dns.addr
    );
    let e = start_egret(&yaml, Overrides::default(), dir.path()).await;
    let r = get(e.addr, "nope.dyn.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (503, "dns.nxdomain"),
        "{r:?}"
    );
    assert!(r.body.starts_with("DNS resolution failure\n"), "{}", r.body);
    let l = e.log_entry(1).await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str(), l.cluster.as_str()),
        ("DF", "dns_resolution_failure", "outbound|80||*.dyn.test")
    );
    // A declared host whose DNS fails is UH, as Istio's DNS clusters.
    let r = get(e.addr, "fixed.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(e.log_entry(2).await.flags, "UH");
}

/// A "TLS server" that answers every ClientHello with a fatal alert.
async fn alert_server(alert: u8) -> (SocketAddr, ServerHandle) {
    let l = bind_loopback().await;
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert])
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    (addr, ServerHandle::new(h))
}

#[tokio::test]
async fn tls_alerts_from_the_server_are_explained() {
    for (alert, code, words) in [
        (
            70u8,
            "tls.protocol_version",
            "refused TLS 1.2 and 1.3 (alert protocol_version)",
        ),
        (
            40u8,
            "tls.handshake_failure",
            "no TLS version, cipher suite or signature scheme in common",
        ),
        (
            112u8,
            "tls.unrecognized_name",
            "does not serve the name sent as SNI",
        ),
    ] {
        let (addr, _h) = alert_server(alert).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = "listeners: [{name: outbound, address: \"127.0.0.1:0\"}]\ndestinations:\n  - hosts: [old.test]\n    ports: [{number: 80, targetPort: 443}]\n    trafficPolicy: {tls: {mode: SIMPLE}}\n";
        let e = start_egret(yaml, connect_to("old.test", 443, addr), dir.path()).await;
        let r = get(e.addr, "old.test", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-egret-error")),
            (503, code),
            "{r:?}"
        );
        let l = e.log_entry(1).await;
        // Istio's default retry policy retries a failed handshake twice (connect-failure).
        assert_eq!(l.flags, "UF,URX");
        assert!(
            l.transport_failure.starts_with(code) && l.transport_failure.contains(words),
            "{}",
            l.transport_failure
        );
    }
}

#[tokio::test]
async fn a_client_leaving_mid_body_is_logged_dc_with_the_bytes_sent() {
    let origin = start_plain("big").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &plain_yaml(origin.addr.port(), ""),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /bytes/104857600 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < 1024 * 1024 {
        got += s.read(&mut buf).await.expect("read");
    }
    drop(s);
    let l = e.log_entry(1).await;
    assert_eq!(
        (l.code, l.flags.as_str(), l.details.as_str()),
        (200, "DC", "via_upstream")
    );
    assert!(
        l.bytes_sent > 0 && l.bytes_sent < 104_857_600,
        "bytes sent {}",
        l.bytes_sent
    );
}

#[tokio::test]
async fn custom_text_and_json_formats_from_the_configuration() {
    let origin = start_plain("fmt").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = plain_yaml(origin.addr.port(), "").replace(
        "destinations:",
        "accessLog:\n  format: \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):5% %RESPONSE_CODE% %RESPONSE_FLAGS_LONG% %UPSTREAM_CLUSTER% %START_TIME(%s)% %REQ(USER-AGENT)% %DOWNSTREAM_LOCAL_PORT%\"\ndestinations:",
    );
    let e = start_egret(&yaml, Overrides::default(), dir.path()).await;
    let r = get(e.addr, "app.test", "/headers?x=1").await;
    assert_eq!(r.status, 200);
    let line = e.wait_log_lines(1).await.remove(0);
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        &parts[..5],
        &["GET", "/head", "200", "-", "outbound|80||app.test"],
        "{line}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let t: u64 = parts[5].parse().expect("epoch seconds");
    assert!(now.abs_diff(t) < 60, "{line}");
    assert_eq!(parts[6], "-", "no user-agent was sent");
    assert_eq!(parts[7], e.addr.port().to_string());

    // JSON through a MeshConfig: Istio's keys, typed values, null for missing.
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |-\n    accessLogEncoding: JSON\n---\n";
    let yaml = format!("{mesh}{}", plain_yaml(origin.addr.port(), ""));
    let e = start_egret(&yaml, Overrides::default(), dir.path()).await;
    assert_eq!(get(e.addr, "app.test", "/").await.status, 200);
    let line = e.wait_log_lines(1).await.remove(0);
    assert!(
        line.starts_with("{\"authority\":\"app.test\",\"bytes_received\":0,\"bytes_sent\":15,"),
        "{line}"
    );
    assert!(line.contains("\"response_code\":200,"), "{line}");
    assert!(
        line.contains("\"upstream_cluster\":\"outbound|80||app.test\""),
        "{line}"
    );
    assert!(line.contains("\"user_agent\":null"), "{line}");
    assert!(line.ends_with('}'), "{line}");
}

#[test]
fn an_unknown_operator_is_a_configuration_error_that_names_it() {
    let yaml = "accessLog:\n  format: \"%START_TIME% %RESPONSE_CODES%\"\n";
    let err = egret::config::load(
        &[egret::config::Source::inline("log.yaml", yaml)],
        &Overrides::default(),
    )
    .expect_err("must be refused");
    let msg = err.to_string();
    assert!(msg.contains("log.yaml: accessLogFormat: unknown access log operator %RESPONSE_CODES% (did you mean %RESPONSE_CODE%?)"), "{msg}");
}

#[tokio::test]
async fn an_empty_access_log_file_in_the_mesh_config_turns_logging_off() {
    let origin = start_plain("off").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |-\n    accessLogFile: \"\"\n---\n";
    let source = egret::config::Source {
        name: "m.yaml".into(),
        text: format!("{mesh}{}", plain_yaml(origin.addr.port(), "")),
        base_dir: None,
        params: Vec::new(),
    };
    let cfg = egret::config::load(&[source], &Overrides::default()).expect("loads");
    assert_eq!(cfg.access_log.path, egret::config::AccessLogPath::Off);
    let (bound, _) = egret::app::build(cfg, Default::default())
        .await
        .expect("starts");
    assert_eq!(get(bound.listeners[0].1, "app.test", "/").await.status, 200);
    assert!(!bound.state.load().access_log.is_enabled());
    let _ = dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_file_for_logrotate() {
    let origin = start_plain("rotate").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &plain_yaml(origin.addr.port(), ""),
    );
    let log = dir.path().join("access.log");
    let log_s = log.display().to_string();
    let egret = EgretProcess::start(&["run", "-c", &cfg, "--access-log", &log_s]);
    assert_eq!(get(egret.addr, "app.test", "/?n=one").await.status, 200);
    let rotated = dir.path().join("access.log.1");
    // Wait for the first line, then rotate like logrotate (rename + signal).
    for _ in 0..100 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&log, &rotated).expect("rename");
    let status = std::process::Command::new("kill")
        .args(["-USR1", &egret.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(egret.addr, "app.test", "/?n=two").await.status, 200);
    let mut new = String::new();
    for _ in 0..100 {
        new = std::fs::read_to_string(&log).unwrap_or_default();
        if !new.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("\"GET /?n=one HTTP/1.1\"") && !old.contains("n=two"),
        "{old}"
    );
    assert!(
        new.contains("\"GET /?n=two HTTP/1.1\"") && !new.contains("n=one"),
        "{new}"
    );
}

/// A server that reads the request, then closes the connection without answering.
async fn hangup_server() -> (SocketAddr, ServerHandle) {
    let l = bind_loopback().await;
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, ServerHandle::new(h))
}

#[tokio::test]
async fn uc_when_the_upstream_closes_before_answering() {
    let (addr, _h) = hangup_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &plain_yaml(addr.port(), ""),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let r = get(e.addr, "app.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (503, "upstream.connection_termination"),
        "{r:?}"
    );
    assert!(
        r.body.contains("reset reason: connection termination"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("closed the connection before sending response headers on a new connection"),
        "{}",
        r.body
    );
    let l = e.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str()), (503, "UC"));
    assert_eq!(
        l.details,
        "upstream_reset_before_response_started{connection_termination}"
    );
    assert_eq!(l.upstream_host, addr.to_string());
}
