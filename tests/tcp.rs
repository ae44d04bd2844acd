//! TCP proxying with the real binary on loopback: sidecar TCP listeners for ServiceEntry TCP
//! ports with TLS/mTLS origination (a real redis-server over mTLS, a TLS echo server), half-close,
//! 64 MiB each way in bounded memory, the idle timeout and connect failures; the egress gateway's
//! TCP routes and TLS passthrough by SNI; CONNECT tunnels on the sidecar's outbound listener.
//! Every connection's access-log line (Istio's TEXT format, `"- - -" 0`) is checked.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::redis::{have, redis_cli, start_redis};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Starts the egret binary with `args` (plus `--access-log -`: the log is egret's stdout).
fn egret(args: &[String]) -> EgretProcess {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--access-log", "-"]);
    EgretProcess::start(&all)
}

/// `run -c CFG --outbound-listen 127.0.0.1:0` and `extra`: a sidecar egret.
fn sidecar(cfg: &str, extra: &[String]) -> EgretProcess {
    let mut args: Vec<String> = ["run", "-c", cfg, "--outbound-listen", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().cloned());
    egret(&args)
}

/// An egress gateway egret selected by `istio=egressgateway` on 127.0.0.1.
fn gateway(cfg: &str, extra: &[String]) -> EgretProcess {
    let mut args: Vec<String> = [
        "run",
        "-c",
        cfg,
        "--role",
        "gateway",
        "--gateway-selector",
        "istio=egressgateway",
        "--listen-address",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    egret(&args)
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Waits (up to 10 s) for the `n`th access-log line and parses it.
async fn log_entry(e: &EgretProcess, n: usize) -> LogLine {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = e.stdout();
        if lines.len() >= n {
            eprintln!("access log line {n}: {}", lines[n - 1]);
            return LogLine::parse(&lines[n - 1]);
        }
        if Instant::now() > deadline {
            panic!(
                "expected {n} access-log lines; stdout: {lines:#?}; stderr: {:#?}",
                e.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until EOF (or a reset, which also ends the stream), within `secs`.
async fn read_until_closed(s: &mut TcpStream, secs: u64) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .unwrap_or_else(|_| panic!("the connection was not closed within {secs} s"));
    (out, err)
}

/// Asserts the fields every TCP-proxy line shares: `"- - -" 0`.
fn assert_tcp_line(l: &LogLine) {
    assert_eq!(
        (
            l.method.as_str(),
            l.path.as_str(),
            l.protocol.as_str(),
            l.code
        ),
        ("-", "-", "-", 0),
        "a TCP connection logs \"- - -\" 0: {l:?}"
    );
}

/// A ServiceEntry with one port.
fn service_entry(host: &str, port: u16, name: &str, protocol: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {n}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: {name}, protocol: {protocol}}}]
  resolution: DNS
",
        n = host.split('.').next().unwrap_or("se")
    )
}

/// A DestinationRule with `policy` as its trafficPolicy (a YAML flow mapping).
fn destination_rule(host: &str, policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {n}}}
spec:
  host: {host}
  trafficPolicy: {policy}
",
        n = host.split('.').next().unwrap_or("dr")
    )
}

/// `root + intermediate` in `dir/ca.pem`: what a client needs when the server sends its leaf and
/// intermediate.
fn ca_bundle(pki: &Pki, dir: &Path) -> String {
    write(
        dir,
        "ca.pem",
        &format!("{}{}", pki.root_pem(), pki.intermediate_pem()),
    )
}

/// A TLS origin for `host` (answering "hello from `name`"), a scratch directory, and the CA
/// bundle that verifies the origin, in it.
async fn tls_origin(label: &str, host: &str, name: &str) -> (Upstream, tempfile::TempDir, String) {
    let pki = Pki::new(label);
    let upstream = start_tls(UpstreamOptions::from_leaf(&pki.server_leaf(&[host]), name)).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = ca_bundle(&pki, tmp.path());
    (upstream, tmp, ca)
}

// ---------------------------------------------------------------------------------------------
// a. redis-server over mutual TLS

