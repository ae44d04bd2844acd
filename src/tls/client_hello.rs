//! The ClientHello reader: the SNI out of the first bytes of a TLS connection, for TLS
//! passthrough routing and for checking that a CONNECT tunnel carries TLS to the host it was
//! opened for. Every length is checked; nothing here trusts the peer.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a client may take to send its ClientHello (Envoy's listener filter timeout).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes read while looking for a complete ClientHello.
const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a TLS handshake record.
    NotTls,
    /// A ClientHello without a server_name extension.
    NoSni,
    /// The (lowercased) server name.
    Sni(String),
}

/// Parses the SNI out of the start of a TLS connection, reassembling a ClientHello that spans
/// several records. Every length is checked; malformed input is `NotTls`.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        // Each complete record was tried already: what is left is more to come, or not TLS.
        if rest.is_empty() {
            return Hello::Incomplete;
        }
        if rest[0] != 22 || rest.len() >= 2 && rest[1] != 3 {
            return Hello::NotTls;
        }
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        if rest.len() < 5 + len {
            // Enough for what we have? Try parsing the fragment we hold first.
            hs.extend_from_slice(&rest[5..]);
            return match parse_handshake(&hs) {
                Some(h) => h,
                None => Hello::Incomplete,
            };
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if let Some(h) = parse_handshake(&hs) {
            return h;
        }
    }
}

/// `None` = need more bytes.
fn parse_handshake(hs: &[u8]) -> Option<Hello> {
    if hs.len() < 4 {
        return None;
    }
    if hs[0] != 1 {
        return Some(Hello::NotTls);
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if hs.len() < 4 + len {
        return None;
    }
    let mut r = Reader(&hs[4..4 + len]);
    let parsed = (|| {
        r.skip(2)?; // client_version
        r.skip(32)?; // random
        let n = usize::from(r.u8()?);
        r.skip(n)?; // session id
        let n = usize::from(r.u16()?);
        r.skip(n)?; // cipher suites
        let n = usize::from(r.u8()?);
        r.skip(n)?; // compression methods
        if r.0.is_empty() {
            return Some(Hello::NoSni);
        }
        let n = usize::from(r.u16()?);
        let mut exts = Reader(r.take(n)?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let n = usize::from(exts.u16()?);
            let data = exts.take(n)?;
            if ty != 0 {
                continue;
            }
            let mut d = Reader(data);
            let n = usize::from(d.u16()?);
            let mut list = Reader(d.take(n)?);
            while !list.0.is_empty() {
                let kind = list.u8()?;
                let n = usize::from(list.u16()?);
                let name = list.take(n)?;
                if kind == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                        return None;
                    }
                    return Some(Hello::Sni(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return Some(Hello::NoSni);
        }
        Some(Hello::NoSni)
    })();
    Some(parsed.unwrap_or(Hello::NotTls))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Reads until the ClientHello is complete (or is clearly not one). Returns the bytes read
/// (to be replayed upstream) and the verdict.
pub async fn read_client_hello<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(Vec<u8>, Hello)> {
    let mut buf = Vec::with_capacity(2048);
    let fut = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before a complete ClientHello",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_client_hello(&buf) {
                Hello::Incomplete if buf.len() < MAX_HELLO => continue,
                Hello::Incomplete => return Ok(Hello::NotTls),
                h => return Ok(h),
            }
        }
    };
    match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, fut).await {
        Ok(Ok(h)) => Ok((buf, h)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no complete ClientHello within {}s",
                CLIENT_HELLO_TIMEOUT.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Hello, parse_client_hello};
    use std::sync::Arc;

    /// A real ClientHello from rustls for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), sn).expect("conn");
        let mut out = Vec::new();
        c.write_tls(&mut out).expect("write");
        out
    }

    #[test]
    fn finds_sni_in_a_real_client_hello() {
        let hello = client_hello("API.example.com");
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Sni("api.example.com".into())
        );
        // Every prefix is incomplete, never a wrong verdict or a panic.
        for n in 0..hello.len() {
            assert_eq!(parse_client_hello(&hello[..n]), Hello::Incomplete, "{n}");
        }
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let hello = client_hello("kafka-1.example.com");
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            parse_client_hello(&split),
            Hello::Sni("kafka-1.example.com".into())
        );
    }

    #[test]
    fn no_sni_and_not_tls() {
        assert_eq!(parse_client_hello(&client_hello("10.0.0.1")), Hello::NoSni);
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse_client_hello(b"\x16\x03\x01\x00\x00"), Hello::NotTls);
        // Corrupt lengths inside a complete record: NotTls, not a panic.
        let mut bad = client_hello("a.example.com");
        for i in 5..bad.len().min(120) {
            let saved = bad[i];
            bad[i] = 0xff;
            let _ = parse_client_hello(&bad);
            bad[i] = saved;
        }
    }
}
