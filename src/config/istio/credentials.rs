//! `credentialName`: the TLS material of a Kubernetes Secret, from Secret manifests given with
//! `--config`, else from mounted Secret directories under `--credentials-dir`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::diag::Origin;
use crate::config::model::PemSource;

/// A Kubernetes Secret's keys (decoded), for `credentialName`.
#[derive(Clone, Debug)]
pub struct SecretData {
    pub keys: HashMap<String, Vec<u8>>,
    pub origin: Origin,
}

/// `credentialName` lookup: Secret manifests given with `--config`, then mounted Secret
/// directories under `--credentials-dir`.
#[derive(Debug, Default)]
pub struct Credentials {
    pub(super) secrets: HashMap<(String, String), SecretData>,
    pub(super) dir: Option<PathBuf>,
}

/// A Secret's TLS material.
#[derive(Clone, Debug, Default)]
pub struct Credential {
    pub cert: Option<PemSource>,
    pub key: Option<PemSource>,
    pub ca: Option<PemSource>,
}

impl Credentials {
    pub fn lookup(&self, namespace: &str, name: &str) -> Result<Credential, String> {
        let pick = |keys: &HashMap<String, Vec<u8>>,
                    ns: &str,
                    sname: &str,
                    names: &[&str]|
         -> Option<PemSource> {
            names.iter().find_map(|k| {
                keys.get(*k).map(|v| PemSource::Inline {
                    label: format!("secret {ns}/{sname} key {k}"),
                    pem: Arc::from(v.as_slice()),
                })
            })
        };
        if let Some(s) = self.secrets.get(&(namespace.to_string(), name.to_string())) {
            let mut c = Credential {
                cert: pick(&s.keys, namespace, name, &["tls.crt", "cert"]),
                key: pick(&s.keys, namespace, name, &["tls.key", "key"]),
                ca: pick(&s.keys, namespace, name, &["ca.crt", "cacert"]),
            };
            let ca_name = format!("{name}-cacert");
            if c.ca.is_none()
                && let Some(ca) = self.secrets.get(&(namespace.to_string(), ca_name.clone()))
            {
                c.ca = pick(&ca.keys, namespace, &ca_name, &["ca.crt", "cacert"]);
            }
            if c.cert.is_none() && c.key.is_none() && c.ca.is_none() {
                return Err(format!(
                    "secret {namespace}/{name} ({}) has none of tls.crt, tls.key, ca.crt (or cert, key, cacert)",
                    s.origin
                ));
            }
            return Ok(c);
        }
        if let Some(dir) = &self.dir {
            let d = dir.join(name);
            if d.is_dir() {
                let file = |names: &[&str]| -> Option<PemSource> {
                    names
                        .iter()
                        .map(|n| d.join(n))
                        .find(|p| p.is_file())
                        .map(PemSource::File)
                };
                let c = Credential {
                    cert: file(&["tls.crt", "cert"]),
                    key: file(&["tls.key", "key"]),
                    ca: file(&["ca.crt", "cacert"]),
                };
                if c.cert.is_none() && c.key.is_none() && c.ca.is_none() {
                    return Err(format!(
                        "{} holds none of tls.crt, tls.key, ca.crt",
                        d.display()
                    ));
                }
                return Ok(c);
            }
            return Err(format!(
                "secret {namespace}/{name} was not given with --config, and {} does not exist",
                d.display()
            ));
        }
        Err(format!(
            "secret {namespace}/{name} was not given with --config, and no --credentials-dir is set"
        ))
    }
}
