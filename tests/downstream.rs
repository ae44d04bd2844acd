//! Downstream limits and the ALLOW_ANY guard, on the wire against the egret binary or the
//! in-process runtime: `--max-connections` (an idle keep-alive connection makes room, busy ones
//! do not; `envoy_listener_downstream_cx_overflow`), the header-count and header-size limits
//! (`431`), and ALLOW_ANY refusing egret's own ports and cloud metadata unless declared.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use egret::config::{OutboundPolicy, Overrides};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a keep-alive GET on `s` and reads one response (a `content-length` body); the status.
async fn get_on(s: &mut TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    read_response(s).await
}

/// Reads one response with a `content-length` body from `s`; its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("content-length"));
                if got.len() >= end + 4 + len {
                    return head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .expect("status");
                }
            }
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "egret closed before a whole response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// Whether egret closes `s` (EOF or reset) without sending anything, within 10 s.
async fn closed_by_egret(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "egret sent bytes instead of closing: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => false,
    }
}

/// `GET /stats/prometheus` on the stats server.
fn prometheus(stats: SocketAddr) -> String {
    let (rc, out, err) = curl(&[&format!("http://{stats}/stats/prometheus")]);
    assert_eq!(rc, 0, "{err}");
    out
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn max_connections_closes_the_oldest_idle_connection_and_refuses_when_all_are_busy() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = start_static_app(
        &rt,
        "limited",
        &["--max-connections", "2", "--access-log", "-"],
    );
    let StaticApp { origin, egret, .. } = app;
    let addr = egret.addr;
    let stats = egret.listener("stats");

    rt.block_on(async {
        // Two keep-alive connections, both idle after a request (a first, then b).
        let mut a = TcpStream::connect(addr).await.expect("connect a");
        assert_eq!(get_on(&mut a, "/").await, 200);
        let mut b = TcpStream::connect(addr).await.expect("connect b");
        assert_eq!(get_on(&mut b, "/").await, 200);
        // A third: egret closes a (idle the longest) and serves c.
        let mut c = TcpStream::connect(addr).await.expect("connect c");
        assert_eq!(get_on(&mut c, "/").await, 200);
        assert!(closed_by_egret(&mut a).await, "a was idle the longest");
        assert_eq!(get_on(&mut b, "/").await, 200, "b stays open");
        assert_eq!(get_on(&mut c, "/").await, 200, "c stays open");

        // Both open connections busy on a slow origin: a third is refused.
        let before = origin.requests();
        for s in [&mut b, &mut c] {
            s.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
                .await
                .expect("write");
        }
        while origin.requests() < before + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut d = TcpStream::connect(addr)
            .await
            .expect("the kernel accepts d");
        assert!(closed_by_egret(&mut d).await, "d is refused");
        assert_eq!(
            read_response(&mut b).await,
            200,
            "b's slow request finishes"
        );
        assert_eq!(
            read_response(&mut c).await,
            200,
            "c's slow request finishes"
        );
        // c works again after b is idle, so b is the longest idle.
        assert_eq!(get_on(&mut c, "/").await, 200);
        // Idle again: a new connection makes room once more.
        let mut e = TcpStream::connect(addr).await.expect("connect e");
        assert_eq!(get_on(&mut e, "/").await, 200);
        assert!(closed_by_egret(&mut b).await, "b was idle the longest");
    });

    let text = prometheus(stats);
    assert_eq!(
        counter(&text, "envoy_listener_downstream_cx_overflow"),
        1,
        "only d overflowed"
    );
    // Refused connections are not counted as accepted: a, b, c, e.
    assert_eq!(counter(&text, "envoy_listener_downstream_cx_total"), 4);
    let warned = || {
        egret
            .stderr()
            .iter()
            .filter(|l| l.contains("refused a connection") && l.contains("--max-connections"))
            .count()
    };
    for _ in 0..250 {
        if warned() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(warned(), 1, "one warning: {:#?}", egret.stderr());
    egret.terminate();
}

#[test]
fn max_connections_refuses_a_storm_with_one_log_line() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = start_static_app(
        &rt,
        "storm",
        &["--max-connections", "1", "--access-log", "-"],
    );
    let StaticApp { origin, egret, .. } = app;
    let addr = egret.addr;
    rt.block_on(async {
        // One connection, busy: every other is refused.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .expect("write");
        while origin.requests() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..20 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            assert!(closed_by_egret(&mut s).await, "connection {i} refused");
        }
        assert_eq!(read_response(&mut busy).await, 200);
    });
    let text = prometheus(egret.listener("stats"));
    assert_eq!(counter(&text, "envoy_listener_downstream_cx_overflow"), 20);
    let lines: Vec<String> = egret
        .stderr()
        .into_iter()
        .filter(|l| l.contains("--max-connections") && l.contains("refused"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "a storm is one line, not twenty: {lines:#?}"
    );
    egret.terminate();
}

