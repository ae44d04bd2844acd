//! Metrics with Envoy's and Istio's names and labels, so existing dashboards work, plus what
//! Envoy lacks (certificate expiry, reloads, DNS failures, dropped log lines).
//!
//! The exposition is Prometheus text format 0.0.4, what Envoy's `/stats/prometheus` serves.
//! prometheus-client was considered and not used: its encoder writes OpenMetrics, which appends
//! `_total` to every counter and so cannot produce Envoy's `envoy_cluster_upstream_rq{...}`
//! next to `envoy_cluster_upstream_rq_total`.
//!
//! Counters live here, keyed by name, so they survive configuration reloads (a Prometheus
//! counter must never go backwards). Hot-path updates are relaxed atomics; the per-code and
//! per-label maps take a short uncontended lock once per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::error::Flags;

/// Envoy's default histogram buckets (ms); Istio uses the same for request durations.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram of milliseconds with Envoy's buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 19],
    /// Sum in microseconds (exported in ms).
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        if let Some(i) = BUCKETS_MS.iter().position(|b| ms <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-cluster counters (`envoy_cluster_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_connect_timeout: AtomicU64,
    pub cx_overflow: AtomicU64,
    pub ssl_handshake: AtomicU64,
    pub ssl_connection_error: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
    /// A pooled connection was found closed by the upstream (by the idle sweep, or when a
    /// request wanted it).
    pub cx_stale: AtomicU64,
    /// Pooled connections closed for being idle longer than the idle timeout.
    pub cx_idle_timeout: AtomicU64,
    /// Bytes written to / read from upstream connections (TCP proxying).
    pub cx_tx_bytes: AtomicU64,
    pub cx_rx_bytes: AtomicU64,
    /// Retries (Envoy's `upstream_rq_retry*`): started, that succeeded, refused by the retry
    /// budget (`maxRetries`), given up on (attempts ran out), and in flight (the budget's count).
    pub rq_retry: AtomicU64,
    pub rq_retry_success: AtomicU64,
    pub rq_retry_overflow: AtomicU64,
    pub rq_retry_limit_exceeded: AtomicU64,
    pub rq_retry_backoff_exponential: AtomicU64,
    pub rq_retry_active: AtomicU64,
    pub rq_per_try_timeout: AtomicU64,
    /// Requests waiting for a connection (`maxConnections` reached), all that ever waited, and
    /// those refused for the pending limit or `http2MaxRequests` (`upstream_rq_pending_*`).
    pub rq_pending_active: AtomicU64,
    pub rq_pending_total: AtomicU64,
    pub rq_pending_overflow: AtomicU64,
    /// Connections being opened (counted against `maxConnections` with `cx_active`).
    pub cx_connecting: AtomicU64,
    /// Connections closed for reaching `maxConnectionDuration`.
    pub cx_max_duration_reached: AtomicU64,
    /// Outlier detection (`outlier_detection.ejections_*`).
    pub outlier_ejections_active: AtomicU64,
    pub outlier_ejections_enforced_total: AtomicU64,
    pub outlier_ejections_overflow: AtomicU64,
    pub outlier_ejections_enforced_consecutive_5xx: AtomicU64,
    pub outlier_ejections_detected_consecutive_5xx: AtomicU64,
    pub outlier_ejections_enforced_consecutive_gateway_failure: AtomicU64,
    pub outlier_ejections_detected_consecutive_gateway_failure: AtomicU64,
    pub outlier_ejections_enforced_consecutive_local_origin_failure: AtomicU64,
    pub outlier_ejections_detected_consecutive_local_origin_failure: AtomicU64,
    /// Wakes requests waiting for a connection: signalled when a connection closes or goes
    /// back to the pool while someone waits.
    pub capacity: tokio::sync::Notify,
    /// Response codes from (or for) this cluster.
    codes: Mutex<BTreeMap<u16, u64>>,
    pub rq_time: Histogram,
}

impl ClusterStats {
    pub fn record_response(&self, code: u16) {
        if let Ok(mut c) = self.codes.lock() {
            *c.entry(code).or_default() += 1;
        }
    }
}

/// Per-listener counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicU64,
    pub downstream_rq_total: AtomicU64,
    pub downstream_rq_active: AtomicU64,
    /// Connections closed at accept because the listener was full (`--max-connections`).
    pub downstream_cx_overflow: AtomicU64,
}

/// The labels of `istio_requests_total` that vary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IstioKey {
    destination_service: Arc<str>,
    destination_namespace: Arc<str>,
    code: u16,
    flags: Flags,
    protocol: &'static str,
}

#[derive(Debug, Default)]
struct IstioValues {
    requests: u64,
    duration: Histogram,
    request_bytes: u64,
    response_bytes: u64,
}

/// Workload labels for Istio's `source_*` labels.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

/// A loaded certificate, for `egret_cert_expiry_seconds` and `/certs`.
#[derive(Clone, Debug)]
pub struct CertExpiry {
    pub role: &'static str,
    pub source: String,
    pub subject: String,
    pub not_after: i64,
}

/// All metrics of one egret process.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    clusters: RwLock<BTreeMap<String, Arc<ClusterStats>>>,
    listeners: RwLock<BTreeMap<String, Arc<ListenerStats>>>,
    istio: Mutex<crate::FastMap<IstioKey, IstioValues>>,
    pub workload: RwLock<Workload>,
    pub reload_success: AtomicU64,
    pub reload_failure: AtomicU64,
    dns_failures: Mutex<BTreeMap<String, u64>>,
    pub access_log_dropped: RwLock<Option<Arc<AtomicU64>>>,
    pub certs: RwLock<Vec<CertExpiry>>,
    pub insecure_destinations: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            clusters: RwLock::default(),
            listeners: RwLock::default(),
            istio: Mutex::default(),
            workload: RwLock::default(),
            reload_success: AtomicU64::new(0),
            reload_failure: AtomicU64::new(0),
            dns_failures: Mutex::default(),
            access_log_dropped: RwLock::default(),
            certs: RwLock::default(),
            insecure_destinations: AtomicU64::new(0),
        }
    }
}

/// What one finished request contributes to the request metrics.
pub struct RequestReport<'a> {
    pub destination_service: &'a Arc<str>,
    pub destination_namespace: &'a Arc<str>,
    pub code: u16,
    pub flags: Flags,
    pub duration: std::time::Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub tcp: bool,
}

impl Metrics {
    /// The stats of a cluster (created on first use; kept across reloads).
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        if let Some(s) = self
            .clusters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.clusters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The stats of a listener (keyed like Envoy's `listener_address`, e.g. `0.0.0.0_80`).
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        if let Some(s) = self
            .listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn dns_failure(&self, host: &str) {
        if let Ok(mut m) = self.dns_failures.lock() {
            *m.entry(host.to_string()).or_default() += 1;
        }
    }

    /// `istio_requests_total` and friends.
    pub fn record_request(&self, r: RequestReport<'_>) {
        let key = IstioKey {
            destination_service: r.destination_service.clone(),
            destination_namespace: r.destination_namespace.clone(),
            code: r.code,
            flags: r.flags,
            protocol: if r.tcp { "tcp" } else { "http" },
        };
        if let Ok(mut m) = self.istio.lock() {
            let v = m.entry(key).or_default();
            v.requests += 1;
            v.duration.record(r.duration);
            v.request_bytes += r.request_bytes;
            v.response_bytes += r.response_bytes;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_clusters(&mut out);
        self.render_listeners(&mut out);
        self.render_istio(&mut out);
        self.render_egret(&mut out);
        let _ = writeln!(out, "# TYPE envoy_server_uptime gauge");
        let _ = writeln!(
            out,
            "envoy_server_uptime {}",
            self.started.elapsed().as_secs()
        );
        out
    }

    /// `envoy_cluster_*`: the counters of [`CLUSTER_COUNTERS`], response codes and classes, and
    /// the request-time histogram.
    fn render_clusters(&self, out: &mut String) {
        let clusters = snapshot(&self.clusters);
        for (name, kind, field) in CLUSTER_COUNTERS {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (c, s) in &clusters {
                let _ = writeln!(
                    out,
                    "{name}{{cluster_name=\"{}\"}} {}",
                    esc(c),
                    load(field(s))
                );
            }
        }
        let _ = writeln!(out, "# TYPE envoy_cluster_upstream_rq counter");
        for (c, s) in &clusters {
            let codes = s.codes.lock().map(|m| m.clone()).unwrap_or_default();
            let mut classes: BTreeMap<u16, u64> = BTreeMap::new();
            for (code, n) in &codes {
                *classes.entry(code / 100).or_default() += n;
                let _ = writeln!(
                    out,
                    "envoy_cluster_upstream_rq{{envoy_response_code=\"{code}\",cluster_name=\"{}\"}} {n}",
                    esc(c)
                );
            }
            for (class, n) in classes {
                let _ = writeln!(
                    out,
                    "envoy_cluster_upstream_rq{{envoy_response_code_class=\"{class}xx\",cluster_name=\"{}\"}} {n}",
                    esc(c)
                );
            }
        }
        let _ = writeln!(out, "# TYPE envoy_cluster_upstream_rq_time histogram");
        for (c, s) in &clusters {
            s.rq_time.write(
                out,
                "envoy_cluster_upstream_rq_time",
                &format!("cluster_name=\"{}\"", esc(c)),
            );
        }
    }

    /// The listeners and their HTTP connection managers ([`LISTENER_COUNTERS`]).
    fn render_listeners(&self, out: &mut String) {
        let listeners = snapshot(&self.listeners);
        for (name, kind, label, field) in LISTENER_COUNTERS {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (l, s) in &listeners {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {}", esc(l), load(field(s)));
            }
        }
    }

    /// Istio's standard metrics (reporter="source": sidecar outbound and gateways).
    fn render_istio(&self, out: &mut String) {
        let src = self.source_labels();
        let Ok(m) = self.istio.lock() else {
            return;
        };
        let mut series: Vec<(&IstioKey, &IstioValues)> = m.iter().collect();
        series.sort_by(|a, b| {
            (&*a.0.destination_service, a.0.code).cmp(&(&*b.0.destination_service, b.0.code))
        });
        let http: Vec<(&IstioKey, &IstioValues, String)> = series
            .iter()
            .filter(|(k, _)| k.protocol == "http")
            .map(|(k, v)| (*k, *v, istio_labels(&src, k)))
            .collect();
        let _ = writeln!(out, "# TYPE istio_requests_total counter");
        for (_, v, labels) in &http {
            let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", v.requests);
        }
        let _ = writeln!(out, "# TYPE istio_request_duration_milliseconds histogram");
        for (_, v, labels) in &http {
            v.duration
                .write(out, "istio_request_duration_milliseconds", labels);
        }
        let tcp: Vec<(&IstioValues, String)> = series
            .iter()
            .filter(|(k, _)| k.protocol == "tcp")
            .map(|(k, v)| (*v, istio_labels(&src, k)))
            .collect();
        for (name, value) in TCP_SERIES {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (v, labels) in &tcp {
                let _ = writeln!(out, "{name}{{{labels}}} {}", value(v));
            }
        }
    }

    /// Istio's `source_*` labels, from the workload.
    fn source_labels(&self) -> String {
        let w = self.workload.read().map(|w| w.clone()).unwrap_or_default();
        let or_unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                esc(s)
            }
        };
        format!(
            "reporter=\"source\",source_workload=\"{}\",source_workload_namespace=\"{}\",source_principal=\"unknown\",source_app=\"{}\",source_version=\"{}\",source_canonical_service=\"{}\",source_canonical_revision=\"{}\",source_cluster=\"unknown\"",
            or_unknown(&w.name),
            or_unknown(&w.namespace),
            or_unknown(&w.app),
            or_unknown(&w.version),
            or_unknown(if w.app.is_empty() { &w.name } else { &w.app }),
            if w.version.is_empty() {
                "latest".to_string()
            } else {
                esc(&w.version)
            },
        )
    }

    /// What Envoy lacks: certificate expiry, reloads, DNS failures, dropped log lines, insecure
    /// destinations.
    fn render_egret(&self, out: &mut String) {
        let now = chrono::Utc::now().timestamp();
        let _ = writeln!(
            out,
            "# HELP egret_cert_expiry_seconds Seconds until a loaded certificate expires (negative: expired)."
        );
        let _ = writeln!(out, "# TYPE egret_cert_expiry_seconds gauge");
        for c in self.certs.read().map(|c| c.clone()).unwrap_or_default() {
            let _ = writeln!(
                out,
                "egret_cert_expiry_seconds{{role=\"{}\",source=\"{}\",subject=\"{}\"}} {}",
                c.role,
                esc(&c.source),
                esc(&c.subject),
                c.not_after - now
            );
        }
        let _ = writeln!(out, "# TYPE egret_config_reload_total counter");
        for (result, n) in [
            ("success", &self.reload_success),
            ("failure", &self.reload_failure),
        ] {
            let _ = writeln!(
                out,
                "egret_config_reload_total{{result=\"{result}\"}} {}",
                load(n)
            );
        }
        let _ = writeln!(out, "# TYPE egret_dns_resolution_failures_total counter");
        for (h, n) in self
            .dns_failures
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "egret_dns_resolution_failures_total{{host=\"{}\"}} {n}",
                esc(&h)
            );
        }
        let dropped = self
            .access_log_dropped
            .read()
            .ok()
            .and_then(|d| d.as_ref().map(|a| load(a)))
            .unwrap_or(0);
        let _ = writeln!(out, "# TYPE egret_access_log_dropped_total counter");
        let _ = writeln!(out, "egret_access_log_dropped_total {dropped}");
        let _ = writeln!(out, "# TYPE egret_insecure_destinations gauge");
        let _ = writeln!(
            out,
            "egret_insecure_destinations {}",
            load(&self.insecure_destinations)
        );
    }
}

type ClusterField = fn(&ClusterStats) -> &AtomicU64;

/// The per-cluster counters and gauges, in exposition order: (name, type, field).
const CLUSTER_COUNTERS: &[(&str, &str, ClusterField)] = &[
    ("envoy_cluster_upstream_rq_total", "counter", |s| {
        &s.rq_total
    }),
    ("envoy_cluster_upstream_rq_active", "gauge", |s| {
        &s.rq_active
    }),
    ("envoy_cluster_upstream_cx_total", "counter", |s| {
        &s.cx_total
    }),
    ("envoy_cluster_upstream_cx_active", "gauge", |s| {
        &s.cx_active
    }),
    ("envoy_cluster_upstream_cx_connect_fail", "counter", |s| {
        &s.cx_connect_fail
    }),
    (
        "envoy_cluster_upstream_cx_connect_timeout",
        "counter",
        |s| &s.cx_connect_timeout,
    ),
    ("envoy_cluster_upstream_cx_overflow", "counter", |s| {
        &s.cx_overflow
    }),
    ("envoy_cluster_upstream_cx_tx_bytes_total", "counter", |s| {
        &s.cx_tx_bytes
    }),
    ("envoy_cluster_upstream_cx_rx_bytes_total", "counter", |s| {
        &s.cx_rx_bytes
    }),
    ("envoy_cluster_ssl_handshake", "counter", |s| {
        &s.ssl_handshake
    }),
    ("envoy_cluster_ssl_connection_error", "counter", |s| {
        &s.ssl_connection_error
    }),
    ("envoy_cluster_upstream_cx_idle_timeout", "counter", |s| {
        &s.cx_idle_timeout
    }),
    ("egret_cluster_upstream_cx_stale", "counter", |s| {
        &s.cx_stale
    }),
    ("envoy_cluster_upstream_rq_retry", "counter", |s| {
        &s.rq_retry
    }),
    ("envoy_cluster_upstream_rq_retry_success", "counter", |s| {
        &s.rq_retry_success
    }),
    ("envoy_cluster_upstream_rq_retry_overflow", "counter", |s| {
        &s.rq_retry_overflow
    }),
    (
        "envoy_cluster_upstream_rq_retry_limit_exceeded",
        "counter",
        |s| &s.rq_retry_limit_exceeded,
    ),
    (
        "envoy_cluster_upstream_rq_retry_backoff_exponential",
        "counter",
        |s| &s.rq_retry_backoff_exponential,
    ),
    (
        "envoy_cluster_upstream_rq_per_try_timeout",
        "counter",
        |s| &s.rq_per_try_timeout,
    ),
    ("envoy_cluster_upstream_rq_pending_active", "gauge", |s| {
        &s.rq_pending_active
    }),
    ("envoy_cluster_upstream_rq_pending_total", "counter", |s| {
        &s.rq_pending_total
    }),
    (
        "envoy_cluster_upstream_rq_pending_overflow",
        "counter",
        |s| &s.rq_pending_overflow,
    ),
    (
        "envoy_cluster_upstream_cx_max_duration_reached",
        "counter",
        |s| &s.cx_max_duration_reached,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_active",
        "gauge",
        |s| &s.outlier_ejections_active,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_enforced_total",
        "counter",
        |s| &s.outlier_ejections_enforced_total,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_overflow",
        "counter",
        |s| &s.outlier_ejections_overflow,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx",
        "counter",
        |s| &s.outlier_ejections_enforced_consecutive_5xx,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_detected_consecutive_5xx",
        "counter",
        |s| &s.outlier_ejections_detected_consecutive_5xx,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_enforced_consecutive_gateway_failure",
        "counter",
        |s| &s.outlier_ejections_enforced_consecutive_gateway_failure,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_detected_consecutive_gateway_failure",
        "counter",
        |s| &s.outlier_ejections_detected_consecutive_gateway_failure,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_enforced_consecutive_local_origin_failure",
        "counter",
        |s| &s.outlier_ejections_enforced_consecutive_local_origin_failure,
    ),
    (
        "envoy_cluster_outlier_detection_ejections_detected_consecutive_local_origin_failure",
        "counter",
        |s| &s.outlier_ejections_detected_consecutive_local_origin_failure,
    ),
];

type ListenerField = fn(&ListenerStats) -> &AtomicU64;

/// The per-listener counters and gauges: (name, type, label, field).
const LISTENER_COUNTERS: &[(&str, &str, &str, ListenerField)] = &[
    (
        "envoy_listener_downstream_cx_total",
        "counter",
        "listener_address",
        |s| &s.downstream_cx_total,
    ),
    (
        "envoy_listener_downstream_cx_active",
        "gauge",
        "listener_address",
        |s| &s.downstream_cx_active,
    ),
    (
        "envoy_listener_downstream_cx_overflow",
        "counter",
        "listener_address",
        |s| &s.downstream_cx_overflow,
    ),
    (
        "envoy_http_downstream_rq_total",
        "counter",
        "http_conn_manager_prefix",
        |s| &s.downstream_rq_total,
    ),
    (
        "envoy_http_downstream_rq_active",
        "gauge",
        "http_conn_manager_prefix",
        |s| &s.downstream_rq_active,
    ),
];

type IstioValue = fn(&IstioValues) -> u64;

/// Istio's TCP series: (name, value). A connection is counted as opened and closed when it
/// ends (its record is written then).
const TCP_SERIES: &[(&str, IstioValue)] = &[
    ("istio_tcp_connections_opened_total", |v| v.requests),
    ("istio_tcp_connections_closed_total", |v| v.requests),
    ("istio_tcp_received_bytes_total", |v| v.request_bytes),
    ("istio_tcp_sent_bytes_total", |v| v.response_bytes),
];

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A copy of a stats map (name, stats), so rendering holds no lock while it writes.
fn snapshot<T>(map: &RwLock<BTreeMap<String, Arc<T>>>) -> Vec<(String, Arc<T>)> {
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels of one Istio series: the source's, then the destination's.
fn istio_labels(src: &str, k: &IstioKey) -> String {
    let mut flags = String::new();
    k.flags.write_short(&mut flags);
    let name = k.destination_service.split('.').next().unwrap_or("");
    format!(
        "{src},destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",destination_canonical_service=\"unknown\",destination_canonical_revision=\"latest\",destination_cluster=\"unknown\",request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"\",response_flags=\"{}\",connection_security_policy=\"unknown\"",
        esc(&k.destination_service),
        esc(if k.destination_service.contains(".svc.") {
            name
        } else {
            &k.destination_service
        }),
        esc(&k.destination_namespace),
        k.protocol,
        k.code,
        flags
    )
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(std::time::Duration::from_micros(300));
        h.record(std::time::Duration::from_millis(7));
        h.record(std::time::Duration::from_secs(7200));
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"3600000\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Metrics with something in every family: two clusters (response codes, a histogram),
    /// two listeners, HTTP and TCP Istio series, a workload, a certificate, DNS failures.
    fn populated() -> Metrics {
        let m = Metrics::default();
        let a = m.cluster("outbound|443||api.example.com");
        a.rq_total.store(5, Ordering::Relaxed);
        a.rq_active.store(1, Ordering::Relaxed);
        a.cx_total.store(2, Ordering::Relaxed);
        a.cx_active.store(1, Ordering::Relaxed);
        a.cx_connect_fail.store(3, Ordering::Relaxed);
        a.cx_connect_timeout.store(4, Ordering::Relaxed);
        a.cx_overflow.store(6, Ordering::Relaxed);
        a.cx_tx_bytes.store(700, Ordering::Relaxed);
        a.cx_rx_bytes.store(800, Ordering::Relaxed);
        a.ssl_handshake.store(9, Ordering::Relaxed);
        a.ssl_connection_error.store(10, Ordering::Relaxed);
        a.cx_idle_timeout.store(11, Ordering::Relaxed);
        a.cx_stale.store(12, Ordering::Relaxed);
        for code in [200, 200, 204, 503] {
            a.record_response(code);
        }
        a.rq_time.record(std::time::Duration::from_millis(7));
        let b = m.cluster("outbound|9092||kafka \"q\"");
        b.record_response(502);
        let l = m.listener("0.0.0.0_80");
        l.downstream_cx_total.store(13, Ordering::Relaxed);
        l.downstream_cx_active.store(2, Ordering::Relaxed);
        l.downstream_rq_total.store(14, Ordering::Relaxed);
        l.downstream_rq_active.store(1, Ordering::Relaxed);
        l.downstream_cx_overflow.store(16, Ordering::Relaxed);
        m.listener("0.0.0.0_3000");
        if let Ok(mut w) = m.workload.write() {
            w.name = "egress".into();
            w.namespace = "ns".into();
        }
        let svc: Arc<str> = Arc::from("api.example.com");
        let local: Arc<str> = Arc::from("egress.ns.svc.cluster.local");
        let ns: Arc<str> = Arc::from("ns");
        for (dest, code, flags, tcp) in [
            (&svc, 200, Flags::NONE, false),
            (&svc, 503, Flags::UF | Flags::URX, false),
            (&local, 0, Flags::NONE, true),
        ] {
            m.record_request(RequestReport {
                destination_service: dest,
                destination_namespace: &ns,
                code,
                flags,
                duration: std::time::Duration::from_millis(30),
                request_bytes: 100,
                response_bytes: 2000,
                tcp,
            });
        }
        m.reload_success.store(3, Ordering::Relaxed);
        m.reload_failure.store(1, Ordering::Relaxed);
        m.dns_failure("nx.example.com");
        m.dns_failure("nx.example.com");
        if let Ok(mut d) = m.access_log_dropped.write() {
            *d = Some(Arc::new(AtomicU64::new(15)));
        }
        if let Ok(mut c) = m.certs.write() {
            c.push(CertExpiry {
                role: "client",
                source: "/etc/istio/egress-certs/tls.crt".into(),
                subject: "CN=egress".into(),
                not_after: chrono::Utc::now().timestamp() + 86_400,
            });
        }
        m.insecure_destinations.store(1, Ordering::Relaxed);
        m
    }

    /// The exposition of [`populated`], line for line as the first render wrote it (the cert
    /// expiry and the uptime, which depend on the clock, are checked for shape only).
    #[test]
    fn exposition_is_unchanged() {
        let out = populated().render();
        let mut lines = Vec::new();
        for line in out.lines() {
            if let Some(v) = line.strip_prefix("egret_cert_expiry_seconds{role=\"client\",source=\"/etc/istio/egress-certs/tls.crt\",subject=\"CN=egress\"} ") {
                let v: i64 = v.parse().expect("a number");
                assert!((86_390..=86_400).contains(&v), "{line}");
                lines.push("egret_cert_expiry_seconds{...} ~86400".to_string());
            } else if let Some(v) = line.strip_prefix("envoy_server_uptime ") {
                let _: u64 = v.parse().expect("a number");
                lines.push("envoy_server_uptime N".to_string());
            } else {
                lines.push(line.to_string());
            }
        }
        let got = lines.join("\n") + "\n";
        let want = include_str!("../tests/golden/metrics.prom");
        if got != want && std::env::var_os("EGRET_BLESS").is_some() {
            let _ = std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/metrics.prom"),
                &got,
            );
            return;
        }
        assert_eq!(got, want);
    }
}
