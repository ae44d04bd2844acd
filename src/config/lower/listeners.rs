//! Listeners: the declared (or default) outbound listeners with their route tables (the
//! VirtualService routes, then the default route of every declared HTTP port, and the CONNECT
//! tunnels), native TCP and TLS listeners, the sidecar's automatic TCP listeners, then the
//! gateway listeners.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::decl::{ListenerDecl, ListenerKind, Model};
use crate::config::diag::{Origin, Problems};
use crate::config::istio::routing::Routing;
use crate::config::lower::clusters::{Clusters, DefaultRoute, L4Port};
use crate::config::model::{
    DEFAULT_OUTBOUND_LISTEN, DEFAULT_TCP_LISTEN_ADDRESS, Listener, OutboundPolicy,
};
use crate::config::overrides::Overrides;
use crate::config::source::EMBEDDED_DEFAULT_NAME;
use crate::route::{
    ClusterId, Fallback, HttpRoute, PortSource, RouteTable, VirtualHost, WeightedClusters,
};

/// The listeners, in order: the declared outbound listeners (HTTP, TCP, TLS), the sidecar's
/// TCP listeners, then the gateway listeners.
pub(crate) fn listeners(
    model: &Model,
    overrides: &Overrides,
    outbound_policy: OutboundPolicy,
    clusters: &Clusters,
    mut captured: Option<crate::route::CapturedRoutes>,
    problems: &mut Problems,
) -> Vec<Listener> {
    let passthrough = clusters.passthrough;
    let fallback = match outbound_policy {
        OutboundPolicy::RegistryOnly => Fallback::BlockAll,
        OutboundPolicy::AllowAny => Fallback::AllowAny(passthrough),
    };
    let gateway_role = model.routing.as_ref().is_some_and(Routing::is_gateway);
    let mut listeners = Vec::new();
    let decls = listener_decls(model, overrides, gateway_role);
    for decl in &decls {
        if decl.kind != ListenerKind::Http {
            let ports = &clusters.l4_ports;
            if let Some(l4) = declared_l4(decl, ports, outbound_policy, passthrough, problems) {
                listeners.push(Listener {
                    name: decl.name.clone(),
                    address: decl.address,
                    routes: Arc::new(RouteTable::new(
                        PortSource::Fixed(decl.port.unwrap_or(0)),
                        Fallback::NotFound,
                    )),
                    use_remote_address: false,
                    tls: None,
                    l4: Some(Arc::new(l4)),
                });
            }
            continue;
        }
        let port_source = decl.port.map_or(PortSource::Request, PortSource::Fixed);
        let mut table = RouteTable::new(port_source, fallback.clone());
        if let Some(r) = &model.routing {
            r.sidecar_routes(&mut table, &clusters.by_name, decl.port, problems);
        }
        add_default_routes(&mut table, &clusters.default_routes, decl.port, problems);
        if decl.port.is_none() {
            // VirtualService tls routes first: they win over the host's own cluster.
            if let Some(r) = &model.routing {
                r.sidecar_tls(&mut table.tunnels, &clusters.by_name, problems);
            }
            add_tunnels(&mut table, &clusters.l4_ports);
            // The first outbound listener is the one the capture rules redirect to.
            table.captured = captured.take();
        }
        listeners.push(Listener {
            name: decl.name.clone(),
            address: decl.address,
            routes: Arc::new(table),
            use_remote_address: false,
            tls: None,
            l4: None,
        });
    }
    // Under capture, TCP ports need no listener: their connections arrive redirected at the
    // outbound listener, which tells hosts apart by original destination.
    if !gateway_role && !overrides.capture {
        let ip = overrides
            .tcp_listen_address
            .unwrap_or(DEFAULT_TCP_LISTEN_ADDRESS);
        let bind_ports = &overrides.istio.bind_ports;
        // Ports a declared `protocol: TCP` listener already serves get no automatic one.
        let declared: Vec<u16> = decls
            .iter()
            .filter(|d| d.kind == ListenerKind::Tcp)
            .filter_map(|d| d.port)
            .collect();
        let auto: Vec<L4Port> = clusters
            .l4_ports
            .iter()
            .filter(|p| !declared.contains(&p.port))
            .cloned()
            .collect();
        tcp_listeners(
            &mut listeners,
            &auto,
            ip,
            bind_ports,
            model.routing.as_ref(),
            &clusters.by_name,
            problems,
        );
    }
    if let Some(r) = &model.routing {
        r.gateway_listeners(&mut listeners, &clusters.by_name, problems);
    }
    listeners
}

