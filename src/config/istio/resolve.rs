//! Resolution: the collected Istio objects become declared services (in `model.services`) and
//! the [`Routing`] of VirtualServices and Gateways (in `model.routing`), in named phases: the
//! mesh defaults, the ServiceEntries, the VirtualServices, the destinations routes name, the
//! DestinationRules, then the Gateways.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::decl::Model;
use crate::config::diag::{Origin, Problems};
use crate::config::istio::credentials::Credentials;
use crate::config::istio::destination_rule::attach_destination_rules;
use crate::config::istio::destinations::{check_destinations, kubernetes_services};
use crate::config::istio::gateway::build_gateways;
use crate::config::istio::names::Names;
use crate::config::istio::options::{IstioOptions, Role};
use crate::config::istio::resources::{MeshConfigSpec, MeshEncodingSpec, MeshOutboundMode};
use crate::config::istio::routing::Routing;
use crate::config::istio::service_entry;
use crate::config::istio::store::Store;
use crate::config::istio::virtual_service::{check_mesh_hosts, virtual_services};
use crate::config::model::{AccessLogConfig, AccessLogPath, OutboundPolicy, Protocol};

/// Resolves the collected Istio objects into services (in `model.services`) and routing.
pub fn resolve(model: &mut Model, opts: &IstioOptions, problems: &mut Problems) {
    let Some(mut store) = model.istio.take() else {
        return;
    };
    let names = Names {
        domain: &opts.cluster_domain,
    };
    let credentials = prepare(&mut store, opts);

    // MeshConfig.
    if let Some((mesh, origin)) = store.mesh.take() {
        apply_mesh(mesh, &origin, model, problems);
    }

    // ServiceEntries visible to this proxy.
    let mut services = service_entry::services(&store, &opts.namespace, problems);

    // VirtualServices (all are parsed and validated; visibility decides which ones route).
    let (vss, dest_refs) = virtual_services(&store, opts, &names, problems);

    // Destinations: declared by a ServiceEntry, or Kubernetes services (name.ns.svc.domain),
    // which the cluster DNS resolves.
    kubernetes_services(&dest_refs, &mut services, &names, problems);

    // DestinationRules: attach to services, in Istio's lookup order.
    attach_destination_rules(&store, &mut services, &names, opts, &credentials, problems);

    // Port and subset checks of the destinations.
    let subsets = check_destinations(&dest_refs, &services, problems);

    // One VirtualService per host for the sidecar; VirtualService hosts must be declared.
    check_mesh_hosts(&vss, &services, problems);

    // Gateways (gateway role).
    let mut gateway_listeners = Vec::new();
    if opts.role == Role::Gateway {
        gateway_listeners = build_gateways(&store, opts, &credentials, problems);
    }

    let mut service_ports: BTreeMap<String, Vec<(u16, Protocol)>> = BTreeMap::new();
    for s in &services {
        let e = service_ports.entry(s.host.clone()).or_default();
        for p in &s.ports {
            if !e.iter().any(|(n, _)| *n == p.number) {
                e.push((p.number, p.protocol));
            }
        }
    }
    model.services.extend(services);
    model.routing = Some(Routing {
        role: opts.role,
        virtual_services: vss,
        gateway_listeners,
        subsets,
        service_ports,
    });
}

/// Objects without a namespace get the proxy's (`--namespace`); the Secrets become the
/// `credentialName` lookup, with `--credentials-dir` behind them.
fn prepare(store: &mut Store, opts: &IstioOptions) -> Arc<Credentials> {
    let proxy_ns = opts.namespace.as_str();
    for o in store.service_entries.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.destination_rules.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.virtual_services.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    for o in store.gateways.iter_mut() {
        if o.namespace.is_empty() {
            o.namespace = proxy_ns.to_string();
        }
    }
    Arc::new(Credentials {
        secrets: store
            .secrets
            .drain(..)
            .map(|(ns, name, data)| ((ns.unwrap_or_else(|| proxy_ns.to_string()), name), data))
            .collect(),
        dir: opts.credentials_dir.clone(),
    })
}

/// The MeshConfig's outbound traffic policy, access log and drain duration, unless the native
/// configuration sets them too (an error).
fn apply_mesh(mesh: MeshConfigSpec, origin: &Origin, model: &mut Model, problems: &mut Problems) {
    if let Some(o) = mesh.outbound_traffic_policy {
        if let Some((_, prev)) = &model.outbound_policy {
            problems.error(
                origin,
                "outboundTrafficPolicy",
                format!("the outbound traffic policy is also set in {prev}"),
                Some("set it in one place".into()),
            );
        } else {
            let p = match o.mode {
                MeshOutboundMode::RegistryOnly => OutboundPolicy::RegistryOnly,
                MeshOutboundMode::AllowAny => OutboundPolicy::AllowAny,
            };
            if o.egress_proxy.is_some() {
                problems.error(
                    origin,
                    "outboundTrafficPolicy.egressProxy",
                    "egressProxy is not supported",
                    Some("route through an egress gateway with a VirtualService instead".into()),
                );
            }
            model.outbound_policy = Some((p, origin.clone()));
        }
    }
    let log_given = mesh.access_log_file.is_some()
        || mesh.access_log_encoding.is_some()
        || mesh.access_log_format.is_some();
    if log_given {
        if let Some((_, prev)) = &model.access_log {
            problems.error(
                origin,
                "accessLogFile",
                format!("the access log is also configured in {prev}"),
                Some("configure it in one place".into()),
            );
        } else {
            let mut log = AccessLogConfig::default();
            if let Some(f) = &mesh.access_log_file {
                // Istio: an empty accessLogFile turns logging off.
                log.path = if f.is_empty() {
                    AccessLogPath::Off
                } else {
                    AccessLogConfig::parse_path(f)
                };
            }
            if let Some(e) = mesh.access_log_encoding {
                log.encoding = match e {
                    MeshEncodingSpec::Text => crate::access_log::Encoding::Text,
                    MeshEncodingSpec::Json => crate::access_log::Encoding::Json,
                };
            }
            log.format = mesh.access_log_format.filter(|f| !f.trim().is_empty());
            model.access_log = Some((log, origin.clone()));
        }
    }
    if let Some(c) = mesh.default_config {
        if let Some(d) = c.drain_duration {
            model.drain_duration = Some(d.0);
        }
        if let Some(n) = c.concurrency {
            model.concurrency = Some(n as usize);
        }
    }
}
