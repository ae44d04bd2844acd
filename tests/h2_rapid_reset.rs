//! HTTP/2 rapid reset (CVE-2023-44487) against egret's h2c listener: one client opens streams
//! and resets each at once, as fast as it can write; egret must stay within bounded CPU and
//! memory, shut that connection down (GOAWAY) or absorb it, and keep serving other clients.
//! Bounded in count (20,000 streams) and time (20 s).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const STREAMS: u32 = 20_000;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// CPU seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[test]
fn a_rapid_reset_flood_is_bounded_and_other_clients_are_served() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = start_static_app(&rt, "reset", &["--access-log", "off", "--concurrency", "1"]);
    let StaticApp { origin, egret, .. } = app;
    let url = format!("http://{}/", egret.addr);
    let served = |what: &str| {
        let (code, out, err) = curl(&[
            "-s",
            "--http2-prior-knowledge",
            "--max-time",
            "5",
            "-H",
            "Host: app.test",
            &url,
        ]);
        assert_eq!(
            (code, out.as_str()),
            (0, "hello from reset\n"),
            "{what}: {err}"
        );
    };
    served("before the flood");
    let rss_before = egret.status_kib("VmRSS");
    let cpu_before = cpu_seconds(egret.pid());

    let mut s = TcpStream::connect(egret.addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut reader = s.try_clone().expect("clone");
    // Read (and so never block egret's writes) until egret closes; note a GOAWAY.
    let drain = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(25)))
            .expect("timeout");
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        // Walk the frames after the server's preface (its SETTINGS is the first frame).
        let mut i = 0;
        let mut goaway = false;
        while i + 9 <= all.len() {
            let len = u32::from_be_bytes([0, all[i], all[i + 1], all[i + 2]]) as usize;
            goaway |= all[i + 3] == 7;
            i += 9 + len;
        }
        goaway
    });
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frame(&mut out, 4, 0, 0, &[]);
    // :method GET, :scheme http, :path / (static table), :authority app.test (literal).
    let mut headers = vec![0x82, 0x86, 0x84, 0x01, 8];
    headers.extend_from_slice(b"app.test");
    let started = Instant::now();
    let mut sent = 0u32;
    let mut written_all = true;
    for id in (1..STREAMS * 2).step_by(2) {
        frame(&mut out, 1, 0x5, id, &headers);
        frame(&mut out, 3, 0, id, &8u32.to_be_bytes());
        sent += 1;
        if out.len() > 64 * 1024 || id + 2 >= STREAMS * 2 {
            if s.write_all(&out).is_err() {
                written_all = false;
                break;
            }
            out.clear();
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    // While that connection is shut down or drained, another client is served.
    served("during the flood");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let goaway = drain.join().expect("reader");
    served("after the flood");

    let rss_after = egret.status_kib("VmRSS");
    let cpu = cpu_seconds(egret.pid()) - cpu_before;
    eprintln!(
        "rapid reset: {sent} streams sent (all written: {written_all}), GOAWAY: {goaway}, \
         origin requests: {}, egret CPU {cpu:.2} s, RSS {rss_before} -> {rss_after} KiB",
        origin.requests()
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew {rss_before} -> {rss_after} KiB"
    );
    // A request costs egret some 30-50 µs of CPU (benches/RESULTS.md), so even serving all
    // 20,000 would be about 1 s; 10 s is the bound an amplification would blow.
    assert!(cpu < 10.0, "egret used {cpu:.2} s of CPU on the flood");
    assert!(
        origin.requests() < STREAMS as usize,
        "every reset stream still went upstream"
    );
    drop(rt);
}
