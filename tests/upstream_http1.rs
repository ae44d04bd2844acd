//! egret's own upstream HTTP/1.1 client (src/http/client.rs) against a scripted origin that writes
//! exact bytes: chunked bodies with extensions and trailers cut into 3-byte writes, interim
//! 1xx responses, duplicate and conflicting `Content-Length`, bodies delimited by the end of the
//! connection, bodies cut short, pooled connections the origin closed while idle, and a reused
//! connection closed just as a request arrives (repeated for GET, not for POST).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use egret::config::Overrides;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn yaml(port: u16) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [app.test]\n    ports: [{{number: 80, targetPort: {port}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n"
    )
}

/// What the scripted origin does with one request.
enum Act {
    /// Write these bytes (in 3-byte pieces), keep the connection.
    Send(&'static [u8]),
    /// Write these bytes, then close the connection.
    SendClose(&'static [u8]),
    /// Close the connection without answering.
    HangUp,
}

/// A plaintext origin that reads request heads and answers per `script(connection number,
/// request number on it, request head)`. Counts connections.
struct Scripted {
    addr: std::net::SocketAddr,
    conns: Arc<AtomicUsize>,
    _h: ServerHandle,
}

async fn scripted(script: fn(usize, usize, &str) -> Act) -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    let h = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(s, n, script));
        }
    });
    Scripted {
        addr,
        conns,
        _h: ServerHandle::new(h),
    }
}

async fn serve(mut s: TcpStream, conn: usize, script: fn(usize, usize, &str) -> Act) {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for req in 1.. {
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        got.drain(..end);
        let (bytes, close) = match script(conn, req, &head) {
            Act::Send(b) => (b, false),
            Act::SendClose(b) => (b, true),
            Act::HangUp => (&b""[..], true),
        };
        for piece in bytes.chunks(3) {
            if s.write_all(piece).await.is_err() {
                return;
            }
            let _ = s.flush().await;
        }
        if close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

fn path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

fn by_path(_conn: usize, _req: usize, head: &str) -> Act {
    match path(head) {
        "/chunked" => Act::Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n4;ext=\"1\"\r\nwiki\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n",
        ),
        "/early-hints" => Act::Send(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ),
        "/dup-length" => {
            Act::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
        }
        "/conflict" => Act::Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
        ),
        "/until-close" => Act::SendClose(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"),
        "/short" => Act::SendClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
        "/switch" => Act::Send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"),
        _ => Act::Send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
    }
}

#[tokio::test]
async fn response_framing_is_decoded_and_connections_reused_only_when_safe() {
    let origin = scripted(by_path).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let mut c = KeepAlive::connect(e.addr).await;

    // Chunked with an extension and a trailer, in 3-byte pieces: decoded, then re-framed.
    let r = c.get("app.test", "/chunked").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "wikipedia"),
        "{r:?}"
    );
    // A 103 before the final response is skipped.
    let r = c.get("app.test", "/early-hints").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.header("link"), "", "interim headers are not merged");
    // Equal duplicate lengths are one length.
    let r = c.get("app.test", "/dup-length").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        1,
        "self-delimited responses leave the connection pooled"
    );

    // A body delimited by the end of the connection arrives whole; that connection is spent.
    let r = c.get("app.test", "/until-close").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "until the end"));
    let r = c.get("app.test", "/dup-length").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(origin.conns.load(Ordering::SeqCst), 2);

    // Conflicting lengths and an unrequested 101 are protocol errors: 502 UPE.
    for p in ["/conflict", "/switch"] {
        let r = get(e.addr, "app.test", p).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-egret-error")),
            (502, "upstream.protocol_error"),
            "{p}: {r:?}"
        );
    }
    let lines = e.log_entries(7).await;
    let got: Vec<(u16, &str, &str)> = lines
        .iter()
        .map(|l| (l.code, l.flags.as_str(), l.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (200, "-", "/chunked"),
            (200, "-", "/early-hints"),
            (200, "-", "/dup-length"),
            (200, "-", "/until-close"),
            (200, "-", "/dup-length"),
            (502, "UPE", "/conflict"),
            (502, "UPE", "/switch"),
        ]
    );
    assert_eq!(lines[0].bytes_sent, 9, "decoded body bytes");
    assert_eq!(lines[3].bytes_sent, 13);
}

