//! The operational servers: readiness (`/healthz/ready`, Istio's :15021), Prometheus stats
//! (`/stats/prometheus` and `/metrics`, :15090) and the admin API (localhost :15000: `/ready`,
//! `/stats`, `/clusters`, `/config_dump`, `/certs`, `/logging`, `POST /quitquitquit`,
//! `POST /drain_listeners`).
//!
//! Each is a small hyper HTTP/1.1 server. Mutating admin endpoints need POST, as in Envoy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Endpoints, PemSource, TrustRoots};
use crate::metrics::Metrics;
use crate::runtime::{Health, Runtime};

/// Requests the admin API makes of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `POST /quitquitquit`: drain and exit.
    Quit,
    /// `POST /drain_listeners`: stop accepting new connections, keep running.
    DrainListeners,
}

/// Changes the log level of egret's own log (`/logging?level=`); returns the new filter.
pub type LogLevelHandle = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the operational servers see.
pub struct Ops {
    /// Empty until the runtime is built.
    pub state: Arc<ArcSwapOption<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub log_level: Option<LogLevelHandle>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Ready,
    Stats,
    Admin,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Ready => "readiness",
            Server::Stats => "stats",
            Server::Admin => "admin",
        }
    }
}

/// Serves `which` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    which: Server,
    ops: Arc<Ops>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let ops = ops.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let ops = ops.clone();
                        async move { Ok::<_, Infallible>(handle(which, &ops, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = stop.changed() => return,
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_string_pretty(&body).unwrap_or_default() + "\n",
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn handle(which: Server, ops: &Ops, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (which, path.as_str()) {
        (Server::Ready | Server::Admin, "/healthz/ready") => readiness(ops),
        (Server::Stats | Server::Admin, "/stats/prometheus" | "/metrics") => {
            let mut r = text(StatusCode::OK, ops.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (Server::Admin, _) => admin(ops, req, &path),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("not found; this is egret's {} server\n", which.name()),
        ),
    }
}

fn readiness(ops: &Ops) -> Response<Full<Bytes>> {
    if ops.health.is_ready() {
        return text(StatusCode::OK, "");
    }
    let mut body = String::from("not ready:\n");
    for r in ops.health.reasons() {
        let _ = writeln!(body, "- {r}");
    }
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn admin(ops: &Ops, req: Request<Incoming>, path: &str) -> Response<Full<Bytes>> {
    let post_only = |what: &str| {
        text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{what} changes egret's state: use POST (curl -X POST ...)\n"),
        )
    };
    let rt = ops.state.load_full();
    let starting = || {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "egret is starting: the configuration is not loaded yet\n",
        )
    };
    match path {
        "/" | "/help" => text(
            StatusCode::OK,
            "egret admin:\n  /ready  /stats  /stats/prometheus  /clusters  /config_dump  /certs\n  /logging (POST ?level=debug)  /quitquitquit (POST)  /drain_listeners (POST)\n",
        ),
        "/ready" => {
            let status = if ops.health.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", ops.health.state_name()))
        }
        "/stats" => {
            // Envoy's plain form: name: value, one per line.
            let mut out = String::new();
            for line in ops.metrics.render().lines().filter(|l| !l.starts_with('#')) {
                if let Some((k, v)) = line.rsplit_once(' ') {
                    let _ = writeln!(out, "{k}: {v}");
                }
            }
            text(StatusCode::OK, out)
        }
        "/clusters" => match rt {
            Some(rt) => clusters(
                &rt,
                query(&req).get("format").map(String::as_str) == Some("json"),
            ),
            None => starting(),
        },
        "/config_dump" => match rt {
            Some(rt) => json(config_dump(&rt)),
            None => starting(),
        },
        "/certs" => match rt {
            Some(rt) => json(certs(&rt)),
            None => starting(),
        },
        "/logging" => {
            if req.method() != Method::POST {
                return post_only("/logging");
            }
            let q = query(&req);
            let Some(level) = q.get("level") else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "usage: POST /logging?level=trace|debug|info|warning|error|critical|off\n",
                );
            };
            // Envoy's level names (all loggers at once).
            let level = match level.as_str() {
                "trace" | "debug" | "info" | "error" | "off" => level.as_str(),
                "warning" | "warn" => "warn",
                "critical" => "error",
                other => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown level \"{other}\"; use trace, debug, info, warning, error, critical or off\n"
                        ),
                    );
                }
            };
            match &ops.log_level {
                Some(set) => match set(level) {
                    Ok(now) => text(StatusCode::OK, format!("log level is now {now}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                None => text(
                    StatusCode::NOT_IMPLEMENTED,
                    "the log level cannot be changed in this process\n",
                ),
            }
        }
        "/quitquitquit" => {
            if req.method() != Method::POST {
                return post_only("/quitquitquit");
            }
            let _ = ops.commands.send(Command::Quit);
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            if req.method() != Method::POST {
                return post_only("/drain_listeners");
            }
            let _ = ops.commands.send(Command::DrainListeners);
            text(StatusCode::OK, "OK\n")
        }
        _ => text(StatusCode::NOT_FOUND, "unknown admin path; see /help\n"),
    }
}