fn redis_yaml(dir: &Path, tls: &str) -> String {
    let yaml = format!(
        "{}---\n{}",
        service_entry("redis.example.com", 6379, "tcp-redis", "TCP"),
        destination_rule("redis.example.com", &format!("{{tls: {tls}}}"))
    );
    write(dir, "redis.yaml", &yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_tcp_listener_with_mutual_tls() {
    if !(have("redis-server") && have("redis-cli")) {
        assert!(
            std::env::var_os("EGRET_REQUIRE_REDIS").is_none(),
            "EGRET_REQUIRE_REDIS is set but redis-server/redis-cli are missing (apt-get install -y redis-server redis-tools)"
        );
        eprintln!(
            "SKIPPED redis_through_tcp_listener_with_mutual_tls: redis-server/redis-cli not installed"
        );
        return;
    }
    let pki = Pki::new("redis");
    let server = pki.server_leaf(&["redis.example.com"]);
    let client = pki.client_leaf("egret-redis-client");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // The server sends its leaf only: the client must hold the intermediate.
    let leaf = write(dir, "leaf.pem", &server.leaf_pem);
    let leaf_key = write(dir, "leaf.key", &server.key_pem);
    // Redis verifies clients against the root only: OpenSSL also builds the chain it sends
    // from this store, and an intermediate here would be sent along with the leaf. The client
    // certificate file carries the intermediate instead.
    let client_ca = write(dir, "client-ca.pem", &pki.root_pem());
    let bundle = format!("{}{}", pki.root_pem(), pki.intermediate_pem());
    let ca = write(dir, "ca.pem", &bundle);
    let root_only = write(dir, "root.pem", &pki.root_pem());
    let client_crt = write(dir, "client.pem", &client.chain_pem);
    let client_key = write(dir, "client.key", &client.key_pem);

    let redis = {
        let (d, l, k, c) = (
            dir.to_path_buf(),
            leaf.clone(),
            leaf_key.clone(),
            client_ca.clone(),
        );
        blocking(move || start_redis(&d, [127, 0, 0, 1].into(), None, &l, &k, &c)).await
    };
    let rport = redis.port.to_string();

    // The fixture itself: redis serves mTLS to a client holding the client certificate.
    let args = strings(&[
        "--tls",
        "--cacert",
        &ca,
        "--cert",
        &client_crt,
        "--key",
        &client_key,
        "--sni",
        "redis.example.com",
        "-h",
        "127.0.0.1",
        "-p",
        &rport,
        "PING",
    ]);
    let (code, out, err) = blocking(move || redis_cli(&args)).await;
    assert_eq!(
        (code, out.trim()),
        (0, "PONG"),
        "fixture: redis-cli --tls straight to redis-server: {err}\nredis log: {}",
        redis.log()
    );

    // ... and sends its leaf only: trusting the root alone is not enough.
    let args = strings(&[
        "--tls",
        "--cacert",
        &root_only,
        "--cert",
        &client_crt,
        "--key",
        &client_key,
        "--sni",
        "redis.example.com",
        "-h",
        "127.0.0.1",
        "-p",
        &rport,
        "PING",
    ]);
    let (_, out, err) = blocking(move || redis_cli(&args)).await;
    assert!(
        !out.contains("PONG"),
        "fixture: redis-server must not send its intermediate: {out} {err}"
    );

    let connect = format!("redis.example.com:6379=127.0.0.1:{rport}");
    let base = strings(&["--bind-port", "6379=0", "--connect-to", &connect]);

    // MUTUAL with the root and intermediate: SET and GET through egret's TCP listener.
    let cfg = redis_yaml(
        dir,
        &format!(
            "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {client_crt}, privateKey: {client_key}, sni: redis.example.com}}"
        ),
    );
    let e = sidecar(&cfg, &base);
    let listener = e.listener("127.0.0.1_6379");
    assert_eq!(listener.ip().to_string(), "127.0.0.1");
    assert_ne!(
        listener.port(),
        6379,
        "--bind-port 6379=0 takes a free port"
    );
    let lport = listener.port().to_string();
    let cli = |cmd: &[&str]| {
        let mut a = strings(&["-h", "127.0.0.1", "-p", &lport]);
        a.extend(strings(cmd));
        a
    };
    let args = cli(&["SET", "k", "v"]);
    let (code, out, err) = blocking(move || redis_cli(&args)).await;
    assert_eq!(
        (code, out.trim()),
        (0, "OK"),
        "SET through egret: {err}; egret stderr: {:#?}",
        e.stderr()
    );
    let set_line = log_entry(&e, 1).await;
    let args = cli(&["GET", "k"]);
    let (code, out, err) = blocking(move || redis_cli(&args)).await;
    assert_eq!((code, out.trim()), (0, "v"), "GET through egret: {err}");
    let get_line = log_entry(&e, 2).await;
    for l in [&set_line, &get_line] {
        assert_tcp_line(l);
        assert_eq!(l.flags, "-", "{l:?}");
        assert_eq!(l.cluster, "outbound|6379||redis.example.com", "{l:?}");
        assert_eq!(l.upstream_host, format!("127.0.0.1:{rport}"), "{l:?}");
        assert_eq!(l.downstream_local, listener.to_string(), "{l:?}");
        assert!(l.bytes_received > 0 && l.bytes_sent > 0, "{l:?}");
    }
    // RESP: "+OK\r\n" and "$1\r\nv\r\n".
    assert_eq!(set_line.bytes_sent, 5, "{set_line:?}");
    assert_eq!(get_line.bytes_sent, 7, "{get_line:?}");
    drop(e);

    // SIMPLE (no client certificate): redis refuses the handshake.
    let cfg = redis_yaml(
        dir,
        &format!("{{mode: SIMPLE, caCertificates: {ca}, sni: redis.example.com}}"),
    );
    let e = sidecar(&cfg, &base);
    let lport = e.listener("127.0.0.1_6379").port().to_string();
    let args = strings(&["-h", "127.0.0.1", "-p", &lport, "SET", "k", "w"]);
    let (_, out, err) = blocking(move || redis_cli(&args)).await;
    assert!(
        !out.contains("OK"),
        "no client certificate, no OK: {out} {err}"
    );
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert!(
        l.flags.contains("UF") || l.flags.contains("UC"),
        "a refused client certificate is an upstream failure: {l:?}"
    );
    let tls_text = [&l.transport_failure, &l.termination]
        .into_iter()
        .find(|t| t.starts_with("tls."))
        .unwrap_or_else(|| panic!("a tls.* reason in the transport failure field: {l:?}"));
    let lower = tls_text.to_lowercase();
    assert!(
        lower.contains("client certificate") || lower.contains("client_cert"),
        "the reason names the client certificate: {l:?}"
    );
    drop(e);

    // caCertificates with the root only: the server does not send its intermediate.
    let cfg = redis_yaml(
        dir,
        &format!(
            "{{mode: MUTUAL, caCertificates: {root_only}, clientCertificate: {client_crt}, privateKey: {client_key}, sni: redis.example.com}}"
        ),
    );
    let e = sidecar(&cfg, &base);
    let lport = e.listener("127.0.0.1_6379").port().to_string();
    let args = strings(&["-h", "127.0.0.1", "-p", &lport, "SET", "k", "x"]);
    let (_, out, err) = blocking(move || redis_cli(&args)).await;
    assert!(
        !out.contains("OK"),
        "unverifiable server, no OK: {out} {err}"
    );
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "UF", "{l:?}");
    assert!(
        l.transport_failure.starts_with("tls.unknown_issuer"),
        "{l:?}"
    );
    assert!(
        l.transport_failure.to_lowercase().contains("intermediate"),
        "the reason says the intermediate is missing: {l:?}"
    );
    assert_eq!(l.cluster, "outbound|6379||redis.example.com", "{l:?}");
    drop(e);
    drop(redis);
}

// ---------------------------------------------------------------------------------------------
// b. TLS echo: half-close and 64 MiB each way

/// The byte stream's period: a prime, so chunk boundaries never line up with it.
const PERIOD: usize = 65_537;

/// Two periods of pseudo-random bytes: stream byte `i` is `p[i % PERIOD]`, and any slice of up
/// to PERIOD bytes starting at `i % PERIOD` is contiguous in `p`.
fn pattern() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut one = Vec::with_capacity(PERIOD);
    while one.len() < PERIOD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        one.extend_from_slice(&x.to_le_bytes());
    }
    one.truncate(PERIOD);
    let mut two = one.clone();
    two.extend_from_slice(&one);
    Arc::new(two)
}

