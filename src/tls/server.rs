//! Listener-side TLS: the rustls `ServerConfig` of a listener that terminates TLS (Gateway `tls`
//! SIMPLE or MUTUAL), built at start-up from its certificate, key and optional client CA.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{CertInfo, cert_info};
use super::pem::{PemReader, load_key, read_certs};
use crate::config::{Origin, Problems};

/// A rustls server config for a listener that terminates TLS (Gateway `tls` SIMPLE/MUTUAL).
pub fn server_config(
    policy: &crate::config::ServerTlsPolicy,
    provider: &Arc<CryptoProvider>,
    problems: &mut Problems,
    certs: &mut Vec<CertInfo>,
) -> Option<Arc<rustls::ServerConfig>> {
    let origin = Origin::file(policy.origin.clone());
    let mut reader = PemReader::default();
    let chain = read_certs(
        &policy.cert,
        "serverCertificate",
        &origin,
        problems,
        &mut reader,
    )?;
    let key = load_key(&policy.key, &origin, problems, &mut reader)?;
    if let Ok((_, c)) = X509Certificate::from_der(&chain[0]) {
        certs.push(cert_info("server", &policy.cert, &c));
    }
    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(b) => b,
        Err(e) => {
            problems.error(&origin, "", format!("cannot configure TLS: {e}"), None);
            return None;
        }
    };
    let builder = match &policy.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ders = read_certs(ca, "caCertificates", &origin, problems, &mut reader)?;
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(ders);
            if added == 0 {
                problems.error(
                    &origin,
                    "caCertificates",
                    format!("{} holds no usable CA certificate", ca.describe()),
                    None,
                );
                return None;
            }
            let mut vb = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            );
            if policy.client_cert_optional {
                vb = vb.allow_unauthenticated();
            }
            match vb.build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    problems.error(
                        &origin,
                        "caCertificates",
                        format!("cannot verify clients with {}: {e}", ca.describe()),
                        None,
                    );
                    return None;
                }
            }
        }
    };
    match builder.with_single_cert(chain, key) {
        Ok(mut c) => {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(Arc::new(c))
        }
        Err(e) => {
            let msg = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the private key in {} does not match the certificate in {}",
                    policy.key.describe(),
                    policy.cert.describe()
                ),
                e => format!(
                    "cannot use {} with {}: {e}",
                    policy.cert.describe(),
                    policy.key.describe()
                ),
            };
            problems.error(&origin, "privateKey", msg, None);
            None
        }
    }
}
