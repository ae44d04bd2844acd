//! The Istio objects collected from the sources, before resolution: each with its name,
//! namespace and where it came from, plus the Secrets and the MeshConfig.

use crate::config::diag::{Origin, Problems};
use crate::config::doc::{Input, Meta, ObjSource, decode};
use crate::config::istio::credentials::SecretData;
use crate::config::istio::resources::{
    DestinationRuleSpec, Full, GatewaySpec, MeshConfigSpec, ServiceEntrySpec, VirtualServiceSpec,
};

/// An Istio object with where it came from.
#[derive(Debug)]
pub struct Obj<S> {
    pub name: String,
    pub namespace: String,
    pub src: ObjSource,
    pub spec: S,
}

impl<S> Obj<S> {
    pub(super) fn origin(&self) -> &Origin {
        &self.src.origin
    }

    /// A field path under `spec`.
    pub(super) fn path(&self, rest: &str) -> String {
        if rest.is_empty() {
            self.src.path("spec")
        } else {
            self.src.path(&format!("spec.{rest}"))
        }
    }

    pub(super) fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the Kubernetes documents held, before resolution.
#[derive(Debug, Default)]
pub struct Store {
    pub(super) service_entries: Vec<Obj<ServiceEntrySpec>>,
    pub(super) destination_rules: Vec<Obj<DestinationRuleSpec>>,
    pub(super) virtual_services: Vec<Obj<VirtualServiceSpec>>,
    pub(super) gateways: Vec<Obj<GatewaySpec>>,
    /// (namespace or None, name) -> secret.
    pub(super) secrets: Vec<(Option<String>, String, SecretData)>,
    pub mesh: Option<(MeshConfigSpec, Origin)>,
}

impl Store {
    pub fn add_secret(&mut self, namespace: Option<String>, name: String, data: SecretData) {
        self.secrets.push((namespace, name, data));
    }
}

/// Adds one Istio object to the store (created on the first object).
pub fn add_object(
    kind: &str,
    input: Input<'_>,
    meta: Meta,
    src: &ObjSource,
    store: &mut Option<Store>,
    problems: &mut Problems,
) {
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.error(
            &src.origin,
            src.path("metadata.name"),
            format!("the {kind} has no name"),
            None,
        );
        return;
    };
    // The namespace is filled in at resolution (objects without one get --namespace).
    let namespace = meta.namespace.clone().unwrap_or_default();
    let store = store.get_or_insert_with(Store::default);
    macro_rules! add {
        ($ty:ty, $list:ident) => {
            if let Some(full) = decode::<Full<$ty>>(input, src, problems) {
                store.$list.push(Obj {
                    name,
                    namespace,
                    src: src.clone(),
                    spec: full.spec,
                });
            }
        };
    }
    match kind {
        "ServiceEntry" => add!(ServiceEntrySpec, service_entries),
        "DestinationRule" => add!(DestinationRuleSpec, destination_rules),
        "VirtualService" => add!(VirtualServiceSpec, virtual_services),
        "Gateway" => add!(GatewaySpec, gateways),
        _ => {}
    }
}
