//! egret's own HTTP/1.1 server loop for plaintext listeners: the sidecar's hot path.
//!
//! Why not hyper for everything: hyper keeps an 8 KiB read buffer and an 8 KiB write buffer
//! for the whole life of every connection, and arms (and allocates) a header-read timer per
//! request. A sidecar holds many idle keep-alive connections from its app, so this loop holds
//! **no buffer while a connection is idle**: it waits for readability, reads the request head
//! into a buffer it frees after the response, and writes the response head and small bodies in
//! one write.
//!
//! It takes only the plain case: an HTTP/1.1 request without a body (no `Content-Length` other
//! than 0, no `Transfer-Encoding`), without `Expect` or `Upgrade`, and not `CONNECT`. Anything
//! else, including every malformed request, is handed to hyper together with the bytes already
//! read ([`Handoff`]), and hyper serves the rest of that connection exactly as before (same
//! error replies, same codec-error log lines). So request framing with a body, where request
//! smuggling lives, stays with hyper's tested code.
//!
//! Response framing follows RFC 9112 6.3: no body for `HEAD`, 1xx, 204 and 304; a known length
//! is sent with `Content-Length`; an unknown one with chunked encoding (trailers included).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::body::Downstream;
use super::limit::ConnSlot;
use super::wire::{
    push_date, push_headers, push_hex, recycle_header_map, spare_header_map, write_all_vectored,
};

/// Headers per request, as hyper's default (more: hyper answers 431).
const MAX_HEADERS: usize = 100;
/// Envoy's default limit on a request head (`max_request_headers_kb: 60`); `--max-request-headers-kb`
/// changes it. A larger head is answered `431` (by hyper, which gets the connection and the same
/// limit), on every path: this loop, hyper's HTTP/1 and HTTP/2 (`max_header_list_size`).
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 60 * 1024;
/// First read size; a head that does not fit grows the buffer.
const READ_CHUNK: usize = 4096;
/// Time allowed for a request head once its first byte arrived.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Envoy's default HTTP connection idle timeout (HttpConnectionManager
/// `common_http_protocol_options.idle_timeout`): an idle keep-alive connection is closed after it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Response body frames up to this size are copied next to the head and written together.
const COALESCE: usize = 16 * 1024;

/// A connection this loop does not serve (further): the socket, with the bytes already read
/// from it in front, for hyper.
pub struct Handoff {
    pre: Bytes,
    io: TcpStream,
}

