//! Plain HTTP in, verified TLS out (SIMPLE), against a real rustls origin with an rcgen PKI:
//! targetPort, SNI and hostname checks, every verification failure with its reason, upstream
//! failures, timeouts and connection reuse.

mod support;

use std::path::Path;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

/// A destination `host` (port 80 -> targetPort 443) with TLS SIMPLE against `ca`.
fn simple_yaml(host: &str, ca: &str, extra: &str) -> String {
    format!(
        r#"listeners:
  - name: outbound
    address: 127.0.0.1:0
destinations:
  - hosts: [{host}]
    ports:
      - {{number: 80, name: http, protocol: HTTP, targetPort: 443}}
{extra}    trafficPolicy:
      tls:
        mode: SIMPLE
        caCertificates: {ca}
"#
    )
}

struct Setup {
    egret: Egret,
    upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// An origin serving `leaf` (as sent by `chain`), and egret trusting `ca_pem` for api.test.
async fn setup(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    leaf: &Leaf,
    ca_pem: &str,
    extra: &str,
) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = start_tls(UpstreamOptions {
        chain,
        key: leaf.key_der.clone_key(),
        client_ca: None,
        name: "simple".into(),
    })
    .await;
    let ca = write(dir.path(), "ca.pem", ca_pem);
    let egret = start_egret(
        &simple_yaml("api.test", &ca, extra),
        connect_to("api.test", 443, upstream.addr),
        dir.path(),
    )
    .await;
    Setup {
        egret,
        upstream,
        _dir: dir,
    }
}

