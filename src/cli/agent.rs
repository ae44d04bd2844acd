//! `egret proxy router [FLAGS]` and `egret proxy sidecar [FLAGS]`: the argument list and the
//! environment Istio's proxy image (pilot-agent) is started with, translated into egret's own
//! flags. Replacing only the `image:` of an Istio gateway Deployment (the seed's egress
//! gateway) is then enough.
//!
//! What has a meaning for egret is mapped (the role, the namespace, the log level, the ports,
//! the pod's labels, the MeshConfig, `PROXY_CONFIG`'s `concurrency` and `drainDuration`); the
//! rest of pilot-agent's flags and Istio's environment variables are accepted and named once,
//! in the start-up notice. egret's own flags may follow, and win over what is derived. A flag
//! that is neither Istio's nor egret's is an error, with a "did you mean".
//!
//! Istio's proxy takes its routes from istiod over xDS; egret has no istiod, so the manifests
//! come from, in this order: `--config` after `proxy router`, the `EGRET_CONFIG` environment
//! variable (paths separated by `:`), or the directory `/etc/egret` (every `*.yaml`, `*.yml`
//! and `*.json` in it, e.g. a mounted ConfigMap). Pod paths (`/etc/istio/pod/labels`,
//! `/etc/istio/config/mesh`, `/etc/egret`) honour `--mount FROM=TO`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::map_path;
use crate::text::suggest;

/// The downward-API file with the pod's labels (`key="value"` lines).
pub const POD_LABELS: &str = "/etc/istio/pod/labels";
/// Where Istio's gateway charts mount the MeshConfig (ConfigMap key `mesh`).
pub const MESH_CONFIG: &str = "/etc/istio/config/mesh";
/// The manifests when neither `--config` nor `EGRET_CONFIG` is given.
pub const CONFIG_DIR: &str = "/etc/egret";
/// The manifests, `:`-separated, when no `--config` is given.
pub const CONFIG_ENV: &str = "EGRET_CONFIG";

/// One of egret's own flags (`egret run`'s), which may follow `proxy router`.
#[derive(Clone, Debug)]
pub struct EgretFlag {
    pub long: String,
    pub short: Option<char>,
    pub takes_value: bool,
}

/// The translation: egret's arguments and the one line that says what was made of Istio's.
#[derive(Clone, Debug)]
pub struct Translated {
    /// egret's arguments, starting with `run` (without the program name).
    pub args: Vec<String>,
    /// The start-up notice: what was mapped, and every flag and variable that was ignored.
    pub notice: String,
}

/// pilot-agent's flags (`pilot-agent proxy` and its global logging flags, Istio 1.x and
/// Maistra 2.x) and whether each takes a value. The mapped ones are in [`MAPPED`].
const ISTIO_FLAGS: &[(&str, bool)] = &[
    ("domain", true),
    ("serviceCluster", true),
    ("proxyLogLevel", true),
    ("proxyComponentLogLevel", true),
    ("statusPort", true),
    ("proxyAdminPort", true),
    ("drainDuration", true),
    ("parentShutdownDuration", true),
    ("meshConfig", true),
    ("trust-domain", true),
    ("templateFile", true),
    ("outlierLogPath", true),
    ("stsPort", true),
    ("tokenManagerPlugin", true),
    ("dnsRefreshRate", true),
    ("id", true),
    ("ip", true),
    ("discoveryAddress", true),
    ("zipkinAddress", true),
    ("connectTimeout", true),
    ("controlPlaneAuthPolicy", true),
    ("customConfigFile", true),
    ("binaryPath", true),
    ("configPath", true),
    ("serviceregistry", true),
    ("statsdUdpAddress", true),
    ("envoyMetricsService", true),
    ("envoyAccessLogService", true),
    ("tlsCertsToWatch", true),
    ("applicationPorts", true),
    ("kubeAppProberConfig", true),
    ("lightstepAddress", true),
    ("lightstepAccessToken", true),
    ("lightstepCacertPath", true),
    ("datadogAgentAddress", true),
    ("mixerIdentity", true),
    ("controlPlaneBootstrap", false),
    ("disableInternalTelemetry", false),
    ("lightstepSecure", false),
    ("profiling", false),
    ("log_output_level", true),
    ("log_stacktrace_level", true),
    ("log_caller", true),
    ("log_target", true),
    ("log_rotate", true),
    ("log_rotate_max_age", true),
    ("log_rotate_max_size", true),
    ("log_rotate_max_backups", true),
    ("log_as_json", false),
    ("vklog", true),
    ("ctrlz_port", true),
    ("ctrlz_address", true),
];