/// A `/proc/PID/status` field in KiB (0 when unreadable).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|r| r.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_echo_half_close_and_64mib_each_way() {
    let pki = Pki::new("echo");
    let echo = start_echo_tls(&pki.server_leaf(&["echo.example.com"])).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = write(dir, "ca.pem", &pki.root_pem());
    let cfg = write(
        dir,
        "echo.yaml",
        &format!(
            "{}---\n{}",
            service_entry("echo.example.com", 7443, "tcp-echo", "TCP"),
            destination_rule(
                "echo.example.com",
                &format!("{{tls: {{mode: SIMPLE, caCertificates: {ca}, sni: echo.example.com}}}}")
            )
        ),
    );
    let connect = format!("echo.example.com:7443={}", echo.addr);
    let e = sidecar(
        &cfg,
        &strings(&["--bind-port", "7443=0", "--connect-to", &connect]),
    );
    let listener = e.listener("127.0.0.1_7443");

    // Half-close: the client's FIN reaches the server as close_notify + FIN, and the server's
    // answer after that still flows back.
    let mut s = TcpStream::connect(listener)
        .await
        .expect("connect to egret");
    let client_addr = s.local_addr().expect("local_addr");
    s.write_all(b"hello").await.expect("write hello");
    s.shutdown().await.expect("shut down the write half");
    let (got, err) = read_until_closed(&mut s, 10).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "hellobye",
        "the echo, then the trailer the server writes after the client's EOF (read error: {err:?}); echo errors: {:?}; egret stderr: {:#?}",
        echo.errors(),
        e.stderr()
    );
    assert!(err.is_none(), "a clean FIN, not a reset: {err:?}");
    drop(s);
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "-", "{l:?}");
    assert_eq!(
        (l.bytes_received, l.bytes_sent),
        (5, 5 + ECHO_TRAILER.len() as u64),
        "{l:?}"
    );
    assert_eq!(l.cluster, "outbound|7443||echo.example.com", "{l:?}");
    assert_eq!(l.upstream_host, echo.addr.to_string(), "{l:?}");
    assert_eq!(l.downstream_local, listener.to_string(), "{l:?}");
    assert_eq!(l.downstream_remote, client_addr.to_string(), "{l:?}");
    assert_eq!(echo.snis(), ["echo.example.com"]);
    assert_eq!(echo.clean_eofs(), 1, "errors: {:?}", echo.errors());

    // 64 MiB each way at once, byte-exact, while egret's RSS stays flat.
    const TOTAL: u64 = 64 * MIB;
    let pat = pattern();
    let pid = e.pid();
    // Resetting the peak RSS (VmHWM) lets a peak between two samples count too.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let baseline = status_kib(pid, "VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, peak, samples) = (stop.clone(), peak.clone(), samples.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(status_kib(pid, "VmRSS"), Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let s = TcpStream::connect(listener)
        .await
        .expect("connect to egret");
    let (mut rd, mut wr) = s.into_split();
    let writer = {
        let pat = pat.clone();
        tokio::spawn(async move {
            let mut off: u64 = 0;
            while off < TOTAL {
                let start = (off % PERIOD as u64) as usize;
                let n = (TOTAL - off).min(64 * 1024) as usize;
                wr.write_all(&pat[start..start + n]).await?;
                off += n as u64;
            }
            wr.shutdown().await?;
            Ok::<_, std::io::Error>(wr)
        })
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut off: u64 = 0;
        let mut tail = Vec::new();
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let mut data = &buf[..n];
            while !data.is_empty() && off < TOTAL {
                let start = (off % PERIOD as u64) as usize;
                let m = data.len().min(PERIOD).min((TOTAL - off) as usize);
                if data[..m] != pat[start..start + m] {
                    let at = data[..m]
                        .iter()
                        .zip(&pat[start..start + m])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!("the echoed stream differs at byte {}", off + at as u64);
                }
                off += m as u64;
                data = &data[m..];
            }
            tail.extend_from_slice(data);
        }
        Ok::<_, std::io::Error>((off, tail))
    };
    let (read, tail) = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .expect("64 MiB each way within 180 s")
        .expect("read the echo");
    let _wr = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer finishes")
        .expect("writer task")
        .expect("write 64 MiB");
    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    assert_eq!(read, TOTAL, "every byte came back");
    assert_eq!(tail, ECHO_TRAILER, "then the trailer, then EOF");
    let hwm = if hwm_reset {
        status_kib(pid, "VmHWM")
    } else {
        0
    };
    let growth_kib = peak
        .load(Ordering::SeqCst)
        .max(hwm)
        .saturating_sub(baseline);
    eprintln!(
        "RSS baseline {baseline} KiB, peak growth {growth_kib} KiB ({} samples, VmHWM {})",
        samples.load(Ordering::SeqCst),
        if hwm_reset { "reset" } else { "not resettable" }
    );
    assert!(
        growth_kib < 32 * 1024,
        "64 MiB each way grew egret's RSS by {growth_kib} KiB (baseline {baseline} KiB)"
    );
    let l = log_entry(&e, 2).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "-", "{l:?}");
    assert_eq!(
        (l.bytes_received, l.bytes_sent),
        (TOTAL, TOTAL + ECHO_TRAILER.len() as u64),
        "{l:?}"
    );
    assert_eq!(echo.clean_eofs(), 2, "errors: {:?}", echo.errors());

    // The same bytes in the metrics: Envoy's cluster counters and Istio's TCP series.
    let text = get(e.listener("stats"), "localhost", "/stats/prometheus")
        .await
        .body;
    let metric = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let cluster = "cluster_name=\"outbound|7443||echo.example.com\"";
    // Upstream bytes include TLS framing, so at least the payload each way.
    let tx = metric("envoy_cluster_upstream_cx_tx_bytes_total", cluster);
    let rx = metric("envoy_cluster_upstream_cx_rx_bytes_total", cluster);
    assert!(
        tx >= (TOTAL + 5) as f64 && rx >= (TOTAL + 8) as f64,
        "tx {tx} rx {rx}\n{text}"
    );
    assert_eq!(
        metric("envoy_cluster_upstream_cx_total", cluster),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric("envoy_cluster_upstream_cx_active", cluster),
        0.0,
        "{text}"
    );
    let svc = "destination_service=\"echo.example.com\"";
    assert_eq!(
        metric("istio_tcp_connections_closed_total", svc),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric("istio_tcp_received_bytes_total", svc),
        (TOTAL + 5) as f64,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// c. idle timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_with_ut() {
    let echo = start_echo_plain().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        tmp.path(),
        "idle.yaml",
        &format!(
            "{}---\n{}",
            service_entry("idle.example.com", 7001, "tcp-idle", "TCP"),
            destination_rule(
                "idle.example.com",
                "{connectionPool: {tcp: {idleTimeout: 1s}}}"
            )
        ),
    );
    let connect = format!("idle.example.com:7001={}", echo.addr);
    let e = sidecar(
        &cfg,
        &strings(&["--bind-port", "7001=0", "--connect-to", &connect]),
    );
    let listener = e.listener("127.0.0.1_7001");
    let mut s = TcpStream::connect(listener)
        .await
        .expect("connect to egret");
    s.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut one))
        .await
        .expect("the echo within 10 s")
        .expect("read the echo");
    assert_eq!(&one, b"x");
    let t0 = Instant::now();
    let _ = read_until_closed(&mut s, 10).await;
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle <= Duration::from_secs(5),
        "closed after {idle:?} of silence; idleTimeout is 1s"
    );
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert!(l.flags.contains("UT"), "{l:?}");
    assert_eq!(l.bytes_received, 1, "{l:?}");
    assert!(l.bytes_sent >= 1, "{l:?}");
    assert_eq!(l.cluster, "outbound|7001||idle.example.com", "{l:?}");
}

