//! Checks that the shared test fixtures in `tests/support/` really work.

mod support;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::{Leaf, Pki, TestDns, Upstream, UpstreamOptions};

type ClientBody = UnsyncBoxBody<Bytes, io::Error>;

// ---------------------------------------------------------------- helpers

fn client_config(root: CertificateDer<'static>, client: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root)
        .expect("add test root to client RootCertStore");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain_der.clone(), leaf.key_der.clone_key())
            .expect("client certificate and key usable by rustls"),
    };
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("valid SNI");
    TlsConnector::from(config).connect(name, tcp).await
}

/// The rustls error inside an io::Error returned by tokio-rustls.
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

async fn http1<S>(io: S) -> SendRequest<ClientBody>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1.1 client handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

fn empty() -> ClientBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn send(
    sender: &mut SendRequest<ClientBody>,
    method: &str,
    path: &str,
    body: ClientBody,
) -> hyper::Result<http::Response<Incoming>> {
    sender.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "upstream.test")
        .body(body)
        .expect("build request");
    sender.send_request(req).await
}

async fn get(sender: &mut SendRequest<ClientBody>, path: &str) -> (http::response::Parts, Bytes) {
    let resp = send(sender, "GET", path, empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read body of GET {path}: {e}"))
        .to_bytes();
    (parts, body)
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .expect("header is ASCII")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------------------------------------------------------------- pki + upstream

#[tokio::test]
async fn tls_upstream_serves_hello_with_keepalive() {
    let pki = Pki::new("hello");
    let leaf = pki.server_leaf(&["localhost", "127.0.0.1"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "simple")).await;

    let tls = tls_connect(up.addr, "localhost", client_config(pki.root_der(), None))
        .await
        .expect("TLS handshake with root-only trust");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        None,
        "client offered no ALPN"
    );
    let mut sender = http1(tls).await;
    for _ in 0..3 {
        let (parts, body) = get(&mut sender, "/").await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "hello from simple\n");
        assert_eq!(header(&parts, "x-upstream-name"), "simple");
        assert_eq!(header(&parts, "x-upstream-conn"), "1");
        assert_eq!(header(&parts, "x-upstream-sni"), "localhost");
        assert_eq!(header(&parts, "x-upstream-client-cn"), "-");
    }
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(up.connections(), 1);
    assert_eq!(up.failed_handshakes(), 0);
    assert_eq!(up.requests(), 3);

    // A second connection gets id 2; an IP-address server name sends no SNI.
    let tls = tls_connect(up.addr, "127.0.0.1", client_config(pki.root_der(), None))
        .await
        .expect("TLS handshake to the IP SAN");
    let mut sender = http1(tls).await;
    let (parts, _) = get(&mut sender, "/").await;
    assert_eq!(header(&parts, "x-upstream-conn"), "2");
    assert_eq!(header(&parts, "x-upstream-sni"), "-");
    assert_eq!(up.handshakes(), 2);
}

