//! Reading TLS material: PEM certificates, private keys, CRLs and trust roots. Each source is
//! read once per build (by a [`PemReader`], which also fingerprints what it read), and every
//! problem names the file and the field, so a bad PEM, a key that does not match its
//! certificate, or an empty CA bundle stops start-up with a message an operator can act on.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{CertInfo, cert_info, fmt_time};
use crate::config::{Origin, PemSource, Problems, TlsPolicy, TrustRoots};

/// Reads each PEM source once per build and hashes what it read (the fingerprint that tells a
/// reload whether TLS material changed). Reading twice would race with a rotation and block on
/// a FIFO.
#[derive(Default)]
pub struct PemReader {
    seen: HashMap<String, Arc<Vec<u8>>>,
    order: Vec<String>,
}

impl PemReader {
    pub fn read(&mut self, src: &PemSource) -> io::Result<Arc<Vec<u8>>> {
        let key = src.describe();
        if let Some(b) = self.seen.get(&key) {
            return Ok(b.clone());
        }
        let b = Arc::new(src.read()?);
        self.seen.insert(key.clone(), b.clone());
        self.order.push(key);
        Ok(b)
    }

    /// A hash of everything read, in order.
    pub fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for k in &self.order {
            k.hash(&mut h);
            if let Some(b) = self.seen.get(k) {
                b.hash(&mut h);
            }
        }
        h.finish()
    }
}

/// The trust roots, described for messages.
#[derive(Debug)]
pub(super) struct RootsDesc {
    /// e.g. `caCertificates /etc/certs/ca.pem`, `the webpki (Mozilla) roots`.
    pub(super) source: String,
    /// Subjects of the anchors when they come from a file (for "holds [...]").
    pub(super) subjects: Vec<String>,
    pub(super) from_file: bool,
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM). The error never contains key material.
pub fn load_key(
    source: &PemSource,
    origin: &Origin,
    problems: &mut Problems,
    reader: &mut PemReader,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = match reader.read(source) {
        Ok(b) => b,
        Err(e) => {
            problems.error(
                origin,
                "privateKey",
                format!("cannot read {}: {e}", source.describe()),
                None,
            );
            return None;
        }
    };
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.error(
                origin,
                "privateKey",
                format!(
                    "{} holds no usable private key ({e}); egret reads PKCS#8 (\"BEGIN PRIVATE KEY\"), PKCS#1 (\"BEGIN RSA PRIVATE KEY\") and SEC1 (\"BEGIN EC PRIVATE KEY\") PEM, unencrypted",
                    source.describe()
                ),
                None,
            );
            None
        }
    }
}

/// The trust anchors of a policy (webpki, the system store or a PEM bundle), with their
/// description for messages; the certificates of a bundle are added to `certs`.
pub(super) fn load_roots(
    policy: &TlsPolicy,
    origin: &Origin,
    problems: &mut Problems,
    certs: &mut Vec<CertInfo>,
    reader: &mut PemReader,
) -> Option<(RootCertStore, RootsDesc)> {
    let mut store = RootCertStore::empty();
    match &policy.roots {
        TrustRoots::WebPki => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Some((
                store,
                RootsDesc {
                    source: "the default trust roots (webpki/Mozilla)".into(),
                    subjects: Vec::new(),
                    from_file: false,
                },
            ))
        }
        TrustRoots::System => {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                problems.warn(
                    origin,
                    "caCertificates",
                    format!("reading the system trust store: {e}"),
                    None,
                );
            }
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                problems.error(
                    origin,
                    "caCertificates",
                    "caCertificates: system, but the system trust store holds no certificate",
                    Some("install ca-certificates, or set caCertificates to a PEM bundle".into()),
                );
                return None;
            }
            Some((
                store,
                RootsDesc {
                    source: "the system trust store".into(),
                    subjects: Vec::new(),
                    from_file: false,
                },
            ))
        }
        TrustRoots::Pem(path) => {
            let ders = read_certs(path, "caCertificates", origin, problems, reader)?;
            let mut subjects = Vec::new();
            let now = chrono::Utc::now().timestamp();
            for der in &ders {
                match X509Certificate::from_der(der) {
                    Ok((_, c)) => {
                        let info = cert_info("ca", path, &c);
                        if !c.is_ca() {
                            problems.warn(
                                origin,
                                "caCertificates",
                                format!(
                                    "{} holds {}, which is not a CA certificate; it is trusted as an anchor anyway",
                                    path.describe(),
                                    info.subject
                                ),
                                Some("caCertificates should hold the server's root and intermediate CAs".into()),
                            );
                        }
                        if info.not_after < now {
                            problems.warn(
                                origin,
                                "caCertificates",
                                format!(
                                    "{} holds {}, which expired at {}",
                                    path.describe(),
                                    info.subject,
                                    fmt_time(info.not_after)
                                ),
                                None,
                            );
                        }
                        subjects.push(info.subject.clone());
                        certs.push(info);
                    }
                    Err(e) => {
                        problems.error(
                            origin,
                            "caCertificates",
                            format!(
                                "{} holds a certificate that cannot be parsed: {e}",
                                path.describe()
                            ),
                            None,
                        );
                        return None;
                    }
                }
            }
            let (added, ignored) = store.add_parsable_certificates(ders);
            if added == 0 || ignored > 0 {
                problems.error(
                    origin,
                    "caCertificates",
                    format!(
                        "{}: {ignored} of {} certificates cannot be used as trust anchors",
                        path.describe(),
                        added + ignored
                    ),
                    None,
                );
                return None;
            }
            Some((
                store,
                RootsDesc {
                    source: format!("caCertificates {}", path.describe()),
                    subjects,
                    from_file: true,
                },
            ))
        }
    }
}

