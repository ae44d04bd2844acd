//! Formatting one access-log line: Istio's default TEXT format and its JSON format.
//!
//! `cargo bench --bench access_log`.

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use egret::access_log::{AccessRecord, LogFormat};
use http::{HeaderMap, HeaderValue, Method, Version};

fn record(format: &LogFormat) -> AccessRecord {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let mut r = AccessRecord::new(addr("127.0.0.1:15001"), addr("127.0.0.1:56948"), 1);
    r.method = Some(Method::GET);
    r.path = Some(http::uri::PathAndQuery::from_static("/api/v1/items?page=2"));
    r.authority = Some("api.example.com".into());
    r.protocol = Some(Version::HTTP_11);
    r.status = 200;
    r.details = Some("via_upstream".into());
    r.bytes_sent = 4096;
    r.end = Some(r.start_instant);
    r.upstream_host = Some(addr("10.0.0.7:443"));
    r.upstream_local = Some(addr("10.0.0.2:50174"));
    r.upstream_cluster = Some(Arc::from("outbound|80||api.example.com"));
    r.route_name = Some(Arc::from("default"));
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("56140728-4722-972f-afaa-299e00837e1a"),
    );
    format.capture_request(&mut r, &h);
    let mut resp = HeaderMap::new();
    resp.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("27"),
    );
    format.capture_response(&mut r, &resp);
    r
}

fn bench(c: &mut Criterion) {
    for (name, f) in [
        ("istio_text", LogFormat::istio_text()),
        ("istio_json", LogFormat::istio_json()),
    ] {
        let r = record(&f);
        c.bench_function(&format!("format_line/{name}"), |b| {
            b.iter(|| std::hint::black_box(f.format(&r)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
