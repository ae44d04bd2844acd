//! VirtualService and Gateway routing, resolved against the registry ([`Routing`]) and
//! consumed by the lowering: the virtual hosts of the sidecar's outbound listener, the sidecar
//! TCP routes, and one listener per Gateway server port. VirtualService routes are tried in
//! order and bound to the `mesh` (sidecar) or to Gateways (egress gateway), and clusters are
//! found by Envoy's `outbound|PORT|SUBSET|HOST` names.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::diag::{Origin, Problems};
use crate::config::istio::names::server_host_matches;
use crate::config::istio::options::Role;
use crate::config::model::{Listener, Protocol, ServerTlsPolicy};
use crate::route::{
    ClusterId, Fallback, HeaderOps, HttpRoute, L4Fallback, L4Routes, PortSource, Redirect, Rewrite,
    RouteAction, RouteMatch, RouteTable, VirtualHost, VirtualHosts, WeightedCluster,
    WeightedClusters,
};

/// A Gateway as routes name it: `namespace/name`, or `mesh`.
pub(super) type GwKey = String;

/// The gateway name that binds routes to the sidecars.
pub(super) const MESH: &str = "mesh";

#[derive(Debug, Clone)]
pub(super) struct DestKey {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) subset: Option<String>,
    pub(super) weight: u32,
}

#[derive(Debug, Clone)]
pub(super) enum ActionSpec {
    Forward(Vec<DestKey>),
    Direct { status: u16, body: Option<String> },
    Redirect(Redirect),
}

#[derive(Debug, Clone)]
pub(super) struct MatchSpec {
    pub(super) m: RouteMatch,
    pub(super) port: Option<u16>,
    pub(super) gateways: Option<Vec<GwKey>>,
    pub(super) name: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct RouteSpec {
    pub(super) name: Option<String>,
    pub(super) matches: Vec<MatchSpec>,
    pub(super) action: ActionSpec,
    pub(super) timeout: Option<std::time::Duration>,
    pub(super) retry: crate::route::RetryPolicy,
    pub(super) fault: Option<crate::route::Fault>,
    pub(super) rewrite: Option<Rewrite>,
    pub(super) request_headers: HeaderOps,
    pub(super) response_headers: HeaderOps,
    pub(super) origin: Origin,
    pub(super) path: String,
}

#[derive(Debug, Clone)]
pub(super) struct VsRoutes {
    pub(super) id: String,
    pub(super) hosts: Vec<String>,
    pub(super) gateways: Vec<GwKey>,
    pub(super) routes: Vec<RouteSpec>,
    /// `tcp` and `tls` routes, in order.
    pub(super) l4: Vec<L4RouteSpec>,
}

/// A VirtualService `tcp` or `tls` route.
#[derive(Debug, Clone)]
pub(super) struct L4RouteSpec {
    pub(super) tls: bool,
    /// OR of the matches; empty matches everything.
    pub(super) matches: Vec<L4Match>,
    pub(super) dests: Vec<DestKey>,
    pub(super) origin: Origin,
    pub(super) path: String,
}

#[derive(Debug, Clone)]
pub(super) struct L4Match {
    pub(super) port: Option<u16>,
    pub(super) gateways: Option<Vec<GwKey>>,
    /// `tls` routes: the SNI names (`*.example.com` allowed).
    pub(super) sni_hosts: Vec<String>,
}

/// What a gateway port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GatewayKind {
    /// HTTP (or HTTPS terminated with `tls`).
    Http,
    /// Opaque TCP (`protocol: TCP`, VirtualService `tcp` routes).
    Tcp,
    /// TLS passthrough (`protocol: TLS` with `tls.mode: PASSTHROUGH`, VirtualService `tls`
    /// routes by SNI).
    TlsPassthrough,
}

