//! ServiceEntries: each host visible to this proxy becomes a declared service with the entry's
//! ports, resolution and endpoints (`workloadSelector` cannot be honoured: egret does not see
//! mesh workloads).

use crate::config::decl::{Resolution, ServiceDecl, check_host, lower_ports};
use crate::config::diag::Problems;
use crate::config::istio::names::visible;
use crate::config::istio::resources::SeResolution;
use crate::config::istio::store::Store;

/// The services the ServiceEntries visible in `proxy_ns` declare, one per host.
pub(super) fn services(store: &Store, proxy_ns: &str, problems: &mut Problems) -> Vec<ServiceDecl> {
    let mut services: Vec<ServiceDecl> = Vec::new();
    for se in &store.service_entries {
        if !visible(&se.spec.export_to, &se.namespace, proxy_ns) {
            tracing::debug!(
                "{}: ServiceEntry {} is not exported to namespace {proxy_ns}",
                se.origin(),
                se.id()
            );
            continue;
        }
        if se.spec.workload_selector.is_some() {
            problems.error(
                se.origin(),
                se.path("workloadSelector"),
                "workloadSelector selects mesh workloads as endpoints, which egret cannot see",
                Some("list the endpoints (endpoints[].address), or use resolution: DNS".into()),
            );
            continue;
        }
        if se.spec.hosts.is_empty() {
            problems.error(se.origin(), se.path("hosts"), "no hosts", None);
        }
        let ports = lower_ports(&se.spec.ports, &se.path(""), se.origin(), problems);
        let resolution = match se.spec.resolution.unwrap_or(SeResolution::None) {
            SeResolution::None | SeResolution::DynamicDns => Resolution::None,
            SeResolution::Static => Resolution::Static,
            SeResolution::Dns => Resolution::Dns,
            SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        };
        if resolution == Resolution::Static && se.spec.endpoints.is_empty() {
            problems.error(
                se.origin(),
                se.path("endpoints"),
                "resolution STATIC needs endpoints",
                Some("add endpoints with IP addresses, or use resolution: DNS".into()),
            );
        }
        if resolution == Resolution::None && !se.spec.endpoints.is_empty() {
            problems.error(
                se.origin(),
                se.path("endpoints"),
                "resolution NONE cannot have endpoints (Istio rejects it too)",
                Some("use resolution: STATIC or DNS".into()),
            );
        }
        let addresses = parse_addresses(&se.spec.addresses, |i, e| {
            problems.error(
                se.origin(),
                se.path(&format!("addresses[{i}]")),
                e,
                Some("an IP address (192.0.2.10) or a CIDR (192.0.2.0/24)".into()),
            );
        });
        for (i, h) in se.spec.hosts.iter().enumerate() {
            let host = h.trim_end_matches('.').to_ascii_lowercase();
            if let Err(e) = check_host(&host, false) {
                problems.error(se.origin(), se.path(&format!("hosts[{i}]")), e, None);
                continue;
            }
            if host.starts_with('*')
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && se.spec.endpoints.is_empty()
            {
                problems.error(
                    se.origin(),
                    se.path(&format!("hosts[{i}]")),
                    format!("wildcard host {host} with resolution DNS and no endpoints: there is no name to resolve"),
                    Some("use resolution: NONE (egret resolves the requested host), or list endpoints".into()),
                );
                continue;
            }
            services.push(ServiceDecl {
                host,
                ports: ports.clone(),
                resolution,
                endpoints: se.spec.endpoints.clone(),
                origin: se.origin().clone(),
                path: se.path(""),
                policy: None,
                timeout: None,
                retry: None,
                namespace: Some(se.namespace.clone()),
                subject_alt_names: se.spec.subject_alt_names.clone(),
                addresses: addresses.clone(),
                plaintext_tls_ports: Vec::new(),
            });
        }
    }
    services
}

/// ServiceEntry `addresses`: IPs and CIDRs; each bad one is reported through `bad`.
fn parse_addresses(
    raw: &[String],
    mut bad: impl FnMut(usize, String),
) -> Vec<(std::net::IpAddr, u8)> {
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let (ip, prefix) = match a.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (a.as_str(), None),
        };
        let Ok(ip) = ip.trim().parse::<std::net::IpAddr>() else {
            bad(i, format!("{a:?} is not an IP address or CIDR"));
            continue;
        };
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.map(str::parse::<u8>) {
            None => full,
            Some(Ok(p)) if p <= full => p,
            Some(_) => {
                bad(i, format!("{a:?}: the prefix length must be 0 to {full}"));
                continue;
            }
        };
        out.push((ip, prefix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_addresses;

    #[test]
    fn addresses_are_ips_or_cidrs() {
        let mut errors = Vec::new();
        let raw: Vec<String> = [
            "192.0.2.10",
            "10.0.0.0/8",
            "2001:db8::/32",
            "nope",
            "10.0.0.0/33",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = parse_addresses(&raw, |i, e| errors.push((i, e)));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, 32);
        assert_eq!(got[1].1, 8);
        assert_eq!(got[2].1, 32);
        assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4]);
    }
}
