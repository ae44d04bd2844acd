//! A plaintext HTTP/1.1 origin that fails on cue: each request (numbered from 0 in arrival
//! order, over all connections) gets what a script says: a status, a reset before any
//! response byte, or a stall. It records what it saw: method, path, body and the
//! `x-envoy-attempt-count` header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::ServerHandle;

/// What the origin does with one request.
#[derive(Clone, Copy, Debug)]
pub enum Act {
    /// Answers this status (body: the origin's name).
    Status(u16),
    /// Reads the request, then closes the connection with a TCP RST.
    Reset,
    /// Waits this long, then answers 200.
    Stall(Duration),
    /// Sends a 200 head promising 100 bytes, 10 of them, and closes.
    CloseMidBody,
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub attempt: Option<u32>,
    pub body: Vec<u8>,
}

pub type Script = Arc<dyn Fn(usize) -> Act + Send + Sync>;

pub struct Scripted {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _h: ServerHandle,
}

impl Scripted {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

/// Starts a scripted origin on 127.0.0.1:0.
pub async fn start_scripted(
    name: &str,
    script: impl Fn(usize) -> Act + Send + Sync + 'static,
) -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_scripted_on(l, name, Arc::new(script))
}

/// Starts a scripted origin on a listener the caller bound (e.g. 127.0.0.2 on a given port).
pub fn start_scripted_on(l: TcpListener, name: &str, script: Script) -> Scripted {
    let addr = l.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let name: Arc<str> = Arc::from(name);
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let (seen, script, name) = (s2.clone(), script.clone(), name.clone());
            conns.spawn(async move { serve(stream, seen, script, name).await });
        }
    });
    Scripted {
        addr,
        seen,
        _h: ServerHandle::new(task),
    }
}

async fn serve(mut s: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, script: Script, name: Arc<str>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let mut len = 0usize;
        let mut attempt = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("x-envoy-attempt-count") {
                    attempt = v.parse().ok();
                }
            }
        }
        while buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..end + len].to_vec();
        buf.drain(..end + len);
        let index = {
            let mut v = seen.lock().expect("seen");
            v.push(Seen {
                method,
                path,
                attempt,
                body,
            });
            v.len() - 1
        };
        let status = match script(index) {
            Act::Reset => {
                let _ = s.set_zero_linger();
                return;
            }
            Act::Stall(d) => {
                tokio::time::sleep(d).await;
                200
            }
            Act::CloseMidBody => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = s.set_zero_linger();
                return;
            }
            Act::Status(st) => st,
        };
        let text = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-origin: {name}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
