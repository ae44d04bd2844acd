//! What a failed handshake means: [`TlsContext::classify`] turns the error of a handshake (or of
//! TLS after it) into a [`TlsFailure`] that says what went wrong and what to change: a plaintext
//! answer, a closed connection, a rustls error, or an alert from the server (read together with
//! the CertificateRequest it sent). Certificate rejections arrive already explained by the
//! verifier (`verify.rs`), which saw the chain.

use std::io;

use rustls::{AlertDescription, CertificateError};

use super::cert::quote;
use super::context::TlsContext;
use crate::access_log::ConnTls;
use crate::error::TlsFailure;

impl TlsContext {
    /// Turns a handshake error (or a TLS error after the handshake) into an actionable reason.
    pub fn classify(
        &self,
        err: &io::Error,
        seen: &ConnTls,
        first_bytes: &[u8],
        server: &str,
    ) -> TlsFailure {
        if let Some(text) = plaintext_http(first_bytes) {
            return TlsFailure {
                code: "tls.not_tls",
                detail: format!(
                    "the upstream answered the TLS ClientHello with plaintext ('{text}'): the port does not speak TLS; point targetPort at the TLS port, or set tls mode DISABLE for a plaintext port"
                ),
            };
        }
        let Some(rustls_err) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return match err.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => TlsFailure {
                    code: "tls.handshake_eof",
                    detail: format!(
                        "{server} closed the connection during the TLS handshake ({err}); the port may not speak TLS, or the server rejected the SNI '{server}'"
                    ),
                },
                _ => TlsFailure {
                    code: "tls.io_error",
                    detail: format!("TLS handshake with {server} failed: {err}"),
                },
            };
        };
        self.classify_rustls(rustls_err, seen, server)
    }

    pub fn classify_rustls(&self, err: &rustls::Error, seen: &ConnTls, server: &str) -> TlsFailure {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(CertificateError::Other(other)) => {
                if let Some(t) = other.0.downcast_ref::<TlsFailure>() {
                    return t.clone();
                }
                TlsFailure {
                    code: "tls.bad_certificate",
                    detail: format!("the certificate of {server} was rejected: {other}"),
                }
            }
            E::InvalidCertificate(e) => TlsFailure {
                code: "tls.bad_certificate",
                detail: format!("the certificate of {server} was rejected: {e:?}"),
            },
            E::AlertReceived(alert) => self.classify_alert(*alert, seen, server),
            E::PeerIncompatible(p) => TlsFailure {
                code: "tls.protocol_version",
                detail: format!(
                    "{server} and egret share no TLS version or cipher suite ({p:?}); egret offers TLS 1.2 and 1.3 with AEAD ciphers (ECDHE-ECDSA/RSA with AES-GCM or ChaCha20-Poly1305) and nothing older"
                ),
            },
            E::InvalidMessage(m) => TlsFailure {
                code: "tls.protocol_error",
                detail: format!(
                    "{server} sent a malformed TLS message ({m:?}); is this port really TLS?"
                ),
            },
            E::NoCertificatesPresented => TlsFailure {
                code: "tls.no_server_certificate",
                detail: format!("{server} presented no certificate"),
            },
            other => TlsFailure {
                code: "tls.handshake_failure",
                detail: format!("TLS with {server} failed: {other}"),
            },
        }
    }

    fn classify_alert(&self, alert: AlertDescription, seen: &ConnTls, server: &str) -> TlsFailure {
        let name = alert_name(alert);
        let requested = seen.requested.lock().map(|r| r.clone()).unwrap_or(None);
        let cert_alert = matches!(
            alert,
            AlertDescription::HandshakeFailure
                | AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired
                | AlertDescription::DecryptError
        );
        if let Some(cas) = &requested
            && cert_alert
        {
            let asked = if cas.is_empty() {
                "it did not say which CAs it accepts".to_string()
            } else {
                format!(
                    "it accepts certificates issued by [{}]",
                    cas.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
                )
            };
            return match self.client_desc() {
                Some(ours) if seen.client_cert_sent => TlsFailure {
                    code: "tls.client_cert_rejected",
                    detail: format!(
                        "{server} rejected egret's client certificate {ours} with alert {name}; {asked}; present a certificate from one of those CAs (clientCertificate {})",
                        self.policy
                            .client_cert
                            .as_ref()
                            .map_or_else(|| "-".to_string(), |(c, _)| c.describe())
                    ),
                },
                _ => TlsFailure {
                    code: "tls.client_cert_required",
                    detail: format!(
                        "{server} requires a client certificate (alert {name}) and this destination is mode {}; {asked}; use mode MUTUAL with clientCertificate and privateKey",
                        self.policy.mode_str()
                    ),
                },
            };
        }
        match alert {
            AlertDescription::ProtocolVersion => TlsFailure {
                code: "tls.protocol_version",
                detail: format!(
                    "{server} refused TLS 1.2 and 1.3 (alert protocol_version); it probably only speaks TLS 1.0/1.1, which egret does not offer"
                ),
            },
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
                TlsFailure {
                    code: "tls.handshake_failure",
                    detail: format!(
                        "{server} aborted the handshake (alert {name}): no TLS version, cipher suite or signature scheme in common; egret offers TLS 1.2/1.3 with AEAD ciphers only"
                    ),
                }
            }
            AlertDescription::UnrecognisedName => TlsFailure {
                code: "tls.unrecognized_name",
                detail: format!(
                    "{server} does not serve the name sent as SNI (alert unrecognized_name); set sni to a name the server serves"
                ),
            },
            _ => TlsFailure {
                code: "tls.peer_alert",
                detail: format!("{server} aborted TLS with alert {name}"),
            },
        }
    }
}

/// The TLS name of an alert (`unknown_ca`), for reasons.
pub(super) fn alert_name(a: AlertDescription) -> String {
    let s = format!("{a:?}");
    // CamelCase -> snake_case, as TLS names alerts.
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in s.chars() {
        if ch.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(ch);
            prev_lower = true;
        }
    }
    out
}

/// If the bytes look like a plaintext HTTP response, its first line.
pub(super) fn plaintext_http(first: &[u8]) -> Option<String> {
    if first.starts_with(b"HTTP/") {
        let line = first
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(first);
        return Some(String::from_utf8_lossy(line).into_owned());
    }
    None
}
