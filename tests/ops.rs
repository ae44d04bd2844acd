//! Running in a pod: readiness transitions, Prometheus stats parsed with a real exposition
//! parser, the admin API, graceful drain on SIGTERM, and live reload (certificate rotation
//! under load through Kubernetes' atomic `..data` symlink swap, and a broken file that changes
//! nothing).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn post(addr: SocketAddr, path: &str) -> Resp {
    request(
        addr,
        Request::post(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus exposition")
}

/// The value of the sample `metric` whose labels include all of `labels`.
fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.last().map_or(0.0, |c| c.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

fn simple_config(dir: &Path, ca: &str, extra: &str) -> String {
    write(
        dir,
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {ca}}}\n{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_goes_from_not_ready_to_ready_to_draining() {
    let pki = Pki::new("ready");
    let upstream = start_tls(UpstreamOptions::from_leaf(
        &pki.server_leaf(&["api.test"]),
        "ready",
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The CA file is a FIFO: egret blocks reading it at start-up until the test writes it,
    // which holds egret in "not ready" for as long as the test wants.
    let fifo = dir.path().join("ca.pem");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let cfg = simple_config(dir.path(), &fifo.display().to_string(), "");
    let connect = format!("api.test:443={}", upstream.addr);
    let mut egret = EgretProcess::start_early(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect,
        "--drain-grace",
        "2s",
        "--watch-interval",
        "0s",
    ]);
    let ready = egret.addr;

    // 503 from the first answer on; the reason moves from "configuration not loaded yet" to
    // the TLS material egret is blocked reading (the FIFO).
    let mut r = get(ready, "localhost", "/healthz/ready").await;
    for _ in 0..100 {
        assert_eq!(r.status, 503, "{r:?}");
        if r.body
            .contains("loading TLS material and binding listeners")
        {
            break;
        }
        assert!(
            r.body.contains("configuration not loaded yet"),
            "{}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = get(ready, "localhost", "/healthz/ready").await;
    }
    assert!(
        r.body
            .contains("loading TLS material and binding listeners"),
        "{}",
        r.body
    );

    let root = pki.root_pem();
    let fifo2 = fifo.clone();
    blocking(move || std::fs::write(&fifo2, root).expect("write the fifo")).await;
    let proxy = egret.wait_listener("listener outbound");
    let mut ok = false;
    for _ in 0..100 {
        if get(ready, "localhost", "/healthz/ready").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "ready once the configuration is loaded and listeners are bound"
    );
    assert_eq!(get(proxy, "api.test", "/").await.status, 200);

    // SIGTERM: readiness turns 503 at once, while the grace period still serves requests.
    egret.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(ready, "localhost", "/healthz/ready").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("draining"), "{}", r.body);
    let r = get(proxy, "api.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("connection")),
        (200, "close"),
        "still served, with Connection: close"
    );
    let st = blocking(move || egret.wait_exit(20))
        .await
        .expect("exits after the grace period");
    assert!(st.success(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_move_by_the_right_amounts() {
    let pki = Pki::new("stats");
    let upstream = start_tls(UpstreamOptions::from_leaf(
        &pki.server_leaf(&["api.test"]),
        "stats",
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let cfg = simple_config(dir.path(), &ca, "");
    let connect = format!("api.test:443={}", upstream.addr);
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect,
        "--access-log",
        "off",
    ]);
    let stats = egret.listener("stats");
    let before = scrape(&get(stats, "localhost", "/stats/prometheus").await.body);
    assert_eq!(
        value(
            &before,
            "envoy_cluster_upstream_rq_total",
            &[("cluster_name", "outbound|80||api.test")]
        ),
        Some(0.0)
    );

    let mut client = KeepAlive::connect(egret.addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("api.test", "/").await.status, 200);
    }
    assert_eq!(client.get("api.test", "/status/503").await.status, 503);
    assert_eq!(get(egret.addr, "blocked.test", "/").await.status, 502);

    let r = get(stats, "localhost", "/stats/prometheus").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    let s = scrape(&r.body);
    let c = [("cluster_name", "outbound|80||api.test")];
    assert_eq!(value(&s, "envoy_cluster_upstream_rq_total", &c), Some(6.0));
    assert_eq!(
        value(
            &s,
            "envoy_cluster_upstream_rq",
            &[
                ("cluster_name", "outbound|80||api.test"),
                ("envoy_response_code", "200")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &s,
            "envoy_cluster_upstream_rq",
            &[
                ("cluster_name", "outbound|80||api.test"),
                ("envoy_response_code", "503")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "envoy_cluster_upstream_rq",
            &[
                ("cluster_name", "outbound|80||api.test"),
                ("envoy_response_code_class", "2xx")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(value(&s, "envoy_cluster_upstream_cx_total", &c), Some(1.0));
    assert_eq!(value(&s, "envoy_cluster_upstream_cx_active", &c), Some(1.0));
    assert_eq!(value(&s, "envoy_cluster_ssl_handshake", &c), Some(1.0));
    assert_eq!(
        value(&s, "envoy_cluster_upstream_rq_time", &c),
        Some(6.0),
        "histogram count"
    );
    assert_eq!(
        value(
            &s,
            "envoy_http_downstream_rq_total",
            &[("http_conn_manager_prefix", "outbound")]
        ),
        Some(7.0)
    );
    assert_eq!(
        value(
            &s,
            "envoy_listener_downstream_cx_total",
            &[("listener_address", "outbound")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "istio_requests_total",
            &[
                ("destination_service", "api.test"),
                ("response_code", "200"),
                ("reporter", "source")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &s,
            "istio_requests_total",
            &[
                ("destination_service", "BlackHoleCluster"),
                ("response_code", "502")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "istio_request_duration_milliseconds",
            &[
                ("destination_service", "api.test"),
                ("response_code", "200")
            ]
        ),
        Some(5.0)
    );
    // (prometheus-parse drops label values that contain '=', such as subject="CN=...", so the
    // series is selected by its source file.)
    let expiry = value(
        &s,
        "egret_cert_expiry_seconds",
        &[("role", "ca"), ("source", ca.as_str())],
    )
    .expect("cert expiry");
    assert!(
        expiry > 86400.0 * 300.0,
        "the test root lives ~10 years: {expiry}"
    );
    assert_eq!(
        value(&s, "egret_config_reload_total", &[("result", "failure")]),
        Some(0.0)
    );
    assert_eq!(value(&s, "egret_access_log_dropped_total", &[]), Some(0.0));
    // /metrics is the same exposition.
    let m = scrape(&get(stats, "localhost", "/metrics").await.body);
    assert_eq!(value(&m, "envoy_cluster_upstream_rq_total", &c), Some(6.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_clusters_config_and_certs_without_key_material() {
    let pki = Pki::new("admin");
    let leaf = pki.server_leaf(&["api.test"]);
    let upstream = start_tls(UpstreamOptions {
        chain: leaf.chain_der.clone(),
        key: leaf.key_der.clone_key(),
        client_ca: Some(pki.root_der()),
        name: "admin".into(),
    })
    .await;
    let client = pki.client_leaf("admin-client");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let crt = write(dir.path(), "crt.pem", &client.chain_pem);
    let key = write(dir.path(), "key.pem", &client.key_pem);
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {crt}, privateKey: {key}}}\n"
        ),
    );
    let connect = format!("api.test:443={}", upstream.addr);
    let mut egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect,
        "--access-log",
        "off",
    ]);
    let admin = egret.listener("admin");
    assert_eq!(get(egret.addr, "api.test", "/").await.status, 200);

    let r = get(admin, "localhost", "/ready").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "LIVE\n"));
    let r = get(admin, "localhost", "/clusters").await;
    assert!(
        r.body.contains("outbound|80||api.test::rq_total::1"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!(
            "outbound|80||api.test::{}::idle_connections::1",
            upstream.addr
        )),
        "{}",
        r.body
    );
    let r = get(admin, "localhost", "/clusters?format=json").await;
    let j: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert!(
        j["cluster_statuses"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["name"] == "outbound|80||api.test" && c["pool_idle"] == 1)
    );

    let dump = get(admin, "localhost", "/config_dump").await.body;
    let key_body: String = client
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !dump.contains(&key_body[..40]),
        "no key material in /config_dump"
    );
    assert!(!dump.contains("PRIVATE KEY"), "no PEM in /config_dump");
    let j: serde_json::Value = serde_json::from_str(&dump).expect("json");
    let c = j["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "outbound|80||api.test")
        .expect("cluster");
    assert_eq!(
        c["tls"]["privateKey"],
        serde_json::json!(key),
        "only where the key is"
    );
    assert_eq!(c["tls"]["mode"], "MUTUAL");

    let certs = get(admin, "localhost", "/certs").await.body;
    assert!(
        certs.contains("\"subject\": \"CN=admin-client\""),
        "{certs}"
    );
    assert!(
        certs.contains("\"subject\": \"CN=Egret Test Root admin\""),
        "{certs}"
    );

    // Mutations need POST.
    assert_eq!(get(admin, "localhost", "/quitquitquit").await.status, 405);
    let r = post(admin, "/logging?level=debug").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "log level is now debug\n")
    );
    let r = post(admin, "/logging?level=nonsense=").await;
    assert_eq!(r.status, 400);
    assert_eq!(post(admin, "/quitquitquit").await.status, 200);
    let st = blocking(move || egret.wait_exit(20))
        .await
        .expect("exits after /quitquitquit");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let origin = start_plain("slow").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [app.test]\n    ports: [{{number: 80, targetPort: {}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n",
            origin.addr.port()
        ),
    );
    let mut egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--drain-duration",
        "10s",
        "--access-log",
        "off",
    ]);
    let addr = egret.addr;
    let slow = tokio::spawn(async move { get(addr, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    egret.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The listener is closed: new connections are refused.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    let r = slow.await.expect("slow request");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "slow\n"),
        "the request in flight completed"
    );
    let started = Instant::now();
    let st = blocking(move || egret.wait_exit(20))
        .await
        .expect("exits when the last request is done");
    assert!(st.success(), "{st:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let origin = start_plain("slow").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [app.test]\n    ports: [{{number: 80, targetPort: {}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n",
            origin.addr.port()
        ),
    );
    let mut egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--drain-duration",
        "60s",
        "--access-log",
        "off",
    ]);
    let addr = egret.addr;
    let _slow = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(30),
            get(addr, "app.test", "/slow/20000"),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    egret.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    egret.signal("TERM");
    let st = blocking(move || egret.wait_exit(10)).await.expect("exits");
    assert!(st.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "did not wait for the 20 s request"
    );
}

/// Writes `files` into a new Kubernetes-style version directory and swaps `..data` to it
/// atomically, as the kubelet does for a mounted Secret.
fn k8s_secret_update(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let v = dir.join(version);
    std::fs::create_dir(&v).expect("mkdir version");
    for (name, content) in files {
        std::fs::write(v.join(name), content).expect("write");
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap of ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("symlink file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_no_request_and_a_broken_file_changes_nothing() {
    // Old PKI a, new PKI b. The origin first presents a certificate from a and accepts client
    // certificates from a or b (an overlap, as any rotation needs); egret first trusts a and
    // presents a client certificate from a.
    let a = Pki::new("a");
    let b = Pki::new("b");
    let leaf_a = a.server_leaf(&["api.test"]);
    let leaf_b = b.server_leaf(&["api.test"]);
    let (upstream, rotator) = start_tls_rotatable(
        UpstreamOptions {
            chain: leaf_a.chain_der.clone(),
            key: leaf_a.key_der.clone_key(),
            client_ca: Some(a.root_der()),
            name: "rotating".into(),
        },
        &[b.root_der()],
    )
    .await;
    let client_a = a.client_leaf("client-a");
    let client_b = b.client_leaf("client-b");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    k8s_secret_update(
        &certs,
        "..v1",
        &[
            ("ca.pem", &a.root_pem()),
            ("crt.pem", &client_a.chain_pem),
            ("key.pem", &client_a.key_pem),
        ],
    );
    let p = |n: &str| certs.join(n).display().to_string();
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!(
            "destinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, targetPort: 443}}]\n    trafficPolicy:\n      connectionPool: {{http: {{maxRequestsPerConnection: 3}}}}\n      tls: {{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}}}\n",
            p("ca.pem"),
            p("crt.pem"),
            p("key.pem")
        ),
    );
    let connect = format!("api.test:443={}", upstream.addr);
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &connect,
        "--watch-interval",
        "100ms",
        "--access-log",
        "off",
    ]);
    let stats = egret.listener("stats");
    // A keep-alive client connection opened before any reload must survive them all.
    let mut early = KeepAlive::connect(egret.addr).await;
    assert_eq!(early.get("api.test", "/").await.status, 200);

    // Load: 4 workers x 150 requests (bounded), recording failures and client certificates.
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let cns = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (addr, failures, cns) = (egret.addr, failures.clone(), cns.clone());
        workers.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(addr).await;
            for i in 0..150 {
                let r = c.get("api.test", "/").await;
                if r.status != 200 {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("worker {w} request {i}: {} {}", r.status, r.body));
                }
                cns.lock()
                    .expect("lock")
                    .insert(r.header("x-upstream-client-cn").to_string());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotate egret's Secret: trust a and b, present b.
    let bundle = format!("{}{}", a.root_pem(), b.root_pem());
    k8s_secret_update(
        &certs,
        "..v2",
        &[
            ("ca.pem", &bundle),
            ("crt.pem", &client_b.chain_pem),
            ("key.pem", &client_b.key_pem),
        ],
    );
    let mut reloaded = false;
    for _ in 0..100 {
        let s = scrape(&get(stats, "localhost", "/stats/prometheus").await.body);
        if value(&s, "egret_config_reload_total", &[("result", "success")]) == Some(1.0) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reloaded,
        "the ..data swap was noticed and reloaded: {:#?}",
        egret.stderr()
    );
    // Now the origin moves to b for new connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handshakes_before = upstream.handshakes();
    rotator.set(
        UpstreamOptions {
            chain: leaf_b.chain_der.clone(),
            key: leaf_b.key_der.clone_key(),
            client_ca: Some(b.root_der()),
            name: "rotating".into(),
        },
        &[],
    );
    for w in workers {
        w.await.expect("worker");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}",
        failures.len()
    );
    let cns = cns.lock().expect("lock").clone();
    assert!(
        cns.contains("client-a") && cns.contains("client-b"),
        "both client certificates were used: {cns:?}"
    );
    assert!(
        upstream.handshakes() > handshakes_before,
        "new connections were verified against b"
    );

    // A broken certificate: rejected, counted, traffic untouched.
    k8s_secret_update(
        &certs,
        "..v3",
        &[
            (
                "ca.pem",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            ("crt.pem", &client_b.chain_pem),
            ("key.pem", &client_b.key_pem),
        ],
    );
    let mut rejected = false;
    for _ in 0..100 {
        let s = scrape(&get(stats, "localhost", "/stats/prometheus").await.body);
        if value(&s, "egret_config_reload_total", &[("result", "failure")]) == Some(1.0) {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rejected,
        "the broken file was rejected: {:#?}",
        egret.stderr()
    );
    assert!(
        egret.stderr().iter().any(|l| l.contains("reload rejected")),
        "{:#?}",
        egret.stderr()
    );
    for _ in 0..20 {
        assert_eq!(get(egret.addr, "api.test", "/").await.status, 200);
    }
    assert_eq!(
        early.get("api.test", "/").await.status,
        200,
        "the early connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_keeps_listeners_and_applies_the_new_routes() {
    let origin = start_plain("v").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = |host: &str| {
        format!(
            "  - hosts: [{host}]\n    ports: [{{number: 80, targetPort: {}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n",
            origin.addr.port()
        )
    };
    let cfg = write(
        dir.path(),
        "egret.yaml",
        &format!("destinations:\n{}", dest("one.test")),
    );
    let mut egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--watch-interval",
        "0s",
        "--access-log",
        "off",
    ]);
    let addr = egret.addr;
    let mut early = KeepAlive::connect(addr).await;
    assert_eq!(early.get("one.test", "/").await.status, 200);
    assert_eq!(early.get("two.test", "/").await.status, 502);
    std::fs::write(
        &cfg,
        format!("destinations:\n{}{}", dest("one.test"), dest("two.test")),
    )
    .expect("rewrite");
    egret.signal("HUP");
    let mut ok = false;
    for _ in 0..100 {
        if early.get("two.test", "/").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "the new route is served on the same, still open connection"
    );
    assert_eq!(
        get(addr, "two.test", "/").await.status,
        200,
        "the listener kept its port"
    );
    // An invalid file is refused and the running configuration stays.
    std::fs::write(
        &cfg,
        "destinations:\n  - hosts: [one.test]\n    ports: [{number: 80, protocl: HTTP}]\n",
    )
    .expect("rewrite");
    egret.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        egret
            .stderr()
            .iter()
            .any(|l| l.contains("unknown field \"protocl\"")),
        "{:#?}",
        egret.stderr()
    );
    assert_eq!(get(addr, "two.test", "/").await.status, 200);
    egret.signal("TERM");
    let st = blocking(move || egret.wait_exit(10)).await.expect("exits");
    assert!(st.success());
}

/// CPU ticks (utime + stime) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// An idle egret uses no CPU, with the operational servers on or off (a closed admin command
/// channel once made the main loop spin at 100 % of a core with `--admin off`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_egret_does_not_spin() {
    for extra in [
        &["--admin", "off", "--ready", "off", "--stats", "off"][..],
        &[][..],
    ] {
        let mut args = vec![
            "run",
            "--outbound-listen",
            "127.0.0.1:0",
            "--concurrency",
            "1",
        ];
        args.extend_from_slice(extra);
        let egret = EgretProcess::start(&args);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = cpu_ticks(egret.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_ticks(egret.pid()) - before;
        // A spinning loop burns ~200 ticks in 2 s; an idle process 0-2.
        assert!(
            used < 50,
            "{used} CPU ticks in 2 s of idling with {extra:?}"
        );
    }
}

/// Runs `program args` until egret announces its listener; returns the worker-count line it
/// printed and the number of tokio worker threads the process runs (waiting up to 5 s for
/// `expect` of them: a new thread takes its name a moment after it exists).
fn worker_threads(program: &str, args: &[&str], expect: usize) -> (String, usize) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let mut announced = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        if line.contains("worker thread") {
            announced = line;
        } else if line.starts_with("egret: listening on ") {
            break;
        }
    }
    // `taskset` execs egret, so the pid is egret's.
    let count = || {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .expect("/proc/PID/task")
            .filter_map(|t| t.ok())
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("tokio-rt-worker"))
            })
            .count()
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut workers = count();
    let until = Instant::now() + Duration::from_secs(5);
    while workers != expect && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        workers = count();
    }
    let _ = child.kill();
    let _ = child.wait();
    (announced, workers)
}

