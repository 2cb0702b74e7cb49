//! ferry's own test PKI, shared by the agent's and the controller's tests:
//! a CA, an agent certificate, a controller certificate (which also serves
//! the webhook on 127.0.0.1), and a certificate of another CA for the tests
//! that must be refused. Files in one directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::{Error, write_file};

/// The certificates, as files and the CA as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_pem: String,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    pub controller_cert: PathBuf,
    pub controller_key: PathBuf,
    /// A client certificate of a different CA.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> Result<(rcgen::Certificate, Issuer<'static, KeyPair>), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert, Issuer::new(params, key)))
}

/// A certificate for server and client use; IP addresses among `sans`
/// become IP SANs.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    sans: Vec<String>,
) -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Writes a fresh PKI to `dir`. Agents serve as `agent_server_name`
    /// (what clients check their certificate against).
    pub fn new(dir: &Path, agent_server_name: &str) -> Result<Self, Error> {
        let (ca_cert, issuer) = ca("ferry-test-ca")?;
        let (agent_cert, agent_key) = leaf(&issuer, "ferry-agent", vec![agent_server_name.into()])?;
        let (controller_cert, controller_key) = leaf(
            &issuer,
            "ferry-controller",
            vec!["ferry-controller".into(), "127.0.0.1".into()],
        )?;
        let (_, rogue_issuer) = ca("rogue-ca")?;
        let (rogue_cert, rogue_key) = leaf(
            &rogue_issuer,
            "ferry-controller",
            vec!["ferry-controller".into()],
        )?;
        let write = |name: &str, text: &str| -> Result<PathBuf, Error> {
            let path = dir.join(name);
            write_file(&path, text)?;
            Ok(path)
        };
        Ok(Self {
            dir: dir.to_owned(),
            ca: write("ca.crt", &ca_cert.pem())?,
            ca_pem: ca_cert.pem(),
            agent_cert: write("agent.crt", &agent_cert)?,
            agent_key: write("agent.key", &agent_key)?,
            controller_cert: write("controller.crt", &controller_cert)?,
            controller_key: write("controller.key", &controller_key)?,
            rogue_cert: write("rogue.crt", &rogue_cert)?,
            rogue_key: write("rogue.key", &rogue_key)?,
        })
    }
}