fn clusters(rt: &Runtime, as_json: bool) -> Response<Full<Bytes>> {
    let mut list = Vec::new();
    let mut out = String::new();
    for p in &rt.pools {
        let c = &p.cluster;
        let s = &p.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let hosts = p.snapshot();
        let _ = writeln!(out, "{}::endpoints::{}", c.name, c.describe_endpoints());
        let _ = writeln!(
            out,
            "{}::tls::{}",
            c.name,
            c.tls.as_ref().map_or("DISABLE", |t| t.mode_str())
        );
        for (k, v) in [
            ("rq_total", load(&s.rq_total)),
            ("rq_active", load(&s.rq_active)),
            ("cx_total", load(&s.cx_total)),
            ("cx_active", load(&s.cx_active)),
            ("cx_connect_fail", load(&s.cx_connect_fail)),
            ("ssl_handshake", load(&s.ssl_handshake)),
            ("pool_idle", p.idle_connections() as u64),
        ] {
            let _ = writeln!(out, "{}::{k}::{v}", c.name);
        }
        for (host, addr, idle, active) in &hosts {
            let h = if host.is_empty() {
                String::new()
            } else {
                format!("{host}@")
            };
            let _ = writeln!(out, "{}::{h}{addr}::idle_connections::{idle}", c.name);
            let _ = writeln!(out, "{}::{h}{addr}::rq_active::{active}", c.name);
        }
        // Envoy's /clusters marks an ejected host with its health flag.
        let ejected = p
            .outlier
            .as_ref()
            .map(|o| o.ejected_addresses())
            .unwrap_or_default();
        for addr in &ejected {
            let _ = writeln!(
                out,
                "{}::{addr}::health_flags::/failed_outlier_check",
                c.name
            );
        }
        list.push(serde_json::json!({
            "name": c.name,
            "endpoints": c.describe_endpoints(),
            "tls": c.tls.as_ref().map_or("DISABLE", |t| t.mode_str()),
            "rq_total": load(&s.rq_total),
            "rq_active": load(&s.rq_active),
            "cx_total": load(&s.cx_total),
            "cx_active": load(&s.cx_active),
            "cx_connect_fail": load(&s.cx_connect_fail),
            "ssl_handshake": load(&s.ssl_handshake),
            "pool_idle": p.idle_connections(),
            "ejected": ejected.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "hosts": hosts.iter().map(|(h, a, i, act)| serde_json::json!({
                "host": h, "address": a.to_string(), "idle_connections": i, "rq_active": act,
            })).collect::<Vec<_>>(),
        }));
    }
    if as_json {
        json(serde_json::json!({ "cluster_statuses": list }))
    } else {
        text(StatusCode::OK, out)
    }
}

fn pem(p: &PemSource) -> serde_json::Value {
    // Only where material comes from: never its content.
    serde_json::Value::String(p.describe())
}

/// A TCP or TLS-passthrough listener's routing, for `/config_dump`.
fn l4_json(l4: &crate::route::L4Routes, c: &crate::config::Config) -> serde_json::Value {
    use crate::route::{L4Fallback, L4Routes, RouteAction};
    let name = |id: usize| c.clusters.get(id).map(|cl| cl.name.clone());
    match l4 {
        L4Routes::Tcp { clusters, .. } => serde_json::json!({
            "kind": "tcp_proxy",
            "clusters": clusters.clusters.iter().map(|x| serde_json::json!({
                "cluster": name(x.cluster), "weight": x.weight,
            })).collect::<Vec<_>>(),
        }),
        L4Routes::Sni {
            port,
            hosts,
            fallback,
        } => serde_json::json!({
            "kind": "tls_passthrough",
            "port": port,
            "sni": hosts.hosts.iter().map(|v| serde_json::json!({
                "serverName": v.domain,
                "clusters": v.routes.first().map(|r| match &r.action {
                    RouteAction::Forward(w) => w.clusters.iter().map(|x| name(x.cluster)).collect(),
                    _ => Vec::new(),
                }),
            })).collect::<Vec<_>>(),
            "otherServerNames": match fallback {
                L4Fallback::Refuse => "refuse",
                L4Fallback::AllowAny(_) => "allow_any",
            },
        }),
    }
}

