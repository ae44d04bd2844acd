//! TCP and TLS-passthrough listeners: opaque bytes, with TLS originated per the destination's
//! policy, or the client's own TLS routed by its ClientHello's SNI. One access-log line per
//! connection, Envoy style (`"- - -" 0`), and the `istio_tcp_*` metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::access_log::AccessRecord;
use crate::error::{Flags, ProxyError};
use crate::metrics::RequestReport;
use crate::route::L4Routes;
use crate::runtime::{ConnCtx, Runtime};
use crate::tls::client_hello::{Hello, read_client_hello};
use crate::upstream::ClusterPool;

use super::pump::{pump, record_upstream, underscored};

/// Serves one connection accepted on a TCP or TLS-passthrough listener.
pub async fn serve(mut stream: TcpStream, ctx: ConnCtx, rt: Arc<Runtime>, l4: Arc<L4Routes>) {
    let mut rec = AccessRecord::new(ctx.local, ctx.remote, ctx.id);
    rec.http = false;
    let mut prefix = Vec::new();
    let mut sni = None;
    if let L4Routes::Sni { .. } = &*l4 {
        match read_client_hello(&mut stream).await {
            Ok((bytes, Hello::Sni(name))) => {
                prefix = bytes;
                rec.requested_server_name = Some(name.clone());
                sni = Some(name);
            }
            Ok((_, verdict)) => {
                let why = if verdict == Hello::NoSni {
                    "sni_missing:the_ClientHello_names_no_server;_egret_routes_TLS_passthrough_by_SNI"
                } else {
                    "not_tls:the_first_bytes_are_not_a_TLS_ClientHello"
                };
                return refuse(&rt, rec, why);
            }
            Err(e) => {
                let why = format!(
                    "client_hello_unread:{}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join("_")
                );
                return refuse(&rt, rec, &why);
            }
        }
    }
    let Some((cluster, route_name)) = l4.pick(sni.as_deref()) else {
        let why = format!(
            "sni_not_allowed:no_route_or_declared_host_for_'{}'",
            sni.as_deref().unwrap_or("-")
        );
        return refuse(&rt, rec, &why);
    };
    rec.route_name = route_name;
    let Some(pool) = rt.pools.get(cluster).cloned() else {
        return refuse(&rt, rec, "cluster_missing");
    };
    let (host, port, originate) = match &*l4 {
        L4Routes::Sni { port, .. } => (sni.clone().unwrap_or_default(), *port, false),
        L4Routes::Tcp { .. } => (pool.cluster.host.clone(), pool.cluster.port, true),
    };
    // ALLOW_ANY never splices to egret itself or to cloud metadata.
    if let Err(e) = super::guard::check(&rt, &pool, &host, port).await {
        rec.details = Some(e.details().into());
        rec.termination_details = Some(underscored(e.body().trim_end()));
        return finish(&rt, rec, Some(&pool), &host);
    }
    let _ = stream.set_nodelay(true);
    splice(&rt, stream, &prefix, &pool, &host, port, originate, rec).await;
}

/// Connects upstream, pumps, and writes the connection's log line and metrics.
#[allow(clippy::too_many_arguments)]
pub(super) async fn splice(
    rt: &Arc<Runtime>,
    down: TcpStream,
    prefix: &[u8],
    pool: &Arc<ClusterPool>,
    host: &str,
    port: u16,
    originate_tls: bool,
    mut rec: AccessRecord,
) {
    rec.upstream_cluster = Some(pool.cluster_name());
    let open = pool.open_stream(&rt.upstream, host, port, originate_tls);
    let (up, conn) = tokio::select! {
        r = open => match r {
            Ok(c) => c,
            Err(e) => return fail(rt, rec, pool, host, &e),
        },
        // The client went away while egret was still connecting: Envoy's DC.
        () = closed(&down) => {
            rec.flags |= Flags::DC;
            rec.termination_details = Some("downstream_closed_while_connecting_upstream".into());
            return finish(rt, rec, Some(pool), host);
        }
    };
    pool.stats.cx_active.fetch_add(1, Ordering::Relaxed);
    record_upstream(&mut rec, &conn);
    let server = format!("{host}:{port}");
    let r = pump(
        down,
        prefix,
        up,
        pool,
        &conn,
        &server,
        pool.cluster.tcp_idle_timeout,
    )
    .await;
    pool.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
    rec.bytes_received = r.downstream_read;
    rec.bytes_sent = r.downstream_written;
    rec.flags |= r.flags;
    rec.transport_failure = r.transport_failure;
    rec.termination_details = r.termination;
    finish(rt, rec, Some(pool), host);
}

/// Resolves when the client closes or resets the connection without sending anything more;
/// never when it sends data (that waits in the socket for the pump).
async fn closed(s: &TcpStream) {
    let mut b = [0u8; 1];
    match s.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// A connection refused before anything was sent upstream (`NR`).
pub(super) fn refuse(rt: &Arc<Runtime>, mut rec: AccessRecord, why: &str) {
    rec.flags |= Flags::NR;
    rec.details = Some("filter_chain_not_found".into());
    rec.termination_details = Some(why.to_string());
    tracing::debug!(remote = %rec.downstream_remote, "TCP connection refused: {why}");
    finish(rt, rec, None, "");
}

/// The upstream could not be reached.
fn fail(rt: &Arc<Runtime>, mut rec: AccessRecord, pool: &ClusterPool, host: &str, e: &ProxyError) {
    rec.flags |= e.flags();
    rec.transport_failure = e.transport_failure_reason();
    if rec.transport_failure.is_none() {
        rec.termination_details = Some(format!(
            "{}:{}",
            e.code(),
            underscored(e.body().lines().last().unwrap_or_default())
        ));
    }
    if let ProxyError::Connect(c) = e {
        rec.upstream_host = Some(c.addr);
        rec.attempts = c.attempts;
    }
    tracing::debug!(cluster = %pool.cluster.name, code = e.code(), "TCP upstream failed");
    finish(rt, rec, Some(pool), host);
}

/// Writes the log line and the istio_tcp_* metrics.
pub(super) fn finish(
    rt: &Arc<Runtime>,
    mut rec: AccessRecord,
    pool: Option<&ClusterPool>,
    host: &str,
) {
    let end = Instant::now();
    rec.end = Some(end);
    let (svc, ns) = match pool {
        Some(p) => p.destination(host),
        None => (Arc::from("unknown"), Arc::from("unknown")),
    };
    rt.metrics.record_request(RequestReport {
        destination_service: &svc,
        destination_namespace: &ns,
        code: 0,
        flags: rec.flags,
        duration: end.saturating_duration_since(rec.start_instant),
        request_bytes: rec.bytes_received,
        response_bytes: rec.bytes_sent,
        tcp: true,
    });
    rt.access_log.log(&rec);
}
