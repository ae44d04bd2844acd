//! Gateways (the gateway role): the servers of the Gateways selected by `--gateway-selector`
//! become one listener per port, serving HTTP (optionally terminating TLS, SIMPLE or MUTUAL),
//! opaque TCP, or TLS passthrough by SNI.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::diag::{Origin, Problems};
use crate::config::istio::credentials::Credentials;
use crate::config::istio::names::selects;
use crate::config::istio::options::IstioOptions;
use crate::config::istio::resources::{GatewaySpec, ServerSpec, ServerTlsMode, ServerTlsSpec};
use crate::config::istio::routing::{GatewayKind, GatewayListener};
use crate::config::istio::store::{Obj, Store};
use crate::config::model::{PemSource, Protocol, ServerTlsPolicy};
use crate::config::overrides::map_path;
use crate::text::suggest;

/// The listeners of the Gateways selected by `--gateway-selector`.
pub(super) fn build_gateways(
    store: &Store,
    opts: &IstioOptions,
    credentials: &Credentials,
    problems: &mut Problems,
) -> Vec<GatewayListener> {
    let origin = Origin::file("<command line>");
    if opts.gateway_selector.is_empty() {
        problems.error(&origin, "--gateway-selector", "--role gateway needs --gateway-selector KEY=VALUE (the gateway pod's labels, e.g. istio=egressgateway)", None);
        return Vec::new();
    }
    let mut by_port: BTreeMap<u16, GatewayListener> = BTreeMap::new();
    let mut selected = 0;
    for gw in &store.gateways {
        if gw.spec.selector.is_empty() || !selects(&gw.spec.selector, &opts.gateway_selector) {
            continue;
        }
        selected += 1;
        let key = format!("{}/{}", gw.namespace, gw.name);
        for (si, server) in gw.spec.servers.iter().enumerate() {
            let spath = gw.path(&format!("servers[{si}]"));
            let Some(Server {
                port,
                kind,
                tls,
                ip,
            }) = gateway_server(gw, server, &spath, opts, credentials, problems)
            else {
                continue;
            };
            let bind_port = opts.bind_ports.get(&port).copied().unwrap_or(port);
            let address = SocketAddr::new(ip, bind_port);
            let entry = by_port.entry(port).or_insert_with(|| GatewayListener {
                name: format!("{ip}_{port}"),
                address,
                port,
                kind,
                tls: tls.clone(),
                servers: Vec::new(),
            });
            if entry.kind != kind {
                problems.error(
                    gw.origin(),
                    format!("{spath}.port"),
                    format!(
                        "port {port} is served as {:?} by one server and as {kind:?} by another",
                        entry.kind
                    ),
                    Some("use one port per protocol".into()),
                );
                continue;
            }
            if entry.tls.is_some() != tls.is_some() {
                problems.error(
                    gw.origin(),
                    format!("{spath}.tls"),
                    format!("port {port} is served both with and without TLS"),
                    Some("use one port per protocol".into()),
                );
                continue;
            }
            entry
                .servers
                .push((key.clone(), gw.namespace.clone(), server.hosts.clone()));
        }
    }
    if selected == 0 {
        report_unselected(store, opts, &origin, problems);
    }
    by_port.into_values().collect()
}

/// One checked Gateway server.
struct Server {
    port: u16,
    kind: GatewayKind,
    /// TLS the listener terminates.
    tls: Option<Arc<ServerTlsPolicy>>,
    /// Where it binds (`bind`, else `--listen-address`).
    ip: IpAddr,
}

