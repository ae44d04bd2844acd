//! A real redis-server (Debian's, built with TLS) as a TLS-only, client-certificate-requiring
//! origin, and redis-cli as a client.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server child process, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Starts redis-server on `ip` with only a TLS port (requiring client certificates), on
/// `port` or a free one, and waits until it accepts connections.
pub fn start_redis(
    dir: &Path,
    ip: IpAddr,
    port: Option<u16>,
    cert: &str,
    key: &str,
    client_ca: &str,
) -> Redis {
    let mut last = String::new();
    for attempt in 0..5 {
        let port = port.unwrap_or_else(|| free_port(ip));
        let log = dir.join(format!("redis-{attempt}.log"));
        let out = std::fs::File::create(&log).expect("create the redis log");
        let err = out.try_clone().expect("clone the redis log handle");
        let port_s = port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                &ip.to_string(),
                "--port",
                "0",
                "--tls-port",
                &port_s,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                client_ca,
                "--tls-auth-clients",
                "yes",
                // mTLS guards it; protected mode would refuse every non-loopback client.
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn redis-server");
        let mut redis = Redis { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = redis.child.try_wait() {
                last = format!("redis-server exited ({st}): {}", redis.log());
                break;
            }
            if std::net::TcpStream::connect_timeout(
                &SocketAddr::new(ip, port),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if last.is_empty() {
            last = format!("redis-server did not listen within 10 s: {}", redis.log());
        }
    }
    panic!("could not start redis-server: {last}");
}

/// Runs `redis-cli ARGS` (bounded by 20 s); returns (exit code, stdout, stderr).
pub fn redis_cli(args: &[String]) -> (i32, String, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli under timeout(1)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
