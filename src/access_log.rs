//! Envoy-format access logs.
//!
//! A format string (Istio's default TEXT format, a custom one, or a JSON map of them) is compiled
//! once into tokens; each request or connection fills an [`AccessRecord`] and exactly one line is
//! written when it completes (or is abandoned: the record is finished by a drop guard in
//! `proxy.rs`). Lines go through a bounded queue to a writer thread, so a slow disk or a full
//! pipe never stalls requests: when the queue is full the line is dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Datelike, Timelike, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

use crate::error::Flags;

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

/// What one TLS connection saw: whether the server asked for a client certificate (and which
/// CAs it accepts), and what was negotiated.
#[derive(Debug, Default)]
pub struct ConnTls {
    /// `Some(ca names)` once the server sent a CertificateRequest.
    pub requested: std::sync::Mutex<Option<Vec<String>>>,
    pub client_cert_sent: bool,
    pub version: std::sync::OnceLock<rustls::ProtocolVersion>,
    pub cipher: std::sync::OnceLock<rustls::CipherSuite>,
    pub peer_subject: std::sync::OnceLock<String>,
    pub peer_issuer: std::sync::OnceLock<String>,
}

impl ConnTls {
    /// `TLSv1.3` style, as Envoy's `%UPSTREAM_TLS_VERSION%` prints it.
    pub fn version_str(&self) -> Option<&'static str> {
        self.version.get().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        })
    }

    pub fn cipher_str(&self) -> Option<&'static str> {
        self.cipher.get().and_then(|c| c.as_str())
    }
}

/// Everything a log line can show about one request (or TCP connection).
#[derive(Debug)]
pub struct AccessRecord {
    pub start: SystemTime,
    pub start_instant: Instant,
    /// `false` for TCP connections (HTTP-only operators print `-`).
    pub http: bool,
    pub method: Option<Method>,
    /// Path and query as received (a reference-counted clone of the request's own).
    pub path: Option<http::uri::PathAndQuery>,
    pub authority: Option<String>,
    pub scheme: &'static str,
    pub protocol: Option<Version>,
    /// Final status sent downstream; 0 = none was sent.
    pub status: u16,
    pub flags: Flags,
    pub details: Option<std::borrow::Cow<'static, str>>,
    pub termination_details: Option<String>,
    pub transport_failure: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// When the request body was fully received.
    pub request_done: Option<Instant>,
    /// When the first byte of the upstream response arrived.
    pub first_upstream_byte: Option<Instant>,
    /// When the last byte was sent downstream (or the record was finished).
    pub end: Option<Instant>,
    /// Request header values, indexed like the format's `req_headers`.
    pub req: Vec<Option<HeaderValue>>,
    pub resp: Vec<Option<HeaderValue>>,
    pub trailers: Vec<Option<HeaderValue>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host_name: Option<String>,
    pub upstream_tls: Option<Arc<ConnTls>>,
    pub upstream_conn_id: Option<u64>,
    pub attempts: u32,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub downstream_conn_id: u64,
    pub requested_server_name: Option<String>,
    pub route_name: Option<Arc<str>>,
    pub local_reply_body: Option<String>,
}

impl AccessRecord {
    pub fn new(
        downstream_local: SocketAddr,
        downstream_remote: SocketAddr,
        conn_id: u64,
    ) -> AccessRecord {
        AccessRecord {
            start: SystemTime::now(),
            start_instant: Instant::now(),
            http: true,
            method: None,
            path: None,
            authority: None,
            scheme: "http",
            protocol: None,
            status: 0,
            flags: Flags::NONE,
            details: None,
            termination_details: None,
            transport_failure: None,
            bytes_received: 0,
            bytes_sent: 0,
            request_done: None,
            first_upstream_byte: None,
            end: None,
            req: Vec::new(),
            resp: Vec::new(),
            trailers: Vec::new(),
            upstream_host: None,
            upstream_local: None,
            upstream_cluster: None,
            upstream_host_name: None,
            upstream_tls: None,
            upstream_conn_id: None,
            attempts: 0,
            downstream_local,
            downstream_remote,
            downstream_conn_id: conn_id,
            requested_server_name: None,
            route_name: None,
            local_reply_body: None,
        }
    }
}

