//! Transparent capture: what lets an app that does not know egret exists go through it, as
//! Istio's sidecar does. `original.rs`: a redirected connection's original destination
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, read through socket2, so no `unsafe` here).
//! `rules.rs`: the NAT rules of `egret capture` (istio-init's), as data; `apply.rs`: installing
//! and removing them with iptables (or nftables).

mod apply;
mod original;
pub mod rules;

pub use apply::{Backend, CaptureError, Step, dry_run, plan, resolve, run};
pub use original::original_destination;
