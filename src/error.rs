//! The proxy's failure taxonomy: each failure maps, in one place, to the status code Envoy would
//! give, its response flags, `%RESPONSE_CODE_DETAILS%`, the transport failure reason, and the
//! local reply body.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

/// Envoy response flags, as bits in Envoy's internal enum order (which is also the order they
/// are printed in, joined by `,`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $short:expr, $long:expr;)*) => {
        impl Flags {
            $(pub const $name: Flags = Flags(1 << $bit);)*
            const TABLE: &'static [(Flags, &'static str, &'static str)] = &[$((Flags::$name, $short, $long),)*];
        }
    };
}

flags! {
    LH = 0, "LH", "FailedLocalHealthCheck";
    UH = 1, "UH", "NoHealthyUpstream";
    UT = 2, "UT", "UpstreamRequestTimeout";
    LR = 3, "LR", "LocalReset";
    UR = 4, "UR", "UpstreamRemoteReset";
    UF = 5, "UF", "UpstreamConnectionFailure";
    UC = 6, "UC", "UpstreamConnectionTermination";
    UO = 7, "UO", "UpstreamOverflow";
    NR = 8, "NR", "NoRouteFound";
    DI = 9, "DI", "DelayInjected";
    FI = 10, "FI", "FaultInjected";
    RL = 11, "RL", "RateLimited";
    UAEX = 12, "UAEX", "UnauthorizedExternalService";
    RLSE = 13, "RLSE", "RateLimitServiceError";
    DC = 14, "DC", "DownstreamConnectionTermination";
    URX = 15, "URX", "UpstreamRetryLimitExceeded";
    SI = 16, "SI", "StreamIdleTimeout";
    IH = 17, "IH", "InvalidEnvoyRequestHeaders";
    DPE = 18, "DPE", "DownstreamProtocolError";
    UMSDR = 19, "UMSDR", "UpstreamMaxStreamDurationReached";
    RFCF = 20, "RFCF", "ResponseFromCacheFilter";
    NFCF = 21, "NFCF", "NoFilterConfigFound";
    DT = 22, "DT", "DurationTimeout";
    UPE = 23, "UPE", "UpstreamProtocolError";
    NC = 24, "NC", "NoClusterFound";
    OM = 25, "OM", "OverloadManagerTerminated";
    DF = 26, "DF", "DnsResolutionFailed";
    DO = 27, "DO", "DropOverload";
    DR = 28, "DR", "DownstreamRemoteReset";
    UDO = 29, "UDO", "UnconditionalDropOverload";
}

impl Flags {
    pub const NONE: Flags = Flags(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Short codes joined by `,` in Envoy's order, or `-`.
    pub fn write_short(self, out: &mut String) {
        self.write(out, |(_, s, _)| s);
    }

    /// `%RESPONSE_FLAGS_LONG%`: PascalCase names joined by `,`, or `-`.
    pub fn write_long(self, out: &mut String) {
        self.write(out, |(_, _, l)| l);
    }

    fn write(
        self,
        out: &mut String,
        pick: impl Fn(&(Flags, &'static str, &'static str)) -> &'static str,
    ) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for entry in Flags::TABLE {
            if self.contains(entry.0) {
                if !first {
                    out.push(',');
                }
                out.push_str(pick(entry));
                first = false;
            }
        }
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_short(&mut s);
        f.write_str(&s)
    }
}

/// A TLS failure with a stable code (documented in the README) and the facts behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFailure {
    /// e.g. `tls.unknown_issuer`, `tls.hostname_mismatch`.
    pub code: &'static str,
    /// What happened and what to change.
    pub detail: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for TlsFailure {}

/// Why one connection attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    Refused,
    Timeout(Duration),
    Unreachable(String),
    Io(std::io::Error),
    Tls(TlsFailure),
}

