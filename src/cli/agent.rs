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
    let getenv = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let mut rest = args;
    let (role, kind) = match rest.first().map(String::as_str) {
        Some("router") => {
            rest = &rest[1..];
            ("gateway", "router")
        }
        Some("sidecar") => {
            rest = &rest[1..];
            ("sidecar", "sidecar")
        }
        Some(a) if !a.starts_with('-') => {
            return Err(format!(
                "proxy {a}: expected `proxy router` (a gateway) or `proxy sidecar`"
            ));
        }
        // pilot-agent's default proxy type.
        _ => ("sidecar", "sidecar"),
    };

    // Split Istio's flags from egret's, keeping egret's in order (--param placement matters).
    let mut istio: Vec<(String, Option<String>)> = Vec::new();
    let mut passed: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut mounts: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let tok = &rest[i];
        i += 1;
        let (flag, inline): (Option<&EgretFlag>, Option<&str>) = if let Some(long) =
            tok.strip_prefix("--")
        {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(f) = egret.iter().find(|f| f.long == name) {
                (Some(f), inline)
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
                istio.push((name.to_string(), value));
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
            let inline = Some(&short[c.len_utf8()..]).filter(|s| !s.is_empty());
            (Some(f), inline)
        } else {
            return Err(format!(
                "proxy {kind}: unexpected argument \"{tok}\" (pilot-agent's and egret's flags only)"
            ));
        };
        let Some(f) = flag else { continue };
        passed.push(tok.clone());
        let mut value = inline.map(str::to_string);
        if f.takes_value && value.is_none() {
            let v = rest
                .get(i)
                .ok_or_else(|| format!("--{} needs a value", f.long))?;
            i += 1;
            passed.push(v.clone());
            value = Some(v.clone());
        }
        if f.long == "mount"
            && let Some((from, to)) = value.as_deref().and_then(|v| v.split_once('='))
        {
            mounts.push((PathBuf::from(from), PathBuf::from(to)));
        }
        seen.insert(f.long.clone());
    }
    let flag = |n: &str| {
        istio
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.clone())
    };
    let map = |p: &Path| map_path(&mounts, p);

    let mut out: Vec<String> = vec!["run".into()];
    let mut add = |name: &str, value: String| {
        out.push(format!("--{name}"));
        out.push(value);
    };
    // What the notice says was made of Istio's arguments.
    let mut used: Vec<String> = Vec::new();
    let mut ignored_env: Vec<String> = Vec::new();
    let mut consumed_env: BTreeSet<&str> = BTreeSet::new();

    if !seen.contains("role") {
        add("role", role.into());
    }
    used.push(format!("role {role}"));

    // --domain is NAMESPACE.svc.CLUSTER_DOMAIN (kubelet expands $(POD_NAMESPACE) in it).
    let domain = flag("domain").filter(|d| !d.contains("$("));
    let (domain_ns, cluster_domain) = match domain.as_deref().and_then(|d| d.split_once(".svc.")) {
        Some((ns, cd)) if !ns.is_empty() && !cd.is_empty() => {
            (Some(ns.to_string()), Some(cd.to_string()))
        }
        _ => (None, None),
    };
    if !seen.contains("namespace") {
        if let Some(ns) = getenv("POD_NAMESPACE") {
            add("namespace", ns.into());
            used.push(format!("namespace {ns} (POD_NAMESPACE)"));
            consumed_env.insert("POD_NAMESPACE");
        } else if let Some(ns) = &domain_ns {
            add("namespace", ns.clone());
            used.push(format!("namespace {ns} (--domain)"));
        }
    }
    if !seen.contains("cluster-domain")
        && let Some(cd) = &cluster_domain
    {
        add("cluster-domain", cd.clone());
        used.push(format!("cluster domain {cd} (--domain)"));
    }

    if let Some(l) = flag("proxyLogLevel") {
        let level = log_level(&l)?;
        if let Some(level) = level
            && !seen.contains("log-level")
            && getenv("EGRET_LOG").is_none()
        {
            add("log-level", level.into());
            used.push(format!("log level {level} (--proxyLogLevel={l})"));
        }
    }

    let pc = match getenv("PROXY_CONFIG") {
        Some(text) => {
            consumed_env.insert("PROXY_CONFIG");
            parse_proxy_config(text)?
        }
        None => ProxyConfigEnv::default(),
    };
    if !seen.contains("concurrency")
        && let Some(n) = pc.concurrency
    {
        add("concurrency", n.to_string());
        used.push(format!("concurrency {n} (PROXY_CONFIG)"));
    }
    if !seen.contains("drain-duration") {
        if let Some(d) = flag("drainDuration") {
            used.push(format!("drain duration {d} (--drainDuration)"));
            add("drain-duration", d);
        } else if let Some(d) = pc.drain_duration.clone() {
            used.push(format!("drain duration {d} (PROXY_CONFIG)"));
            add("drain-duration", d);
        }
    }
    let port_of = |name: &str, from_pc: Option<u16>| -> Result<Option<(u16, String)>, String> {
        match flag(name) {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map(|p| Some((p, format!("--{name}"))))
                .map_err(|_| format!("--{name} \"{p}\": expected a port number")),
            None => Ok(from_pc.map(|p| (p, "PROXY_CONFIG".to_string()))),
        }
    };
    if !seen.contains("ready")
        && let Some((p, why)) = port_of("statusPort", pc.status_port)?
    {
        add("ready", format!("0.0.0.0:{p}"));
        used.push(format!("readiness :{p} ({why})"));
    }
    if !seen.contains("admin")
        && let Some((p, why)) = port_of("proxyAdminPort", pc.admin_port)?
    {
        add("admin", format!("127.0.0.1:{p}"));
        used.push(format!("admin 127.0.0.1:{p} ({why})"));
    }

    if !seen.contains("mesh-config") {
        let asked = flag("meshConfig");
        let path = PathBuf::from(asked.as_deref().unwrap_or(MESH_CONFIG));
        let local = map(&path);
        if local.is_file() {
            add("mesh-config", local.display().to_string());
            used.push(format!("mesh config {}", path.display()));
        } else if asked.is_some() {
            return Err(format!(
                "--meshConfig {}: no such file{}",
                path.display(),
                if local != path {
                    format!(" (read as {})", local.display())
                } else {
                    String::new()
                }
            ));
        }
    }

    let labels_file = map(Path::new(POD_LABELS));
    if labels_file.is_file() {
        let text = std::fs::read_to_string(&labels_file)
            .map_err(|e| format!("{POD_LABELS} ({}): {e}", labels_file.display()))?;
        let labels = parse_labels(&text).map_err(|e| format!("{POD_LABELS}: {e}"))?;
        let mut took = Vec::new();
        if role == "gateway" && !seen.contains("gateway-selector") {
            for (k, v) in &labels {
                add("gateway-selector", format!("{k}={v}"));
            }
            took.push("--gateway-selector");
        }
        if !seen.contains("workload-label") {
            for (k, v) in &labels {
                add("workload-label", format!("{k}={v}"));
            }
            took.push("--workload-label");
        }
        if !took.is_empty() {
            used.push(format!(
                "{} pod labels from {POD_LABELS} as {}",
                labels.len(),
                took.join(" and ")
            ));
        }
    }

    // `--help` prints `egret run`'s help: no manifests are needed for that.
    if !seen.contains("config") && !seen.contains("help") {
        if let Some(v) = getenv(CONFIG_ENV) {
            for p in std::env::split_paths(v) {
                add("config", map(&p).display().to_string());
            }
            used.push(format!("manifests from {CONFIG_ENV}={v}"));
        } else {
            let dir = map(Path::new(CONFIG_DIR));
            if !dir.is_dir() {
                return Err(format!(
                    "proxy {kind}: no manifests: egret has no istiod to take them from; give --config PATH, set {CONFIG_ENV}=PATH[:PATH], or mount them (a ConfigMap) at {CONFIG_DIR}"
                ));
            }
            add("config", dir.display().to_string());
            used.push(format!("manifests from {CONFIG_DIR}"));
        }
    }

    // Informational: named in the notice, no effect.
    let mut info: Vec<String> = Vec::new();
    if let Some(name) = getenv("POD_NAME") {
        consumed_env.insert("POD_NAME");
        let ip = getenv("INSTANCE_IP");
        if ip.is_some() {
            consumed_env.insert("INSTANCE_IP");
        }
        info.push(format!(
            "pod {name}{}",
            ip.map(|ip| format!(" ({ip})")).unwrap_or_default()
        ));
    }
    if let Some(sc) = flag("serviceCluster") {
        info.push(format!("service cluster {sc}"));
    }
    if let Some(m) = getenv("ISTIO_META_ROUTER_MODE") {
        consumed_env.insert("ISTIO_META_ROUTER_MODE");
        info.push(format!(
            "router mode {m} (egret serves each Gateway server as its tls.mode says)"
        ));
    }

    let mut ignored_flags: Vec<String> = Vec::new();
    for (name, value) in &istio {
        if MAPPED.contains(&name.as_str()) {
            continue;
        }
        let shown = match value {
            Some(v) => format!("--{name}={v}"),
            None => format!("--{name}"),
        };
        if !ignored_flags.contains(&shown) {
            ignored_flags.push(shown);
        }
    }
    for (name, _) in env {
        if istio_env(name) && !consumed_env.contains(name.as_str()) && !ignored_env.contains(name) {
            ignored_env.push(name.clone());
        }
    }
    ignored_env.sort();

    out.extend(passed);
    let none = || "none".to_string();
    let mut notice = format!("Istio agent arguments (proxy {kind}): {}", used.join(", "));
    if !info.is_empty() {
        notice.push_str(&format!("; {}", info.join(", ")));
    }
    notice.push_str(&format!(
        "; ignored flags: {}; ignored env: {}",
        if ignored_flags.is_empty() {
            none()
        } else {
            ignored_flags.join(" ")
        },
        if ignored_env.is_empty() {
            none()
        } else {
            ignored_env.join(" ")
        },
    ));
    if !pc.ignored.is_empty() {
        notice.push_str(&format!(
            "; ignored PROXY_CONFIG fields: {}",
            pc.ignored.join(" ")
        ));
    }
    Ok(Translated { args: out, notice })
}

#[cfg(test)]
mod tests;
