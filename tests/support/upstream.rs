//! A real HTTP/1.1 origin (hyper 1, keep-alive) over TLS (tokio-rustls) or in
//! plaintext.
//!
//! Every response carries `x-upstream-name`, `x-upstream-conn` (connection id,
//! counting from 1), `x-upstream-sni` (SNI the client sent, or `-`),
//! `x-upstream-client-cn` (CN of the client certificate, or `-`) and
//! `x-upstream-alpn` (negotiated ALPN protocol, or `-`).
//!
//! Routes:
//! - `GET /` → 200 `hello from {name}\n`
//! - `GET /headers` → 200, first line `{METHOD} {path-and-query} {version}`,
//!   then every request header as `name: value\n`
//! - `POST|PUT /echo` → 200, request body streamed back frame by frame
//! - `POST|PUT /sink` → 200, body = number of request body bytes received
//! - `GET /bytes/{n}` → 200, `content-length: n`, generated in 64 KiB chunks
//! - `GET /slow/{ms}` → sleeps `ms` ms, then 200 `slow\n`
//! - `GET /status/{code}` → that status, body `status {code}\n`
//! - anything else → 404 `not found\n`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::ServerHandle;
use super::pki::Leaf;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long the server waits for a TLS handshake to complete.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk size of `/bytes/{n}` bodies.
const CHUNK: usize = 64 * 1024;
static CHUNK_DATA: [u8; CHUNK] = [b'x'; CHUNK];

pub struct UpstreamOptions {
    /// What the server sends (e.g. leaf+intermediate, or leaf only to
    /// simulate a server that omits its intermediate).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `Some` => require and verify a client certificate chaining to this root;
    /// a client without a certificate is rejected during the handshake.
    pub client_ca: Option<CertificateDer<'static>>,
    /// Included in bodies and in `x-upstream-name`.
    pub name: String,
}