/// The pilot-agent flags egret gives a meaning (`--concurrency` is egret's own name too).
const MAPPED: &[&str] = &[
    "domain",
    "serviceCluster",
    "proxyLogLevel",
    "statusPort",
    "proxyAdminPort",
    "drainDuration",
    "meshConfig",
];

/// Environment variables of Istio's proxy container besides the `ISTIO_`, `PILOT_` and
/// `PROXY_` families: named in the notice when ignored.
const ISTIO_ENV: &[&str] = &[
    "JWT_POLICY",
    "CA_ADDR",
    "POD_NAME",
    "POD_NAMESPACE",
    "INSTANCE_IP",
    "SERVICE_ACCOUNT",
    "HOST_IP",
    "CANONICAL_SERVICE",
    "CANONICAL_REVISION",
    "TRUST_DOMAIN",
    "OUTPUT_CERTS",
    "XDS_ROOT_CA",
    "CA_ROOT_CA",
];

fn istio_env(name: &str) -> bool {
    ISTIO_ENV.contains(&name)
        || ["ISTIO_", "PILOT_", "PROXY_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// pilot-agent's `--proxyLogLevel` (`trace`, `debug`, `info`, `warning`, `error`, `critical`,
/// `off`, optionally followed by Envoy component levels such as `,misc:error`, which egret
/// has no use for) as an egret log level; `None` when only component levels are given.
pub fn log_level(istio: &str) -> Result<Option<&'static str>, String> {
    let Some(level) = istio
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.contains(':'))
    else {
        return Ok(None);
    };
    Ok(Some(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => {
            return Err(format!(
                "--proxyLogLevel \"{istio}\": expected trace, debug, info, warning, error, critical or off"
            ));
        }
    }))
}

/// A downward-API `metadata.labels` file: one `key="value"` line per label, the value quoted
/// as Go's `%q` does.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("line {}: expected key=\"value\", got {line:?}", n + 1))?;
        let v = v.trim();
        let v = if v.starts_with('"') {
            unquote(v).map_err(|e| format!("line {}: {e}", n + 1))?
        } else {
            v.to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

/// A Go double-quoted string literal (`strconv.Quote`'s output).
fn unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| s.len() >= 2)
        .ok_or_else(|| format!("unterminated quoted value {s}"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Result<u32, String> {
            let digits: String = chars.by_ref().take(n).collect();
            if digits.len() != n {
                return Err(format!("short escape in {s}"));
            }
            u32::from_str_radix(&digits, 16).map_err(|_| format!("bad escape in {s}"))
        };
        let e = match chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('\'') => '\'',
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('a') => '\u{7}',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('v') => '\u{b}',
            Some('x') => {
                let b = hex(&mut chars, 2)?;
                if b >= 0x80 {
                    return Err(format!("non-ASCII byte escape in {s}"));
                }
                char::from(b as u8)
            }
            Some('u') => char::from_u32(hex(&mut chars, 4)?)
                .ok_or_else(|| format!("bad \\u escape in {s}"))?,
            Some('U') => char::from_u32(hex(&mut chars, 8)?)
                .ok_or_else(|| format!("bad \\U escape in {s}"))?,
            Some(o) => return Err(format!("unknown escape \\{o} in {s}")),
            None => return Err(format!("dangling backslash in {s}")),
        };
        out.push(e);
    }
    Ok(out)
}

