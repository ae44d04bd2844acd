//! Istio's failure behaviour against origins that fail on cue: retries (Istio's default policy,
//! VirtualService `retries`, per-try timeouts, replayed bodies, `URX`), outlier detection
//! (ejection, return, panic, `UH`), circuit breaking (the pending queue and its overflow,
//! `http2MaxRequests`), fault injection, and a DNS name with a dead address. Every Envoy
//! counter the behaviour promises is read from `/stats/prometheus`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use egret::config::{Overrides, Source};
use http::Request;
use http_body_util::Full;
use support::*;

/// egret in-process with its stats and admin servers on port 0.
struct Running {
    egret: Egret,
    stats: SocketAddr,
    admin: SocketAddr,
}

async fn start(yaml: &str, dir: &Path) -> Running {
    let log = dir.join("access.log");
    let mut overrides = Overrides {
        access_log: Some(log.display().to_string()),
        ..Default::default()
    };
    overrides.istio.namespace = "work".into();
    let source = Source {
        name: dir.join("egret.yaml").display().to_string(),
        text: format!("listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\n---\n{yaml}"),
        base_dir: Some(dir.to_path_buf()),
        params: Vec::new(),
    };
    let cfg = egret::config::load(&[source], &overrides)
        .unwrap_or_else(|e| panic!("config must load:\n{e}"));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let options = egret::app::Options {
        drain: Duration::from_secs(5),
        ops: egret::app::OpsAddrs {
            ready: None,
            stats: Some(any),
            admin: Some(any),
        },
        ..Default::default()
    };
    let (bound, _warnings) = egret::app::build(cfg, options)
        .await
        .unwrap_or_else(|e| panic!("egret must start: {e}"));
    let addr = bound.listeners[0].1;
    let stats = bound.ops_addr("stats").expect("stats server");
    let admin = bound.ops_addr("admin").expect("admin server");
    Running {
        egret: Egret { bound, addr, log },
        stats,
        admin,
    }
}

impl Running {
    /// The value of `name{cluster_name="cluster"}` in `/stats/prometheus`.
    async fn metric(&self, name: &str, cluster: &str) -> f64 {
        let text = get(self.stats, "localhost", "/stats/prometheus").await.body;
        let prefix = format!("{name}{{cluster_name=\"{cluster}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in /stats/prometheus"))
    }
}

/// A ServiceEntry for `host` port 80 with STATIC endpoints on local ports (one per origin).
fn service_entry(host: &str, ports: &[u16]) -> String {
    let eps: String = ports
        .iter()
        .map(|p| format!("    - {{address: 127.0.0.1, ports: {{http: {p}}}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
{eps}---
"
    )
}

/// A VirtualService for `host` whose one route has `extra` (e.g. `retries: {...}`).
fn virtual_service(host: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
    - {extra}
      route: [{{destination: {{host: {host}, port: {{number: 80}}}}}}]
---
"
    )
}

fn destination_rule(host: &str, traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy: {traffic_policy}
---
"
    )
}

fn cluster(host: &str) -> String {
    format!("outbound|80||{host}")
}

