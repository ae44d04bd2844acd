//! Opening connections to a cluster: the connection circuit breaker, one dial (TCP, then the
//! cluster's TLS) counted in the cluster's stats, failover over the addresses for raw streams
//! (TCP proxying and CONNECT), and the error once every attempt failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustls::pki_types::ServerName;

use crate::error::{AttemptError, ConnectFailure, ProxyError};
use crate::metrics::ClusterStats;

use crate::tls::UpstreamIo;

use super::connect::{self, Transport};
use super::outlier::Outcome;
use super::pool::{ClusterPool, ConnInfo, UpstreamCtx};

/// Why one connection attempt did not produce a connection.
pub(super) enum DialError {
    /// Try the next address.
    Attempt(AttemptError),
    /// No address can work (e.g. the host is not a valid TLS name).
    Fatal(ProxyError),
}

/// A connection being opened, counted against `maxConnections` until the dial ends.
pub(super) struct Connecting<'a>(Option<&'a ClusterStats>);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.cx_connecting.fetch_sub(1, Ordering::AcqRel);
            if s.rq_pending_active.load(Ordering::Relaxed) > 0 {
                s.capacity.notify_one();
            }
        }
    }
}

/// At most this many addresses are tried for one request (Envoy's default retry policy allows
/// two retries on connect failure).
pub(super) const MAX_CONNECT_ATTEMPTS: usize = 3;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's identity, numbered in the order connections were opened.
pub(super) fn new_conn(transport: Transport) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        transport,
        requests: AtomicU32::new(1),
        opened: std::time::Instant::now(),
    })
}

impl ClusterPool {
    /// Opens a raw stream for TCP proxying: DNS, connect with failover over the addresses (up
    /// to three), and the cluster's TLS unless `originate_tls` is false (passthrough: the
    /// client's own TLS is spliced through).
    pub async fn open_stream(
        &self,
        ctx: &UpstreamCtx,
        host: &str,
        req_port: u16,
        originate_tls: bool,
    ) -> Result<(UpstreamIo, Arc<ConnInfo>), ProxyError> {
        let host_key: &str = if self.server_name.is_some() { "" } else { host };
        let (addrs, _) = self.addresses(ctx, host, req_port).await?;
        let n = addrs.len();
        let start = self.pick(host_key, &addrs);
        // Outlier detection: ejected addresses are skipped while any other is left.
        let ejected = |a| self.outlier.as_ref().is_some_and(|o| o.is_ejected(a));
        let mut order: Vec<SocketAddr> = (0..n).map(|k| addrs.get((start + k) % n)).collect();
        if self.outlier.is_some() && order.iter().any(|a| !ejected(*a)) {
            order.retain(|a| !ejected(*a));
        }
        let tries = order.len().min(MAX_CONNECT_ATTEMPTS);
        let mut last = None;
        for &addr in order.iter().take(tries) {
            self.check_capacity()?;
            let result = self.dial(addr, host, originate_tls).await;
            if let Some(o) = &self.outlier {
                // Envoy's TCP proxy: a connect is the whole exchange (success counts as 200).
                let outcome = match &result {
                    Ok(_) => Outcome::Status(200),
                    Err(_) => Outcome::LocalFailure,
                };
                o.report(addr, outcome, n, &self.stats);
            }
            match result {
                Ok((io, transport)) => {
                    return Ok((io, new_conn(transport)));
                }
                Err(DialError::Fatal(e)) => return Err(e),
                Err(DialError::Attempt(e)) => last = Some((addr, e)),
            }
        }
        Err(self.connect_failure(host, last, tries))
    }

