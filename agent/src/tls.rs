//! Mutual TLS for every gRPC connection: the agent serves only callers whose
//! client certificate the ferry CA signed, and presents its own certificate
//! when it calls a peer.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::Error;

/// DNS name every agent certificate carries. Peers are dialled by IP
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

/// Loaded TLS material.
#[derive(Clone, Debug)]
pub struct MutualTls {
    ca: Certificate,
    identity: Identity,
}

impl MutualTls {
    pub fn load(files: &TlsFiles) -> Result<Self, Error> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| Error::io("reading", path, e));
        let ca = read(&files.ca)?;
        let cert = read(&files.cert)?;
        let key = read(&files.key)?;
        for (path, pem, marker) in [
            (&files.ca, &ca, "CERTIFICATE"),
            (&files.cert, &cert, "CERTIFICATE"),
            (&files.key, &key, "PRIVATE KEY"),
        ] {
            if !String::from_utf8_lossy(pem).contains(marker) {
                return Err(Error::Tls {
                    what: path.display().to_string(),
                    message: format!("no PEM {marker} found"),
                });
            }
        }
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

    /// Client side, for calling a peer agent.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(AGENT_SERVER_NAME)
    }
}
