//! Server-certificate verification for client TLS, and what a rejected certificate means.
//!
//! Verification is always on: the chain is checked against the trust roots and the certificate
//! must be valid for the SNI name (RFC 6125: SANs only, no CN fallback), or for one of
//! `subjectAltNames` when given. Only `insecureSkipVerify: true` turns that off, per destination.
//!
//! When webpki rejects a chain, the `DiagnosingVerifier` explains why while the chain is at
//! hand, and the reason travels to the handshake inside the rustls error (read back by
//! `TlsContext::classify_rustls`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{fmt_time, name_of, quote, sans_of};
use super::pem::{PemReader, RootsDesc, load_crls, roots_desc_clone};
use crate::config::{Origin, Problems, TlsPolicy};
use crate::error::TlsFailure;

/// The verifier of a policy: `NoVerify` under `insecureSkipVerify`, else webpki over `roots`
/// (with the CRLs of `caCrl`) wrapped in a `DiagnosingVerifier`.
pub(super) fn server_verifier(
    policy: &TlsPolicy,
    roots: Arc<RootCertStore>,
    roots_desc: &RootsDesc,
    provider: &Arc<CryptoProvider>,
    origin: &Origin,
    problems: &mut Problems,
    reader: &mut PemReader,
) -> Option<Arc<dyn ServerCertVerifier>> {
    if policy.insecure_skip_verify {
        return Some(Arc::new(NoVerify {
            provider: provider.clone(),
        }));
    }
    let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = &policy.crl {
        builder = builder.with_crls(load_crls(crl, origin, problems, reader)?);
    }
    let inner = match builder.build() {
        Ok(v) => v,
        Err(e) => {
            problems.error(
                origin,
                "caCertificates",
                format!("cannot build a verifier: {e}"),
                None,
            );
            return None;
        }
    };
    let sans = policy
        .subject_alt_names
        .iter()
        .filter_map(|s| ServerName::try_from(s.clone()).ok())
        .collect();
    Some(Arc::new(DiagnosingVerifier {
        inner,
        roots: Arc::new(roots_desc_clone(roots_desc)),
        sans,
    }))
}

