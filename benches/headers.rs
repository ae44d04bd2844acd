//! Header rewriting on the request path: hop-by-hop removal (RFC 9110 7.6.1, including the
//! names a `Connection` header lists) for a typical request without any, and for one with
//! several; and a VirtualService `headers` operation set (set, add, remove).
//!
//! `cargo bench --bench headers`.

use criterion::{Criterion, criterion_group, criterion_main};
use egret::proxy::strip_hop_by_hop;
use egret::route::HeaderOps;
use http::{HeaderMap, HeaderName, HeaderValue};

fn curl_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("upstream.test"));
    h.insert("user-agent", HeaderValue::from_static("curl/7.88.1"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("56140728-4722-972f-afaa-299e00837e1a"),
    );
    h
}

fn proxied_request() -> HeaderMap {
    let mut h = curl_request();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-trace", HeaderValue::from_static("1"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let plain = curl_request();
    g.bench_function("strip_hop_by_hop/none_present", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        )
    });
    let proxied = proxied_request();
    g.bench_function("strip_hop_by_hop/five_present", |b| {
        b.iter_batched_ref(
            || proxied.clone(),
            strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        )
    });
    let ops = HeaderOps {
        set: vec![(
            HeaderName::from_static("x-egress"),
            HeaderValue::from_static("gateway"),
        )],
        add: vec![(
            HeaderName::from_static("x-forwarded-client"),
            HeaderValue::from_static("orders"),
        )],
        remove: vec![HeaderName::from_static("user-agent")],
    };
    g.bench_function("virtualservice_header_ops", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |h| ops.apply(h),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
