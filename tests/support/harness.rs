//! Starting egret in-process on port 0, talking to it, and reading its access log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use egret::app::Bound;
use egret::config::{Overrides, Source};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A running in-process egret with its access log in a temp directory.
pub struct Egret {
    pub bound: Bound,
    /// The first listener's address.
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// Loads `yaml` (native or Istio manifests) with `overrides`, binds, and starts egret. The
/// access log goes to `dir/access.log`.
pub async fn start_egret(yaml: &str, mut overrides: Overrides, dir: &Path) -> Egret {
    let log = dir.join("access.log");
    overrides.access_log = Some(log.display().to_string());
    let source = Source {
        name: dir.join("egret.yaml").display().to_string(),
        text: yaml.to_string(),
        base_dir: Some(dir.to_path_buf()),
        params: Vec::new(),
    };
    let cfg = egret::config::load(&[source], &overrides)
        .unwrap_or_else(|e| panic!("config must load:\n{e}"));
    let options = egret::app::Options {
        drain: Duration::from_secs(5),
        ..Default::default()
    };
    let (bound, _warnings) = egret::app::build(cfg, options)
        .await
        .unwrap_or_else(|e| panic!("egret must start: {e}"));
    let addr = bound.listeners[0].1;
    Egret { bound, addr, log }
}

/// Overrides that point `host:port` at `to` (like curl's --connect-to).
pub fn connect_to(host: &str, port: u16, to: SocketAddr) -> Overrides {
    let mut o = Overrides::default();
    o.upstream.connect_to.push(egret::config::ConnectTo {
        host: Some(host.to_string()),
        port: Some(port),
        to,
    });
    o
}

impl Egret {
    /// Every access-log line written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.bound.flush_access_log();
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits (up to 5 s) until the log has at least `n` lines, and returns them.
    pub async fn wait_log_lines(&self, n: usize) -> Vec<String> {
        for _ in 0..250 {
            let lines = self.log_lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lines = self.log_lines();
        panic!(
            "expected {n} access-log lines, got {}: {lines:#?}",
            lines.len()
        );
    }

    /// The first `n` access-log lines, parsed (waits for them).
    #[allow(dead_code)]
    pub async fn log_entries(&self, n: usize) -> Vec<LogLine> {
        let lines = self.wait_log_lines(n).await;
        lines.iter().take(n).map(|l| LogLine::parse(l)).collect()
    }

    /// The last access-log line, parsed (waits for `n` lines first).
    pub async fn log_entry(&self, n: usize) -> LogLine {
        let lines = self.wait_log_lines(n).await;
        LogLine::parse(&lines[n - 1])
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One plain HTTP/1.1 request to egret on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .expect("request"),
    )
    .await
}

/// Sends a request on a fresh connection and reads the whole response.
pub async fn request<B>(addr: SocketAddr, req: Request<B>) -> Resp
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to egret");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake with egret");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("egret answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A keep-alive client: every request goes on the same downstream connection.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.expect("connect to egret");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake with egret");
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        self.sender.ready().await.expect("connection ready");
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self.sender.send_request(req).await.expect("egret answers");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// The fields of an access-log line in Istio's default TEXT format.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub code: u16,
    pub flags: String,
    pub details: String,
    pub termination: String,
    pub transport_failure: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: u64,
    pub upstream_service_time: String,
    pub xff: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub cluster: String,
    pub upstream_local: String,
    pub downstream_local: String,
    pub downstream_remote: String,
    pub sni: String,
    pub route: String,
}

/// The Istio TEXT format as a regex: what log pipelines use to parse Envoy lines.
pub fn istio_line_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(concat!(
            r#"^\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" "#,
            r#"(?P<code>\d+) (?P<flags>\S+) (?P<details>\S+) (?P<term>\S+) "(?P<tfr>[^"]*)" "#,
            r#"(?P<rx>\d+) (?P<tx>\d+) (?P<dur>\d+) (?P<ust>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "#,
            r#""(?P<rid>[^"]*)" "(?P<auth>[^"]*)" "(?P<uhost>[^"]*)" (?P<cluster>\S+) (?P<ulocal>\S+) "#,
            r#"(?P<dlocal>\S+) (?P<dremote>\S+) (?P<sni>\S+) (?P<route>\S+)$"#
        ))
        .expect("the Istio line regex compiles")
    })
}

