//! Round trips through an in-process egret to a local rustls origin: the cost of one proxied
//! request on a pooled TLS connection (the steady state), and with a fresh TCP+TLS connection
//! per request (`maxRequestsPerConnection: 1`).
//!
//! `cargo bench --bench roundtrip`. The client, egret and the origin share the process and the
//! machine, so read the numbers as relative (pooled vs new connection, before vs after a change).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use support::*;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::new("bench");
    let leaf = pki.server_leaf(&["api.test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let (upstream, pooled, fresh) = rt.block_on(async {
        let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "bench")).await;
        let yaml = |extra: &str| {
            format!(
                "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\naccessLog: {{path: off}}\ndestinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {ca}}}\n{extra}"
            )
        };
        let pooled = start_egret(&yaml(""), connect_to("api.test", 443, upstream.addr), dir.path()).await;
        let fresh = start_egret(
            &yaml("      connectionPool:\n        http: {maxRequestsPerConnection: 1}\n"),
            connect_to("api.test", 443, upstream.addr),
            dir.path(),
        )
        .await;
        (upstream, pooled, fresh)
    });

    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(8));
    for (name, egret) in [("pooled_tls", &pooled), ("new_tls_connection", &fresh)] {
        let addr = egret.addr;
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut client = KeepAlive::connect(addr).await;
                let start = Instant::now();
                for _ in 0..iters {
                    let r = client.get("api.test", "/").await;
                    assert_eq!(r.status, 200);
                }
                start.elapsed()
            });
        });
    }
    g.finish();
    eprintln!("origin handshakes: {}", upstream.handshakes());
}

criterion_group!(benches, bench);
criterion_main!(benches);