#[tokio::test]
async fn a_body_cut_short_is_logged_uc_and_the_client_sees_the_break() {
    let origin = scripted(by_path).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let mut s = TcpStream::connect(e.addr).await.expect("connect");
    s.write_all(b"GET /short HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("egret closes the connection")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("content-length: 10\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\nabc"),
        "3 of 10 bytes, then the close: {out}"
    );
    let l = e.log_entry(1).await;
    assert_eq!((l.code, l.flags.as_str(), l.bytes_sent), (200, "UC", 3));
    assert!(
        l.details
            .starts_with("upstream_reset_after_response_started{"),
        "{}",
        l.details
    );
}

/// Answers one request per connection, then closes it while egret holds it in its pool.
fn one_per_connection(_conn: usize, _req: usize, _head: &str) -> Act {
    Act::SendClose(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
}

#[tokio::test]
async fn pooled_connections_the_origin_closed_are_not_used() {
    let origin = scripted(one_per_connection).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let mut c = KeepAlive::connect(e.addr).await;
    for _ in 0..3 {
        let r = c.get("app.test", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "fresh"),
            "{r:?}"
        );
        // Let the origin's FIN arrive while the connection sits in the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(origin.conns.load(Ordering::SeqCst), 3);
    let codes: Vec<u16> = e.log_entries(3).await.iter().map(|l| l.code).collect();
    assert_eq!(codes, [200, 200, 200]);
}

/// The first connection answers its first request and hangs up on the second, as a server
/// whose keep-alive timer fires just as the request arrives; later connections answer all.
fn hang_up_on_second(conn: usize, req: usize, _head: &str) -> Act {
    if conn == 1 && req == 2 {
        Act::HangUp
    } else {
        Act::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    }
}

#[tokio::test]
async fn a_reused_connection_lost_before_any_answer_is_retried_only_for_idempotent_methods() {
    let origin = scripted(hang_up_on_second).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let mut c = KeepAlive::connect(e.addr).await;
    assert_eq!(c.get("app.test", "/").await.status.as_u16(), 200);
    let r = c.get("app.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "ok"),
        "GET is repeated: {r:?}"
    );
    assert_eq!(origin.conns.load(Ordering::SeqCst), 2);

    // The same race for a POST (no body) is reported, not repeated.
    let origin = scripted(hang_up_on_second).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let mut s = TcpStream::connect(e.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\nPOST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("egret closes the connection")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    let second = out.rfind("HTTP/1.1 ").expect("two responses");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out[second..].starts_with("HTTP/1.1 503 "), "{out}");
    assert!(
        out.contains(
            "closed the connection before sending response headers on a reused connection"
        ),
        "{out}"
    );
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        1,
        "POST is not repeated"
    );
    let l = e.log_entries(2).await;
    assert_eq!(
        (l[1].method.as_str(), l[1].code, l[1].flags.as_str()),
        ("POST", 503, "UC")
    );
}

/// An origin that answers one request on each connection with a keep-alive response, then
/// either closes its side after `fin_after` or keeps it open, and reports how long after the
/// response egret closed the connection (its read sees the end).
struct Watching {
    addr: std::net::SocketAddr,
    closed_after: tokio::sync::mpsc::UnboundedReceiver<Duration>,
    _h: ServerHandle,
}