// ---------------------------------------------------------------------------------------------
// d. connection refused

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_logs_uf() {
    let refused = refused_addr().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        tmp.path(),
        "refused.yaml",
        &service_entry("refused.example.com", 7002, "tcp-refused", "TCP"),
    );
    let connect = format!("refused.example.com:7002={refused}");
    let e = sidecar(
        &cfg,
        &strings(&["--bind-port", "7002=0", "--connect-to", &connect]),
    );
    let listener = e.listener("127.0.0.1_7002");
    let mut s = TcpStream::connect(listener)
        .await
        .expect("connect to egret");
    let (got, _) = read_until_closed(&mut s, 15).await;
    assert!(got.is_empty(), "nothing comes back: {got:?}");
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "UF", "one address, one attempt: {l:?}");
    assert!(l.transport_failure.starts_with("connect.refused"), "{l:?}");
    assert_eq!(l.cluster, "outbound|7002||refused.example.com", "{l:?}");
    assert_eq!((l.bytes_received, l.bytes_sent), (0, 0), "{l:?}");
}

// ---------------------------------------------------------------------------------------------
// d2. resets: the upstream resets mid-stream (UC); the client leaves while egret connects (DC)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_logs_uc() {
    // An upstream that reads the first bytes, then resets the connection (SO_LINGER 0).
    let up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up_addr = up.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut s, _)) = up.accept().await {
            let mut b = [0u8; 5];
            let _ = s.read_exact(&mut b).await;
            let _ = s.write_all(b"partial").await;
            // SO_LINGER 0: close() sends RST instead of FIN.
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        tmp.path(),
        "reset.yaml",
        &service_entry("reset.example.com", 7003, "tcp-reset", "TCP"),
    );
    let connect = format!("reset.example.com:7003={up_addr}");
    let e = sidecar(
        &cfg,
        &strings(&["--bind-port", "7003=0", "--connect-to", &connect]),
    );
    let mut s = TcpStream::connect(e.listener("127.0.0.1_7003"))
        .await
        .expect("connect to egret");
    s.write_all(b"hello").await.expect("write");
    let (got, _) = read_until_closed(&mut s, 10).await;
    assert!(got.len() <= 7, "{got:?}");
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "UC", "{l:?}");
    assert!(l.termination.starts_with("upstream_reset:"), "{l:?}");
    assert_eq!(l.bytes_received, 5, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_during_upstream_connect_logs_dc() {
    // An upstream that accepts TCP and never answers the TLS handshake: egret stays in
    // "connecting" until its 10 s connect timeout, and the client leaves before that.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = up.accept().await {
            keep.lock().await.push(s);
        }
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        tmp.path(),
        "slow.yaml",
        &format!(
            "{}---\n{}",
            service_entry("slow.example.com", 7004, "tcp-slow", "TCP"),
            destination_rule("slow.example.com", "{tls: {mode: SIMPLE}}")
        ),
    );
    let connect = format!("slow.example.com:7004={up_addr}");
    let e = sidecar(
        &cfg,
        &strings(&["--bind-port", "7004=0", "--connect-to", &connect]),
    );
    let s = TcpStream::connect(e.listener("127.0.0.1_7004"))
        .await
        .expect("connect to egret");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    drop(s);
    let l = log_entry(&e, 1).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "logged when the client left, not at the connect timeout"
    );
    assert_tcp_line(&l);
    assert_eq!(l.flags, "DC", "{l:?}");
    assert_eq!(
        l.termination, "downstream_closed_while_connecting_upstream",
        "{l:?}"
    );
    assert_eq!(held.lock().await.len(), 1, "egret had connected upstream");
}

