//! Bodies stream through egret in both directions: 256 MiB up and 256 MiB down over TLS while
//! the egret process's peak RSS stays within a few MiB of its idle RSS.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use support::*;

const SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarter_gigabyte_each_way_in_constant_memory() {
    let pki = Pki::new("stream");
    let leaf = pki.server_leaf(&["bulk.test"]);
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "bulk")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [bulk.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {ca}}}\n"
        ),
    );
    let connect_to = format!("bulk.test:443={}", upstream.addr);
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect_to,
        "--access-log",
        "off",
    ]);
    assert_eq!(get(egret.addr, "bulk.test", "/").await.status, 200);
    let idle_kib = egret.status_kib("VmRSS");

    // Upload: the body is generated on the fly; the origin counts and discards it.
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let n = (SIZE as usize) / CHUNK;
    let stream = futures_util::stream::iter(0..n)
        .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let req = Request::post("/sink")
        .header("host", "bulk.test")
        .header("content-length", SIZE.to_string())
        .body(StreamBody::new(stream))
        .expect("request");
    let r = request(egret.addr, req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, SIZE.to_string(), "the origin received every byte");

    // Download: count the bytes as they arrive.
    let stream = tokio::net::TcpStream::connect(egret.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("/bytes/{SIZE}"))
        .header("host", "bulk.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("frame").into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, SIZE);

    let peak_kib = egret.status_kib("VmHWM");
    let growth_mib = peak_kib.saturating_sub(idle_kib) as f64 / 1024.0;
    eprintln!(
        "egret RSS idle {:.1} MiB, peak {:.1} MiB after 2 x 256 MiB (growth {growth_mib:.1} MiB)",
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    assert!(
        growth_mib < 12.0,
        "egret buffered the bodies: peak RSS grew {growth_mib:.1} MiB over idle"
    );
}