    /// The circuit breaker (`connectionPool.tcp.maxConnections`): no new connection beyond it.
    pub(super) fn check_capacity(&self) -> Result<(), ProxyError> {
        if let Some(max) = self.cluster.max_connections
            && self.stats.cx_active.load(Ordering::Relaxed) >= u64::from(max)
        {
            self.stats.cx_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Overflow {
                cluster: self.cluster.name.clone(),
                max,
                limit: "connectionPool.tcp.maxConnections",
            });
        }
        Ok(())
    }

    /// Reserves room for a new connection under `maxConnections` (connections open plus
    /// those being opened), or says there is none. The reservation ends with the dial.
    pub(super) fn reserve_connection(&self) -> Option<Connecting<'_>> {
        let Some(max) = self.cluster.max_connections else {
            return Some(Connecting(None));
        };
        let max = u64::from(max);
        let s = &self.stats;
        s.cx_connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (s.cx_active.load(Ordering::Acquire) + c < max).then_some(c + 1)
            })
            .ok()
            .map(|_| Connecting(Some(&self.stats)))
    }

    /// Waits, as a pending request, until a connection closes or goes back to the pool (then
    /// the caller looks again), or refuses at once when `http1MaxPendingRequests` are already
    /// waiting: `503 UO` with `upstream_rq_pending_overflow`, as Envoy's pending queue.
    /// `waited` says whether this request was counted pending before.
    pub(super) async fn wait_for_slot(&self, waited: &mut bool) -> Result<(), ProxyError> {
        let s = &self.stats;
        if let Some(max) = self.cluster.max_pending_requests
            && s.rq_pending_active.load(Ordering::Relaxed) >= u64::from(max)
        {
            s.rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Overflow {
                cluster: self.cluster.name.clone(),
                max,
                limit: "connectionPool.http.http1MaxPendingRequests",
            });
        }
        if !*waited {
            *waited = true;
            s.rq_pending_total.fetch_add(1, Ordering::Relaxed);
            s.cx_overflow.fetch_add(1, Ordering::Relaxed);
        }
        s.rq_pending_active.fetch_add(1, Ordering::Relaxed);
        // A connection that closes or is pooled while someone waits signals `capacity`; the
        // short timeout is a safety net for a signal taken by a waiter that then lost the race.
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.capacity.notified()).await;
        s.rq_pending_active.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// One connection attempt to `addr` (TCP, then TLS when the cluster has a policy and
    /// `tls` is true), counted in the cluster's stats.
    pub(super) async fn dial(
        &self,
        addr: SocketAddr,
        host: &str,
        tls: bool,
    ) -> Result<(UpstreamIo, Transport), DialError> {
        let policy = if tls { self.tls.as_deref() } else { None };
        let tls = match policy {
            None => None,
            Some(t) => {
                let server_name = match &self.server_name {
                    Some(n) => n.clone(),
                    None => ServerName::try_from(host.to_string()).map_err(|_| {
                        DialError::Fatal(ProxyError::BadRequest(format!(
                            "\"{host}\" is not a valid host name"
                        )))
                    })?,
                };
                Some((t, server_name))
            }
        };
        match connect::connect(
            addr,
            self.cluster.connect_timeout,
            tls,
            self.alpn,
            self.cluster.tcp_keepalive.as_ref(),
        )
        .await
        {
            Err(e) => {
                self.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                if e.is_timeout() {
                    self.stats
                        .cx_connect_timeout
                        .fetch_add(1, Ordering::Relaxed);
                }
                if matches!(e, AttemptError::Tls(_)) {
                    self.stats
                        .ssl_connection_error
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(cluster = %self.cluster.name, %addr, error = e.code(), "upstream connect failed");
                Err(DialError::Attempt(e))
            }
            Ok(ok) => {
                self.stats.cx_total.fetch_add(1, Ordering::Relaxed);
                if policy.is_some() {
                    self.stats.ssl_handshake.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ok)
            }
        }
    }

    /// The error once every attempt failed (or there was nothing to try).
    pub(super) fn connect_failure(
        &self,
        host: &str,
        last: Option<(SocketAddr, AttemptError)>,
        tries: usize,
    ) -> ProxyError {
        let Some((addr, error)) = last else {
            return ProxyError::NoHealthyUpstream {
                target: host.to_string(),
                reason: format!("{} has no addresses", self.cluster.name),
                code: "upstream.no_healthy_upstream",
            };
        };
        ProxyError::Connect(ConnectFailure {
            target: format!(
                "{}:{}",
                if host.is_empty() {
                    &self.cluster.host
                } else {
                    host
                },
                addr.port()
            ),
            attempts: tries as u32,
            addr,
            error,
        })
    }
}