/// Which header a `%REQ(...)%`-style operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HeaderKey {
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
enum Op {
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
enum TimeFmt {
    /// `2016-04-15T20:17:00.310Z`
    Default,
    /// A strftime format, pre-parsed.
    Custom(Vec<chrono::format::Item<'static>>),
}

#[derive(Clone, Debug)]
enum Token {
    Literal(String),
    Op { op: Op, max_len: Option<usize> },
}

/// A compiled format string.
#[derive(Clone, Debug)]
pub struct Template {
    tokens: Vec<Token>,
}

/// A compiled log format: TEXT (one template) or JSON (key -> template).
#[derive(Clone, Debug)]
pub struct LogFormat {
    /// The format as given (to tell whether a reload changed it).
    source: String,
    kind: FormatKind,
    req_headers: Vec<HeaderKey>,
    resp_headers: Vec<HeaderName>,
    trailer_headers: Vec<HeaderName>,
    hostname: String,
}

#[derive(Clone, Debug)]
enum FormatKind {
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
        let no_arg = |op: Op| -> Result<Op, String> {
            match arg {
                None => Ok(op),
                Some(_) => Err(format!("%{name}% takes no argument")),
            }
        };
        let header_pair = |this: &mut Self,
                           arg: Option<&str>,
                           list: u8|
         -> Result<(usize, Option<usize>), String> {
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
            match list {
                0 => {
                    let a = this.req_index(HeaderKey::parse(main)?);
                    let b = match alt {
                        Some(alt) => Some(this.req_index(HeaderKey::parse(alt)?)),
                        None => None,
                    };
                    Ok((a, b))
                }
                1 => {
                    let a = Self::name_index(&mut this.resp_headers, main)?;
                    let b = alt
                        .map(|x| Self::name_index(&mut this.resp_headers, x))
                        .transpose()?;
                    Ok((a, b))
                }
                _ => {
                    let a = Self::name_index(&mut this.trailer_headers, main)?;
                    let b = alt
                        .map(|x| Self::name_index(&mut this.trailer_headers, x))
                        .transpose()?;
                    Ok((a, b))
                }
            }
        };
        Ok(match name {
            "START_TIME" | "START_TIME_LOCAL" => Op::StartTime(time_fmt(arg)?),
            "EMIT_TIME" => Op::EmitTime(time_fmt(arg)?),
            "REQ" | "REQUEST_HEADER" => {
                let (a, b) = header_pair(self, arg, 0)?;
                Op::Req(a, b, false)
            }
            "REQ_WITHOUT_QUERY" => {
                let (a, b) = header_pair(self, arg, 0)?;
                Op::Req(a, b, true)
            }
            "RESP" | "RESPONSE_HEADER" => {
                let (a, b) = header_pair(self, arg, 1)?;
                Op::Resp(a, b)
            }
            "TRAILER" | "RESPONSE_TRAILER" => {
                let (a, b) = header_pair(self, arg, 2)?;
                Op::Trailer(a, b)
            }
            "PROTOCOL" => no_arg(Op::Protocol)?,
            "UPSTREAM_PROTOCOL" => no_arg(Op::UpstreamProtocol)?,
            "RESPONSE_CODE" => no_arg(Op::ResponseCode)?,
            "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags)?,
            "RESPONSE_FLAGS_LONG" => no_arg(Op::ResponseFlagsLong)?,
            "RESPONSE_CODE_DETAILS" => match arg {
                None => Op::ResponseCodeDetails(false),
                Some("ALLOW_WHITESPACES") => Op::ResponseCodeDetails(true),
                Some(a) => {
                    return Err(format!(
                        "%RESPONSE_CODE_DETAILS({a})%: the only argument is ALLOW_WHITESPACES"
                    ));
                }
            },
            "CONNECTION_TERMINATION_DETAILS" => no_arg(Op::ConnectionTerminationDetails)?,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Op::UpstreamTransportFailureReason)?,
            "BYTES_RECEIVED" | "UPSTREAM_WIRE_BYTES_SENT" | "DOWNSTREAM_WIRE_BYTES_RECEIVED" => {
                no_arg(Op::BytesReceived)?
            }
            "BYTES_SENT" | "UPSTREAM_WIRE_BYTES_RECEIVED" | "DOWNSTREAM_WIRE_BYTES_SENT" => {
                no_arg(Op::BytesSent)?
            }
            "DURATION" => no_arg(Op::Duration)?,
            "REQUEST_DURATION" => no_arg(Op::RequestDuration)?,
            "RESPONSE_DURATION" => no_arg(Op::ResponseDuration)?,
            "RESPONSE_TX_DURATION" => no_arg(Op::ResponseTxDuration)?,
            "UPSTREAM_HOST" => no_arg(Op::UpstreamHost)?,
            "UPSTREAM_HOST_NAME" => no_arg(Op::UpstreamHostName)?,
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => no_arg(Op::UpstreamCluster)?,
            "UPSTREAM_LOCAL_ADDRESS" => no_arg(Op::UpstreamLocalAddress)?,
            "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressWithoutPort,
            "UPSTREAM_LOCAL_PORT" => no_arg(Op::UpstreamLocalPort)?,
            "UPSTREAM_REMOTE_ADDRESS" => no_arg(Op::UpstreamRemoteAddress)?,
            "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamRemoteAddressWithoutPort,
            "UPSTREAM_REMOTE_PORT" => no_arg(Op::UpstreamRemotePort)?,
            "UPSTREAM_TLS_VERSION" => no_arg(Op::UpstreamTlsVersion)?,
            "UPSTREAM_TLS_CIPHER" => no_arg(Op::UpstreamTlsCipher)?,
            "UPSTREAM_PEER_SUBJECT" => no_arg(Op::UpstreamPeerSubject)?,
            "UPSTREAM_PEER_ISSUER" => no_arg(Op::UpstreamPeerIssuer)?,
            "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(Op::UpstreamRequestAttemptCount)?,
            "UPSTREAM_CONNECTION_ID" => no_arg(Op::UpstreamConnectionId)?,
            "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocalAddress)?,
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
            "DOWNSTREAM_LOCAL_PORT" => no_arg(Op::DownstreamLocalPort)?,
            "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
                no_arg(Op::DownstreamRemoteAddress)?
            }
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Op::DownstreamRemoteAddressWithoutPort
            }
            "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => {
                no_arg(Op::DownstreamRemotePort)?
            }
            "REQUESTED_SERVER_NAME" => no_arg(Op::RequestedServerName)?,
            "ROUTE_NAME" => no_arg(Op::RouteName)?,
            "CONNECTION_ID" => no_arg(Op::ConnectionId)?,
            "HOSTNAME" => no_arg(Op::Hostname)?,
            "LOCAL_REPLY_BODY" => no_arg(Op::LocalReplyBody)?,
            "ENVIRONMENT" => Op::Environment(
                arg.ok_or("%ENVIRONMENT(NAME)% needs a variable name")?
                    .to_string(),
            ),
            "DYNAMIC_METADATA"
            | "CLUSTER_METADATA"
            | "UPSTREAM_METADATA"
            | "FILTER_STATE"
            | "UPSTREAM_FILTER_STATE"
            | "GRPC_STATUS"
            | "GRPC_STATUS_NUMBER"
            | "STREAM_ID"
            | "VIRTUAL_CLUSTER_NAME"
            | "DOWNSTREAM_PEER_SUBJECT"
            | "DOWNSTREAM_PEER_ISSUER"
            | "DOWNSTREAM_TLS_VERSION"
            | "DOWNSTREAM_TLS_CIPHER"
            | "DOWNSTREAM_PEER_URI_SAN"
            | "DOWNSTREAM_LOCAL_URI_SAN"
            | "UPSTREAM_PEER_URI_SAN"
            | "UPSTREAM_LOCAL_URI_SAN" => Op::AlwaysEmpty,
            other => {
                let known = KNOWN_OPERATORS;
                let hint = crate::text::suggest(other, known.iter().copied())
                    .map(|s| format!(" (did you mean %{s}%?)"))
                    .unwrap_or_default();
                return Err(format!("unknown access log operator %{other}%{hint}"));
            }
        })
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
    fn req_value<'a>(&self, rec: &'a AccessRecord, i: usize) -> Option<&'a str> {
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

    /// Formats one line (with its trailing newline).
    pub fn format(&self, rec: &AccessRecord) -> String {
        let mut out = String::with_capacity(320);
        self.format_into(rec, &mut out);
        out
    }

    /// Appends the record's line to `out`.
    pub fn format_into(&self, rec: &AccessRecord, out: &mut String) {
        match &self.kind {
            FormatKind::Text(t) => {
                for tok in &t.tokens {
                    match tok {
                        Token::Literal(s) => out.push_str(s),
                        Token::Op { op, max_len } => {
                            let start = out.len();
                            if !self.write_op(out, op, rec) {
                                out.push('-');
                            }
                            truncate(out, start, *max_len);
                        }
                    }
                }
            }
            FormatKind::Json(pairs) => {
                out.push('{');
                let mut scratch = String::new();
                for (i, (k, t)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(out, k);
                    out.push(':');
                    // A value that is one operator keeps its type (number / null).
                    if let [Token::Op { op, max_len }] = t.tokens.as_slice() {
                        scratch.clear();
                        if !self.write_op(&mut scratch, op, rec) {
                            out.push_str("null");
                            continue;
                        }
                        truncate(&mut scratch, 0, *max_len);
                        if is_numeric_op(op)
                            && scratch.bytes().all(|b| b.is_ascii_digit())
                            && !scratch.is_empty()
                        {
                            out.push_str(&scratch);
                        } else {
                            json_string(out, &scratch);
                        }
                    } else {
                        scratch.clear();
                        for tok in &t.tokens {
                            match tok {
                                Token::Literal(s) => scratch.push_str(s),
                                Token::Op { op, max_len } => {
                                    let start = scratch.len();
                                    if !self.write_op(&mut scratch, op, rec) {
                                        scratch.push('-');
                                    }
                                    truncate(&mut scratch, start, *max_len);
                                }
                            }
                        }
                        json_string(out, &scratch);
                    }
                }
                out.push_str("}\n");
            }
        }
    }

    /// Writes the operator's value; `false` = no value (printed `-`, or `null` in JSON).
    fn write_op(&self, out: &mut String, op: &Op, rec: &AccessRecord) -> bool {
        let ms = |from: Instant, to: Option<Instant>| -> Option<u128> {
            to.map(|t| t.saturating_duration_since(from).as_millis())
        };
        let num = |out: &mut String, v: Option<u128>| -> bool {
            match v {
                Some(v) => {
                    push_u128(out, v);
                    true
                }
                None => false,
            }
        };
        let addr = |out: &mut String, a: Option<SocketAddr>| -> bool {
            match a {
                Some(a) => {
                    push_addr(out, a);
                    true
                }
                None => false,
            }
        };
        let s = |out: &mut String, v: Option<&str>| -> bool {
            match v {
                Some(v) if !v.is_empty() => {
                    out.push_str(v);
                    true
                }
                _ => false,
            }
        };
        match op {
            Op::StartTime(f) => {
                write_time(out, rec.start, f);
                true
            }
            Op::EmitTime(f) => {
                write_time(out, SystemTime::now(), f);
                true
            }
            Op::Req(a, b, without_query) => {
                if !rec.http {
                    return false;
                }
                let v = self
                    .req_value(rec, *a)
                    .or_else(|| b.and_then(|b| self.req_value(rec, b)));
                match v {
                    Some(v) if !v.is_empty() => {
                        let v = if *without_query {
                            v.split('?').next().unwrap_or(v)
                        } else {
                            v
                        };
                        out.push_str(v);
                        true
                    }
                    _ => false,
                }
            }
            Op::Resp(a, b) => {
                let v = rec
                    .resp
                    .get(*a)
                    .and_then(Option::as_ref)
                    .or_else(|| b.and_then(|b| rec.resp.get(b).and_then(Option::as_ref)));
                s(out, v.and_then(|v| v.to_str().ok()))
            }
            Op::Trailer(a, b) => {
                let v = rec
                    .trailers
                    .get(*a)
                    .and_then(Option::as_ref)
                    .or_else(|| b.and_then(|b| rec.trailers.get(b).and_then(Option::as_ref)));
                s(out, v.and_then(|v| v.to_str().ok()))
            }
            Op::Protocol => s(out, rec.protocol.map(version_str)),
            Op::UpstreamProtocol => s(
                out,
                (rec.http && rec.upstream_host.is_some()).then_some("HTTP/1.1"),
            ),
            // Envoy prints 0 for TCP connections, which have no status.
            Op::ResponseCode => num(out, Some(u128::from(rec.status))),
            Op::ResponseFlags => {
                rec.flags.write_short(out);
                true
            }
            Op::ResponseFlagsLong => {
                rec.flags.write_long(out);
                true
            }
            Op::ResponseCodeDetails(allow_ws) => match &rec.details {
                Some(d) if *allow_ws => s(out, Some(d)),
                Some(d) => {
                    for ch in d.chars() {
                        out.push(if ch.is_whitespace() { '_' } else { ch });
                    }
                    true
                }
                None => false,
            },
            Op::ConnectionTerminationDetails => s(out, rec.termination_details.as_deref()),
            Op::UpstreamTransportFailureReason => s(out, rec.transport_failure.as_deref()),
            Op::BytesReceived => num(out, Some(u128::from(rec.bytes_received))),
            Op::BytesSent => num(out, Some(u128::from(rec.bytes_sent))),
            Op::Duration => num(
                out,
                ms(rec.start_instant, rec.end.or_else(|| Some(Instant::now()))),
            ),
            Op::RequestDuration => num(out, ms(rec.start_instant, rec.request_done)),
            Op::ResponseDuration => num(out, ms(rec.start_instant, rec.first_upstream_byte)),
            Op::ResponseTxDuration => match rec.first_upstream_byte {
                Some(f) => num(out, ms(f, rec.end)),
                None => false,
            },
            Op::UpstreamHost | Op::UpstreamRemoteAddress => addr(out, rec.upstream_host),
            Op::UpstreamRemoteAddressWithoutPort => s(
                out,
                rec.upstream_host.map(|a| a.ip().to_string()).as_deref(),
            ),
            Op::UpstreamRemotePort => num(out, rec.upstream_host.map(|a| u128::from(a.port()))),
            Op::UpstreamHostName => s(out, rec.upstream_host_name.as_deref()),
            Op::UpstreamCluster => s(out, rec.upstream_cluster.as_deref()),
            Op::UpstreamLocalAddress => addr(out, rec.upstream_local),
            Op::UpstreamLocalAddressWithoutPort => s(
                out,
                rec.upstream_local.map(|a| a.ip().to_string()).as_deref(),
            ),
            Op::UpstreamLocalPort => num(out, rec.upstream_local.map(|a| u128::from(a.port()))),
            Op::UpstreamTlsVersion => {
                s(out, rec.upstream_tls.as_ref().and_then(|t| t.version_str()))
            }
            Op::UpstreamTlsCipher => s(out, rec.upstream_tls.as_ref().and_then(|t| t.cipher_str())),
            Op::UpstreamPeerSubject => s(
                out,
                rec.upstream_tls
                    .as_ref()
                    .and_then(|t| t.peer_subject.get())
                    .map(String::as_str),
            ),
            Op::UpstreamPeerIssuer => s(
                out,
                rec.upstream_tls
                    .as_ref()
                    .and_then(|t| t.peer_issuer.get())
                    .map(String::as_str),
            ),
            Op::UpstreamRequestAttemptCount => num(out, Some(u128::from(rec.attempts))),
            Op::UpstreamConnectionId => num(out, rec.upstream_conn_id.map(u128::from)),
            Op::DownstreamLocalAddress => addr(out, Some(rec.downstream_local)),
            Op::DownstreamLocalAddressWithoutPort => {
                s(out, Some(&rec.downstream_local.ip().to_string()))
            }
            Op::DownstreamLocalPort => num(out, Some(u128::from(rec.downstream_local.port()))),
            Op::DownstreamRemoteAddress => addr(out, Some(rec.downstream_remote)),
            Op::DownstreamRemoteAddressWithoutPort => {
                s(out, Some(&rec.downstream_remote.ip().to_string()))
            }
            Op::DownstreamRemotePort => num(out, Some(u128::from(rec.downstream_remote.port()))),
            Op::RequestedServerName => s(out, rec.requested_server_name.as_deref()),
            Op::RouteName => s(out, rec.route_name.as_deref()),
            Op::ConnectionId => num(out, Some(u128::from(rec.downstream_conn_id))),
            Op::Hostname => s(out, Some(&self.hostname)),
            Op::Environment(name) => s(out, std::env::var(name).ok().as_deref()),
            Op::LocalReplyBody => s(out, rec.local_reply_body.as_deref().map(str::trim_end)),
            Op::AlwaysEmpty => false,
        }
    }
}

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

