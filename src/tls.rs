//! Client TLS: one rustls `ClientConfig` per TLS policy, built at start-up (a bad PEM, a key that
//! does not match its certificate, or an empty CA bundle stops start-up with a message naming the
//! file), and the diagnostics that turn a failed handshake into a reason an operator can act on.
//!
//! This is the only module that reads PEM or chooses the crypto provider (ring).
//!
//! Verification is always on: the chain is checked against the trust roots and the certificate
//! must be valid for the SNI name (RFC 6125: SANs only, no CN fallback), or for one of
//! `subjectAltNames` when given. Only `insecureSkipVerify: true` turns that off, per destination.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::access_log::ConnTls;
use crate::config::{
    Config, ConfigError, Origin, PemSource, Problems, TlsMode, TlsPolicy, TrustRoots,
};
use crate::error::TlsFailure;

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

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

/// Everything needed to originate TLS for one policy.
pub struct TlsContext {
    pub policy: Arc<TlsPolicy>,
    /// The rustls config without ALPN and with `http/1.1`. Shared by every connection (never
    /// cloned per connection): rustls resumes a session only under the very same verifier and
    /// client-certificate resolver, so both must be the same objects across connections.
    base: Arc<ClientConfig>,
    base_h1: Arc<ClientConfig>,
    client_key: Option<Arc<CertifiedKey>>,
    /// `CN=orders-svc (issuer "Acme Client CA")`, for messages.
    client_desc: Option<String>,
    roots: Arc<RootsDesc>,
    pub certs: Vec<CertInfo>,
    /// A hash of the policy and every byte of material it loaded (reloads reuse pools whose
    /// material did not change).
    pub fingerprint: u64,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsContext")
            .field("policy", &self.policy.origin)
            .finish_non_exhaustive()
    }
}

/// The trust roots, described for messages.
#[derive(Debug)]
struct RootsDesc {
    /// e.g. `caCertificates /etc/certs/ca.pem`, `the webpki (Mozilla) roots`.
    source: String,
    /// Subjects of the anchors when they come from a file (for "holds [...]").
    subjects: Vec<String>,
    from_file: bool,
}

/// TLS contexts for every cluster, shared by policies with the same material, and the server
/// configs of listeners that terminate TLS.
#[derive(Debug, Default)]
pub struct TlsContexts {
    /// Indexed like `Config::clusters`.
    pub by_cluster: Vec<Option<Arc<TlsContext>>>,
    /// Indexed like `Config::listeners`.
    pub by_listener: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Certificates loaded for listeners (for `/certs` and expiry metrics).
    pub listener_certs: Vec<CertInfo>,
}

impl TlsContexts {
    /// Loads every certificate, key and CA bundle the config refers to. All problems are
    /// reported together; warnings (e.g. a CA bundle holding a leaf) go to `warnings`.
    pub fn build(
        config: &Config,
        warnings: &mut Vec<crate::config::Problem>,
    ) -> Result<TlsContexts, ConfigError> {
        let provider = provider();
        let mut problems = Problems::default();
        let mut cache: HashMap<u64, Option<Arc<TlsContext>>> = HashMap::new();
        let mut out = TlsContexts::default();
        for cluster in &config.clusters {
            let Some(policy) = &cluster.tls else {
                out.by_cluster.push(None);
                continue;
            };
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                policy.material_key().hash(&mut h);
                h.finish()
            };
            let ctx = cache
                .entry(key)
                .or_insert_with(|| {
                    TlsContext::new(policy.clone(), &provider, &mut problems).map(|mut c| {
                        if !config.upstream_overrides.tls_resumption {
                            for base in [&mut c.base, &mut c.base_h1] {
                                let mut cfg = (**base).clone();
                                cfg.resumption = rustls::client::Resumption::disabled();
                                *base = Arc::new(cfg);
                            }
                        }
                        Arc::new(c)
                    })
                })
                .clone();
            // Different SNI etc. with the same material: same rustls config, own policy.
            let ctx = ctx.map(|c| {
                if Arc::ptr_eq(&c.policy, policy) {
                    c
                } else {
                    Arc::new(TlsContext {
                        policy: policy.clone(),
                        base: c.base.clone(),
                        base_h1: c.base_h1.clone(),
                        client_key: c.client_key.clone(),
                        client_desc: c.client_desc.clone(),
                        roots: c.roots.clone(),
                        certs: c.certs.clone(),
                        fingerprint: fingerprint(policy, c.fingerprint),
                    })
                }
            });
            out.by_cluster.push(ctx);
        }
        for l in &config.listeners {
            let sc = l
                .tls
                .as_ref()
                .and_then(|t| server_config(t, &provider, &mut problems, &mut out.listener_certs));
            out.by_listener.push(sc);
        }
        if problems.has_errors() {
            return Err(ConfigError {
                problems: problems.list,
            });
        }
        warnings.extend(problems.list);
        Ok(out)
    }
}

