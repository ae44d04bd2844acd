//! HTTP/1 codecs that know nothing of routing, pools or configuration: egret's own downstream
//! loop ([`server`]), its upstream client ([`client`]), what the two share on the wire
//! ([`wire`]), the body types of the proxy path ([`body`]), and a listener's connection limit,
//! which the HTTP/1 loop tells when a connection is idle ([`limit`]).
//!
//! hyper does everything these do not (request bodies, upgrades, malformed input, HTTP/2);
//! these exist because they hold no buffers while a connection is idle and serve a bodiless
//! request without crossing tasks. The request handler is a parameter of [`server::serve`],
//! so this wing sits below the proxy that routes.

pub mod body;
pub mod client;
pub mod limit;
pub mod server;
pub mod wire;
