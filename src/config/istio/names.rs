//! Names and visibility, as Istio decides them: short names expand to
//! `name.namespace.svc.cluster.local`, `exportTo` and namespaces decide which objects this
//! proxy sees, label selectors pick workloads, and host patterns (`*.example.com`, Gateway
//! server hosts `[ns/]dnsName`) cover hosts.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Whether an object exported to `export_to` from `obj_ns` is visible in `proxy_ns`.
pub(super) fn visible(export_to: &[String], obj_ns: &str, proxy_ns: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => obj_ns == proxy_ns,
            "~" => false,
            ns => ns == proxy_ns,
        })
}

/// Whether every label of `selector` is among `labels`.
pub(super) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Host names as written in namespace-scoped objects, and the cluster domain they expand into.
pub(super) struct Names<'a> {
    pub(super) domain: &'a str,
}

impl Names<'_> {
    /// Istio's short-name expansion: `svc` in namespace `ns` is `svc.ns.svc.cluster.local`.
    pub(super) fn fqdn(&self, host: &str, ns: &str) -> String {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h.contains('.') || h.starts_with('*') || h.parse::<IpAddr>().is_ok() {
            h
        } else {
            format!("{h}.{ns}.svc.{}", self.domain)
        }
    }

    /// Whether a host is a Kubernetes service of the cluster (`*.svc.<domain>`).
    pub(super) fn is_cluster_local(&self, host: &str) -> bool {
        host.ends_with(&format!(".svc.{}", self.domain))
    }
}

/// Gateway server host `[ns/]dnsName` against a VirtualService host in namespace `vs_ns`.
pub(super) fn server_host_matches(
    server_host: &str,
    vs_host: &str,
    vs_ns: &str,
    gw_ns: &str,
) -> bool {
    let (ns, name) = match server_host.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("*", server_host),
    };
    let ns_ok = match ns {
        "*" => true,
        "." => vs_ns == gw_ns,
        other => other == vs_ns,
    };
    ns_ok && host_matches(name, vs_host)
}

/// `pattern` (exact, `*.suffix` or `*`) covers `host`.
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_like_istio() {
        let n = Names {
            domain: "cluster.local",
        };
        assert_eq!(
            n.fqdn("ci00000000-test-egress", "work"),
            "ci00000000-test-egress.work.svc.cluster.local"
        );
        assert_eq!(n.fqdn("www.oracle.com", "work"), "www.oracle.com");
        assert_eq!(n.fqdn("*.example.com", "work"), "*.example.com");
    }

    #[test]
    fn export_to_and_gateway_hosts() {
        assert!(visible(&[], "a", "b"));
        assert!(visible(&[".".into()], "a", "a"));
        assert!(!visible(&[".".into()], "a", "b"));
        assert!(visible(&["b".into()], "a", "b"));
        assert!(!visible(&["~".into()], "a", "a"));
        assert!(server_host_matches("*", "x.example.com", "ns", "gw"));
        assert!(server_host_matches(
            "./x.example.com",
            "x.example.com",
            "gw",
            "gw"
        ));
        assert!(!server_host_matches(
            "./x.example.com",
            "x.example.com",
            "other",
            "gw"
        ));
        assert!(server_host_matches(
            "*/*.example.com",
            "a.example.com",
            "ns",
            "gw"
        ));
        assert!(!server_host_matches(
            "*.example.com",
            "example.com",
            "ns",
            "gw"
        ));
    }
}
