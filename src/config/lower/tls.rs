//! Client TLS policies: a `ClientTLSSettings` block (DestinationRule or native `tls`) checked
//! and turned into a [`TlsPolicy`] (paths only; `tls.rs` reads the material when the runtime
//! is built). A MUTUAL policy without its certificate is an error, never plaintext.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::diag::{Origin, Problems};
use crate::config::istio::credentials::{Credential, Credentials};
use crate::config::model::{PemSource, TlsMode, TlsPolicy, TrustRoots};
use crate::config::overrides::map_path;
use crate::config::spec::{TlsModeSpec, TlsSpec};

/// What `lower_tls` needs besides the spec.
pub(crate) struct TlsCtx<'a> {
    /// Relative paths are resolved against this directory.
    pub base_dir: Option<&'a Path>,
    /// `--ca-bundle`.
    pub ca_bundle: Option<&'a Path>,
    /// `credentialName` lookup, with the rule's namespace.
    pub credentials: Option<(&'a Credentials, &'a str)>,
    /// `--mount`.
    pub mounts: &'a [(PathBuf, PathBuf)],
}

impl TlsCtx<'_> {
    /// A path as written: relative to the source's directory, then through `--mount`.
    fn file(&self, p: &str) -> PemSource {
        let pb = PathBuf::from(p);
        let pb = match self.base_dir {
            Some(dir) if pb.is_relative() => dir.join(pb),
            _ => pb,
        };
        PemSource::File(map_path(self.mounts, &pb))
    }
}

/// Validates a `ClientTLSSettings` block. Returns `None` for DISABLE (and on error).
pub(crate) fn lower_tls(
    spec: &TlsSpec,
    origin: &Origin,
    path: &str,
    ctx: &TlsCtx<'_>,
    problems: &mut Problems,
) -> Option<Arc<TlsPolicy>> {
    let block = Block { spec, origin, path };
    let mode = block.mode(problems)?;
    let mut ok = true;

    // credentialName: a Kubernetes Secret (tls.crt, tls.key, ca.crt), exclusive with the files.
    let credential = block.credential(ctx, problems)?;

    let roots = match (spec.ca_certificates.as_deref().map(str::trim), &credential) {
        (_, Some(c)) if c.ca.is_some() => TrustRoots::Pem(c.ca.clone()?),
        (None | Some(""), _) => match ctx.ca_bundle {
            Some(b) => TrustRoots::Pem(PemSource::File(map_path(ctx.mounts, b))),
            None => TrustRoots::WebPki,
        },
        (Some("system"), _) => TrustRoots::System,
        (Some(p), _) => TrustRoots::Pem(ctx.file(p)),
    };
    ok &= block.check_names(problems);
    let skip = block.skip_verify(problems);
    let crl = spec.ca_crl.as_deref().map(|p| ctx.file(p));
    let client_cert = block.client_cert(mode, credential.as_ref(), ctx, &mut ok, problems);
    if !ok {
        return None;
    }
    Some(Arc::new(TlsPolicy {
        mode: if mode == TlsModeSpec::Mutual {
            TlsMode::Mutual
        } else {
            TlsMode::Simple
        },
        roots,
        client_cert,
        crl,
        sni: spec.sni.clone(),
        subject_alt_names: spec.subject_alt_names.clone(),
        insecure_skip_verify: skip,
        origin: format!("{origin}: {path}"),
    }))
}

/// The `tls` block being lowered, and where it was written.
struct Block<'a> {
    spec: &'a TlsSpec,
    origin: &'a Origin,
    path: &'a str,
}