// ---------------------------------------------------------------------------------------------
// e, f. the egress gateway: TLS passthrough by SNI, TCP routes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tls_passthrough_by_sni() {
    let (upstream, tmp, ca) = tls_origin("passthrough", "api.example.com", "api").await;
    let dir = tmp.path();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress}}
spec:
  selector: {{istio: egressgateway}}
  servers:
    - port: {{number: 8443, name: tls, protocol: TLS}}
      hosts: [api.example.com]
      tls: {{mode: PASSTHROUGH}}
---
{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  tls:
    - match: [{{port: 8443, sniHosts: [api.example.com]}}]
      route: [{{destination: {{host: api.example.com, port: {{number: 443}}}}}}]
",
        service_entry("api.example.com", 443, "tls", "TLS")
    );
    let cfg = write(dir, "gateway.yaml", &yaml);
    let connect = format!("api.example.com:443={}", upstream.addr);
    let e = gateway(
        &cfg,
        &strings(&["--bind-port", "8443=0", "--connect-to", &connect]),
    );
    let listener = e.listener("127.0.0.1_8443");

    // The ClientHello's SNI picks the route; curl sees the upstream's own certificate.
    let to = format!("api.example.com:443:127.0.0.1:{}", listener.port());
    let (ca2, to2) = (ca.clone(), to.clone());
    let (code, out, err) = blocking(move || {
        curl(&[
            "-v",
            "-D",
            "-",
            "--cacert",
            &ca2,
            "--connect-to",
            &to2,
            "https://api.example.com/",
        ])
    })
    .await;
    assert_eq!(code, 0, "{err}\negret stderr: {:#?}", e.stderr());
    assert!(out.ends_with("hello from api\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-upstream-sni: api.example.com"),
        "the client's SNI reached the upstream: {out}"
    );
    assert!(
        err.contains("subject: CN=api.example.com"),
        "curl verified the upstream's certificate: {err}"
    );
    assert!(
        err.contains("issuer: CN=Egret Test Intermediate passthrough"),
        "{err}"
    );
    assert_eq!(upstream.handshakes(), 1);
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "-", "{l:?}");
    assert_eq!(l.sni, "api.example.com", "{l:?}");
    assert_eq!(l.cluster, "outbound|443||api.example.com", "{l:?}");
    assert_eq!(l.upstream_host, upstream.addr.to_string(), "{l:?}");
    assert_eq!(l.downstream_local, listener.to_string(), "{l:?}");
    assert!(l.bytes_received > 0 && l.bytes_sent > 0, "{l:?}");

    // An SNI no route claims: refused before anything goes upstream.
    let conns = upstream.connections();
    let to = format!("unknown.example.com:443:127.0.0.1:{}", listener.port());
    let ca2 = ca.clone();
    let (code, _, err) = blocking(move || {
        curl(&[
            "--cacert",
            &ca2,
            "--connect-to",
            &to,
            "https://unknown.example.com/",
        ])
    })
    .await;
    assert_ne!(code, 0, "an unrouted SNI is refused: {err}");
    let l = log_entry(&e, 2).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "NR", "{l:?}");
    assert_eq!(l.sni, "unknown.example.com", "{l:?}");
    assert_eq!(
        upstream.connections(),
        conns,
        "nothing went upstream for the unrouted SNI"
    );

    // No SNI at all (curl sends none to an IP address): refused too.
    let url = format!("https://127.0.0.1:{}/", listener.port());
    let (code, _, err) = blocking(move || curl(&["--cacert", &ca, &url])).await;
    assert_ne!(code, 0, "a ClientHello without SNI is refused: {err}");
    let l = log_entry(&e, 3).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "NR", "{l:?}");
    assert_eq!(l.sni, "-", "{l:?}");
    assert_eq!(upstream.connections(), conns, "nothing went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tcp_route() {
    let echo = start_echo_plain().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress}}
