//! Tests of the upstream HTTP/1.1 client against scripted byte streams.

use super::*;

fn decode(framing: Framing, wire: &[u8], split: usize) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
    let mut f = framing;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match f.step(&mut buf)? {
            Step::Frame(fr) => match fr.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(fr) => trailers = fr.into_trailers().ok(),
            },
            Step::End => return Ok((data, trailers)),
            Step::More => {
                if fed >= wire.len() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let n = split.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_at_any_split() {
    let wire =
        b"5;ext=1\r\nhello\r\nb\r\n, chunked w\r\n5\r\norld!\r\n0\r\nx-sum: 42\r\nx-b: 2\r\n\r\n";
    for split in [1, 2, 3, 7, 64] {
        let (data, trailers) = decode(Framing::Chunked(Chunk::Size), wire, split).unwrap();
        assert_eq!(data, b"hello, chunked world!", "split {split}");
        let t = trailers.expect("trailers");
        assert_eq!(t["x-sum"], "42");
        assert_eq!(t["x-b"], "2");
    }
    let (data, trailers) =
        decode(Framing::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers.is_none()), (&b"abc"[..], true));
}

#[test]
fn malformed_chunks_are_errors() {
    for wire in [
        &b"zz\r\nabc\r\n0\r\n\r\n"[..],
        b"3\r\nabcX\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"\r\nabc",
        b"11111111111111111\r\n",
    ] {
        let r = decode(Framing::Chunked(Chunk::Size), wire, 4);
        assert_eq!(
            r.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidData),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

fn head(wire: &str, method: Method) -> Result<(ResponseHead, Framing, bool), String> {
    let mut buf = BytesMut::from(wire.as_bytes());
    parse_head(&mut buf, &method).map(|p| p.expect("complete head"))
}

#[test]
fn framing_follows_rfc9112() {
    let (_, f, ka) = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", Method::GET).unwrap();
    assert!(matches!(f, Framing::Length(12)) && ka);
    let (h, f, ka) = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    assert!(matches!(f, Framing::Length(7)) && ka);
    assert_eq!(h.headers.get_all(header::CONTENT_LENGTH).iter().count(), 1);
    let (_, f, _) = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
        Method::HEAD,
    )
    .unwrap();
    assert!(matches!(f, Framing::Done));
    let (_, f, _) = head(
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    assert!(matches!(f, Framing::Done));
    let (h, f, ka) = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    assert!(matches!(f, Framing::Chunked(_)) && !ka);
    assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
    let (_, f, ka) = head(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    assert!(matches!(f, Framing::Close) && !ka);
    let (_, f, ka) = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap();
    assert!(matches!(f, Framing::Close) && !ka);
    let (_, _, ka) = head(
        "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    assert!(!ka);
    let (_, _, ka) = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET).unwrap();
    assert!(!ka);
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTQ/1.1 200 OK\r\n\r\n",
    ] {
        assert!(head(bad, Method::GET).is_err(), "{bad:?}");
    }
    let (h, _, ka) = head(
        "HTTP/1.1 200 OK\r\nconnection: x-hop, keep-alive\r\nkeep-alive: timeout=5\r\nx-hop: 1\r\nx-keep: 2\r\ncontent-length: 0\r\n\r\n",
        Method::GET,
    )
    .unwrap();
    let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["x-keep", "content-length"],
        "hop-by-hop fields are not stored"
    );
    assert!(ka);
    let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(matches!(parse_head(&mut partial, &Method::GET), Ok(None)));
}

#[test]
fn request_head_adds_a_length_where_hyper_would() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("a.test"));
    let mut out = Vec::new();
    encode_request(&mut out, &Method::GET, "/x?y", &h, b"");
    assert_eq!(out, b"GET /x?y HTTP/1.1\r\nhost: a.test\r\n\r\n");
    out.clear();
    encode_request(&mut out, &Method::POST, "", &h, b"");
    assert_eq!(
        out,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n"
    );
    out.clear();
    encode_request(
        &mut out,
        &Method::GET,
        "/",
        &h,
        b"x-envoy-attempt-count: 2\r\n",
    );
    assert_eq!(
        out, b"GET / HTTP/1.1\r\nhost: a.test\r\nx-envoy-attempt-count: 2\r\n\r\n",
        "the extra lines follow the map's"
    );
}