#[tokio::test]
async fn simple_tls_origination_targets_443_with_sni_and_logs_envoy_fields() {
    let pki = Pki::new("simple");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;

    let r = get(s.egret.addr, "api.test", "/hello?x=1").await;
    assert_eq!(
        r.status, 404,
        "the origin answered (its 404 for an unknown path): {r:?}"
    );
    let r = get(s.egret.addr, "api.test", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello from simple\n");
    // SNI is the routed host; the origin saw TLS, with ALPN http/1.1.
    assert_eq!(r.header("x-upstream-sni"), "api.test");
    assert_eq!(r.header("x-upstream-alpn"), "http/1.1");
    assert!(
        r.header("x-envoy-upstream-service-time")
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(
        s.upstream.handshakes(),
        1,
        "the second request reused the pooled TLS connection"
    );

    let first = s.egret.log_entry(1).await;
    assert_eq!(first.path, "/hello?x=1");
    assert_eq!(first.code, 404);
    let e = s.egret.log_entry(2).await;
    assert_eq!(e.method, "GET");
    assert_eq!(e.path, "/");
    assert_eq!(e.protocol, "HTTP/1.1");
    assert_eq!(e.code, 200);
    assert_eq!(e.flags, "-");
    assert_eq!(e.details, "via_upstream");
    assert_eq!(e.transport_failure, "-");
    assert_eq!(e.bytes_received, 0);
    assert_eq!(e.bytes_sent, "hello from simple\n".len() as u64);
    assert_eq!(
        e.upstream_service_time,
        r.header("x-envoy-upstream-service-time")
    );
    assert_eq!(e.authority, "api.test");
    assert_eq!(e.upstream_host, s.upstream.addr.to_string());
    assert_eq!(e.cluster, "outbound|80||api.test");
    assert!(e.upstream_local.starts_with("127.0.0.1:"));
    assert_eq!(e.downstream_local, s.egret.addr.to_string());
    assert!(e.downstream_remote.starts_with("127.0.0.1:"));
    assert_eq!(e.sni, "-");
    assert_eq!(e.route, "default");
    assert_eq!(e.request_id.len(), 36, "a generated UUID: {}", e.request_id);
}

#[tokio::test]
async fn absolute_form_requests_route_by_the_uri() {
    let pki = Pki::new("absolute");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    // What curl -x sends: an absolute URI, and a Host header that may disagree.
    let req = Request::get("http://api.test/headers")
        .header("host", "wrong.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = request(s.egret.addr, req).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.starts_with("GET /headers HTTP/1.1\n"),
        "origin-form upstream: {}",
        r.body
    );
    assert!(
        r.body.contains("\nhost: api.test\n"),
        "Host follows the URI: {}",
        r.body
    );
}

#[tokio::test]
async fn request_headers_are_rewritten_for_the_upstream() {
    let pki = Pki::new("headers");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    let req = Request::get("/headers")
        .header("host", "api.test")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-request-id", "my-id-1")
        .header("user-agent", "egret-test/1")
        .body(Full::new(Bytes::from_static(b"abc")))
        .expect("request");
    let r = request(s.egret.addr, req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let b = r.body.to_ascii_lowercase();
    for gone in [
        "x-hop:",
        "keep-alive:",
        "proxy-authorization:",
        "\nte:",
        "connection: keep-alive, x-hop",
    ] {
        assert!(!b.contains(gone), "{gone} must not reach the origin: {b}");
    }
    assert!(
        b.contains("\nx-request-id: my-id-1\n"),
        "an incoming request id is kept: {b}"
    );
    assert!(b.contains("\nx-forwarded-proto: http\n"), "{b}");
    assert!(b.contains("\nhost: api.test\n"), "{b}");
    let e = s.egret.log_entry(1).await;
    assert_eq!(e.request_id, "my-id-1");
    assert_eq!(e.user_agent, "egret-test/1");
    assert_eq!(e.bytes_received, 3);
}

#[tokio::test]
async fn explicit_port_80_in_host_is_not_sent_to_the_tls_port() {
    let pki = Pki::new("hostport");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    let r = get(s.egret.addr, "api.test:80", "/headers").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\nhost: api.test\n"), "{}", r.body);
    assert_eq!(s.egret.log_entry(1).await.authority, "api.test:80");
}

#[tokio::test]
async fn hostname_mismatch_is_refused_and_names_both_names() {
    let pki = Pki::new("mismatch");
    let leaf = pki.server_leaf(&["other.test", "www.other.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    let r = get(s.egret.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.hostname_mismatch");
    // Istio's default retries (connect-failure) tried twice more before giving up.
    assert!(r.body.starts_with("upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure, transport failure reason: tls.hostname_mismatch: expected 'api.test'"), "{}", r.body);
    assert!(
        r.body.contains("[other.test, www.other.test]"),
        "{}",
        r.body
    );
    let e = s.egret.log_entry(1).await;
    assert_eq!(e.code, 503);
    assert_eq!(e.flags, "UF,URX");
    assert!(e.details.starts_with("upstream_reset_before_response_started{remote_connection_failure,tls.hostname_mismatch:"), "{}", e.details);
    assert!(!e.details.contains(' '));
    assert!(
        e.transport_failure
            .starts_with("tls.hostname_mismatch: expected 'api.test'"),
        "{}",
        e.transport_failure
    );
    // Envoy logs the address it tried on a UF line.
    assert_eq!(e.upstream_host, s.upstream.addr.to_string());
    assert_eq!(e.cluster, "outbound|80||api.test");
    assert_eq!(
        s.upstream.requests(),
        0,
        "nothing was sent to an unverified server"
    );
}

#[tokio::test]
async fn untrusted_ca_is_refused_with_the_chain_and_the_bundle_named() {
    let pki = Pki::new("real");
    let other = Pki::new("other");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &other.root_pem(), "").await;
    let r = get(s.egret.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.unknown_issuer");
    let e = s.egret.log_entry(1).await;
    assert!(e.transport_failure.starts_with("tls.unknown_issuer: api.test sent [CN=api.test (issuer 'Egret Test Intermediate real'), CN=Egret Test Intermediate real (issuer 'Egret Test Root real')]"), "{}", e.transport_failure);
    assert!(
        e.transport_failure
            .contains("holds ['Egret Test Root other']"),
        "{}",
        e.transport_failure
    );
    assert!(
        e.transport_failure
            .contains("add 'Egret Test Root real' to caCertificates"),
        "{}",
        e.transport_failure
    );
}

#[tokio::test]
async fn root_only_bundle_and_a_server_that_omits_its_intermediate() {
    // The seed's common mistake: caCertificates holds the root; the server sends only its leaf.
    let pki = Pki::new("kafka");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(vec![leaf.leaf_der.clone()], &leaf, &pki.root_pem(), "").await;
    let r = get(s.egret.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    let e = s.egret.log_entry(1).await;
    assert!(
        e.transport_failure.contains(
            "the server did not send its intermediate CA 'Egret Test Intermediate kafka'"
        ),
        "{}",
        e.transport_failure
    );
    assert!(
        e.transport_failure
            .contains("caCertificates must contain the root and the intermediate CA of the server"),
        "{}",
        e.transport_failure
    );

    // The fix the message asks for: root and intermediate in the bundle.
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = write(
        dir.path(),
        "bundle.pem",
        &format!("{}{}", pki.root_pem(), pki.intermediate_pem()),
    );
    let fixed = start_egret(
        &simple_yaml("api.test", &bundle, ""),
        connect_to("api.test", 443, s.upstream.addr),
        dir.path(),
    )
    .await;
    let r = get(fixed.addr, "api.test", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn expired_server_certificate_is_refused_with_its_date() {
    let pki = Pki::new("expired");
    let leaf = pki.expired_server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    let r = get(s.egret.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.cert_expired");
    let e = s.egret.log_entry(1).await;
    assert!(
        e.transport_failure.starts_with(
            "tls.cert_expired: the certificate CN=api.test sent by api.test expired at 20"
        ),
        "{}",
        e.transport_failure
    );
}

#[tokio::test]
async fn subject_alt_names_replace_the_host_check() {
    let pki = Pki::new("sans");
    let leaf = pki.server_leaf(&["backend.internal"]);
    let extra = "";
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "sans")).await;
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let yaml = format!(
        "{}        subjectAltNames: [backend.internal]\n",
        simple_yaml("api.test", &ca, extra)
    );
    let e = start_egret(
        &yaml,
        connect_to("api.test", 443, upstream.addr),
        dir.path(),
    )
    .await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    // SNI is still the routed host.
    assert_eq!(r.header("x-upstream-sni"), "api.test");
}

#[tokio::test]
async fn plaintext_http_on_the_tls_port_is_named() {
    let (addr, _h) = start_plain_http_on_tls_port().await;
    let pki = Pki::new("plain");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let e = start_egret(
        &simple_yaml("api.test", &ca, ""),
        connect_to("api.test", 443, addr),
        dir.path(),
    )
    .await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "tls.not_tls");
    assert!(r.body.contains("'HTTP/1.1 400 Bad Request'"), "{}", r.body);
}

#[tokio::test]
async fn connect_refused_is_uf_with_the_address() {
    let addr = refused_addr().await;
    let pki = Pki::new("refused");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let e = start_egret(
        &simple_yaml("api.test", &ca, ""),
        connect_to("api.test", 443, addr),
        dir.path(),
    )
    .await;
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-egret-error"), "connect.refused");
    let l = e.log_entry(1).await;
    assert_eq!(l.flags, "UF,URX");
    assert!(
        l.transport_failure.starts_with(&format!(
            "connect.refused: api.test:{} at {addr} refused the connection",
            addr.port()
        )),
        "{}",
        l.transport_failure
    );
}

#[tokio::test]
async fn connect_timeout_is_uf_connection_timeout() {
    let (addr, _h) = start_blackhole_server().await;
    let pki = Pki::new("timeout");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "ca.pem", &pki.root_pem());
    let yaml = simple_yaml("api.test", &ca, "").replace(
        "    trafficPolicy:\n",
        "    trafficPolicy:\n      connectionPool:\n        tcp: {connectTimeout: 300ms}\n",
    );
    let e = start_egret(&yaml, connect_to("api.test", 443, addr), dir.path()).await;
    let started = std::time::Instant::now();
    let r = get(e.addr, "api.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(r.header("x-egret-error"), "connect.timeout");
    let l = e.log_entry(1).await;
    assert_eq!(l.flags, "UF,URX");
    assert!(
        l.details.starts_with(
            "upstream_reset_before_response_started{connection_timeout,connect.timeout:"
        ),
        "{}",
        l.details
    );
}

#[tokio::test]
async fn upstream_reset_before_headers_is_uc() {
    // A plaintext destination whose server resets every connection.
    let (addr, _h) = start_reset_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]\ndestinations:\n  - hosts: [reset.test]\n    ports: [{{number: 80, protocol: HTTP, targetPort: {}}}]\n    resolution: STATIC\n    endpoints: [{{address: 127.0.0.1}}]\n",
        addr.port()
    );
    let e = start_egret(&yaml, Default::default(), dir.path()).await;
    let r = get(e.addr, "reset.test", "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    let l = e.log_entry(1).await;
    assert!(
        l.flags == "UC" || l.flags == "UF,URX",
        "reset before or after connect: {l:?}"
    );
    assert_eq!(l.cluster, "outbound|80||reset.test");
}

#[tokio::test]
async fn route_timeout_gives_504_ut() {
    let pki = Pki::new("slow");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(
        leaf.chain_der.clone(),
        &leaf,
        &pki.root_pem(),
        "    timeout: 300ms\n",
    )
    .await;
    let r = get(s.egret.addr, "api.test", "/slow/3000").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.starts_with("upstream request timeout"), "{}", r.body);
    let l = s.egret.log_entry(1).await;
    assert_eq!(l.flags, "UT");
    assert_eq!(l.details, "response_timeout");
    let r = get(s.egret.addr, "api.test", "/slow/10").await;
    assert_eq!(r.status, 200, "a fast response passes: {r:?}");
}

#[tokio::test]
async fn a_thousand_sequential_requests_cost_one_handshake() {
    let pki = Pki::new("reuse");
    let leaf = pki.server_leaf(&["api.test"]);
    let s = setup(leaf.chain_der.clone(), &leaf, &pki.root_pem(), "").await;
    let mut client = KeepAlive::connect(s.egret.addr).await;
    for i in 0..1000 {
        let r = client.get("api.test", "/").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(s.upstream.handshakes(), 1);
    assert_eq!(s.upstream.connections(), 1);
    assert_eq!(s.upstream.requests(), 1000);
    // Fresh downstream connections still share the one upstream connection.
    for _ in 0..20 {
        assert_eq!(get(s.egret.addr, "api.test", "/").await.status, 200);
    }
    assert_eq!(s.upstream.handshakes(), 1);
}

#[tokio::test]
async fn bad_tls_material_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = write(dir.path(), "ca.pem", "this is not a certificate\n");
    let cfg = egret::config::load(
        &[egret::config::Source::inline(
            "t.yaml",
            &simple_yaml("api.test", &not_pem, ""),
        )],
        &Default::default(),
    )
    .expect("the YAML itself is valid");
    let err = egret::app::build(cfg, Default::default())
        .await
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{not_pem} holds no PEM certificate")),
        "{msg}"
    );
    assert!(
        msg.contains("trafficPolicy.tls"),
        "names where the policy is: {msg}"
    );

    let missing = Path::new("/nonexistent/ca.pem").display().to_string();
    let cfg = egret::config::load(
        &[egret::config::Source::inline(
            "t.yaml",
            &simple_yaml("api.test", &missing, ""),
        )],
        &Default::default(),
    )
    .expect("valid YAML");
    let msg = egret::app::build(cfg, Default::default())
        .await
        .err()
        .expect("refuse")
        .to_string();
    assert!(msg.contains("cannot read /nonexistent/ca.pem"), "{msg}");
}

/// A new upstream connection resumes the TLS session of an earlier one (one pool, one rustls
/// config shared by every connection), and `--no-tls-resumption` makes every handshake full.
#[tokio::test]
async fn new_connections_resume_the_tls_session_unless_disabled() {
    let pki = Pki::new("resume");
    let leaf = pki.server_leaf(&["api.test"]);
    for resume in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = start_tls(UpstreamOptions::from_leaf(&leaf, "resume")).await;
        let ca = write(dir.path(), "ca.pem", &pki.root_pem());
        let yaml = format!(
            "destinations:
  - hosts: [api.test]
    ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
    trafficPolicy:
      connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
      tls: {{mode: SIMPLE, caCertificates: {ca}}}
listeners: [{{name: outbound, address: \"127.0.0.1:0\"}}]
"
        );
        let mut o = connect_to("api.test", 443, upstream.addr);
        o.upstream.tls_resumption = resume;
        let egret = start_egret(&yaml, o, dir.path()).await;
        for i in 0..3 {
            let r = get(egret.addr, "api.test", "/").await;
            assert_eq!(r.status, 200, "request {i}: {r:?}");
        }
        assert_eq!(upstream.handshakes(), 3, "one connection per request");
        let expected = if resume { 2 } else { 0 };
        assert_eq!(upstream.resumed(), expected, "resumption {resume}");
    }
}
