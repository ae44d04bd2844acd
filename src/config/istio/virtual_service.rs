//! VirtualServices: each one parsed and validated into its routes (HTTP routes with their
//! matches, actions, rewrites and header operations; `tcp` and `tls` routes), with the
//! Gateways and destinations they name. All are checked; `exportTo` decides which ones route.
//! Fields egret cannot honour are reported: an error when ignoring them would change how
//! requests are answered, a warning otherwise.

use std::collections::{BTreeMap, HashMap};

use crate::config::decl::ServiceDecl;
use crate::config::diag::{Origin, Problems};
use crate::config::istio::names::{Names, selects, visible};
use crate::config::istio::options::IstioOptions;
use crate::config::istio::resources::{
    DirectResponseSpec, GatewaySpec, HeaderOpsSpec, HttpMatchSpec, HttpRouteDestinationSpec,
    HttpRouteSpec, L4MatchSpec, RedirectSpec, RouteDestinationSpec, StringMatchSpec, TlsMatchSpec,
    VirtualServiceSpec,
};
use crate::config::istio::routing::{
    ActionSpec, DestKey, GwKey, L4Match, L4RouteSpec, MESH, MatchSpec, RouteSpec, VsRoutes,
};
use crate::config::istio::store::{Obj, Store};
use crate::route::{HeaderOps, Redirect, Rewrite, RouteMatch, StringMatch};
use crate::text::suggest;

/// A destination a route names, with where (origin, field path): checked against the registry
/// once every service is known.
pub(super) type DestRef = (DestKey, Origin, String);

/// Parses every VirtualService (in load order) into its routes; returns the visible ones and
/// every destination the routes name.
pub(super) fn virtual_services(
    store: &Store,
    opts: &IstioOptions,
    names: &Names<'_>,
    problems: &mut Problems,
) -> (Vec<VsRoutes>, Vec<DestRef>) {
    let mut phase = VsPhase {
        gateway_keys: store
            .gateways
            .iter()
            .map(|g| (format!("{}/{}", g.namespace, g.name), g))
            .collect(),
        opts,
        names,
        dest_refs: Vec::new(),
    };
    let mut vss: Vec<VsRoutes> = Vec::new();
    for vs in &store.virtual_services {
        let routes = phase.virtual_service(vs, problems);
        if visible(&vs.spec.export_to, &vs.namespace, &opts.namespace) {
            vss.push(routes);
        }
    }
    (vss, phase.dest_refs)
}

/// Checks across the VirtualServices bound to `mesh`, once the services are known.
pub(super) fn check_mesh_hosts(
    vss: &[VsRoutes],
    services: &[ServiceDecl],
    problems: &mut Problems,
) {
    // One VirtualService per host for the sidecar (Istio does not merge them on sidecars).
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for vs in vss {
        if !vs.gateways.iter().any(|g| g == MESH) {
            continue;
        }
        for h in &vs.hosts {
            if let Some(prev) = seen.insert(h.as_str(), vs.id.as_str()) {
                let origin = vs
                    .routes
                    .first()
                    .map(|r| r.origin.clone())
                    .unwrap_or_default();
                problems.error(
                    &origin,
                    "spec.hosts",
                    format!("host {h} is routed by two VirtualServices bound to mesh: {prev} and {}", vs.id),
                    Some("Istio sidecars use only one of them; merge their http routes into one VirtualService".into()),
                );
            }
        }
    }
    // VirtualService hosts must be declared (sidecar routes are keyed by declared hosts).
    for vs in vss {
        if !vs.gateways.iter().any(|g| g == MESH) {
            continue;
        }
        for h in &vs.hosts {
            if !services.iter().any(|s| &s.host == h) {
                let origin = vs
                    .routes
                    .first()
                    .map(|r| r.origin.clone())
                    .unwrap_or_default();
                let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
                problems.error(
                    &origin,
                    "spec.hosts",
                    format!("VirtualService {} routes host {h} for the mesh, but no ServiceEntry declares it", vs.id),
                    Some(match suggest(h, known.iter().copied()) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => "declare the host in a ServiceEntry".into(),
                    }),
                );
            }
        }
    }
}

/// The fields `TCPRoute` and `TLSRoute` matches share.
struct L4MatchView<'a> {
    port: Option<u32>,
    gateways: &'a [String],
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: Option<&'a str>,
}

