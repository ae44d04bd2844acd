//! Client TLS: one rustls `ClientConfig` per TLS policy, built at start-up (a bad PEM, a key that
//! does not match its certificate, or an empty CA bundle stops start-up with a message naming the
//! file), and the diagnostics that turn a failed handshake into a reason an operator can act on.
//! Also the listener side: the `ServerConfig` of a listener that terminates TLS.
//!
//! This is the only module that reads PEM or chooses the crypto provider (ring).
//!
//! Files, by job (each reaches its siblings by path, never through this façade):
//! - `client_hello.rs`: the SNI out of a ClientHello (TLS passthrough routing, CONNECT checks).
//! - `pem.rs`: reading certificates, keys, CRLs and trust roots, once per build ([`PemReader`]).
//! - `cert.rs`: [`CertInfo`] and describing certificates and names for messages.
//! - `verify.rs`: server-certificate verification, and what a rejected certificate means.
//! - `context.rs`: [`TlsContexts`] / [`TlsContext`], the client-certificate resolver and the
//!   handshake.
//! - `failure.rs`: what a failed handshake means (alerts, plaintext answers, rustls errors).
//! - `server.rs`: [`server_config`], listener-side TLS.
//! - `stream.rs`: [`Recording`], the client transport under rustls (read-ahead, first bytes),
//!   and [`UpstreamIo`], an open upstream connection (plain TCP or TLS over it).

mod cert;
pub mod client_hello;
mod context;
mod failure;
mod pem;
mod server;
mod stream;
mod verify;

#[cfg(test)]
mod tests;

pub use cert::{CertInfo, fmt_time};
pub use context::{TlsContext, TlsContexts, provider};
pub use pem::{PemReader, load_key};
pub use server::server_config;
pub use stream::{Recording, UpstreamIo};
