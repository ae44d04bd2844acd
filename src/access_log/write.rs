//! Writing a line: each operator's value from the record, as text or as a JSON object, without
//! `core::fmt` on the way (numbers, addresses and times are written by hand).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Datelike, Timelike, Utc};
use http::Version;

use super::format::{FormatKind, LogFormat, Op, TimeFmt, Token};
use super::record::AccessRecord;
use crate::text::decimal;

impl LogFormat {
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
                put_str(out, v.and_then(|v| v.to_str().ok()))
            }
            Op::Trailer(a, b) => {
                let v = rec
                    .trailers
                    .get(*a)
                    .and_then(Option::as_ref)
                    .or_else(|| b.and_then(|b| rec.trailers.get(b).and_then(Option::as_ref)));
                put_str(out, v.and_then(|v| v.to_str().ok()))
            }
            Op::Protocol => put_str(out, rec.protocol.map(version_str)),
            Op::UpstreamProtocol => put_str(
                out,
                (rec.http && rec.upstream_host.is_some()).then_some("HTTP/1.1"),
            ),
            // Envoy prints 0 for TCP connections, which have no status.
            Op::ResponseCode => put_num(out, Some(u128::from(rec.status))),
            Op::ResponseFlags => {
                rec.flags.write_short(out);
                true
            }
            Op::ResponseFlagsLong => {
                rec.flags.write_long(out);
                true
            }
            Op::ResponseCodeDetails(allow_ws) => match &rec.details {
                Some(d) if *allow_ws => put_str(out, Some(d)),
                Some(d) => {
                    for ch in d.chars() {
                        out.push(if ch.is_whitespace() { '_' } else { ch });
                    }
                    true
                }
                None => false,
            },
            Op::ConnectionTerminationDetails => put_str(out, rec.termination_details.as_deref()),
            Op::UpstreamTransportFailureReason => put_str(out, rec.transport_failure.as_deref()),
            Op::BytesReceived => put_num(out, Some(u128::from(rec.bytes_received))),
            Op::BytesSent => put_num(out, Some(u128::from(rec.bytes_sent))),
            Op::Duration => put_num(
                out,
                ms_between(rec.start_instant, rec.end.or_else(|| Some(Instant::now()))),
            ),
            Op::RequestDuration => put_num(out, ms_between(rec.start_instant, rec.request_done)),
            Op::ResponseDuration => {
                put_num(out, ms_between(rec.start_instant, rec.first_upstream_byte))
            }
            Op::ResponseTxDuration => match rec.first_upstream_byte {
                Some(f) => put_num(out, ms_between(f, rec.end)),
                None => false,
            },
            _ => self.write_conn_op(out, op, rec),
        }
    }

    /// The connection operators: addresses, ports, TLS, ids (`write_op` hands them over).
    fn write_conn_op(&self, out: &mut String, op: &Op, rec: &AccessRecord) -> bool {
        match op {
            Op::UpstreamHost | Op::UpstreamRemoteAddress => put_addr(out, rec.upstream_host),
            Op::UpstreamRemoteAddressWithoutPort => put_str(
                out,
                rec.upstream_host.map(|a| a.ip().to_string()).as_deref(),
            ),
            Op::UpstreamRemotePort => put_num(out, rec.upstream_host.map(|a| u128::from(a.port()))),
            Op::UpstreamHostName => put_str(out, rec.upstream_host_name.as_deref()),
            Op::UpstreamCluster => put_str(out, rec.upstream_cluster.as_deref()),
            Op::UpstreamLocalAddress => put_addr(out, rec.upstream_local),
            Op::UpstreamLocalAddressWithoutPort => put_str(
                out,
                rec.upstream_local.map(|a| a.ip().to_string()).as_deref(),
            ),
            Op::UpstreamLocalPort => put_num(out, rec.upstream_local.map(|a| u128::from(a.port()))),
            Op::UpstreamTlsVersion => {
                put_str(out, rec.upstream_tls.as_ref().and_then(|t| t.version_str()))
            }
            Op::UpstreamTlsCipher => {
                put_str(out, rec.upstream_tls.as_ref().and_then(|t| t.cipher_str()))
            }
            Op::UpstreamPeerSubject => put_str(
                out,
                rec.upstream_tls
                    .as_ref()
                    .and_then(|t| t.peer_subject.get())
                    .map(String::as_str),
            ),
            Op::UpstreamPeerIssuer => put_str(
                out,
                rec.upstream_tls
                    .as_ref()
                    .and_then(|t| t.peer_issuer.get())
                    .map(String::as_str),
            ),
            Op::UpstreamRequestAttemptCount => put_num(out, Some(u128::from(rec.attempts))),
            Op::UpstreamConnectionId => put_num(out, rec.upstream_conn_id.map(u128::from)),
            Op::DownstreamLocalAddress => put_addr(out, Some(rec.downstream_local)),
            Op::DownstreamLocalAddressWithoutPort => {
                put_str(out, Some(&rec.downstream_local.ip().to_string()))
            }
            Op::DownstreamLocalPort => put_num(out, Some(u128::from(rec.downstream_local.port()))),
            Op::DownstreamRemoteAddress => put_addr(out, Some(rec.downstream_remote)),
            Op::DownstreamRemoteAddressWithoutPort => {
                put_str(out, Some(&rec.downstream_remote.ip().to_string()))
            }
            Op::DownstreamRemotePort => {
                put_num(out, Some(u128::from(rec.downstream_remote.port())))
            }
            Op::RequestedServerName => put_str(out, rec.requested_server_name.as_deref()),
            Op::RouteName => put_str(out, rec.route_name.as_deref()),
            Op::ConnectionId => put_num(out, Some(u128::from(rec.downstream_conn_id))),
            Op::Hostname => put_str(out, Some(&self.hostname)),
            Op::Environment(name) => put_str(out, std::env::var(name).ok().as_deref()),
            Op::LocalReplyBody => put_str(out, rec.local_reply_body.as_deref().map(str::trim_end)),
            // The request and response operators are written by `write_op`.
            _ => false,
        }
    }
}

fn ms_between(from: Instant, to: Option<Instant>) -> Option<u128> {
    to.map(|t| t.saturating_duration_since(from).as_millis())
}

/// Writes a number; `false` when there is none.
fn put_num(out: &mut String, v: Option<u128>) -> bool {
    match v {
        Some(v) => {
            push_u128(out, v);
            true
        }
        None => false,
    }
}

/// Writes an address; `false` when there is none.
fn put_addr(out: &mut String, a: Option<SocketAddr>) -> bool {
    match a {
        Some(a) => {
            push_addr(out, a);
            true
        }
        None => false,
    }
}

/// Writes a string; `false` when there is none or it is empty.
fn put_str(out: &mut String, v: Option<&str>) -> bool {
    match v {
        Some(v) if !v.is_empty() => {
            out.push_str(v);
            true
        }
        _ => false,
    }
}

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

/// Appends `v` in decimal (without `core::fmt`, which costs several times more per number).
/// Numbers that fit 64 bits (all but absurd durations) avoid 128-bit division.
pub(super) fn push_u128(out: &mut String, v: u128) {
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

/// Appends `v` zero-padded to `width` digits.
pub(super) fn push_padded(out: &mut String, v: u32, width: usize) {
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
pub(super) fn push_addr(out: &mut String, a: SocketAddr) {
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

pub(super) fn write_time(out: &mut String, t: SystemTime, f: &TimeFmt) {
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