async fn post(addr: SocketAddr, host: &str, body: &'static str) -> Resp {
    request(
        addr,
        Request::post("/submit")
            .header("host", host)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_default_retries_a_failed_connect_on_the_other_endpoint() {
    let live = start_scripted("live", |_| Act::Status(200)).await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(
        &service_entry("api.test", &[dead.port(), live.addr.port()]),
        dir.path(),
    )
    .await;
    for _ in 0..6 {
        let resp = get(r.egret.addr, "api.test", "/").await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    // Round robin sends half of the first attempts to the dead endpoint; each of those is
    // retried (connect-failure, Istio's default) and arrives as attempt 2.
    let seen = live.seen();
    assert_eq!(seen.len(), 6);
    let retried = seen.iter().filter(|s| s.attempt == Some(2)).count();
    assert_eq!(retried, 3, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.attempt == Some(1) || s.attempt == Some(2))
    );
    let c = cluster("api.test");
    assert_eq!(r.metric("envoy_cluster_upstream_rq_retry", &c).await, 3.0);
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_retry_success", &c)
            .await,
        3.0
    );
    assert_eq!(
        r.metric("envoy_cluster_upstream_cx_connect_fail", &c).await,
        3.0
    );
    let lines = r.egret.wait_log_lines(6).await;
    for l in &lines {
        let l = LogLine::parse(l);
        assert_eq!((l.code, l.flags.as_str()), (200, "-"), "{l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_5xx_replays_the_post_body_with_attempt_counts() {
    let origin = start_scripted("flaky", |i| {
        if i < 2 {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &virtual_service("api.test", "retries: {attempts: 3, retryOn: 5xx}\n");
    let r = start(&yaml, dir.path()).await;
    let resp = post(r.egret.addr, "api.test", "the request body").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = origin.seen();
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    assert!(
        seen.iter()
            .all(|s| s.method == "POST" && s.body == b"the request body"),
        "every attempt carries the whole body: {seen:?}"
    );
    let c = cluster("api.test");
    assert_eq!(r.metric("envoy_cluster_upstream_rq_retry", &c).await, 2.0);
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_retry_success", &c)
            .await,
        1.0
    );
    let l = r.egret.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str(), l.bytes_received), (200, "-", 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_forward_the_last_answer_with_urx() {
    let origin = start_scripted("down", |_| Act::Status(503)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &virtual_service(
            "api.test",
            "retries: {attempts: 2, retryOn: gateway-error}\n",
        );
    let r = start(&yaml, dir.path()).await;
    let resp = get(r.egret.addr, "api.test", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body, "down\n", "the origin's own answer");
    assert_eq!(origin.count(), 3, "the first attempt and two retries");
    let l = r.egret.log_entry(1).await;
    assert_eq!(
        (l.code, l.flags.as_str(), l.details.as_str()),
        (503, "URX", "via_upstream")
    );
    let c = cluster("api.test");
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_retry_limit_exceeded", &c)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_never_replays_a_request_that_went_out() {
    let origin = start_scripted("resets", |_| Act::Reset).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = start(
        &service_entry("api.test", &[origin.addr.port()]),
        dir.path(),
    )
    .await;
    let resp = post(r.egret.addr, "api.test", "pay once").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    let resp = get(r.egret.addr, "api.test", "/").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        origin.count(),
        2,
        "connect-failure does not cover a reset after the request was sent"
    );
    let l = r.egret.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str()), (503, "UC"), "{l:?}");
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_retry", &cluster("api.test"))
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_on_and_attempts_zero_turns_retries_off() {
    let origin = start_scripted("slow-once", |i| {
        if i == 0 {
            Act::Stall(Duration::from_secs(5))
        } else {
            Act::Status(200)
        }
    })
    .await;
    let stuck = start_scripted("stuck", |_| Act::Stall(Duration::from_secs(5))).await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &virtual_service(
            "api.test",
            "retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}\n",
        )
        + &service_entry("stuck.test", &[stuck.addr.port()])
        + &virtual_service(
            "stuck.test",
            "retries: {attempts: 0, perTryTimeout: 200ms}\n",
        )
        + &service_entry("dead.test", &[dead.port()])
        + &virtual_service("dead.test", "retries: {attempts: 0}\n");
    let r = start(&yaml, dir.path()).await;

    let resp = get(r.egret.addr, "api.test", "/").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(origin.count(), 2);
    assert_eq!(
        r.metric(
            "envoy_cluster_upstream_rq_per_try_timeout",
            &cluster("api.test")
        )
        .await,
        1.0
    );

    let started = Instant::now();
    let resp = get(r.egret.addr, "stuck.test", "/").await;
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not the origin's 5 s"
    );
    assert_eq!(stuck.count(), 1);

    let resp = get(r.egret.addr, "dead.test", "/").await;
    assert_eq!(resp.status, 503);
    assert!(!resp.body.contains("retried"), "{}", resp.body);
    let lines = r.egret.wait_log_lines(3).await;
    let stuck_line = LogLine::parse(&lines[1]);
    assert_eq!(
        (
            stuck_line.code,
            stuck_line.flags.as_str(),
            stuck_line.details.as_str()
        ),
        (504, "UT", "upstream_per_try_timeout")
    );
    assert_eq!(
        stuck_line.upstream_host,
        stuck.addr.to_string(),
        "the connection the attempt timed out on"
    );
    let dead_line = LogLine::parse(&lines[2]);
    assert_eq!(dead_line.flags, "UF", "no retry, so no URX");
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_retry", &cluster("dead.test"))
            .await,
        0.0
    );
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() {
    let bad = start_scripted("bad", |_| Act::Status(503)).await;
    let good = start_scripted("good", |_| Act::Status(200)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[bad.addr.port(), good.addr.port()])
        + &virtual_service("api.test", "retries: {attempts: 0}\n")
        + &destination_rule(
            "api.test",
            "{outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 1s, maxEjectionPercent: 100}}",
        );
    let r = start(&yaml, dir.path()).await;
    let c = cluster("api.test");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(r.egret.addr, "api.test", "/").await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "two 503s eject the bad endpoint: {statuses:?}"
    );
    assert_eq!(bad.count(), 2);
    assert_eq!(
        r.metric("envoy_cluster_outlier_detection_ejections_active", &c)
            .await,
        1.0
    );
    assert_eq!(
        r.metric(
            "envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx",
            &c
        )
        .await,
        1.0
    );
    let clusters = get(r.admin, "localhost", "/clusters").await.body;
    let flag = format!("{c}::{}::health_flags::/failed_outlier_check", bad.addr);
    assert!(clusters.contains(&flag), "{flag} in:\n{clusters}");

    // baseEjectionTime (1 s) later, the next interval brings it back.
    eventually("the endpoint's return", async || {
        r.metric("envoy_cluster_outlier_detection_ejections_active", &c)
            .await
            == 0.0
    })
    .await;
    for _ in 0..4 {
        get(r.egret.addr, "api.test", "/").await;
    }
    assert!(bad.count() > 2, "traffic reaches the returned endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_left_is_uh_and_panic_mode_uses_them_all() {
    let only = start_scripted("only", |_| Act::Status(500)).await;
    let bad = start_scripted("bad", |_| Act::Status(500)).await;
    let good = start_scripted("good", |_| Act::Status(200)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("one.test", &[only.addr.port()])
        + &virtual_service("one.test", "retries: {attempts: 0}\n")
        + &destination_rule(
            "one.test",
            "{outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}}",
        )
        + &service_entry("two.test", &[bad.addr.port(), good.addr.port()])
        + &virtual_service("two.test", "retries: {attempts: 0}\n")
        + &destination_rule(
            "two.test",
            "{outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: 60}}",
        );
    let r = start(&yaml, dir.path()).await;
    assert_eq!(get(r.egret.addr, "one.test", "/").await.status, 500);
    let resp = get(r.egret.addr, "one.test", "/").await;
    assert_eq!(resp.status, 503);
    assert!(
        resp.body.starts_with("no healthy upstream"),
        "{}",
        resp.body
    );
    assert_eq!(only.count(), 1, "the ejected endpoint gets nothing");
    let l = r.egret.log_entry(2).await;
    assert_eq!((l.code, l.flags.as_str()), (503, "UH"));

    // Two endpoints, one ejected: 50% healthy is below minHealthPercent 60, so the cluster
    // panics and keeps sending to both.
    for _ in 0..10 {
        get(r.egret.addr, "two.test", "/").await;
    }
    assert_eq!(
        r.metric(
            "envoy_cluster_outlier_detection_ejections_active",
            &cluster("two.test")
        )
        .await,
        1.0
    );
    assert!(
        bad.count() >= 4,
        "panic mode ignores the ejection: {}",
        bad.count()
    );
    assert!(good.count() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_queue_overflows_with_uo_under_concurrent_load() {
    let origin = start_scripted("slow", |_| Act::Stall(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &destination_rule(
            "api.test",
            "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 2}}}",
        );
    let r = start(&yaml, dir.path()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = r.egret.addr;
        tasks.push(tokio::spawn(
            async move { get(addr, "api.test", "/").await },
        ));
    }
    let mut ok = 0;
    let mut overflowed = 0;
    for t in tasks {
        let resp = t.await.expect("task");
        match resp.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(resp.header("x-envoy-overloaded"), "true");
                assert_eq!(resp.header("x-egret-error"), "upstream.overflow");
                overflowed += 1;
            }
            s => panic!("unexpected {s}: {resp:?}"),
        }
    }
    assert!(ok >= 3, "one on the connection and two queued: {ok} ok");
    assert!(overflowed >= 1, "8 at once cannot all fit: {overflowed}");
    assert_eq!(ok + overflowed, 8);
    let c = cluster("api.test");
    assert_eq!(
        r.metric("envoy_cluster_upstream_rq_pending_overflow", &c)
            .await,
        f64::from(overflowed)
    );
    assert_eq!(
        origin.count(),
        ok as usize,
        "one connection served every success"
    );
    assert_eq!(r.metric("envoy_cluster_upstream_cx_total", &c).await, 1.0);
    let lines = r.egret.wait_log_lines(8).await;
    let uo = lines
        .iter()
        .map(|l| LogLine::parse(l))
        .filter(|l| l.flags == "UO")
        .count();
    assert_eq!(uo, overflowed as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_max_requests_bounds_requests_in_flight() {
    let origin = start_scripted("slow", |_| Act::Stall(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &destination_rule(
            "api.test",
            "{connectionPool: {http: {http2MaxRequests: 2}}}",
        );
    let r = start(&yaml, dir.path()).await;
    let first: Vec<_> = (0..2)
        .map(|_| {
            let addr = r.egret.addr;
            tokio::spawn(async move { get(addr, "api.test", "/").await })
        })
        .collect();
    eventually("two requests in flight", async || {
        r.metric("envoy_cluster_upstream_rq_active", &cluster("api.test"))
            .await
            == 2.0
    })
    .await;
    let resp = get(r.egret.addr, "api.test", "/").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.body.contains("http2MaxRequests"), "{}", resp.body);
    for t in first {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert_eq!(
        r.metric(
            "envoy_cluster_upstream_rq_pending_overflow",
            &cluster("api.test")
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_aborts_and_delays_their_share() {
    let origin = start_scripted("origin", |_| Act::Status(200)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service_entry("abort.test", &[origin.addr.port()])
        + &virtual_service(
            "abort.test",
            "fault: {abort: {httpStatus: 418, percentage: {value: 50}}}\n",
        )
        + &service_entry("delay.test", &[origin.addr.port()])
        + &virtual_service(
            "delay.test",
            "fault: {delay: {fixedDelay: 150ms, percentage: {value: 100}}}\n",
        );
    let r = start(&yaml, dir.path()).await;
    let mut client = KeepAlive::connect(r.egret.addr).await;
    let n = 200;
    let mut aborted = 0;
    for _ in 0..n {
        let resp = client.get("abort.test", "/").await;
        match resp.status.as_u16() {
            418 => {
                assert_eq!(resp.body, "fault filter abort\n");
                aborted += 1;
            }
            200 => {}
            s => panic!("unexpected {s}"),
        }
    }
    // Binomial(200, 0.5): sd 7; 60..=140 is more than 5 sd either side.
    assert!((60..=140).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(
        origin.count(),
        n - aborted,
        "aborted requests never reach the origin"
    );

    let started = Instant::now();
    let resp = get(r.egret.addr, "delay.test", "/").await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let lines = r.egret.wait_log_lines(n + 1).await;
    let parsed: Vec<LogLine> = lines.iter().map(|l| LogLine::parse(l)).collect();
    let fi = parsed
        .iter()
        .filter(|l| l.flags == "FI" && l.details == "fault_filter_abort" && l.code == 418)
        .count();
    assert_eq!(fi, aborted);
    assert_eq!(parsed[n].flags, "DI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_with_a_dead_address_is_served_by_the_others() {
    // Three addresses for one name, on one port: 127.0.0.1 and 127.0.0.2 serve, 127.0.0.3
    // refuses.
    let one = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = one.local_addr().expect("addr").port();
    let two = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .expect("bind 127.0.0.2 on the same port");
    let a = start_scripted_on(one, "a", std::sync::Arc::new(|_| Act::Status(200)));
    let b = start_scripted_on(two, "b", std::sync::Arc::new(|_| Act::Status(200)));
    let dns = TestDns::start().await;
    let ips: Vec<std::net::IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    dns.set("api.test", &ips, 300);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "dns:\n  servers: [\"{}\"]\ndestinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: {port}}}]\n    resolution: DNS\n",
        dns.addr
    );
    let r = start(&yaml, dir.path()).await;
    for _ in 0..9 {
        let resp = get(r.egret.addr, "api.test", "/").await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert_eq!(a.count() + b.count(), 9);
    assert!(
        a.count() >= 3 && b.count() >= 3,
        "{} / {}",
        a.count(),
        b.count()
    );
    let retried = a
        .seen()
        .iter()
        .chain(b.seen().iter())
        .filter(|s| s.attempt == Some(2))
        .count();
    assert_eq!(retried, 3, "a third of first attempts hit 127.0.0.3");
    assert_eq!(
        r.metric(
            "envoy_cluster_upstream_cx_connect_fail",
            "outbound|80||api.test"
        )
        .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closing_mid_body_is_uc_and_never_retried() {
    let origin = start_scripted("cut", |_| Act::CloseMidBody).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Even a policy that retries resets cannot retry once the response has started.
    let yaml = service_entry("api.test", &[origin.addr.port()])
        + &virtual_service("api.test", "retries: {attempts: 3, retryOn: reset}\n");
    let r = start(&yaml, dir.path()).await;
    let (got, _) = exchange(
        r.egret.addr,
        b"GET / HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with("0123456789"),
        "the 10 bytes that came, then the connection closes: {got}"
    );
    assert_eq!(origin.count(), 1, "a started response is never retried");
    let l = r.egret.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str()), (200, "UC"), "{l:?}");
    assert_eq!(l.bytes_sent, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_count_is_in_the_access_log() {
    let origin = start_scripted("flaky", |i| {
        if i < 3 {
            Act::Status(503)
        } else {
            Act::Status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata:\n  mesh: |-\n    accessLogFormat: \"%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\\n\"\n---\n";
    let yaml = mesh.to_string()
        + &service_entry("api.test", &[origin.addr.port()])
        + &virtual_service("api.test", "retries: {attempts: 1, retryOn: 503}\n");
    let r = start(&yaml, dir.path()).await;
    assert_eq!(get(r.egret.addr, "api.test", "/").await.status, 503);
    assert_eq!(get(r.egret.addr, "api.test", "/").await.status, 200);
    let lines = r.egret.wait_log_lines(2).await;
    assert_eq!(lines, vec!["503 URX 2", "200 - 2"]);
    assert_eq!(origin.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_refusing_tcp_endpoint() {
    let echo = start_echo_plain().await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: kafka}}
spec:
  hosts: [kafka.test]
  ports: [{{number: 9092, name: tcp-kafka, protocol: TCP}}]
  resolution: STATIC
  endpoints:
    - {{address: 127.0.0.1, ports: {{tcp-kafka: {}}}}}
    - {{address: 127.0.0.1, ports: {{tcp-kafka: {}}}}}
---
",
        dead.port(),
        echo.addr.port()
    ) + &destination_rule(
        "kafka.test",
        "{outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}}",
    );
    let log = dir.path().join("access.log");
    let mut overrides = Overrides {
        access_log: Some(log.display().to_string()),
        ..Default::default()
    };
    overrides.istio.namespace = "work".into();
    overrides.istio.bind_ports.insert(9092, 0);
    let source = Source {
        name: dir.path().join("egret.yaml").display().to_string(),
        text: yaml,
        base_dir: Some(dir.path().to_path_buf()),
        params: Vec::new(),
    };
    let cfg = egret::config::load(&[source], &overrides).unwrap_or_else(|e| panic!("{e}"));
    let (bound, _) = egret::app::build(cfg, egret::app::Options::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = bound
        .listeners
        .iter()
        .find(|(n, _)| n.ends_with("9092"))
        .map(|(_, a)| *a)
        .expect("the TCP listener");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for i in 0..6 {
        let mut s = tokio::net::TcpStream::connect(listener)
            .await
            .expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("an answer in time")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!((n, &got), (4, b"ping"));
    }
    // The dead endpoint was tried once (and the connection moved on to the live one); after
    // that it is ejected and never dialled again.
    let stats = bound.state.load().metrics.render();
    let line = |name: &str| {
        stats
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "{name}{{cluster_name=\"outbound|9092||kafka.test\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("missing")
            .to_string()
    };
    assert_eq!(line("envoy_cluster_upstream_cx_connect_fail"), "1");
    assert_eq!(
        line("envoy_cluster_outlier_detection_ejections_active"),
        "1"
    );
    assert_eq!(echo.connections(), 6);
}
