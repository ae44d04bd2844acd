//! Client TLS contexts: one rustls `ClientConfig` per TLS policy, built at start-up for every
//! cluster ([`TlsContexts`]; policies with the same material share one), and the handshake that
//! uses it ([`TlsContext::connect`]), which records what the connection saw for the access log.
//!
//! The client-certificate resolver (`Recorder`) lives here because it works hand in hand with
//! the handshake: rustls calls it inside the handshake's poll, and it records the server's
//! CertificateRequest on the connection being polled.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{CertInfo, dn_to_string, name_of, quote};
use super::pem::{PemReader, RootsDesc, load_client_cert, load_roots};
use super::server::server_config;
use super::stream::Recording;
use super::verify::server_verifier;
use crate::access_log::ConnTls;
use crate::config::{Config, ConfigError, Origin, Problems, TlsMode, TlsPolicy};
use crate::error::TlsFailure;

thread_local! {
    /// The connection whose handshake is being polled on this thread. rustls calls the
    /// certificate resolver synchronously inside that poll, so the resolver (one per policy,
    /// shared so sessions can resume) can record the CertificateRequest on the right connection.
    static HANDSHAKE: std::cell::RefCell<Option<Arc<ConnTls>>> = const { std::cell::RefCell::new(None) };
}

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
        let verifier = server_verifier(
            &policy,
            roots,
            &roots_desc,
            provider,
            &origin,
            problems,
            &mut reader,
        )?;

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

    pub fn client_desc(&self) -> Option<&str> {
        self.client_desc.as_deref()
    }

    /// Where the trust anchors come from (for messages).
    pub fn roots_source(&self) -> &str {
        &self.roots.source
    }
}

/// Presents the client certificate (MUTUAL) and records the server's CertificateRequest.
#[derive(Debug)]
struct Recorder {
    key: Option<Arc<CertifiedKey>>,
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

fn origin_of(policy: &TlsPolicy) -> Origin {
    Origin::file(policy.origin.clone())
}

fn fingerprint(policy: &TlsPolicy, material: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", policy.material_key_debug()).hash(&mut h);
    policy.sni.hash(&mut h);
    material.hash(&mut h);
    h.finish()
}