fn is_numeric_op(op: &Op) -> bool {
    matches!(
        op,
        Op::ResponseCode
            | Op::BytesReceived
            | Op::BytesSent
            | Op::Duration
            | Op::RequestDuration
            | Op::ResponseDuration
            | Op::ResponseTxDuration
            | Op::UpstreamRequestAttemptCount
            | Op::ConnectionId
            | Op::UpstreamConnectionId
            | Op::DownstreamLocalPort
            | Op::DownstreamRemotePort
            | Op::UpstreamLocalPort
            | Op::UpstreamRemotePort
    )
}

fn truncate(out: &mut String, start: usize, max_len: Option<usize>) {
    if let Some(max) = max_len {
        let value = &out[start..];
        if let Some((i, _)) = value.char_indices().nth(max) {
            out.truncate(start + i);
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

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

/// Appends `v` in decimal (without `core::fmt`, which costs several times more per number).
/// Numbers that fit 64 bits (all but absurd durations) avoid 128-bit division.
fn push_u128(out: &mut String, v: u128) {
    match u64::try_from(v) {
        Ok(small) => push_u64(out, small),
        Err(_) => {
            let _ = write!(out, "{v}");
        }
    }
}

fn push_u64(out: &mut String, v: u64) {
    let mut buf = [0u8; 20];
    for &b in decimal(&mut buf, v) {
        out.push(char::from(b));
    }
}

/// `v` in decimal ASCII digits, written at the end of `buf`.
pub(crate) fn decimal(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `v` zero-padded to `width` digits.
fn push_padded(out: &mut String, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    let mut v = v;
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = (buf.len() - width).min(i);
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or("0"));
}

/// Appends `ip:port` as `SocketAddr`'s Display does (`[v6]:port` for IPv6). IPv4 is built in
/// a stack buffer and appended once (four of these per line).
fn push_addr(out: &mut String, a: SocketAddr) {
    let SocketAddr::V4(v4) = a else {
        let _ = write!(out, "{a}");
        return;
    };
    let mut buf = [0u8; 21];
    let mut n = 0;
    for (i, o) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    buf[n] = b':';
    n += 1;
    let mut digits = [0u8; 20];
    let port = decimal(&mut digits, u64::from(a.port()));
    buf[n..n + port.len()].copy_from_slice(port);
    n += port.len();
    out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
}

fn write_time(out: &mut String, t: SystemTime, f: &TimeFmt) {
    match f {
        TimeFmt::Default => {
            // %Y-%m-%dT%H:%M:%S.%3fZ, by hand (this runs once per request); the part up to the
            // second is formatted once a second per thread.
            thread_local! {
                static SECOND: std::cell::RefCell<(u64, String)> =
                    const { std::cell::RefCell::new((u64::MAX, String::new())) };
            }
            let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) else {
                // Before 1970: no cache.
                let dt: DateTime<Utc> = t.into();
                push_second(out, &dt);
                out.push('.');
                push_padded(out, dt.timestamp_subsec_millis().min(999), 3);
                out.push('Z');
                return;
            };
            let secs = since.as_secs();
            let cached = SECOND.with_borrow(|(at, text)| {
                let hit = *at == secs;
                if hit {
                    out.push_str(text);
                }
                hit
            });
            if !cached {
                let start = out.len();
                push_second(out, &t.into());
                let text = out[start..].to_string();
                SECOND.with_borrow_mut(|c| *c = (secs, text));
            }
            out.push('.');
            push_padded(out, since.subsec_millis().min(999), 3);
            out.push('Z');
        }
        TimeFmt::Custom(items) => {
            let dt: DateTime<Utc> = t.into();
            let _ = write!(out, "{}", dt.format_with_items(items.iter()));
        }
    }
}

/// `%Y-%m-%dT%H:%M:%S`.
fn push_second(out: &mut String, dt: &DateTime<Utc>) {
    let year = dt.year();
    if (0..=9999).contains(&year) {
        push_padded(out, year as u32, 4);
    } else {
        let _ = write!(out, "{year:04}");
    }
    for (sep, v) in [
        ('-', dt.month()),
        ('-', dt.day()),
        ('T', dt.hour()),
        (':', dt.minute()),
        (':', dt.second()),
    ] {
        out.push(sep);
        push_padded(out, v, 2);
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses a flat JSON object of string values (`accessLogFormat` for JSON encoding).
fn parse_json_object(s: &str) -> Result<Vec<(String, String)>, String> {
    let v: serde_json_lite::Value = serde_json_lite::parse(s)?;
    Ok(v.0)
}

/// A minimal JSON object reader: `{"key": "value", ...}` with string values only (what
/// `accessLogFormat` holds). Keeps the keys' order.
mod serde_json_lite {
    pub struct Value(pub Vec<(String, String)>);

    pub fn parse(s: &str) -> Result<Value, String> {
        let mut p = P {
            b: s.as_bytes(),
            i: 0,
        };
        p.ws();
        p.expect(b'{')?;
        let mut out = Vec::new();
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
        } else {
            loop {
                p.ws();
                let k = p.string()?;
                p.ws();
                p.expect(b':')?;
                p.ws();
                let v = p
                    .string()
                    .map_err(|e| format!("the value of \"{k}\" must be a string: {e}"))?;
                out.push((k, v));
                p.ws();
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return Err(format!("expected ',' or '}}' at byte {}", p.i)),
                }
            }
        }
        p.ws();
        if p.i != p.b.len() {
            return Err(format!(
                "unexpected text after the JSON object at byte {}",
                p.i
            ));
        }
        Ok(Value(out))
    }

    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }
        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                self.i += 1;
            }
        }
        fn expect(&mut self, c: u8) -> Result<(), String> {
            if self.peek() == Some(c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at byte {}", c as char, self.i))
            }
        }
        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let mut out = Vec::new();
            loop {
                let c = self.peek().ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = self.peek().ok_or("unterminated escape")?;
                        self.i += 1;
                        match e {
                            b'"' => out.push(b'"'),
                            b'\\' => out.push(b'\\'),
                            b'/' => out.push(b'/'),
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'u' => {
                                let hex =
                                    self.b.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                                let code = u32::from_str_radix(
                                    std::str::from_utf8(hex).map_err(|_| "bad \\u")?,
                                    16,
                                )
                                .map_err(|_| "bad \\u escape")?;
                                self.i += 4;
                                let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => return Err(format!("unknown escape \\{}", other as char)),
                        }
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).map_err(|_| "invalid UTF-8".to_string())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "-".into())
}

