//! VirtualService and DestinationRule semantics against real origins: matches (first wins),
//! weights, subsets, rewrites, redirects, direct responses, header operations, exportTo,
//! workloadSelector, and an encrypted sidecar -> gateway hop with credentialName.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use egret::config::Overrides;
use egret::config::istio::Role;
use http::Request;
use http_body_util::Full;
use support::*;

fn work() -> Overrides {
    let mut o = Overrides::default();
    o.istio.namespace = "work".into();
    o
}

/// A ServiceEntry for api.example.com with two STATIC endpoints (labels version=v1 / v2) on two
/// local origins.
fn service_entry(v1: u16, v2: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
    - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
    - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.com
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
"
    )
}

async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    request(addr, b.body(Full::new(Bytes::new())).expect("request")).await
}

#[tokio::test]
async fn matches_weights_subsets_and_route_actions() {
    let v1 = start_plain("v1").await;
    let v2 = start_plain("v2").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  http:
    - name: canary
      match:
        - name: by-header
          headers: {{x-canary: {{exact: \"yes\"}}}}
      route: [{{destination: {{host: api.example.com, subset: v2}}}}]
      headers:
        response:
          set: {{x-route: canary}}
    - name: old-api
      match: [{{uri: {{prefix: /old/}}}}]
      rewrite: {{uri: /headers}}
      route: [{{destination: {{host: api.example.com, subset: v1}}}}]
      headers:
        request:
          set: {{x-added: \"1\"}}
          remove: [x-secret]
    - match: [{{uri: {{exact: /moved}}}}]
      redirect: {{uri: /new, authority: www.example.com}}
    - match: [{{uri: {{prefix: /health}}, method: {{exact: GET}}}}]
      directResponse: {{status: 200, body: {{string: \"ok\"}}}}
    - match: [{{uri: {{regex: \"/split/[0-9]+\"}}}}]
      route:
        - {{destination: {{host: api.example.com, subset: v1}}, weight: 75}}
        - {{destination: {{host: api.example.com, subset: v2}}, weight: 25}}
",
        service_entry(v1.addr.port(), v2.addr.port())
    );
    let mut o = work();
    o.istio
        .workload_labels
        .insert("app".into(), "client".into());
    let e = start_egret(
        &format!("listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\n---\n{yaml}"),
        o,
        dir.path(),
    )
    .await;

    // First match wins: the header match goes to v2, with the response header set.
    let r = send(e.addr, "GET", "/old/x", &[("x-canary", "yes")]).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.header("x-upstream-name"),
            r.header("x-route")
        ),
        (404, "v2", "canary"),
        "{r:?}"
    );
    let l = e.log_entry(1).await;
    assert_eq!(l.route, "canary.by-header");
    assert_eq!(l.cluster, "outbound|80|v2|api.example.com");

    // Prefix rewrite, request header ops, and the original path in the log.
    let r = send(e.addr, "GET", "/old/?q=1", &[("x-secret", "s")]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-upstream-name")),
        (200, "v1"),
        "{r:?}"
    );
    assert!(
        r.body.starts_with("GET /headers?q=1 HTTP/1.1\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("\nx-added: 1\n"), "{}", r.body);
    assert!(!r.body.contains("x-secret"), "{}", r.body);
    assert!(
        r.body.contains("\nx-envoy-original-path: /old/?q=1\n"),
        "{}",
        r.body
    );
    let l = e.log_entry(2).await;
    assert_eq!(
        (l.path.as_str(), l.route.as_str()),
        ("/old/?q=1", "old-api")
    );

    // Redirect and direct response: answered by egret.
    let r = send(e.addr, "GET", "/moved", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("location")),
        (301, "http://www.example.com/new")
    );
    let r = send(e.addr, "GET", "/health", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    let r = send(e.addr, "POST", "/health", &[]).await;
    assert_eq!(r.status.as_u16(), 404, "no route matched: {r:?}");
    let l = e.log_entry(5).await;
    assert_eq!(
        (l.code, l.flags.as_str(), l.details.as_str()),
        (404, "NR", "route_not_found")
    );

    // Weights 75/25 over 40 requests: exactly 30/10.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let r = send(e.addr, "GET", &format!("/split/{i}"), &[]).await;
        *seen
            .entry(r.header("x-upstream-name").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        (seen.get("v1"), seen.get("v2")),
        (Some(&30), Some(&10)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn export_to_and_workload_selector_decide_visibility() {
    let origin = start_plain("v1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = |export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: other}}
spec:
  hosts: [api.example.com]
  exportTo: [{export}]
  ports: [{{number: 80, name: http, targetPort: {}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
",
            origin.addr.port()
        )
    };
    // exportTo "." in namespace other: invisible to a proxy in work -> block_all.
    let e = start_egret(
        &format!(
            "listeners: [{{name: o, address: \"127.0.0.1:0\"}}]\n---\n{}",
            doc("\".\"")
        ),
        work(),
        dir.path(),
    )
    .await;
    assert_eq!(get(e.addr, "api.example.com", "/").await.status, 502);
    // exported to work: visible.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let e = start_egret(
        &format!(
            "listeners: [{{name: o, address: \"127.0.0.1:0\"}}]\n---\n{}",
            doc("work")
        ),
        work(),
        dir2.path(),
    )
    .await;
    assert_eq!(get(e.addr, "api.example.com", "/").await.status, 200);

    // A DestinationRule with a workloadSelector applies only to matching workloads: here it
    // would make the plaintext origin fail with TLS, which shows whether it applied.
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-tls, namespace: work}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: payments}}
  trafficPolicy: {tls: {mode: SIMPLE}}
";
    let yaml = format!(
        "listeners: [{{name: o, address: \"127.0.0.1:0\"}}]\n---\n{}---\n{dr}",
        doc("\"*\"")
    );
    let dir3 = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml, work(), dir3.path()).await;
    assert_eq!(
        get(e.addr, "api.example.com", "/").await.status,
        200,
        "not selected: plaintext"
    );
    let mut o = work();
    o.istio
        .workload_labels
        .insert("app".into(), "payments".into());
    let dir4 = tempfile::tempdir().expect("tempdir");
    let e = start_egret(&yaml, o, dir4.path()).await;
    let r = get(e.addr, "api.example.com", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (503, "tls.not_tls"),
        "selected: TLS to a plaintext port"
    );
}

#[tokio::test]
async fn an_encrypted_sidecar_to_gateway_hop_with_credential_name() {
    // The gateway terminates TLS (Gateway server HTTPS, mode MUTUAL, credentialName from a
    // Secret manifest); the sidecar's DestinationRule for the gateway's service originates it
    // with a client certificate from a mounted Secret directory (--credentials-dir).
    let pki = Pki::new("hop");
    let gw_leaf = pki.server_leaf(&["egress.work.svc.cluster.local"]);
    let client = pki.client_leaf("sidecar");
    let ext_leaf = pki.server_leaf(&["api.example.com"]);
    let external = start_tls(UpstreamOptions::from_leaf(&ext_leaf, "external")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let gateway_yaml = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: gw-cert, namespace: work}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
  ca.crt: {}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: work}}
spec:
  selector: {{istio: egress}}
  servers:
    - port: {{number: 443, name: https, protocol: HTTPS}}
      hosts: [api.example.com]
      tls: {{mode: MUTUAL, credentialName: gw-cert}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: work}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: work}}
spec:
  host: api.example.com
  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: work}}
spec:
  hosts: [api.example.com]
  gateways: [egress]
  http: [{{route: [{{destination: {{host: api.example.com, port: {{number: 443}}}}}}]}}]
",
        b64(&gw_leaf.chain_pem),
        b64(&gw_leaf.key_pem),
        b64(&pki.root_pem())
    );
    let mut go = work();
    go.istio.role = Role::Gateway;
    go.istio
        .gateway_selector
        .insert("istio".into(), "egress".into());
    go.istio.listen_address = "127.0.0.1".parse().expect("ip");
    go.istio.bind_ports.insert(443, 0);
    go.upstream.connect_to.push(egret::config::ConnectTo {
        host: Some("api.example.com".into()),
        port: Some(443),
        to: external.addr,
    });
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).expect("mkdir");
    let gateway = start_egret(&gateway_yaml, go, &gw_dir).await;

    // The sidecar: the external host routed to the gateway service over mTLS.
    let creds = dir.path().join("creds/sidecar-cert");
    std::fs::create_dir_all(&creds).expect("mkdir");
    write(&creds, "tls.crt", &client.chain_pem);
    write(&creds, "tls.key", &client.key_pem);
    write(&creds, "ca.crt", &pki.root_pem());
    let sidecar_yaml = "listeners: [{name: outbound, address: \"127.0.0.1:0\"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  http: [{route: [{destination: {host: egress, port: {number: 443}}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egress}
spec:
  host: egress
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: sidecar-cert, sni: egress.work.svc.cluster.local}
";
    let mut so = work();
    so.istio.credentials_dir = Some(dir.path().join("creds"));
    so.upstream.connect_to.push(egret::config::ConnectTo {
        host: Some("egress.work.svc.cluster.local".into()),
        port: Some(443),
        to: gateway.addr,
    });
    let sc_dir = dir.path().join("sc");
    std::fs::create_dir(&sc_dir).expect("mkdir");
    let sidecar = start_egret(sidecar_yaml, so, &sc_dir).await;

    let r = get(sidecar.addr, "api.example.com", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from external\n");
    let s = sidecar.log_entry(1).await;
    assert_eq!(s.cluster, "outbound|443||egress.work.svc.cluster.local");
    let g = gateway.log_entry(1).await;
    assert_eq!(
        g.sni, "egress.work.svc.cluster.local",
        "the gateway logs the SNI it terminated"
    );
    assert_eq!(g.cluster, "outbound|443||api.example.com");
    assert_eq!(g.request_id, s.request_id);

    // Without the client certificate the gateway refuses the hop.
    let plain = sidecar_yaml.replace(
        "tls: {mode: MUTUAL, credentialName: sidecar-cert, sni: egress.work.svc.cluster.local}",
        &format!("tls: {{mode: SIMPLE, caCertificates: {ca}, sni: egress.work.svc.cluster.local}}"),
    );
    let mut so = work();
    so.upstream.connect_to.push(egret::config::ConnectTo {
        host: Some("egress.work.svc.cluster.local".into()),
        port: Some(443),
        to: gateway.addr,
    });
    let sc2 = dir.path().join("sc2");
    std::fs::create_dir(&sc2).expect("mkdir");
    let sidecar2 = start_egret(&plain, so, &sc2).await;
    let r = get(sidecar2.addr, "api.example.com", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-egret-error")),
        (503, "tls.client_cert_required"),
        "{r:?}"
    );
}