#[derive(Debug)]
pub(super) struct GatewayListener {
    pub(super) name: String,
    pub(super) address: SocketAddr,
    pub(super) port: u16,
    pub(super) kind: GatewayKind,
    pub(super) tls: Option<Arc<ServerTlsPolicy>>,
    /// (gateway key, gateway namespace, server hosts).
    pub(super) servers: Vec<(GwKey, String, Vec<String>)>,
}

/// VirtualService and Gateway routing, resolved against the registry.
#[derive(Debug, Default)]
pub struct Routing {
    pub(super) role: Role,
    pub(super) virtual_services: Vec<VsRoutes>,
    pub(super) gateway_listeners: Vec<GatewayListener>,
    /// (host, port, subset) that routes name.
    pub(super) subsets: Vec<(String, u16, String)>,
    /// Every known service host -> its ports.
    pub(super) service_ports: BTreeMap<String, Vec<(u16, Protocol)>>,
}

impl Routing {
    pub fn is_gateway(&self) -> bool {
        self.role == Role::Gateway
    }

    /// The subset clusters routes refer to.
    pub fn subset_refs(&self) -> Vec<(String, u16, String)> {
        self.subsets.clone()
    }

    /// Virtual hosts for the sidecar's outbound listener: hosts with a VirtualService bound to
    /// `mesh` get its routes; the rest keep their default routes (added afterwards).
    pub fn sidecar_routes(
        &self,
        table: &mut RouteTable,
        clusters: &HashMap<String, ClusterId>,
        only_port: Option<u16>,
        problems: &mut Problems,
    ) {
        let ctx = [MESH.to_string()];
        for (host, ports) in &self.service_ports {
            let Some(vs) = self.virtual_services.iter().find(|v| {
                v.gateways.iter().any(|g| g == MESH) && v.hosts.iter().any(|h| h == host)
            }) else {
                continue;
            };
            for (port, proto) in ports {
                if !proto.is_http() || only_port.is_some_and(|p| p != *port) {
                    continue;
                }
                let routes = self.build_routes(vs, &ctx, *port, clusters, problems);
                if !routes.is_empty() {
                    table.vhosts_mut(*port).insert(VirtualHost {
                        name: format!("{host}:{port}"),
                        domain: host.clone(),
                        routes,
                    });
                }
            }
        }
    }

    /// One listener per Gateway server port (gateway role).
    pub fn gateway_listeners(
        &self,
        listeners: &mut Vec<Listener>,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) {
        for gl in &self.gateway_listeners {
            let mut table = RouteTable::new(PortSource::Fixed(gl.port), Fallback::NotFound);
            if gl.kind != GatewayKind::Http {
                if let Some(l4) = self.gateway_l4(gl, clusters, problems) {
                    listeners.push(Listener {
                        name: gl.name.clone(),
                        address: gl.address,
                        routes: Arc::new(table),
                        use_remote_address: true,
                        tls: None,
                        l4: Some(Arc::new(l4)),
                    });
                }
                continue;
            }
            for (gw_key, gw_ns, server_hosts) in &gl.servers {
                let ctx = [gw_key.clone()];
                for vs in &self.virtual_services {
                    let bound = vs.gateways.iter().any(|g| g == gw_key)
                        || vs.routes.iter().any(|r| {
                            r.matches
                                .iter()
                                .any(|m| m.gateways.as_ref().is_some_and(|g| g.contains(gw_key)))
                        });
                    if !bound {
                        continue;
                    }
                    let vs_ns = vs.id.split('/').next().unwrap_or("");
                    for host in &vs.hosts {
                        if !server_hosts
                            .iter()
                            .any(|sh| server_host_matches(sh, host, vs_ns, gw_ns))
                        {
                            continue;
                        }
                        let routes = self.build_routes(vs, &ctx, gl.port, clusters, problems);
                        if routes.is_empty() {
                            continue;
                        }
                        let vhosts = table.vhosts_mut(gl.port);
                        match vhosts.get_mut(host) {
                            // Several VirtualServices for one host on a gateway are merged, in
                            // load order (Istio merges them too).
                            Some(existing) => existing.routes.extend(routes),
                            None => {
                                vhosts.insert(VirtualHost {
                                    name: format!("{host}:{}", gl.port),
                                    domain: host.clone(),
                                    routes,
                                });
                            }
                        }
                    }
                }
            }
            if table.ports.is_empty() {
                problems.warn(
                    &Origin::file(gl.name.clone()),
                    "",
                    format!(
                        "no VirtualService routes traffic on gateway port {}: every request will get 404",
                        gl.port
                    ),
                    Some("bind a VirtualService to the Gateway (gateways: [<name>]) with a route for this port".into()),
                );
            }
            listeners.push(Listener {
                name: gl.name.clone(),
                address: gl.address,
                routes: Arc::new(table),
                use_remote_address: true,
                tls: gl.tls.clone(),
                l4: None,
            });
        }
    }