async fn watching(fin_after: Option<Duration>) -> Watching {
    let l = bind_loopback().await;
    let addr = l.local_addr().expect("addr");
    let (tx, closed_after) = tokio::sync::mpsc::unbounded_channel();
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if read_request_head(&mut s).await.is_none() {
                    return;
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
                let answered = std::time::Instant::now();
                if let Some(d) = fin_after {
                    tokio::time::sleep(d).await;
                    let _ = s.shutdown().await;
                }
                // Whatever egret sends now (nothing is expected) until it closes.
                let mut buf = [0u8; 2048];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(answered.elapsed());
            });
        }
    });
    Watching {
        addr,
        closed_after,
        _h: ServerHandle::new(h),
    }
}

fn pool(e: &Egret) -> Arc<egret::upstream::ClusterPool> {
    let rt = e.bound.state.load();
    rt.pools
        .iter()
        .find(|p| p.cluster.name == "outbound|80||app.test")
        .expect("the app.test pool")
        .clone()
}

fn pool_stats(e: &Egret) -> Arc<egret::metrics::ClusterStats> {
    pool(e).stats.clone()
}

/// A pooled connection the origin closes while it sits idle is closed by egret within a sweep
/// (about a second), not left in CLOSE_WAIT until the next request happens to find it.
#[tokio::test]
async fn an_idle_connection_the_origin_closed_is_closed_without_waiting_for_a_request() {
    let mut origin = watching(Some(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml(origin.addr.port()), Overrides::default(), dir.path()).await;
    let r = get(e.addr, "app.test", "/").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    let after = tokio::time::timeout(Duration::from_secs(10), origin.closed_after.recv())
        .await
        .expect("egret closes the connection the origin closed, with no request to notice it")
        .expect("one connection");
    assert!(after >= Duration::from_millis(50), "{after:?}");
    let stats = pool_stats(&e);
    assert_eq!(stats.cx_stale.load(Ordering::SeqCst), 1);
    assert_eq!(stats.cx_idle_timeout.load(Ordering::SeqCst), 0);
    assert_eq!(stats.cx_active.load(Ordering::SeqCst), 0);
    assert!(
        pool(&e).snapshot().is_empty(),
        "nothing pooled, nothing in flight: the address entry is gone too"
    );
    // The pool is empty now; the next request opens a new connection and succeeds.
    assert_eq!(get(e.addr, "app.test", "/").await.status.as_u16(), 200);
}

/// `connectionPool.http.idleTimeout` closes an idle pooled connection once it expires
/// (Envoy's `upstream_cx_idle_timeout`), not earlier, and without a request to find it.
/// `idleTimeout: 0s` disables the timeout, as in Envoy: the connection stays pooled and reused.
#[tokio::test]
async fn the_pool_idle_timeout_closes_idle_connections_and_zero_disables_it() {
    let mut origin = watching(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let with_timeout = |t: &str| {
        format!(
            "{}    trafficPolicy: {{connectionPool: {{http: {{idleTimeout: {t}}}}}}}\n",
            yaml(origin.addr.port())
        )
    };
    let e = start_egret(&with_timeout("300ms"), Overrides::default(), dir.path()).await;
    let r = get(e.addr, "app.test", "/").await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let after = tokio::time::timeout(Duration::from_secs(10), origin.closed_after.recv())
        .await
        .expect("egret closes the idle connection after its idle timeout")
        .expect("one connection");
    assert!(
        after >= Duration::from_millis(300),
        "closed before the idle timeout: {after:?}"
    );
    let stats = pool_stats(&e);
    assert_eq!(stats.cx_idle_timeout.load(Ordering::SeqCst), 1);
    assert_eq!(stats.cx_active.load(Ordering::SeqCst), 0);
    drop(e);

    let dir = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&with_timeout("0s"), Overrides::default(), dir.path()).await;
    let mut c = KeepAlive::connect(e.addr).await;
    assert_eq!(c.get("app.test", "/").await.status.as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        origin.closed_after.try_recv().is_err(),
        "idleTimeout 0s keeps the connection"
    );
    let stats = pool_stats(&e);
    assert_eq!(stats.cx_active.load(Ordering::SeqCst), 1);
    assert_eq!(stats.cx_idle_timeout.load(Ordering::SeqCst), 0);
}