impl<'a> From<&'a L4MatchSpec> for L4MatchView<'a> {
    fn from(m: &'a L4MatchSpec) -> Self {
        L4MatchView {
            port: m.port,
            gateways: &m.gateways,
            sni_hosts: &[],
            destination_subnets: &m.destination_subnets,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

impl<'a> From<&'a TlsMatchSpec> for L4MatchView<'a> {
    fn from(m: &'a TlsMatchSpec) -> Self {
        L4MatchView {
            port: m.port,
            gateways: &m.gateways,
            sni_hosts: &m.sni_hosts,
            destination_subnets: &m.destination_subnets,
            source_labels: &m.source_labels,
            source_namespace: m.source_namespace.as_deref(),
        }
    }
}

/// What HTTP, TCP and TLS route matches share: sourceLabels/sourceNamespace (does the match
/// apply to this proxy at all), port and gateways.
struct MatchScope<'a> {
    labels: &'a BTreeMap<String, String>,
    namespace: Option<&'a str>,
    port: Option<u32>,
    gateways: &'a [String],
}

/// The VirtualService phase's shared state: the Gateways routes may name, the proxy's options
/// and names, and the destinations collected so far.
struct VsPhase<'a> {
    gateway_keys: Vec<(String, &'a Obj<GatewaySpec>)>,
    opts: &'a IstioOptions,
    names: &'a Names<'a>,
    dest_refs: Vec<DestRef>,
}

