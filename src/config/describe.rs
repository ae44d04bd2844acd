//! What a `Config` says about itself: the TLS files it reads (watched for changes) and the
//! effective routing table, one line per route, that `egret check` prints.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::model::{Config, PemSource, TrustRoots};
use crate::route::{ClusterId, Fallback, PortSource, RouteAction};

impl Config {
    /// The TLS files the configuration reads (watched for changes).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut add = |p: &PemSource| {
            if let PemSource::File(f) = p {
                out.push(f.clone());
            }
        };
        for c in &self.clusters {
            if let Some(t) = &c.tls {
                if let TrustRoots::Pem(p) = &t.roots {
                    add(p);
                }
                if let Some((a, b)) = &t.client_cert {
                    add(a);
                    add(b);
                }
                if let Some(c) = &t.crl {
                    add(c);
                }
            }
        }
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                add(&t.cert);
                add(&t.key);
                if let Some(c) = &t.client_ca {
                    add(c);
                }
            }
        }
        out
    }

    /// One row of the route listing: where a route goes and with what TLS.
    fn cluster_row(&self, out: &mut String, port: &str, domain: &str, route: &str, id: ClusterId) {
        let Some(c) = self.clusters.get(id) else {
            return;
        };
        let (mode, sni, ca) = match &c.tls {
            None => ("DISABLE".to_string(), "-".to_string(), "-".to_string()),
            Some(t) => (
                t.mode_str().to_string(),
                t.sni.clone().unwrap_or_else(|| {
                    if c.host_from_request() {
                        "<request host>".into()
                    } else {
                        c.host.clone()
                    }
                }),
                t.describe_roots(),
            ),
        };
        let _ = writeln!(
            out,
            "  {port:<6} {domain:<40} {route:<10} {:<48} {:<28} {mode:<7} {sni:<28} {ca}",
            c.name,
            c.describe_endpoints()
        );
    }

    /// The effective routing table, one line per route: what `egret check` prints.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self
            .listeners
            .iter()
            .any(|l| l.routes.fallback != Fallback::NotFound)
        {
            let _ = writeln!(
                out,
                "outbound traffic policy: {}",
                self.outbound_policy.as_str()
            );
        }
        for l in &self.listeners {
            let ports = match l.routes.port_source {
                PortSource::Request => "routes by the request's port".to_string(),
                PortSource::Fixed(p) => format!("routes as port {p}"),
            };
            let _ = writeln!(out, "listener {} {} ({ports}):", l.name, l.address);
            let mut ports: Vec<_> = l.routes.ports.keys().copied().collect();
            ports.sort_unstable();
            let _ = writeln!(
                out,
                "  {:<6} {:<40} {:<10} {:<48} {:<28} {:<7} {:<28} CA",
                "PORT", "HOST", "ROUTE", "CLUSTER", "CONNECT", "TLS", "SNI"
            );
            for port in ports {
                let vhosts = &l.routes.ports[&port];
                for vh in &vhosts.hosts {
                    for r in &vh.routes {
                        let route = r.name.as_deref().unwrap_or("-");
                        match &r.action {
                            RouteAction::Direct { status, .. } => {
                                let _ = writeln!(
                                    out,
                                    "  {port:<6} {:<40} {route:<10} direct response {status}",
                                    vh.domain
                                );
                            }
                            RouteAction::Redirect(r) => {
                                let _ = writeln!(
                                    out,
                                    "  {port:<6} {:<40} {route:<10} redirect {} to {}{}",
                                    vh.domain,
                                    r.code,
                                    r.authority.as_deref().unwrap_or("<same host>"),
                                    r.uri.as_deref().unwrap_or("")
                                );
                            }
                            RouteAction::Forward(w) => {
                                for wc in &w.clusters {
                                    self.cluster_row(
                                        &mut out,
                                        &port.to_string(),
                                        &vh.domain,
                                        route,
                                        wc.cluster,
                                    );
                                }
                            }
                        }
                    }
                }
            }
            if let Some(l4) = &l.l4 {
                use crate::route::{L4Fallback, L4Routes};
                match &**l4 {
                    L4Routes::Tcp { clusters, .. } => {
                        for wc in &clusters.clusters {
                            self.cluster_row(&mut out, "tcp", "*", "-", wc.cluster);
                        }
                        let _ = writeln!(out, "  every connection: TCP proxy");
                    }
                    L4Routes::Sni {
                        port,
                        hosts,
                        fallback,
                    } => {
                        for vh in &hosts.hosts {
                            for r in &vh.routes {
                                if let RouteAction::Forward(w) = &r.action {
                                    for wc in &w.clusters {
                                        self.cluster_row(
                                            &mut out,
                                            &format!("sni:{port}"),
                                            &vh.domain,
                                            "-",
                                            wc.cluster,
                                        );
                                    }
                                }
                            }
                        }
                        let _ = writeln!(
                            out,
                            "  TLS passthrough by SNI (egret never terminates it); any other SNI: {}",
                            match fallback {
                                L4Fallback::Refuse => "refused (NR)",
                                L4Fallback::AllowAny(_) => "passthrough (allow_any, ALLOW_ANY)",
                            }
                        );
                    }
                }
                continue;
            }
            let mut tunnel_ports: Vec<_> = l.routes.tunnels.keys().copied().collect();
            tunnel_ports.sort_unstable();
            for port in tunnel_ports {
                for vh in &l.routes.tunnels[&port].hosts {
                    if let Some(RouteAction::Forward(w)) = vh.routes.first().map(|r| &r.action) {
                        for wc in &w.clusters {
                            let c = &self.clusters[wc.cluster];
                            if !c.protocol.is_tls() {
                                self.cluster_row(
                                    &mut out,
                                    &format!("C:{port}"),
                                    &vh.domain,
                                    "CONNECT",
                                    wc.cluster,
                                );
                                continue;
                            }
                            let _ = writeln!(
                                out,
                                "  {:<6} {:<40} {:<10} {:<48} {:<28} tunnel  (the client's own TLS, SNI checked)",
                                format!("C:{port}"),
                                vh.domain,
                                "CONNECT",
                                c.name,
                                c.describe_endpoints()
                            );
                        }
                    }
                }
            }
            let fallback = match &l.routes.fallback {
                Fallback::BlockAll => "any other host: 502 (block_all, REGISTRY_ONLY)".to_string(),
                Fallback::AllowAny(_) => {
                    "any other host: passthrough in plaintext (allow_any, ALLOW_ANY)".to_string()
                }
                Fallback::NotFound => "any other host: 404 (route_not_found)".to_string(),
            };
            let _ = writeln!(out, "  {fallback}");
        }
        out
    }
}
