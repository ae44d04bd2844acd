//! Opening one upstream transport: TCP (connect timeout, no-delay, keep-alive) and, when the
//! cluster has a TLS policy, the TLS handshake with SNI. One timeout covers both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{AttemptError, TlsFailure};
use crate::tls::{ConnTls, Recording, TlsContext};

/// An upstream transport: plain TCP or TLS over TCP.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<Recording<ReadAhead<TcpStream>>>>),
}

/// How a connection was made, for logs and for classifying later failures.
#[derive(Debug)]
pub struct Transport {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<Arc<ConnTls>>,
}

/// Opens a connection to `addr`; with `tls`, performs the handshake for `server_name`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<(&TlsContext, ServerName<'static>)>,
    alpn: &[&[u8]],
) -> Result<(UpstreamIo, Transport), AttemptError> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.map_err(classify_connect)?;
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(300))
                .with_interval(Duration::from_secs(75)),
        );
        let local = stream.local_addr().map_err(AttemptError::Io)?;
        match tls {
            None => Ok((
                UpstreamIo::Plain(stream),
                Transport {
                    remote: addr,
                    local,
                    tls: None,
                },
            )),
            Some((ctx, name)) => {
                let (s, seen) = ctx
                    .connect(Recording::new(ReadAhead::new(stream)), name, alpn)
                    .await
                    .map_err(AttemptError::Tls)?;
                Ok((
                    UpstreamIo::Tls(Box::new(s)),
                    Transport {
                        remote: addr,
                        local,
                        tls: Some(seen),
                    },
                ))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Timeout(timeout)),
    }
}

fn classify_connect(e: io::Error) -> AttemptError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => AttemptError::Refused,
        io::ErrorKind::TimedOut => AttemptError::Timeout(Duration::ZERO),
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => AttemptError::Unreachable(e.to_string()),
        _ => AttemptError::Io(e),
    }
}

/// Finds a TLS error in an error chain (hyper error -> io::Error -> rustls::Error) and explains it
/// with the connection's TLS context. Used for failures after the handshake, such as a TLS 1.3
/// server that rejects the client certificate when it reads it.
pub fn tls_failure_in(
    err: &(dyn std::error::Error + 'static),
    ctx: Option<&TlsContext>,
    seen: Option<&ConnTls>,
    server: &str,
) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(match (ctx, seen) {
                (Some(ctx), Some(seen)) => ctx.classify_rustls(r, seen, server),
                _ => TlsFailure {
                    code: "tls.error",
                    detail: format!("TLS with {server} failed: {r}"),
                },
            });
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(match (ctx, seen) {
                (Some(ctx), Some(seen)) => ctx.classify_rustls(r, seen, server),
                _ => TlsFailure {
                    code: "tls.error",
                    detail: format!("TLS with {server} failed: {r}"),
                },
            });
        }
        cur = e.source();
    }
    None
}

/// The most a read-ahead takes from the socket at once: one TLS record of the largest size
/// (16 KiB of plaintext plus the record header, padding and tag) and the start of the next.
const AHEAD: usize = 18 * 1024;

/// The socket under an upstream TLS session. rustls asks for at most 4 KiB per read, so a
/// 16 KiB record costs five `recvfrom` calls. When a read fills what the caller asked for
/// (more is likely waiting), the next read takes up to [`AHEAD`] bytes into a buffer of its own
/// and serves the caller from it: one system call per record. Small responses never fill the
/// caller's buffer, so connections that carry only those never allocate it; a connection that
/// carried a large body keeps it (and reads through it) for the rest of its life.
pub struct ReadAhead<IO> {
    inner: IO,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// A direct read filled the caller's buffer: read ahead from now on.
    full: bool,
}

impl<IO> ReadAhead<IO> {
    pub fn new(inner: IO) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            full: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Copies what is buffered into `out`; false when nothing was.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.pos == self.len {
            return false;
        }
        let n = (self.len - self.pos).min(out.remaining());
        out.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.serve(out) {
            return Poll::Ready(Ok(()));
        }
        let asked = out.remaining();
        if (this.buf.is_empty() && !this.full) || asked >= AHEAD {
            let before = out.filled().len();
            let r = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                this.full = asked > 0 && out.filled().len() - before == asked;
            }
            return r;
        }
        if this.buf.is_empty() {
            this.buf = vec![0; AHEAD];
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                this.pos = 0;
                this.len = n;
                this.serve(out);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A socket that hands out whatever is asked for, up to what it holds (the first read at
    /// most `first` bytes: a short answer), and counts reads.
    struct Counted {
        data: Vec<u8>,
        at: usize,
        first: usize,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let limit = if this.reads == 0 {
                this.first
            } else {
                usize::MAX
            };
            this.reads += 1;
            let n = out.remaining().min(this.data.len() - this.at).min(limit);
            out.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn read_in_4k(r: &mut ReadAhead<Counted>, total: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < total {
            let n = r.read(&mut chunk).await.expect("read");
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_reads_go_direct_and_large_ones_read_ahead_without_losing_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = ReadAhead::new(Counted {
            data: data.clone(),
            at: 0,
            first: 100,
            reads: 0,
        });
        // A short answer does not fill the caller's buffer: read directly, nothing allocated.
        let mut small = [0u8; 4096];
        assert_eq!(r.read(&mut small).await.expect("read"), 100);
        assert!(r.buf.is_empty());
        // A read that fills the caller's 4 KiB switches to read-ahead: the rest of the stream
        // arrives in AHEAD-sized socket reads, byte for byte.
        let rest = read_in_4k(&mut r, data.len() - 100).await;
        assert_eq!(&rest[..], &data[100..]);
        let socket_reads = r.get_ref().reads;
        let expected = 2 + (data.len() - 100 - 4096).div_ceil(AHEAD);
        assert_eq!(
            socket_reads, expected,
            "socket reads for 100 kB in 4 KiB asks"
        );
        // End of stream passes through as a zero-length read.
        assert_eq!(r.read(&mut small).await.expect("read"), 0);
    }
}