/// The declared listeners; without any (and not a gateway) the default outbound listener.
/// `--listen` moves the outbound HTTP listener, or adds one.
fn listener_decls(model: &Model, overrides: &Overrides, gateway_role: bool) -> Vec<ListenerDecl> {
    let mut decls = model.listeners.clone();
    if decls.is_empty() && !gateway_role {
        decls.push(ListenerDecl {
            name: "outbound".into(),
            address: DEFAULT_OUTBOUND_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 15001))),
            port: None,
            kind: ListenerKind::Http,
            origin: Origin::file(EMBEDDED_DEFAULT_NAME),
        });
    }
    if let Some(addr) = overrides.outbound_listen {
        match decls
            .iter_mut()
            .find(|l| l.port.is_none() && l.kind == ListenerKind::Http)
        {
            Some(l) => l.address = addr,
            None => decls.push(ListenerDecl {
                name: "outbound".into(),
                address: addr,
                port: None,
                kind: ListenerKind::Http,
                origin: Origin::file("<command line>"),
            }),
        }
    }
    decls
}

/// Adds the route Istio generates when no VirtualService applies: every request for the host
/// and port goes to its cluster (route name `default`). Hosts that already have a virtual host
/// (from a VirtualService) are left alone.
pub(crate) fn add_default_routes(
    table: &mut RouteTable,
    routes: &[DefaultRoute],
    only_port: Option<u16>,
    problems: &mut Problems,
) {
    for DefaultRoute {
        port,
        host,
        cluster,
        timeout,
        retry,
        origin,
    } in routes
    {
        if only_port.is_some_and(|p| p != *port) {
            continue;
        }
        let vhosts = table.vhosts_mut(*port);
        if vhosts.get_mut(host).is_some() {
            continue;
        }
        let inserted = vhosts.insert(VirtualHost {
            name: format!("{host}:{port}"),
            domain: host.clone(),
            routes: vec![{
                let mut r = HttpRoute::forward(
                    Some(Arc::from("default")),
                    WeightedClusters::single(*cluster),
                    *timeout,
                );
                if let Some(p) = retry {
                    r.retry = p.clone();
                }
                r
            }],
        });
        if !inserted {
            problems.error(
                &Origin::file(origin.clone()),
                "",
                format!("host {host} port {port} is routed twice"),
                None,
            );
        }
    }
}