impl LogLine {
    pub fn parse(line: &str) -> LogLine {
        let c = istio_line_regex()
            .captures(line)
            .unwrap_or_else(|| panic!("not an Istio-format access-log line: {line}"));
        let s = |n: &str| c.name(n).map_or(String::new(), |m| m.as_str().to_string());
        let n = |n: &str| s(n).parse::<u64>().expect("numeric field");
        LogLine {
            start_time: s("start"),
            method: s("method"),
            path: s("path"),
            protocol: s("protocol"),
            code: s("code").parse().expect("code"),
            flags: s("flags"),
            details: s("details"),
            termination: s("term"),
            transport_failure: s("tfr"),
            bytes_received: n("rx"),
            bytes_sent: n("tx"),
            duration: n("dur"),
            upstream_service_time: s("ust"),
            xff: s("xff"),
            user_agent: s("ua"),
            request_id: s("rid"),
            authority: s("auth"),
            upstream_host: s("uhost"),
            cluster: s("cluster"),
            upstream_local: s("ulocal"),
            downstream_local: s("dlocal"),
            downstream_remote: s("dremote"),
            sni: s("sni"),
            route: s("route"),
        }
    }
}

/// Writes `pem` to `dir/name` and returns the path as a string for YAML.
pub fn write(dir: &Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).expect("write a test file");
    p.display().to_string()
}

/// The `egret` binary running as a child process (killed on drop).
pub struct EgretProcess {
    pub child: std::process::Child,
    /// The first listener's bound address (read from egret's "listening on" line).
    pub addr: SocketAddr,
    /// Every listener: (name, bound address).
    pub listeners: Vec<(String, SocketAddr)>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EgretProcess {
    /// Starts `egret` and returns as soon as its readiness server is announced, before the
    /// configuration is loaded (`addr` is then the readiness address).
    pub fn start_early(args: &[&str]) -> EgretProcess {
        Self::spawn(args, false, &[])
    }

    /// Waits (up to 30 s) until egret announces a listener whose name ends with `suffix`.
    pub fn wait_listener(&self, suffix: &str) -> SocketAddr {
        for _ in 0..1500 {
            for l in self.stderr() {
                if let Some(rest) = l.strip_prefix("egret: listening on ")
                    && let Some((addr, name)) = rest.split_once(' ')
                    && name.trim_end_matches(')').ends_with(suffix)
                    && let Ok(a) = addr.parse()
                {
                    return a;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no listener *{suffix}: {:#?}", self.stderr());
    }

    /// Starts `egret` with `args` and waits until it listens. The readiness, stats and admin
    /// servers go on ephemeral ports (never the fixed defaults) unless `args` set them, and the
    /// drain grace is 0 unless set.
    pub fn start(args: &[&str]) -> EgretProcess {
        Self::spawn(args, true, &[])
    }

    /// [`EgretProcess::start`] with these environment variables added (a pod's `env`).
    pub fn start_with_env(args: &[&str], env: &[(String, String)]) -> EgretProcess {
        Self::spawn(args, true, env)
    }

    /// [`EgretProcess::start`] under a wrapper command, e.g. `ip netns exec NS setpriv
    /// --reuid 1337 ...` (egret's path goes after `wrapper`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> EgretProcess {
        Self::spawn_in(wrapper, args, true, &[])
    }

    fn spawn(args: &[&str], wait_for_proxy: bool, env: &[(String, String)]) -> EgretProcess {
        Self::spawn_in(&[], args, wait_for_proxy, env)
    }

    fn spawn_in(
        wrapper: &[&str],
        args: &[&str],
        wait_for_proxy: bool,
        env: &[(String, String)],
    ) -> EgretProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut all: Vec<&str> = args.to_vec();
        for (flag, value) in [
            ("--ready", "127.0.0.1:0"),
            ("--stats", "127.0.0.1:0"),
            ("--admin", "127.0.0.1:0"),
            ("--drain-grace", "0s"),
        ] {
            if !args.contains(&flag) {
                all.push(flag);
                all.push(value);
            }
        }
        let bin = env!("CARGO_BIN_EXE_egret");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(&all)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the egret binary");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Option<(String, SocketAddr)>>();
        {
            let out = child.stdout.take().expect("stdout");
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().expect("lock").push(l);
                }
            });
        }
        {
            let err = child.stderr.take().expect("stderr");
            let lines = stderr.clone();
            std::thread::spawn(move || {
                let mut listening = false;
                for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if let Some(rest) = l.strip_prefix("egret: listening on ")
                        && let Some((addr, name)) = rest.split_once(' ')
                        && let Ok(a) = addr.parse()
                    {
                        let name = name
                            .trim_start_matches("(listener ")
                            .trim_start_matches('(')
                            .trim_end_matches(')');
                        let _ = tx.send(Some((name.to_string(), a)));
                        listening = true;
                    } else if listening {
                        // The listening lines are printed together; the first other line ends them.
                        let _ = tx.send(None);
                        listening = false;
                    }
                    lines.lock().expect("lock").push(l);
                }
                let _ = tx.send(None);
            });
        }
        // Operational servers are announced first, proxy listeners when egret is up.
        const OPS: [&str; 4] = ["readiness", "stats", "admin", "dns"];
        let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let have_proxy = if wait_for_proxy {
                listeners.iter().any(|(n, _)| !OPS.contains(&n.as_str()))
            } else {
                listeners.iter().any(|(n, _)| n == "readiness")
            };
            if have_proxy && !wait_for_proxy {
                break;
            }
            let wait = if have_proxy {
                Duration::from_millis(300)
            } else {
                deadline.saturating_duration_since(std::time::Instant::now())
            };
            match rx.recv_timeout(wait) {
                Ok(Some(l)) => listeners.push(l),
                Ok(None) if have_proxy => break,
                Ok(None) => continue,
                Err(_) if have_proxy => break,
                Err(_) => {
                    let _ = child.kill();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!("egret did not start: {:#?}", stderr.lock().expect("lock"));
                }
            }
        }
        // Started early, the address is the readiness server's (the operational servers may be
        // announced in any order); otherwise the first proxy listener's.
        let addr = listeners
            .iter()
            .find(|(n, _)| {
                if wait_for_proxy {
                    !OPS.contains(&n.as_str())
                } else {
                    n == "readiness"
                }
            })
            .or_else(|| listeners.first())
            .map(|(_, a)| *a)
            .expect("a listener");
        EgretProcess {
            child,
            addr,
            listeners,
            stdout,
            stderr,
        }
    }

    /// The bound address of the listener whose name ends with `suffix` (e.g. `_3000`).
    pub fn listener(&self, suffix: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener named *{suffix} in {:?}", self.listeners))
    }

    /// Sends a signal (`HUP`, `TERM`, `USR1`, ...).
    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits (up to `secs`) for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 50 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 5 s) for at least `n` stdout lines (the access log) and returns them.
    pub fn wait_stdout(&self, n: usize) -> Vec<String> {
        for _ in 0..250 {
            let lines = self.stdout.lock().expect("lock").clone();
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected {n} stdout lines; stdout: {:#?}; stderr: {:#?}",
            self.stdout.lock().expect("lock"),
            self.stderr.lock().expect("lock")
        );
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// Every stdout line (the access log) so far, without waiting.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        s.lines()
            .find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.trim_start_matches(':').trim().strip_suffix("kB"))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc/PID/status"))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..500 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("egret did not exit after SIGTERM");
    }
}