/// An origin that answers `200 ok` to any request head, however many headers it has (hyper's
/// origin in `support` stops at 100, and egret adds `x-request-id` and `x-forwarded-proto`);
/// counts the heads it read.
async fn any_head_origin() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("local_addr");
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                if read_request_head(&mut s).await.is_some() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                        .await;
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn header_count_and_size_limits_answer_431_and_log_it() {
    let (origin, heads) = any_head_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &static_app_yaml(origin.port()),
        Overrides::default(),
        dir.path(),
    )
    .await;
    // `n` header fields in all, Host and Connection included.
    let with_headers = |n: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
        for i in 0..n - 2 {
            r.push_str(&format!("X-H{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(100 * 1024)
    );
    let mut statuses = Vec::new();
    for req in [with_headers(100), with_headers(101), big] {
        let (raw, closed) = exchange(e.addr, req.as_bytes()).await;
        assert!(closed, "egret closes after Connection: close");
        statuses.push(
            raw.split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("no status line in {raw:?}")),
        );
    }
    assert_eq!(statuses, [200, 431, 431], "100 headers pass, 101 do not");
    let lines = e.log_entries(3).await;
    let got: Vec<(u16, &str, &str)> = lines
        .iter()
        .map(|l| (l.code, l.flags.as_str(), l.details.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (200, "-", "via_upstream"),
            (431, "DPE", "http1.headers_too_large"),
            (431, "DPE", "http1.headers_too_large"),
        ]
    );
    assert_eq!(
        heads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the request that fit went upstream"
    );
}

fn allow_any() -> Overrides {
    Overrides {
        outbound_policy: Some(OutboundPolicy::AllowAny),
        ..Overrides::default()
    }
}

/// The status, `x-egret-error` and body of a refusal, and its access-log line.
async fn refused(e: &Egret, host: &str, line: usize) -> (Resp, LogLine) {
    let r = get(e.addr, host, "/").await;
    let l = e.log_entry(line).await;
    (r, l)
}

