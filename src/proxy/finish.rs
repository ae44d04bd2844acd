//! How a request finishes: the access record while the response does not exist yet
//! ([`Pending`], whose drop still writes the line when the client goes away), the local replies
//! for failures and direct responses, the response body that streams the upstream's answer
//! downstream and completes the record exactly once ([`ProxyBody`]), and the metrics a request
//! updates when it ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, AccessRecord};
use crate::error::{Flags, ProxyError};
use crate::http::body::{BodyError, BodyProgress, UpstreamBody};
use crate::metrics::{ClusterStats, ListenerStats, Metrics, RequestReport};
use crate::route::HeaderOps;
use crate::runtime::ConnCtx;
use crate::upstream::Lease;

static X_EGRET_ERROR: HeaderName = HeaderName::from_static("x-egret-error");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A failure on the way to a response, with the request headers the log line may need.
pub(super) type Failure = (ProxyError, Option<HeaderMap>);

/// The access-log state of a request before its response exists; dropping it (the client went
/// away) still writes the line.
pub(super) struct Pending(Option<Box<Finish>>, Arc<AccessLog>);

impl Pending {
    pub(super) fn new(
        rec: AccessRecord,
        log: Arc<AccessLog>,
        telemetry: Option<Telemetry>,
    ) -> Pending {
        Pending(
            Some(Box::new(Finish {
                rec,
                log: log.clone(),
                lease: None,
                progress: None,
                telemetry,
            })),
            log,
        )
    }

    pub(super) fn telemetry(&mut self) -> Option<&mut Telemetry> {
        self.state().telemetry.as_mut()
    }

    /// The state; it is only absent after `take`, which ends its use. Should that invariant ever
    /// break, a fresh (unlogged) record keeps the request path panic-free.
    pub(super) fn state(&mut self) -> &mut Finish {
        let log = &self.1;
        self.0
            .get_or_insert_with(|| Box::new(Finish::orphan(log.clone())))
    }

    pub(super) fn rec_mut(&mut self) -> &mut AccessRecord {
        &mut self.state().rec
    }

    pub(super) fn set_progress(&mut self, p: Arc<BodyProgress>) {
        self.state().progress = Some(p);
    }

    pub(super) fn take(&mut self) -> Box<Finish> {
        match self.0.take() {
            Some(f) => f,
            None => Box::new(Finish::orphan(self.1.clone())),
        }
    }

    /// A local reply for `err`.
    pub(super) fn reply(
        &mut self,
        err: ProxyError,
        req_headers: Option<&HeaderMap>,
    ) -> Response<ProxyBody> {
        let mut finish = self.take();
        let body = err.body();
        let rec = &mut finish.rec;
        if let Some(h) = req_headers {
            finish.log.format.capture_request(rec, h);
        }
        rec.status = err.status();
        rec.flags |= err.flags();
        rec.details = Some(err.details().into());
        rec.transport_failure = err.transport_failure_reason();
        // Envoy logs the address it tried on a connect failure (%UPSTREAM_HOST% on UF lines).
        if let Some(addr) = err.connect_addr()
            && rec.upstream_host.is_none()
        {
            rec.upstream_host = Some(addr);
        }
        rec.local_reply_body = Some(body.clone());
        if !matches!(
            err,
            ProxyError::BlockAll { .. }
                | ProxyError::NoRoute { .. }
                | ProxyError::MissingHost
                | ProxyError::BadRequest(_)
                | ProxyError::Rejected { .. }
        ) {
            tracing::debug!(
                status = rec.status,
                code = err.code(),
                "{}",
                body.trim_end()
            );
        }
        let mut resp = Response::new(ProxyBody {
            inner: Inner::Full(Some(Bytes::from(body))),
            finish: None,
        });
        *resp.status_mut() = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(X_EGRET_ERROR.clone(), HeaderValue::from_static(err.code()));
        match &err {
            // Envoy marks a circuit breaker's answer so that nothing downstream retries it.
            ProxyError::Overflow { .. } => {
                h.insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
            }
            // A gRPC abort is a gRPC answer: HTTP 200, the status in `grpc-status`.
            ProxyError::FaultAbort {
                grpc_status: Some(g),
                ..
            } => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                h.insert(GRPC_STATUS.clone(), HeaderValue::from(*g));
                h.insert(
                    GRPC_MESSAGE.clone(),
                    HeaderValue::from_static("fault filter abort"),
                );
            }
            _ => {}
        }
        finish.log.format.capture_response(rec, h);
        resp.body_mut().finish = Some(finish);
        resp
    }

    /// A route's direct response or redirect.
    pub(super) fn direct(
        &mut self,
        status: u16,
        body: Option<String>,
        req_headers: &HeaderMap,
        location: Option<String>,
        response_ops: &HeaderOps,
    ) -> Response<ProxyBody> {
        let mut finish = self.take();
        let rec = &mut finish.rec;
        finish.log.format.capture_request(rec, req_headers);
        rec.status = status;
        rec.details = Some("direct_response".into());
        let bytes = body.map(Bytes::from);
        let mut resp = Response::new(ProxyBody {
            inner: Inner::Full(bytes.clone()),
            finish: None,
        });
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        if bytes.is_some() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, l);
        }
        response_ops.apply(resp.headers_mut());
        finish.log.format.capture_response(rec, resp.headers());
        resp.body_mut().finish = Some(finish);
        resp
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.complete(Outcome::DownstreamGone);
        }
    }
}

/// What is needed to finish a request: the record, the log, the pooled connection and the
/// metrics to update.
pub(super) struct Finish {
    pub(super) rec: AccessRecord,
    pub(super) log: Arc<AccessLog>,
    pub(super) lease: Option<Lease>,
    pub(super) progress: Option<Arc<BodyProgress>>,
    pub(super) telemetry: Option<Telemetry>,
}

