//! serde shapes shared by egret's native YAML and the Istio manifests.
//!
//! Field names and meanings are Istio's (ServiceEntry ports and endpoints, DestinationRule
//! `trafficPolicy`), so both front ends lower into the same model with the same code.
//! Unknown fields are errors (`deny_unknown_fields`): a misspelled key must never be ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as Istio/Go write them: `10s`, `1.5s`, `250ms`, `1m0s`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        let mut total = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("\"{s}\" has no unit; write it like 10s, 250ms or 1m30s"))?;
            if num_end == 0 {
                return Err(format!(
                    "\"{s}\" is not a duration; write it like 10s, 250ms or 1m30s"
                ));
            }
            let value: f64 = rest[..num_end].parse().map_err(|_| {
                format!("\"{s}\" is not a duration; write it like 10s, 250ms or 1m30s")
            })?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            rest = &rest[unit_end..];
            let factor = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => {
                    return Err(format!(
                        "\"{s}\" has an unknown unit \"{unit}\"; use ns, us, ms, s, m or h"
                    ));
                }
            };
            total += value * factor;
        }
        if !total.is_finite() || total > 1e10 {
            return Err(format!("\"{s}\" is too long"));
        }
        Ok(Duration::from_secs_f64(total))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `ServiceEntry.ports[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub number: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `ServiceEntry.endpoints[]` (a WorkloadEntry).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub address: String,
    /// Port name -> endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
}

/// `ClientTLSSettings` (DestinationRule `tls`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: Option<TlsModeSpec>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsModeSpec {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

/// `DestinationRule.trafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicySpec>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSpec>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierSpec>,
    #[serde(default)]
    pub tunnel: Option<serde_ignored_any::Any>,
    #[serde(default)]
    pub proxy_protocol: Option<serde_ignored_any::Any>,
    #[serde(default)]
    pub retry_budget: Option<serde_ignored_any::Any>,
}

/// `DestinationRule.subsets[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubsetSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// `TrafficPolicy.portLevelSettings[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicySpec {
    pub port: PortSelectorSpec,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSpec>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelectorSpec {
    pub number: u32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSpec {
    #[serde(default)]
    pub tcp: Option<TcpPoolSpec>,
    #[serde(default)]
    pub http: Option<HttpPoolSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPoolSpec {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub max_connection_duration: Option<Dur>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepaliveSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpKeepaliveSpec {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default)]
    pub time: Option<Dur>,
    #[serde(default)]
    pub interval: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPoolSpec {
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    #[serde(default)]
    pub simple: Option<SimpleLbSpec>,
    #[serde(default)]
    pub consistent_hash: Option<serde_ignored_any::Any>,
    #[serde(default)]
    pub locality_lb_setting: Option<serde_ignored_any::Any>,
    #[serde(default)]
    pub warmup_duration_secs: Option<serde_ignored_any::Any>,
    #[serde(default)]
    pub warmup: Option<serde_ignored_any::Any>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLbSpec {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// A field egret accepts but does not act on: it swallows any YAML value.
pub mod serde_ignored_any {
    use serde::{Deserialize, Deserializer};

    #[derive(Clone, Debug, Default)]
    pub struct Any;

    impl<'de> Deserialize<'de> for Any {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d)?;
            Ok(Any)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dur;
    use std::time::Duration;

    #[test]
    fn parses_go_and_proto_durations() {
        assert_eq!(Dur::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(Dur::parse("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(Dur::parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(Dur::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Dur::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(Dur::parse("0"), Ok(Duration::ZERO));
        assert!(Dur::parse("10").unwrap_err().contains("no unit"));
        assert!(Dur::parse("10x").unwrap_err().contains("unknown unit"));
        assert!(Dur::parse("s").is_err());
    }
}

/// VirtualService `http[].retries` (HTTPRetry); egret's own routes take the same block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    #[serde(default)]
    pub attempts: Option<i64>,
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<Dur>,
}

/// VirtualService `http[].fault` (HTTPFaultInjection).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    #[serde(default)]
    pub delay: Option<FaultDelaySpec>,
    #[serde(default)]
    pub abort: Option<FaultAbortSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelaySpec {
    #[serde(default)]
    pub fixed_delay: Option<Dur>,
    #[serde(default)]
    pub exponential_delay: Option<Dur>,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
    /// Deprecated integer percentage.
    #[serde(default)]
    pub percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbortSpec {
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentSpec {
    #[serde(default)]
    pub value: f64,
}

/// `trafficPolicy.outlierDetection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierSpec {
    /// Deprecated alias of consecutive5xxErrors.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub base_ejection_time: Option<Dur>,
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    #[serde(default)]
    pub outlier_detection_http_error_codes: Option<serde_ignored_any::Any>,
}