impl AttemptError {
    /// A stable code for the failure (the first part of the transport failure reason).
    pub fn code(&self) -> &'static str {
        match self {
            AttemptError::Refused => "connect.refused",
            AttemptError::Timeout(_) => "connect.timeout",
            AttemptError::Unreachable(_) => "connect.unreachable",
            AttemptError::Io(_) => "connect.error",
            AttemptError::Tls(t) => t.code,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, AttemptError::Timeout(_))
    }
}

/// All attempts at connecting to a cluster failed.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The name connected to (for messages).
    pub target: String,
    /// How many addresses were tried.
    pub attempts: u32,
    /// The address of the last attempt.
    pub addr: SocketAddr,
    /// Why the last attempt failed.
    pub error: AttemptError,
}

impl ConnectFailure {
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: stable code, then the facts.
    pub fn reason(&self) -> String {
        let addr = self.addr;
        let target = &self.target;
        let tried = if self.attempts > 1 {
            format!(" (after trying {} addresses)", self.attempts)
        } else {
            String::new()
        };
        match &self.error {
            AttemptError::Refused => format!(
                "connect.refused: {target} at {addr} refused the connection{tried}; nothing listens on that port, check targetPort and the endpoint addresses"
            ),
            AttemptError::Timeout(d) => format!(
                "connect.timeout: {target} at {addr} did not accept the connection within {}{tried}; check that the address is reachable from egret (firewall, egress rules), or raise connectionPool.tcp.connectTimeout",
                humanize(*d)
            ),
            AttemptError::Unreachable(e) => format!(
                "connect.unreachable: {target} at {addr}: {e}{tried}; there is no route to that address from egret"
            ),
            AttemptError::Io(e) => format!("connect.error: {target} at {addr}: {e}{tried}"),
            AttemptError::Tls(t) => format!("{}: {}{tried}", t.code, t.detail),
        }
    }
}

pub fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A failure of the proxy path, mapped to what the client sees and what the log says.
#[derive(Debug)]
pub enum ProxyError {
    /// The request has no Host / :authority.
    MissingHost,
    /// The request line or headers cannot be proxied.
    BadRequest(String),
    /// The request breaks a rule of HTTP that a proxy must enforce (two Host headers, credentials
    /// in the URL, a scheme other than http/https, ...): refused before routing. `rule` is the
    /// `%RESPONSE_CODE_DETAILS%`, so the log names the rule.
    Rejected { rule: &'static str, why: String },
    /// REGISTRY_ONLY and the host:port is not declared.
    BlockAll { host: String, port: u16 },
    /// A gateway has no route for the host, or no route matched.
    NoRoute { host: String },
    /// DNS gave no addresses (or failed) for a declared host: Envoy's STRICT_DNS cluster with no
    /// hosts (`UH`).
    NoHealthyUpstream {
        target: String,
        reason: String,
        code: &'static str,
    },
    /// DNS failed for a host taken from the request (wildcard and passthrough clusters, Envoy's
    /// dynamic forward proxy): `DF`.
    DnsFailed {
        target: String,
        reason: String,
        code: &'static str,
    },
    /// Every connection attempt failed (TCP or TLS).
    Connect(ConnectFailure),
    /// A circuit breaker tripped: `limit` names it (`connectionPool.tcp.maxConnections`,
    /// `connectionPool.http.http1MaxPendingRequests`, `connectionPool.http.http2MaxRequests`).
    Overflow {
        cluster: String,
        max: u32,
        limit: &'static str,
    },
    /// The upstream closed or reset the connection before the response headers.
    UpstreamTerminated { reason: String },
    /// The upstream's TLS session failed after the handshake (e.g. a TLS 1.3 server rejecting
    /// our client certificate after the handshake completed on our side).
    UpstreamTls(TlsFailure),
    /// The upstream sent something that is not valid HTTP.
    UpstreamProtocol { reason: String },
    /// The route timeout fired before the response headers.
    Timeout(Duration),
    /// `perTryTimeout` fired before the response headers of an attempt.
    PerTryTimeout(Duration),
    /// Every attempt the retry policy allowed failed; `last` is how the last one failed.
    RetryLimit {
        attempts: u32,
        last: Box<ProxyError>,
    },
    /// VirtualService `fault.abort` answered for the upstream.
    FaultAbort {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// ALLOW_ANY passthrough to egret's own ports or to a cloud metadata address (egret's own
    /// guard, `proxy::guard`; Envoy has none): `addr` is what `host` is or resolved to.
    SelfOrMetadata {
        host: String,
        port: u16,
        addr: std::net::IpAddr,
        what: &'static str,
    },
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::MissingHost | ProxyError::BadRequest(_) | ProxyError::Rejected { .. } => {
                400
            }
            ProxyError::BlockAll { .. } => 502,
            ProxyError::NoRoute { .. } => 404,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::DnsFailed { .. }
            | ProxyError::Connect(_)
            | ProxyError::Overflow { .. }
            | ProxyError::UpstreamTerminated { .. }
            | ProxyError::UpstreamTls(_) => 503,
            ProxyError::UpstreamProtocol { .. } => 502,
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => 504,
            ProxyError::RetryLimit { last, .. } => last.status(),
            ProxyError::FaultAbort { status, .. } => *status,
            // A policy refusal of a request that is fine: Forbidden, not a gateway failure.
            ProxyError::SelfOrMetadata { .. } => 403,
        }
    }