/// Serves HTTP/1.1 requests on a plaintext connection until it closes (`None`), or until a
/// request needs hyper (`Some`: serve the rest of the connection with hyper).
///
/// `handle` answers one request; it is called with each request in turn (the proxy passes a
/// closure that loads the current runtime and routes). `stop` turning true ends the connection
/// between requests, after the response in flight. A head that reaches `max_head` bytes
/// unfinished is handed to hyper, which has the same limit and answers `431`. With a `slot`
/// (the listener has `--max-connections`), the connection is registered as idle while it waits
/// between requests, and closes if the listener picks it to make room.
pub async fn serve<H, F, B>(
    mut stream: TcpStream,
    mut handle: H,
    stop: &mut watch::Receiver<bool>,
    max_head: usize,
    slot: Option<&ConnSlot>,
) -> Option<Handoff>
where
    H: FnMut(Request<Downstream>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Bytes read but not yet parsed (a pipelined request). Empty, and unallocated, while idle.
    let mut buf = BytesMut::new();
    // The idle timer is registered once and moved only when it fires early: a new timer per
    // idle wait costs a timer-wheel insert and removal per request, and sometimes a wake-up
    // write to the runtime's eventfd.
    let mut idle_since = Instant::now();
    let idle = tokio::time::sleep_until(idle_since + IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        if buf.is_empty() {
            buf = BytesMut::new();
            let idle_mark = slot.map(ConnSlot::idle);
            let evicted = {
                let evicted = async {
                    match &idle_mark {
                        Some(i) => i.evicted().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(evicted);
                loop {
                    tokio::select! {
                        biased;
                        () = stopped(stop) => return None,
                        () = &mut evicted => break true,
                        r = stream.readable() => {
                            if r.is_err() {
                                return None;
                            }
                            break false;
                        }
                        () = &mut idle => {
                            let due = idle_since + IDLE_TIMEOUT;
                            if Instant::now() >= due {
                                return None;
                            }
                            idle.as_mut().reset(due);
                        }
                    }
                }
            };
            // Chosen to make room (also just as the client sent something: the keep-alive race
            // every client must handle; nothing of the request was read): close.
            if evicted || idle_mark.is_some_and(|i| !i.busy()) {
                let _ = stream.shutdown().await;
                return None;
            }
        }
        let (req, mut keep_alive) = match read_head(&mut stream, &mut buf, max_head).await {
            Head::Request(req, keep_alive) => (*req, keep_alive),
            Head::Closed => return None,
            Head::Handoff(pre) => return Some(Handoff { pre, io: stream }),
        };
        let is_head = req.method() == Method::HEAD;
        let handling = Box::pin(handle(req));
        // While the upstream works, a client that closes its connection cancels the request
        // (logged DC by the request's own drop), as hyper and Envoy do.
        let resp = tokio::select! {
            resp = handling => resp,
            () = client_gone(&stream) => return None,
        };
        if connection_close(resp.headers()) {
            keep_alive = false;
        }
        if *stop.borrow() {
            keep_alive = false;
        }
        if write_response(&mut stream, resp, is_head, keep_alive)
            .await
            .is_err()
            || !keep_alive
        {
            let _ = stream.shutdown().await;
            return None;
        }
        idle_since = Instant::now();
    }
}

/// Resolves once `stop` turns true (or its sender is gone). The stop signal of the accept loops
/// and of this loop; it lives here, the lowest floor that waits on it.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Resolves when the client closed (or reset) its connection; pends forever once it sent more
/// bytes (a pipelined request, read after this response).
async fn client_gone(stream: &TcpStream) {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

enum Head {
    Request(Box<Request<Downstream>>, bool),
    /// The client closed, went silent past the header timeout, or failed.
    Closed,
    /// Not for this loop: everything read so far, for hyper.
    Handoff(Bytes),
}

/// Reads until a whole request head is in `buf`, and turns it into a request.
///
/// Reads go through `AsyncRead` on purpose: a short read tells tokio the socket is drained, so
/// neither the next read nor the disconnect watch makes a syscall that can only say EAGAIN.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut, max_head: usize) -> Head {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Partial => {}
                Parsed::Request(req, keep_alive) => return Head::Request(req, keep_alive),
                Parsed::Handoff => return Head::Handoff(std::mem::take(buf).freeze()),
            }
            if buf.len() >= max_head {
                return Head::Handoff(std::mem::take(buf).freeze());
            }
        }
        buf.reserve(READ_CHUNK);
        // The header timer is armed only when a read has to wait.
        let read = match stream.read_buf(buf).now_or_never() {
            Some(r) => r,
            None => {
                let at = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
                match tokio::time::timeout_at(at, stream.read_buf(buf)).await {
                    Ok(r) => r,
                    Err(_) => return Head::Closed,
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

pub(crate) enum Parsed {
    Partial,
    Request(Box<Request<Downstream>>, bool),
    Handoff,
}

/// A header value's place in the head.
struct Slot {
    name: HeaderName,
    start: usize,
    end: usize,
}

/// Parses the head at the front of `buf`. On success the head is split off `buf` (what
/// follows stays for the next request) and header values share its allocation.
pub(crate) fn parse(buf: &mut BytesMut) -> Parsed {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut raw);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    if parsed.version != Some(1) {
        return Parsed::Handoff;
    }
    let Some(Ok(method)) = parsed.method.map(|m| Method::from_bytes(m.as_bytes())) else {
        return Parsed::Handoff;
    };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        (
            s.as_ptr() as usize - base,
            s.as_ptr() as usize - base + s.len(),
        )
    };
    let Some(path) = parsed.path.map(|p| offset(p.as_bytes())) else {
        return Parsed::Handoff;
    };
    let mut keep_alive = true;
    let mut slots = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Handoff;
        };
        if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && h.value != b"0")
        {
            return Parsed::Handoff;
        }
        if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Handoff;
                }
            }
        }
        let (start, end) = offset(h.value);
        slots.push(Slot { name, start, end });
    }
    let head = buf.split_to(len).freeze();
    let rebuild = |buf: &mut BytesMut| {
        // Put the head back in front of what follows it, for hyper.
        let mut all = BytesMut::with_capacity(head.len() + buf.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(buf);
        *buf = all;
        Parsed::Handoff
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.1)) else {
        return rebuild(buf);
    };
    // Room for the fields the proxy adds (x-request-id, x-forwarded-proto, the timeout hint).
    let mut headers = spare_header_map(slots.len() + 4);
    for s in slots {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(s.start..s.end)) else {
            return rebuild(buf);
        };
        headers.append(s.name, value);
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(Box::new(req), keep_alive)
}

