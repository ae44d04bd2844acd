//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the corpus tests that run
//! the same inputs on stable Rust in `cargo test` (`tests/fuzz_corpus.rs`): each feeds arbitrary
//! bytes to one of egret's parsers, and none may panic, hang or allocate without bound.
//!
//! [`differential`] is the check against request smuggling: egret's own HTTP/1 loop
//! (`http::server`) and hyper must agree on every request the loop accepts: same method,
//! target, version and header fields, and no body. The loop hands everything else to hyper, so
//! a request both accept but read differently is the only way the two could disagree on a
//! connection.
//!
//! A wing on floor 2: it calls into the parsers below it and nothing calls it but the fuzz
//! targets and the tests.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::Empty;

use crate::access_log::{AccessRecord, LogFormat};
use crate::config::{Overrides, Source};
use crate::http::server::{Parsed, parse};

/// egret's HTTP/1 request-head parser, on a stream of pipelined requests.
pub fn request_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Each accepted request consumes its head, so this ends; the bound is a second guard.
    for _ in 0..64 {
        match parse(&mut buf) {
            Parsed::Request(..) if !buf.is_empty() => {}
            _ => return,
        }
    }
}

/// egret's HTTP/1 response-head parser (the upstream client), for a GET and for a HEAD.
pub fn response_head(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = BytesMut::from(data);
        let _ = crate::http::client::parse_head(&mut buf, &method);
    }
}

/// The ClientHello/SNI parser.
pub fn client_hello(data: &[u8]) {
    let _ = crate::tls::client_hello::parse_client_hello(data);
}

/// The access-log format compiler (TEXT, and JSON maps), and writing a line with a compiled one.
pub fn log_format(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let rec = AccessRecord::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 80)),
        std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        1,
    );
    if let Ok(f) = LogFormat::text(s) {
        let _ = f.format(&rec);
    }
    if let Ok(f) = LogFormat::from_mesh(crate::access_log::Encoding::Json, Some(s)) {
        let _ = f.format(&rec);
    }
}

/// The manifest loader: YAML (egret's schema, Istio resources, Lists, Templates) to the
/// validated model. Relative paths resolve under a directory that does not exist.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        name: "fuzz.yaml".into(),
        text: text.to_string(),
        base_dir: Some("/nonexistent/egret-fuzz".into()),
        params: Vec::new(),
    };
    let _ = crate::config::load(&[source], &Overrides::default());
}

/// What a parser made of a request head, to compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: http::Version,
    pub headers: Vec<(String, Vec<u8>)>,
    pub bodiless: bool,
}

fn seen<B>(req: &Request<B>, bodiless: bool) -> Seen {
    Seen {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        version: req.version(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        bodiless,
    }
}

/// Feeds `data` to egret's own loop and, when the loop accepts the first request, to hyper's
/// HTTP/1 server: `Ok(true)` they agree, `Ok(false)` the loop did not take it (nothing to
/// compare), `Err` says how they disagree.
pub fn differential(data: &[u8]) -> Result<bool, String> {
    differential_against(data, hyper_first_request)
}

/// [`differential`] against any second parser (`None`: it rejects the input); the tests use
/// it to show that a disagreement is reported.
pub fn differential_against(
    data: &[u8],
    other: impl FnOnce(Bytes) -> Option<Seen>,
) -> Result<bool, String> {
    let mut buf = BytesMut::from(data);
    let Parsed::Request(ours, _) = parse(&mut buf) else {
        // Partial or handed to hyper: hyper alone decides, there is nothing to disagree on.
        return Ok(false);
    };
    // The loop takes only requests without a body (else it hands over).
    let ours = seen(&*ours, ours.body().is_none());
    let theirs = other(Bytes::copy_from_slice(data));
    match theirs {
        Some(theirs) if theirs == ours => Ok(true),
        Some(theirs) => Err(format!(
            "egret's loop and the other parser read the request differently:\n  egret: {ours:?}\n  other: {theirs:?}"
        )),
        None => Err(format!(
            "egret's loop accepted a request the other parser rejects: {ours:?}"
        )),
    }
}

/// The first request hyper's HTTP/1 server reads from `data` (then the client side closes).
fn hyper_first_request(data: Bytes) -> Option<Seen> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RT
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()?;
    rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(data.len() + 4096);
        let first: std::sync::Arc<std::sync::Mutex<Option<Seen>>> = Default::default();
        let slot = first.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let slot = slot.clone();
            async move {
                if let Ok(mut s) = slot.lock()
                    && s.is_none()
                {
                    let bodiless = req.body().is_end_stream();
                    *s = Some(seen(&req, bodiless));
                }
                Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            // The input ends with the client's write side closed: read all of it first.
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let feed = async move {
            let _ = client.write_all(&data).await;
            let _ = client.shutdown().await;
            // Drain what hyper answers so it never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(conn, feed)
        })
        .await;
        first.lock().ok().and_then(|mut s| s.take())
    })
}
