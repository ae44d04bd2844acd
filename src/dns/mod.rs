//! Name resolution: `--resolve` overrides, then a TTL-bounded cache in front of hickory
//! (`resolver.rs`); and the DNS proxy (`server.rs`, `--dns-capture`), which answers declared
//! hosts from egret's own view and forwards the rest.

mod resolver;
pub mod server;

pub use resolver::{Dns, DnsError, STALE_FOR};