impl VsPhase<'_> {
    /// One VirtualService: its gateways and hosts, then its HTTP routes, then its `tcp` and
    /// `tls` routes.
    fn virtual_service(
        &mut self,
        vs: &Obj<VirtualServiceSpec>,
        problems: &mut Problems,
    ) -> VsRoutes {
        let gateways: Vec<GwKey> = if vs.spec.gateways.is_empty() {
            vec![MESH.to_string()]
        } else {
            vs.spec
                .gateways
                .iter()
                .enumerate()
                .filter_map(|(i, g)| {
                    self.gw_ref(vs, g, problems, vs.path(&format!("gateways[{i}]")))
                })
                .collect()
        };
        if vs.spec.hosts.is_empty() {
            problems.error(
                vs.origin(),
                vs.path("hosts"),
                "no hosts",
                Some("list the hosts this VirtualService routes".into()),
            );
        }
        let hosts: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .map(|h| self.names.fqdn(h, &vs.namespace))
            .collect();
        let mut routes = Vec::new();
        for (ri, r) in vs.spec.http.iter().enumerate() {
            if let Some(route) = self.http_route(vs, ri, r, problems) {
                routes.push(route);
            }
        }
        // tcp and tls routes: served by TCP and TLS-passthrough listeners.
        let l4_routes = self.l4_routes(vs, problems);
        VsRoutes {
            id: vs.id(),
            hosts,
            gateways,
            routes,
            l4: l4_routes,
        }
    }

    /// A Gateway as a route names it (`name`, `ns/name` or `mesh`); `None` (reported) when no
    /// such Gateway was given.
    fn gw_ref(
        &self,
        vs: &Obj<VirtualServiceSpec>,
        g: &str,
        problems: &mut Problems,
        path: String,
    ) -> Option<GwKey> {
        let gateway_keys = &self.gateway_keys;
        if g == MESH {
            return Some(MESH.to_string());
        }
        let key = if g.contains('/') {
            g.to_string()
        } else {
            format!("{}/{g}", vs.namespace)
        };
        if gateway_keys.iter().any(|(k, _)| *k == key) {
            Some(key)
        } else {
            let known: Vec<&str> = gateway_keys.iter().map(|(k, _)| k.as_str()).collect();
            let hint = suggest(&key, known.iter().copied())
                .map(|s| format!("did you mean \"{s}\"?"))
                .or_else(|| Some(format!("declare a Gateway named {key}, or use \"mesh\" for sidecars (Gateways known: {})", if known.is_empty() { "none".into() } else { known.join(", ") })));
            problems.error(
                vs.origin(),
                path,
                format!(
                    "the VirtualService {} names Gateway \"{g}\", which does not exist",
                    vs.id()
                ),
                hint,
            );
            None
        }
    }

    /// Where a match applies. `None`: it does not apply here (sourceLabels/sourceNamespace of
    /// another workload), or it is invalid (reported).
    fn scope(
        &self,
        vs: &Obj<VirtualServiceSpec>,
        scope: MatchScope<'_>,
        mpath: &str,
        problems: &mut Problems,
    ) -> Option<(Option<u16>, Option<Vec<GwKey>>)> {
        let MatchScope {
            labels,
            namespace: ns,
            port,
            gateways,
        } = scope;
        let (opts, proxy_ns) = (self.opts, self.opts.namespace.as_str());
        if (!labels.is_empty() || ns.is_some())
            && !(selects(labels, &opts.workload_labels) && ns.is_none_or(|n| n == proxy_ns))
        {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) => match u16::try_from(p).ok().filter(|p| *p > 0) {
                Some(p) => Some(p),
                None => {
                    problems.error(
                        vs.origin(),
                        format!("{mpath}.port"),
                        format!("{p} is not a port number"),
                        None,
                    );
                    return None;
                }
            },
        };
        let gws = (!gateways.is_empty()).then(|| {
            gateways
                .iter()
                .enumerate()
                .filter_map(|(i, g)| self.gw_ref(vs, g, problems, format!("{mpath}.gateways[{i}]")))
                .collect()
        });
        Some((port, gws))
    }

    /// One HTTP route: its unsupported fields reported, its matches (when none is kept, the
    /// route does not apply here), its one action, rewrite and header operations.
    fn http_route(
        &mut self,
        vs: &Obj<VirtualServiceSpec>,
        ri: usize,
        r: &HttpRouteSpec,
        problems: &mut Problems,
    ) -> Option<RouteSpec> {
        let rpath = vs.path(&format!("http[{ri}]"));
        unsupported_fields(vs, &rpath, r, problems);
        let mut matches = Vec::new();
        for (mi, m) in r.matches.iter().enumerate() {
            let mpath = format!("{rpath}.match[{mi}]");
            if let Some(m) = self.route_match(vs, &mpath, m, problems) {
                matches.push(m);
            }
        }
        if !r.matches.is_empty() && matches.is_empty() {
            // Every match was for other workloads (sourceLabels): the route does not apply.
            return None;
        }
        let n_actions = usize::from(!r.route.is_empty())
            + usize::from(r.redirect.is_some())
            + usize::from(r.direct_response.is_some());
        if n_actions != 1 {
            problems.error(
                vs.origin(),
                rpath.clone(),
                if n_actions == 0 {
                    "the route has no route, redirect or directResponse".to_string()
                } else {
                    "route, redirect and directResponse are exclusive".to_string()
                },
                None,
            );
            return None;
        }
        let action = if let Some(d) = &r.direct_response {
            direct_response(vs, &rpath, d, problems)?
        } else if let Some(rd) = &r.redirect {
            redirect(vs, &rpath, rd, problems)
        } else {
            self.forward(vs, &rpath, &r.route, problems)?
        };
        let rewrite = r.rewrite.as_ref().map(|rw| {
            if rw.uri_regex_rewrite.is_some() {
                problems.error(
                    vs.origin(),
                    format!("{rpath}.rewrite.uriRegexRewrite"),
                    "uriRegexRewrite is not supported",
                    Some("use rewrite.uri with a prefix match".into()),
                );
            }
            Rewrite {
                uri: rw.uri.clone(),
                authority: rw.authority.clone(),
            }
        });
        let hdrs = r.headers.clone().unwrap_or_default();
        Some(RouteSpec {
            name: r.name.clone(),
            matches,
            action,
            timeout: r.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
            retry: crate::config::policies::retry_policy(
                r.retries.as_ref(),
                vs.origin(),
                &format!("{rpath}.retries"),
                problems,
            ),
            fault: crate::config::policies::fault(
                r.fault.as_ref(),
                vs.origin(),
                &format!("{rpath}.fault"),
                problems,
            ),
            rewrite,
            request_headers: header_ops(
                hdrs.request.as_ref(),
                vs.origin(),
                &format!("{rpath}.headers.request"),
                problems,
            ),
            response_headers: header_ops(
                hdrs.response.as_ref(),
                vs.origin(),
                &format!("{rpath}.headers.response"),
                problems,
            ),
            origin: vs.origin().clone(),
            path: rpath,
        })
    }

    /// One HTTP match; `None` when it does not apply here (or is invalid).
    fn route_match(
        &self,
        vs: &Obj<VirtualServiceSpec>,
        mpath: &str,
        m: &HttpMatchSpec,
        problems: &mut Problems,
    ) -> Option<MatchSpec> {
        let mut rm = RouteMatch {
            name: m.name.clone(),
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            ..RouteMatch::default()
        };
        rm.uri = m
            .uri
            .as_ref()
            .and_then(|s| string_match(s, vs.origin(), &format!("{mpath}.uri"), problems));
        rm.method = m
            .method
            .as_ref()
            .and_then(|s| string_match(s, vs.origin(), &format!("{mpath}.method"), problems));
        rm.authority = m
            .authority
            .as_ref()
            .and_then(|s| string_match(s, vs.origin(), &format!("{mpath}.authority"), problems));
        rm.scheme = m
            .scheme
            .as_ref()
            .and_then(|s| string_match(s, vs.origin(), &format!("{mpath}.scheme"), problems));
        for (list, src, what) in [
            (&mut rm.headers, &m.headers, "headers"),
            (
                &mut rm.without_headers,
                &m.without_headers,
                "withoutHeaders",
            ),
        ] {
            for (k, v) in src {
                let Ok(n) = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) else {
                    problems.error(
                        vs.origin(),
                        format!("{mpath}.{what}.{k}"),
                        format!("\"{k}\" is not a header name"),
                        None,
                    );
                    continue;
                };
                list.push((
                    n,
                    string_match(v, vs.origin(), &format!("{mpath}.{what}.{k}"), problems),
                ));
            }
        }
        for (k, v) in &m.query_params {
            if let Some(sm) = string_match(
                v,
                vs.origin(),
                &format!("{mpath}.queryParams.{k}"),
                problems,
            ) {
                rm.query_params.push((k.clone(), sm));
            }
        }
        let scope = MatchScope {
            labels: &m.source_labels,
            namespace: m.source_namespace.as_deref(),
            port: m.port,
            gateways: &m.gateways,
        };
        let (port, mgws) = self.scope(vs, scope, mpath, problems)?;
        Some(MatchSpec {
            m: rm,
            port,
            gateways: mgws,
            name: m.name.clone(),
        })
    }

    /// The destinations of a forwarding route, each recorded for the registry checks; `None`
    /// when none is usable.
    fn forward(
        &mut self,
        vs: &Obj<VirtualServiceSpec>,
        rpath: &str,
        route: &[HttpRouteDestinationSpec],
        problems: &mut Problems,
    ) -> Option<ActionSpec> {
        let mut dests = Vec::new();
        for (di, d) in route.iter().enumerate() {
            let dpath = format!("{rpath}.route[{di}]");
            if d.headers.is_some() {
                problems.warn(
                    vs.origin(),
                    format!("{dpath}.headers"),
                    "per-destination headers are ignored; use the route's headers",
                    None,
                );
            }
            let host = self.names.fqdn(&d.destination.host, &vs.namespace);
            let port = match &d.destination.port {
                None => None,
                Some(p) => match u16::try_from(p.number).ok().filter(|p| *p > 0) {
                    Some(p) => Some(p),
                    None => {
                        problems.error(
                            vs.origin(),
                            format!("{dpath}.destination.port.number"),
                            format!("{} is not a port number", p.number),
                            None,
                        );
                        continue;
                    }
                },
            };
            let weight = match d.weight {
                Some(w) if w < 0 => {
                    problems.error(
                        vs.origin(),
                        format!("{dpath}.weight"),
                        "weights cannot be negative",
                        None,
                    );
                    continue;
                }
                Some(w) => w as u32,
                None => 0,
            };
            let key = DestKey {
                host: host.clone(),
                port,
                subset: d.destination.subset.clone(),
                weight,
            };
            self.dest_refs.push((
                key.clone(),
                vs.origin().clone(),
                format!("{dpath}.destination"),
            ));
            dests.push(key);
        }
        if dests.is_empty() {
            return None;
        }
        Some(ActionSpec::Forward(dests))
    }

    /// The `tcp` routes, then the `tls` routes, in order.
    fn l4_routes(
        &mut self,
        vs: &Obj<VirtualServiceSpec>,
        problems: &mut Problems,
    ) -> Vec<L4RouteSpec> {
        let mut l4_routes: Vec<L4RouteSpec> = Vec::new();
        let l4 = vs
            .spec
            .tcp
            .iter()
            .map(|r| (false, &r.matches, &r.route))
            .map(|(t, m, r)| (t, m.iter().map(L4MatchView::from).collect::<Vec<_>>(), r))
            .chain(vs.spec.tls.iter().map(|r| {
                (
                    true,
                    r.matches.iter().map(L4MatchView::from).collect::<Vec<_>>(),
                    &r.route,
                )
            }));
        let (mut tcp_i, mut tls_i) = (0, 0);
        for (is_tls, matches, route) in l4 {
            let ri = if is_tls {
                tls_i += 1;
                tls_i - 1
            } else {
                tcp_i += 1;
                tcp_i - 1
            };
            if let Some(r) = self.l4_route(vs, is_tls, ri, &matches, route, problems) {
                l4_routes.push(r);
            }
        }
        l4_routes
    }

    /// One `tcp` or `tls` route: its destinations (recorded), then its matches; `None` when no
    /// match applies here, or (reported) when it has no destination.
    fn l4_route(
        &mut self,
        vs: &Obj<VirtualServiceSpec>,
        is_tls: bool,
        ri: usize,
        matches: &[L4MatchView<'_>],
        route: &[RouteDestinationSpec],
        problems: &mut Problems,
    ) -> Option<L4RouteSpec> {
        let kind = if is_tls { "tls" } else { "tcp" };
        let mut dests = Vec::new();
        for (di, d) in route.iter().enumerate() {
            let host = self.names.fqdn(&d.destination.host, &vs.namespace);
            let dpath = vs.path(&format!("{kind}[{ri}].route[{di}]"));
            if d.weight.is_some_and(|w| w < 0) {
                problems.error(
                    vs.origin(),
                    format!("{dpath}.weight"),
                    "weights cannot be negative",
                    None,
                );
                continue;
            }
            let key = DestKey {
                host,
                port: d
                    .destination
                    .port
                    .as_ref()
                    .and_then(|p| u16::try_from(p.number).ok()),
                subset: d.destination.subset.clone(),
                weight: d.weight.unwrap_or(0).max(0) as u32,
            };
            self.dest_refs.push((
                key.clone(),
                vs.origin().clone(),
                format!("{dpath}.destination"),
            ));
            dests.push(key);
        }
        let mut kept = Vec::new();
        for (mi, m) in matches.iter().enumerate() {
            let mpath = vs.path(&format!("{kind}[{ri}].match[{mi}]"));
            if let Some(m) = self.l4_match(vs, is_tls, &mpath, m, problems) {
                kept.push(m);
            }
        }
        if !matches.is_empty() && kept.is_empty() {
            return None;
        }
        if dests.is_empty() {
            problems.error(
                vs.origin(),
                vs.path(&format!("{kind}[{ri}].route")),
                format!("a {kind} route needs at least one destination"),
                None,
            );
            return None;
        }
        Some(L4RouteSpec {
            tls: is_tls,
            matches: kept,
            dests,
            origin: vs.origin().clone(),
            path: vs.path(&format!("{kind}[{ri}]")),
        })
    }

    /// One `tcp` or `tls` match; `None` when it does not apply here (or is invalid).
    fn l4_match(
        &self,
        vs: &Obj<VirtualServiceSpec>,
        is_tls: bool,
        mpath: &str,
        m: &L4MatchView<'_>,
        problems: &mut Problems,
    ) -> Option<L4Match> {
        if is_tls && m.sni_hosts.is_empty() {
            problems.error(
                vs.origin(),
                format!("{mpath}.sniHosts"),
                "sniHosts is required in a tls route match",
                Some(
                    "list the SNI names this route takes, e.g. sniHosts: [api.example.com]".into(),
                ),
            );
            return None;
        }
        if !m.destination_subnets.is_empty() {
            problems.error(
                vs.origin(),
                format!("{mpath}.destinationSubnets"),
                "destinationSubnets needs transparent capture of the original destination, which egret does not have",
                Some("remove destinationSubnets; egret routes a TCP listener by its port".into()),
            );
        }
        let scope = MatchScope {
            labels: m.source_labels,
            namespace: m.source_namespace,
            port: m.port,
            gateways: m.gateways,
        };
        let (port, gateways) = self.scope(vs, scope, mpath, problems)?;
        let sni_hosts = m
            .sni_hosts
            .iter()
            .map(|h| self.names.fqdn(h, &vs.namespace))
            .collect();
        Some(L4Match {
            port,
            gateways,
            sni_hosts,
        })
    }
}

