//! Route destinations checked against the registry, once every service is known: a host no
//! ServiceEntry declares is a Kubernetes service (`name.ns.svc.domain`, resolved by the cluster
//! DNS) or an error; a port must be declared and a subset defined by a DestinationRule. The
//! subset clusters routes name are collected here.

use std::collections::BTreeMap;

use crate::config::decl::{PortDecl, Resolution, ServiceDecl};
use crate::config::diag::{Origin, Problems};
use crate::config::istio::names::Names;
use crate::config::istio::virtual_service::DestRef;
use crate::config::model::Protocol;
use crate::text::suggest;

/// Destinations no ServiceEntry declares: Kubernetes services become declared services (HTTP,
/// on the ports routes name), anything else is an error.
pub(super) fn kubernetes_services(
    dest_refs: &[DestRef],
    services: &mut Vec<ServiceDecl>,
    names: &Names<'_>,
    problems: &mut Problems,
) {
    let mut k8s_refs: BTreeMap<String, Vec<(u16, Protocol, Origin)>> = BTreeMap::new();
    // Destinations: declared by a ServiceEntry, or Kubernetes services (name.ns.svc.domain),
    // which the cluster DNS resolves.
    for (d, origin, path) in dest_refs {
        if services.iter().any(|s| s.host == d.host) {
            continue;
        }
        if names.is_cluster_local(&d.host) {
            match d.port {
                Some(p) => k8s_refs.entry(d.host.clone()).or_default().push((p, Protocol::Http, origin.clone())),
                None => problems.error(
                    origin,
                    format!("{path}.port"),
                    format!("{} is a Kubernetes service, and egret does not read Service objects, so the port is needed", d.host),
                    Some("set destination.port.number".into()),
                ),
            }
            continue;
        }
        let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
        let hint = suggest(&d.host, known.iter().copied())
            .map(|s| format!("did you mean \"{s}\"?"))
            .unwrap_or_else(|| {
                "declare the host in a ServiceEntry (hosts, ports, resolution)".into()
            });
        problems.error(
            origin,
            format!("{path}.host"),
            format!(
                "the route goes to {}, which no ServiceEntry declares",
                d.host
            ),
            Some(hint),
        );
    }
    for (host, refs) in k8s_refs {
        let mut ports: Vec<PortDecl> = Vec::new();
        for (p, proto, _) in &refs {
            if !ports.iter().any(|x| x.number == *p) {
                ports.push(PortDecl {
                    number: *p,
                    name: None,
                    protocol: *proto,
                    target_port: None,
                });
            }
        }
        tracing::debug!("{host}: a Kubernetes service, resolved through the cluster DNS");
        let origin = refs[0].2.clone();
        services.push(ServiceDecl {
            host: host.clone(),
            ports,
            resolution: Resolution::Dns,
            endpoints: Vec::new(),
            origin,
            path: "(Kubernetes service)".into(),
            policy: None,
            timeout: None,
            retry: None,
            namespace: host.split('.').nth(1).map(str::to_string),
            subject_alt_names: Vec::new(),
            addresses: Vec::new(),
            plaintext_tls_ports: Vec::new(),
        });
    }
}

/// Port and subset checks of the destinations; returns the (host, port, subset) clusters the
/// routes name.
pub(super) fn check_destinations(
    dest_refs: &[DestRef],
    services: &[ServiceDecl],
    problems: &mut Problems,
) -> Vec<(String, u16, String)> {
    let mut subsets: Vec<(String, u16, String)> = Vec::new();
    for (d, origin, path) in dest_refs {
        let Some(svc) = services.iter().find(|s| s.host == d.host) else {
            continue;
        };
        if let Some(p) = d.port
            && !svc.ports.iter().any(|x| x.number == p)
        {
            let declared: Vec<String> = svc.ports.iter().map(|x| x.number.to_string()).collect();
            let target_hint = svc
                .ports
                .iter()
                .find(|x| x.target_port == Some(p))
                .map(|x| {
                    format!(
                        "destination.port is the service port: use {} (whose targetPort is {p})",
                        x.number
                    )
                });
            problems.error(
                origin,
                format!("{path}.port.number"),
                format!(
                    "{} does not expose port {p} (declared: {})",
                    d.host,
                    declared.join(", ")
                ),
                target_hint.or_else(|| Some("use one of the declared ports".into())),
            );
            continue;
        }
        if let Some(s) = &d.subset {
            let defined = svc
                .policy
                .as_ref()
                .is_some_and(|p| p.subsets.iter().any(|x| &x.name == s));
            if !defined {
                let names: Vec<&str> = svc
                    .policy
                    .as_ref()
                    .map(|p| p.subsets.iter().map(|x| x.name.as_str()).collect())
                    .unwrap_or_default();
                problems.error(
                    origin,
                    format!("{path}.subset"),
                    format!(
                        "subset \"{s}\" of {} is not defined by a DestinationRule",
                        d.host
                    ),
                    Some(match suggest(s, names.iter().copied()) {
                        Some(x) => format!("did you mean \"{x}\"?"),
                        None => "add it to the DestinationRule's subsets".into(),
                    }),
                );
                continue;
            }
            let ports: Vec<u16> = match d.port {
                Some(p) => vec![p],
                None => svc.ports.iter().map(|p| p.number).collect(),
            };
            for p in ports {
                subsets.push((d.host.clone(), p, s.clone()));
            }
        }
    }
    subsets
}