/// Where lines go.
pub enum Sink {
    Stdout,
    File(PathBuf),
    /// Any writer (tests, embedding).
    Writer(Box<dyn std::io::Write + Send>),
}

/// The access log: a compiled format, and a bounded in-memory buffer that a writer thread
/// drains. Requests only append to the buffer (no syscall, no thread wake-up per line); the
/// writer flushes it every [`FLUSH_INTERVAL`] (Envoy flushes access logs every second), or at
/// once when it holds [`FLUSH_BYTES`]. When the buffer is full, lines are dropped and counted.
pub struct AccessLog {
    pub format: LogFormat,
    shared: Option<Arc<Shared>>,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<Pending>,
    wake: Condvar,
    /// Most bytes the buffer may hold.
    capacity: usize,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: u64,
    reopen: bool,
    /// Flush requests: the writer bumps `flushed` to this once written.
    flush_wanted: u64,
    flushed: u64,
    closed: bool,
}

/// Lines that may wait for the writer, in bytes (about 16k Istio lines); beyond that they are
/// dropped and counted.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How often the writer writes what has accumulated.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// A buffer this full is written at once.
const FLUSH_BYTES: usize = 256 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

impl AccessLog {
    /// A log that writes nothing (`accessLogFile: ""`).
    pub fn disabled() -> AccessLog {
        AccessLog {
            format: LogFormat::istio_text(),
            shared: None,
            dropped: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the writer thread. A file that cannot be opened is an error (at start-up).
    pub fn start(sink: Sink, format: LogFormat) -> std::io::Result<AccessLog> {
        Self::start_with_capacity(sink, format, QUEUE_BYTES)
    }

    /// Like [`AccessLog::start`] with a buffer of `bytes` bytes.
    pub fn start_with_capacity(
        mut sink: Sink,
        format: LogFormat,
        bytes: usize,
    ) -> std::io::Result<AccessLog> {
        let written = Arc::new(AtomicU64::new(0));
        let out = match std::mem::replace(&mut sink, Sink::Stdout) {
            Sink::Writer(w) => w,
            other => {
                let o = open(&other)?;
                sink = other;
                o
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            capacity: bytes,
        });
        let (w, sh) = (written.clone(), shared.clone());
        std::thread::Builder::new()
            .name("egret-access-log".into())
            .spawn(move || writer(sh, sink, out, w))?;
        Ok(AccessLog {
            format,
            shared: Some(shared),
            dropped: Arc::new(AtomicU64::new(0)),
            written,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether this log writes `format`.
    pub fn format_is(&self, format: &LogFormat) -> bool {
        self.format.source == format.source
    }

    /// Appends the record's line to the buffer; never blocks on I/O.
    pub fn log(&self, rec: &AccessRecord) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            self.format.format_into(rec, &mut line);
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.buf.len() + line.len() > shared.capacity {
                drop(st);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            st.buf.extend_from_slice(line.as_bytes());
            st.lines += 1;
            if st.buf.len() >= FLUSH_BYTES {
                shared.wake.notify_one();
            }
        });
    }

    /// Reopens a file sink (SIGUSR1, for logrotate).
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reopen = true;
            shared.wake.notify_one();
        }
    }

    /// Waits (up to 5 s) until every line logged so far is written (tests, shutdown).
    pub fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.flush_wanted += 1;
        let ticket = st.flush_wanted;
        shared.wake.notify_all();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while st.flushed < ticket && !st.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match shared.wake.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for AccessLog {
    /// Writes what is buffered and stops the writer (a reload that changes the log, or exit).
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            self.flush();
            shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed = true;
            shared.wake.notify_all();
        }
    }
}

