//! HTTP `CONNECT host:port` on the outbound listener: a tunnel to a host declared on a TLS,
//! HTTPS or TCP port (any host under ALLOW_ANY), spliced with the same pump as TCP listeners.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::uri::Authority;
use http::{Request, Response, StatusCode};

use crate::config::Listener;
use crate::error::{Flags, ProxyError};
use crate::http::body::Downstream;
use crate::route::{PortSource, normalize_host};
use crate::runtime::Runtime;
use crate::tls::client_hello::{Hello, read_client_hello};

use super::finish::{Failure, Inner, Outcome, Pending, ProxyBody};
use super::pump::{pump, record_upstream};

/// `CONNECT host:port`: a tunnel to a host declared on a TLS, HTTPS or TCP port (any host
/// under ALLOW_ANY). The upstream is connected before the `200`, so a failure is an ordinary
/// 5xx with its flags; then the client's bytes are spliced through untouched. For TLS ports
/// the ClientHello must name the CONNECT host, so a tunnel opened for one host cannot carry
/// TLS to another; a mismatch is refused before a byte goes upstream.
pub(super) async fn connect_tunnel(
    rt: &Arc<Runtime>,
    listener: &Listener,
    req: Request<Downstream>,
    authority: &Authority,
    pending: &mut Pending,
) -> Result<Response<ProxyBody>, Failure> {
    let host = normalize_host(authority.host()).into_owned();
    let port = authority.port_u16().unwrap_or(443);
    pending.rec_mut().authority = Some(authority.as_str().to_string());
    if listener.l4.is_some() || !matches!(listener.routes.port_source, PortSource::Request) {
        return Err((
            ProxyError::BadRequest(format!(
                "CONNECT {authority} is served on the outbound (forward-proxy) listener only"
            )),
            Some(req.headers().clone()),
        ));
    }
    let Some((cluster, route_name)) = listener.routes.tunnel(&host, port) else {
        pending.rec_mut().route_name = Some(Arc::from("block_all"));
        if let Some(t) = pending.telemetry() {
            t.destination.0 = Arc::from("BlackHoleCluster");
        }
        return Err((
            ProxyError::BlockAll { host, port },
            Some(req.headers().clone()),
        ));
    };
    let Some(pool) = rt.pools.get(cluster).cloned() else {
        return Err((
            ProxyError::BadRequest("the route's cluster is gone (configuration reloaded)".into()),
            None,
        ));
    };
    pending.rec_mut().route_name = route_name;
    // ALLOW_ANY never tunnels to egret itself or to cloud metadata.
    if let Err(e) = super::guard::check(rt, &pool, &host, port).await {
        return Err((e, Some(req.headers().clone())));
    }
    pending.rec_mut().upstream_cluster = Some(pool.cluster_name());
    if let Some(t) = pending.telemetry() {
        t.destination = pool.destination(&host);
        t.cluster = Some(pool.stats.clone());
    }
    // Opaque TCP destinations get their DestinationRule TLS; TLS ports carry the client's own.
    let originate = pool.cluster.protocol.is_opaque_tcp();
    let (up, conn) = match pool.open_stream(&rt.upstream, &host, port, originate).await {
        Ok(c) => c,
        Err(e) => {
            if let ProxyError::Connect(c) = &e {
                pending.rec_mut().upstream_host = Some(c.addr);
            }
            return Err((e, Some(req.headers().clone())));
        }
    };
    let mut finish = pending.take();
    finish
        .log
        .format
        .capture_request(&mut finish.rec, req.headers());
    record_upstream(&mut finish.rec, &conn);
    finish.rec.status = 200;
    finish.rec.details = Some("via_upstream".into());
    // TLS ports (and ALLOW_ANY to 443) must carry a ClientHello for the CONNECT host.
    let check_sni = pool.cluster.protocol.is_tls() || (pool.cluster.host == "-" && port == 443);
    let server = format!("{host}:{port}");
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                finish.rec.termination_details = Some(format!(
                    "upgrade_failed:{}",
                    e.to_string().replace(' ', "_")
                ));
                finish.complete(Outcome::DownstreamGone);
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(upgraded);
        let mut prefix = Vec::new();
        if check_sni {
            let refusal = match read_client_hello(&mut down).await {
                Ok((bytes, Hello::Sni(name))) => {
                    finish.rec.requested_server_name = Some(name.clone());
                    prefix = bytes;
                    (name != host).then(|| {
                        format!("sni_mismatch:the_tunnel_is_for_'{host}'_but_the_ClientHello_names_'{name}'")
                    })
                }
                Ok((bytes, Hello::NoSni)) if host.parse::<std::net::IpAddr>().is_ok() => {
                    prefix = bytes;
                    None
                }
                Ok((_, Hello::NoSni)) => Some(format!(
                    "sni_missing:the_tunnel_is_for_'{host}'_but_the_ClientHello_names_no_server"
                )),
                Ok((_, _)) => Some(format!(
                    "not_tls:{host}:{port}_is_a_TLS_port_but_the_tunnel_does_not_start_with_a_ClientHello"
                )),
                Err(e) => Some(format!(
                    "client_hello_unread:{}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join("_")
                )),
            };
            if let Some(why) = refusal {
                tracing::debug!(%server, "CONNECT tunnel refused: {why}");
                finish.rec.flags |= Flags::NR;
                finish.rec.termination_details = Some(why);
                finish.complete(Outcome::Complete);
                return;
            }
        }
        pool.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let r = pump(
            down,
            &prefix,
            up,
            &pool,
            &conn,
            &server,
            pool.cluster.tcp_idle_timeout,
        )
        .await;
        pool.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        finish.rec.bytes_received = r.downstream_read;
        finish.rec.bytes_sent = r.downstream_written;
        finish.rec.flags |= r.flags;
        finish.rec.transport_failure = r.transport_failure;
        finish.rec.termination_details = r.termination;
        finish.complete(Outcome::Complete);
    });
    let mut resp = Response::new(ProxyBody {
        inner: Inner::Full(None),
        finish: None,
    });
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