#[tokio::test]
async fn allow_any_refuses_metadata_and_egret_itself() {
    let origin = start_plain("elsewhere").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = allow_any();
    for (name, ip) in [
        ("metadata.test", "169.254.169.254"),
        ("loop.test", "127.0.0.1"),
        ("elsewhere.test", "127.0.0.1"),
    ] {
        o.upstream
            .resolve
            .insert(name.into(), vec![ip.parse().expect("ip")]);
    }
    let e = start_egret(&static_app_yaml(origin.addr.port()), o, dir.path()).await;
    let own = e.addr.port();

    let mut n = 0;
    for (host, addr) in [
        // The metadata address, literally, and a name for it.
        ("169.254.169.254".to_string(), "169.254.169.254"),
        ("169.254.170.2".to_string(), "169.254.170.2"),
        ("metadata.test".to_string(), "169.254.169.254"),
        ("[fd00:ec2::254]".to_string(), "fd00:ec2::254"),
        // egret's own listener, by address and by a name resolving to it.
        (format!("127.0.0.1:{own}"), "127.0.0.1"),
        (format!("loop.test:{own}"), "127.0.0.1"),
    ] {
        n += 1;
        let (r, l) = refused(&e, &host, n).await;
        assert_eq!(r.status, 403, "{host}: {r:?}");
        assert_eq!(r.header("x-egret-error"), "policy.self_or_metadata_refused");
        assert!(
            r.body.contains(&format!("({addr})")) && r.body.contains("declare the host and port"),
            "{host}: {}",
            r.body
        );
        assert_eq!(
            (
                l.code,
                l.flags.as_str(),
                l.details.as_str(),
                l.route.as_str()
            ),
            (403, "-", "egret.self_or_metadata_refused", "allow_any"),
            "{host}"
        );
        assert_eq!(l.upstream_host, "-", "{host}: nothing was dialled");
    }
    // Any other host still passes through, on loopback too.
    let r = get(
        e.addr,
        &format!("elsewhere.test:{}", origin.addr.port()),
        "/",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from elsewhere\n");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn a_declared_metadata_address_is_routed() {
    let origin = start_plain("metadata").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // 169.254.169.254 declared (a ServiceEntry's host), its endpoint the test origin.
    let yaml = format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [169.254.169.254]\n    ports: [{{number: 80, targetPort: {}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n",
        origin.addr.port()
    );
    let e = start_egret(&yaml, allow_any(), dir.path()).await;
    let r = get(e.addr, "169.254.169.254", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from metadata\n");
    let l = e.log_entry(1).await;
    assert_ne!(l.route, "allow_any");
    assert_eq!(l.upstream_host, origin.addr.to_string());
    // The declared port only: another port of the same address is passthrough, and refused.
    let r = get(e.addr, "169.254.169.254:8080", "/").await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn allow_any_refuses_the_admin_port_through_the_binary_forward_proxy_and_connect() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = start_static_app(
        &rt,
        "app",
        &["--outbound-policy", "ALLOW_ANY", "--access-log", "-"],
    );
    let StaticApp { egret, .. } = app;
    let proxy = format!("http://{}", egret.addr);
    let admin = egret.listener("admin");
    let stats = egret.listener("stats");
    let status = |extra: &[&str], url: &str| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-x", &proxy];
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args).1
    };
    // Forward-proxy style requests to the admin and stats servers, and the metadata address.
    let cases = [
        format!("http://{admin}/config_dump"),
        format!("http://localhost:{}/config_dump", admin.port()),
        format!("http://{stats}/stats/prometheus"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ];
    for url in &cases {
        assert_eq!(status(&[], url), "403", "{url}");
    }
    // CONNECT to the admin port: refused before the tunnel opens.
    let (_, code, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "-p",
        "-x",
        &proxy,
        &format!("http://{admin}/config_dump"),
    ]);
    assert_eq!(code, "403", "{err}");
    let lines: Vec<LogLine> = egret
        .wait_stdout(cases.len() + 1)
        .iter()
        .map(|l| LogLine::parse(l))
        .collect();
    for l in &lines {
        assert_eq!(
            (l.code, l.details.as_str(), l.route.as_str()),
            (403, "egret.self_or_metadata_refused", "allow_any"),
            "{l:?}"
        );
    }
    assert_eq!(lines[0].authority, admin.to_string());
    assert_eq!(lines.last().map(|l| l.method.as_str()), Some("CONNECT"));
    // The app's own declared host is unaffected.
    assert_eq!(status(&[], "http://app.test/"), "200");
    egret.terminate();
}

#[test]
fn a_tcp_listener_obeys_max_connections_and_never_counts_as_idle() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let echo = rt.block_on(start_echo_plain());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "tcp.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.example.com]\n  location: MESH_EXTERNAL\n  ports: [{number: 7001, name: tcp-db, protocol: TCP}]\n  resolution: DNS\n",
    );
    let connect = format!("db.example.com:7001={}", echo.addr);
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--bind-port",
        "7001=0",
        "--connect-to",
        &connect,
        "--max-connections",
        "1",
        "--access-log",
        "-",
    ]);
    let listener = egret.listener("127.0.0.1_7001");
    rt.block_on(async {
        // One spliced connection, silent after its first echo: not idle in the HTTP sense.
        let mut a = TcpStream::connect(listener).await.expect("connect a");
        a.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), a.read_exact(&mut one))
            .await
            .expect("the echo within 10 s")
            .expect("read the echo");
        let mut b = TcpStream::connect(listener)
            .await
            .expect("the kernel accepts b");
        assert!(closed_by_egret(&mut b).await, "b is refused");
        // a is untouched.
        a.write_all(b"y").await.expect("write");
        tokio::time::timeout(Duration::from_secs(10), a.read_exact(&mut one))
            .await
            .expect("the echo within 10 s")
            .expect("read the echo");
        assert_eq!(&one, b"y");
    });
    let text = prometheus(egret.listener("stats"));
    let overflow: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("envoy_listener_downstream_cx_overflow{"))
        .collect();
    assert!(
        overflow
            .iter()
            .any(|l| l.contains("7001") && l.ends_with(" 1")),
        "{overflow:#?}"
    );
    egret.terminate();
}

#[test]
fn allow_any_tls_passthrough_refuses_an_sni_that_resolves_to_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A TLS listener routes by SNI; under ALLOW_ANY any other SNI is spliced to that name on
    // the listener's port, unless it is metadata or egret.
    let cfg = write(
        dir.path(),
        "tls.yaml",
        "listeners:\n  - {name: outbound, address: \"127.0.0.1:0\"}\n  - {name: tls, address: \"127.0.0.1:0\", port: 443, protocol: TLS}\ndestinations:\n  - hosts: [api.example.com]\n    ports: [{number: 443, name: tls, protocol: TLS}]\n",
    );
    let egret = EgretProcess::start(&[
        "run",
        "-c",
        &cfg,
        "--outbound-policy",
        "ALLOW_ANY",
        "--resolve",
        "meta.test=169.254.169.254",
        "--access-log",
        "-",
    ]);
    let listener = egret.listener("tls");
    let (rc, _, err) = curl(&[
        "-k",
        "--connect-to",
        &format!("meta.test:443:{}:{}", listener.ip(), listener.port()),
        "https://meta.test/",
    ]);
    assert_ne!(rc, 0, "the handshake cannot complete: {err}");
    let line = LogLine::parse(&egret.wait_stdout(1)[0]);
    assert_eq!(
        (
            line.details.as_str(),
            line.sni.as_str(),
            line.route.as_str(),
            line.upstream_host.as_str()
        ),
        (
            "egret.self_or_metadata_refused",
            "meta.test",
            "allow_any",
            "-"
        ),
        "{line:?}"
    );
    assert!(line.termination.contains("169.254.169.254"), "{line:?}");
    egret.terminate();
}