/// What egret takes from the `PROXY_CONFIG` environment variable (a ProxyConfig in YAML or
/// JSON, which Istio merges over the MeshConfig's `defaultConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfigEnv {
    pub concurrency: Option<u32>,
    pub drain_duration: Option<String>,
    pub status_port: Option<u16>,
    pub admin_port: Option<u16>,
    /// The fields egret has no use for (`discoveryAddress`, `tracing`, `proxyMetadata`,
    /// `proxyStatsMatcher`, ...), sorted.
    pub ignored: Vec<String>,
}

/// Parses `PROXY_CONFIG`.
pub fn parse_proxy_config(text: &str) -> Result<ProxyConfigEnv, String> {
    use serde_json::Value;
    let mut pc = ProxyConfigEnv::default();
    if text.trim().is_empty() {
        return Ok(pc);
    }
    let v: Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("PROXY_CONFIG is neither YAML nor JSON: {e}"))?;
    let map = match v {
        Value::Object(m) => m,
        Value::Null => return Ok(pc),
        _ => return Err("PROXY_CONFIG: expected a ProxyConfig object".into()),
    };
    let number = |k: &str, v: &Value| -> Result<u64, String> {
        match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("PROXY_CONFIG {k}: expected a non-negative integer, got {v}"))
    };
    let port = |k: &str, v: &Value| -> Result<u16, String> {
        number(k, v).and_then(|n| {
            u16::try_from(n).map_err(|_| format!("PROXY_CONFIG {k}: {n} is not a port"))
        })
    };
    for (k, v) in &map {
        match k.as_str() {
            "concurrency" => {
                pc.concurrency = Some(
                    u32::try_from(number(k, v)?)
                        .map_err(|_| format!("PROXY_CONFIG concurrency: {v} is too large"))?,
                )
            }
            "drainDuration" => match v {
                Value::String(s) => pc.drain_duration = Some(s.clone()),
                _ => {
                    return Err(format!(
                        "PROXY_CONFIG drainDuration: expected a duration like \"45s\", got {v}"
                    ));
                }
            },
            "statusPort" => pc.status_port = Some(port(k, v)?),
            "proxyAdminPort" => pc.admin_port = Some(port(k, v)?),
            _ => pc.ignored.push(k.clone()),
        }
    }
    pc.ignored.sort();
    Ok(pc)
}

/// Translates `egret proxy ARGS...` (`args` is what follows `proxy`) with the process
/// environment `env` into `egret run`'s arguments. `egret` lists egret's own flags.
///
/// Reads the pod files (`/etc/istio/pod/labels`, `/etc/istio/config/mesh`, `/etc/egret`,
/// each after `--mount`) to decide what to add.
pub fn translate(
    args: &[String],
    env: &[(String, String)],
    egret: &[EgretFlag],
) -> Result<Translated, String> {
    let (role, kind, rest) = proxy_type(args)?;
    let split = split_flags(rest, kind, egret)?;
    let mut plan = Plan {
        split,
        env,
        role,
        kind,
        out: vec!["run".into()],
        used: Vec::new(),
        consumed_env: BTreeSet::new(),
    };
    plan.role();
    plan.capture()?;
    plan.namespace();
    plan.log_level()?;
    let pc = plan.proxy_config()?;
    plan.mesh_config()?;
    plan.pod_labels()?;
    plan.manifests()?;
    let notice = plan.notice(&pc);
    let mut args = plan.out;
    args.extend(plan.split.passed);
    Ok(Translated { args, notice })
}

