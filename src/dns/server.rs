//! egret's DNS proxy (`--dns-capture`, Istio's `ISTIO_META_DNS_CAPTURE`): the capture rules
//! send the app's DNS queries here (UDP and TCP port 53 → `--dns-listen`, default
//! 127.0.0.1:15053). A/AAAA queries for a declared host are answered from egret's own view
//! (its VIP, its ServiceEntry addresses, its STATIC endpoints, or for resolution DNS what
//! egret's resolver answers, so the app and egret agree on the address); everything else is
//! forwarded as it came to the upstream resolvers, and their answer is returned as it came.
//!
//! egret's own queries to the upstream resolvers leave as the proxy's uid, which the capture
//! rules do not redirect, so they do not loop back here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::config::{DnsNames, NameAnswer};

use super::resolver::Dns;

/// The TTL of answers egret gives itself (Istio's DNS proxy uses 30 s).
const ANSWER_TTL: u32 = 30;
/// How long one upstream resolver gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// A TCP client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the proxy answers with: the current configuration's names and resolver.
pub struct View {
    pub names: Arc<DnsNames>,
    pub dns: Arc<Dns>,
}

/// Gives the view current when a query arrives (a reload swaps it).
pub type ViewSource = Arc<dyn Fn() -> View + Send + Sync>;

/// The resolvers unknown names are forwarded to: the configured servers, else the system's
/// (`/etc/resolv.conf`), on port 53 unless given.
pub fn upstream_servers(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((cfg, _)) => {
            let mut v: Vec<SocketAddr> = cfg
                .name_servers()
                .iter()
                .map(|ns| {
                    let port = ns.connections.first().map_or(53, |c| c.port);
                    SocketAddr::new(ns.ip, if port == 0 { 53 } else { port })
                })
                .collect();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::warn!(
                "DNS proxy: cannot read the system DNS configuration ({e}); names egret does not know will get SERVFAIL. Use --dns-server"
            );
            Vec::new()
        }
    }
}

/// Serves DNS on `udp` and `tcp` until `stop` turns true.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    upstream: Vec<SocketAddr>,
    view: ViewSource,
    mut stop: watch::Receiver<bool>,
) {
    let udp = Arc::new(udp);
    let upstream: Arc<[SocketAddr]> = Arc::from(upstream);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            got = udp.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let query = buf[..n].to_vec();
                let (udp, upstream, view) = (udp.clone(), upstream.clone(), view.clone());
                tokio::spawn(async move {
                    if let Some(resp) = answer(&query, &upstream, &view, false).await {
                        let _ = udp.send_to(&resp, from).await;
                    }
                });
            }
            accepted = tcp.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (upstream, view) = (upstream.clone(), view.clone());
                tokio::spawn(serve_tcp(stream, upstream, view));
            }
            _ = stop.changed() => break,
        }
    }
}

/// DNS over TCP: length-prefixed messages, several per connection.
async fn serve_tcp(mut s: TcpStream, upstream: Arc<[SocketAddr]>, view: ViewSource) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(resp) = answer(&query, &upstream, &view, true).await else {
            return;
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        if s.write_all(&n.to_be_bytes()).await.is_err() || s.write_all(&resp).await.is_err() {
            return;
        }
    }
}

/// The response to one query (wire format), or `None` to drop it (not a DNS query at all).
pub async fn answer(
    query: &[u8],
    upstream: &[SocketAddr],
    view: &ViewSource,
    tcp: bool,
) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    if let Some(resp) = own_answer(&msg, view).await {
        return resp.to_vec().ok();
    }
    match forward(query, upstream, tcp).await {
        Some(resp) => Some(resp),
        None => {
            tracing::debug!(
                "DNS proxy: no upstream resolver answered {:?}",
                first_name(&msg)
            );
            let mut resp = Message::error_msg(
                msg.metadata.id,
                msg.metadata.op_code,
                ResponseCode::ServFail,
            );
            resp.metadata.recursion_desired = msg.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.queries = msg.queries.clone();
            resp.to_vec().ok()
        }
    }
}

fn first_name(msg: &Message) -> String {
    msg.queries
        .first()
        .map(|q| q.name().to_ascii())
        .unwrap_or_default()
}

/// egret's own answer for an A/AAAA query about a declared host, or `None` to forward.
async fn own_answer(msg: &Message, view: &ViewSource) -> Option<Message> {
    let [q] = msg.queries.as_slice() else {
        return None;
    };
    if msg.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
        return None;
    }
    let qtype = q.query_type();
    if qtype != RecordType::A && qtype != RecordType::AAAA {
        return None;
    }
    let name = q.name().to_ascii();
    let host = name.trim_end_matches('.').to_ascii_lowercase();
    let v = view();
    let ips: Vec<IpAddr> = match v.names.hosts.get(&host)? {
        NameAnswer::Fixed(ips) => ips.clone(),
        // What egret itself would connect to; on a failure the upstream says why.
        NameAnswer::Resolve => v.dns.resolve(&host).await.ok()?.to_vec(),
    };
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = msg.queries.clone();
    if msg.edns.is_some() {
        resp.edns = msg.edns.clone();
    }
    for ip in ips {
        let rdata = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        resp.answers
            .push(Record::from_rdata(q.name().clone(), ANSWER_TTL, rdata));
    }
    // No address of the asked family: NOERROR with no answers ("no data"), as Istio's proxy.
    Some(resp)
}

/// The query as it came, to each upstream resolver in turn; the first answer as it came.
async fn forward(query: &[u8], upstream: &[SocketAddr], tcp: bool) -> Option<Vec<u8>> {
    for server in upstream {
        let got = if tcp {
            tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(query, *server)).await
        } else {
            tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(query, *server)).await
        };
        match got {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(e)) => tracing::debug!("DNS proxy: upstream {server}: {e}"),
            Err(_) => tracing::debug!("DNS proxy: upstream {server} timed out"),
        }
    }
    None
}

async fn forward_udp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only the answer to this query (same id): a stray datagram is not it.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let n = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    s.write_all(&n.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
