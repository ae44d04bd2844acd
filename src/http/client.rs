//! egret's own HTTP/1.1 client for requests without a body: the upstream half of the hot path
//! (`server` is the downstream half).
//!
//! Why not hyper's client for these: hyper drives every upstream connection from a task of its
//! own, so a request crosses tasks twice (the request over a channel to the connection task, the
//! response head back over a oneshot) and every body frame crosses once more; it also parses the
//! response into a buffer it owns and copies each body frame out. Here the request's own task
//! writes the head, parses the response head in place (header values share the read buffer),
//! and the response body is read straight from the connection when the downstream side asks for
//! the next frame. An idle pooled connection holds no buffer.
//!
//! Requests with a body keep hyper's client: request-body streaming, `Expect`, and the write and
//! read halves running at once stay in hyper's tested code. A pooled connection made here can be
//! handed to hyper for such a request; a hyper connection never comes back.
//!
//! Response framing follows RFC 9112 6.3: no body for `HEAD`, 1xx, 204 and 304; a
//! `Transfer-Encoding` that ends in `chunked` is decoded (its `Content-Length`, if any, is dropped
//! and the connection is not reused); another `Transfer-Encoding`, or neither header, means the
//! body runs to the end of the connection; conflicting `Content-Length` values are a protocol
//! error. Interim 1xx responses (100, 103) are skipped; a 101 is a protocol error, since egret
//! never asks the upstream to switch protocols.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::metrics::ClusterStats;
use crate::tls::UpstreamIo;

use super::wire::{push_headers, spare_header_map};

/// Headers per response (hyper's default).
const MAX_HEADERS: usize = 100;
/// The largest response head (the hyper client's `max_buf_size` in egret).
const MAX_HEAD: usize = 1 << 20;
/// Read size while waiting for a response head.
const HEAD_CHUNK: usize = 8 * 1024;
/// Read size for body bytes.
const BODY_CHUNK: usize = 16 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// Counts a connection in `upstream_cx_active` while it lives.
pub struct ActiveGuard(Arc<ClusterStats>);

impl ActiveGuard {
    pub fn new(stats: &Arc<ClusterStats>) -> ActiveGuard {
        stats.cx_active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(stats.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.cx_active.fetch_sub(1, Ordering::Relaxed);
        if self.0.rq_pending_active.load(Ordering::Relaxed) > 0 {
            self.0.capacity.notify_one();
        }
    }
}

/// An upstream connection this client drives.
pub struct RawConn {
    io: UpstreamIo,
    /// Bytes read and not consumed yet; empty (unallocated) while the connection is idle.
    buf: BytesMut,
    active: ActiveGuard,
}

/// Why an exchange failed before a usable response head.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection failed (including TLS errors, inside the `io::Error`).
    Io {
        error: io::Error,
        response_started: bool,
    },
    /// The upstream closed the connection.
    Closed { response_started: bool },
    /// The response is not valid HTTP/1.1.
    Protocol(String),
}

impl ExchangeError {
    /// Whether not one byte of a response arrived (a stale pooled connection, typically).
    pub fn nothing_received(&self) -> bool {
        match self {
            ExchangeError::Io {
                response_started, ..
            }
            | ExchangeError::Closed { response_started } => !response_started,
            ExchangeError::Protocol(_) => false,
        }
    }

