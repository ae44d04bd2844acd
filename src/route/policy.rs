//! A route's failure policies as data: retries (VirtualService `retries`, and Istio's default
//! when a route sets none) and fault injection (`fault`). Pure: which outcome may be retried,
//! the back-off window, whether a fault applies for a given random draw. No I/O, no clock, no
//! randomness of its own (callers pass the random numbers).

use std::time::Duration;

use http::HeaderMap;

/// Envoy's `retry_on` conditions, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 7);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 8);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 11);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 12);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 13);
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 14);

    /// Every name `retryOn` accepts (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
    pub const NAMES: &'static [(&'static str, RetryOn)] = &[
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
        (
            "http3-post-connect-failure",
            RetryOn::HTTP3_POST_CONNECT_FAILURE,
        ),
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("internal", RetryOn::GRPC_INTERNAL),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
    ];

    const GRPC: [(RetryOn, &'static [u8]); 5] = [
        (RetryOn::GRPC_CANCELLED, b"1"),
        (RetryOn::GRPC_DEADLINE_EXCEEDED, b"4"),
        (RetryOn::GRPC_RESOURCE_EXHAUSTED, b"8"),
        (RetryOn::GRPC_INTERNAL, b"13"),
        (RetryOn::GRPC_UNAVAILABLE, b"14"),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// The names, comma-separated, in the order of [`RetryOn::NAMES`].
    pub fn names(self) -> String {
        let v: Vec<&str> = RetryOn::NAMES
            .iter()
            .filter(|(_, b)| self.contains(*b))
            .map(|(n, _)| *n)
            .collect();
        if v.is_empty() {
            "-".into()
        } else {
            v.join(",")
        }
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for RetryOn {
    fn bitor_assign(&mut self, rhs: RetryOn) {
        self.0 |= rhs.0;
    }
}

/// How an attempt failed before a response arrived, as Envoy's retry state sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// No connection (refused, unreachable, connect timeout, TLS handshake): nothing was sent.
    ConnectFailure,
    /// The connection closed or broke after the request went out, or the response was not
    /// HTTP.
    Reset,
    /// `perTryTimeout` fired.
    PerTryTimeout,
}

/// A route's retry policy (Envoy's `RetryPolicy`, from VirtualService `retries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries beyond the first attempt (`attempts`); 0 disables retries.
    pub retries: u32,
    /// Each attempt's own timeout (`perTryTimeout`); `None`: only the route timeout.
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// `retriable-status-codes` (numbers in `retryOn`).
    pub status_codes: Box<[u16]>,
    /// Back-off: retry k waits a random time in [0, (2^k - 1) * base), at most `max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Prefer hosts not tried yet (`retryIgnorePreviousHosts`, default true).
    pub other_hosts: bool,
}

/// Envoy's default back-off base interval.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

impl RetryPolicy {
    /// What Istio gives a route without `retries` (mesh `defaultHttpRetryPolicy`): two retries on
    /// connect-failure, refused-stream, unavailable, cancelled and retriable-status-codes (with
    /// no codes), on other hosts, 25 ms back-off.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            retries: 2,
            per_try_timeout: None,
            on: RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::GRPC_UNAVAILABLE
                | RetryOn::GRPC_CANCELLED
                | RetryOn::RETRIABLE_STATUS_CODES,
            status_codes: Box::new([]),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_BASE * 10,
            other_hosts: true,
        }
    }

    /// `attempts: 0`.
    pub fn disabled() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            ..RetryPolicy::istio_default()
        }
    }

    /// Parses `retryOn`: comma-separated names and HTTP status codes (a code adds
    /// `retriable-status-codes`, as Istio does). The error names the bad entry.
    pub fn parse_retry_on(s: &str) -> Result<(RetryOn, Vec<u16>), String> {
        let mut on = RetryOn::NONE;
        let mut codes = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Ok(code) = item.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(format!("{item} is not an HTTP status code"));
                }
                codes.push(code);
                on |= RetryOn::RETRIABLE_STATUS_CODES;
                continue;
            }
            match RetryOn::NAMES.iter().find(|(n, _)| *n == item) {
                Some((_, b)) => on |= *b,
                None => {
                    let names: Vec<&str> = RetryOn::NAMES.iter().map(|(n, _)| *n).collect();
                    let hint = crate::text::suggest(item, names.iter().copied())
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "\"{item}\" is not a retry condition{hint}; egret knows {} and HTTP status codes",
                        names.join(", ")
                    ));
                }
            }
        }
        Ok((on, codes))
    }

    /// Whether an attempt that failed this way may be retried (Envoy's `wouldRetryFromReset`).
    pub fn retries_failure(&self, f: AttemptFailure) -> bool {
        if self
            .on
            .intersects(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
        {
            return true;
        }
        match f {
            AttemptFailure::ConnectFailure => self
                .on
                .intersects(RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST),
            AttemptFailure::Reset | AttemptFailure::PerTryTimeout => false,
        }
    }

    /// Whether a response with `status` and `headers` is retried (Envoy's
    /// `wouldRetryFromHeaders`). Envoy never retries a response that says it is overloaded.
    pub fn retries_response(&self, status: u16, headers: &HeaderMap) -> bool {
        if headers.contains_key("x-envoy-overloaded") {
            return false;
        }
        let on = self.on;
        if on.contains(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
            return true;
        }
        if on.contains(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.contains(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&status) {
            return true;
        }
        if on.contains(RetryOn::ENVOY_RATELIMITED) && headers.contains_key("x-envoy-ratelimited") {
            return true;
        }
        if on.intersects(RetryOn(RetryOn::GRPC.iter().fold(0, |a, (b, _)| a | b.0)))
            && let Some(g) = headers.get("grpc-status")
        {
            return RetryOn::GRPC
                .iter()
                .any(|(b, code)| on.contains(*b) && g.as_bytes() == *code);
        }
        false
    }

    /// Whether anything can be retried after the request went upstream (a response, a reset, a
    /// per-try timeout): only then must a copy of the request be kept.
    pub fn retries_after_send(&self) -> bool {
        self.retries > 0
            && (self.on.intersects(
                RetryOn::FIVE_XX
                    | RetryOn::GATEWAY_ERROR
                    | RetryOn::RESET
                    | RetryOn::RETRIABLE_4XX
                    | RetryOn::ENVOY_RATELIMITED,
            ) || !self.status_codes.is_empty())
    }

    /// The back-off before retry `k` (1-based), for a uniform draw `r` in [0, 1): fully
    /// jittered, in [0, (2^k - 1) * base), capped at `backoff_max`.
    pub fn backoff(&self, k: u32, r: f64) -> Duration {
        let factor = (1u64 << k.min(20)) - 1;
        let window = self
            .backoff_base
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        window.mul_f64(r.clamp(0.0, 1.0))
    }
}

/// VirtualService `fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultDelay {
    pub fixed: Duration,
    /// 0..=100.
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultAbort {
    /// The HTTP status (200 for a gRPC abort, which sets `grpc-status`).
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// 0..=100.
    pub percent: f64,
}

/// Whether a fault with `percent` (0..=100) applies for a uniform draw `r` in [0, 1).
pub fn fault_applies(percent: f64, r: f64) -> bool {
    r * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_parses_names_and_codes() {
        let (on, codes) =
            RetryPolicy::parse_retry_on("gateway-error, 503,connect-failure").expect("valid");
        assert!(on.contains(RetryOn::GATEWAY_ERROR));
        assert!(on.contains(RetryOn::CONNECT_FAILURE));
        assert!(on.contains(RetryOn::RETRIABLE_STATUS_CODES));
        assert_eq!(codes, vec![503]);
        let e = RetryPolicy::parse_retry_on("5xx,conect-failure").expect_err("typo");
        assert!(e.contains("did you mean connect-failure"), "{e}");
        assert!(RetryPolicy::parse_retry_on("700").is_err());
    }

    #[test]
    fn default_policy_retries_connect_failures_only() {
        let p = RetryPolicy::istio_default();
        assert!(p.retries_failure(AttemptFailure::ConnectFailure));
        assert!(!p.retries_failure(AttemptFailure::Reset));
        assert!(!p.retries_failure(AttemptFailure::PerTryTimeout));
        let h = HeaderMap::new();
        assert!(!p.retries_response(503, &h));
        assert!(!p.retries_after_send(), "nothing to replay by default");
        let mut g = HeaderMap::new();
        g.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(p.retries_response(200, &g), "unavailable");
        g.insert("grpc-status", http::HeaderValue::from_static("13"));
        assert!(
            !p.retries_response(200, &g),
            "internal is not in the default"
        );
    }

    #[test]
    fn response_conditions_follow_envoy() {
        let mut p = RetryPolicy::istio_default();
        p.on = RetryOn::GATEWAY_ERROR;
        let h = HeaderMap::new();
        assert!(p.retries_response(503, &h));
        assert!(!p.retries_response(500, &h));
        p.on = RetryOn::FIVE_XX;
        assert!(p.retries_response(500, &h));
        assert!(p.retries_failure(AttemptFailure::Reset));
        assert!(p.retries_failure(AttemptFailure::PerTryTimeout));
        let mut o = HeaderMap::new();
        o.insert("x-envoy-overloaded", http::HeaderValue::from_static("true"));
        assert!(!p.retries_response(503, &o), "never an overloaded answer");
        p.on = RetryOn::RETRIABLE_STATUS_CODES;
        p.status_codes = Box::new([418]);
        assert!(p.retries_response(418, &h));
        assert!(!p.retries_response(503, &h));
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(1, 0.5), Duration::from_micros(12_500));
        assert_eq!(p.backoff(2, 0.999_999).as_millis(), 74);
        assert_eq!(p.backoff(10, 0.999_999).as_millis(), 249, "cap 10x base");
    }

    #[test]
    fn fault_percentages() {
        assert!(fault_applies(100.0, 0.999));
        assert!(!fault_applies(0.0, 0.0));
        assert!(fault_applies(50.0, 0.49));
        assert!(!fault_applies(50.0, 0.5));
    }
}
