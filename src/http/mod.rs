//! HTTP/1 codecs that know nothing of routing, pools or configuration: egret's own downstream
//! loop ([`server`]), its upstream client ([`client`]), what the two share on the wire
//! ([`wire`]), and the body types of the proxy path ([`body`]).
//!
//! hyper does everything these do not (request bodies, upgrades, malformed input, HTTP/2);
//! these exist because they hold no buffers while a connection is idle and serve a bodiless
//! request without crossing tasks. The request handler is a parameter of [`server::serve`],
//! so this wing sits below the proxy that routes.

pub mod body;
pub mod client;
pub mod server;
pub mod wire;