    pub fn is_protocol(&self) -> bool {
        matches!(self, ExchangeError::Protocol(_))
    }
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io { error, .. } => write!(f, "{error}"),
            ExchangeError::Closed { .. } => {
                f.write_str("connection closed before message completed")
            }
            ExchangeError::Protocol(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExchangeError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A response head, ready for the proxy.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

impl RawConn {
    pub fn new(io: UpstreamIo, active: ActiveGuard) -> RawConn {
        RawConn {
            io,
            buf: BytesMut::new(),
            active,
        }
    }

    /// The transport and its place in `upstream_cx_active`, for hyper.
    pub fn into_parts(self) -> (UpstreamIo, ActiveGuard) {
        (self.io, self.active)
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. Never waits.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Sends a request without a body and reads the response head. The body follows from the
    /// returned [`RelayBody`], which gives the connection back when it is reusable.
    pub async fn send(
        mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extra: &[u8],
    ) -> Result<(ResponseHead, RelayBody), ExchangeError> {
        let mut out = Vec::with_capacity(128 + extra.len() + headers.len() * 48);
        encode_request(&mut out, method, path, headers, extra);
        let io_err = |error, response_started| ExchangeError::Io {
            error,
            response_started,
        };
        self.io
            .write_all(&out)
            .await
            .map_err(|e| io_err(e, false))?;
        self.io.flush().await.map_err(|e| io_err(e, false))?;
        drop(out);
        let mut started = false;
        loop {
            if !self.buf.is_empty() {
                started = true;
                if let Some((head, framing, keep_alive)) =
                    parse_head(&mut self.buf, method).map_err(ExchangeError::Protocol)?
                {
                    if head.status.is_informational() {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(ExchangeError::Protocol(
                                "101 Switching Protocols to a request that asked for no upgrade"
                                    .into(),
                            ));
                        }
                        continue;
                    }
                    let body = RelayBody {
                        conn: Some(self),
                        framing,
                        keep_alive,
                        idle: None,
                    };
                    return Ok((head, body));
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(ExchangeError::Protocol(format!(
                        "response headers larger than {} KiB",
                        MAX_HEAD / 1024
                    )));
                }
            }
            self.buf.reserve(HEAD_CHUNK);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(ExchangeError::Closed {
                        response_started: started,
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(io_err(e, started)),
            }
        }
    }
}

/// `METHOD path HTTP/1.1`, the headers, and `content-length: 0` for methods that normally carry
/// a body (as hyper's client does, so origins that insist on a length get one).
/// `extra`: header lines (each ending in CRLF) written after `headers`.
fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    extra: &[u8],
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_headers(out, headers, None);
    out.extend_from_slice(extra);
    let bodyless_method = matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !bodyless_method && !headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug)]
pub(crate) enum Framing {
    /// No body (or all of it delivered).
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// A header value's place in the head.
struct Slot {
    name: HeaderName,
    start: usize,
    end: usize,
}

pub(crate) type Parsed = Option<(ResponseHead, Framing, bool)>;

/// Hop-by-hop fields (RFC 9110 7.6.1), the same list `proxy::strip_hop_by_hop` removes: they
/// describe this connection only, so they are read for framing and never stored.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"trailer",
];

/// Parses a response head at the front of `buf` (`Ok(None)`: not complete yet). On success the
/// head is split off `buf`, and header values share its allocation. Hop-by-hop fields (and
/// those `Connection` names) are left out of the returned headers.
pub(crate) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, String> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut raw);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid HTTP status code {code}"))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // The fields that decide framing and reuse, read once from the raw head.
    let mut close = false;
    let mut listed: Vec<&[u8]> = Vec::new();
    let mut te = false;
    let mut chunked_last = false;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let tokens = || {
            h.value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
        };
        if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens() {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                    listed.push(t);
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            if let Some(last) = tokens().next_back() {
                chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            for part in h.value.split(|&b| b == b',') {
                let n = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "invalid content-length {:?}",
                            String::from_utf8_lossy(h.value)
                        )
                    })?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length values".into());
                }
                length = Some(n);
            }
        }
    }
    // One `content-length` is passed on as sent; duplicates become one; with a
    // `Transfer-Encoding` it is dropped (the encoding delimits the body).
    let keep_length = !te && lengths == 1;
    let base = buf.as_ptr() as usize;
    let mut slots = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
            || (!keep_length && name.eq_ignore_ascii_case(b"content-length"))
            || listed
                .iter()
                .any(|l| name.eq_ignore_ascii_case(l) && !name.eq_ignore_ascii_case(b"host"))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name {:?}", h.name))?;
        let start = h.value.as_ptr() as usize - base;
        slots.push(Slot {
            name,
            start,
            end: start + h.value.len(),
        });
    }
    let head = buf.split_to(len).freeze();
    let mut headers = spare_header_map(slots.len() + 1);
    for s in slots {
        let value = HeaderValue::from_maybe_shared(head.slice(s.start..s.end))
            .map_err(|_| format!("invalid value for header {}", s.name))?;
        headers.append(s.name, value);
    }
    if !te
        && lengths > 1
        && let Some(n) = length
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let mut keep_alive = version == Version::HTTP_11 && !close;
    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if te {
        if length.is_some() {
            // Both headers: a smuggling pattern; the body is delimited by the encoding and
            // the connection is not trusted again.
            keep_alive = false;
        }
        if chunked_last {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => {
                keep_alive = false;
                Framing::Close
            }
        }
    };
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
        },
        framing,
        keep_alive,
    )))
}

