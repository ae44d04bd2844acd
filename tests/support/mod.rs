//! Reusable integration-test fixtures: a generated PKI, real HTTP/1.1 origins
//! (TLS and plaintext), a programmable DNS server and a few misbehaving TCP
//! servers. Everything binds `127.0.0.1:0`, runs as tokio tasks on the current
//! runtime and stops when the returned handle is dropped.
//!
//! Use from an integration test with `mod support;`.
#![allow(dead_code)]

pub mod dns;
pub mod pki;
pub mod upstream;

#[allow(unused_imports)]
pub use dns::TestDns;
#[allow(unused_imports)]
pub use pki::{Leaf, Pki};
#[allow(unused_imports)]
pub use upstream::{
    ECHO_TRAILER, EchoServer, Rotator, Upstream, UpstreamOptions, start_echo_plain, start_echo_tls,
    start_plain, start_simple_and_mutual, start_tls, start_tls_at, start_tls_rotatable,
};

pub mod harness;
pub mod netns;
pub mod redis;
pub mod scripted;
#[allow(unused_imports)]
pub use harness::*;
#[allow(unused_imports)]
pub use scripted::{Act, Scripted, Seen, start_scripted, start_scripted_on};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Owns a background server task; dropping it aborts the task (and, through
/// the task's `JoinSet`, every connection task it spawned).
#[derive(Debug)]
pub struct ServerHandle {
    task: JoinHandle<()>,
}

impl ServerHandle {
    pub fn new(task: JoinHandle<()>) -> ServerHandle {
        ServerHandle { task }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a listener on an ephemeral loopback port.
/// Reads from `s` until a whole request head (through the blank line) has arrived; `None` if
/// the peer closed or the read failed first.
pub async fn read_request_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a TcpListener on 127.0.0.1:0")
}

/// An address on which nothing listens: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = bind_loopback().await;
    let addr = listener
        .local_addr()
        .expect("local_addr of the throwaway listener");
    drop(listener);
    addr
}

/// Accepts every connection and immediately closes it with `SO_LINGER 0`, so
/// the peer sees a TCP RST. Reads nothing.
pub async fn start_reset_server() -> (SocketAddr, ServerHandle) {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("reset server local_addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            // Ignore errors: the peer may already be gone.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    (addr, ServerHandle::new(task))
}

/// Accepts every connection and never reads or writes; sockets stay open
/// until the handle is dropped. Useful for exercising timeouts.
pub async fn start_blackhole_server() -> (SocketAddr, ServerHandle) {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("blackhole server local_addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
    (addr, ServerHandle::new(task))
}

/// A plaintext server standing where TLS was expected: reads what the client
/// sends first (e.g. a ClientHello), answers a plain HTTP/1.1 400 and closes.
pub async fn start_plain_http_on_tls_port() -> (SocketAddr, ServerHandle) {
    let listener = bind_loopback().await;
    let addr = listener
        .local_addr()
        .expect("plain-http-on-tls-port server local_addr");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            conns.spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
                // Drain whatever else the client sent so closing sends a FIN,
                // not a RST that could discard the 400 before the peer reads it.
                let drain = async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    (addr, ServerHandle::new(task))
}
