//! egret: a userspace TLS-originating egress proxy.
//!
//! Data flow: `config` (native YAML and Istio manifests -> one validated model) -> `app` (bind)
//! -> `listener` (accept, hyper) -> `proxy` (authority, `route`, rewrite, `upstream`, response)
//! -> `upstream` (pools) -> `connect` (`dns`, TCP, `tls`) -> `access_log`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dns;
pub mod error;
pub mod fuzzing;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod text;
pub mod tls;
pub mod upstream;

/// The hash map for per-request look-ups (routes, pools, listeners, metrics): foldhash, seeded
/// per process, instead of SipHash, which cost ~2k instructions per request across them.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