#[tokio::test]
async fn tls_upstream_negotiates_http11_alpn() {
    let pki = Pki::new("alpn");
    let leaf = pki.server_leaf(&["localhost"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "alpn")).await;
    let mut config = (*client_config(pki.root_der(), None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(up.addr, "localhost", Arc::new(config))
        .await
        .expect("TLS handshake with ALPN");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1(tls).await;
    let (parts, _) = get(&mut sender, "/").await;
    assert_eq!(header(&parts, "x-upstream-alpn"), "http/1.1");
}

#[tokio::test]
async fn mtls_upstream_requires_client_cert() {
    let pki = Pki::new("mtls");
    let leaf = pki.server_leaf(&["mtls.test"]);
    let up = support::start_tls(UpstreamOptions {
        chain: leaf.chain_der.clone(),
        key: leaf.key_der.clone_key(),
        client_ca: Some(pki.root_der()),
        name: "mtls".to_owned(),
    })
    .await;

    // Without a client certificate: with TLS 1.3 the client may finish its
    // side of the handshake before the server's alert arrives, so the failure
    // shows up either in connect() or in the first request.
    let failed = match tls_connect(up.addr, "mtls.test", client_config(pki.root_der(), None)).await
    {
        Err(_) => true,
        Ok(tls) => {
            let mut sender = http1(tls).await;
            send(&mut sender, "GET", "/", empty()).await.is_err()
        }
    };
    assert!(failed, "a client without a certificate must be rejected");
    eventually("server counts the failed handshake", || {
        up.failed_handshakes() == 1
    })
    .await;
    assert_eq!(up.handshakes(), 0);

    // With a client certificate issued by the intermediate.
    let client = pki.client_leaf("egret-client");
    let tls = tls_connect(
        up.addr,
        "mtls.test",
        client_config(pki.root_der(), Some(&client)),
    )
    .await
    .expect("mTLS handshake with client_leaf");
    let mut sender = http1(tls).await;
    let (parts, body) = get(&mut sender, "/").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello from mtls\n");
    assert_eq!(header(&parts, "x-upstream-client-cn"), "egret-client");
    assert_eq!(up.handshakes(), 1);

    // A client certificate from another PKI is rejected too.
    let other = Pki::new("other").client_leaf("intruder");
    let rejected = match tls_connect(
        up.addr,
        "mtls.test",
        client_config(pki.root_der(), Some(&other)),
    )
    .await
    {
        Err(_) => true,
        Ok(tls) => {
            let mut sender = http1(tls).await;
            send(&mut sender, "GET", "/", empty()).await.is_err()
        }
    };
    assert!(
        rejected,
        "a client certificate from another CA must be rejected"
    );
    eventually("server counts the second failed handshake", || {
        up.failed_handshakes() == 2
    })
    .await;
}

#[tokio::test]
async fn leaf_only_server_fails_with_unknown_issuer() {
    let pki = Pki::new("leafonly");
    let leaf = pki.server_leaf(&["leafonly.test"]);
    let up = support::start_tls(UpstreamOptions {
        chain: vec![leaf.leaf_der.clone()],
        key: leaf.key_der.clone_key(),
        client_ca: None,
        name: "leafonly".to_owned(),
    })
    .await;
    let err = tls_connect(
        up.addr,
        "leafonly.test",
        client_config(pki.root_der(), None),
    )
    .await
    .expect_err("a root-only client must not accept a chain without the intermediate");
    let rustls_err = rustls_error(&err).unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "expected UnknownIssuer, got {rustls_err:?}"
    );

    // Sanity: trusting the intermediate's chain (leaf+intermediate) works.
    let good = pki.server_leaf(&["leafonly.test"]);
    let up2 = support::start_tls(UpstreamOptions::from_leaf(&good, "full")).await;
    tls_connect(
        up2.addr,
        "leafonly.test",
        client_config(pki.root_der(), None),
    )
    .await
    .expect("full chain verifies against the root");
}

#[tokio::test]
async fn expired_leaf_fails_with_expired() {
    let pki = Pki::new("expired");
    let leaf = pki.expired_server_leaf(&["expired.test"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "expired")).await;
    let err = tls_connect(up.addr, "expired.test", client_config(pki.root_der(), None))
        .await
        .expect_err("an expired leaf must be rejected");
    let rustls_err = rustls_error(&err).unwrap_or_else(|| panic!("not a rustls error: {err:?}"));
    assert!(
        matches!(
            rustls_err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "expected Expired, got {rustls_err:?}"
    );
}

#[tokio::test]
async fn wrong_name_fails() {
    let pki = Pki::new("name");
    let leaf = pki.server_leaf(&["right.test"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "name")).await;
    let err = tls_connect(up.addr, "wrong.test", client_config(pki.root_der(), None))
        .await
        .expect_err("a name not in the SANs must be rejected");
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "expected NotValidForName, got {err:?}"
    );
}

#[tokio::test]
async fn pki_pem_outputs_are_consistent() {
    let pki = Pki::new("pem");
    let leaf = pki.server_leaf(&["pem.test", "::1"]);
    assert!(pki.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        leaf.chain_pem,
        format!("{}{}", leaf.leaf_pem, pki.intermediate_pem())
    );
    assert_eq!(leaf.chain_der.len(), 2);
    assert_eq!(leaf.chain_der[0], leaf.leaf_der);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = pki.write_pem(dir.path(), "root.pem", &pki.root_pem());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read back root.pem"),
        pki.root_pem()
    );
    let cloned = leaf.clone();
    assert_eq!(cloned.key_der.secret_der(), leaf.key_der.secret_der());
    assert_eq!(
        support::upstream::subject_cn(pki.root_der().as_ref()).as_deref(),
        Some("Egret Test Root pem")
    );
}