spec:
  selector: {{istio: egressgateway}}
  servers:
    - port: {{number: 9000, name: tcp, protocol: TCP}}
      hosts: [\"*\"]
---
{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo.example.com]
  gateways: [egress]
  tcp:
    - match: [{{port: 9000}}]
      route: [{{destination: {{host: echo.example.com, port: {{number: 7000}}}}}}]
",
        service_entry("echo.example.com", 7000, "tcp", "TCP")
    );
    let cfg = write(tmp.path(), "gateway.yaml", &yaml);
    let connect = format!("echo.example.com:7000={}", echo.addr);
    let e = gateway(
        &cfg,
        &strings(&["--bind-port", "9000=0", "--connect-to", &connect]),
    );
    let listener = e.listener("127.0.0.1_9000");
    let mut s = TcpStream::connect(listener)
        .await
        .expect("connect to egret");
    let payload = b"ping over the gateway's tcp route";
    s.write_all(payload).await.expect("write");
    s.shutdown().await.expect("shut down the write half");
    let (got, err) = read_until_closed(&mut s, 10).await;
    let mut want = payload.to_vec();
    want.extend_from_slice(ECHO_TRAILER);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "read error {err:?}; echo errors {:?}; egret stderr: {:#?}",
        echo.errors(),
        e.stderr()
    );
    drop(s);
    let l = log_entry(&e, 1).await;
    assert_tcp_line(&l);
    assert_eq!(l.flags, "-", "{l:?}");
    assert_eq!(l.cluster, "outbound|7000||echo.example.com", "{l:?}");
    assert_eq!(l.upstream_host, echo.addr.to_string(), "{l:?}");
    assert_eq!(
        (l.bytes_received, l.bytes_sent),
        (payload.len() as u64, want.len() as u64),
        "{l:?}"
    );
    assert_eq!(echo.clean_eofs(), 1, "errors: {:?}", echo.errors());
}