fn origin_of(policy: &TlsPolicy) -> Origin {
    Origin::file(policy.origin.clone())
}

impl TlsContext {
    pub fn new(
        policy: Arc<TlsPolicy>,
        provider: &Arc<CryptoProvider>,
        problems: &mut Problems,
    ) -> Option<TlsContext> {
        let origin = origin_of(&policy);
        let mut certs = Vec::new();
        let mut reader = PemReader::default();
        let (roots, roots_desc) = load_roots(&policy, &origin, problems, &mut certs, &mut reader)?;
        let roots = Arc::new(roots);

        let verifier: Arc<dyn ServerCertVerifier> = if policy.insecure_skip_verify {
            Arc::new(NoVerify {
                provider: provider.clone(),
            })
        } else {
            let mut builder =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone());
            if let Some(crl) = &policy.crl {
                let bytes = reader.read(crl);
                let parsed = bytes.map_err(|e| e.to_string()).and_then(|b| {
                    CertificateRevocationListDer::pem_slice_iter(&b)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(crls) if !crls.is_empty() => builder = builder.with_crls(crls),
                    Ok(_) => {
                        problems.error(
                            &origin,
                            "caCrl",
                            format!(
                                "{} holds no CRL (expected \"-----BEGIN X509 CRL-----\")",
                                crl.describe()
                            ),
                            None,
                        );
                        return None;
                    }
                    Err(e) => {
                        problems.error(
                            &origin,
                            "caCrl",
                            format!("cannot read {}: {e}", crl.describe()),
                            None,
                        );
                        return None;
                    }
                }
            }
            let inner = match builder.build() {
                Ok(v) => v,
                Err(e) => {
                    problems.error(
                        &origin,
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
            Arc::new(DiagnosingVerifier {
                inner,
                roots: Arc::new(roots_desc_clone(&roots_desc)),
                sans,
            })
        };

        let (client_key, client_desc) = match (&policy.mode, &policy.client_cert) {
            (TlsMode::Mutual, Some((cert, key))) => {
                let ck = load_client_cert(
                    cert,
                    key,
                    provider,
                    &origin,
                    problems,
                    &mut certs,
                    &mut reader,
                )?;
                let desc = certs
                    .iter()
                    .find(|c| c.role == "client")
                    .map(|c| format!("{} (issuer {})", c.subject, quote(&c.issuer)));
                (Some(Arc::new(ck)), desc)
            }
            _ => (None, None),
        };

        let builder = match ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        {
            Ok(b) => b,
            Err(e) => {
                problems.error(&origin, "", format!("cannot configure TLS: {e}"), None);
                return None;
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Recorder {
                key: client_key.clone(),
            }));
        let mut h1 = config.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let material = reader.hash();
        Some(TlsContext {
            fingerprint: fingerprint(&policy, material),
            policy,
            base: Arc::new(config),
            base_h1: Arc::new(h1),
            client_key,
            client_desc,
            roots: Arc::new(roots_desc),
            certs,
        })
    }

    /// Performs the TLS handshake on `io` for `server_name`. On failure the error is classified
    /// into a [`TlsFailure`] that says what went wrong and what to change.
    pub async fn connect<IO>(
        &self,
        io: Recording<IO>,
        server_name: ServerName<'static>,
        alpn: &[&[u8]],
    ) -> Result<(tokio_rustls::client::TlsStream<Recording<IO>>, Arc<ConnTls>), TlsFailure>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let seen = Arc::new(ConnTls {
            client_cert_sent: self.client_key.is_some(),
            ..ConnTls::default()
        });
        let config = match alpn {
            [] => self.base.clone(),
            [p] if *p == b"http/1.1" => self.base_h1.clone(),
            other => {
                let mut c = (*self.base).clone();
                c.alpn_protocols = other.iter().map(|p| p.to_vec()).collect();
                Arc::new(c)
            }
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let name_for_msgs = server_name.to_str().into_owned();
        let mut handshake = std::pin::pin!(connector.connect(server_name, io).into_fallible());
        let result = std::future::poll_fn(|cx| {
            HANDSHAKE.with(|h| *h.borrow_mut() = Some(seen.clone()));
            let r = handshake.as_mut().poll(cx);
            HANDSHAKE.with(|h| *h.borrow_mut() = None);
            r
        })
        .await;
        match result {
            Ok(stream) => {
                let (_, conn) = stream.get_ref();
                if let Some(v) = conn.protocol_version() {
                    let _ = seen.version.set(v);
                }
                if let Some(s) = conn.negotiated_cipher_suite() {
                    let _ = seen.cipher.set(s.suite());
                }
                if let Some(chain) = conn.peer_certificates()
                    && let Some(leaf) = chain.first()
                    && let Ok((_, c)) = X509Certificate::from_der(leaf)
                {
                    let _ = seen.peer_subject.set(name_of(c.subject()));
                    let _ = seen.peer_issuer.set(name_of(c.issuer()));
                }
                Ok((stream, seen))
            }
            Err((err, io)) => Err(self.classify(&err, &seen, io.first_bytes(), &name_for_msgs)),
        }
    }

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
            return match &self.client_desc {
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

    pub fn client_desc(&self) -> Option<&str> {
        self.client_desc.as_deref()
    }

    /// Where the trust anchors come from (for messages).
    pub fn roots_source(&self) -> &str {
        &self.roots.source
    }
}

fn fingerprint(policy: &TlsPolicy, material: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", policy.material_key_debug()).hash(&mut h);
    policy.sni.hash(&mut h);
    material.hash(&mut h);
    h.finish()
}

fn roots_desc_clone(r: &RootsDesc) -> RootsDesc {
    RootsDesc {
        source: r.source.clone(),
        subjects: r.subjects.clone(),
        from_file: r.from_file,
    }
}

fn load_roots(
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

fn read_certs(
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

fn load_client_cert(
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

/// Presents the client certificate (MUTUAL) and records the server's CertificateRequest.
#[derive(Debug)]
struct Recorder {
    key: Option<Arc<CertifiedKey>>,
}

thread_local! {
    /// The connection whose handshake is being polled on this thread. rustls calls the
    /// certificate resolver synchronously inside that poll, so the resolver (one per policy,
    /// shared so sessions can resume) can record the CertificateRequest on the right connection.
    static HANDSHAKE: std::cell::RefCell<Option<Arc<ConnTls>>> = const { std::cell::RefCell::new(None) };
}

impl rustls::client::ResolvesClientCert for Recorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let names = root_hint_subjects
            .iter()
            .map(|dn| dn_to_string(dn))
            .collect();
        HANDSHAKE.with(|h| {
            if let Some(seen) = h.borrow().as_ref()
                && let Ok(mut r) = seen.requested.lock()
            {
                *r = Some(names);
            }
        });
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

fn dn_to_string(dn: &[u8]) -> String {
    if let Ok((_, n)) = X509Name::from_der(dn) {
        return name_of(&n);
    }
    // Some encodings omit the outer SEQUENCE: add it back.
    let wrapped = DistinguishedName::in_sequence(dn);
    X509Name::from_der(wrapped.as_ref())
        .map(|(_, n)| name_of(&n))
        .unwrap_or_else(|_| "<unparsable name>".into())
}

/// `CN=x` when there is a common name, else the whole name.
fn name_of(n: &X509Name<'_>) -> String {
    match n.iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        Some(cn) => format!("CN={cn}"),
        None => n.to_string(),
    }
}

/// Names in reasons use single quotes: the reason is printed inside a double-quoted access-log
/// field, which must stay parseable.
fn quote(s: &str) -> String {
    format!("'{}'", s.strip_prefix("CN=").unwrap_or(s))
}

pub(crate) fn cert_info(
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

fn sans_of(c: &X509Certificate<'_>) -> Vec<String> {
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

pub fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
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
    fn diagnose(
        &self,
        err: &rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> TlsFailure {
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
        let CertError(ce) = CertError::from(err);
        match ce {
            Some(CertificateError::UnknownIssuer) => {
                let mut d = format!("{server} sent [{leaf_desc}");
                for c in &sent {
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
                let missing_issuer = match (&leaf, top) {
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
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => {
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
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
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
            Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
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

fn alert_name(a: AlertDescription) -> String {
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
fn plaintext_http(first: &[u8]) -> Option<String> {
    if first.starts_with(b"HTTP/") {
        let line = first
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(first);
        return Some(String::from_utf8_lossy(line).into_owned());
    }
    None
}

/// The most a read-ahead takes from the socket at once: one TLS record of the largest size
/// (16 KiB of plaintext plus the record header, padding and tag) and the start of the next.
const AHEAD: usize = 18 * 1024;

/// The socket under a TLS client session. It remembers the first bytes the peer sent, so a
/// plaintext answer to a ClientHello can be named in the error. And it reads ahead: rustls asks
/// for at most 4 KiB per read, so a 16 KiB record would cost five `recvfrom` calls. Once a read
/// fills what rustls asked for (more is likely waiting), reads take up to [`AHEAD`] bytes into a
/// buffer of this wrapper's and serve rustls from it: one system call per record. Connections
/// that carry only small messages never fill the ask and never allocate the buffer.
pub struct Recording<IO> {
    inner: IO,
    first: [u8; 32],
    len: u8,
    ahead: Vec<u8>,
    pos: usize,
    end: usize,
    /// A direct read filled the caller's buffer: read ahead from now on.
    full: bool,
}

impl<IO> Recording<IO> {
    pub fn new(inner: IO) -> Self {
        Recording {
            inner,
            first: [0; 32],
            len: 0,
            ahead: Vec::new(),
            pos: 0,
            end: 0,
            full: false,
        }
    }

    pub fn first_bytes(&self) -> &[u8] {
        &self.first[..usize::from(self.len)]
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Copies what is read ahead into `out`; false when nothing is.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.pos == self.end {
            return false;
        }
        let n = (self.end - self.pos).min(out.remaining());
        out.put_slice(&self.ahead[self.pos..self.pos + n]);
        self.pos += n;
        true
    }
}

impl<IO: AsyncRead + Unpin> Recording<IO> {
    fn read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.serve(out) {
            return Poll::Ready(Ok(()));
        }
        let asked = out.remaining();
        if (self.ahead.is_empty() && !self.full) || asked >= AHEAD {
            let before = out.filled().len();
            let r = Pin::new(&mut self.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                self.full = asked > 0 && out.filled().len() - before == asked;
            }
            return r;
        }
        if self.ahead.is_empty() {
            self.ahead = vec![0; AHEAD];
        }
        let mut into = ReadBuf::new(&mut self.ahead);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut into);
        if let Poll::Ready(Ok(())) = r {
            self.end = into.filled().len();
            self.pos = 0;
            self.serve(out);
        }
        r
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Recording<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = this.read(cx, buf);
        let have = usize::from(this.len);
        if have < this.first.len() {
            let new = &buf.filled()[before..];
            let n = new.len().min(this.first.len() - have);
            this.first[have..have + n].copy_from_slice(&new[..n]);
            this.len = (have + n) as u8;
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Recording<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that hands out whatever is asked for, up to what it holds (the first read at
    /// most `first` bytes: a short answer), and counts reads.
    struct Counted {
        data: Vec<u8>,
        at: usize,
        first: usize,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let limit = if this.reads == 0 {
                this.first
            } else {
                usize::MAX
            };
            this.reads += 1;
            let n = out.remaining().min(this.data.len() - this.at).min(limit);
            out.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn read_in_4k(r: &mut Recording<Counted>, total: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < total {
            let n = tokio::io::AsyncReadExt::read(r, &mut chunk)
                .await
                .expect("read");
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_reads_go_direct_and_large_ones_read_ahead_without_losing_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = Recording::new(Counted {
            data: data.clone(),
            at: 0,
            first: 100,
            reads: 0,
        });
        // A short answer does not fill the caller's buffer: read directly, nothing allocated.
        let mut small = [0u8; 4096];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut r, &mut small)
                .await
                .expect("read"),
            100
        );
        assert!(r.ahead.is_empty());
        // A read that fills the caller's 4 KiB switches to read-ahead: the rest of the stream
        // arrives in AHEAD-sized socket reads, byte for byte.
        let rest = read_in_4k(&mut r, data.len() - 100).await;
        assert_eq!(&rest[..], &data[100..]);
        let socket_reads = r.get_ref().reads;
        let expected = 2 + (data.len() - 100 - 4096).div_ceil(AHEAD);
        assert_eq!(
            socket_reads, expected,
            "socket reads for 100 kB in 4 KiB asks"
        );
        // End of stream passes through as a zero-length read.
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut r, &mut small)
                .await
                .expect("read"),
            0
        );
    }

    #[test]
    fn alert_names_are_snake_case() {
        assert_eq!(
            alert_name(AlertDescription::CertificateRequired),
            "certificate_required"
        );
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
    }

    #[test]
    fn plaintext_http_is_recognised() {
        assert_eq!(
            plaintext_http(b"HTTP/1.1 400 Bad Request\r\nServer: nginx").as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
        assert_eq!(plaintext_http(b"\x16\x03\x03"), None);
    }
}