    pub fn flags(&self) -> Flags {
        match self {
            ProxyError::MissingHost | ProxyError::BadRequest(_) | ProxyError::Rejected { .. } => {
                Flags::DPE
            }
            // Envoy: block_all is a matched route with a direct response, so no flag.
            ProxyError::BlockAll { .. } => Flags::NONE,
            ProxyError::NoRoute { .. } => Flags::NR,
            ProxyError::NoHealthyUpstream { .. } => Flags::UH,
            ProxyError::DnsFailed { .. } => Flags::DF,
            ProxyError::Connect(c) if c.attempts > 1 => Flags::UF | Flags::URX,
            ProxyError::Connect(_) | ProxyError::UpstreamTls(_) => Flags::UF,
            ProxyError::Overflow { .. } => Flags::UO,
            ProxyError::UpstreamTerminated { .. } => Flags::UC,
            ProxyError::UpstreamProtocol { .. } => Flags::UPE,
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => Flags::UT,
            ProxyError::RetryLimit { last, .. } => last.flags() | Flags::URX,
            ProxyError::FaultAbort { .. } => Flags::FI,
            ProxyError::SelfOrMetadata { .. } => Flags::NONE,
        }
    }

    /// The address a failed connect went to (the last one, after retries).
    pub fn connect_addr(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::Connect(c) => Some(c.addr),
            ProxyError::RetryLimit { last, .. } => last.connect_addr(),
            _ => None,
        }
    }

    /// Envoy's reset reason wording, when the failure is an upstream reset.
    fn reset_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::Connect(c) if c.error.is_timeout() => Some("connection timeout"),
            ProxyError::Connect(_) | ProxyError::UpstreamTls(_) => {
                Some("remote connection failure")
            }
            ProxyError::UpstreamTerminated { .. } => Some("connection termination"),
            ProxyError::Overflow { .. } => Some("overflow"),
            ProxyError::UpstreamProtocol { .. } => Some("protocol error"),
            ProxyError::RetryLimit { last, .. } => last.reset_reason(),
            _ => None,
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            ProxyError::Connect(c) => Some(c.reason()),
            ProxyError::UpstreamTls(t) => Some(t.to_string()),
            ProxyError::RetryLimit { attempts, last } => last
                .transport_failure_reason()
                .map(|r| format!("{r} (after {attempts} attempts)")),
            _ => None,
        }
    }

    /// `%RESPONSE_CODE_DETAILS%` (whitespace becomes `_`, as Envoy prints it).
    pub fn details(&self) -> String {
        let d = match self {
            ProxyError::MissingHost => "missing_host_header".to_string(),
            ProxyError::BadRequest(_) => "http1.codec_error".to_string(),
            ProxyError::Rejected { rule, .. } => (*rule).to_string(),
            ProxyError::BlockAll { .. } => "direct_response".to_string(),
            ProxyError::NoRoute { .. } => "route_not_found".to_string(),
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream".to_string(),
            ProxyError::DnsFailed { .. } => "dns_resolution_failure".to_string(),
            ProxyError::Timeout(_) => "response_timeout".to_string(),
            ProxyError::PerTryTimeout(_) => "upstream_per_try_timeout".to_string(),
            ProxyError::FaultAbort { .. } => "fault_filter_abort".to_string(),
            ProxyError::RetryLimit { last, .. } if last.reset_reason().is_none() => last.details(),
            ProxyError::SelfOrMetadata { .. } => "egret.self_or_metadata_refused".to_string(),
            _ => {
                let reason = self.reset_reason().unwrap_or("connection failure");
                let mut s = String::from("upstream_reset_before_response_started{");
                s.push_str(&reason.replace(' ', "_"));
                if let Some(t) = self.transport_failure_reason() {
                    s.push(',');
                    s.push_str(&t);
                }
                s.push('}');
                s
            }
        };
        d.split_whitespace().collect::<Vec<_>>().join("_")
    }

    /// A stable code for the `x-egret-error` response header.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "request.missing_host",
            ProxyError::BadRequest(_) | ProxyError::Rejected { .. } => "request.invalid",
            ProxyError::BlockAll { .. } => "policy.host_not_allowed",
            ProxyError::NoRoute { .. } => "route.not_found",
            ProxyError::NoHealthyUpstream { code, .. } | ProxyError::DnsFailed { code, .. } => code,
            ProxyError::Connect(c) => c.error.code(),
            ProxyError::Overflow { .. } => "upstream.overflow",
            ProxyError::UpstreamTerminated { .. } => "upstream.connection_termination",
            ProxyError::UpstreamTls(t) => t.code,
            ProxyError::UpstreamProtocol { .. } => "upstream.protocol_error",
            ProxyError::Timeout(_) => "upstream.timeout",
            ProxyError::PerTryTimeout(_) => "upstream.per_try_timeout",
            ProxyError::RetryLimit { last, .. } => last.code(),
            ProxyError::FaultAbort { .. } => "fault.abort",
            ProxyError::SelfOrMetadata { .. } => "policy.self_or_metadata_refused",
        }
    }

    /// The local reply body: Envoy's wording first (so existing greps keep working), then
    /// egret's explanation.
    pub fn body(&self) -> String {
        let mut b = String::new();
        match self {
            ProxyError::MissingHost => {
                b.push_str("egret: the request has no Host header; egret routes by host, so send one (HTTP/1.1 requires it)");
            }
            ProxyError::BadRequest(why) | ProxyError::Rejected { why, .. } => {
                let _ = write!(b, "egret: bad request: {why}");
            }
            ProxyError::BlockAll { host, port } => {
                let _ = write!(
                    b,
                    "egret: {host}:{port} is not a declared destination and the outbound traffic policy is REGISTRY_ONLY (block_all); declare the host and port (a destination, or a ServiceEntry), or use ALLOW_ANY"
                );
            }
            ProxyError::NoRoute { host } => {
                let _ = write!(b, "egret: no route for host {host} on this listener");
            }
            ProxyError::NoHealthyUpstream { reason, .. } => {
                let _ = write!(b, "no healthy upstream\negret: {reason}");
            }
            ProxyError::DnsFailed { reason, .. } => {
                let _ = write!(b, "DNS resolution failure\negret: {reason}");
            }
            ProxyError::Timeout(d) => {
                let _ = write!(
                    b,
                    "upstream request timeout\negret: no response headers within the route timeout of {}",
                    humanize(*d)
                );
            }
            ProxyError::PerTryTimeout(d) => {
                let _ = write!(
                    b,
                    "upstream request timeout\negret: no response headers within the per-try timeout of {} (retries.perTryTimeout)",
                    humanize(*d)
                );
            }
            ProxyError::FaultAbort { .. } => b.push_str("fault filter abort"),
            ProxyError::RetryLimit { attempts, last } => {
                let inner = last.body();
                let inner = inner.trim_end();
                match inner.split_once("reset reason: ") {
                    Some((head, tail)) if last.reset_reason().is_some() => {
                        let _ = write!(b, "{head}retried and the latest reset reason: {tail}");
                    }
                    _ => b.push_str(inner),
                }
                let _ = write!(
                    b,
                    "\negret: gave up after {attempts} attempts (the route's retries; attempts: 0 turns them off)"
                );
            }
            ProxyError::SelfOrMetadata {
                host,
                port,
                addr,
                what,
            } => {
                let _ = write!(
                    b,
                    "egret: refused {host}:{port} ({addr}): it is {what}, and the outbound traffic policy ALLOW_ANY passes undeclared hosts through to anything else but these; to allow it, declare the host and port (a ServiceEntry, or a destination)"
                );
            }
            _ => {
                b.push_str("upstream connect error or disconnect/reset before headers. ");
                if matches!(self, ProxyError::Connect(c) if c.attempts > 1) {
                    b.push_str("retried and the latest ");
                }
                let _ = write!(
                    b,
                    "reset reason: {}",
                    self.reset_reason().unwrap_or("connection failure")
                );
                if let Some(t) = self.transport_failure_reason() {
                    let _ = write!(b, ", transport failure reason: {t}");
                }
                match self {
                    ProxyError::Overflow {
                        cluster,
                        max,
                        limit,
                    } => {
                        let _ = write!(
                            b,
                            "\negret: {cluster} reached its circuit breaker {limit} ({max}); raise it in the DestinationRule's trafficPolicy, or add capacity"
                        );
                    }
                    ProxyError::UpstreamTerminated { reason }
                    | ProxyError::UpstreamProtocol { reason } => {
                        let _ = write!(b, "\negret: {reason}");
                    }
                    _ => {}
                }
            }
        }
        b.push('\n');
        b
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body().trim_end())
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoy_order() {
        let mut s = String::new();
        (Flags::URX | Flags::UF).write_short(&mut s);
        assert_eq!(s, "UF,URX");
        let mut s = String::new();
        Flags::NONE.write_short(&mut s);
        assert_eq!(s, "-");
        let mut s = String::new();
        (Flags::DC | Flags::UH).write_long(&mut s);
        assert_eq!(s, "NoHealthyUpstream,DownstreamConnectionTermination");
    }

    #[test]
    fn connect_failure_maps_like_envoy() {
        let e = ProxyError::Connect(ConnectFailure {
            target: "api.example.com:443".into(),
            attempts: 1,
            addr: "127.0.0.1:9".parse().expect("addr"),
            error: AttemptError::Refused,
        });
        assert_eq!(e.status(), 503);
        assert_eq!(e.flags(), Flags::UF);
        assert!(e.details().starts_with(
            "upstream_reset_before_response_started{remote_connection_failure,connect.refused:"
        ));
        assert!(!e.details().contains(' '));
        assert!(e.body().starts_with("upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: connect.refused:"));
    }

    #[test]
    fn block_all_has_no_flag() {
        let e = ProxyError::BlockAll {
            host: "x.example".into(),
            port: 80,
        };
        assert_eq!(
            (e.status(), e.flags(), e.details().as_str()),
            (502, Flags::NONE, "direct_response")
        );
    }
}