/// Worker threads default to the CPUs the process may use (here its affinity mask, set with
/// `taskset`; a cgroup CPU quota counts the same way), not the host's cores; `--concurrency`
/// overrides it. One CPU means one thread running everything (no worker pool).
#[test]
fn worker_threads_follow_the_cpus_the_process_may_use() {
    let bin = env!("CARGO_BIN_EXE_egret");
    let run = [
        "run",
        "--outbound-listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--ready",
        "off",
        "--stats",
        "off",
        "--access-log",
        "off",
    ];
    let mut pinned = vec!["-c", "0", bin];
    pinned.extend_from_slice(&run);
    let (line, workers) = worker_threads("taskset", &pinned, 0);
    assert_eq!(
        line,
        "egret: 1 worker thread (the CPUs this process may use: cgroup quota and affinity)"
    );
    assert_eq!(workers, 0, "one CPU: the current-thread runtime");

    let mut three = run.to_vec();
    three.extend_from_slice(&["--concurrency", "3"]);
    let (line, workers) = worker_threads(bin, &three, 3);
    assert_eq!(line, "egret: 3 worker threads (--concurrency)");
    assert_eq!(workers, 3);

    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let mut two = vec!["-c", "0,1", bin];
        two.extend_from_slice(&run);
        let (line, workers) = worker_threads("taskset", &two, 2);
        assert!(line.starts_with("egret: 2 worker threads ("), "{line}");
        assert_eq!(workers, 2);
    }
}
