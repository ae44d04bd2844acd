//! What a log line is made of: the record one request (or connection) fills as it goes, and
//! what its upstream TLS connection saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method, Version};

use crate::error::Flags;

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
