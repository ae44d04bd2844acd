//! DNS through a real DNS server (hickory-server on 127.0.0.1:0): round robin over the
//! addresses, TTL expiry, failover to the next address, and resolution failures.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use egret::config::Overrides;
use support::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

struct Two {
    a: Upstream,
    b: Upstream,
    dir: tempfile::TempDir,
    ca: String,
    port: u16,
}

/// Two origins for api.test on the same port: 127.0.0.1 and 127.0.0.2.
async fn two_origins(label: &str) -> Two {
    let pki = Pki::new(label);
    let leaf = pki.server_leaf(&["api.test"]);
    let a = start_tls(UpstreamOptions::from_leaf(&leaf, "a")).await;
    let port = a.addr.port();
    let b = start_tls_at(
        UpstreamOptions::from_leaf(&leaf, "b"),
        SocketAddr::new(ip("127.0.0.2"), port),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    Two {
        a,
        b,
        dir,
        ca,
        port,
    }
}

fn yaml(two: &Two, dns: SocketAddr, extra: &str) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndns:\n  servers: [\"{dns}\"]\n{extra}destinations:\n  - hosts: [api.test, gone.test]\n    ports: [{{number: 80, targetPort: {}}}]\n    resolution: DNS\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {}}}\n",
        two.port, two.ca
    )
}

#[tokio::test]
async fn requests_are_spread_round_robin_over_the_addresses() {
    let two = two_origins("rr").await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip("127.0.0.1"), ip("127.0.0.2")], 300);
    let e = start_egret(
        &yaml(&two, dns.addr, ""),
        Overrides::default(),
        two.dir.path(),
    )
    .await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        let r = get(e.addr, "api.test", "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        *seen
            .entry(r.header("x-upstream-name").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
    // One pooled TLS connection per address.
    assert_eq!((two.a.handshakes(), two.b.handshakes()), (1, 1));
    // The answer was cached: one lookup (A and AAAA) for ten requests.
    assert!(
        dns.queries("api.test") <= 2,
        "queries: {}",
        dns.queries("api.test")
    );
    let hosts: std::collections::HashSet<String> = e
        .wait_log_lines(10)
        .await
        .iter()
        .map(|l| LogLine::parse(l).upstream_host)
        .collect();
    assert_eq!(
        hosts.len(),
        2,
        "both addresses appear in UPSTREAM_HOST: {hosts:?}"
    );
}

#[tokio::test]
async fn a_new_answer_is_used_once_the_ttl_expires() {
    let two = two_origins("ttl").await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip("127.0.0.1")], 1);
    let e = start_egret(
        &yaml(&two, dns.addr, ""),
        Overrides::default(),
        two.dir.path(),
    )
    .await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.header("x-upstream-name"), "a", "{r:?}");
    dns.set("api.test", &[ip("127.0.0.2")], 1);
    // Within the TTL the cached answer is still used.
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.header("x-upstream-name"), "a", "{r:?}");
    let before = dns.queries("api.test");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-upstream-name"),
        "b",
        "the expired answer was refreshed: {r:?}"
    );
    assert!(
        dns.queries("api.test") > before,
        "egret asked the DNS server again"
    );
}

#[tokio::test]
async fn a_refused_address_fails_over_to_the_next() {
    let two = two_origins("failover").await;
    let dns = TestDns::start().await;
    // 127.0.0.3 has nothing listening on the port: connect is refused, the next address works.
    dns.set("api.test", &[ip("127.0.0.3"), ip("127.0.0.1")], 300);
    let e = start_egret(
        &yaml(&two, dns.addr, ""),
        Overrides::default(),
        two.dir.path(),
    )
    .await;
    for _ in 0..4 {
        let r = get(e.addr, "api.test", "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-upstream-name"), "a");
    }
}

#[tokio::test]
async fn every_address_refused_is_uf_urx() {
    let two = two_origins("allfail").await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip("127.0.0.3"), ip("127.0.0.4")], 300);
    let e = start_egret(
        &yaml(&two, dns.addr, ""),
        Overrides::default(),
        two.dir.path(),
    )
    .await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("retried and the latest reset reason"),
        "{}",
        r.body
    );
    let l = e.log_entry(1).await;
    assert_eq!(l.flags, "UF,URX");
    // %UPSTREAM_HOST% is the last address tried, as Envoy logs it.
    assert!(
        l.upstream_host.starts_with("127.0.0.3:") || l.upstream_host.starts_with("127.0.0.4:"),
        "the address tried: {l:?}"
    );
    assert!(
        // Istio's default policy: the first attempt and two retries, over both addresses.
        l.transport_failure.contains("(after 3 attempts)"),
        "{}",
        l.transport_failure
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_uh_no_healthy_upstream() {
    let two = two_origins("nx").await;
    let dns = TestDns::start().await;
    let e = start_egret(
        &yaml(&two, dns.addr, ""),
        Overrides::default(),
        two.dir.path(),
    )
    .await;
    let r = get(e.addr, "gone.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.starts_with("no healthy upstream\n"), "{}", r.body);
    assert!(
        r.body.contains("dns.nxdomain: gone.test does not exist"),
        "{}",
        r.body
    );
    let l = e.log_entry(1).await;
    assert_eq!(
        (l.flags.as_str(), l.details.as_str()),
        ("UH", "no_healthy_upstream")
    );
    assert_eq!(l.cluster, "outbound|80||gone.test");
}

#[tokio::test]
async fn resolve_overrides_dns_and_connect_to_keeps_the_name() {
    let two = two_origins("override").await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip("127.0.0.1")], 300);
    let mut o = Overrides::default();
    o.upstream
        .resolve
        .insert("api.test".into(), vec![ip("127.0.0.2")]);
    let e = start_egret(&yaml(&two, dns.addr, ""), o, two.dir.path()).await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(
        r.header("x-upstream-name"),
        "b",
        "--resolve wins over DNS: {r:?}"
    );
    assert_eq!(dns.queries("api.test"), 0);
}