impl Block<'_> {
    /// SIMPLE or MUTUAL; `None` when there is no TLS to originate (DISABLE, warned if other
    /// settings are given) or the mode is unusable (reported).
    fn mode(&self, problems: &mut Problems) -> Option<TlsModeSpec> {
        let (spec, origin, path) = (self.spec, self.origin, self.path);
        let has_material = spec.ca_certificates.is_some()
            || spec.client_certificate.is_some()
            || spec.private_key.is_some()
            || spec.sni.is_some()
            || !spec.subject_alt_names.is_empty()
            || spec.credential_name.is_some();
        let mode = match spec.mode {
            Some(m) => m,
            None if has_material => {
                problems.error(
                    origin,
                    format!("{path}.mode"),
                    "tls has settings but no mode",
                    Some("set mode: SIMPLE (verify the server) or MUTUAL (also present a client certificate)".into()),
                );
                return None;
            }
            None => TlsModeSpec::Disable,
        };
        match mode {
            TlsModeSpec::Disable => {
                if has_material {
                    problems.warn(
                        origin,
                        format!("{path}.mode"),
                        "mode is DISABLE, so the other tls settings are ignored and traffic is plaintext",
                        Some("set mode: SIMPLE or MUTUAL to originate TLS".into()),
                    );
                }
                None
            }
            TlsModeSpec::IstioMutual => {
                problems.error(
                    origin,
                    format!("{path}.mode"),
                    "ISTIO_MUTUAL needs an Istio mesh identity (SPIFFE certificates from istiod), which egret does not have",
                    Some("use mode: MUTUAL with clientCertificate, privateKey and caCertificates (or credentialName)".into()),
                );
                None
            }
            TlsModeSpec::Simple | TlsModeSpec::Mutual => Some(mode),
        }
    }

    /// The Secret named by `credentialName`: `Some(None)` without one, `None` when it cannot be
    /// used (reported).
    fn credential(&self, ctx: &TlsCtx<'_>, problems: &mut Problems) -> Option<Option<Credential>> {
        let (spec, origin, path) = (self.spec, self.origin, self.path);
        let Some(name) = &spec.credential_name else {
            return Some(None);
        };
        if spec.client_certificate.is_some()
            || spec.private_key.is_some()
            || spec.ca_certificates.is_some()
        {
            problems.error(
                origin,
                format!("{path}.credentialName"),
                "credentialName cannot be combined with clientCertificate, privateKey or caCertificates",
                Some("use either the Secret or the files".into()),
            );
            return None;
        }
        match ctx.credentials {
            None => {
                problems.error(
                    origin,
                    format!("{path}.credentialName"),
                    format!("credentialName \"{name}\" cannot be resolved here"),
                    Some("give the Secret as a Kubernetes manifest with --config, or its mounted directory with --credentials-dir".into()),
                );
                None
            }
            Some((store, ns)) => match store.lookup(ns, name) {
                Ok(c) => Some(Some(c)),
                Err(e) => {
                    problems.error(origin, format!("{path}.credentialName"), e, Some("the Secret needs tls.crt and tls.key (MUTUAL) and/or ca.crt; give it with --config or --credentials-dir".into()));
                    None
                }
            },
        }
    }

    /// Whether `sni` and `subjectAltNames` are names egret can send and check (each bad one is
    /// reported).
    fn check_names(&self, problems: &mut Problems) -> bool {
        let (spec, origin, path) = (self.spec, self.origin, self.path);
        let mut ok = true;
        if let Some(sni) = &spec.sni {
            if sni.parse::<IpAddr>().is_ok() {
                problems.error(
                    origin,
                    format!("{path}.sni"),
                    format!("\"{sni}\" is an IP address; SNI must be a host name"),
                    Some(
                        "remove sni to send none for IP destinations, or use the server's host name"
                            .into(),
                    ),
                );
                ok = false;
            } else if rustls_pki_types::DnsName::try_from(sni.as_str()).is_err() {
                problems.error(
                    origin,
                    format!("{path}.sni"),
                    format!("\"{sni}\" is not a valid DNS name"),
                    None,
                );
                ok = false;
            }
        }
        for (i, san) in spec.subject_alt_names.iter().enumerate() {
            if rustls_pki_types::ServerName::try_from(san.as_str()).is_err() {
                problems.error(
                    origin,
                    format!("{path}.subjectAltNames[{i}]"),
                    format!("\"{san}\" is neither a DNS name nor an IP address"),
                    Some(
                        "egret checks DNS and IP SANs; URI SANs (spiffe://...) are not supported"
                            .into(),
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    /// `insecureSkipVerify`, loudly warned about.
    fn skip_verify(&self, problems: &mut Problems) -> bool {
        let (spec, origin, path) = (self.spec, self.origin, self.path);
        let skip = spec.insecure_skip_verify.unwrap_or(false);
        if skip {
            problems.warn(
                origin,
                format!("{path}.insecureSkipVerify"),
                "the server certificate will NOT be verified for this destination: anyone on the path can impersonate it",
                Some("remove insecureSkipVerify and put the server's root and intermediate CAs in caCertificates".into()),
            );
            if spec.ca_certificates.is_some() || !spec.subject_alt_names.is_empty() {
                problems.warn(
                    origin,
                    format!("{path}.insecureSkipVerify"),
                    "caCertificates and subjectAltNames are ignored because insecureSkipVerify is true",
                    None,
                );
            }
        }
        skip
    }

    /// MUTUAL: the client certificate and key (from the Secret or the files); a missing one
    /// clears `ok`. SIMPLE: none, and given files are warned about.
    fn client_cert(
        &self,
        mode: TlsModeSpec,
        credential: Option<&Credential>,
        ctx: &TlsCtx<'_>,
        ok: &mut bool,
        problems: &mut Problems,
    ) -> Option<(PemSource, PemSource)> {
        let (spec, origin, path) = (self.spec, self.origin, self.path);
        match mode {
            TlsModeSpec::Mutual => {
                match (credential, &spec.client_certificate, &spec.private_key) {
                    (Some(c), _, _) => {
                        match (&c.cert, &c.key) {
                            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                            _ => {
                                problems.error(
                            origin,
                            format!("{path}.credentialName"),
                            "mode MUTUAL but the Secret has no tls.crt/tls.key",
                            Some("the Secret must hold tls.crt and tls.key (or cert and key)".into()),
                        );
                                *ok = false;
                                None
                            }
                        }
                    }
                    (None, Some(c), Some(k)) => Some((ctx.file(c), ctx.file(k))),
                    (None, c, k) => {
                        let missing = match (c, k) {
                            (None, None) => "clientCertificate and privateKey are",
                            (None, Some(_)) => "clientCertificate is",
                            _ => "privateKey is",
                        };
                        problems.error(
                        origin,
                        path.to_string(),
                        format!("mode MUTUAL but {missing} missing"),
                        Some("MUTUAL presents a client certificate: set clientCertificate and privateKey (PEM files), or use mode: SIMPLE. egret never falls back to plaintext".into()),
                    );
                        *ok = false;
                        None
                    }
                }
            }
            _ => {
                if spec.client_certificate.is_some() || spec.private_key.is_some() {
                    problems.warn(
                        origin,
                        format!("{path}.clientCertificate"),
                        "mode SIMPLE does not present a client certificate, so clientCertificate/privateKey are ignored",
                        Some("use mode: MUTUAL to present it".into()),
                    );
                }
                None
            }
        }
    }
}