fn connection_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body on the wire (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Encodes the status line and headers, choosing the body framing.
fn encode_head<B: Body>(
    out: &mut Vec<u8>,
    resp: &Response<B>,
    is_head: bool,
    keep_alive: bool,
) -> Framing {
    let status = resp.status();
    let headers = resp.headers();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut skip_length = false;
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else {
        // A Content-Length that does not parse is replaced by the real framing.
        skip_length = headers.contains_key(header::CONTENT_LENGTH);
        match resp.body().size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(crate::text::decimal(&mut [0; 20], n));
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    push_headers(out, headers, skip_length.then_some(&header::CONTENT_LENGTH));
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !connection_close(headers) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes a response. An error means the connection must close (the client went away, or the
/// body failed or broke its declared length); the access line is written either way.
async fn write_response<B>(
    stream: &mut TcpStream,
    resp: Response<B>,
    is_head: bool,
    keep_alive: bool,
) -> std::io::Result<()>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut out = Vec::with_capacity(512);
    let framing = encode_head(&mut out, &resp, is_head, keep_alive);
    let (parts, mut body) = resp.into_parts();
    recycle_header_map(parts.headers);
    if framing == Framing::None {
        // Dropping the body finishes its access line (hyper does not poll these either).
        drop(body);
        return stream.write_all(&out).await;
    }
    let chunked = framing == Framing::Chunked;
    let mut trailers_sent = false;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // Frames ready now go out with what is queued; otherwise flush, then wait.
        let next = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // What arrived goes out before the close, so the client sees a short body
                // (and its framing tells it so) rather than nothing.
                if !out.is_empty() {
                    let _ = stream.write_all(&out).await;
                }
                return Err(std::io::Error::other(e));
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if chunked
                    && !trailers_sent
                    && let Ok(trailers) = frame.into_trailers()
                {
                    out.extend_from_slice(b"0\r\n");
                    push_headers(&mut out, &trailers, None);
                    out.extend_from_slice(b"\r\n");
                    trailers_sent = true;
                }
                continue;
            }
        };
        if data.is_empty() || trailers_sent {
            continue;
        }
        if chunked {
            push_hex(&mut out, data.len());
            out.extend_from_slice(b"\r\n");
        } else {
            let n = data.len() as u64;
            if n > left {
                return Err(std::io::Error::other(
                    "response body longer than its content-length",
                ));
            }
            left -= n;
        }
        let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
            out.extend_from_slice(tail);
        } else {
            write_all_vectored(
                stream,
                &mut [IoSlice::new(&out), IoSlice::new(&data), IoSlice::new(tail)],
            )
            .await?;
            out.clear();
        }
    }
    if chunked && !trailers_sent {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    if matches!(framing, Framing::Length(_)) && left != 0 {
        return Err(std::io::Error::other(
            "response body shorter than its content-length",
        ));
    }
    Ok(())
}

impl Handoff {
    /// The socket, reading the bytes taken from it first.
    pub fn into_io(self) -> Rewind {
        Rewind {
            pre: self.pre,
            io: self.io,
        }
    }
}

/// A socket with bytes already read from it put back in front.
pub struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
