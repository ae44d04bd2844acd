//! Per-request and per-connection decisions: what the proxy does with what a listener accepted.
//!
//! - [`http`]: an HTTP request, in named steps: authority (Host, absolute-form URI or
//!   :authority, and the HTTP rules a proxy enforces, in `authority`) -> route -> rewrite (hop-by-hop headers, x-request-id, Host) -> upstream ->
//!   response. Failures become local replies with Envoy's status, flags and details.
//! - `finish`: how a request ends: exactly one access-log line, written when the response
//!   completes or, if the client goes away, when the request is dropped.
//! - `guard`: under ALLOW_ANY, no passthrough to egret's own ports or to cloud metadata.
//! - `tunnel`: HTTP `CONNECT`; [`tcp`]: TCP and TLS-passthrough listeners; both splice bytes
//!   with [`pump`], and read SNI with `tls::client_hello`. [`captured`]: connections the capture
//!   rules redirected that are not HTTP (opaque TCP by original destination, the app's TLS by
//!   SNI), and PassthroughCluster / BlackHoleCluster for what nothing declares.

mod authority;
pub mod captured;
mod finish;
mod guard;
pub mod http;
pub mod pump;
pub mod tcp;
mod tunnel;

pub use finish::{ProxyBody, log_codec_error};
pub use http::{handle, strip_hop_by_hop};
