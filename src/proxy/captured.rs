//! Connections the capture rules redirected to the outbound listener that are not HTTP (the
//! listener sniffed them): opaque TCP, routed by original destination (`route::captured`), and
//! the app's own TLS, routed by SNI and original port. What nothing declares goes to the
//! original destination under ALLOW_ANY (Envoy's PassthroughCluster, an ORIGINAL_DST
//! cluster) or is closed under REGISTRY_ONLY (BlackHoleCluster, flag `UH`), one access-log
//! line each, as Envoy logs them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::access_log::AccessRecord;
use crate::error::Flags;
use crate::route::{CapturedMatch, CapturedRoutes};
use crate::runtime::{ConnCtx, Runtime};
use crate::tls::client_hello::{Hello, read_client_hello};

use super::pump::underscored;
use super::tcp::{finish, refuse, splice};

/// What the listener saw in the first bytes of a redirected connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello (the app's own HTTPS or TLS).
    Tls,
    /// Anything else, or nothing within the sniffing time (a server-first protocol).
    Opaque,
}

/// Serves a redirected connection that is not HTTP. `orig` is where the app connected.
pub async fn serve(
    stream: TcpStream,
    ctx: ConnCtx,
    rt: Arc<Runtime>,
    orig: SocketAddr,
    seen: Sniffed,
) {
    let mut rec = AccessRecord::new(ctx.local, ctx.remote, ctx.id);
    rec.http = false;
    let Some(table) = rt
        .listener(&ctx.listener)
        .and_then(|(_, l)| l.routes.captured.as_ref())
    else {
        return refuse(&rt, rec, "capture_not_configured_on_this_listener");
    };
    if own_address(&rt, orig) {
        rec.termination_details = Some(format!(
            "self_loop:the_original_destination_{orig}_is_egret's_own_listener"
        ));
        return blackhole(&rt, rec);
    }
    if let CapturedMatch::Tcp(t) = table.lookup(orig) {
        rec.route_name = t.route_name.clone();
        let Some(pool) = rt.pools.get(t.clusters.pick()).cloned() else {
            return refuse(&rt, rec, "cluster_missing");
        };
        let (host, port) = (pool.cluster.host.clone(), pool.cluster.port);
        let _ = stream.set_nodelay(true);
        return splice(&rt, stream, &[], &pool, &host, port, true, rec).await;
    }
    match seen {
        Sniffed::Tls => tls(stream, &rt, table, orig, rec, &ctx).await,
        Sniffed::Opaque => passthrough(stream, &[], &rt, table, orig, rec).await,
    }
}

/// The app's own TLS: the ClientHello's SNI and the original port pick a declared TLS or
/// HTTPS host (the connection is spliced, the app's TLS untouched); else the original
/// destination (ALLOW_ANY) or nothing (REGISTRY_ONLY).
async fn tls(
    mut stream: TcpStream,
    rt: &Arc<Runtime>,
    table: &CapturedRoutes,
    orig: SocketAddr,
    mut rec: AccessRecord,
    ctx: &ConnCtx,
) {
    let (prefix, sni) = match read_client_hello(&mut stream).await {
        Ok((bytes, Hello::Sni(name))) => (bytes, Some(name)),
        Ok((bytes, _)) => (bytes, None),
        Err(e) => {
            let why = format!("client_hello_unread:{}", underscored(&e.to_string()));
            return refuse(rt, rec, &why);
        }
    };
    rec.requested_server_name = sni.clone();
    let declared = sni.as_deref().and_then(|sni| {
        let (_, l) = rt.listener(&ctx.listener)?;
        let (cluster, name) = l.routes.tunnel(sni, orig.port())?;
        (Some(cluster) != table.passthrough()).then_some((cluster, name, sni.to_string()))
    });
    match declared {
        Some((cluster, name, sni)) => {
            rec.route_name = name;
            let Some(pool) = rt.pools.get(cluster).cloned() else {
                return refuse(rt, rec, "cluster_missing");
            };
            let originate = pool.cluster.protocol.is_opaque_tcp();
            let _ = stream.set_nodelay(true);
            splice(
                rt,
                stream,
                &prefix,
                &pool,
                &sni,
                orig.port(),
                originate,
                rec,
            )
            .await;
        }
        None => passthrough(stream, &prefix, rt, table, orig, rec).await,
    }
}

/// Nothing declared this destination: the original destination under ALLOW_ANY (never egret
/// itself or cloud metadata), else BlackHoleCluster.
async fn passthrough(
    stream: TcpStream,
    prefix: &[u8],
    rt: &Arc<Runtime>,
    table: &CapturedRoutes,
    orig: SocketAddr,
    mut rec: AccessRecord,
) {
    let Some(pool) = table.passthrough().and_then(|c| rt.pools.get(c)).cloned() else {
        rec.termination_details = Some(format!(
            "registry_only:no_ServiceEntry_declares_{orig}{}",
            rec.requested_server_name
                .as_deref()
                .map(|s| format!("_or_SNI_{s}"))
                .unwrap_or_default()
        ));
        return blackhole(rt, rec);
    };
    let host = orig.ip().to_string();
    if let Err(e) = super::guard::check(rt, &pool, &host, orig.port()).await {
        rec.details = Some(e.details().into());
        rec.termination_details = Some(underscored(e.body().trim_end()));
        return finish(rt, rec, Some(&pool), &host);
    }
    let _ = stream.set_nodelay(true);
    splice(rt, stream, prefix, &pool, &host, orig.port(), false, rec).await;
}

/// REGISTRY_ONLY: the connection is closed, logged against BlackHoleCluster with `UH`.
fn blackhole(rt: &Arc<Runtime>, mut rec: AccessRecord) {
    rec.flags |= Flags::UH;
    rec.upstream_cluster = Some(Arc::from("BlackHoleCluster"));
    tracing::debug!(remote = %rec.downstream_remote, "captured connection refused (BlackHoleCluster)");
    finish(rt, rec, None, "");
}

/// Whether `orig` is one of egret's own sockets (a redirected connection to it would loop).
pub fn own_address(rt: &Runtime, orig: SocketAddr) -> bool {
    rt.own.reaches(orig)
}