async fn tls_sender(up: &Upstream, pki: &Pki, sni: &str) -> SendRequest<ClientBody> {
    let tls = tls_connect(up.addr, sni, client_config(pki.root_der(), None))
        .await
        .expect("TLS handshake");
    http1(tls).await
}

#[tokio::test]
async fn bytes_route_returns_exact_length() {
    let pki = Pki::new("bytes");
    let leaf = pki.server_leaf(&["bytes.test"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "bytes")).await;
    let mut sender = tls_sender(&up, &pki, "bytes.test").await;
    let (parts, body) = get(&mut sender, "/bytes/1048576").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(header(&parts, "content-length"), "1048576");
    assert_eq!(body.len(), 1_048_576);
    assert!(body.iter().all(|&b| b == b'x'));
    // Odd sizes and zero, on the same connection.
    let (_, body) = get(&mut sender, "/bytes/70000").await;
    assert_eq!(body.len(), 70_000);
    let (parts, body) = get(&mut sender, "/bytes/0").await;
    assert_eq!(header(&parts, "content-length"), "0");
    assert!(body.is_empty());
    assert_eq!(up.handshakes(), 1);
}

#[tokio::test]
async fn echo_streams_and_sink_counts() {
    let pki = Pki::new("echo");
    let leaf = pki.server_leaf(&["echo.test"]);
    let up = support::start_tls(UpstreamOptions::from_leaf(&leaf, "echo")).await;
    let mut sender = tls_sender(&up, &pki, "echo.test").await;

    // Whole body.
    let resp = send(&mut sender, "POST", "/echo", full("ping pong"))
        .await
        .expect("POST /echo");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("echo body")
        .to_bytes();
    assert_eq!(body, "ping pong");

    // Streaming: each chunk comes back before the next one is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, io::Error>(Frame::data(chunk)), rx))
    });
    let resp = send(
        &mut sender,
        "PUT",
        "/echo",
        StreamBody::new(stream).boxed_unsync(),
    );
    let send_first = tx.send(Bytes::from_static(b"one"));
    let (resp, sent) = tokio::join!(resp, send_first);
    sent.expect("send first chunk");
    let mut body = resp.expect("PUT /echo").into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first echoed chunk arrives while the request is still open")
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data frame");
    assert_eq!(first, "one");
    tx.send(Bytes::from_static(b"two"))
        .await
        .expect("send second chunk");
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("second echoed chunk")
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data frame");
    assert_eq!(second, "two");
    drop(tx);
    let rest = body.collect().await.expect("rest of echo").to_bytes();
    assert!(rest.is_empty());

    // Sink.
    let resp = send(&mut sender, "PUT", "/sink", full(vec![7u8; 300_000]))
        .await
        .expect("PUT /sink");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("sink body")
        .to_bytes();
    assert_eq!(body, "300000");
    assert_eq!(up.handshakes(), 1);
}

