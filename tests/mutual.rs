//! MUTUAL TLS origination against an origin that requires a client certificate.

mod support;

use support::*;

struct Mtls {
    pki: Pki,
    upstream: Upstream,
    dir: tempfile::TempDir,
}

/// An origin for api.test that requires a client certificate issued under `pki`'s root.
async fn mtls_origin(label: &str) -> Mtls {
    let pki = Pki::new(label);
    let leaf = pki.server_leaf(&["api.test"]);
    let upstream = start_tls(UpstreamOptions {
        chain: leaf.chain_der.clone(),
        key: leaf.key_der.clone_key(),
        client_ca: Some(pki.root_der()),
        name: "mutual".into(),
    })
    .await;
    Mtls {
        pki,
        upstream,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

fn yaml(tls: &str) -> String {
    format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [api.test]\n    ports: [{{number: 80, name: http, targetPort: 443}}]\n    trafficPolicy:\n      portLevelSettings:\n        - port: {{number: 80}}\n          tls:\n{tls}"
    )
}

#[tokio::test]
async fn mutual_presents_the_client_certificate() {
    let m = mtls_origin("mutual-ok").await;
    let client = m.pki.client_leaf("orders-svc");
    let d = m.dir.path();
    let ca = write(d, "ca.pem", &m.pki.root_pem());
    let crt = write(d, "crt.pem", &client.chain_pem);
    let key = write(d, "key.pem", &client.key_pem);
    let tls = format!(
        "            mode: MUTUAL\n            caCertificates: {ca}\n            clientCertificate: {crt}\n            privateKey: {key}\n            sni: api.test\n"
    );
    let e = start_egret(&yaml(&tls), connect_to("api.test", 443, m.upstream.addr), d).await;
    for _ in 0..3 {
        let r = get(e.addr, "api.test", "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "hello from mutual\n");
        assert_eq!(r.header("x-upstream-client-cn"), "orders-svc");
        assert_eq!(r.header("x-upstream-sni"), "api.test");
    }
    assert_eq!(m.upstream.handshakes(), 1);
    let l = e.log_entry(3).await;
    assert_eq!(
        (l.code, l.flags.as_str(), l.cluster.as_str()),
        (200, "-", "outbound|80||api.test")
    );
}

#[tokio::test]
async fn simple_against_a_server_that_requires_a_client_certificate() {
    let m = mtls_origin("mutual-missing").await;
    let d = m.dir.path();
    let ca = write(d, "ca.pem", &m.pki.root_pem());
    let tls = format!("            mode: SIMPLE\n            caCertificates: {ca}\n");
    let e = start_egret(&yaml(&tls), connect_to("api.test", 443, m.upstream.addr), d).await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.client_cert_required");
    let l = e.log_entry(1).await;
    assert_eq!(l.flags, "UF");
    assert!(
        l.transport_failure
            .starts_with("tls.client_cert_required: api.test:443 requires a client certificate"),
        "{}",
        l.transport_failure
    );
    assert!(
        l.transport_failure
            .contains("it accepts certificates issued by ['Egret Test Root mutual-missing']"),
        "{}",
        l.transport_failure
    );
    assert!(
        l.transport_failure.contains("use mode MUTUAL"),
        "{}",
        l.transport_failure
    );
    assert_eq!(m.upstream.requests(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_the_wrong_ca_is_reported_as_rejected() {
    let m = mtls_origin("mutual-wrong").await;
    let stranger = Pki::new("stranger");
    let client = stranger.client_leaf("orders-svc");
    let d = m.dir.path();
    let ca = write(d, "ca.pem", &m.pki.root_pem());
    let crt = write(d, "crt.pem", &client.chain_pem);
    let key = write(d, "key.pem", &client.key_pem);
    let tls = format!(
        "            mode: MUTUAL\n            caCertificates: {ca}\n            clientCertificate: {crt}\n            privateKey: {key}\n"
    );
    let e = start_egret(&yaml(&tls), connect_to("api.test", 443, m.upstream.addr), d).await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.client_cert_rejected");
    let l = e.log_entry(1).await;
    assert!(
        l.transport_failure.starts_with("tls.client_cert_rejected: api.test:443 rejected egret's client certificate CN=orders-svc (issuer 'Egret Test Intermediate stranger')"),
        "{}",
        l.transport_failure
    );
    assert!(
        l.transport_failure
            .contains("['Egret Test Root mutual-wrong']"),
        "{}",
        l.transport_failure
    );
    assert!(
        l.transport_failure.contains(&crt),
        "names the certificate file: {}",
        l.transport_failure
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_start_up() {
    let m = mtls_origin("mutual-key").await;
    let a = m.pki.client_leaf("a");
    let b = m.pki.client_leaf("b");
    let d = m.dir.path();
    let ca = write(d, "ca.pem", &m.pki.root_pem());
    let crt = write(d, "crt.pem", &a.chain_pem);
    let key = write(d, "key.pem", &b.key_pem);
    let tls = format!(
        "            mode: MUTUAL\n            caCertificates: {ca}\n            clientCertificate: {crt}\n            privateKey: {key}\n"
    );
    let cfg = egret::config::load(
        &[egret::config::Source::inline("t.yaml", &yaml(&tls))],
        &Default::default(),
    )
    .expect("valid YAML");
    let msg = egret::app::build(cfg, Default::default())
        .await
        .err()
        .expect("must refuse to start")
        .to_string();
    assert!(
        msg.contains(&format!(
            "the private key in {key} does not match the certificate in {crt}"
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn private_keys_never_appear_in_debug_output() {
    let m = mtls_origin("mutual-debug").await;
    let client = m.pki.client_leaf("orders-svc");
    let d = m.dir.path();
    let ca = write(d, "ca.pem", &m.pki.root_pem());
    let crt = write(d, "crt.pem", &client.chain_pem);
    let key = write(d, "key.pem", &client.key_pem);
    let tls = format!(
        "            mode: MUTUAL\n            caCertificates: {ca}\n            clientCertificate: {crt}\n            privateKey: {key}\n"
    );
    let e = start_egret(&yaml(&tls), connect_to("api.test", 443, m.upstream.addr), d).await;
    let rt = e.bound.state.load();
    let dump = format!("{:?} {:?}", rt.pools, rt.config);
    let key_body: String = client
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !dump.contains(&key_body[..32]),
        "key material leaked into Debug output"
    );
}
