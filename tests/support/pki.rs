//! A throw-away PKI generated at test time with rcgen: a root CA, an
//! intermediate CA (pathlen 0) issued by the root, and leaves issued by the
//! intermediate. All keys are ECDSA P-256.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A root CA and an intermediate CA; both are kept so more leaves can be
/// signed at any time.
pub struct Pki {
    label: String,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// An end-entity certificate with its key, in PEM and DER forms.
#[derive(Debug)]
pub struct Leaf {
    /// The leaf certificate only.
    pub leaf_pem: String,
    /// Leaf + intermediate (what a server normally sends).
    pub chain_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: String,
    pub leaf_der: CertificateDer<'static>,
    /// `[leaf, intermediate]`.
    pub chain_der: Vec<CertificateDer<'static>>,
    pub key_der: PrivateKeyDer<'static>,
}

impl Clone for Leaf {
    fn clone(&self) -> Leaf {
        Leaf {
            leaf_pem: self.leaf_pem.clone(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
            leaf_der: self.leaf_der.clone(),
            chain_der: self.chain_der.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate an ECDSA P-256 key pair")
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock is before 1970")
}

// rcgen does not re-export the `time` crate, so times are computed as
// `date_time_ymd(1970, 1, 1) + elapsed-since-epoch`.

/// Params with validity `[now - before, now + after]`.
fn params_valid(cn: &str, before: Duration, after: Duration) -> CertificateParams {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = since_epoch();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.not_before = epoch + (now - before);
    params.not_after = epoch + (now + after);
    params
}

/// Params with validity `[now - ago_start, now - ago_end]` (entirely in the past).
fn params_past(cn: &str, ago_start: Duration, ago_end: Duration) -> CertificateParams {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = since_epoch();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.not_before = epoch + (now - ago_start);
    params.not_after = epoch + (now - ago_end);
    params
}

fn san(name: &str) -> SanType {
    match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.try_into()
                .unwrap_or_else(|e| panic!("{name:?} is not a valid DNS name for a SAN: {e}")),
        ),
    }
}

impl Pki {
    /// Root CN "Egret Test Root {label}", intermediate CN
    /// "Egret Test Intermediate {label}" (issued by the root, CA:true pathlen 0).
    pub fn new(label: &str) -> Pki {
        let mut root_params = params_valid(&format!("Egret Test Root {label}"), DAY, 3650 * DAY);
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root = CertifiedIssuer::self_signed(root_params, new_key())
            .expect("self-sign the test root CA");

        let mut int_params =
            params_valid(&format!("Egret Test Intermediate {label}"), DAY, 3650 * DAY);
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        int_params.use_authority_key_identifier_extension = true;
        let intermediate = CertifiedIssuer::signed_by(int_params, new_key(), &root)
            .expect("sign the test intermediate CA with the root");

        Pki {
            label: label.to_owned(),
            root,
            intermediate,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    pub fn intermediate_pem(&self) -> String {
        self.intermediate.pem()
    }

    pub fn intermediate_der(&self) -> CertificateDer<'static> {
        self.intermediate.der().clone()
    }

    /// Server leaf issued by the intermediate: each name becomes a DNS SAN (or
    /// an IP SAN if it parses as an IP), CN = first name, EKU serverAuth, valid
    /// from now-1day to now+30days.
    pub fn server_leaf(&self, names: &[&str]) -> Leaf {
        let cn = names.first().expect("server_leaf needs at least one name");
        let mut params = params_valid(cn, DAY, 30 * DAY);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Like [`Pki::server_leaf`] but not_before = now-30d, not_after = now-1d.
    pub fn expired_server_leaf(&self, names: &[&str]) -> Leaf {
        let cn = names
            .first()
            .expect("expired_server_leaf needs at least one name");
        let mut params = params_past(cn, 30 * DAY, DAY);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Client leaf issued by the intermediate: CN = cn, EKU clientAuth.
    pub fn client_leaf(&self, cn: &str) -> Leaf {
        let mut params = params_valid(cn, DAY, 30 * DAY);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Writes `pem` to `dir/name` and returns the path.
    pub fn write_pem(&self, dir: &Path, name: &str, pem: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem)
            .unwrap_or_else(|e| panic!("write PEM file {}: {e}", path.display()));
        path
    }

    fn issue(&self, mut params: CertificateParams) -> Leaf {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = new_key();
        let cert = params
            .signed_by(&key, &self.intermediate)
            .expect("sign a leaf certificate with the test intermediate");

        let leaf_pem = cert.pem();
        let leaf_der = cert.der().clone();
        let key_pem = key.serialize_pem();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Leaf {
            chain_pem: format!("{leaf_pem}{}", self.intermediate.pem()),
            chain_der: vec![leaf_der.clone(), self.intermediate.der().clone()],
            leaf_pem,
            key_pem,
            leaf_der,
            key_der,
        }
    }
}