/// Route fields egret does not implement: an error when ignoring them would change how requests
/// are answered (delegate), a warning otherwise.
fn unsupported_fields(
    vs: &Obj<VirtualServiceSpec>,
    rpath: &str,
    r: &HttpRouteSpec,
    problems: &mut Problems,
) {
    for (field, set, fatal) in [
        ("delegate", r.delegate.is_some(), true),
        (
            "mirror",
            r.mirror.is_some()
                || r.mirrors.is_some()
                || r.mirror_percentage.is_some()
                || r.mirror_percent.is_some(),
            false,
        ),
        ("corsPolicy", r.cors_policy.is_some(), false),
    ] {
        if !set {
            continue;
        }
        if fatal {
            problems.error(
                vs.origin(),
                format!("{rpath}.{field}"),
                format!(
                    "{field} changes how requests are answered, and egret does not implement it"
                ),
                Some(format!("remove {field}; egret would not honour it")),
            );
        } else {
            let what = match field {
                "mirror" => "egret does not mirror traffic",
                _ => "egret does not apply CORS policies",
            };
            problems.warn(
                vs.origin(),
                format!("{rpath}.{field}"),
                format!("{field} is ignored: {what}"),
                None,
            );
        }
    }
}

/// A `directResponse`; `None` (reported) for a status that is not an HTTP status.
fn direct_response(
    vs: &Obj<VirtualServiceSpec>,
    rpath: &str,
    d: &DirectResponseSpec,
    problems: &mut Problems,
) -> Option<ActionSpec> {
    let Some(status) = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
    else {
        problems.error(
            vs.origin(),
            format!("{rpath}.directResponse.status"),
            format!("{} is not an HTTP status", d.status),
            None,
        );
        return None;
    };
    let body = d.body.as_ref().and_then(|b| {
        b.string.clone().or_else(|| {
            b.bytes.as_ref().and_then(|x| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(x)
                    .ok()
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            })
        })
    });
    Some(ActionSpec::Direct { status, body })
}