/// `router` (a gateway) or `sidecar` (pilot-agent's default), and the flags after it.
fn proxy_type(args: &[String]) -> Result<(&'static str, &'static str, &[String]), String> {
    match args.first().map(String::as_str) {
        Some("router") => Ok(("gateway", "router", &args[1..])),
        Some("sidecar") => Ok(("sidecar", "sidecar", &args[1..])),
        Some(a) if !a.starts_with('-') => Err(format!(
            "proxy {a}: expected `proxy router` (a gateway) or `proxy sidecar`"
        )),
        _ => Ok(("sidecar", "sidecar", args)),
    }
}

/// The flags after the proxy type, split into Istio's and egret's.
struct Split {
    /// pilot-agent's flags with their values, in order.
    istio: Vec<(String, Option<String>)>,
    /// egret's flags and their values, as given (their order matters to `--param`).
    passed: Vec<String>,
    /// The long names of egret's flags that were given: what is derived never repeats them.
    seen: BTreeSet<String>,
    /// `--mount FROM=TO`, for the pod paths.
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Split {
    /// The last value of pilot-agent's `--name`.
    fn istio(&self, name: &str) -> Option<String> {
        self.istio
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }
}

fn split_flags(rest: &[String], kind: &str, egret: &[EgretFlag]) -> Result<Split, String> {
    let mut split = Split {
        istio: Vec::new(),
        passed: Vec::new(),
        seen: BTreeSet::new(),
        mounts: Vec::new(),
    };
    let mut i = 0;
    while i < rest.len() {
        let tok = &rest[i];
        i += 1;
        let (f, inline) = if let Some(long) = tok.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            // egret's first: `--concurrency` is both, with the same meaning.
            if let Some(f) = egret.iter().find(|f| f.long == name) {
                (f, inline)
            } else if let Some((_, takes)) = ISTIO_FLAGS.iter().find(|(n, _)| *n == name) {
                let value = match (inline, takes) {
                    (Some(v), _) => Some(v.to_string()),
                    (None, false) => None,
                    (None, true) => {
                        let v = rest
                            .get(i)
                            .ok_or_else(|| format!("--{name} needs a value"))?;
                        i += 1;
                        Some(v.clone())
                    }
                };
                split.istio.push((name.to_string(), value));
                continue;
            } else {
                let names = egret
                    .iter()
                    .map(|f| f.long.as_str())
                    .chain(ISTIO_FLAGS.iter().map(|(n, _)| *n));
                let hint = suggest(name, names)
                    .map(|s| format!(" (did you mean --{s}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "proxy {kind}: unknown flag --{name}{hint}; egret accepts pilot-agent's flags and its own (see egret run --help)"
                ));
            }
        } else if let Some(short) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let c = short.chars().next().unwrap_or('-');
            let f = egret
                .iter()
                .find(|f| f.short == Some(c))
                .ok_or_else(|| format!("proxy {kind}: unknown flag -{c} (see egret run --help)"))?;
            (f, Some(&short[c.len_utf8()..]).filter(|s| !s.is_empty()))
        } else {
            return Err(format!(
                "proxy {kind}: unexpected argument \"{tok}\" (pilot-agent's and egret's flags only)"
            ));
        };
        split.passed.push(tok.clone());
        let mut value = inline.map(str::to_string);
        if f.takes_value && value.is_none() {
            let v = rest
                .get(i)
                .ok_or_else(|| format!("--{} needs a value", f.long))?;
            i += 1;
            split.passed.push(v.clone());
            value = Some(v.clone());
        }
        if f.long == "mount"
            && let Some((from, to)) = value.as_deref().and_then(|v| v.split_once('='))
        {
            split.mounts.push((PathBuf::from(from), PathBuf::from(to)));
        }
        split.seen.insert(f.long.clone());
    }
    Ok(split)
}

