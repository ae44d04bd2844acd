//! Name resolution: `--resolve` overrides, then a TTL-bounded cache in front of hickory
//! (`resolver.rs`). A folder so that the DNS proxy to come (`server.rs`) has its place beside
//! the resolver.

mod resolver;

pub use resolver::{Dns, DnsError, STALE_FOR};