/// Checks one server of a selected Gateway: its port, protocol and hosts, what it serves, the
/// TLS it terminates and where it binds. `None`: unusable (reported).
fn gateway_server(
    gw: &Obj<GatewaySpec>,
    server: &ServerSpec,
    spath: &str,
    opts: &IstioOptions,
    credentials: &Credentials,
    problems: &mut Problems,
) -> Option<Server> {
    let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p > 0) else {
        problems.error(
            gw.origin(),
            format!("{spath}.port.number"),
            format!("{} is not a port number", server.port.number),
            None,
        );
        return None;
    };
    let protocol = match server
        .port
        .protocol
        .as_deref()
        .map(|p| (p, Protocol::parse(p)))
    {
        Some((_, Some(p))) => p,
        Some((p, None)) => {
            problems.error(
                gw.origin(),
                format!("{spath}.port.protocol"),
                format!("unknown protocol \"{p}\""),
                suggest(p, Protocol::NAMES).map(|s| format!("did you mean \"{s}\"?")),
            );
            return None;
        }
        None => {
            problems.error(
                gw.origin(),
                format!("{spath}.port.protocol"),
                "the server port has no protocol",
                Some("set HTTP, HTTPS, TCP or TLS".into()),
            );
            return None;
        }
    };
    if server.hosts.is_empty() {
        problems.error(
            gw.origin(),
            format!("{spath}.hosts"),
            "a Gateway server needs hosts",
            None,
        );
        return None;
    }
    let kind = match (protocol, server.tls.as_ref().and_then(|t| t.mode)) {
        (p, _) if p.is_opaque_tcp() => GatewayKind::Tcp,
        (Protocol::Tls | Protocol::Https, Some(ServerTlsMode::Passthrough)) => {
            GatewayKind::TlsPassthrough
        }
        (Protocol::Tls | Protocol::Https, Some(ServerTlsMode::AutoPassthrough)) => {
            problems.error(
                gw.origin(),
                format!("{spath}.tls.mode"),
                "AUTO_PASSTHROUGH routes by Istio's mTLS SNI (outbound_.PORT_.SUBSET_.HOST), which needs a mesh identity egret does not have",
                Some("use PASSTHROUGH with a VirtualService tls route (sniHosts)".into()),
            );
            return None;
        }
        (Protocol::Tls, _) => {
            problems.error(
                gw.origin(),
                format!("{spath}.tls.mode"),
                "a TLS server is served as passthrough: set tls.mode PASSTHROUGH",
                Some("use PASSTHROUGH (route by SNI with a VirtualService tls route), or protocol HTTPS with SIMPLE/MUTUAL to terminate".into()),
            );
            return None;
        }
        _ => GatewayKind::Http,
    };
    let tls = if kind == GatewayKind::Http {
        server_termination(
            gw,
            server,
            protocol,
            spath,
            credentials,
            &opts.mounts,
            problems,
        )?
    } else {
        None
    };
    let ip = match &server.bind {
        Some(b) => match b.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                problems.error(
                    gw.origin(),
                    format!("{spath}.bind"),
                    format!("\"{b}\" is not an IP address"),
                    None,
                );
                return None;
            }
        },
        None => opts.listen_address,
    };
    Some(Server {
        port,
        kind,
        tls,
        ip,
    })
}

/// The TLS an HTTP or HTTPS server terminates: `Some(None)` for plaintext, `None` when the
/// server cannot be served (reported).
fn server_termination(
    gw: &Obj<GatewaySpec>,
    server: &ServerSpec,
    protocol: Protocol,
    spath: &str,
    credentials: &Credentials,
    mounts: &[(PathBuf, PathBuf)],
    problems: &mut Problems,
) -> Option<Option<Arc<ServerTlsPolicy>>> {
    let tls = match (protocol, &server.tls) {
        (p, None) if p.is_http() => None,
        (p, Some(t)) if p.is_http() => {
            if t.https_redirect == Some(true) {
                problems.warn(
                    gw.origin(),
                    format!("{spath}.tls.httpsRedirect"),
                    "httpsRedirect is ignored: egret serves this plaintext port",
                    None,
                );
            }
            None
        }
        (Protocol::Https, Some(t)) => {
            match t.mode {
                Some(
                    ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual,
                ) => match server_tls(t, gw, spath, credentials, mounts, problems) {
                    Some(p) => Some(Arc::new(p)),
                    None => return None,
                },
                Some(ServerTlsMode::IstioMutual) => {
                    problems.error(gw.origin(), format!("{spath}.tls.mode"), "ISTIO_MUTUAL needs an Istio mesh identity, which egret does not have", Some("use SIMPLE or MUTUAL with serverCertificate/privateKey or credentialName".into()));
                    return None;
                }
                // Passthrough modes were taken above: what is left is a missing mode.
                _ => {
                    problems.error(
                    gw.origin(),
                    format!("{spath}.tls.mode"),
                    "an HTTPS server's tls has no mode",
                    Some("set SIMPLE or MUTUAL (egret terminates TLS) or PASSTHROUGH (routed by SNI with a VirtualService tls route)".into()),
                );
                    return None;
                }
            }
        }
        (Protocol::Https, None) => {
            problems.error(
                gw.origin(),
                format!("{spath}.tls"),
                "an HTTPS server needs tls",
                Some(
                    "add tls with mode SIMPLE and serverCertificate/privateKey (or credentialName)"
                        .into(),
                ),
            );
            return None;
        }
        (p, _) => {
            problems.error(
                gw.origin(),
                format!("{spath}.port.protocol"),
                format!(
                    "{} gateway servers are not served by egret's HTTP listeners",
                    p.as_str()
                ),
                Some("use protocol HTTP (or HTTPS with tls termination)".into()),
            );
            return None;
        }
    };
    Some(tls)
}

