//! Opening one upstream transport: TCP (connect timeout, no-delay, keep-alive) and, when the
//! cluster has a TLS policy, the TLS handshake with SNI. One timeout covers both.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::access_log::ConnTls;
use crate::config::TcpKeepalive;
use crate::error::{AttemptError, TlsFailure};
use crate::tls::{Recording, TlsContext, UpstreamIo};

/// How a connection was made, for logs and for classifying later failures.
#[derive(Debug)]
pub struct Transport {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<Arc<ConnTls>>,
}

/// Opens a connection to `addr`; with `tls`, performs the handshake for `server_name`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<(&TlsContext, ServerName<'static>)>,
    alpn: &[&[u8]],
    keepalive: Option<&TcpKeepalive>,
) -> Result<(UpstreamIo, Transport), AttemptError> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.map_err(classify_connect)?;
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_tcp_keepalive(&keepalive_of(keepalive));
        let local = stream.local_addr().map_err(AttemptError::Io)?;
        match tls {
            None => Ok((
                UpstreamIo::Plain(stream),
                Transport {
                    remote: addr,
                    local,
                    tls: None,
                },
            )),
            Some((ctx, name)) => {
                let (s, seen) = ctx
                    .connect(Recording::new(stream), name, alpn)
                    .await
                    .map_err(AttemptError::Tls)?;
                Ok((
                    UpstreamIo::Tls(Box::new(s)),
                    Transport {
                        remote: addr,
                        local,
                        tls: Some(seen),
                    },
                ))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Timeout(timeout)),
    }
}

/// SO_KEEPALIVE settings: `connectionPool.tcp.tcpKeepalive` where set, else egret's defaults
/// (first probe after 300 s idle, then every 75 s; the kernel's probe count).
fn keepalive_of(k: Option<&TcpKeepalive>) -> socket2::TcpKeepalive {
    let k = k.copied().unwrap_or_default();
    let ka = socket2::TcpKeepalive::new()
        .with_time(k.time.unwrap_or(Duration::from_secs(300)))
        .with_interval(k.interval.unwrap_or(Duration::from_secs(75)));
    match k.probes {
        Some(n) => ka.with_retries(n),
        None => ka,
    }
}

fn classify_connect(e: io::Error) -> AttemptError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => AttemptError::Refused,
        io::ErrorKind::TimedOut => AttemptError::Timeout(Duration::ZERO),
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => AttemptError::Unreachable(e.to_string()),
        _ => AttemptError::Io(e),
    }
}

/// Finds a TLS error in an error chain (hyper error -> io::Error -> rustls::Error) and explains it
/// with the connection's TLS context. Used for failures after the handshake, such as a TLS 1.3
/// server that rejects the client certificate when it reads it.
pub fn tls_failure_in(
    err: &(dyn std::error::Error + 'static),
    ctx: Option<&TlsContext>,
    seen: Option<&ConnTls>,
    server: &str,
) -> Option<TlsFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(match (ctx, seen) {
                (Some(ctx), Some(seen)) => ctx.classify_rustls(r, seen, server),
                _ => TlsFailure {
                    code: "tls.error",
                    detail: format!("TLS with {server} failed: {r}"),
                },
            });
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(match (ctx, seen) {
                (Some(ctx), Some(seen)) => ctx.classify_rustls(r, seen, server),
                _ => TlsFailure {
                    code: "tls.error",
                    detail: format!("TLS with {server} failed: {r}"),
                },
            });
        }
        cur = e.source();
    }
    None
}
