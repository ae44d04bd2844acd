//! A real DNS server (hickory-server) on 127.0.0.1, UDP and TCP on the same
//! port, answering A/AAAA queries from a mutable in-memory table.
//!
//! - unknown name → NXDOMAIN
//! - known name, no record of the asked type → NOERROR with an empty answer
//!   and an SOA in the authority section whose TTL/minimum is the name's TTL,
//!   so resolvers cache that "no data" answer for the same TTL (without it,
//!   a dual-stack lookup of a v4-only name would re-query AAAA every time)
//! - NXDOMAIN carries no SOA, so resolvers do not cache it: a name that is
//!   `set` after a failed lookup resolves on the next lookup
//! - known name → the records given to [`TestDns::set`], with its TTL

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Clone, Debug)]
struct Entry {
    ips: Vec<IpAddr>,
    ttl: u32,
}

#[derive(Default)]
struct State {
    table: Mutex<HashMap<String, Entry>>,
    queries: Mutex<HashMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make every later call panic too.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lowercase, without the trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub struct TestDns {
    /// UDP and TCP are both served on this address.
    pub addr: SocketAddr,
    state: Arc<State>,
    server: Server<Handler>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_same_port().await;
        TestDns::serve(udp, tcp)
    }

    /// A server on `addr` (UDP and TCP), e.g. a test namespace's "cluster DNS" on port 53.
    pub async fn start_on(addr: SocketAddr) -> TestDns {
        let udp = UdpSocket::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind DNS UDP on {addr}: {e}"));
        let tcp = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind DNS TCP on {addr}: {e}"));
        TestDns::serve(udp, tcp)
    }

    fn serve(udp: UdpSocket, tcp: TcpListener) -> TestDns {
        let addr = udp.local_addr().expect("DNS UDP socket local_addr");
        let state = Arc::new(State::default());
        let mut server = Server::new(Handler {
            state: state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64);
        TestDns {
            addr,
            state,
            server,
        }
    }

    /// Replaces the records for `name` (A for IPv4, AAAA for IPv6).
    /// `name` is without trailing dot and case-insensitive. An empty `ips`
    /// makes the name known (NOERROR, empty answers) but address-less.
    pub fn set(&self, name: &str, ips: &[IpAddr], ttl_secs: u32) {
        lock(&self.state.table).insert(
            normalize(name),
            Entry {
                ips: ips.to_vec(),
                ttl: ttl_secs,
            },
        );
    }

    /// Forgets `name`: it answers NXDOMAIN again.
    pub fn remove(&self, name: &str) {
        lock(&self.state.table).remove(&normalize(name));
    }

    /// How many queries (any type, UDP or TCP) were received for `name`.
    pub fn queries(&self, name: &str) -> usize {
        lock(&self.state.queries)
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Stop accepting; dropping `server` then aborts its JoinSet of tasks.
        self.server.shutdown_token().cancel();
    }
}

/// Binds a UDP socket and a TCP listener on the same 127.0.0.1 port.
async fn bind_same_port() -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS UDP socket on 127.0.0.1:0");
        let addr = udp.local_addr().expect("DNS UDP socket local_addr");
        match TcpListener::bind(addr).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("could not bind UDP and TCP on the same 127.0.0.1 port: {last_err:?}");
}

struct Handler {
    state: Arc<State>,
}

impl Handler {
    async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let resp_edns = request.edns.as_ref().map(|req_edns| {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &resp_edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;

        let mut answers: Vec<Record> = Vec::new();
        let mut soa: Vec<Record> = Vec::new();
        match request.queries.queries().first() {
            None => metadata.response_code = ResponseCode::FormErr,
            Some(query) => {
                let name = normalize(&query.name().to_string());
                *lock(&self.state.queries).entry(name.clone()).or_insert(0) += 1;
                let entry = lock(&self.state.table).get(&name).cloned();
                match entry {
                    None => metadata.response_code = ResponseCode::NXDomain,
                    Some(entry) => {
                        let owner = query.original().name().clone();
                        let qtype = query.query_type();
                        for ip in entry.ips {
                            let rdata = match (ip, qtype) {
                                (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                                _ => continue,
                            };
                            answers.push(Record::from_rdata(owner.clone(), entry.ttl, rdata));
                        }
                        if answers.is_empty() {
                            soa.push(no_data_soa(owner, entry.ttl));
                        }
                    }
                }
            }
        }

        let none = std::iter::empty::<&Record>;
        let response = builder.build(metadata, answers.iter(), none(), soa.iter(), none());
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// SOA for a NODATA answer: owner = the queried name, TTL = minimum = `ttl`.
fn no_data_soa(owner: Name, ttl: u32) -> Record {
    let mname = Name::from_ascii("ns.egret.test.").expect("valid SOA mname");
    let rname = Name::from_ascii("hostmaster.egret.test.").expect("valid SOA rname");
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
    Record::from_rdata(owner, ttl, RData::SOA(soa))
}

// `RequestHandler` is declared with `#[async_trait]`; async-trait is not a
// direct dependency here, so this is its expansion written by hand.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(request, response_handle))
    }
}
