//! The command line's helpers that are too big for `main.rs`. `agent`: `egret proxy router` /
//! `egret proxy sidecar`, Istio pilot-agent's argument list and pod environment translated into
//! egret's own flags, so the seed's egress Deployment runs egret by changing only its `image:`.

pub mod agent;

pub use agent::{EgretFlag, Translated, translate};
