//! Route lookup (pure, no I/O): a hit on an exact host, a hit on a wildcard suffix, and a miss
//! that falls back to `block_all`, in tables of 10, 1,000 and 10,000 hosts.
//!
//! `cargo bench --bench routing`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egret::route::{
    Fallback, HttpRoute, PortSource, RequestInfo, RouteTable, VirtualHost, WeightedClusters,
};
use http::{HeaderMap, Method};

fn table(n: usize) -> RouteTable {
    let mut t = RouteTable::new(PortSource::Request, Fallback::BlockAll);
    let v = t.vhosts_mut(80);
    for i in 0..n {
        for domain in [
            format!("host-{i}.example.com"),
            format!("*.zone-{i}.example.net"),
        ] {
            v.insert(VirtualHost {
                name: format!("{domain}:80"),
                domain,
                routes: vec![HttpRoute::forward(None, WeightedClusters::single(i), None)],
            });
        }
    }
    t
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        let exact = format!("host-{}.example.com", n / 2);
        let wild = format!("api.zone-{}.example.net", n / 2);
        for (case, host) in [
            ("exact", exact.as_str()),
            ("wildcard", wild.as_str()),
            ("miss", "nothing.example.org"),
        ] {
            g.bench_with_input(BenchmarkId::new(case, n), &host, |b, host| {
                b.iter(|| {
                    let info = RequestInfo {
                        host,
                        port: 80,
                        method: &Method::GET,
                        path_and_query: "/",
                        authority: host,
                        scheme: "http",
                        headers: &headers,
                    };
                    std::hint::black_box(t.route(&info));
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
