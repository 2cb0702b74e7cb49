//! The controller's side of ferry's identities. The controller holds the CA
//! key (it is the only component that mounts it), so it
//! - issues its own short-lived certificate and replaces it before it runs
//!   out ([`keep_own_renewed`]);
//! - signs the agents' CertificateSigningRequests after checking that the
//!   requester is the agent pod of the node it will be named after
//!   ([`signer`]).
//!
//! Without the CA key (tests, or an operator that brings certificates) the
//! controller reads its certificate from files and re-reads them.

pub mod signer;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::tls::{Credentials, Identity, TlsError};
use rcgen::{Issuer, KeyPair, PublicKeyData};

use crate::metrics::Metrics;

/// The ferry CA, able to sign.
pub struct CertificateAuthority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// From the CA certificate and its private key (PEM).
    pub fn new(ca_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let invalid = |e: rcgen::Error| TlsError::Config(format!("the CA: {e}"));
        let pkcs8 = ferry_proto::tls::pkcs8_key(key_pem.as_bytes())?;
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(invalid)?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(invalid)?;
        Ok(Self {
            ca_pem: ca_pem.to_owned(),
            issuer,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate for `identity` and `public_key`, valid for `valid_for`.
    pub fn issue(
        &self,
        identity: &Identity,
        public_key: &impl PublicKeyData,
        valid_for: Duration,
    ) -> Result<String, TlsError> {
        identity
            .certificate_params(valid_for)?
            .signed_by(public_key, &self.issuer)
            .map(|cert| cert.pem())
            .map_err(|e| TlsError::Issue(format!("{identity}: {e}")))
    }

    /// A fresh key and a certificate for the controller (PEM chain, key).
    pub fn issue_own(&self, valid_for: Duration) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Issue(format!("a key: {e}")))?;
        let cert = self.issue(&Identity::Controller, &key, valid_for)?;
        Ok((cert, key.serialize_pem()))
    }

    /// The controller's credentials, freshly issued.
    pub fn own_credentials(&self, valid_for: Duration) -> Result<Credentials, TlsError> {
        let (cert, key) = self.issue_own(valid_for)?;
        Credentials::new(self.ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes())
    }
}

/// Re-issues the controller's own certificate before it runs out.
pub async fn keep_own_renewed(
    ca: Arc<CertificateAuthority>,
    credentials: Credentials,
    valid_for: Duration,
    renew_before: Option<Duration>,
    metrics: Arc<Metrics>,
) {
    loop {
        let due = credentials.facts().renewal_due(renew_before);
        tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let renewed = ca
            .issue_own(valid_for)
            .and_then(|(cert, key)| credentials.replace(cert.as_bytes(), key.as_bytes()));
        match renewed {
            Ok(facts) => {
                metrics.certificate_renewed(&facts, "ok");
                tracing::info!(serial = %facts.serial, "the controller's certificate renewed");
            }
            Err(err) => {
                metrics.certificate_renewed(&credentials.facts(), "error");
                tracing::error!(error = %err, "renewing the controller's certificate failed; retrying in 10s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        CertificateAuthority::new(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn the_controller_issues_itself_a_certificate_that_its_ca_trusts() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = ca();
        let credentials = ca.own_credentials(Duration::from_secs(3600)).unwrap();
        assert_eq!(credentials.identity(), Identity::Controller);
        // A renewal keeps the identity and changes the certificate.
        let before = credentials.facts().serial;
        let (cert, key) = ca.issue_own(Duration::from_secs(3600)).unwrap();
        let after = credentials
            .replace(cert.as_bytes(), key.as_bytes())
            .unwrap();
        assert_ne!(after.serial, before);
    }

    #[test]
    fn a_ca_with_a_pkcs1_rsa_key_signs() {
        // What helm's genCA writes.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let out = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .output()
            .expect("openssl");
        let pkcs1 = String::from_utf8(out.stdout).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        let pkcs8 = ferry_proto::tls::pkcs8_key(pkcs1.as_bytes()).unwrap();
        let key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let ca = CertificateAuthority::new(&cert.pem(), &pkcs1).unwrap();
        let credentials = ca.own_credentials(Duration::from_secs(600)).unwrap();
        assert_eq!(credentials.identity(), Identity::Controller);
    }

    #[test]
    fn a_certificate_of_another_identity_or_ca_is_not_swapped_in() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = ca();
        let credentials = ca.own_credentials(Duration::from_secs(3600)).unwrap();
        let key = KeyPair::generate().unwrap();
        let agent = ca
            .issue(&Identity::agent("a"), &key, Duration::from_secs(3600))
            .unwrap();
        let err = credentials
            .replace(agent.as_bytes(), key.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(
            err.to_string().contains("names the agent of node a"),
            "{err}"
        );
        let (foreign, foreign_key) = self::ca().issue_own(Duration::from_secs(3600)).unwrap();
        let err = credentials
            .replace(foreign.as_bytes(), foreign_key.as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
    }
}