/// The standard verifier plus diagnostics: on failure it explains which certificate is missing,
/// which names the certificate has, or when it expired.
#[derive(Debug)]
struct DiagnosingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootsDesc>,
    /// `subjectAltNames`: the certificate must be valid for one of these instead of the SNI.
    sans: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for DiagnosingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = if self.sans.is_empty() {
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        } else {
            let mut last = None;
            for san in &self.sans {
                match self.inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    san,
                    ocsp_response,
                    now,
                ) {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        // A chain problem fails every name alike: report it as such.
                        let name_problem = matches!(
                            e,
                            rustls::Error::InvalidCertificate(
                                CertificateError::NotValidForName
                                    | CertificateError::NotValidForNameContext { .. }
                            )
                        );
                        if !name_problem {
                            last = Some(e);
                            break;
                        }
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )))
        };
        result.map_err(|e| {
            let failure = self.diagnose(&e, end_entity, intermediates, server_name, now);
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(failure),
            )))
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl DiagnosingVerifier {
    /// Why the chain was rejected, and what to change.
    fn diagnose(
        &self,
        err: &rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> TlsFailure {
        let chain = Rejected::parse(end_entity, intermediates, server_name);
        let Rejected {
            server, leaf_desc, ..
        } = &chain;
        let CertError(ce) = CertError::from(err);
        match ce {
            Some(CertificateError::UnknownIssuer) => self.unknown_issuer(&chain),
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => self.hostname_mismatch(&chain),
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                chain.expired(now)
            }
            Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
                chain.not_yet_valid()
            }
            Some(CertificateError::Revoked) => TlsFailure {
                code: "tls.cert_revoked",
                detail: format!("the certificate {leaf_desc} sent by {server} is revoked by caCrl"),
            },
            Some(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => TlsFailure {
                code: "tls.wrong_purpose",
                detail: format!(
                    "the certificate {leaf_desc} sent by {server} is not for TLS servers (no serverAuth extended key usage)"
                ),
            },
            _ => TlsFailure {
                code: "tls.bad_certificate",
                detail: format!("the certificate {leaf_desc} sent by {server} was rejected: {err}"),
            },
        }
    }

    /// `tls.unknown_issuer`: what the server sent, what the roots hold, and the first issuer
    /// that is neither.
    fn unknown_issuer(&self, chain: &Rejected<'_>) -> TlsFailure {
        let Rejected {
            server,
            leaf,
            sent,
            leaf_desc,
        } = chain;
        let mut d = format!("{server} sent [{leaf_desc}");
        for c in sent {
            let _ = write!(
                d,
                ", {} (issuer {})",
                name_of(c.subject()),
                quote(&name_of(c.issuer()))
            );
        }
        d.push(']');
        let holds = if self.roots.from_file {
            format!(
                "{} holds [{}]",
                self.roots.source,
                self.roots
                    .subjects
                    .iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("it is not signed by {}", self.roots.source)
        };
        // Walk up from the leaf through what the server sent; the first issuer that is
        // neither sent nor trusted is what is missing.
        let top = sent
            .iter()
            .rev()
            .find(|c| leaf.as_ref().is_some_and(|l| c.subject() != l.subject()))
            .or(None);
        let missing_issuer = match (leaf, top) {
            (Some(l), None) => name_of(l.issuer()),
            (_, Some(t)) => name_of(t.issuer()),
            (None, None) => "the issuing CA".into(),
        };
        let sent_intermediate = !sent.is_empty();
        let fix = if !sent_intermediate && self.roots.from_file {
            format!(
                "the server did not send its intermediate CA {}: add {} (and the root above it) to caCertificates. caCertificates must contain the root and the intermediate CA of the server",
                quote(&missing_issuer),
                quote(&missing_issuer)
            )
        } else if self.roots.from_file {
            format!(
                "add {} to caCertificates. caCertificates must contain the root and the intermediate CA of the server",
                quote(&missing_issuer)
            )
        } else {
            format!(
                "{} is not a public root: set caCertificates to a PEM bundle with the server's root and intermediate CAs",
                quote(&missing_issuer)
            )
        };
        TlsFailure {
            code: "tls.unknown_issuer",
            detail: format!("{d}; {holds}; {fix}"),
        }
    }

    /// `tls.hostname_mismatch`: the name expected against the names the certificate carries.
    fn hostname_mismatch(&self, chain: &Rejected<'_>) -> TlsFailure {
        let Rejected {
            server,
            leaf,
            leaf_desc,
            ..
        } = chain;
        let sans = leaf.as_ref().map(sans_of).unwrap_or_default();
        let expected = if self.sans.is_empty() {
            format!("'{server}'")
        } else {
            format!(
                "one of subjectAltNames [{}]",
                self.sans
                    .iter()
                    .map(|s| s.to_str().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        TlsFailure {
            code: "tls.hostname_mismatch",
            detail: format!(
                "expected {expected}, but the certificate {leaf_desc} is for [{}]; call the host the certificate is for, or set sni/subjectAltNames to a name it carries",
                sans.join(", ")
            ),
        }
    }
}

/// A rejected chain as `diagnose` sees it: parsed (unparsable intermediates left out), with the
/// leaf named for messages.
struct Rejected<'a> {
    server: Cow<'a, str>,
    leaf: Option<X509Certificate<'a>>,
    sent: Vec<X509Certificate<'a>>,
    /// `CN=api (issuer 'Acme CA')`, or "an unparsable certificate".
    leaf_desc: String,
}

impl<'a> Rejected<'a> {
    fn parse(
        end_entity: &'a CertificateDer<'_>,
        intermediates: &'a [CertificateDer<'_>],
        server_name: &'a ServerName<'_>,
    ) -> Rejected<'a> {
        let server = server_name.to_str();
        let leaf = X509Certificate::from_der(end_entity).ok().map(|(_, c)| c);
        let sent: Vec<X509Certificate<'_>> = intermediates
            .iter()
            .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .collect();
        let leaf_desc = leaf
            .as_ref()
            .map(|c| {
                format!(
                    "{} (issuer {})",
                    name_of(c.subject()),
                    quote(&name_of(c.issuer()))
                )
            })
            .unwrap_or_else(|| "an unparsable certificate".into());
        Rejected {
            server,
            leaf,
            sent,
            leaf_desc,
        }
    }

    /// `tls.cert_expired`: which certificate of the chain expired, and when.
    fn expired(&self, now: UnixTime) -> TlsFailure {
        let Rejected {
            server,
            leaf,
            sent,
            leaf_desc,
        } = self;
        let now_s = now.as_secs() as i64;
        let expired = leaf
            .iter()
            .chain(sent.iter())
            .find(|c| c.validity().not_after.timestamp() < now_s);
        let (who, when) = expired
            .map(|c| {
                (
                    name_of(c.subject()),
                    fmt_time(c.validity().not_after.timestamp()),
                )
            })
            .unwrap_or_else(|| (leaf_desc.clone(), "?".into()));
        TlsFailure {
            code: "tls.cert_expired",
            detail: format!(
                "the certificate {who} sent by {server} expired at {when} (now {}); the server must renew it",
                fmt_time(now_s)
            ),
        }
    }

    /// `tls.cert_not_yet_valid`.
    fn not_yet_valid(&self) -> TlsFailure {
        let Rejected {
            server,
            leaf,
            leaf_desc,
            ..
        } = self;
        TlsFailure {
            code: "tls.cert_not_yet_valid",
            detail: format!(
                "the certificate {leaf_desc} sent by {server} is not valid yet (notBefore {}); check the clocks",
                leaf.as_ref()
                    .map(|c| fmt_time(c.validity().not_before.timestamp()))
                    .unwrap_or_default()
            ),
        }
    }
}

/// `insecureSkipVerify: true`: accept any certificate (handshake signatures are still checked).
#[derive(Debug)]
struct NoVerify {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct CertError(Option<CertificateError>);

impl From<&rustls::Error> for CertError {
    fn from(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(c) => CertError(Some(c.clone())),
            _ => CertError(None),
        }
    }
}
