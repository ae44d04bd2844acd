//! One HTTP request to a cluster over as many attempts as the route's retry policy allows
//! (Envoy's router retry state): which address each attempt goes to (load balancing first,
//! then addresses not tried yet, never an ejected one unless the cluster panics), the jittered
//! exponential back-off, the retry budget (`maxRetries`), outlier detection fed with every
//! attempt's outcome, and `x-envoy-attempt-count` on each attempt. The per-try timeout is
//! applied by `send` once an attempt has its connection, as Envoy starts it when the pool is
//! ready.
//!
//! When nothing fails this costs one header insert: a copy of the request is kept only when
//! the policy can retry after the request went out (`5xx`, `reset`, status codes...); connect
//! failures need none, since a request that never left comes back with the error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::config::DEFAULT_MAX_RETRIES;
use crate::error::{Flags, ProxyError};
use crate::http::body::{BodyProgress, RequestBody};
use crate::route::{AttemptFailure, RetryPolicy};

use super::endpoints::{Addrs, random_unit};
use super::outlier::Outcome;
use super::pool::{ClusterPool, UpstreamCtx};
use super::send::{Attempt, Exchange, SendError, Sent};

/// The largest request body kept for another attempt (Envoy's default
/// `per_request_buffer_limit_bytes` is 1 MiB; 64 KiB is enough for API calls and bounds memory).
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A copy of a request for another attempt.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    progress: Arc<BodyProgress>,
}

impl Replay {
    fn request(&self) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::replay(
            self.body.clone(),
            self.progress.clone(),
        ));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// One retry counted in the cluster's retry budget while it runs.
struct RetryGuard<'a>(&'a AtomicU64);

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every attempt of one request shares, beyond [`Attempt`].
struct Plan<'a, 'r> {
    to: Attempt<'a>,
    host: &'a str,
    addrs: &'a Addrs<'r>,
    policy: &'a RetryPolicy,
    replay: Option<Replay>,
}

