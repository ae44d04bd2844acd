//! The lowering's phases, in order: the global settings (outbound policy, DNS, access log), the
//! clusters, the listeners, then the checks across listeners; the result is one `Config`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::decl::Model;
use crate::config::diag::{Origin, Problems};
use crate::config::lower::capture;
use crate::config::lower::clusters::clusters;
use crate::config::lower::listeners::listeners;
use crate::config::model::{AccessLogConfig, Config, DnsConfig, Listener, OutboundPolicy};
use crate::config::overrides::Overrides;
use crate::config::source::EMBEDDED_DEFAULT_NAME;

/// Lowers the model into a `Config`, checking everything that needs the whole picture.
pub(crate) fn build(mut model: Model, overrides: &Overrides, problems: &mut Problems) -> Config {
    let outbound_policy = overrides
        .outbound_policy
        .or(model.outbound_policy.as_ref().map(|(p, _)| *p))
        .unwrap_or(OutboundPolicy::RegistryOnly);
    let dns = dns(&mut model, overrides);
    let access_log = access_log(&mut model, overrides, problems);

    // Clusters: one per (host, service port) of every declared service, plus the subset
    // clusters that routes name, plus the passthrough cluster.
    let clusters = clusters(&model, overrides, problems);

    // Listeners: the outbound (sidecar) listeners, then the gateway listeners.
    let captured = capture::captured(&model, overrides, &clusters, outbound_policy, problems);
    let listeners = listeners(
        &model,
        overrides,
        outbound_policy,
        &clusters,
        captured.routes,
        problems,
    );
    check_addresses(&listeners, problems);

    Config {
        listeners,
        clusters: clusters.list,
        outbound_policy,
        dns,
        access_log,
        upstream_overrides: overrides.upstream.clone(),
        warnings: Vec::new(),
        drain_duration: model.drain_duration,
        concurrency: model.concurrency,
        names: Arc::new(captured.names),
        plaintext_tls_ports: model
            .services
            .iter()
            .map(|s| s.plaintext_tls_ports.len())
            .sum(),
    }
}

/// The declared DNS settings (or the defaults), with `--dns-server` over them.
fn dns(model: &mut Model, overrides: &Overrides) -> DnsConfig {
    let mut dns = model.dns.take().map(|(d, _)| d).unwrap_or_default();
    if !overrides.dns_servers.is_empty() {
        dns.servers = overrides.dns_servers.clone();
    }
    dns
}

/// The declared access log (or the default), with `--access-log` over it; its format is
/// checked here, where the encoding is final.
fn access_log(
    model: &mut Model,
    overrides: &Overrides,
    problems: &mut Problems,
) -> AccessLogConfig {
    let (mut access_log, log_origin) = model.access_log.take().unwrap_or_else(|| {
        (
            AccessLogConfig::default(),
            Origin::file(EMBEDDED_DEFAULT_NAME),
        )
    });
    if let Some(path) = &overrides.access_log {
        access_log.path = AccessLogConfig::parse_path(path);
    }
    if let Err(e) =
        crate::access_log::LogFormat::from_mesh(access_log.encoding, access_log.format.as_deref())
    {
        problems.error(
            &log_origin,
            "accessLogFormat",
            e,
            Some(
                "see the operator list in the README; Envoy's syntax is %OPERATOR(ARG):MAXLEN%"
                    .into(),
            ),
        );
    }
    access_log
}

/// Two listeners cannot share an address (or, with an ephemeral port, a name and address).
fn check_addresses(listeners: &[Listener], problems: &mut Problems) {
    let mut seen_addrs: HashMap<Arc<str>, String> = HashMap::new();
    for l in listeners {
        if let Some(prev) = seen_addrs.insert(l.key(), l.name.clone()) {
            problems.error(
                &Origin::file("listeners"),
                "",
                format!("listener \"{}\" and listener \"{prev}\" both use {}", l.name, l.address),
                Some("give each listener its own address or port (--bind-port maps a Gateway port to another)".into()),
            );
        }
    }
}