// ---------------------------------------------------------------------------------------------
// g. CONNECT on the outbound listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_to_declared_https_host() {
    let (upstream, tmp, ca) = tls_origin("connect", "api.example.com", "api").await;
    let dir = tmp.path();
    let cfg = write(
        dir,
        "connect.yaml",
        &service_entry("api.example.com", 443, "https", "HTTPS"),
    );
    let connect = format!("api.example.com:443={}", upstream.addr);
    let e = sidecar(&cfg, &strings(&["--connect-to", &connect]));
    let proxy = format!("http://{}", e.listener("outbound"));
    let (code, out, err) = blocking(move || {
        curl(&[
            "-v",
            "-x",
            &proxy,
            "--cacert",
            &ca,
            "https://api.example.com/",
        ])
    })
    .await;
    assert_eq!(code, 0, "{err}\negret stderr: {:#?}", e.stderr());
    assert_eq!(out, "hello from api\n");
    assert!(
        err.contains("CONNECT api.example.com:443"),
        "curl tunnels through egret: {err}"
    );
    assert!(
        err.contains("subject: CN=api.example.com"),
        "egret does not terminate TLS: curl sees the upstream's certificate: {err}"
    );
    assert_eq!(upstream.handshakes(), 1);
    let l = log_entry(&e, 1).await;
    assert_eq!((l.method.as_str(), l.code), ("CONNECT", 200), "{l:?}");
    assert_eq!(l.cluster, "outbound|443||api.example.com", "{l:?}");
    assert_eq!(l.upstream_host, upstream.addr.to_string(), "{l:?}");
    assert!(
        l.bytes_received > 0 && l.bytes_sent > 0,
        "the tunnel's bytes both ways: {l:?}"
    );
}

/// A TCP server that reads and counts everything it is sent, and never answers.
struct Recorder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    _handle: ServerHandle,
}

async fn start_recorder() -> Recorder {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("recorder local_addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let task = {
        let (connections, bytes) = (connections.clone(), bytes.clone());
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let bytes = bytes.clone();
                conns.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        bytes.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        })
    };
    Recorder {
        addr,
        connections,
        bytes,
        _handle: ServerHandle::new(task),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_undeclared_and_sni_mismatch() {
    let pki = Pki::new("connect-refuse");
    let recorder = start_recorder().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = write(dir, "ca.pem", &pki.root_pem());
    let cfg = write(
        dir,
        "connect.yaml",
        &service_entry("api.example.com", 443, "https", "HTTPS"),
    );
    let connect = format!("api.example.com:443={}", recorder.addr);
    let e = sidecar(&cfg, &strings(&["--connect-to", &connect]));
    let proxy = format!("http://{}", e.listener("outbound"));

    // An undeclared host under REGISTRY_ONLY: the CONNECT gets 502.
    let (p, c) = (proxy.clone(), ca.clone());
    let (code, _, err) =
        blocking(move || curl(&["-x", &p, "--cacert", &c, "https://undeclared.example.com/"]))
            .await;
    assert_eq!(code, 56, "{err}");
    assert!(err.contains("CONNECT tunnel failed, response 502"), "{err}");
    let l = log_entry(&e, 1).await;
    assert_eq!((l.method.as_str(), l.code), ("CONNECT", 502), "{l:?}");
    assert_eq!(recorder.connections.load(Ordering::SeqCst), 0);

    // CONNECT api.example.com:443, then a ClientHello for evil.example.com: refused, and the
    // ClientHello never reaches the upstream.
    let (code, _, err) = blocking(move || {
        curl(&[
            "-v",
            "-x",
            &proxy,
            "--cacert",
            &ca,
            "--connect-to",
            "evil.example.com:443:api.example.com:443",
            "https://evil.example.com/",
        ])
    })
    .await;
    assert!(
        err.contains("CONNECT api.example.com:443"),
        "fixture: curl asks for the declared host: {err}"
    );
    assert_ne!(code, 0, "the mismatched SNI is refused: {err}");
    let l = log_entry(&e, 2).await;
    eprintln!("SNI mismatch logged as: {l:?}");
    assert_eq!(l.method, "CONNECT", "{l:?}");
    assert_eq!(
        recorder.bytes.load(Ordering::SeqCst),
        0,
        "the upstream saw no ClientHello (connections: {})",
        recorder.connections.load(Ordering::SeqCst)
    );
}

/// Under ALLOW_ANY a CONNECT to an undeclared host is tunnelled too (PassthroughCluster, route
/// `allow_any`), still with the ClientHello's SNI checked against the CONNECT host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_under_allow_any_reaches_undeclared_hosts() {
    let (upstream, tmp, ca) = tls_origin("connect-any", "any.example.org", "any").await;
    let dir = tmp.path();
    // Nothing declares any.example.org.
    let cfg = write(
        dir,
        "any.yaml",
        &service_entry("api.example.com", 443, "https", "HTTPS"),
    );
    let connect = format!("any.example.org:443={}", upstream.addr);
    let e = sidecar(
        &cfg,
        &strings(&["--connect-to", &connect, "--outbound-policy", "ALLOW_ANY"]),
    );
    let proxy = format!("http://{}", e.listener("outbound"));
    let (p2, ca2) = (proxy.clone(), ca.clone());
    let (code, out, err) =
        blocking(move || curl(&["-x", &p2, "--cacert", &ca2, "https://any.example.org/"])).await;
    assert_eq!(code, 0, "{err}\negret stderr: {:#?}", e.stderr());
    assert_eq!(out, "hello from any\n");
    let l = log_entry(&e, 1).await;
    assert_eq!((l.method.as_str(), l.code), ("CONNECT", 200), "{l:?}");
    assert_eq!(l.cluster, "PassthroughCluster", "{l:?}");
    assert_eq!(l.route, "allow_any", "{l:?}");
    assert_eq!(l.sni, "any.example.org", "{l:?}");

    // The same policy still refuses a ClientHello for another name than the CONNECT host.
    let handshakes = upstream.handshakes();
    let (code, _, err) = blocking(move || {
        curl(&[
            "-x",
            &proxy,
            "--cacert",
            &ca,
            "--connect-to",
            "evil.example.net:443:any.example.org:443",
            "https://evil.example.net/",
        ])
    })
    .await;
    assert_ne!(code, 0, "{err}");
    let l = log_entry(&e, 2).await;
    assert_eq!(l.flags, "NR", "{l:?}");
    assert!(l.termination.starts_with("sni_mismatch:"), "{l:?}");
    assert_eq!(
        upstream.handshakes(),
        handshakes,
        "no handshake reached the upstream"
    );
}

