//! Failure policies from their specs, validated: a route's `retries` and `fault`
//! (VirtualService, or egret's own routes) and a cluster's `outlierDetection`.

use std::time::Duration;

use crate::route::{Fault, FaultAbort, FaultDelay, RetryPolicy};

use super::diag::{Origin, Problems};
use super::model::OutlierPolicy;
use super::spec::{FaultSpec, OutlierSpec, RetrySpec};

/// `retries` → the route's policy; Istio's default when the block is absent.
pub(crate) fn retry_policy(
    spec: Option<&RetrySpec>,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> RetryPolicy {
    let Some(r) = spec else {
        return RetryPolicy::istio_default();
    };
    let mut p = RetryPolicy::istio_default();
    match r.attempts {
        Some(n) if n < 0 => {
            problems.error(
                origin,
                format!("{path}.attempts"),
                format!("attempts is {n}; it counts retries and cannot be negative"),
                Some("use attempts: 0 to disable retries".into()),
            );
        }
        Some(n) => p.retries = u32::try_from(n).unwrap_or(u32::MAX).min(100),
        // Istio: a retries block without attempts leaves the default count.
        None => {}
    }
    if let Some(n) = r.attempts
        && n > 100
    {
        problems.warn(
            origin,
            format!("{path}.attempts"),
            format!("attempts is {n}; egret caps retries at 100 per request"),
            None,
        );
    }
    if let Some(t) = r.per_try_timeout {
        if t.0 < Duration::from_millis(1) {
            problems.error(
                origin,
                format!("{path}.perTryTimeout"),
                format!("perTryTimeout is {:?}; it must be at least 1ms", t.0),
                Some("remove perTryTimeout for no per-attempt limit".into()),
            );
        } else {
            p.per_try_timeout = Some(t.0);
        }
    }
    if let Some(on) = &r.retry_on {
        match RetryPolicy::parse_retry_on(on) {
            Ok((bits, codes)) => {
                p.on = bits;
                p.status_codes = codes.into_boxed_slice();
            }
            Err(e) => problems.error(
                origin,
                format!("{path}.retryOn"),
                e,
                Some(
                    "use Envoy's names, e.g. retryOn: gateway-error,connect-failure,refused-stream"
                        .into(),
                ),
            ),
        }
    }
    if let Some(b) = r.backoff {
        if b.0 < Duration::from_millis(1) {
            problems.error(
                origin,
                format!("{path}.backoff"),
                format!("backoff is {:?}; it must be at least 1ms", b.0),
                None,
            );
        } else {
            p.backoff_base = b.0;
            p.backoff_max = b.0.saturating_mul(10);
        }
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        p.other_hosts = ignore;
    }
    if r.retry_remote_localities.is_some() {
        problems.warn(
            origin,
            format!("{path}.retryRemoteLocalities"),
            "retryRemoteLocalities is accepted but has no effect: egret has no localities (every endpoint is one locality)",
            None,
        );
    }
    p
}

/// `fault` → the route's fault injection.
pub(crate) fn fault(
    spec: Option<&FaultSpec>,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> Option<Fault> {
    let f = spec?;
    let percent = |pct: Option<f64>, at: String, problems: &mut Problems| -> f64 {
        match pct {
            None => {
                problems.warn(
                    origin,
                    at,
                    "no percentage: as in Istio, the fault applies to no request",
                    Some("add percentage: {value: 100} to apply it to every request".into()),
                );
                0.0
            }
            Some(v) if !(0.0..=100.0).contains(&v) || v.is_nan() => {
                problems.error(
                    origin,
                    format!("{at}.value"),
                    format!("percentage {v} is not between 0 and 100"),
                    None,
                );
                0.0
            }
            Some(v) => v,
        }
    };
    let delay = f.delay.as_ref().and_then(|d| {
        let at = format!("{path}.delay");
        let Some(fixed) = d.fixed_delay else {
            problems.error(
                origin,
                format!("{at}.fixedDelay"),
                if d.exponential_delay.is_some() {
                    "exponentialDelay is not supported (Istio does not implement it either)"
                } else {
                    "a delay needs fixedDelay"
                },
                Some("set fixedDelay, e.g. fixedDelay: 5s".into()),
            );
            return None;
        };
        let pct = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(|p| p as f64));
        Some(FaultDelay {
            fixed: fixed.0,
            percent: percent(pct, format!("{at}.percentage"), problems),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let at = format!("{path}.abort");
        let pct = percent(
            a.percentage.as_ref().map(|p| p.value),
            format!("{at}.percentage"),
            problems,
        );
        if let Some(s) = a.http_status {
            let Some(status) = u16::try_from(s).ok().filter(|s| (200..=599).contains(s)) else {
                problems.error(
                    origin,
                    format!("{at}.httpStatus"),
                    format!("{s} is not an HTTP status (200..599)"),
                    None,
                );
                return None;
            };
            return Some(FaultAbort {
                status,
                grpc_status: None,
                percent: pct,
            });
        }
        if let Some(g) = &a.grpc_status {
            let Some(code) = grpc_code(g) else {
                problems.error(
                    origin,
                    format!("{at}.grpcStatus"),
                    format!("\"{g}\" is not a gRPC status name (e.g. UNAVAILABLE) or number"),
                    None,
                );
                return None;
            };
            return Some(FaultAbort {
                status: 200,
                grpc_status: Some(code),
                percent: pct,
            });
        }
        problems.error(
            origin,
            at,
            if a.http2_error.is_some() {
                "http2Error aborts are not supported: egret speaks HTTP/1.1 to upstreams"
            } else {
                "an abort needs httpStatus or grpcStatus"
            },
            Some("set httpStatus, e.g. httpStatus: 503".into()),
        );
        None
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(Fault { delay, abort })
}

fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .and_then(|i| u32::try_from(i).ok())
}

/// `outlierDetection` → the cluster's ejection policy, with Envoy's defaults for what is unset.
pub(crate) fn outlier(
    spec: Option<&OutlierSpec>,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> Option<OutlierPolicy> {
    let o = spec?;
    let mut p = OutlierPolicy::default();
    if let Some(n) = o.consecutive_5xx_errors.or(o.consecutive_errors) {
        p.consecutive_5xx = n;
    }
    if let Some(n) = o.consecutive_gateway_errors {
        p.consecutive_gateway = n;
    }
    if let Some(n) = o.consecutive_local_origin_failures {
        p.consecutive_local_origin = n;
    }
    p.split_local_origin = o.split_external_local_origin_errors.unwrap_or(false);
    if let Some(d) = o.interval {
        p.interval = d.0;
    }
    if let Some(d) = o.base_ejection_time {
        p.base_ejection_time = d.0;
    }
    for (field, v, dst) in [
        (
            "maxEjectionPercent",
            o.max_ejection_percent,
            &mut p.max_ejection_percent,
        ),
        (
            "minHealthPercent",
            o.min_health_percent,
            &mut p.min_health_percent,
        ),
    ] {
        match v {
            Some(n) if !(0..=100).contains(&n) => problems.error(
                origin,
                format!("{path}.{field}"),
                format!("{field} is {n}; it is a percentage (0..100)"),
                None,
            ),
            Some(n) => *dst = u32::try_from(n).unwrap_or(0),
            None => {}
        }
    }
    if o.outlier_detection_http_error_codes.is_some() {
        problems.warn(
            origin,
            format!("{path}.outlierDetectionHttpErrorCodes"),
            "outlierDetectionHttpErrorCodes is accepted but not acted on: every 5xx counts",
            None,
        );
    }
    Some(p)
}

/// The least `maxEjectionPercent` that lets Envoy eject one of `hosts` hosts: it ejects only
/// while `(ejected + 1) / hosts * 100 <= maxEjectionPercent`, so the first ejection needs
/// `100 / hosts`, rounded up.
pub(crate) fn min_ejection_percent(hosts: usize) -> u32 {
    let hosts = u32::try_from(hosts.max(1)).unwrap_or(u32::MAX);
    100u32.div_ceil(hosts)
}

/// Whether `policy` can ever eject one of `hosts` endpoints.
pub(crate) fn can_eject(policy: &OutlierPolicy, hosts: usize) -> bool {
    hosts > 0 && policy.max_ejection_percent >= min_ejection_percent(hosts)
}

/// Warns when `maxEjectionPercent` makes ejection impossible for a cluster of `hosts` static
/// endpoints (Istio's default of 10 does so for fewer than 10 hosts): the rule would look
/// active and never act.
pub(crate) fn warn_no_ejection(
    policy: &OutlierPolicy,
    hosts: usize,
    cluster: &str,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) {
    if hosts == 0 || can_eject(policy, hosts) {
        return;
    }
    let need = min_ejection_percent(hosts);
    let pct = policy.max_ejection_percent;
    let share = 100.0 / hosts as f64;
    problems.warn(
        origin,
        format!("{path}.maxEjectionPercent"),
        format!(
            "{cluster} has {hosts} endpoint{s} and maxEjectionPercent is {pct}{default}: ejecting even \
             one host would eject {share:.0}% of them, more than {pct}%, so no host is ever ejected \
             (Envoy ejects only while (ejected + 1) / hosts * 100 <= maxEjectionPercent)",
            s = if hosts == 1 { "" } else { "s" },
            default = if pct == OutlierPolicy::default().max_ejection_percent {
                " (the default when unset)"
            } else {
                ""
            },
        ),
        Some(format!(
            "set maxEjectionPercent: 100, or at least {need} to allow one ejection among {hosts} endpoints"
        )),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's rule: eject only while (ejected + 1) / hosts * 100 <= maxEjectionPercent.
    #[test]
    fn ejection_needs_room_for_one_host() {
        let with = |pct| OutlierPolicy {
            max_ejection_percent: pct,
            ..OutlierPolicy::default()
        };
        assert_eq!(min_ejection_percent(1), 100);
        assert_eq!(min_ejection_percent(3), 34);
        assert_eq!(min_ejection_percent(4), 25);
        assert_eq!(min_ejection_percent(10), 10);
        assert!(
            !can_eject(&OutlierPolicy::default(), 3),
            "Istio's default 10%"
        );
        assert!(!can_eject(&with(33), 3));
        assert!(can_eject(&with(34), 3));
        assert!(can_eject(&with(100), 3));
        assert!(can_eject(&OutlierPolicy::default(), 10));
        assert!(!can_eject(&OutlierPolicy::default(), 9));
        assert!(!can_eject(&with(0), 100), "0 ejects nothing");
        assert!(can_eject(&with(1), 100));
    }
}