impl ClusterPool {
    /// Sends `req` to the cluster under `policy`. `host` is the routed host (the DNS name and
    /// SNI for wildcard and passthrough clusters), `req_port` the request's port (passthrough).
    pub async fn send(
        self: &Arc<Self>,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
        mut req: Request<RequestBody>,
        policy: &RetryPolicy,
    ) -> Sent {
        self.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        let fail = |e: ProxyError| Sent {
            result: Err(e.into()),
            attempts: 0,
            flags: Flags::NONE,
        };
        if let Some(e) = self.requests_overflow() {
            return fail(e);
        }
        let host_key: &str = if self.server_name.is_some() { "" } else { host };
        let (addrs, logical_port) = match self.addresses(ctx, host, req_port).await {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        if addrs.len() == 0 {
            return fail(self.connect_failure(host, None, 0));
        }
        let target_host = if host.is_empty()
            || self.server_name.is_some() && !self.cluster.host.starts_with('*')
        {
            self.cluster.host.as_str()
        } else {
            host
        };
        let replay = if policy.retries_after_send() {
            match replay_of(&mut req).await {
                Ok(r) => r,
                Err(e) => return fail(e),
            }
        } else {
            None
        };
        let plan = Plan {
            to: Attempt {
                host_key,
                target: (target_host, logical_port),
                relay: http_body::Body::is_end_stream(req.body()),
                per_try: policy.per_try_timeout,
                stamp: policy.retries > 0,
                number: std::sync::atomic::AtomicU32::new(1),
            },
            host,
            addrs: &addrs,
            policy,
            replay,
        };
        // The first attempt, here: when it succeeds and nothing asks for another, this is all
        // the retry policy costs a request.
        let start = self.pick(host_key, &addrs);
        let Some(idx) = self.choose(&addrs, start, &[], policy.other_hosts) else {
            return fail(self.all_ejected(plan.to.target));
        };
        let addr = addrs.get(idx);
        let first = self.attempt(&plan.to, addr, host, req).await;
        let unsent = matches!(
            &first,
            Err(SendError {
                unsent: Some(_),
                ..
            })
        );
        if !self.judge(&plan, addr, &first, unsent) {
            return Sent {
                result: first,
                attempts: 1,
                flags: Flags::NONE,
            };
        }
        // Boxed: only a request that is retried pays for the retry loop's future.
        Box::pin(self.retry(&plan, start, idx, first)).await
    }

    /// `http2MaxRequests`: no request beyond it is in flight (Envoy counts the overflow as
    /// `upstream_rq_pending_overflow`).
    fn requests_overflow(&self) -> Option<ProxyError> {
        let max = self.cluster.max_requests?;
        if self.stats.rq_active.load(Ordering::Relaxed) < u64::from(max) {
            return None;
        }
        self.stats
            .rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        Some(ProxyError::Overflow {
            cluster: self.cluster.name.clone(),
            max,
            limit: "connectionPool.http.http2MaxRequests",
        })
    }

    /// The attempts after the first, which wanted another: until one is not to be retried or
    /// the policy runs out.
    async fn retry(
        self: &Arc<Self>,
        plan: &Plan<'_, '_>,
        start: usize,
        first_idx: usize,
        first: Result<Exchange, SendError>,
    ) -> Sent {
        let (s, policy) = (&self.stats, plan.policy);
        let mut tried: Vec<usize> = vec![first_idx];
        let mut flags = Flags::NONE;
        let mut attempt: u32 = 1;
        let mut _budget: Option<RetryGuard<'_>> = None;
        let (mut result, mut next) = take_unsent(first);
        loop {
            // `result`, of attempt number `attempt`, wants another attempt.
            if attempt > policy.retries {
                s.rq_retry_limit_exceeded.fetch_add(1, Ordering::Relaxed);
                return Sent {
                    result: exhausted(result, attempt),
                    attempts: attempt,
                    flags: flags | Flags::URX,
                };
            }
            let max = self.cluster.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
            let again = next
                .take()
                .or_else(|| plan.replay.as_ref().map(Replay::request));
            let Some(req) =
                again.filter(|_| s.rq_retry_active.load(Ordering::Relaxed) < u64::from(max))
            else {
                s.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
                flags |= Flags::UO;
                return Sent {
                    result,
                    attempts: attempt,
                    flags,
                };
            };
            // A response (or a failure after sending) is dropped: its connection closes.
            drop(result);
            s.rq_retry.fetch_add(1, Ordering::Relaxed);
            s.rq_retry_active.fetch_add(1, Ordering::Relaxed);
            _budget = Some(RetryGuard(&s.rq_retry_active));
            let wait = policy.backoff(attempt, random_unit());
            if !wait.is_zero() {
                s.rq_retry_backoff_exponential
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            attempt += 1;
            let Some(idx) = self.choose(plan.addrs, start, &tried, policy.other_hosts) else {
                return Sent {
                    result: Err(self.all_ejected(plan.to.target).into()),
                    attempts: attempt - 1,
                    flags,
                };
            };
            let addr = plan.addrs.get(idx);
            plan.to.number.store(attempt, Ordering::Relaxed);
            (result, next) = take_unsent(self.attempt(&plan.to, addr, plan.host, req).await);
            _budget = None;
            tried.push(idx);
            if !self.judge(plan, addr, &result, next.is_some()) {
                if result.is_ok() {
                    s.rq_retry_success.fetch_add(1, Ordering::Relaxed);
                }
                return Sent {
                    result,
                    attempts: attempt,
                    flags,
                };
            }
        }
    }

    /// Feeds outlier detection with an attempt's outcome and says whether the policy wants
    /// another attempt (and one can be made: the request came back unsent, or a copy exists).
    fn judge(
        &self,
        plan: &Plan<'_, '_>,
        addr: std::net::SocketAddr,
        result: &Result<Exchange, SendError>,
        unsent: bool,
    ) -> bool {
        let policy = plan.policy;
        let (outcome, failure) = match result {
            Ok(x) => (Some(Outcome::Status(x.response.status().as_u16())), None),
            Err(e) => match classify(&e.error, unsent) {
                Some(f) => (Some(Outcome::LocalFailure), Some(f)),
                None => (None, None),
            },
        };
        if let (Some(o), Some(outlier)) = (outcome, &self.outlier) {
            outlier.report(addr, o, plan.addrs.len(), &self.stats);
        }
        if policy.retries == 0 {
            return false;
        }
        match (result, failure) {
            (Ok(x), _) => {
                plan.replay.is_some()
                    && policy.retries_response(x.response.status().as_u16(), x.response.headers())
            }
            (Err(_), Some(f)) => policy.retries_failure(f) && (unsent || plan.replay.is_some()),
            (Err(_), None) => false,
        }
    }

    /// `503 UH` when outlier detection ejected every address.
    fn all_ejected(&self, (host, port): (&str, u16)) -> ProxyError {
        ProxyError::NoHealthyUpstream {
            target: format!("{host}:{port}"),
            reason: format!(
                "every address of {} is ejected by outlier detection (outlierDetection; minHealthPercent makes the cluster use them anyway)",
                self.cluster.name
            ),
            code: "upstream.all_ejected",
        }
    }

    /// The address for the next attempt: the load balancer's pick first, then (with
    /// `other_hosts`) one not tried yet; never an ejected address unless fewer than
    /// `minHealthPercent` are healthy (panic). `None`: every address is ejected.
    fn choose(
        &self,
        addrs: &Addrs<'_>,
        start: usize,
        tried: &[usize],
        other_hosts: bool,
    ) -> Option<usize> {
        let n = addrs.len();
        let outlier = self.outlier.as_ref();
        if tried.is_empty() && outlier.is_none_or(|o| !o.is_ejected(addrs.get(start))) {
            return Some(start);
        }
        let ejected = |i: usize| outlier.is_some_and(|o| o.is_ejected(addrs.get(i)));
        let panic = outlier.is_some_and(|o| {
            let out = (0..n).filter(|&i| ejected(i)).count();
            ((n - out) * 100) < (o.policy.min_health_percent as usize) * n
        });
        let usable = |i: usize| panic || !ejected(i);
        let from = start + tried.len();
        if other_hosts
            && let Some(i) = (0..n)
                .map(|k| (from + k) % n)
                .find(|i| !tried.contains(i) && usable(*i))
        {
            return Some(i);
        }
        (0..n).map(|k| (from + k) % n).find(|i| usable(*i))
    }
}

/// Splits a request that never went out from its failure, for the next attempt.
fn take_unsent(
    result: Result<Exchange, SendError>,
) -> (Result<Exchange, SendError>, Option<Request<RequestBody>>) {
    match result {
        Err(SendError {
            error,
            conn,
            unsent: Some(r),
        }) => (
            Err(SendError {
                error,
                conn,
                unsent: None,
            }),
            Some(*r),
        ),
        other => (other, None),
    }
}

/// Keeps a copy of `req` for later attempts when its body is small enough to hold; `None`
/// when it is not (the request then gets no retry after it went out).
async fn replay_of(req: &mut Request<RequestBody>) -> Result<Option<Replay>, ProxyError> {
    let body = match req.body_mut().buffer(REPLAY_LIMIT).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(ProxyError::BadRequest(format!(
                "the request body ended before its Content-Length: {e}"
            )));
        }
    };
    Ok(Some(Replay {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        body,
        progress: req.body().progress().clone(),
    }))
}

/// How a failed attempt looks to the retry policy; `None`: not an upstream failure that
/// another attempt could fix (overflow, DNS, a bad request).
fn classify(e: &ProxyError, unsent: bool) -> Option<AttemptFailure> {
    match e {
        ProxyError::Connect(_) if unsent => Some(AttemptFailure::ConnectFailure),
        ProxyError::Connect(_)
        | ProxyError::UpstreamTerminated { .. }
        | ProxyError::UpstreamTls(_)
        | ProxyError::UpstreamProtocol { .. } => Some(AttemptFailure::Reset),
        ProxyError::PerTryTimeout(_) => Some(AttemptFailure::PerTryTimeout),
        _ => None,
    }
}

/// The outcome once attempts ran out: the last response as it is (Envoy forwards it, flagged
/// `URX`), or the last failure wrapped so the reply says it was retried.
fn exhausted(result: Result<Exchange, SendError>, attempts: u32) -> Result<Exchange, SendError> {
    result.map_err(|e| SendError {
        error: ProxyError::RetryLimit {
            attempts,
            last: Box::new(e.error),
        },
        conn: e.conn,
        unsent: None,
    })
}