/// One step of body decoding over the bytes buffered so far.
enum Step {
    Frame(Frame<Bytes>),
    End,
    /// More bytes are needed.
    More,
}

fn bad_chunk(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid chunked response body: {why}"),
    )
}

impl Framing {
    fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match self {
                Framing::Done => return Ok(Step::End),
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    let data = buf.split_to(n).freeze();
                    if *left == 0 {
                        *self = Framing::Done;
                    }
                    return Ok(Step::Frame(Frame::data(data)));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Frame(Frame::data(buf.split().freeze())));
                }
                Framing::Chunked(state) => match *state {
                    Chunk::Size => {
                        let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(bad_chunk("chunk-size line too long"));
                            }
                            return Ok(Step::More);
                        };
                        let line = buf.split_to(eol + 1);
                        let line = line
                            .strip_suffix(b"\r\n")
                            .ok_or_else(|| bad_chunk("bare LF"))?;
                        let size = line.split(|&b| b == b';').next().unwrap_or(b"");
                        let size = size.trim_ascii_end();
                        if size.is_empty() || size.len() > 16 {
                            return Err(bad_chunk("bad chunk size"));
                        }
                        let mut n: u64 = 0;
                        for &b in size {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or_else(|| bad_chunk("bad chunk size"))?;
                            n = (n << 4) | u64::from(d);
                        }
                        *state = if n == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(n)
                        };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        let rest = left - n as u64;
                        *state = if rest == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest)
                        };
                        return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(bad_chunk("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            *self = Framing::Done;
                            return Ok(Step::End);
                        }
                        let Some(end) = find(buf, b"\r\n\r\n") else {
                            if buf.len() > MAX_TRAILERS {
                                return Err(bad_chunk("trailers too large"));
                            }
                            return Ok(Step::More);
                        };
                        let section = buf.split_to(end + 4).freeze();
                        *self = Framing::Done;
                        let trailers = parse_trailers(&section)?;
                        return Ok(Step::Frame(Frame::trailers(trailers)));
                    }
                },
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_trailers(section: &Bytes) -> io::Result<HeaderMap> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (_, fields) = match httparse::parse_headers(section, &mut raw) {
        Ok(httparse::Status::Complete(r)) => r,
        _ => return Err(bad_chunk("invalid trailer section")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| bad_chunk("invalid trailer name"))?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(f.value))
            .map_err(|_| bad_chunk("invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response body read straight from the upstream connection.
pub struct RelayBody {
    /// The connection, while the body is being read.
    conn: Option<RawConn>,
    framing: Framing,
    /// The response allows reuse (HTTP/1.1, no `Connection: close`, self-delimited).
    keep_alive: bool,
    /// The connection, once the body ended and it can serve another request.
    idle: Option<RawConn>,
}

impl RelayBody {
    /// The connection for the pool, once the whole body was read and the upstream allows
    /// reuse. `None` otherwise (the connection is closed when the body is dropped).
    pub fn take_idle(&mut self) -> Option<RawConn> {
        if self.framing.is_done() && self.keep_alive {
            self.finish_conn();
        }
        self.idle.take()
    }

    fn finish_conn(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            conn.buf = BytesMut::new();
            self.idle = Some(conn);
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.step(&mut conn.buf) {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Step::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(Step::End) => {
                    this.finish_conn();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
            }
            let want = match this.framing {
                Framing::Length(n) => (n as usize).min(BODY_CHUNK),
                _ => BODY_CHUNK,
            };
            if conn.buf.capacity() - conn.buf.len() < want.min(1024) {
                conn.buf.reserve(want);
            }
            let read = ready!(pin!(conn.io.read_buf(&mut conn.buf)).poll(cx));
            match read {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Done;
                    this.keep_alive = false;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the response body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