impl UpstreamOptions {
    /// Serve `leaf.chain_der` (leaf + intermediate) with `leaf`'s key, no client auth.
    pub fn from_leaf(leaf: &Leaf, name: &str) -> UpstreamOptions {
        UpstreamOptions {
            chain: leaf.chain_der.clone(),
            key: leaf.key_der.clone_key(),
            client_ca: None,
            name: name.to_owned(),
        }
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// Completed TLS handshakes (accepted TCP connections for plaintext).
    pub handshakes: Arc<AtomicUsize>,
    /// TLS handshakes that failed or timed out (always 0 for plaintext).
    pub failed_handshakes: Arc<AtomicUsize>,
    /// Accepted TCP connections.
    pub connections: Arc<AtomicUsize>,
    /// HTTP requests received.
    pub requests: Arc<AtomicUsize>,
    /// TLS handshakes that resumed an earlier session.
    pub resumed: Arc<AtomicUsize>,
    pub name: String,
    _handle: ServerHandle,
}

impl Upstream {
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn resumed(&self) -> usize {
        self.resumed.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:{port}`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

#[derive(Clone, Default)]
struct Counters {
    handshakes: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
}

/// Per-connection facts reported in response headers.
struct ConnInfo {
    name: Arc<str>,
    id: usize,
    sni: Option<String>,
    client_cn: Option<String>,
    alpn: Option<String>,
    requests: Arc<AtomicUsize>,
}

/// Starts an HTTPS (HTTP/1.1 over TLS 1.2/1.3) origin on 127.0.0.1:0.
/// The two origins of the seed's egress example: `simple` (a TLS server for `simple_host`) and
/// `mutual` (one for `mutual_host` that requires a client certificate issued by `pki`).
pub async fn start_simple_and_mutual(
    pki: &super::Pki,
    simple_host: &str,
    mutual_host: &str,
) -> (Upstream, Upstream) {
    let simple = start_tls(UpstreamOptions::from_leaf(
        &pki.server_leaf(&[simple_host]),
        "simple",
    ))
    .await;
    let mutual_leaf = pki.server_leaf(&[mutual_host]);
    let mutual = start_tls(UpstreamOptions {
        chain: mutual_leaf.chain_der.clone(),
        key: mutual_leaf.key_der.clone_key(),
        client_ca: Some(pki.root_der()),
        name: "mutual".into(),
    })
    .await;
    (simple, mutual)
}

pub async fn start_tls(opts: UpstreamOptions) -> Upstream {
    start_tls_at(opts, "127.0.0.1:0".parse().expect("loopback address")).await
}

/// The rustls server config of an origin; `extra_client_cas` are trusted for client
/// certificates besides `client_ca` (an overlap during a client CA rotation).
fn server_config(
    opts: UpstreamOptions,
    extra_client_cas: &[CertificateDer<'static>],
) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring provider supports TLS 1.2 and 1.3");
    let builder = match opts.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(ca)
                .expect("add client_ca to the upstream's client RootCertStore");
            for extra in extra_client_cas {
                roots.add(extra.clone()).expect("add an extra client CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("build the upstream's WebPkiClientVerifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(opts.chain, opts.key)
        .expect("upstream certificate chain and key are usable by rustls");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Swaps the certificate (and client CAs) an origin uses for new connections.
#[derive(Clone)]
pub struct Rotator(Arc<std::sync::Mutex<TlsAcceptor>>);

impl Rotator {
    /// New connections get this certificate and client CAs.
    pub fn set(&self, opts: UpstreamOptions, extra_client_cas: &[CertificateDer<'static>]) {
        *self.0.lock().expect("lock") =
            TlsAcceptor::from(Arc::new(server_config(opts, extra_client_cas)));
    }
}

/// An origin whose TLS material can be rotated while it runs.
pub async fn start_tls_rotatable(
    opts: UpstreamOptions,
    extra_client_cas: &[CertificateDer<'static>],
) -> (Upstream, Rotator) {
    let name = opts.name.clone();
    let rotator = Rotator(Arc::new(std::sync::Mutex::new(TlsAcceptor::from(
        Arc::new(server_config(opts, extra_client_cas)),
    ))));
    let up = start_tls_inner(name, "127.0.0.1:0".parse().expect("addr"), rotator.clone()).await;
    (up, rotator)
}

/// Starts the HTTPS origin on a given address (e.g. `127.0.0.2:{port}` to put a second origin
/// on the same port under another loopback IP).
pub async fn start_tls_at(opts: UpstreamOptions, bind: SocketAddr) -> Upstream {
    let name = opts.name.clone();
    let rotator = Rotator(Arc::new(std::sync::Mutex::new(TlsAcceptor::from(
        Arc::new(server_config(opts, &[])),
    ))));
    start_tls_inner(name, bind, rotator).await
}

async fn start_tls_inner(name_s: String, bind: SocketAddr, rotator: Rotator) -> Upstream {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("bind the upstream on {bind}: {e}"));
    let addr = listener.local_addr().expect("upstream local_addr");
    let counters = Counters::default();
    let name: Arc<str> = Arc::from(name_s.as_str());

    let task = {
        let counters = counters.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let id = counters.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let acceptor = rotator.0.lock().expect("lock").clone();
                let counters = counters.clone();
                let name = name.clone();
                conns.spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(_)) | Err(_) => {
                                counters.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        };
                    counters.handshakes.fetch_add(1, Ordering::SeqCst);
                    let session = tls.get_ref().1;
                    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        counters.resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let info = ConnInfo {
                        name,
                        id,
                        sni: session.server_name().map(str::to_owned),
                        client_cn: session
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|cert| {
                                subject_cn(cert.as_ref()).unwrap_or_else(|| "present".to_owned())
                            }),
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        requests: counters.requests.clone(),
                    };
                    serve_http1(tls, info).await;
                });
                while conns.try_join_next().is_some() {}
            }
        })
    };

    Upstream {
        addr,
        handshakes: counters.handshakes,
        failed_handshakes: counters.failed_handshakes,
        connections: counters.connections,
        requests: counters.requests,
        resumed: counters.resumed,
        name: name_s,
        _handle: ServerHandle::new(task),
    }
}

/// Starts a plaintext HTTP/1.1 origin on 127.0.0.1:0 with the same routes.
pub async fn start_plain(name: &str) -> Upstream {
    let listener = super::bind_loopback().await;
    let addr = listener.local_addr().expect("upstream local_addr");
    let counters = Counters::default();
    let name_arc: Arc<str> = Arc::from(name);

    let task = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let id = counters.connections.fetch_add(1, Ordering::SeqCst) + 1;
                counters.handshakes.fetch_add(1, Ordering::SeqCst);
                let info = ConnInfo {
                    name: name_arc.clone(),
                    id,
                    sni: None,
                    client_cn: None,
                    alpn: None,
                    requests: counters.requests.clone(),
                };
                conns.spawn(serve_http1(tcp, info));
                while conns.try_join_next().is_some() {}
            }
        })
    };

    Upstream {
        addr,
        handshakes: counters.handshakes,
        failed_handshakes: counters.failed_handshakes,
        connections: counters.connections,
        requests: counters.requests,
        resumed: counters.resumed,
        name: name.to_owned(),
        _handle: ServerHandle::new(task),
    }
}

async fn serve_http1<S>(io: S, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let service = service_fn(move |req: Request<Incoming>| {
        let info = info.clone();
        async move {
            info.requests.fetch_add(1, Ordering::SeqCst);
            let mut resp = route(req, &info.name).await;
            let headers = resp.headers_mut();
            let dash = || "-".to_owned();
            for (k, v) in [
                ("x-upstream-name", info.name.to_string()),
                ("x-upstream-conn", info.id.to_string()),
                ("x-upstream-sni", info.sni.clone().unwrap_or_else(dash)),
                (
                    "x-upstream-client-cn",
                    info.client_cn.clone().unwrap_or_else(dash),
                ),
                ("x-upstream-alpn", info.alpn.clone().unwrap_or_else(dash)),
            ] {
                let v = HeaderValue::from_str(&v)
                    .unwrap_or_else(|_| HeaderValue::from_static("(unprintable)"));
                headers.insert(k, v);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // Errors (client went away, malformed request, ...) just end the connection.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<UpstreamBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn not_found() -> Response<UpstreamBody> {
    full(StatusCode::NOT_FOUND, "not found\n")
}

async fn route(req: Request<Incoming>, name: &str) -> Response<UpstreamBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let is_upload = method == Method::POST || method == Method::PUT;

    match (method, path.as_str()) {
        (Method::GET, "/") => full(StatusCode::OK, format!("hello from {name}\n")),
        (Method::GET, "/headers") => {
            let mut out = format!(
                "{} {} {:?}\n",
                req.method(),
                req.uri()
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/"),
                req.version()
            );
            for (k, v) in req.headers() {
                out.push_str(k.as_str());
                out.push_str(": ");
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                out.push('\n');
            }
            full(StatusCode::OK, out)
        }
        (_, "/echo") if is_upload => {
            let body = req.into_body().map_err(BoxError::from).boxed_unsync();
            Response::new(body)
        }
        (_, "/sink") if is_upload => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            total += data.len() as u64;
                        }
                    }
                    Err(e) => {
                        return full(
                            StatusCode::BAD_REQUEST,
                            format!("error reading body after {total} bytes: {e}\n"),
                        );
                    }
                }
            }
            full(StatusCode::OK, total.to_string())
        }
        (Method::GET, p) if p.starts_with("/bytes/") => {
            let Ok(n) = p["/bytes/".len()..].parse::<u64>() else {
                return not_found();
            };
            let mut resp = Response::new(RepeatBody::sized(n).boxed_unsync());
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            resp
        }
        (Method::GET, p) if p.starts_with("/chunked/") => {
            // N bytes of unknown length (sent chunked), in 3 frames, then an `x-total` trailer.
            let Ok(n) = p["/chunked/".len()..].parse::<u64>() else {
                return not_found();
            };
            Response::new(RepeatBody::unsized_in_three(n).boxed_unsync())
        }
        (Method::GET, p) if p.starts_with("/slow/") => {
            let Ok(ms) = p["/slow/".len()..].parse::<u64>() else {
                return not_found();
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "slow\n")
        }
        (Method::GET, p) if p.starts_with("/status/") => {
            let status = p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| s.as_u16() >= 200);
            match status {
                // These statuses cannot carry a body.
                Some(s) if s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED => {
                    full(s, Bytes::new())
                }
                Some(s) => full(s, format!("status {}\n", s.as_u16())),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// A body of `remaining` bytes produced in chunks of `chunk` bytes (at most 64 KiB) on the fly
/// (no allocation per chunk: every chunk is a slice of one static buffer). With `exact` the
/// length is announced (content-length); without it the length is unknown (sent chunked).
/// `trailer` adds a trailer `x-total` with that value after the data.
struct RepeatBody {
    remaining: u64,
    chunk: usize,
    exact: bool,
    trailer: Option<u64>,
}

impl RepeatBody {
    fn sized(n: u64) -> RepeatBody {
        RepeatBody {
            remaining: n,
            chunk: CHUNK,
            exact: true,
            trailer: None,
        }
    }

    /// `n` bytes of unknown length in about three frames, then the `x-total` trailer.
    fn unsized_in_three(n: u64) -> RepeatBody {
        let third = usize::try_from(n.div_ceil(3)).unwrap_or(CHUNK);
        RepeatBody {
            remaining: n,
            chunk: third.clamp(1, CHUNK),
            exact: false,
            trailer: Some(n),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(self.trailer.take().map(|total| {
                let mut t = http::HeaderMap::new();
                t.insert("x-total", HeaderValue::from(total));
                Ok(Frame::trailers(t))
            }));
        }
        let n = usize::try_from(self.remaining).map_or(self.chunk, |r| r.min(self.chunk));
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK_DATA[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.trailer.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Extracts the subject CommonName from a DER X.509 certificate with a
/// minimal DER walk (no X.509 parser among the test dependencies).
pub fn subject_cn(cert_der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate, ... }
    let (tag, cert, _) = der_next(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_next(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // Optional [0] EXPLICIT version.
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        let (_, _, after) = der_next(rest)?;
        rest = after;
    }
    // subject Name ::= SEQUENCE OF SET OF AttributeTypeAndValue
    let (tag, mut rdns, _) = der_next(rest)?;
    if tag != 0x30 {
        return None;
    }
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (_, mut set, after) = der_next(rdns)?;
        rdns = after;
        while !set.is_empty() {
            let (_, atv, after) = der_next(set)?;
            set = after;
            let (oid_tag, oid, value) = der_next(atv)?;
            if oid_tag == 0x06 && oid == CN_OID {
                let (_, value, _) = der_next(value)?;
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

/// Splits one DER TLV off `input`: `(tag, contents, rest)`.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&len0, mut input) = input.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &input[..n] {
            len = (len << 8) | usize::from(b);
        }
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    let (contents, rest) = input.split_at(len);
    Some((tag, contents, rest))
}

/// What [`start_echo_tls`] / [`start_echo_plain`] write after echoing, once the client's
/// stream ended cleanly (a TLS close_notify, or a TCP FIN in plaintext).
pub const ECHO_TRAILER: &[u8] = b"bye";

/// An echo server over TLS or plaintext TCP (see [`start_echo_tls`]).
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Accepted TCP connections.
    pub connections: Arc<AtomicUsize>,
    /// Completed TLS handshakes (every accepted connection in plaintext).
    pub handshakes: Arc<AtomicUsize>,
    /// Connections whose client ended cleanly and got the trailer and a clean close.
    pub clean_eofs: Arc<AtomicUsize>,
    /// SNI of each completed TLS handshake (`-` when none was sent).
    pub snis: Arc<std::sync::Mutex<Vec<String>>>,
    /// How each connection that did not end cleanly failed (handshake errors, a TCP FIN
    /// without close_notify, resets, ...).
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    _handle: ServerHandle,
}

impl EchoServer {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn clean_eofs(&self) -> usize {
        self.clean_eofs.load(Ordering::SeqCst)
    }

    pub fn snis(&self) -> Vec<String> {
        self.snis.lock().expect("lock").clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("lock").clone()
    }
}

/// A TLS (tokio-rustls, TLS 1.2/1.3, no ALPN, no client auth) echo server on 127.0.0.1:0
/// serving `leaf.chain_der`: it echoes everything it reads until the client's close_notify,
/// then writes [`ECHO_TRAILER`] and closes with close_notify and a FIN. A TCP FIN without
/// close_notify is an error (recorded in `errors`, no trailer).
pub async fn start_echo_tls(leaf: &Leaf) -> EchoServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(leaf.chain_der.clone(), leaf.key_der.clone_key())
        .expect("echo certificate chain and key are usable by rustls");
    start_echo(Some(TlsAcceptor::from(Arc::new(config)))).await
}

/// A plaintext TCP echo server on 127.0.0.1:0: echoes until the client's FIN, then writes
/// [`ECHO_TRAILER`] and closes.
pub async fn start_echo_plain() -> EchoServer {
    start_echo(None).await
}

async fn start_echo(acceptor: Option<TlsAcceptor>) -> EchoServer {
    let listener = super::bind_loopback().await;
    let addr = listener.local_addr().expect("echo server local_addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let clean_eofs = Arc::new(AtomicUsize::new(0));
    let snis = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let (connections, handshakes, clean_eofs, snis, errors) = (
            connections.clone(),
            handshakes.clone(),
            clean_eofs.clone(),
            snis.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handshakes, clean_eofs, snis, errors) = (
                    acceptor.clone(),
                    handshakes.clone(),
                    clean_eofs.clone(),
                    snis.clone(),
                    errors.clone(),
                );
                conns.spawn(async move {
                    let result = match acceptor {
                        None => {
                            handshakes.fetch_add(1, Ordering::SeqCst);
                            echo_until_eof(tcp).await
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(tls)) => {
                                    handshakes.fetch_add(1, Ordering::SeqCst);
                                    let sni = tls.get_ref().1.server_name().unwrap_or("-");
                                    snis.lock().expect("lock").push(sni.to_owned());
                                    echo_until_eof(tls).await
                                }
                                Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                                Err(_) => Err("TLS handshake timed out".to_owned()),
                            }
                        }
                    };
                    match result {
                        Ok(()) => {
                            clean_eofs.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => errors.lock().expect("lock").push(e),
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        })
    };
    EchoServer {
        addr,
        connections,
        handshakes,
        clean_eofs,
        snis,
        errors,
        _handle: ServerHandle::new(task),
    }
}

async fn echo_until_eof<S>(mut s: S) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        s.write_all(&buf[..n])
            .await
            .map_err(|e| format!("echo write after {total} bytes read: {e}"))?;
    }
    s.write_all(ECHO_TRAILER)
        .await
        .map_err(|e| format!("write the trailer after {total} bytes: {e}"))?;
    s.shutdown()
        .await
        .map_err(|e| format!("shutdown after {total} bytes: {e}"))?;
    Ok(())
}
