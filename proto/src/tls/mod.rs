//! Mutual TLS for every connection to an agent. Each component has its own
//! certificate, signed by the ferry CA, whose URI SAN names it (the
//! controller, or the agent of one node; see [`Identity`]). Servers learn the
//! caller's identity from the handshake and authorize each call by it;
//! clients check that the agent they reach is the one of the node they meant.
//! Certificates are short-lived and replaced at run time
//! ([`Credentials::replace`]), without a restart.

mod identity;
mod transport;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use identity::{CertificateFacts, Identity};
pub use transport::{Connector, PeerInfo, TlsIo, serve_tls};

/// DNS name every agent certificate carries; clients verify it, then the
/// identity URI names which agent it is.
pub const AGENT_SERVER_NAME: &str = "ferry-agent";
/// DNS name of the controller's certificate.
pub const CONTROLLER_SERVER_NAME: &str = "ferry-controller";

/// Certificate files, as mounted from a Secret.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA that signs every ferry certificate (controller and agents).
    pub ca: PathBuf,
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading TLS file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} holds no PEM {marker}")]
    NotPem { what: String, marker: &'static str },
    #[error("no TLS files given: {0}")]
    Missing(&'static str),
    #[error("certificate identity: {0}")]
    Identity(String),
    #[error("issuing a certificate for {0}")]
    Issue(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The CA and this component's current certificate and key. Clones share
/// the certificate: replacing it changes what every server and client built
/// from these credentials presents from the next handshake on.
#[derive(Clone, Debug)]
pub struct Credentials {
    provider: Arc<CryptoProvider>,
    current: Arc<RwLock<Current>>,
    /// Checks replacements the way peers will check them.
    own_verifier: Arc<dyn ClientCertVerifier>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    facts: CertificateFacts,
}

/// Hands out whatever certificate is current at each handshake.
#[derive(Debug)]
struct CurrentCertificate(Arc<RwLock<Current>>);

impl CurrentCertificate {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .key
            .clone()
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            what: what.to_owned(),
            marker: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn pem_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::NotPem {
        what: what.to_owned(),
        marker: "PRIVATE KEY",
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Credentials {
    /// From PEM: the CA certificate(s), this component's chain and its key.
    pub fn new(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in pem_certificates(ca_pem, "the CA bundle")? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let current = Arc::new(RwLock::new(certified(&provider, cert_pem, key_pem)?));
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(CurrentCertificate(current.clone())));
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(Arc::new(CurrentCertificate(current.clone())));
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            provider,
            current,
            own_verifier: verifier,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// From mounted files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::new(&read(&files.ca)?, &read(&files.cert)?, &read(&files.key)?)
    }

    /// Presents `cert_pem` from the next handshake on. Refused when it does
    /// not chain to the CA, has expired, or names another identity than the
    /// one it replaces (a component never changes who it is).
    pub fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertificateFacts, TlsError> {
        let next = certified(&self.provider, cert_pem, key_pem)?;
        self.verify_own(&next.key)?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next.facts.identity != current.facts.identity {
            return Err(TlsError::Identity(format!(
                "the new certificate names {}, the current one {}",
                next.facts.identity, current.facts.identity
            )));
        }
        let facts = next.facts.clone();
        *current = next;
        Ok(facts)
    }

    /// Re-reads the certificate and key files (a Secret that cert-manager or
    /// an operator renewed); `Ok(None)` when they hold what is current.
    pub fn reload(&self, files: &TlsFiles) -> Result<Option<CertificateFacts>, TlsError> {
        let cert = read(&files.cert)?;
        let chain = pem_certificates(&cert, "the certificate")?;
        if CertificateFacts::read(&chain[0])?.serial == self.facts().serial {
            return Ok(None);
        }
        self.replace(&cert, &read(&files.key)?).map(Some)
    }

    /// Re-reads the certificate files every `every`, for as long as the
    /// process runs. `observe` hears of each change (`true`, the new
    /// certificate) and each failure (`false`, the certificate kept).
    pub async fn keep_reloaded(
        self,
        files: TlsFiles,
        every: Duration,
        observe: impl Fn(&CertificateFacts, bool) + Send + 'static,
    ) {
        loop {
            tokio::time::sleep(every).await;
            match self.reload(&files) {
                Ok(None) => {}
                Ok(Some(facts)) => {
                    observe(&facts, true);
                    tracing::info!(serial = %facts.serial, cert = %files.cert.display(),
                        "certificate file changed; new connections present it");
                }
                Err(err) => {
                    observe(&self.facts(), false);
                    tracing::warn!(error = %err, cert = %files.cert.display(),
                        "the certificate files cannot be used; keeping the current certificate");
                }
            }
        }
    }

    /// Checks a certificate of ours the way a peer would.
    fn verify_own(&self, key: &CertifiedKey) -> Result<(), TlsError> {
        let (end_entity, intermediates) = key
            .cert
            .split_first()
            .ok_or_else(|| TlsError::Config("empty certificate chain".into()))?;
        self.own_verifier
            .verify_client_cert(
                end_entity,
                intermediates,
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| TlsError::Identity(format!("the new certificate is not valid: {e}")))
    }

    /// What the current certificate says.
    pub fn facts(&self) -> CertificateFacts {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .facts
            .clone()
    }

    pub fn identity(&self) -> Identity {
        self.facts().identity
    }

    /// Server side: a client certificate signed by the CA is required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Client side: checks the server against the CA and presents ours.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// A tonic connector that reaches `expected` only: the handshake fails
    /// unless the server's certificate names that identity.
    pub fn connector(&self, expected: Identity) -> Connector {
        Connector::new(self.client.clone(), expected)
    }
}

/// A CA key as PKCS#8 DER, which the signer (rcgen with ring) needs.
/// helm's `genCA` writes RSA keys in PKCS#1 (`BEGIN RSA PRIVATE KEY`);
/// those are wrapped. Other formats must be converted first
/// (`openssl pkcs8 -topk8 -nocrypt`).
pub fn pkcs8_key(pem: &[u8]) -> Result<Vec<u8>, TlsError> {
    match pem_key(pem, "the CA key")? {
        PrivateKeyDer::Pkcs8(key) => Ok(key.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(key) => {
            // PrivateKeyInfo { version 0, rsaEncryption with NULL
            // parameters, the PKCS#1 key as an OCTET STRING }.
            const VERSION: &[u8] = &[0x02, 0x01, 0x00];
            const RSA_ENCRYPTION: &[u8] = &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
                0x00,
            ];
            let mut body = [VERSION, RSA_ENCRYPTION].concat();
            body.extend(der_item(0x04, key.secret_pkcs1_der()));
            Ok(der_item(0x30, &body))
        }
        _ => Err(TlsError::Config(
            "the CA key is neither PKCS#8 nor PKCS#1 RSA; convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
        )),
    }
}

/// One DER item: tag, definite length, content.
fn der_item(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut item = vec![tag];
    let length = content.len();
    if length < 0x80 {
        item.push(length as u8);
    } else {
        let bytes: Vec<u8> = length
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        item.push(0x80 | bytes.len() as u8);
        item.extend(bytes);
    }
    item.extend_from_slice(content);
    item
}

fn certified(
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Current, TlsError> {
    let chain = pem_certificates(cert_pem, "the certificate")?;
    let key = pem_key(key_pem, "the private key")?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
    let facts = CertificateFacts::read(&chain[0])?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| TlsError::Config(format!("certificate and key do not match: {e}")))?;
    Ok(Current {
        key: Arc::new(key),
        facts,
    })
}
