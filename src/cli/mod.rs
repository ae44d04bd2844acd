//! The command line's helpers that are too big for `main.rs`. `agent`: `egret proxy router` /
//! `egret proxy sidecar`, Istio pilot-agent's argument list and pod environment translated into
//! egret's own flags, so the seed's egress Deployment runs egret by changing only its `image:`.
//! `capture`: `egret capture`, the pod's init container (istio-init's NAT rules).

pub mod agent;
pub mod capture;

pub use agent::{EgretFlag, Translated, translate};
