//! DestinationRules: each service gets the rule Istio would pick (the proxy's namespace first,
//! then the service's, then any other that is exported; an exact host before the most specific
//! wildcard), as its traffic policy and subsets. Rules that match nothing or collide are
//! reported.

use std::sync::Arc;

use crate::config::decl::{PolicyDecl, PortDecl, ServiceDecl, check_port_level};
use crate::config::diag::Problems;
use crate::config::istio::credentials::Credentials;
use crate::config::istio::names::{Names, host_matches, selects, visible};
use crate::config::istio::options::{IstioOptions, Role};
use crate::config::istio::resources::DestinationRuleSpec;
use crate::config::istio::store::{Obj, Store};
use crate::text::suggest;

/// A rule that applies to this proxy, with its host expanded.
type Applicable<'a> = (&'a Obj<DestinationRuleSpec>, String);

/// Finds each service's DestinationRule (the proxy's namespace first, then the service's, then
/// any other that is exported), and reports rules that match nothing or collide.
pub(super) fn attach_destination_rules(
    store: &Store,
    services: &mut [ServiceDecl],
    names: &Names<'_>,
    opts: &IstioOptions,
    credentials: &Arc<Credentials>,
    problems: &mut Problems,
) {
    let mut unselected = Vec::new();
    let applicable = applicable_rules(store, services, names, opts, &mut unselected, problems);
    // Two rules for the same host in the same namespace: Istio keeps the first one's
    // trafficPolicy and silently drops the other's.
    for (i, (a, ha)) in applicable.iter().enumerate() {
        for (b, hb) in applicable.iter().skip(i + 1) {
            if ha == hb && a.namespace == b.namespace {
                problems.error(
                    b.origin(),
                    b.path("host"),
                    format!("DestinationRules {} and {} both apply to {ha}", a.id(), b.id()),
                    Some("Istio would silently drop the second rule's trafficPolicy (including portLevelSettings); merge them into one rule".into()),
                );
            }
        }
    }
    for svc in services.iter_mut() {
        attach(svc, &applicable, &opts.namespace, credentials, problems);
    }
    warn_unselected_tls(&unselected, services, opts, problems);
}

/// A DestinationRule whose `workloadSelector` leaves this proxy out does not apply, as in
/// Istio, so a port it would have given TLS, and whose traffic goes to port 443, leaves in
/// plaintext. That is said at start and in `egret check`, and counted in
/// `egret_insecure_destinations` (`ServiceDecl::plaintext_tls_ports`).
fn warn_unselected_tls(
    unselected: &[Applicable<'_>],
    services: &mut [ServiceDecl],
    opts: &IstioOptions,
    problems: &mut Problems,
) {
    use crate::config::spec::TlsModeSpec;
    let originates = |t: &Option<crate::config::spec::TlsSpec>| {
        t.as_ref()
            .and_then(|t| t.mode)
            .is_some_and(|m| m != TlsModeSpec::Disable)
    };
    let labels = match opts.role {
        Role::Sidecar => &opts.workload_labels,
        Role::Gateway => &opts.gateway_selector,
    };
    for (dr, host) in unselected {
        let Some(tp) = &dr.spec.traffic_policy else {
            continue;
        };
        let all = originates(&tp.tls);
        let ports: Vec<u32> = tp
            .port_level_settings
            .iter()
            .filter(|p| originates(&p.tls))
            .map(|p| p.port.number)
            .collect();
        for svc in services
            .iter_mut()
            .filter(|s| &s.host == host && s.policy.is_none())
        {
            for p in &svc.ports {
                let target = p.target_port.unwrap_or(p.number);
                if p.protocol.is_tls()
                    || target != 443
                    || !(all || ports.contains(&u32::from(p.number)))
                {
                    continue;
                }
                let selector = dr
                    .spec
                    .workload_selector
                    .as_ref()
                    .map(|w| fmt_labels(w.labels()))
                    .unwrap_or_default();
                problems.warn(
                    dr.origin(),
                    dr.path("workloadSelector"),
                    format!(
                        "DestinationRule {} (workloadSelector {{{selector}}}) does not select this proxy (labels {{{}}}), so port {} of {host} goes to port {target} in PLAINTEXT, as Istio does; the rule's TLS does not apply",
                        dr.id(),
                        fmt_labels(labels),
                        p.number
                    ),
                    Some("add this workload's labels to the selector (--workload-label, or /etc/istio/pod/labels under `egret proxy`), or drop workloadSelector".into()),
                );
                svc.plaintext_tls_ports.push(p.number);
            }
        }
    }
}

fn fmt_labels(l: &std::collections::BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rules that apply to this proxy (workloadSelector, exportTo) and name a declared host;
/// the others are skipped, or reported when their host is not declared.
fn applicable_rules<'a>(
    store: &'a Store,
    services: &[ServiceDecl],
    names: &Names<'_>,
    opts: &IstioOptions,
    unselected: &mut Vec<Applicable<'a>>,
    problems: &mut Problems,
) -> Vec<Applicable<'a>> {
    let proxy_ns = opts.namespace.as_str();
    let labels = match opts.role {
        Role::Sidecar => &opts.workload_labels,
        Role::Gateway => &opts.gateway_selector,
    };
    let mut applicable: Vec<Applicable<'a>> = Vec::new();
    for dr in &store.destination_rules {
        let host = names.fqdn(&dr.spec.host, &dr.namespace);
        if let Some(ws) = &dr.spec.workload_selector
            && (dr.namespace != proxy_ns || !selects(ws.labels(), labels))
        {
            unselected.push((dr, host));
            continue;
        }
        if !visible(&dr.spec.export_to, &dr.namespace, proxy_ns) {
            continue;
        }
        if !services
            .iter()
            .any(|s| host_matches(&host, &s.host) || s.host == host)
        {
            let known: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
            problems.error(
                dr.origin(),
                dr.path("host"),
                format!(
                    "DestinationRule {} is for {host}, which no ServiceEntry declares",
                    dr.id()
                ),
                Some(match suggest(&host, known.iter().copied()) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => "declare the host in a ServiceEntry, or fix the host".into(),
                }),
            );
            continue;
        }
        let mut seen_subsets: Vec<&str> = Vec::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if seen_subsets.contains(&s.name.as_str()) {
                problems.error(
                    dr.origin(),
                    dr.path(&format!("subsets[{i}].name")),
                    format!("subset \"{}\" is defined twice", s.name),
                    None,
                );
            }
            seen_subsets.push(&s.name);
        }
        applicable.push((dr, host));
    }
    applicable
}

