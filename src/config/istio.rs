//! Istio manifests (ServiceEntry, DestinationRule, VirtualService, Gateway) as configuration.
//! Filled in by the Istio-manifests work; for now Kubernetes documents are refused clearly.

use std::collections::HashMap;
use std::time::Duration;

use super::diag::{Origin, Problems};
use super::{Listener, Model, Source};
use crate::route::{ClusterId, RouteTable};

#[derive(Clone, Debug, Default)]
pub struct IstioOptions {}

#[derive(Debug, Default)]
pub struct Routing {}

impl Routing {
    pub fn has_gateway_listeners(&self) -> bool {
        false
    }
    pub fn has_routes(&self) -> bool {
        false
    }
    pub fn sidecar_routes(
        &self,
        _table: &mut RouteTable,
        _clusters: &HashMap<String, ClusterId>,
        _port: Option<u16>,
        _problems: &mut Problems,
    ) {
    }
    pub fn gateway_listeners(
        &self,
        _listeners: &mut Vec<Listener>,
        _clusters: &HashMap<String, ClusterId>,
        _defaults: &[(u16, String, ClusterId, Option<Duration>, String)],
        _problems: &mut Problems,
    ) {
    }
}

/// Whether the text holds Kubernetes objects (a top-level `apiVersion` or `kind`).
pub fn looks_like_kubernetes(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("apiVersion:") || l.starts_with("kind:"))
}

pub fn parse_source(
    source: &Source,
    _opts: &IstioOptions,
    _model: &mut Model,
    problems: &mut Problems,
) {
    problems.error(
        &Origin::file(&source.name),
        "",
        "this file holds Kubernetes manifests, which this build cannot load",
        Some("use egret's native configuration (config/README.md)".into()),
    );
}

pub fn resolve(_model: &mut Model, _opts: &IstioOptions, _problems: &mut Problems) {}
