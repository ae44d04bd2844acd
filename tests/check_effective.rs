//! `egret check` prints the effective resilience settings: per route its timeout, retry policy
//! (Istio's default marked when the route sets none) and fault; per cluster its timeouts,
//! connection-pool limits (the defaults marked) and outlier detection; and it warns when
//! `maxEjectionPercent` leaves nothing ejectable among a cluster's static endpoints.
//!
//! The binary is run on a manifest; nothing listens.

use std::process::Command;

const MANIFEST: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2}, {address: 127.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 3s, maxConnectionDuration: 10m, tcpKeepalive: {time: 60s, interval: 5s}}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 50, maxRequestsPerConnection: 20, maxRetries: 4, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http:
    - name: flaky
      match: [{uri: {prefix: /flaky}}]
      timeout: 10s
      retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"gateway-error,503\"}
      fault: {delay: {fixedDelay: 1s, percentage: {value: 10}}, abort: {httpStatus: 503, percentage: {value: 1}}}
      route: [{destination: {host: api.example.com}}]
    - name: plain
      route: [{destination: {host: api.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ok}
spec:
  hosts: [ok.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.4}, {address: 127.0.0.5}, {address: 127.0.0.6}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ok}
spec:
  host: ok.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, maxEjectionPercent: 100}
";

/// Runs `egret check` on `manifest`; (stdout, stderr), after asserting success.
fn check(manifest: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run egret check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    (stdout, stderr)
}

/// The lines of `out` after the first that contains `start`, up to `n` of them.
fn after<'a>(out: &'a str, start: &str, n: usize) -> Vec<&'a str> {
    let lines: Vec<&str> = out.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains(start))
        .unwrap_or_else(|| panic!("no line with {start:?} in:\n{out}"));
    lines[i + 1..(i + 1 + n).min(lines.len())].to_vec()
}

#[test]
fn check_prints_each_routes_timeout_retries_and_fault() {
    let (out, _) = check(MANIFEST);
    let flaky = after(&out, " flaky ", 3).join("\n");
    assert!(flaky.contains("timeout: 10s"), "{flaky}");
    assert!(
        flaky.contains(
            "retries: 3 on gateway-error,retriable-status-codes; perTryTimeout 2s; status codes 503; backoff 25ms (at most 250ms)"
        ),
        "{flaky}"
    );
    assert!(
        flaky.contains("fault: delay 1s for 10% of requests; abort with 503 for 1% of requests"),
        "{flaky}"
    );

    let plain = after(&out, " plain ", 2).join("\n");
    assert!(plain.contains("timeout: none (Istio default)"), "{plain}");
    assert!(
        plain.contains(
            "retries: 2 (Istio default: connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable); perTryTimeout none"
        ),
        "{plain}"
    );
    assert!(
        !after(&out, " plain ", 3)
            .iter()
            .any(|l| l.trim_start().starts_with("fault:")),
        "no fault line under plain:\n{out}"
    );

    // A host without a VirtualService gets the default route, with Istio's default retries.
    let default = after(&out, "ok.example.com", 2).join("\n");
    assert!(
        default.contains("retries: 2 (Istio default: connect-failure,"),
        "{default}"
    );
}

#[test]
fn check_prints_each_clusters_limits_timeouts_and_outlier_detection() {
    let (out, _) = check(MANIFEST);
    let api = after(&out, "  outbound|80||api.example.com (", 3).join("\n");
    for want in [
        "connectTimeout 3s;",
        "idleTimeout 30s;",
        "maxConnectionDuration 10m;",
        "tcpKeepalive probes OS default, time 1m, interval 5s",
        "maxConnections 7;",
        "http1MaxPendingRequests 5 waiting;",
        "http2MaxRequests 50 in flight;",
        "maxRequestsPerConnection 20;",
        "maxRetries 4 concurrent retries",
        "outlierDetection: consecutive5xxErrors 3; consecutiveGatewayErrors off (default); interval 5s; baseEjectionTime 30s (default); maxEjectionTime 5m; maxEjectionPercent 10 (default)",
        "ejects nothing with 3 endpoints: needs maxEjectionPercent >= 34",
    ] {
        assert!(api.contains(want), "{want:?} in\n{api}");
    }

    let ok = after(&out, "  outbound|80||ok.example.com (", 3).join("\n");
    for want in [
        "connectTimeout 10s (Istio default)",
        "idleTimeout 45s (egret default; Envoy's is 1h)",
        "maxConnectionDuration none (Istio default)",
        "tcpKeepalive time 300s, interval 75s (egret default)",
        "maxConnections unlimited (Istio default);",
        "http1MaxPendingRequests unlimited waiting (Istio default);",
        "http2MaxRequests unlimited in flight (Istio default);",
        "maxRequestsPerConnection unlimited (Istio default);",
        "maxRetries 1024 concurrent retries (egret default; Istio leaves it unlimited)",
        "maxEjectionPercent 100;",
    ] {
        assert!(ok.contains(want), "{want:?} in\n{ok}");
    }
    assert!(!ok.contains("ejects nothing"), "{ok}");
}

#[test]
fn check_warns_when_max_ejection_percent_makes_ejection_impossible() {
    let (_, err) = check(MANIFEST);
    let warning: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("maxEjectionPercent"))
        .collect();
    assert_eq!(warning.len(), 1, "one warning, for api only:\n{err}");
    for want in [
        "DestinationRule api:",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "outbound|80||api.example.com has 3 endpoints and maxEjectionPercent is 10 (the default when unset)",
        "no host is ever ejected",
    ] {
        assert!(warning[0].contains(want), "{want:?} in\n{err}");
    }
    assert!(
        err.contains("hint: set maxEjectionPercent: 100, or at least 34"),
        "{err}"
    );

    // Raising it for api silences the warning.
    let fixed = MANIFEST.replace(
        "outlierDetection: {consecutive5xxErrors: 3, interval: 5s}",
        "outlierDetection: {consecutive5xxErrors: 3, interval: 5s, maxEjectionPercent: 34}",
    );
    let (out, err) = check(&fixed);
    assert!(!err.contains("maxEjectionPercent"), "{err}");
    assert!(!out.contains("ejects nothing"), "{out}");
}

#[test]
fn the_resilience_example_config_checks_and_shows_what_it_sets() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/resilience.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["check", "-c", path])
        .output()
        .expect("run egret check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "retries: 3 on gateway-error,connect-failure; perTryTimeout 2s",
        "http1MaxPendingRequests 50 waiting",
        "maxRetries 20 concurrent retries",
        "consecutive5xxErrors 3",
        "maxEjectionPercent 50",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    assert!(
        !stderr.contains("maxEjectionPercent"),
        "two endpoints at 50 % can eject one: no warning\n{stderr}"
    );
}