/// The translation in progress: egret's derived flags and what the notice will say.
struct Plan<'a> {
    split: Split,
    env: &'a [(String, String)],
    role: &'static str,
    kind: &'static str,
    /// `run` and the derived flags (egret's own follow them).
    out: Vec<String>,
    /// What was made of Istio's arguments, for the notice.
    used: Vec<String>,
    /// The Istio variables that were used (not named as ignored).
    consumed_env: BTreeSet<&'static str>,
}

impl Plan<'_> {
    fn getenv(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Whether egret's own `--name` was given (then nothing is derived for it).
    fn given(&self, name: &str) -> bool {
        self.split.seen.contains(name)
    }

    fn add(&mut self, name: &str, value: impl Into<String>) {
        self.out.push(format!("--{name}"));
        self.out.push(value.into());
    }

    fn map(&self, p: &Path) -> PathBuf {
        map_path(&self.split.mounts, p)
    }

    fn role(&mut self) {
        if !self.given("role") {
            self.add("role", self.role);
        }
        self.used.push(format!("role {}", self.role));
    }

    /// A sidecar's traffic arrives through istio-init's (or `egret capture`'s) REDIRECT rules:
    /// `--capture`, unless `ISTIO_META_INTERCEPTION_MODE=NONE`; `ISTIO_META_DNS_CAPTURE=true`
    /// adds the DNS proxy (`--dns-capture`, with Istio's DNS auto-allocation of VIPs).
    fn capture(&mut self) -> Result<(), String> {
        if self.kind != "sidecar" {
            return Ok(());
        }
        let mode = self
            .getenv("ISTIO_META_INTERCEPTION_MODE")
            .map(str::to_string);
        self.consumed_env.insert("ISTIO_META_INTERCEPTION_MODE");
        match mode.as_deref() {
            Some("NONE") => {
                self.used
                    .push("no capture (ISTIO_META_INTERCEPTION_MODE=NONE)".into());
                return Ok(());
            }
            None | Some("REDIRECT") => {}
            Some(other) => {
                return Err(format!(
                    "proxy sidecar: ISTIO_META_INTERCEPTION_MODE={other}: egret captures with                      REDIRECT rules (`egret capture`, Istio's default) or not at all (NONE);                      TPROXY is not supported"
                ));
            }
        }
        let dns = self
            .getenv("ISTIO_META_DNS_CAPTURE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        self.consumed_env
            .extend(["ISTIO_META_DNS_CAPTURE", "ISTIO_META_DNS_AUTO_ALLOCATE"]);
        if dns {
            if !self.given("dns-capture") {
                self.out.push("--dns-capture".into());
            }
            self.used.push(
                "transparent capture with the DNS proxy and VIP auto-allocation                  (ISTIO_META_DNS_CAPTURE=true)"
                    .into(),
            );
        } else {
            if !self.given("capture") && !self.given("dns-capture") {
                self.out.push("--capture".into());
            }
            self.used.push("transparent capture (REDIRECT)".into());
        }
        Ok(())
    }

    /// `POD_NAMESPACE`, and `--domain NAMESPACE.svc.CLUSTER_DOMAIN` (kubelet expands
    /// `$(POD_NAMESPACE)` in it; unexpanded, it says nothing).
    fn namespace(&mut self) {
        let domain = self.split.istio("domain").filter(|d| !d.contains("$("));
        let (domain_ns, cluster_domain) =
            match domain.as_deref().and_then(|d| d.split_once(".svc.")) {
                Some((ns, cd)) if !ns.is_empty() && !cd.is_empty() => {
                    (Some(ns.to_string()), Some(cd.to_string()))
                }
                _ => (None, None),
            };
        if !self.given("namespace") {
            if let Some(ns) = self.getenv("POD_NAMESPACE").map(str::to_string) {
                self.used.push(format!("namespace {ns} (POD_NAMESPACE)"));
                self.add("namespace", ns);
                self.consumed_env.insert("POD_NAMESPACE");
            } else if let Some(ns) = domain_ns {
                self.used.push(format!("namespace {ns} (--domain)"));
                self.add("namespace", ns);
            }
        }
        if !self.given("cluster-domain")
            && let Some(cd) = cluster_domain
        {
            self.used.push(format!("cluster domain {cd} (--domain)"));
            self.add("cluster-domain", cd);
        }
    }

    fn log_level(&mut self) -> Result<(), String> {
        let Some(l) = self.split.istio("proxyLogLevel") else {
            return Ok(());
        };
        if let Some(level) = log_level(&l)?
            && !self.given("log-level")
            && self.getenv("EGRET_LOG").is_none()
        {
            self.add("log-level", level);
            self.used
                .push(format!("log level {level} (--proxyLogLevel={l})"));
        }
        Ok(())
    }

    /// `PROXY_CONFIG`, and the flags that say the same (`--drainDuration`, `--statusPort`,
    /// `--proxyAdminPort`), which win over it.
    fn proxy_config(&mut self) -> Result<ProxyConfigEnv, String> {
        let pc = match self.getenv("PROXY_CONFIG") {
            Some(text) => parse_proxy_config(text)?,
            None => ProxyConfigEnv::default(),
        };
        if self.getenv("PROXY_CONFIG").is_some() {
            self.consumed_env.insert("PROXY_CONFIG");
        }
        if !self.given("concurrency")
            && let Some(n) = pc.concurrency
        {
            self.add("concurrency", n.to_string());
            self.used.push(format!("concurrency {n} (PROXY_CONFIG)"));
        }
        if !self.given("drain-duration") {
            if let Some(d) = self.split.istio("drainDuration") {
                self.used
                    .push(format!("drain duration {d} (--drainDuration)"));
                self.add("drain-duration", d);
            } else if let Some(d) = pc.drain_duration.clone() {
                self.used.push(format!("drain duration {d} (PROXY_CONFIG)"));
                self.add("drain-duration", d);
            }
        }
        if !self.given("ready")
            && let Some((p, why)) = self.port("statusPort", pc.status_port)?
        {
            self.add("ready", format!("0.0.0.0:{p}"));
            self.used.push(format!("readiness :{p} ({why})"));
        }
        if !self.given("admin")
            && let Some((p, why)) = self.port("proxyAdminPort", pc.admin_port)?
        {
            self.add("admin", format!("127.0.0.1:{p}"));
            self.used.push(format!("admin 127.0.0.1:{p} ({why})"));
        }
        Ok(pc)
    }

    /// pilot-agent's `--name` port, else `PROXY_CONFIG`'s; with where it came from.
    fn port(&self, name: &str, from_pc: Option<u16>) -> Result<Option<(u16, String)>, String> {
        match self.split.istio(name) {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map(|p| Some((p, format!("--{name}"))))
                .map_err(|_| format!("--{name} \"{p}\": expected a port number")),
            None => Ok(from_pc.map(|p| (p, "PROXY_CONFIG".to_string()))),
        }
    }

    /// `--meshConfig FILE` (which must exist), else `/etc/istio/config/mesh` if it does.
    fn mesh_config(&mut self) -> Result<(), String> {
        if self.given("mesh-config") {
            return Ok(());
        }
        let asked = self.split.istio("meshConfig");
        let path = PathBuf::from(asked.as_deref().unwrap_or(MESH_CONFIG));
        let local = self.map(&path);
        if local.is_file() {
            self.add("mesh-config", local.display().to_string());
            self.used.push(format!("mesh config {}", path.display()));
        } else if asked.is_some() {
            let read_as = if local != path {
                format!(" (read as {})", local.display())
            } else {
                String::new()
            };
            return Err(format!(
                "--meshConfig {}: no such file{read_as}",
                path.display()
            ));
        }
        Ok(())
    }

    /// The downward-API labels: the Gateway selector of a router, the workload's labels.
    fn pod_labels(&mut self) -> Result<(), String> {
        let file = self.map(Path::new(POD_LABELS));
        if !file.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("{POD_LABELS} ({}): {e}", file.display()))?;
        let labels = parse_labels(&text).map_err(|e| format!("{POD_LABELS}: {e}"))?;
        let mut took = Vec::new();
        for (flag, wanted) in [
            ("gateway-selector", self.role == "gateway"),
            ("workload-label", true),
        ] {
            if wanted && !self.given(flag) {
                for (k, v) in &labels {
                    self.add(flag, format!("{k}={v}"));
                }
                took.push(format!("--{flag}"));
            }
        }
        if !took.is_empty() {
            self.used.push(format!(
                "{} pod labels from {POD_LABELS} as {}",
                labels.len(),
                took.join(" and ")
            ));
        }
        Ok(())
    }

    /// `--config`, else `EGRET_CONFIG`, else `/etc/egret`; none is an error (`--help` needs
    /// none).
    fn manifests(&mut self) -> Result<(), String> {
        if self.given("config") || self.given("help") {
            return Ok(());
        }
        if let Some(v) = self.getenv(CONFIG_ENV).map(str::to_string) {
            for p in std::env::split_paths(&v) {
                let local = self.map(&p);
                self.add("config", local.display().to_string());
            }
            self.used.push(format!("manifests from {CONFIG_ENV}={v}"));
            return Ok(());
        }
        let dir = self.map(Path::new(CONFIG_DIR));
        if !dir.is_dir() {
            return Err(format!(
                "proxy {}: no manifests: egret has no istiod to take them from; give --config PATH, set {CONFIG_ENV}=PATH[:PATH], or mount them (a ConfigMap) at {CONFIG_DIR}",
                self.kind
            ));
        }
        self.add("config", dir.display().to_string());
        self.used.push(format!("manifests from {CONFIG_DIR}"));
        Ok(())
    }

    /// The one start-up line: what was used, what is informational, what was ignored.
    fn notice(&mut self, pc: &ProxyConfigEnv) -> String {
        let mut info: Vec<String> = Vec::new();
        if let Some(name) = self.getenv("POD_NAME") {
            let ip = self.getenv("INSTANCE_IP");
            info.push(format!(
                "pod {name}{}",
                ip.map(|ip| format!(" ({ip})")).unwrap_or_default()
            ));
            self.consumed_env.extend(["POD_NAME", "INSTANCE_IP"]);
        }
        if let Some(sc) = self.split.istio("serviceCluster") {
            info.push(format!("service cluster {sc}"));
        }
        if let Some(m) = self.getenv("ISTIO_META_ROUTER_MODE") {
            info.push(format!(
                "router mode {m} (egret serves each Gateway server as its tls.mode says)"
            ));
            self.consumed_env.insert("ISTIO_META_ROUTER_MODE");
        }
        let mut flags: Vec<String> = Vec::new();
        for (name, value) in &self.split.istio {
            if MAPPED.contains(&name.as_str()) {
                continue;
            }
            let shown = match value {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            };
            if !flags.contains(&shown) {
                flags.push(shown);
            }
        }
        let mut env: Vec<&str> = self
            .env
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| istio_env(n) && !self.consumed_env.contains(n))
            .collect();
        env.sort_unstable();
        env.dedup();
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        let env: Vec<String> = env.into_iter().map(str::to_string).collect();
        let mut notice = format!(
            "Istio agent arguments (proxy {}): {}",
            self.kind,
            self.used.join(", ")
        );
        if !info.is_empty() {
            notice.push_str(&format!("; {}", info.join(", ")));
        }
        notice.push_str(&format!(
            "; ignored flags: {}; ignored env: {}",
            list(&flags),
            list(&env)
        ));
        if !pc.ignored.is_empty() {
            notice.push_str(&format!(
                "; ignored PROXY_CONFIG fields: {}",
                pc.ignored.join(" ")
            ));
        }
        notice
    }
}

#[cfg(test)]
mod tests;