/// Reads the PEM certificates of `source` (at least one) for the field `field`.
pub(super) fn read_certs(
    source: &PemSource,
    field: &str,
    origin: &Origin,
    problems: &mut Problems,
    reader: &mut PemReader,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = match reader.read(source) {
        Ok(b) => b,
        Err(e) => {
            problems.error(
                origin,
                field,
                format!("cannot read {}: {e}", source.describe()),
                Some(
                    "check the path; in Kubernetes, check that the Secret is mounted there".into(),
                ),
            );
            return None;
        }
    };
    match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(v) if v.is_empty() => {
            problems.error(
                origin,
                field,
                format!(
                    "{} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")",
                    source.describe()
                ),
                None,
            );
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            problems.error(
                origin,
                field,
                format!(
                    "{} is not a valid PEM certificate file: {e}",
                    source.describe()
                ),
                None,
            );
            None
        }
    }
}

/// The client certificate and key of a MUTUAL policy, checked to belong together and not to
/// have expired; the certificate is added to `certs`.
pub(super) fn load_client_cert(
    cert_path: &PemSource,
    key_path: &PemSource,
    provider: &Arc<CryptoProvider>,
    origin: &Origin,
    problems: &mut Problems,
    certs: &mut Vec<CertInfo>,
    reader: &mut PemReader,
) -> Option<CertifiedKey> {
    let chain = read_certs(cert_path, "clientCertificate", origin, problems, reader)?;
    let key = load_key(key_path, origin, problems, reader)?;
    if let Ok((_, c)) = X509Certificate::from_der(&chain[0]) {
        let info = cert_info("client", cert_path, &c);
        let now = chrono::Utc::now().timestamp();
        if info.not_after < now {
            problems.error(
                origin,
                "clientCertificate",
                format!(
                    "the client certificate {} in {} expired at {}",
                    info.subject,
                    cert_path.describe(),
                    fmt_time(info.not_after)
                ),
                Some("renew the certificate; servers reject expired client certificates".into()),
            );
            return None;
        }
        if let Ok(Some(eku)) = c.extended_key_usage()
            && !eku.value.client_auth
            && !eku.value.any
        {
            problems.warn(
                origin,
                "clientCertificate",
                format!(
                    "the client certificate {} has no clientAuth extended key usage; servers may reject it",
                    info.subject
                ),
                None,
            );
        }
        certs.push(info);
    }
    match CertifiedKey::from_der(chain, key, provider) {
        Ok(ck) => Some(ck),
        Err(rustls::Error::InconsistentKeys(_)) => {
            problems.error(
                origin,
                "privateKey",
                format!(
                    "the private key in {} does not match the certificate in {}",
                    key_path.describe(),
                    cert_path.describe()
                ),
                Some("the key must be the one the certificate was issued for; check that the two files belong together".into()),
            );
            None
        }
        Err(e) => {
            problems.error(
                origin,
                "privateKey",
                format!("cannot use the key in {}: {e}", key_path.describe()),
                None,
            );
            None
        }
    }
}

/// Reads the CRLs of `caCrl` (PEM `X509 CRL` blocks); an unreadable file or one holding none
/// stops the build.
pub(super) fn load_crls(
    crl: &PemSource,
    origin: &Origin,
    problems: &mut Problems,
    reader: &mut PemReader,
) -> Option<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = reader.read(crl);
    let parsed = bytes.map_err(|e| e.to_string()).and_then(|b| {
        CertificateRevocationListDer::pem_slice_iter(&b)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    });
    match parsed {
        Ok(crls) if !crls.is_empty() => Some(crls),
        Ok(_) => {
            problems.error(
                origin,
                "caCrl",
                format!(
                    "{} holds no CRL (expected \"-----BEGIN X509 CRL-----\")",
                    crl.describe()
                ),
                None,
            );
            None
        }
        Err(e) => {
            problems.error(
                origin,
                "caCrl",
                format!("cannot read {}: {e}", crl.describe()),
                None,
            );
            None
        }
    }
}

/// A copy of the description (the verifier and the context each hold one).
pub(super) fn roots_desc_clone(r: &RootsDesc) -> RootsDesc {
    RootsDesc {
        source: r.source.clone(),
        subjects: r.subjects.clone(),
        from_file: r.from_file,
    }
}
