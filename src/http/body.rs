//! Body types on the proxy path. Bodies are streamed frame by frame in both directions (never
//! buffered whole), and counted for the access log.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Shared progress of a request body: bytes forwarded and whether it ended.
#[derive(Debug, Default)]
pub struct BodyProgress {
    pub bytes: AtomicU64,
    pub done: AtomicBool,
}

impl BodyProgress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

/// A request body as it arrives from the client: hyper's body, or `None` for a request that
/// has none (egret's own HTTP/1 reader only takes those; see `server`).
pub type Downstream = Option<Incoming>;

/// The request body sent upstream: the downstream body, counted; or a copy read whole, for
/// an attempt that may be repeated.
pub struct RequestBody {
    inner: Option<Incoming>,
    buffered: Option<Bytes>,
    progress: Arc<BodyProgress>,
}

impl RequestBody {
    pub fn new(inner: Downstream, progress: Arc<BodyProgress>) -> Self {
        let done = inner.as_ref().is_none_or(Body::is_end_stream);
        if done {
            progress.done.store(true, Ordering::Relaxed);
        }
        RequestBody {
            inner: inner.filter(|_| !done),
            buffered: None,
            progress,
        }
    }

    pub fn empty(progress: Arc<BodyProgress>) -> Self {
        progress.done.store(true, Ordering::Relaxed);
        RequestBody {
            inner: None,
            buffered: None,
            progress,
        }
    }

    /// Reads the whole body when its declared length (Content-Length) is at most `limit`, so
    /// the request can be sent again; the bytes are counted once, here. `None`: the body is
    /// longer, or its length unknown (chunked), and stays streamed.
    pub async fn buffer(&mut self, limit: u64) -> Result<Option<Bytes>, hyper::Error> {
        if let Some(b) = &self.buffered {
            return Ok(Some(b.clone()));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Some(Bytes::new()));
        };
        match inner.size_hint().exact() {
            Some(n) if n <= limit => {}
            _ => return Ok(None),
        }
        let Some(inner) = self.inner.take() else {
            return Ok(Some(Bytes::new()));
        };
        let bytes = http_body_util::BodyExt::collect(inner).await?.to_bytes();
        self.progress
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.progress.done.store(true, Ordering::Relaxed);
        self.buffered = Some(bytes.clone());
        Ok(Some(bytes))
    }

    /// A body read whole before (see [`RequestBody::buffer`]), for another attempt.
    pub fn replay(bytes: Bytes, progress: Arc<BodyProgress>) -> Self {
        RequestBody {
            inner: None,
            buffered: Some(bytes).filter(|b| !b.is_empty()),
            progress,
        }
    }

    /// The progress this body reports to.
    pub fn progress(&self) -> &Arc<BodyProgress> {
        &self.progress
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(b) = self.buffered.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.progress
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.progress.done.store(true, Ordering::Relaxed);
                self.inner = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(b) = &self.buffered {
            return SizeHint::with_exact(b.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A body error, whichever client produced it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from the upstream: egret's own HTTP/1.1 client (requests without a body) or
/// hyper's.
pub enum UpstreamBody {
    Relay(super::client::RelayBody),
    Hyper(Incoming),
}

impl UpstreamBody {
    /// The connection for the pool, when this body was read by egret's client to its end and
    /// the upstream allows reuse.
    pub fn take_idle(&mut self) -> Option<super::client::RawConn> {
        match self {
            UpstreamBody::Relay(b) => b.take_idle(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Relay(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Relay(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Relay(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}
