//! Compiling a format: Istio's TEXT and JSON formats, custom format strings and JSON maps of
//! them, parsed once into tokens (operators with their arguments, header slots).

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName};

use super::json;
use super::record::AccessRecord;

/// Istio's default TEXT format (Istio >= 1.23; older releases print `%UPSTREAM_CLUSTER%`, which
/// is the same string for egret).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys and operators (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// Which header a `%REQ(...)%`-style operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Name(HeaderName),
}

impl HeaderKey {
    fn parse(s: &str) -> Result<HeaderKey, String> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":authority" | "host" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            _ => HeaderKey::Name(
                HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| format!("\"{s}\" is not a valid header name"))?,
            ),
        })
    }
}

/// An operator with its arguments.
#[derive(Clone, Debug)]
pub(super) enum Op {
    StartTime(TimeFmt),
    EmitTime(TimeFmt),
    /// Index into `req_headers` for the main and alternative header.
    Req(usize, Option<usize>, bool),
    Resp(usize, Option<usize>),
    Trailer(usize, Option<usize>),
    Protocol,
    UpstreamProtocol,
    ResponseCode,
    ResponseFlags,
    ResponseFlagsLong,
    ResponseCodeDetails(bool),
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamHostName,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    UpstreamLocalPort,
    UpstreamRemoteAddress,
    UpstreamRemoteAddressWithoutPort,
    UpstreamRemotePort,
    UpstreamTlsVersion,
    UpstreamTlsCipher,
    UpstreamPeerSubject,
    UpstreamPeerIssuer,
    UpstreamRequestAttemptCount,
    UpstreamConnectionId,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    RequestedServerName,
    RouteName,
    ConnectionId,
    Hostname,
    Environment(String),
    LocalReplyBody,
    /// Operators that exist in Envoy but have no value in egret (metadata, filter state).
    AlwaysEmpty,
}