#[tokio::test]
async fn plain_upstream_routes() {
    let up = support::start_plain("plain").await;
    let tcp = TcpStream::connect(up.addr)
        .await
        .expect("connect plain upstream");
    let mut sender = http1(tcp).await;

    let (parts, body) = get(&mut sender, "/").await;
    assert_eq!(body, "hello from plain\n");
    assert_eq!(header(&parts, "x-upstream-sni"), "-");
    assert_eq!(header(&parts, "x-upstream-conn"), "1");

    sender.ready().await.expect("ready");
    let req = Request::builder()
        .method("GET")
        .uri("/headers?x=1")
        .header("host", "upstream.test")
        .header("x-first", "a")
        .header("X-Second", "b")
        .body(empty())
        .expect("build request");
    let resp = sender.send_request(req).await.expect("GET /headers");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = std::str::from_utf8(&body).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "GET /headers?x=1 HTTP/1.1");
    assert_eq!(
        &lines[1..4],
        &["host: upstream.test", "x-first: a", "x-second: b"]
    );

    let (parts, body) = get(&mut sender, "/status/503").await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "status 503\n");
    let (parts, body) = get(&mut sender, "/status/204").await;
    assert_eq!(parts.status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());

    let started = tokio::time::Instant::now();
    let (parts, body) = get(&mut sender, "/slow/200").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "slow\n");

    let (parts, body) = get(&mut sender, "/nope").await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(body, "not found\n");
    let resp = send(&mut sender, "GET", "/echo", empty())
        .await
        .expect("GET /echo");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let _ = resp.into_body().collect().await;

    assert_eq!(up.connections(), 1);
    assert_eq!(up.handshakes(), 1);
    assert_eq!(up.requests(), 7);
}

#[tokio::test]
async fn upstream_stops_on_drop() {
    let up = support::start_plain("gone").await;
    let addr = up.addr;
    drop(up);
    // The listener is closed once the aborted task has been dropped.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "upstream still accepting after drop");
}

// ---------------------------------------------------------------- misc servers

#[tokio::test]
async fn misc_servers_behave() {
    // Refused.
    let addr = support::refused_addr().await;
    let err = TcpStream::connect(addr)
        .await
        .expect_err("connect must fail");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

    // Reset.
    let (addr, _reset) = support::start_reset_server().await;
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect reset server");
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let res = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("reset server answers quickly");
    assert_eq!(
        res.expect_err("reading from a reset connection fails")
            .kind(),
        io::ErrorKind::ConnectionReset
    );

    // Blackhole.
    let (addr, _blackhole) = support::start_blackhole_server().await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect blackhole");
    tcp.write_all(b"hello").await.expect("write to blackhole");
    let res = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(
        res.is_err(),
        "blackhole must neither answer nor close: {res:?}"
    );

    // Plain HTTP where TLS was expected.
    let (addr, _plain) = support::start_plain_http_on_tls_port().await;
    let pki = Pki::new("plainport");
    let err = tls_connect(addr, "plain.test", client_config(pki.root_der(), None))
        .await
        .expect_err("TLS to a plaintext server fails");
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::InvalidMessage(_))),
        "expected a rustls InvalidMessage error, got {err:?}"
    );
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect plain server");
    tcp.write_all(b"\x16\x03\x01\x00\x05hello")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("plain server closes")
        .expect("read to end");
    assert_eq!(
        out,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    );
}

// ---------------------------------------------------------------- dns

fn resolver_for(dns: &TestDns, udp: bool, tcp: bool) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(dns.addr.ip());
    ns.connections.retain(|c| {
        let is_udp = matches!(c.protocol, hickory_resolver::config::ProtocolConfig::Udp);
        if is_udp { udp } else { tcp }
    });
    for conn in &mut ns.connections {
        conn.port = dns.addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Honour the TTL we serve exactly (these are the defaults, made explicit).
    opts.positive_min_ttl = None;
    opts.positive_max_ttl = None;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("build hickory TokioResolver")
}

fn ips(lookup: &hickory_resolver::lookup_ip::LookupIp) -> Vec<IpAddr> {
    lookup.iter().collect()
}

