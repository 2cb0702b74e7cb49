//! ferry's own test PKI, shared by the agent's and the controller's tests: a
//! CA (with its key, as the controller holds it), certificates for the
//! controller and for each agent's node (issued on demand, as ferry's signer
//! would), an expired one, and one of another CA for the tests that must be
//! refused. Files in one directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_proto::tls::Identity;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::{Error, write_file};

/// Validity of the certificates tests use.
const VALID_FOR: Duration = Duration::from_secs(24 * 3600);

/// The certificates, as files and the CA as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub ca_pem: String,
    pub controller_cert: PathBuf,
    pub controller_key: PathBuf,
    /// A controller certificate of a different CA.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> Result<(rcgen::Certificate, KeyPair), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

impl TestPki {
    /// Writes a fresh PKI to `dir`.
    pub fn new(dir: &Path) -> Result<Self, Error> {
        let (ca_cert, ca_key) = ca("ferry-test-ca")?;
        let write = |name: &str, text: &str| -> Result<PathBuf, Error> {
            let path = dir.join(name);
            write_file(&path, text)?;
            Ok(path)
        };
        let (rogue_ca, rogue_ca_key) = ca("rogue-ca")?;
        let rogue_issuer = Issuer::from_ca_cert_pem(&rogue_ca.pem(), rogue_ca_key)?;
        let (rogue_cert, rogue_key) = issue(&rogue_issuer, &Identity::Controller, validity_now())?;
        let mut pki = Self {
            dir: dir.to_owned(),
            ca: write("ca.crt", &ca_cert.pem())?,
            ca_key: write("ca.key", &ca_key.serialize_pem())?,
            ca_pem: ca_cert.pem(),
            controller_cert: PathBuf::new(),
            controller_key: PathBuf::new(),
            rogue_cert: write("rogue.crt", &rogue_cert)?,
            rogue_key: write("rogue.key", &rogue_key)?,
        };
        let (cert, key) = pki.files("controller", &Identity::Controller, validity_now())?;
        pki.controller_cert = cert;
        pki.controller_key = key;
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, Error> {
        issuer(&self.ca_pem, &std::fs::read_to_string(&self.ca_key)?)
    }

    /// Signs a CertificateSigningRequest's PEM for `identity`, as ferry's
    /// signer would once it has checked who asked: tests of the agent's
    /// side of the exchange stand in for the controller with this.
    pub fn sign_request(&self, identity: &Identity, request_pem: &str) -> Result<String, Error> {
        let request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)?;
        let params = identity
            .certificate_params(VALID_FOR)
            .map_err(|e| Error::Pki(e.to_string()))?;
        Ok(params
            .signed_by(&request.public_key, &self.issuer()?)?
            .pem())
    }

    /// A certificate and key (PEM) for `identity`, valid from `not_before`
    /// to `not_after`.
    pub fn issue(
        &self,
        identity: &Identity,
        (not_before, not_after): (SystemTime, SystemTime),
    ) -> Result<(String, String), Error> {
        issue(&self.issuer()?, identity, (not_before, not_after))
    }

    /// Certificate and key files `<name>.crt` and `<name>.key`.
    pub fn files(
        &self,
        name: &str,
        identity: &Identity,
        validity: (SystemTime, SystemTime),
    ) -> Result<(PathBuf, PathBuf), Error> {
        let (cert, key) = self.issue(identity, validity)?;
        let cert_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        write_file(&cert_path, &cert)?;
        write_file(&key_path, &key)?;
        Ok((cert_path, key_path))
    }

    /// The certificate of the agent of `node` (issued once, then reused).
    pub fn agent(&self, node: &str) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("agent-{node}.crt"));
        let key = self.dir.join(format!("agent-{node}.key"));
        if cert.exists() && key.exists() {
            return (cert, key);
        }
        self.files(
            &format!("agent-{node}"),
            &Identity::agent(node),
            validity_now(),
        )
        .unwrap_or_else(|e| panic!("issuing the test certificate of node {node}: {e}"))
    }

    /// A certificate of `identity` that expired an hour ago.
    pub fn expired(&self, name: &str, identity: &Identity) -> (PathBuf, PathBuf) {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        self.files(name, identity, (now - 2 * hour, now - hour))
            .unwrap_or_else(|e| panic!("issuing an expired certificate: {e}"))
    }
}

/// From a minute ago (clock slack) to a day from now.
pub fn validity_now() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now - Duration::from_secs(60), now + VALID_FOR)
}

/// A certificate and key (PEM) for `identity`, signed by the CA given as
/// PEM; its key may be PKCS#8, or PKCS#1 RSA as helm's `genCA` writes it.
pub fn issue_with(
    ca_pem: &str,
    ca_key_pem: &str,
    identity: &Identity,
    validity: (SystemTime, SystemTime),
) -> Result<(String, String), Error> {
    issue(&issuer(ca_pem, ca_key_pem)?, identity, validity)
}

fn issuer(ca_pem: &str, ca_key_pem: &str) -> Result<Issuer<'static, KeyPair>, Error> {
    let der = ferry_proto::tls::pkcs8_key(ca_key_pem.as_bytes())
        .map_err(|e| Error::Pki(e.to_string()))?;
    let key = KeyPair::try_from(der.as_slice())?;
    Ok(Issuer::from_ca_cert_pem(ca_pem, key)?)
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    (not_before, not_after): (SystemTime, SystemTime),
) -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    let mut params = identity
        .certificate_params(VALID_FOR)
        .map_err(|e| Error::Pki(e.to_string()))?;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    // The controller's certificate also serves the webhook on loopback.
    if *identity == Identity::Controller {
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
