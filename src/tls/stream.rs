//! The client transport under rustls: [`Recording`] wraps the socket of an upstream TLS
//! connection, keeps the first bytes the peer sent (for the plaintext-HTTP diagnosis) and reads
//! ahead a whole TLS record at a time. It sits on every upstream TLS read, so it allocates
//! nothing per read and dispatches statically. [`UpstreamIo`] is what an upstream connection
//! is once open: plain TCP, or TLS over TCP through `Recording`. It lives here, below the HTTP
//! client that reads from it and the upstream wing that opens it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most a read-ahead takes from the socket at once: one TLS record of the largest size
/// (16 KiB of plaintext plus the record header, padding and tag) and the start of the next.
pub(super) const AHEAD: usize = 18 * 1024;

/// The socket under a TLS client session. It remembers the first bytes the peer sent, so a
/// plaintext answer to a ClientHello can be named in the error. And it reads ahead: rustls asks
/// for at most 4 KiB per read, so a 16 KiB record would cost five `recvfrom` calls. Once a read
/// fills what rustls asked for (more is likely waiting), reads take up to [`AHEAD`] bytes into a
/// buffer of this wrapper's and serve rustls from it: one system call per record. Connections
/// that carry only small messages never fill the ask and never allocate the buffer.
pub struct Recording<IO> {
    inner: IO,
    first: [u8; 32],
    len: u8,
    /// (`pub(super)` for the read-ahead test.)
    pub(super) ahead: Vec<u8>,
    pos: usize,
    end: usize,
    /// A direct read filled the caller's buffer: read ahead from now on.
    full: bool,
}

impl<IO> Recording<IO> {
    pub fn new(inner: IO) -> Self {
        Recording {
            inner,
            first: [0; 32],
            len: 0,
            ahead: Vec::new(),
            pos: 0,
            end: 0,
            full: false,
        }
    }

    pub fn first_bytes(&self) -> &[u8] {
        &self.first[..usize::from(self.len)]
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Copies what is read ahead into `out`; false when nothing is.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.pos == self.end {
            return false;
        }
        let n = (self.end - self.pos).min(out.remaining());
        out.put_slice(&self.ahead[self.pos..self.pos + n]);
        self.pos += n;
        true
    }
}

impl<IO: AsyncRead + Unpin> Recording<IO> {
    fn read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.serve(out) {
            return Poll::Ready(Ok(()));
        }
        let asked = out.remaining();
        if (self.ahead.is_empty() && !self.full) || asked >= AHEAD {
            let before = out.filled().len();
            let r = Pin::new(&mut self.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                self.full = asked > 0 && out.filled().len() - before == asked;
            }
            return r;
        }
        if self.ahead.is_empty() {
            self.ahead = vec![0; AHEAD];
        }
        let mut into = ReadBuf::new(&mut self.ahead);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut into);
        if let Poll::Ready(Ok(())) = r {
            self.end = into.filled().len();
            self.pos = 0;
            self.serve(out);
        }
        r
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Recording<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = this.read(cx, buf);
        let have = usize::from(this.len);
        if have < this.first.len() {
            let new = &buf.filled()[before..];
            let n = new.len().min(this.first.len() - have);
            this.first[have..have + n].copy_from_slice(&new[..n]);
            this.len = (have + n) as u8;
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Recording<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An upstream transport: plain TCP or TLS over TCP.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<Recording<TcpStream>>>),
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
