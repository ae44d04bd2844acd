//! Loading: sources → YAML documents → each document to its front end (Kubernetes objects to
//! [`k8s`](crate::config::k8s), the rest to [`native`](crate::config::native)), then the
//! MeshConfig, the Istio resolution and the lowering into one `Config`. Every problem found
//! on the way is collected, so a broken config is reported in one run, and a config with errors
//! is never used.

use crate::config::decl::Model;
use crate::config::diag::{ConfigError, Origin, Problems};
use crate::config::doc::{ObjSource, is_kubernetes, split_documents};
use crate::config::istio::resolve::resolve;
use crate::config::k8s;
use crate::config::lower::build::build;
use crate::config::model::Config;
use crate::config::native;
use crate::config::overrides::Overrides;
use crate::config::source::Source;

/// Parses, lowers and validates the sources into one `Config`.
pub fn load(sources: &[Source], overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut model = Model::default();
    for source in sources {
        let mut params = source.params.clone();
        params.extend(overrides.istio.params.iter().cloned());
        for doc in split_documents(&source.text) {
            if is_kubernetes(doc.text) {
                k8s::parse_doc(source, &doc, &params, &mut model, &mut problems);
            } else {
                native::parse_doc(source, &doc, &mut model, &mut problems);
            }
        }
    }
    if let Some(mesh) = &overrides.istio.mesh_config {
        let src = ObjSource {
            origin: Origin::file(&mesh.name),
            prefix: String::new(),
            base_dir: mesh.base_dir.clone(),
        };
        k8s::mesh_config(&mesh.text, &src, &mut model, &mut problems);
    }
    let mut istio_opts = overrides.istio.clone();
    istio_opts.mounts = overrides.mounts.clone();
    resolve(&mut model, &istio_opts, &mut problems);
    let config = build(model, overrides, &mut problems);
    if problems.has_errors() {
        return Err(ConfigError {
            problems: problems.list,
        });
    }
    let mut config = config;
    config.warnings = problems.list;
    Ok(config)
}