/// The effective configuration as JSON. Private keys are never included: only where they are.
pub fn config_dump(rt: &Runtime) -> serde_json::Value {
    let c = &rt.config;
    let clusters: Vec<serde_json::Value> = c
        .clusters
        .iter()
        .map(|cl| {
            let endpoints = match &cl.endpoints {
                Endpoints::Static(a) => serde_json::json!({"static": a.iter().map(|x| x.to_string()).collect::<Vec<_>>()}),
                Endpoints::Dns(eps) => serde_json::json!({"dns": eps.iter().map(|e| serde_json::json!({
                    "name": e.name.clone().unwrap_or_else(|| "<request host>".into()),
                    "port": e.port.map_or_else(|| serde_json::json!("<request port>"), |p| serde_json::json!(p)),
                })).collect::<Vec<_>>()}),
            };
            let tls = cl.tls.as_ref().map(|t| {
                serde_json::json!({
                    "mode": t.mode_str(),
                    "caCertificates": match &t.roots {
                        TrustRoots::WebPki => serde_json::json!("<webpki roots>"),
                        TrustRoots::System => serde_json::json!("system"),
                        TrustRoots::Pem(p) => pem(p),
                    },
                    "clientCertificate": t.client_cert.as_ref().map(|(c, _)| pem(c)),
                    "privateKey": t.client_cert.as_ref().map(|(_, k)| pem(k)),
                    "caCrl": t.crl.as_ref().map(pem),
                    "sni": t.sni,
                    "subjectAltNames": t.subject_alt_names,
                    "insecureSkipVerify": t.insecure_skip_verify,
                    "source": t.origin,
                })
            });
            serde_json::json!({
                "name": cl.name,
                "host": cl.host,
                "port": cl.port,
                "protocol": cl.protocol.as_str(),
                "endpoints": endpoints,
                "tls": tls,
                "lb": format!("{:?}", cl.lb),
                "connectTimeout": format!("{:?}", cl.connect_timeout),
                "idleTimeout": format!("{:?}", cl.idle_timeout),
                "tcpIdleTimeout": format!("{:?}", cl.tcp_idle_timeout),
                "maxConnections": cl.max_connections,
                "maxRequestsPerConnection": cl.max_requests_per_connection,
                "source": cl.origin,
            })
        })
        .collect();
    let listeners: Vec<serde_json::Value> = c
        .listeners
        .iter()
        .map(|l| {
            let mut routes = Vec::new();
            for (port, vh) in &l.routes.ports {
                for v in &vh.hosts {
                    for r in &v.routes {
                        let action = match &r.action {
                            crate::route::RouteAction::Forward(w) => serde_json::json!({
                                "clusters": w.clusters.iter().map(|x| serde_json::json!({
                                    "cluster": c.clusters.get(x.cluster).map(|cl| cl.name.clone()),
                                    "weight": x.weight,
                                })).collect::<Vec<_>>()
                            }),
                            crate::route::RouteAction::Direct { status, .. } => {
                                serde_json::json!({"directResponse": status})
                            }
                            crate::route::RouteAction::Redirect(rd) => {
                                serde_json::json!({"redirect": rd.code})
                            }
                        };
                        routes.push(serde_json::json!({
                            "port": port, "domain": v.domain, "name": r.name.as_deref(),
                            "matches": r.matches.len(), "action": action,
                        }));
                    }
                }
            }
            serde_json::json!({
                "name": l.name,
                "address": l.address.to_string(),
                "tls": l.tls.as_ref().map(|t| serde_json::json!({
                    "serverCertificate": pem(&t.cert),
                    "privateKey": pem(&t.key),
                    "caCertificates": t.client_ca.as_ref().map(pem),
                })),
                "routes": routes,
                "tcp": l.l4.as_deref().map(|l4| l4_json(l4, c)),
            })
        })
        .collect();
    serde_json::json!({
        "outboundTrafficPolicy": c.outbound_policy.as_str(),
        "listeners": listeners,
        "clusters": clusters,
        "dns": {
            "servers": c.dns.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "timeout": format!("{:?}", c.dns.timeout),
            "minTtl": format!("{:?}", c.dns.min_ttl),
            "maxTtl": format!("{:?}", c.dns.max_ttl),
        },
        "accessLog": format!("{:?}", c.access_log.path),
    })
}

fn certs(rt: &Runtime) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({
        "certificates": rt.certs.iter().map(|c| serde_json::json!({
            "role": c.role,
            "source": c.source,
            "subject": c.subject,
            "issuer": c.issuer,
            "subjectAltNames": c.sans,
            "notBefore": crate::tls::fmt_time(c.not_before),
            "notAfter": crate::tls::fmt_time(c.not_after),
            "daysUntilExpiration": (c.not_after - now) / 86400,
        })).collect::<Vec<_>>()
    })
}

/// Binds an operational server address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::listener::bind(addr)
}