/// egret's own YAML: a `protocol: TLS` listener routes by SNI over the destinations declared on
/// its port (passthrough), and a `protocol: TCP` listener carries bytes to the one TCP
/// destination of its port, originating the destination's TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_tls_and_tcp_listeners() {
    let pki = Pki::new("native-l4");
    let leaf = pki.server_leaf(&["api.example.com", "echo.example.com"]);
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "native")).await;
    let echo = start_echo_tls(&leaf).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = ca_bundle(&pki, dir);
    let cfg = write(
        dir,
        "native.yaml",
        &format!(
            "listeners:
  - {{name: tls, address: \"127.0.0.1:0\", port: 443, protocol: TLS}}
  - {{name: tcp, address: \"127.0.0.1:0\", port: 7100, protocol: TCP}}
destinations:
  - hosts: [api.example.com]
    ports: [{{number: 443, name: tls, protocol: TLS}}]
  - hosts: [echo.example.com]
    ports: [{{number: 7100, name: tcp-echo, protocol: TCP}}]
    trafficPolicy:
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
"
        ),
    );
    let api = format!("api.example.com:443={}", upstream.addr);
    let echo_to = format!("echo.example.com:7100={}", echo.addr);
    let e = egret(&strings(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &api,
        "--connect-to",
        &echo_to,
    ]));
    assert!(
        !e.listeners.iter().any(|(n, _)| n.ends_with("_7100")),
        "the declared TCP listener serves port 7100; no automatic one: {:?}",
        e.listeners
    );
    let tls = e.listener("tls");
    let to = format!("api.example.com:443:127.0.0.1:{}", tls.port());
    let (code, out, err) = blocking(move || {
        curl(&[
            "--cacert",
            &ca,
            "--connect-to",
            &to,
            "https://api.example.com/",
        ])
    })
    .await;
    assert_eq!(code, 0, "{err}\negret stderr: {:#?}", e.stderr());
    assert_eq!(out, "hello from native\n");

    let mut s = TcpStream::connect(e.listener("tcp"))
        .await
        .expect("connect to egret");
    s.write_all(b"ping").await.expect("write");
    s.shutdown().await.expect("half-close");
    let (got, err) = read_until_closed(&mut s, 10).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [b"ping".as_slice(), ECHO_TRAILER].concat());
    let lines = [log_entry(&e, 1).await, log_entry(&e, 2).await];
    let tcp = lines
        .iter()
        .find(|l| l.cluster == "outbound|7100||echo.example.com")
        .expect("a line for the TCP listener");
    assert_eq!(
        (tcp.flags.as_str(), tcp.bytes_received),
        ("-", 4),
        "{tcp:?}"
    );
    let sni = lines
        .iter()
        .find(|l| l.cluster == "outbound|443||api.example.com")
        .expect("a line for the TLS listener");
    assert_eq!(sni.sni, "api.example.com", "{sni:?}");
}