#[derive(Clone, Debug)]
pub(super) enum TimeFmt {
    /// `2016-04-15T20:17:00.310Z`
    Default,
    /// A strftime format, pre-parsed.
    Custom(Vec<chrono::format::Item<'static>>),
}

#[derive(Clone, Debug)]
pub(super) enum Token {
    Literal(String),
    Op { op: Op, max_len: Option<usize> },
}

/// A compiled format string.
#[derive(Clone, Debug)]
pub struct Template {
    pub(super) tokens: Vec<Token>,
}

/// A compiled log format: TEXT (one template) or JSON (key -> template).
#[derive(Clone, Debug)]
pub struct LogFormat {
    /// The format as given (to tell whether a reload changed it).
    pub(super) source: String,
    pub(super) kind: FormatKind,
    pub(super) req_headers: Vec<HeaderKey>,
    pub(super) resp_headers: Vec<HeaderName>,
    pub(super) trailer_headers: Vec<HeaderName>,
    pub(super) hostname: String,
}

#[derive(Clone, Debug)]
pub(super) enum FormatKind {
    Text(Template),
    Json(Vec<(String, Template)>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// Istio's default TEXT format.
    pub fn istio_text() -> LogFormat {
        #[allow(clippy::expect_used)]
        LogFormat::text(ISTIO_TEXT_FORMAT).expect("the built-in format compiles")
    }

    /// Istio's default JSON format.
    pub fn istio_json() -> LogFormat {
        let pairs: Vec<(String, String)> = ISTIO_JSON_FORMAT
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        #[allow(clippy::expect_used)]
        LogFormat::json(&pairs).expect("the built-in format compiles")
    }

    /// Compiles a TEXT format; a missing trailing newline is added (as Istio does).
    pub fn text(format: &str) -> Result<LogFormat, String> {
        let mut f = LogFormat::empty();
        let mut s = format.to_string();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        let t = f.compile(&s)?;
        f.kind = FormatKind::Text(t);
        f.source = s;
        Ok(f)
    }

    /// Compiles a JSON format: each value is a format string.
    pub fn json(pairs: &[(String, String)]) -> Result<LogFormat, String> {
        let mut f = LogFormat::empty();
        f.source = format!("json:{pairs:?}");
        let mut out = Vec::new();
        for (k, v) in pairs {
            out.push((
                k.clone(),
                f.compile(v).map_err(|e| format!("key \"{k}\": {e}"))?,
            ));
        }
        f.kind = FormatKind::Json(out);
        Ok(f)
    }

    /// The format for an Istio MeshConfig `accessLogEncoding` / `accessLogFormat` pair. For
    /// JSON, `format` is a JSON object whose values are format strings.
    pub fn from_mesh(encoding: Encoding, format: Option<&str>) -> Result<LogFormat, String> {
        match (encoding, format.map(str::trim).filter(|f| !f.is_empty())) {
            (Encoding::Text, None) => Ok(LogFormat::istio_text()),
            (Encoding::Text, Some(f)) => LogFormat::text(f),
            (Encoding::Json, None) => Ok(LogFormat::istio_json()),
            (Encoding::Json, Some(f)) => {
                let pairs = parse_json_object(f)?;
                LogFormat::json(&pairs)
            }
        }
    }

    fn empty() -> LogFormat {
        LogFormat {
            source: String::new(),
            kind: FormatKind::Text(Template { tokens: Vec::new() }),
            req_headers: Vec::new(),
            resp_headers: Vec::new(),
            trailer_headers: Vec::new(),
            hostname: hostname(),
        }
    }

    fn req_index(&mut self, k: HeaderKey) -> usize {
        match self.req_headers.iter().position(|h| *h == k) {
            Some(i) => i,
            None => {
                self.req_headers.push(k);
                self.req_headers.len() - 1
            }
        }
    }

    fn name_index(list: &mut Vec<HeaderName>, name: &str) -> Result<usize, String> {
        let n = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
        Ok(match list.iter().position(|h| *h == n) {
            Some(i) => i,
            None => {
                list.push(n);
                list.len() - 1
            }
        })
    }

    fn compile(&mut self, s: &str) -> Result<Template, String> {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            // `%%` is not special in Envoy; an operator is `%NAME...%` with NAME = [A-Z0-9_].
            let name_len = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            if name_len == 0 {
                lit.push('%');
                continue;
            }
            let name = &rest[..name_len];
            let after = &rest[name_len..];
            // Arguments in parentheses (may not contain ')'), then `:LEN`, then the closing '%'.
            let (arg, after) = if let Some(a) = after.strip_prefix('(') {
                let close = a
                    .find(')')
                    .ok_or_else(|| format!("%{name}(: missing ')'"))?;
                (Some(&a[..close]), &a[close + 1..])
            } else {
                (None, after)
            };
            let (max_len, after) = if let Some(a) = after.strip_prefix(':') {
                let end = a
                    .find('%')
                    .ok_or_else(|| format!("%{name}: missing the closing '%'"))?;
                let n: usize = a[..end].parse().map_err(|_| {
                    format!("%{name}: the length \"{}\" must be an integer", &a[..end])
                })?;
                (Some(n), &a[end..])
            } else {
                (None, after)
            };
            let Some(after) = after.strip_prefix('%') else {
                if arg.is_some() {
                    return Err(format!(
                        "%{name}(...): incorrect position of ')'; expected '%' or ':' after it"
                    ));
                }
                // Not an operator after all (e.g. "100%").
                lit.push('%');
                continue;
            };
            if !lit.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut lit)));
            }
            let op = self.op(name, arg)?;
            tokens.push(Token::Op { op, max_len });
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(Template { tokens })
    }

    fn op(&mut self, name: &str, arg: Option<&str>) -> Result<Op, String> {
        if let Some(op) = plain_op(name) {
            return match arg {
                None => Ok(op),
                Some(_) => Err(format!("%{name}% takes no argument")),
            };
        }
        Ok(match name {
            "START_TIME" | "START_TIME_LOCAL" => Op::StartTime(time_fmt(arg)?),
            "EMIT_TIME" => Op::EmitTime(time_fmt(arg)?),
            "REQ" | "REQUEST_HEADER" => {
                let (a, b) = self.header_slots(name, arg, Slots::Request)?;
                Op::Req(a, b, false)
            }
            "REQ_WITHOUT_QUERY" => {
                let (a, b) = self.header_slots(name, arg, Slots::Request)?;
                Op::Req(a, b, true)
            }
            "RESP" | "RESPONSE_HEADER" => {
                let (a, b) = self.header_slots(name, arg, Slots::Response)?;
                Op::Resp(a, b)
            }
            "TRAILER" | "RESPONSE_TRAILER" => {
                let (a, b) = self.header_slots(name, arg, Slots::Trailer)?;
                Op::Trailer(a, b)
            }
            "RESPONSE_CODE_DETAILS" => match arg {
                None => Op::ResponseCodeDetails(false),
                Some("ALLOW_WHITESPACES") => Op::ResponseCodeDetails(true),
                Some(a) => {
                    return Err(format!(
                        "%RESPONSE_CODE_DETAILS({a})%: the only argument is ALLOW_WHITESPACES"
                    ));
                }
            },
            // Envoy's `_WITHOUT_PORT` operators take an optional argument (which egret ignores).
            "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressWithoutPort,
            "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamRemoteAddressWithoutPort,
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Op::DownstreamRemoteAddressWithoutPort
            }
            "ENVIRONMENT" => Op::Environment(
                arg.ok_or("%ENVIRONMENT(NAME)% needs a variable name")?
                    .to_string(),
            ),
            name if ALWAYS_EMPTY.contains(&name) => Op::AlwaysEmpty,
            other => {
                let hint = crate::text::suggest(other, KNOWN_OPERATORS.iter().copied())
                    .map(|s| format!(" (did you mean %{s}%?)"))
                    .unwrap_or_default();
                return Err(format!("unknown access log operator %{other}%{hint}"));
            }
        })
    }

    /// The header slots of `%NAME(MAIN?ALT)%`: the main header and its optional alternative.
    fn header_slots(
        &mut self,
        name: &str,
        arg: Option<&str>,
        slots: Slots,
    ) -> Result<(usize, Option<usize>), String> {
        let arg = arg.ok_or_else(|| {
            format!("%{name}(...)% needs a header name, e.g. %{name}(USER-AGENT)%")
        })?;
        if arg.contains('\n') {
            return Err(format!(
                "%{name}(...)%: header names cannot contain a newline"
            ));
        }
        let mut parts = arg.split('?');
        let main = parts.next().unwrap_or("");
        let alt = parts.next();
        if parts.next().is_some() {
            return Err(format!(
                "%{name}({arg})%: at most one '?' alternative is allowed"
            ));
        }
        let mut slot = |header: &str| match slots {
            Slots::Request => Ok(self.req_index(HeaderKey::parse(header)?)),
            Slots::Response => Self::name_index(&mut self.resp_headers, header),
            Slots::Trailer => Self::name_index(&mut self.trailer_headers, header),
        };
        let a = slot(main)?;
        let b = alt.map(&mut slot).transpose()?;
        Ok((a, b))
    }

    /// Copies the request headers the format uses into the record.
    pub fn capture_request(&self, rec: &mut AccessRecord, headers: &HeaderMap) {
        if self.req_headers.is_empty() {
            return;
        }
        // Pseudo-headers are read from the record when the line is written (see `req_value`);
        // only real headers are copied (a reference-counted clone, no allocation).
        rec.req = self
            .req_headers
            .iter()
            .map(|k| match k {
                HeaderKey::Name(n) => headers.get(n).cloned(),
                HeaderKey::Authority if rec.authority.is_none() => {
                    headers.get(http::header::HOST).cloned()
                }
                _ => None,
            })
            .collect();
    }

    /// The value of the format's `i`th request header for this record.
    pub(super) fn req_value<'a>(&self, rec: &'a AccessRecord, i: usize) -> Option<&'a str> {
        let captured = || {
            rec.req
                .get(i)
                .and_then(Option::as_ref)
                .and_then(|v| v.to_str().ok())
        };
        match self.req_headers.get(i)? {
            HeaderKey::Name(_) => captured(),
            HeaderKey::Authority => rec.authority.as_deref().or_else(captured),
            HeaderKey::Method => rec.method.as_ref().map(http::Method::as_str),
            HeaderKey::Path => rec.path.as_ref().map(http::uri::PathAndQuery::as_str),
            HeaderKey::Scheme => Some(rec.scheme),
        }
    }

    /// Copies the response headers the format uses into the record.
    pub fn capture_response(&self, rec: &mut AccessRecord, headers: &HeaderMap) {
        if self.resp_headers.is_empty() {
            return;
        }
        rec.resp = self
            .resp_headers
            .iter()
            .map(|n| headers.get(n).cloned())
            .collect();
    }

    /// Copies the response trailers the format uses into the record.
    pub fn capture_trailers(&self, rec: &mut AccessRecord, trailers: &HeaderMap) {
        if self.trailer_headers.is_empty() {
            return;
        }
        rec.trailers = self
            .trailer_headers
            .iter()
            .map(|n| trailers.get(n).cloned())
            .collect();
    }

    pub fn wants_trailers(&self) -> bool {
        !self.trailer_headers.is_empty()
    }
}