/// Gives `svc` the rule Istio picks for it, after checking the rule's policy against the
/// service's ports.
fn attach(
    svc: &mut ServiceDecl,
    applicable: &[Applicable<'_>],
    proxy_ns: &str,
    credentials: &Arc<Credentials>,
    problems: &mut Problems,
) {
    let svc_ns = svc.namespace.clone().unwrap_or_default();
    let candidates =
        |ns_pred: &dyn Fn(&str) -> bool| -> Option<&(&Obj<DestinationRuleSpec>, String)> {
            // Exact host first, then the most specific wildcard.
            let in_ns: Vec<&(&Obj<DestinationRuleSpec>, String)> = applicable
                .iter()
                .filter(|(dr, _)| ns_pred(&dr.namespace))
                .collect();
            in_ns
                .iter()
                .find(|(_, h)| *h == svc.host)
                .copied()
                .or_else(|| {
                    in_ns
                        .iter()
                        .filter(|(_, h)| h.starts_with('*') && host_matches(h, &svc.host))
                        .max_by_key(|(_, h)| h.len())
                        .copied()
                })
        };
    let found = candidates(&|ns| ns == proxy_ns)
        .or_else(|| candidates(&|ns| ns == svc_ns))
        .or_else(|| candidates(&|_| true));
    let Some((dr, _)) = found else { return };
    let tp = dr.spec.traffic_policy.clone().unwrap_or_default();
    let ports: Vec<PortDecl> = svc.ports.clone();
    check_port_level(
        &tp,
        &ports,
        &svc.host,
        &dr.path("trafficPolicy"),
        dr.origin(),
        problems,
    );
    crate::config::decl::warn_unapplied(&tp, &dr.path("trafficPolicy"), dr.origin(), problems);
    for (i, sub) in dr.spec.subsets.iter().enumerate() {
        if let Some(stp) = &sub.traffic_policy {
            crate::config::decl::warn_unapplied(
                stp,
                &dr.path(&format!("subsets[{i}].trafficPolicy")),
                dr.origin(),
                problems,
            );
        }
    }
    if tp.tunnel.is_some() || tp.proxy_protocol.is_some() {
        problems.error(
            dr.origin(),
            dr.path("trafficPolicy"),
            "tunnel and proxyProtocol are not supported",
            Some("remove them; egret would not honour them".into()),
        );
    }
    svc.policy = Some(PolicyDecl {
        spec: tp,
        origin: dr.origin().clone(),
        path: dr.path("trafficPolicy"),
        base_dir: dr.src.base_dir.clone(),
        subsets: dr.spec.subsets.clone(),
        credentials: Some(credentials.clone()),
        namespace: dr.namespace.clone(),
    });
}