/// The routing of a native `protocol: TCP` or `protocol: TLS` listener.
fn declared_l4(
    decl: &ListenerDecl,
    ports: &[L4Port],
    policy: OutboundPolicy,
    passthrough: ClusterId,
    problems: &mut Problems,
) -> Option<crate::route::L4Routes> {
    use crate::route::{L4Fallback, L4Routes, VirtualHosts};
    let port = decl.port?;
    match decl.kind {
        ListenerKind::Http => None,
        ListenerKind::Tcp => {
            let hosts: Vec<&L4Port> = ports
                .iter()
                .filter(|p| p.port == port && p.protocol.is_opaque_tcp())
                .collect();
            match hosts.as_slice() {
                [one] => Some(L4Routes::Tcp {
                    clusters: WeightedClusters::single(one.cluster),
                    route_name: None,
                }),
                [] => {
                    problems.error(
                        &decl.origin,
                        format!("listeners[{}]", decl.name),
                        format!("no destination declares TCP port {port}"),
                        Some("add a destination with this port and protocol TCP".into()),
                    );
                    None
                }
                [a, b, ..] => {
                    problems.error(
                        &decl.origin,
                        format!("listeners[{}]", decl.name),
                        format!("TCP port {port} is declared by {} and by {}; a TCP listener cannot tell them apart", a.host, b.host),
                        Some("give each TCP destination its own port".into()),
                    );
                    None
                }
            }
        }
        ListenerKind::Tls => {
            let mut hosts = VirtualHosts::default();
            for p in ports
                .iter()
                .filter(|p| p.port == port && p.protocol.is_tls())
            {
                hosts.insert(VirtualHost {
                    name: format!("{}:{port}", p.host),
                    domain: p.host.clone(),
                    routes: vec![HttpRoute::forward(
                        None,
                        WeightedClusters::single(p.cluster),
                        None,
                    )],
                });
            }
            if hosts.hosts.is_empty() && policy == OutboundPolicy::RegistryOnly {
                problems.warn(
                    &decl.origin,
                    format!("listeners[{}]", decl.name),
                    format!("no destination declares an HTTPS or TLS port {port}: under REGISTRY_ONLY every connection to this listener will be refused"),
                    Some(format!("declare the hosts with a port {{number: {port}, protocol: TLS}} (or HTTPS)")),
                );
            }
            Some(L4Routes::Sni {
                port,
                hosts,
                fallback: match policy {
                    OutboundPolicy::AllowAny => L4Fallback::AllowAny(passthrough),
                    OutboundPolicy::RegistryOnly => L4Fallback::Refuse,
                },
            })
        }
    }
}

/// Where `CONNECT host:port` may go on an outbound listener: every host declared on a TLS,
/// HTTPS or TCP port.
fn add_tunnels(table: &mut RouteTable, ports: &[L4Port]) {
    for p in ports {
        let vhosts = table.tunnels.entry(p.port).or_default();
        if vhosts.get_mut(&p.host).is_some() {
            continue;
        }
        vhosts.insert(VirtualHost {
            name: format!("{}:{}", p.host, p.port),
            domain: p.host.clone(),
            routes: vec![HttpRoute::forward(
                None,
                WeightedClusters::single(p.cluster),
                None,
            )],
        });
    }
}

/// The sidecar's TCP listeners: each opaque-TCP port is served at `ip` and the same port (or
/// the `--bind-port` mapping). Without transparent capture a listener cannot tell hosts apart,
/// so a port claimed by two hosts is an error.
fn tcp_listeners(
    listeners: &mut Vec<Listener>,
    ports: &[L4Port],
    ip: IpAddr,
    bind_ports: &HashMap<u16, u16>,
    routing: Option<&Routing>,
    clusters: &HashMap<String, ClusterId>,
    problems: &mut Problems,
) {
    let mut by_port: std::collections::BTreeMap<u16, Vec<&L4Port>> = Default::default();
    for p in ports.iter().filter(|p| p.protocol.is_opaque_tcp()) {
        by_port.entry(p.port).or_default().push(p);
    }
    for (port, hosts) in by_port {
        if let [a, b, ..] = hosts.as_slice() {
            problems.error(
                &Origin::file(b.origin.clone()),
                "",
                format!(
                    "TCP port {port} is declared by {} and by {} ({}); a sidecar TCP listener on {ip}:{port} cannot tell them apart",
                    a.host, b.host, a.origin
                ),
                Some("give each TCP destination its own port number, or route them through an egress gateway".into()),
            );
            continue;
        }
        let p = hosts[0];
        let (clusters, route_name) =
            match routing.and_then(|r| r.sidecar_tcp(&p.host, port, clusters, problems)) {
                Some((w, name)) => (w, name),
                None => (WeightedClusters::single(p.cluster), None),
            };
        listeners.push(Listener {
            name: format!("{ip}_{port}"),
            address: SocketAddr::new(ip, bind_ports.get(&port).copied().unwrap_or(port)),
            routes: Arc::new(RouteTable::new(PortSource::Fixed(port), Fallback::NotFound)),
            use_remote_address: false,
            tls: None,
            l4: Some(Arc::new(crate::route::L4Routes::Tcp {
                clusters,
                route_name,
            })),
        });
    }
}