/// Which header list a `%REQ%`, `%RESP%` or `%TRAILER%` operator reads.
#[derive(Clone, Copy)]
enum Slots {
    Request,
    Response,
    Trailer,
}

/// The operators that take no argument, by name (aliases included).
fn plain_op(name: &str) -> Option<Op> {
    Some(match name {
        "PROTOCOL" => Op::Protocol,
        "UPSTREAM_PROTOCOL" => Op::UpstreamProtocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Op::ResponseFlagsLong,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "BYTES_RECEIVED" | "UPSTREAM_WIRE_BYTES_SENT" | "DOWNSTREAM_WIRE_BYTES_RECEIVED" => {
            Op::BytesReceived
        }
        "BYTES_SENT" | "UPSTREAM_WIRE_BYTES_RECEIVED" | "DOWNSTREAM_WIRE_BYTES_SENT" => {
            Op::BytesSent
        }
        "DURATION" => Op::Duration,
        "REQUEST_DURATION" => Op::RequestDuration,
        "RESPONSE_DURATION" => Op::ResponseDuration,
        "RESPONSE_TX_DURATION" => Op::ResponseTxDuration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_HOST_NAME" => Op::UpstreamHostName,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_LOCAL_PORT" => Op::UpstreamLocalPort,
        "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamRemoteAddress,
        "UPSTREAM_REMOTE_PORT" => Op::UpstreamRemotePort,
        "UPSTREAM_TLS_VERSION" => Op::UpstreamTlsVersion,
        "UPSTREAM_TLS_CIPHER" => Op::UpstreamTlsCipher,
        "UPSTREAM_PEER_SUBJECT" => Op::UpstreamPeerSubject,
        "UPSTREAM_PEER_ISSUER" => Op::UpstreamPeerIssuer,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::UpstreamRequestAttemptCount,
        "UPSTREAM_CONNECTION_ID" => Op::UpstreamConnectionId,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            Op::DownstreamRemoteAddress
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamRemotePort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        "CONNECTION_ID" => Op::ConnectionId,
        "HOSTNAME" => Op::Hostname,
        "LOCAL_REPLY_BODY" => Op::LocalReplyBody,
        _ => return None,
    })
}