/// No Gateway matches `--gateway-selector`: says which selectors the given Gateways have.
fn report_unselected(store: &Store, opts: &IstioOptions, origin: &Origin, problems: &mut Problems) {
    let sel: Vec<String> = opts
        .gateway_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let known: Vec<String> = store
        .gateways
        .iter()
        .map(|g| format!("{} (selector {:?})", g.id(), g.spec.selector))
        .collect();
    problems.error(
        origin,
        "--gateway-selector",
        format!("no Gateway selects {}", sel.join(",")),
        Some(if known.is_empty() {
            "no Gateway objects were given".into()
        } else {
            format!("Gateways: {}", known.join("; "))
        }),
    );
}

fn server_tls(
    t: &ServerTlsSpec,
    gw: &Obj<GatewaySpec>,
    spath: &str,
    credentials: &Credentials,
    mounts: &[(PathBuf, PathBuf)],
    problems: &mut Problems,
) -> Option<ServerTlsPolicy> {
    let file = |p: &str| -> PemSource {
        let pb = PathBuf::from(p);
        let pb = match &gw.src.base_dir {
            Some(d) if pb.is_relative() => d.join(pb),
            _ => pb,
        };
        PemSource::File(map_path(mounts, &pb))
    };
    let mutual = matches!(
        t.mode,
        Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    );
    for (field, set) in [
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
        ("caCrl", t.ca_crl.is_some()),
    ] {
        if set {
            problems.error(
                gw.origin(),
                format!("{spath}.tls.{field}"),
                format!(
                    "{field} restricts which clients are accepted, and egret does not implement it"
                ),
                Some(format!("remove {field}")),
            );
            return None;
        }
    }
    if !t.cipher_suites.is_empty()
        || t.min_protocol_version.is_some()
        || t.max_protocol_version.is_some()
    {
        problems.warn(gw.origin(), format!("{spath}.tls"), "cipherSuites and min/maxProtocolVersion are ignored: egret serves TLS 1.2 and 1.3 with AEAD ciphers", None);
    }
    let (cert, key, ca) =
        if let Some(name) = t.credential_name.as_ref().or(t.credential_names.first()) {
            match credentials.lookup(&gw.namespace, name) {
                Ok(c) => (c.cert, c.key, c.ca),
                Err(e) => {
                    problems.error(gw.origin(), format!("{spath}.tls.credentialName"), e, None);
                    return None;
                }
            }
        } else {
            (
                t.server_certificate.as_deref().map(file),
                t.private_key.as_deref().map(file),
                t.ca_certificates.as_deref().map(file),
            )
        };
    let (Some(cert), Some(key)) = (cert, key) else {
        problems.error(
            gw.origin(),
            format!("{spath}.tls"),
            "a TLS server needs serverCertificate and privateKey (or credentialName)",
            None,
        );
        return None;
    };
    let client_ca = if mutual {
        match ca {
            Some(ca) => Some(ca),
            None => {
                problems.error(gw.origin(), format!("{spath}.tls.caCertificates"), "mode MUTUAL needs caCertificates (or ca.crt in the credential) to verify clients", None);
                return None;
            }
        }
    } else {
        None
    };
    Some(ServerTlsPolicy {
        cert,
        key,
        client_ca,
        client_cert_optional: t.mode == Some(ServerTlsMode::OptionalMutual),
        origin: format!("{}: {spath}.tls", gw.origin()),
    })
}
