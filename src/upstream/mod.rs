//! Upstream clusters at run time: address selection (DNS, static endpoints, `--connect-to`),
//! load balancing over the addresses, a pool of keep-alive HTTP/1.1 connections per
//! (cluster, host, address), and opening one upstream transport (TCP, then TLS with SNI).
//!
//! One pool per cluster means one TLS policy per pool: connections opened under one policy are
//! never reused under another. Wildcard and passthrough clusters add the request's host to the
//! key, so different hosts (and SNI names) never share a connection.
//!
//! - [`pool`]: the pool itself: idle connections, leases, the idle sweeper.
//! - [`retry`]: one HTTP request over its attempts (retry policy, back-off, budget);
//!   [`outlier`]: ejecting failing addresses.
//! - [`send`]: one attempt of an HTTP request; [`dial`]: opening connections (and raw streams
//!   for TCP); [`endpoints`]: which address; [`connect`]: one TCP + TLS transport.

pub mod connect;
pub mod dial;
pub mod endpoints;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod send;

pub use endpoints::random_unit;
pub use pool::{ClusterPool, ConnInfo, Lease, UpstreamCtx};
pub use send::{Exchange, SendError, Sent};
