//! Describing certificates: [`CertInfo`], the facts about a loaded certificate that `/certs`,
//! the expiry metrics and start-up messages show, and the helpers that turn X.509 names, SANs and
//! times into the text of messages and handshake reasons.

use rustls::DistinguishedName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::config::PemSource;

/// Facts about one loaded certificate (for `/certs`, expiry metrics and messages).
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// `ca`, `client` or `server`.
    pub role: &'static str,
    /// The file, or the Secret and key.
    pub source: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub not_before: i64,
}

/// Unix seconds as `2026-12-02T07:05:00Z` (UTC), for messages and `/certs`.
pub fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// What `/certs` and messages say about `c`, loaded from `source` as a `role` certificate.
pub(super) fn cert_info(
    role: &'static str,
    source: &PemSource,
    c: &X509Certificate<'_>,
) -> CertInfo {
    CertInfo {
        role,
        source: source.describe(),
        subject: name_of(c.subject()),
        issuer: name_of(c.issuer()),
        sans: sans_of(c),
        not_after: c.validity().not_after.timestamp(),
        not_before: c.validity().not_before.timestamp(),
    }
}

/// The DNS names, IP addresses and URIs a certificate is valid for.
pub(super) fn sans_of(c: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some((*d).to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

/// `CN=x` when there is a common name, else the whole name.
pub(super) fn name_of(n: &X509Name<'_>) -> String {
    match n.iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        Some(cn) => format!("CN={cn}"),
        None => n.to_string(),
    }
}

/// A DER distinguished name (as in a CertificateRequest) as text.
pub(super) fn dn_to_string(dn: &[u8]) -> String {
    if let Ok((_, n)) = X509Name::from_der(dn) {
        return name_of(&n);
    }
    // Some encodings omit the outer SEQUENCE: add it back.
    let wrapped = DistinguishedName::in_sequence(dn);
    X509Name::from_der(wrapped.as_ref())
        .map(|(_, n)| name_of(&n))
        .unwrap_or_else(|_| "<unparsable name>".into())
}

/// Names in reasons use single quotes: the reason is printed inside a double-quoted access-log
/// field, which must stay parseable.
pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.strip_prefix("CN=").unwrap_or(s))
}
