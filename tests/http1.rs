//! egret's own HTTP/1.1 loop (src/http/server.rs) on the wire: pipelining, `Connection: close`, bodiless
//! responses (HEAD, 204), chunked responses of unknown length, and the hand-over to hyper for
//! requests with a body, on one keep-alive connection each, against a real origin.

mod support;

use egret::config::Overrides;
use support::*;

/// Sends `bytes` on one connection and reads until egret closes it (it must).
async fn exchange_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let (out, closed) = exchange(addr, bytes).await;
    assert!(
        closed,
        "egret closes the connection after `Connection: close`: {out}"
    );
    out
}

/// Splits a stream of responses with `Content-Length` bodies (or none) into (head, body) pairs.
fn responses(mut raw: &str, bodiless: &[bool]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &no_body in bodiless {
        let end = raw.find("\r\n\r\n").expect("a complete head") + 4;
        let head = raw[..end].to_string();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
        let len = if no_body { 0 } else { len };
        out.push((head, raw[end..end + len].to_string()));
        raw = &raw[end + len..];
    }
    assert_eq!(raw, "", "nothing after the last response");
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let origin = start_plain("pipe").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let raw = exchange_closed(
        e.addr,
        b"GET /headers HTTP/1.1\r\nHost: app.test\r\nX-Seq: one\r\n\r\nGET / HTTP/1.1\r\nHost: app.test\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = responses(&raw, &[false, false, false]);
    assert!(r[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(r[0].1.contains("x-seq: one"), "{}", r[0].1);
    assert_eq!(r[1].1, "hello from pipe\n");
    assert!(r[2].0.starts_with("HTTP/1.1 404 Not Found\r\n"), "{raw}");
    assert!(r[2].0.contains("\r\nconnection: close\r\n"), "{}", r[2].0);
    for (head, _) in &r {
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(
            head.contains("\r\nx-envoy-upstream-service-time: "),
            "{head}"
        );
    }
    assert_eq!(origin.connections(), 1, "one pooled upstream connection");
    let codes: Vec<u16> = e.log_entries(3).await.iter().map(|l| l.code).collect();
    assert_eq!(codes, [200, 200, 404]);
}

#[tokio::test]
async fn head_and_204_responses_carry_no_body() {
    let origin = start_plain("nobody").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let raw = exchange_closed(
        e.addr,
        b"HEAD /bytes/5000 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: app.test\r\n\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = responses(&raw, &[true, true, false]);
    // The origin answers HEAD with the length its GET body would have; no body follows.
    assert!(r[0].0.contains("\r\ncontent-length: "), "{}", r[0].0);
    assert!(r[1].0.starts_with("HTTP/1.1 204 No Content\r\n"), "{raw}");
    assert!(!r[1].0.contains("transfer-encoding"), "{}", r[1].0);
    assert_eq!(r[2].1, "hello from nobody\n");
    let lines = e.log_entries(3).await;
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.code, l.bytes_sent))
            .collect::<Vec<_>>(),
        [(404, 0), (204, 0), (200, 18)]
    );
}

#[tokio::test]
async fn a_response_of_unknown_length_is_sent_chunked() {
    let origin = start_plain("chunks").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let raw = exchange_closed(
        e.addr,
        b"GET /chunked/100000 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let end = raw.find("\r\n\r\n").expect("head") + 4;
    let (head, mut rest) = (&raw[..end], &raw[end..]);
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    // Decode the chunks by hand.
    let mut body = 0usize;
    let mut chunks = 0;
    loop {
        let line_end = rest.find("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(&rest[..line_end], 16).expect("hex size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        assert!(rest[..size].bytes().all(|b| b == b'x'));
        assert_eq!(&rest[size..size + 2], "\r\n");
        rest = &rest[size + 2..];
        body += size;
        chunks += 1;
    }
    assert_eq!(body, 100_000);
    assert!(chunks >= 2, "streamed as it came: {chunks} chunks");
    // What is left is the trailer section (possibly empty) and the final CRLF.
    assert!(rest.ends_with("\r\n"), "{rest:?}");
    let l = e.log_entry(1).await;
    assert_eq!((l.code, l.bytes_sent), (200, 100_000));

    // curl decodes it too.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .args(["-H", "Host: app.test"])
        .arg(format!("http://{}/chunked/70000", e.addr))
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 70000");
}

#[tokio::test]
async fn a_request_with_a_body_goes_to_hyper_and_the_connection_keeps_working() {
    let origin = start_plain("upload").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    // A bodiless request first (egret's loop), then one with a body (handed to hyper with the
    // bytes already read), then another pipelined one that hyper serves.
    let raw = exchange_closed(
        e.addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\nPOST /sink HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\r\nhello worldGET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = responses(&raw, &[false, false, false]);
    assert_eq!(r[0].1, "hello from upload\n");
    assert_eq!(r[1].1, "11");
    assert!(r[2].1.starts_with("GET /headers"), "{}", r[2].1);
    let lines = e.log_entries(3).await;
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.method.as_str(), l.code, l.bytes_received))
            .collect::<Vec<_>>(),
        [("GET", 200, 0), ("POST", 200, 11), ("GET", 200, 0)]
    );
}

#[tokio::test]
async fn content_length_zero_and_http_1_0_are_served() {
    let origin = start_plain("edge").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.addr.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    let raw = exchange_closed(
        e.addr,
        b"POST /sink HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.0\r\nHost: app.test\r\n\r\n",
    )
    .await;
    let r = responses(&raw, &[false, false]);
    assert_eq!(r[0].1, "0");
    assert!(r[1].0.starts_with("HTTP/1.0 200"), "{raw}");
    assert_eq!(r[1].1, "hello from edge\n");
}