/// The metrics a request updates when it finishes.
pub(super) struct Telemetry {
    pub(super) metrics: Arc<Metrics>,
    pub(super) listener: Arc<ListenerStats>,
    pub(super) cluster: Option<Arc<ClusterStats>>,
    /// `destination_service` / `destination_service_namespace`.
    pub(super) destination: (Arc<str>, Arc<str>),
    pub(super) upstream_start: Option<Instant>,
}

impl Telemetry {
    pub(super) fn new(metrics: &Arc<Metrics>, listener: Arc<ListenerStats>) -> Telemetry {
        Telemetry {
            metrics: metrics.clone(),
            listener,
            cluster: None,
            destination: {
                static UNKNOWN: std::sync::LazyLock<Arc<str>> =
                    std::sync::LazyLock::new(|| Arc::from("unknown"));
                (UNKNOWN.clone(), UNKNOWN.clone())
            },
            upstream_start: None,
        }
    }

    pub(super) fn finish(self, rec: &AccessRecord) {
        self.listener
            .downstream_rq_active
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.record_response(rec.status);
            if let (Some(start), Some(end)) = (self.upstream_start, rec.end) {
                c.rq_time.record(end.saturating_duration_since(start));
            }
        }
        self.metrics.record_request(RequestReport {
            destination_service: &self.destination.0,
            destination_namespace: &self.destination.1,
            code: rec.status,
            flags: rec.flags,
            duration: rec
                .end
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(rec.start_instant),
            request_bytes: rec.bytes_received,
            response_bytes: rec.bytes_sent,
            tcp: false,
        });
    }
}

pub(super) enum Outcome {
    /// The response was sent completely.
    Complete,
    /// The client went away before the response was complete.
    DownstreamGone,
    /// The upstream failed while the response body was streaming.
    UpstreamFailed(String),
}

impl Finish {
    pub(super) fn orphan(log: Arc<AccessLog>) -> Finish {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Finish {
            rec: AccessRecord::new(unspecified, unspecified, 0),
            log,
            lease: None,
            progress: None,
            telemetry: None,
        }
    }

    pub(super) fn complete(mut self: Box<Self>, outcome: Outcome) {
        let now = Instant::now();
        let rec = &mut self.rec;
        rec.end = Some(now);
        let request_done = self.progress.as_ref().is_none_or(|p| p.is_done());
        if let Some(p) = &self.progress {
            rec.bytes_received = p.bytes();
        }
        if request_done && rec.request_done.is_none() {
            rec.request_done = Some(now);
        }
        match outcome {
            Outcome::Complete => {
                if let Some(lease) = self.lease.take() {
                    lease.finish(request_done);
                }
            }
            Outcome::DownstreamGone => {
                rec.flags |= Flags::DC;
                if rec.status == 0 || rec.details.is_none() {
                    rec.details = Some("downstream_remote_disconnect".into());
                }
            }
            Outcome::UpstreamFailed(why) => {
                rec.flags |= Flags::UC;
                rec.details =
                    Some(format!("upstream_reset_after_response_started{{{why}}}").into());
            }
        }
        if let Some(t) = self.telemetry.take() {
            t.finish(&self.rec);
        }
        self.log.log(&self.rec);
    }
}

pub(super) enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The response body sent downstream: streamed from the upstream (or a local reply), counted,
/// and finishing the access record exactly once.
pub struct ProxyBody {
    pub(super) inner: Inner,
    pub(super) finish: Option<Box<Finish>>,
}

impl ProxyBody {
    /// The response went out whole: the access line, and the upstream connection back to the
    /// pool when egret's client read it.
    pub(super) fn complete(&mut self) {
        if let Some(mut f) = self.finish.take() {
            if let Inner::Upstream(b) = &mut self.inner
                && let Some(conn) = b.take_idle()
                && let Some(lease) = f.lease.as_mut()
            {
                lease.give_back(conn);
            }
            f.complete(Outcome::Complete);
        }
    }

    pub(super) fn is_end(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => match b.take() {
                Some(bytes) => {
                    if let Some(f) = this.finish.as_mut() {
                        f.rec.bytes_sent += bytes.len() as u64;
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                None => {
                    this.complete();
                    Poll::Ready(None)
                }
            },
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(f) = this.finish.as_mut() {
                        if let Some(d) = frame.data_ref() {
                            f.rec.bytes_sent += d.len() as u64;
                        } else if let Some(t) = frame.trailers_ref()
                            && f.log.format.wants_trailers()
                        {
                            let log = f.log.clone();
                            log.format.capture_trailers(&mut f.rec, t);
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    this.complete();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(f) = this.finish.take() {
                        f.complete(Outcome::UpstreamFailed(e.to_string()));
                    }
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper does not poll bodies it knows are empty (HEAD, 204, 304, content-length 0).
        if self.is_end() {
            self.complete();
        } else if let Some(f) = self.finish.take() {
            f.complete(Outcome::DownstreamGone);
        }
    }
}

/// Logs a request hyper rejected before egret saw it (a malformed request line or headers):
/// hyper has already answered it with a 4xx.
pub fn log_codec_error(log: &AccessLog, conn: &ConnCtx, err: &hyper::Error) {
    let mut rec = AccessRecord::new(conn.local, conn.remote, conn.id);
    let msg = err.to_string();
    let (status, details) = if msg.contains("too large") {
        (431, "http1.headers_too_large")
    } else if msg.contains("version") {
        (505, "http1.codec_error")
    } else {
        (400, "http1.codec_error")
    };
    rec.status = status;
    rec.flags = Flags::DPE;
    rec.details = Some(details.into());
    rec.end = Some(Instant::now());
    rec.local_reply_body = Some(msg);
    log.log(&rec);
}