/// A `redirect` (`derivePort` is warned about and ignored).
fn redirect(
    vs: &Obj<VirtualServiceSpec>,
    rpath: &str,
    rd: &RedirectSpec,
    problems: &mut Problems,
) -> ActionSpec {
    if rd.derive_port.is_some() {
        problems.warn(
            vs.origin(),
            format!("{rpath}.redirect.derivePort"),
            "derivePort is ignored: the request's port is kept unless port is set",
            None,
        );
    }
    ActionSpec::Redirect(Redirect {
        scheme: rd.scheme.clone(),
        authority: rd.authority.clone(),
        port: rd.port.and_then(|p| u16::try_from(p).ok()),
        uri: rd.uri.clone(),
        code: rd
            .redirect_code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(301),
    })
}

fn string_match(
    spec: &StringMatchSpec,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> Option<StringMatch> {
    let n = usize::from(spec.exact.is_some())
        + usize::from(spec.prefix.is_some())
        + usize::from(spec.regex.is_some());
    if n > 1 {
        problems.error(
            origin,
            path.to_string(),
            "set one of exact, prefix or regex",
            None,
        );
        return None;
    }
    if let Some(e) = &spec.exact {
        return Some(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &spec.prefix {
        return Some(StringMatch::Prefix(p.clone()));
    }
    if let Some(r) = &spec.regex {
        return match regex::Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => Some(StringMatch::Regex(re)),
            Err(e) => {
                problems.error(
                    origin,
                    format!("{path}.regex"),
                    format!("invalid regex \"{r}\": {e}"),
                    None,
                );
                None
            }
        };
    }
    None
}

fn header_ops(
    spec: Option<&HeaderOpsSpec>,
    origin: &Origin,
    path: &str,
    problems: &mut Problems,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let Some(spec) = spec else { return ops };
    let mut pair =
        |k: &str, v: &str, what: &str| -> Option<(http::HeaderName, http::HeaderValue)> {
            match (
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    problems.error(
                        origin,
                        format!("{path}.{what}.{k}"),
                        format!("\"{k}: {v}\" is not a valid header"),
                        None,
                    );
                    None
                }
            }
        };
    ops.set = spec
        .set
        .iter()
        .filter_map(|(k, v)| pair(k, v, "set"))
        .collect();
    ops.add = spec
        .add
        .iter()
        .filter_map(|(k, v)| pair(k, v, "add"))
        .collect();
    ops.remove = spec
        .remove
        .iter()
        .filter_map(|k| http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    ops
}
