//! Outbound traffic policy and malformed requests: REGISTRY_ONLY refusals (`block_all`),
//! ALLOW_ANY passthrough, and 4xx for requests egret cannot route.

mod support;

use std::time::Duration;

use egret::config::{OutboundPolicy, Overrides};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml(plain_port: u16) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [easy.test]\n    ports: [{{number: 80, name: http-80, targetPort: {plain_port}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n"
    )
}

#[tokio::test]
async fn undeclared_host_gets_502_block_all() {
    let easy = start_plain("easy").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(easy.addr.port()), Overrides::default(), dir.path()).await;

    let r = get(e.addr, "easy.test", "/").await;
    assert_eq!(r.status, 200, "a declared host passes: {r:?}");
    assert_eq!(r.body, "hello from easy\n");

    let r = get(e.addr, "495aa19d.apps.example", "/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "policy.host_not_allowed");
    assert!(
        r.body
            .contains("495aa19d.apps.example:80 is not a declared destination"),
        "{}",
        r.body
    );
    // The seed's line: `502 - direct_response - "-" 0 0 0 - ... "-" - - ... - block_all`
    // (egret adds an explanatory body, so BYTES_SENT is its length).
    let l = e.log_entry(2).await;
    assert_eq!(l.code, 502);
    assert_eq!(l.flags, "-");
    assert_eq!(l.details, "direct_response");
    assert_eq!(l.transport_failure, "-");
    assert_eq!(l.upstream_service_time, "-");
    assert_eq!(l.authority, "495aa19d.apps.example");
    assert_eq!(l.upstream_host, "-");
    assert_eq!(l.cluster, "-");
    assert_eq!(l.upstream_local, "-");
    assert_eq!(l.route, "block_all");
    assert_eq!(l.bytes_sent, r.body.len() as u64);

    // A declared host on an undeclared port is refused too.
    let r = get(e.addr, "easy.test:8080", "/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(easy.requests(), 1);
}

#[tokio::test]
async fn allow_any_passes_undeclared_hosts_through_in_plaintext() {
    let origin = start_plain("anything").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = Overrides {
        outbound_policy: Some(OutboundPolicy::AllowAny),
        ..Overrides::default()
    };
    o.upstream.resolve.insert(
        "anything.test".into(),
        vec!["127.0.0.1".parse().expect("ip")],
    );
    let e = start_egret(&yaml(1), o, dir.path()).await;
    let host = format!("anything.test:{}", origin.addr.port());
    let r = get(e.addr, &host, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from anything\n");
    let l = e.log_entry(1).await;
    assert_eq!(l.cluster, "PassthroughCluster");
    assert_eq!(l.route, "allow_any");
    assert_eq!(l.upstream_host, origin.addr.to_string());
}

/// Sends raw bytes and returns what came back.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_request_without_host_gets_400_and_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(1), Overrides::default(), dir.path()).await;
    let resp = raw(e.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400"), "{resp}");
    assert!(
        resp.contains("x-egret-error: request.missing_host"),
        "{resp}"
    );
    let l = e.log_entry(1).await;
    assert_eq!(
        (l.code, l.flags.as_str(), l.details.as_str()),
        (400, "DPE", "missing_host_header")
    );
    assert_eq!(l.protocol, "HTTP/1.0");
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(1), Overrides::default(), dir.path()).await;
    let resp = raw(
        e.addr,
        b"GET / HTTP/1.1\r\nHost: easy.test\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let lines = e.wait_log_lines(1).await;
    assert!(
        lines[0].contains("\" 400 DPE http1.codec_error "),
        "{}",
        lines[0]
    );
    // A Host that is not host[:port].
    let resp = raw(
        e.addr,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let l = e.log_entry(2).await;
    assert_eq!((l.code, l.flags.as_str()), (400, "DPE"));
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_is_logged_dc() {
    let pki = Pki::new("dc");
    let leaf = pki.server_leaf(&["api.test"]);
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "slow")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let yaml = format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {ca}}}\n"
    );
    let e = start_egret(
        &yaml,
        connect_to("api.test", 443, upstream.addr),
        dir.path(),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /slow/1000 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let l = e.log_entry(1).await;
    assert_eq!(l.code, 0, "nothing was sent: {l:?}");
    assert_eq!(l.flags, "DC");
    assert_eq!(l.details, "downstream_remote_disconnect");
    assert_eq!(l.cluster, "outbound|80||api.test");
}
