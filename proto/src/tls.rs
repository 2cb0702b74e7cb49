//! Mutual TLS for every connection to an agent: the agent serves only callers
//! whose client certificate the ferry CA signed; callers (the controller and
//! peer agents) present their own certificate and check the agent's.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// DNS name every agent certificate carries. Agents are dialled by IP
/// address (from their Lease), so clients verify this name instead.
pub const AGENT_SERVER_NAME: &str = "ferry-agent";

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

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading TLS file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS file {path} holds no PEM {marker}")]
    NotPem { path: PathBuf, marker: &'static str },
    #[error("no TLS files given: {0}")]
    Missing(&'static str),
}

/// Loaded TLS material.
#[derive(Clone, Debug)]
pub struct MutualTls {
    ca: Certificate,
    identity: Identity,
}

impl MutualTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path, marker: &'static str| {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            if !String::from_utf8_lossy(&pem).contains(marker) {
                return Err(TlsError::NotPem {
                    path: path.to_owned(),
                    marker,
                });
            }
            Ok(pem)
        };
        let ca = read(&files.ca, "CERTIFICATE")?;
        let cert = read(&files.cert, "CERTIFICATE")?;
        let key = read(&files.key, "PRIVATE KEY")?;
        Ok(Self {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        })
    }

    /// Server side: a client certificate signed by the CA is required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
    }

    /// Client side, for calling an agent.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(AGENT_SERVER_NAME)
    }
}