impl Drop for EgretProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args`; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install -y curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One listener on port 0 and `app.test` (port 80) sent in plaintext to 127.0.0.1:`port`: the
/// config of the tests that talk raw HTTP/1 to egret.
pub fn static_app_yaml(port: u16) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [app.test]\n    ports: [{{number: 80, targetPort: {port}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n"
    )
}

/// A plaintext origin named `name` and the egret binary in front of it with
/// [`static_app_yaml`] and `args` (after `--config`): what the tests that drive the binary over
/// raw HTTP/1 share. The origin and the config directory live as long as the value.
pub struct StaticApp {
    pub origin: super::Upstream,
    pub egret: EgretProcess,
    _dir: tempfile::TempDir,
}

pub fn start_static_app(rt: &tokio::runtime::Runtime, name: &str, args: &[&str]) -> StaticApp {
    let origin = rt.block_on(super::start_plain(name));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("egret.yaml");
    std::fs::write(&cfg, static_app_yaml(origin.addr.port())).expect("write config");
    let cfg = cfg.display().to_string();
    let mut all = vec!["--config", cfg.as_str()];
    all.extend_from_slice(args);
    let egret = EgretProcess::start(&all);
    StaticApp {
        origin,
        egret,
        _dir: dir,
    }
}

/// `api.test` port 80 originated as SIMPLE TLS to 443, verified against the CA file `ca`.
pub fn simple_tls_yaml(ca: &str) -> String {
    format!(
        "destinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, name: http, targetPort: 443}}]\n    trafficPolicy:\n      tls: {{mode: SIMPLE, caCertificates: {ca}}}\n"
    )
}

/// Sends `bytes` on one connection and reads until egret closes it, for at most 10 s: what
/// came back, and whether egret closed the connection.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .is_ok_and(|r| r.is_ok());
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
