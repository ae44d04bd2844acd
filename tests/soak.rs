//! A bounded soak: mixed valid and invalid traffic through egret (a separate process) to a TLS
//! origin for `EGRET_SOAK_SECS` seconds (default 10; `.ci/run` sets more), from several client
//! kinds at once: keep-alive, pipelined, uploads aborted mid-body, slow writers, and requests
//! egret must refuse. At the end: every valid request answered exactly once with its own
//! response, RSS within a few MiB of what it was after warm-up, and egret's open file
//! descriptors back to where they started.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Reads one response (head and a Content-Length body) from a keep-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let code: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((code, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    answered: AtomicU64,
    wrong: AtomicU64,
    refused: AtomicU64,
}

/// Keep-alive and pipelined requests, each carrying its own sequence number, which the
/// origin echoes (`/headers`): a lost, doubled or swapped response shows.
fn valid_client(addr: SocketAddr, id: u64, stop: &AtomicBool, c: &Counts, pipeline: usize) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        // Up to 50 rounds per connection, then a new one.
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let mut batch = String::new();
            let first = seq;
            for _ in 0..pipeline {
                batch.push_str(&format!(
                    "GET /headers HTTP/1.1\r\nHost: api.test\r\nX-Seq: {id}-{seq}\r\n\r\n"
                ));
                seq += 1;
            }
            if w.write_all(batch.as_bytes()).is_err() {
                break;
            }
            c.sent.fetch_add(pipeline as u64, Ordering::Relaxed);
            for n in first..seq {
                match read_response(&mut r) {
                    Some((200, body)) if body.contains(&format!("x-seq: {id}-{n}\n")) => {
                        c.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("client {id} request {n}: {other:?}");
                        c.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Uploads cut off mid-body, slow writers that give up, and requests egret refuses.
fn bad_client(addr: SocketAddr, stop: &AtomicBool, c: &Counts) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Ok(mut s) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        match round % 4 {
            0 => {
                // Aborted mid-body.
                let _ = s.write_all(
                    b"POST /sink HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100000\r\n\r\npartial",
                );
            }
            1 => {
                // A slow writer that leaves halfway through the head.
                for b in b"GET /headers HTTP/1.1\r\nHo" {
                    let _ = s.write_all(&[*b]);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            2 => {
                // Refused before routing.
                let _ = s.write_all(
                    b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
                );
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 400 ") {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                // Garbage.
                let _ = s.write_all(b"\x16\x03\x01\x00\xffnot http at all\r\n\r\n");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
            }
        }
    }
}

#[test]
fn mixed_traffic_for_a_while_leaks_nothing_and_loses_nothing() {
    let secs: u64 = std::env::var("EGRET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .clamp(2, 900);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = Pki::new("soak");
    let leaf = pki.server_leaf(&["api.test"]);
    let upstream = rt.block_on(start_tls(UpstreamOptions::from_leaf(&leaf, "soak")));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let cfg = write(dir.path(), "egret.yaml", &simple_tls_yaml(&ca));
    let log = dir.path().join("access.log");
    let egret = EgretProcess::start(&[
        "run",
        "--config",
        &cfg,
        "--outbound-listen",
        "127.0.0.1:0",
        "--connect-to",
        &format!("api.test:443={}", upstream.addr),
        "--access-log",
        &log.display().to_string(),
    ]);
    let addr = egret.addr;
    let fds_start = fds(egret.pid());

    let run = |secs: u64| -> Counts {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        for (id, pipeline) in [(1, 1), (2, 1), (3, 4), (4, 8)] {
            let (stop, c) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                valid_client(addr, id, &stop, &c, pipeline);
            }));
        }
        for _ in 0..2 {
            let (stop, c) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || bad_client(addr, &stop, &c)));
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("client thread");
        }
        Arc::try_unwrap(counts).unwrap_or_default()
    };

    // Warm-up: pools, buffers and the allocator reach their working size.
    let warm = run(2);
    assert!(warm.answered.load(Ordering::Relaxed) > 0);
    let rss_warm = egret.status_kib("VmRSS");
    let started = Instant::now();
    let c = run(secs);
    // Let egret close what the clients left (idle upstream connections stay pooled).
    std::thread::sleep(Duration::from_millis(500));
    let rss_end = egret.status_kib("VmRSS");
    let fds_end = fds(egret.pid());
    let (sent, answered, wrong, refused) = (
        c.sent.load(Ordering::Relaxed),
        c.answered.load(Ordering::Relaxed),
        c.wrong.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {:.0} s: {sent} valid requests sent, {answered} answered right, {wrong} wrong, \
         {refused} refused as they should be; RSS {rss_warm} -> {rss_end} KiB; fds {fds_start} -> {fds_end}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        sent > 100,
        "the soak sent too little to mean anything: {sent}"
    );
    assert_eq!(wrong, 0, "responses lost, doubled, swapped or wrong");
    assert_eq!(answered, sent, "every valid request answered exactly once");
    assert!(refused > 0);
    assert!(
        rss_end <= rss_warm + 4 * 1024,
        "RSS grew {rss_warm} -> {rss_end} KiB over the soak"
    );
    // The pooled upstream connections (at most one per client connection in flight) may
    // remain; nothing else may.
    assert!(
        fds_end <= fds_start + 8,
        "file descriptors {fds_start} -> {fds_end}: a leak"
    );
    drop(rt);
}