/// Operators that exist in Envoy but have no value in egret (metadata, filter state, gRPC,
/// downstream TLS): they compile, so Envoy formats work unchanged, and print `-`.
const ALWAYS_EMPTY: &[&str] = &[
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "STREAM_ID",
    "VIRTUAL_CLUSTER_NAME",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
];

const KNOWN_OPERATORS: &[&str] = &[
    "START_TIME",
    "EMIT_TIME",
    "REQ",
    "RESP",
    "TRAILER",
    "REQ_WITHOUT_QUERY",
    "PROTOCOL",
    "UPSTREAM_PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "RESPONSE_CODE_DETAILS",
    "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DURATION",
    "REQUEST_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_LOCAL_PORT",
    "REQUESTED_SERVER_NAME",
    "ROUTE_NAME",
    "CONNECTION_ID",
    "HOSTNAME",
    "ENVIRONMENT",
    "LOCAL_REPLY_BODY",
];

fn time_fmt(arg: Option<&str>) -> Result<TimeFmt, String> {
    let Some(f) = arg.filter(|a| !a.is_empty()) else {
        return Ok(TimeFmt::Default);
    };
    // Envoy/absl extensions: %E<n>S = seconds with n fractional digits, %E*S = all digits,
    // %f = nanoseconds (9 digits), %<n>f = n digits, %s = epoch seconds. chrono knows %s and
    // %<n>f; translate the rest.
    let mut g = String::new();
    let mut it = f.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            g.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&n) = it.peek() {
            spec.push(n);
            it.next();
            if n.is_ascii_alphabetic() && n != 'E' {
                break;
            }
        }
        match spec.as_str() {
            "f" => g.push_str("%9f"),
            s if s.starts_with('E') && s.ends_with('S') => {
                let digits = &s[1..s.len() - 1];
                match digits {
                    "*" => g.push_str("%S%.f"),
                    d => {
                        let n: usize = d
                            .parse()
                            .map_err(|_| format!("START_TIME: bad specifier %{s}"))?;
                        if n == 0 {
                            g.push_str("%S");
                        } else {
                            let _ = write!(g, "%S.%{n}f");
                        }
                    }
                }
            }
            s => {
                g.push('%');
                g.push_str(s);
            }
        }
    }
    let items: Vec<chrono::format::Item<'static>> = chrono::format::StrftimeItems::new(&g)
        .map(|i| to_owned_item(i))
        .collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return Err(format!(
            "START_TIME: \"{f}\" is not a valid strftime format"
        ));
    }
    Ok(TimeFmt::Custom(items))
}

fn to_owned_item(i: chrono::format::Item<'_>) -> chrono::format::Item<'static> {
    use chrono::format::Item;
    match i {
        Item::Literal(s) => Item::OwnedLiteral(s.into()),
        Item::Space(s) => Item::OwnedSpace(s.into()),
        Item::OwnedLiteral(s) => Item::OwnedLiteral(s),
        Item::OwnedSpace(s) => Item::OwnedSpace(s),
        Item::Numeric(n, p) => Item::Numeric(n, p),
        Item::Fixed(f) => Item::Fixed(f),
        Item::Error => Item::Error,
    }
}

/// Parses a flat JSON object of string values (`accessLogFormat` for JSON encoding).
fn parse_json_object(s: &str) -> Result<Vec<(String, String)>, String> {
    let v: json::Value = json::parse(s)?;
    Ok(v.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "-".into())
}