#[tokio::test]
async fn dns_answers_nxdomain_and_honours_ttl() {
    let dns = TestDns::start().await;
    let resolver = resolver_for(&dns, true, true);

    let v1 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
    let v2 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12));
    dns.set("Svc.Example.Test", &[v1], 1);
    let lookup = resolver
        .lookup_ip("svc.example.test.")
        .await
        .expect("resolve a name set with set()");
    assert_eq!(ips(&lookup), vec![v1]);
    let q1 = dns.queries("svc.example.test");
    assert!(q1 >= 1, "queries() counts the lookup");

    // Unknown name.
    let err = resolver
        .lookup_ip("unknown.example.test.")
        .await
        .expect_err("unknown name must not resolve");
    assert!(err.is_nx_domain(), "expected NXDOMAIN, got {err:?}");
    assert!(dns.queries("unknown.example.test") >= 1);

    // New IP with TTL 1: visible after the TTL expires.
    dns.set("svc.example.test", &[v2], 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lookup = resolver
        .lookup_ip("svc.example.test.")
        .await
        .expect("re-resolve after TTL");
    assert_eq!(ips(&lookup), vec![v2]);
    assert!(dns.queries("svc.example.test") > q1, "a new query was sent");

    // removed => NXDOMAIN again (new name so no negative/positive cache hit).
    dns.set("gone.example.test", &[v1], 1);
    dns.remove("gone.example.test");
    let err = resolver
        .lookup_ip("gone.example.test.")
        .await
        .expect_err("removed name");
    assert!(err.is_nx_domain(), "expected NXDOMAIN, got {err:?}");
}

#[tokio::test]
async fn dns_ttl_is_served_and_cached() {
    let dns = TestDns::start().await;
    let resolver = resolver_for(&dns, true, false);
    let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    dns.set("cached.test", &[ip], 300);
    let first = resolver.lookup_ip("cached.test.").await.expect("resolve");
    let remaining = first
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    assert!(
        remaining > Duration::from_secs(290) && remaining <= Duration::from_secs(300),
        "TTL 300 served, got {remaining:?}"
    );
    let n = dns.queries("cached.test");
    let _ = resolver
        .lookup_ip("cached.test.")
        .await
        .expect("resolve again");
    assert_eq!(
        dns.queries("cached.test"),
        n,
        "second lookup served from cache"
    );
}

#[tokio::test]
async fn dns_over_tcp_and_record_types() {
    let dns = TestDns::start().await;
    let resolver = resolver_for(&dns, false, true);
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    dns.set("dual.test", &[v4, v6], 30);
    dns.set("v6only.test", &[v6], 30);

    let a = resolver
        .lookup("dual.test.", RecordType::A)
        .await
        .expect("A over TCP");
    assert_eq!(a.answers().len(), 1);
    let aaaa = resolver
        .lookup("dual.test.", RecordType::AAAA)
        .await
        .expect("AAAA over TCP");
    assert_eq!(aaaa.answers().len(), 1);

    // Known name, no A record: NOERROR with no answers, not NXDOMAIN.
    let err = resolver
        .lookup("v6only.test.", RecordType::A)
        .await
        .expect_err("no A record");
    assert!(
        err.is_no_records_found() && !err.is_nx_domain(),
        "expected NOERROR/empty, got {err:?}"
    );
    // lookup_ip falls back to AAAA.
    let lookup = resolver
        .lookup_ip("v6only.test.")
        .await
        .expect("lookup_ip v6");
    assert_eq!(ips(&lookup), vec![v6]);
    assert!(dns.queries("v6only.test") >= 2);
}

#[tokio::test]
async fn dns_stops_on_drop() {
    let dns = TestDns::start().await;
    let addr = dns.addr;
    drop(dns);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "DNS TCP listener still open after drop");
}

#[test]
fn fixtures_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pki>();
    assert_send_sync::<Leaf>();
    assert_send_sync::<Upstream>();
    assert_send_sync::<TestDns>();
    assert_send_sync::<support::ServerHandle>();
}