    /// The clusters of a route's destinations (a destination without a port takes the host's
    /// only port, else `port`); `None` (with errors) when none is declared.
    fn weighted(
        &self,
        dests: &[DestKey],
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        origin: &Origin,
        path: &str,
        problems: &mut Problems,
    ) -> Option<WeightedClusters> {
        let mut wc = Vec::new();
        for d in dests {
            let dport = match d.port {
                Some(p) => p,
                None => match self.service_ports.get(&d.host).map(Vec::as_slice) {
                    Some([(only, _)]) => *only,
                    _ => port,
                },
            };
            let name = format!(
                "outbound|{dport}|{}|{}",
                d.subset.as_deref().unwrap_or(""),
                d.host
            );
            match clusters.get(&name) {
                Some(id) => wc.push(WeightedCluster {
                    cluster: *id,
                    weight: d.weight,
                }),
                None => {
                    let ports = self
                        .service_ports
                        .get(&d.host)
                        .map(|p| {
                            p.iter()
                                .map(|(n, _)| n.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    problems.error(
                        origin,
                        format!("{path}.route"),
                        format!(
                            "the route on port {port} goes to {}:{dport}, which is not a declared port of {} (ports: {ports})",
                            d.host, d.host
                        ),
                        Some("set destination.port.number to one of the host's ports".into()),
                    );
                }
            }
        }
        (!wc.is_empty()).then(|| WeightedClusters::new(wc))
    }

    /// The VirtualService `tcp` route (bound to `mesh`) for a sidecar TCP listener of `host`
    /// on `port`: the first route whose match applies.
    pub fn sidecar_tcp(
        &self,
        host: &str,
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Option<(WeightedClusters, Option<Arc<str>>)> {
        let vs = self
            .virtual_services
            .iter()
            .find(|v| v.gateways.iter().any(|g| g == MESH) && v.hosts.iter().any(|h| h == host))?;
        let ctx = [MESH.to_string()];
        let r = vs
            .l4
            .iter()
            .filter(|r| !r.tls)
            .find(|r| l4_applies(r, &vs.gateways, &ctx, port))?;
        let w = self.weighted(&r.dests, port, clusters, &r.origin, &r.path, problems)?;
        Some((w, None))
    }

    /// VirtualService `tls` routes bound to `mesh`, for the sidecar's TLS traffic (the app's
    /// own HTTPS under capture, and `CONNECT host:443`): each SNI name of each match gets the
    /// route's destinations on the match's port (every declared TLS port of the
    /// VirtualService's hosts when the match names none). Without this, TLS to a host that the
    /// manifests send through an egress gateway would go straight out: a policy bypass.
    pub fn sidecar_tls(
        &self,
        tunnels: &mut crate::FastMap<u16, VirtualHosts>,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) {
        for vs in &self.virtual_services {
            for r in vs.l4.iter().filter(|r| r.tls) {
                for m in &r.matches {
                    let bound = m
                        .gateways
                        .as_deref()
                        .unwrap_or(&vs.gateways)
                        .iter()
                        .any(|g| g == MESH);
                    if !bound {
                        continue;
                    }
                    let ports: Vec<u16> = match m.port {
                        Some(p) => vec![p],
                        None => vs
                            .hosts
                            .iter()
                            .filter_map(|h| self.service_ports.get(h))
                            .flatten()
                            .filter(|(_, proto)| proto.is_tls())
                            .map(|(p, _)| *p)
                            .collect(),
                    };
                    for port in ports {
                        let Some(w) =
                            self.weighted(&r.dests, port, clusters, &r.origin, &r.path, problems)
                        else {
                            continue;
                        };
                        let vhosts = tunnels.entry(port).or_default();
                        for name in &m.sni_hosts {
                            if vhosts.get_mut(name).is_some() {
                                continue;
                            }
                            vhosts.insert(VirtualHost {
                                name: format!("{name}:{port}"),
                                domain: name.clone(),
                                routes: vec![HttpRoute::forward(
                                    None,
                                    WeightedClusters::new(w.clusters.clone()),
                                    None,
                                )],
                            });
                        }
                    }
                }
            }
        }
    }

    /// The L4 routing of a gateway TCP or TLS-passthrough listener.
    fn gateway_l4(
        &self,
        gl: &GatewayListener,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Option<L4Routes> {
        let tls = gl.kind == GatewayKind::TlsPassthrough;
        let mut sni_hosts = VirtualHosts::default();
        for (gw_key, gw_ns, server_hosts) in &gl.servers {
            let ctx = [gw_key.clone()];
            for vs in &self.virtual_services {
                let vs_ns = vs.id.split('/').next().unwrap_or("");
                if !vs.hosts.iter().any(|h| {
                    server_hosts
                        .iter()
                        .any(|sh| server_host_matches(sh, h, vs_ns, gw_ns))
                }) {
                    continue;
                }
                for r in vs.l4.iter().filter(|r| r.tls == tls) {
                    if !tls {
                        if l4_applies(r, &vs.gateways, &ctx, gl.port) {
                            let w = self.weighted(
                                &r.dests, gl.port, clusters, &r.origin, &r.path, problems,
                            )?;
                            return Some(L4Routes::Tcp {
                                clusters: w,
                                route_name: None,
                            });
                        }
                        continue;
                    }
                    // TLS: each SNI name of each applying match gets the route (first wins).
                    let names: Vec<&String> = r
                        .matches
                        .iter()
                        .filter(|m| {
                            m.port.is_none_or(|p| p == gl.port)
                                && m.gateways
                                    .as_deref()
                                    .unwrap_or(&vs.gateways)
                                    .iter()
                                    .any(|g| ctx.contains(g))
                        })
                        .flat_map(|m| m.sni_hosts.iter())
                        .collect();
                    if names.is_empty() {
                        continue;
                    }
                    let Some(w) =
                        self.weighted(&r.dests, gl.port, clusters, &r.origin, &r.path, problems)
                    else {
                        continue;
                    };
                    for name in names {
                        if sni_hosts.get_mut(name).is_some() {
                            continue;
                        }
                        sni_hosts.insert(VirtualHost {
                            name: format!("{name}:{}", gl.port),
                            domain: name.clone(),
                            routes: vec![HttpRoute::forward(
                                None,
                                WeightedClusters::new(w.clusters.clone()),
                                None,
                            )],
                        });
                    }
                }
            }
        }
        if tls {
            if sni_hosts.hosts.is_empty() {
                problems.warn(
                    &Origin::file(gl.name.clone()),
                    "",
                    format!("no VirtualService tls route (sniHosts) serves gateway port {}: every connection will be refused", gl.port),
                    Some("bind a VirtualService with tls: [{match: [{port, sniHosts}], route: [...]}] to the Gateway".into()),
                );
            }
            return Some(L4Routes::Sni {
                port: gl.port,
                hosts: sni_hosts,
                fallback: L4Fallback::Refuse,
            });
        }
        problems.warn(
            &Origin::file(gl.name.clone()),
            "",
            format!("no VirtualService tcp route serves gateway port {}: every connection will be refused", gl.port),
            Some("bind a VirtualService with tcp: [{match: [{port}], route: [...]}] to the Gateway".into()),
        );
        None
    }

    /// The routes of `vs` that apply on `port` for the gateways in `ctx`, in order; one route
    /// per kept match (so each keeps its name).
    fn build_routes(
        &self,
        vs: &VsRoutes,
        ctx: &[GwKey],
        port: u16,
        clusters: &HashMap<String, ClusterId>,
        problems: &mut Problems,
    ) -> Vec<HttpRoute> {
        let mut out = Vec::new();
        let bound = |gws: &[GwKey]| gws.iter().any(|g| ctx.contains(g));
        for r in &vs.routes {
            let kept: Vec<Option<&MatchSpec>> = if r.matches.is_empty() {
                if !bound(&vs.gateways) {
                    continue;
                }
                vec![None]
            } else {
                r.matches
                    .iter()
                    .filter(|m| {
                        bound(m.gateways.as_deref().unwrap_or(&vs.gateways))
                            && m.port.is_none_or(|p| p == port)
                    })
                    .map(Some)
                    .collect()
            };
            if kept.is_empty() {
                continue;
            }
            let action = match &r.action {
                ActionSpec::Direct { status, body } => RouteAction::Direct {
                    status: *status,
                    body: body.clone(),
                },
                ActionSpec::Redirect(rd) => RouteAction::Redirect(rd.clone()),
                ActionSpec::Forward(dests) => {
                    match self.weighted(dests, port, clusters, &r.origin, &r.path, problems) {
                        Some(w) => RouteAction::Forward(w),
                        None => continue,
                    }
                }
            };
            // The action is shared by all kept matches of the route; build it once per match.
            let mut first = Some(action);
            for m in kept {
                let action = match first.take() {
                    Some(a) => a,
                    None => match &out.last() {
                        Some(HttpRoute { action, .. }) => clone_action(action),
                        None => continue,
                    },
                };
                let name = match (&r.name, m.and_then(|m| m.name.as_ref())) {
                    (Some(rn), Some(mn)) => Some(format!("{rn}.{mn}")),
                    (Some(rn), None) => Some(rn.clone()),
                    (None, _) => None,
                };
                out.push(HttpRoute {
                    name: name.map(|n| Arc::from(n.as_str())),
                    matches: m.map(|m| vec![m.m.clone()]).unwrap_or_default(),
                    action,
                    timeout: r.timeout,
                    retry: r.retry.clone(),
                    fault: r.fault.clone(),
                    rewrite: r.rewrite.clone(),
                    request_headers: r.request_headers.clone(),
                    response_headers: r.response_headers.clone(),
                });
            }
        }
        out
    }
}

fn clone_action(a: &RouteAction) -> RouteAction {
    match a {
        RouteAction::Forward(w) => RouteAction::Forward(WeightedClusters::new(w.clusters.clone())),
        RouteAction::Direct { status, body } => RouteAction::Direct {
            status: *status,
            body: body.clone(),
        },
        RouteAction::Redirect(r) => RouteAction::Redirect(r.clone()),
    }
}

/// Whether an L4 route applies on `port` for the gateways in `ctx`.
fn l4_applies(r: &L4RouteSpec, vs_gateways: &[GwKey], ctx: &[GwKey], port: u16) -> bool {
    let bound = |gws: &[GwKey]| gws.iter().any(|g| ctx.contains(g));
    if r.matches.is_empty() {
        return bound(vs_gateways);
    }
    r.matches.iter().any(|m| {
        bound(m.gateways.as_deref().unwrap_or(vs_gateways)) && m.port.is_none_or(|p| p == port)
    })
}