type Out = Box<dyn std::io::Write + Send>;

fn open(sink: &Sink) -> std::io::Result<Out> {
    Ok(match sink {
        Sink::Stdout | Sink::Writer(_) => Box::new(std::io::stdout()),
        Sink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open the access log {}: {e}", p.display()),
                    )
                })?,
        ),
    })
}

fn writer(shared: Arc<Shared>, sink: Sink, mut out: Out, written: Arc<AtomicU64>) {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.buf.len() < FLUSH_BYTES && !st.reopen && st.flush_wanted == st.flushed && !st.closed {
            st = match shared.wake.wait_timeout(st, FLUSH_INTERVAL) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        // Take the buffer; requests keep appending to the (empty) spare meanwhile.
        std::mem::swap(&mut st.buf, &mut spare);
        let lines = std::mem::take(&mut st.lines);
        let reopen = std::mem::take(&mut st.reopen);
        let ticket = st.flush_wanted;
        let closed = st.closed;
        drop(st);
        if !spare.is_empty() {
            if out.write_all(&spare).is_ok() {
                written.fetch_add(lines, Ordering::Relaxed);
            }
            let _ = out.flush();
            spare.clear();
            // Do not keep a burst's worth of memory for ever.
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare = Vec::new();
            }
        }
        if reopen && matches!(sink, Sink::File(_)) {
            match open(&sink) {
                Ok(o) => out = o,
                Err(e) => tracing::error!("{e}; still writing to the old file"),
            }
        }
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.flushed < ticket {
            st.flushed = ticket;
            shared.wake.notify_all();
        }
        if closed && st.buf.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        let mut r = AccessRecord::new(
            "240.240.0.2:80".parse().expect("addr"),
            "10.128.2.33:56948".parse().expect("addr"),
            7,
        );
        r.start = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_666_549_713_789);
        r.method = Some(Method::GET);
        r.path = Some(http::uri::PathAndQuery::from_static("/"));
        r.protocol = Some(Version::HTTP_11);
        r.status = 200;
        r.details = Some("via_upstream".into());
        r.bytes_sent = 44;
        r.end = Some(r.start_instant + std::time::Duration::from_millis(28));
        r.upstream_host = Some("10.128.2.35:3000".parse().expect("addr"));
        r.upstream_cluster = Some(Arc::from("outbound|3000||egress.ns.svc.cluster.local"));
        r.upstream_local = Some("10.128.2.33:50174".parse().expect("addr"));
        r
    }

    #[test]
    fn istio_text_format_matches_the_seed_line_shape() {
        let f = LogFormat::istio_text();
        let mut r = record();
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_static("curl/7.64.0"));
        h.insert(
            "x-request-id",
            HeaderValue::from_static("56140728-4722-972f-afaa-299e00837e1a"),
        );
        r.authority = Some("349bc685.apps.example".into());
        f.capture_request(&mut r, &h);
        let mut resp = HeaderMap::new();
        resp.insert(
            "x-envoy-upstream-service-time",
            HeaderValue::from_static("27"),
        );
        f.capture_response(&mut r, &resp);
        let line = f.format(&r);
        assert_eq!(
            line,
            "[2022-10-23T18:28:33.789Z] \"GET / HTTP/1.1\" 200 - via_upstream - \"-\" 0 44 28 27 \"-\" \"curl/7.64.0\" \"56140728-4722-972f-afaa-299e00837e1a\" \"349bc685.apps.example\" \"10.128.2.35:3000\" outbound|3000||egress.ns.svc.cluster.local 10.128.2.33:50174 240.240.0.2:80 10.128.2.33:56948 - -\n"
        );
    }

    #[test]
    fn json_keeps_types_and_nulls() {
        let f = LogFormat::istio_json();
        let r = record();
        let line = f.format(&r);
        assert!(
            line.starts_with("{\"authority\":null,\"bytes_received\":0,\"bytes_sent\":44,"),
            "{line}"
        );
        assert!(line.contains("\"response_code\":200"), "{line}");
        assert!(line.contains("\"response_flags\":\"-\""), "{line}");
        assert!(line.contains("\"route_name\":null"), "{line}");
        assert!(line.ends_with("}\n"));
    }

    #[test]
    fn operators_parse_with_alternatives_and_truncation() {
        let f = LogFormat::text(
            "%REQ(X-MISSING?USER-AGENT):4% %START_TIME(%s.%3f)% %RESPONSE_FLAGS_LONG% 100% done",
        )
        .expect("compiles");
        let mut r = record();
        r.flags = Flags::UF | Flags::URX;
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_static("curl/8"));
        f.capture_request(&mut r, &h);
        assert_eq!(
            f.format(&r),
            "curl 1666549713.789 UpstreamConnectionFailure,UpstreamRetryLimitExceeded 100% done\n"
        );
    }

    #[test]
    fn bad_formats_are_errors_that_name_the_operator() {
        assert!(
            LogFormat::text("%REQ_METHOD%")
                .unwrap_err()
                .contains("unknown access log operator %REQ_METHOD%")
        );
        assert!(
            LogFormat::text("%DURATON%")
                .unwrap_err()
                .contains("did you mean %DURATION%?")
        );
        assert!(
            LogFormat::text("%REQ(A?B?C)%")
                .unwrap_err()
                .contains("at most one '?'")
        );
        assert!(
            LogFormat::text("%REQ(A)x%")
                .unwrap_err()
                .contains("incorrect position of ')'")
        );
        assert!(
            LogFormat::text("%BYTES_SENT:x%")
                .unwrap_err()
                .contains("must be an integer")
        );
        assert!(
            LogFormat::text("%REQ%")
                .unwrap_err()
                .contains("needs a header name")
        );
    }

    #[test]
    fn start_time_extensions() {
        let f = LogFormat::text("%START_TIME(%Y/%m/%d %H:%M:%E3S)%").expect("compiles");
        assert_eq!(f.format(&record()), "2022/10/23 18:28:33.789\n");
    }

    #[test]
    fn a_stalled_writer_never_blocks_logging_and_drops_are_counted() {
        /// A writer that blocks until released.
        struct Stalled(std::sync::Arc<std::sync::Mutex<()>>);
        impl std::io::Write for Stalled {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                drop(self.0.lock());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = std::sync::Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().expect("lock");
        let line = LogFormat::istio_text().format(&record()).len();
        // Room for 8 lines.
        let log = AccessLog::start_with_capacity(
            Sink::Writer(Box::new(Stalled(gate.clone()))),
            LogFormat::istio_text(),
            8 * line,
        )
        .expect("starts");
        let rec = record();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            log.log(&rec);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "logging must not wait for the writer"
        );
        let dropped = log.dropped.load(Ordering::Relaxed);
        // The writer is stalled on its first write: at most two buffers' worth (the one being
        // written and the one filling) got through.
        assert!(
            dropped >= 1000 - 16,
            "the buffer overflowed: dropped {dropped}"
        );
        drop(held);
        log.flush();
        let written = log.written.load(Ordering::Relaxed);
        assert_eq!(
            written + dropped,
            1000,
            "every line is either written or counted as dropped"
        );
    }

    #[test]
    fn hand_written_number_and_address_formatting_matches_display() {
        for v in [0u128, 7, 10, 99, 100, 65535, 1_666_549_713_789, u128::MAX] {
            let mut s = String::new();
            push_u128(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        for (v, w, want) in [
            (7, 2, "07"),
            (2026, 4, "2026"),
            (5, 3, "005"),
            (0, 2, "00"),
            (123, 2, "123"),
        ] {
            let mut s = String::new();
            push_padded(&mut s, v, w);
            assert_eq!(s, want);
        }
        for a in [
            "10.128.2.35:3000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:443",
            "[fe80::1]:80",
        ] {
            let addr: SocketAddr = a.parse().expect("addr");
            let mut s = String::new();
            push_addr(&mut s, addr);
            assert_eq!(s, addr.to_string());
        }
        let mut s = String::new();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_666_549_713_789);
        write_time(&mut s, t, &TimeFmt::Default);
        assert_eq!(s, "2022-10-23T18:28:33.789Z");
        // The per-second cache: same second, the next second, and back.
        for (ms, want) in [
            (1_666_549_713_001_i64, "2022-10-23T18:28:33.001Z"),
            (1_666_549_714_000, "2022-10-23T18:28:34.000Z"),
            (1_666_549_713_999, "2022-10-23T18:28:33.999Z"),
            (-1_500, "1969-12-31T23:59:58.500Z"),
        ] {
            let t = if ms >= 0 {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
            } else {
                SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
            };
            let mut s = String::new();
            write_time(&mut s, t, &TimeFmt::Default);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn custom_json_format() {
        let f = LogFormat::from_mesh(
            Encoding::Json,
            Some(r#"{"code": "%RESPONSE_CODE%", "where": "%UPSTREAM_HOST% via %ROUTE_NAME%"}"#),
        )
        .expect("compiles");
        assert_eq!(
            f.format(&record()),
            "{\"code\":200,\"where\":\"10.128.2.35:3000 via -\"}\n"
        );
    }
}
