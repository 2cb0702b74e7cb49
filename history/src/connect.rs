//! The database URL and connections to it. The URL holds a password: it is
//! never logged; [`Database`]'s Display shows user, host, port and database
//! only.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;

/// A PostgreSQL server ferry writes its history to.
#[derive(Clone)]
pub struct Database {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    label: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl Database {
    /// From a URL (`postgresql://user:password@host:port/db?sslmode=require`)
    /// or a key=value string. With `sslmode` `prefer` or `require` the
    /// server's certificate is verified against `ca_file` (PEM), or the
    /// system's roots without one.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, Error> {
        let mut config: Config = url
            .trim()
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Url(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(Error::Url("it names no host".into()));
        }
        if config.get_user().is_none() {
            return Err(Error::Url("it names no user".into()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("ferry-controller");
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(ca_file)?)),
        };
        let label = label(&config);
        Ok(Self { config, tls, label })
    }

    /// A connection; its driver runs in a task of its own.
    pub async fn connect(&self) -> Result<Client, Error> {
        let failed = |e: tokio_postgres::Error| Error::Connect {
            database: self.label.clone(),
            message: ferry_telemetry::error_chain(&e),
        };
        let label = self.label.clone();
        let drive = move |result: Result<(), tokio_postgres::Error>| {
            if let Err(err) = result {
                tracing::debug!(database = %label, error = %ferry_telemetry::error_chain(&err), "history connection ended");
            }
        };
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(async move { drive(connection.await) });
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(async move { drive(connection.await) });
                Ok(client)
            }
        }
    }
}

fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let invalid = |message: String| Error::Ca {
                path: path.to_owned(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(e.to_string()))?;
            if certs.is_empty() {
                return Err(invalid("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates rustls cannot use.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Url(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `user@host:port/database`, without the password.
fn label(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shows_no_password_and_bad_ones_say_what_is_wrong() {
        let database = Database::new(
            "postgresql://ferry:s3cret@db.example:6543/history?sslmode=disable",
            None,
        )
        .unwrap();
        assert_eq!(
            database.to_string(),
            "postgresql://ferry@db.example:6543/history"
        );
        assert!(!format!("{database:?}").contains("s3cret"));

        let err = Database::new("postgresql://ferry@db:notaport/history", None).unwrap_err();
        assert!(err.to_string().contains("history database URL"), "{err}");
        let err = Database::new("postgresql:///history?user=ferry", None).unwrap_err();
        assert!(err.to_string().contains("names no host"), "{err}");
        let err = Database::new(
            "postgresql://ferry@db/history?sslmode=require",
            Some(Path::new("/nonexistent/ca.crt")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    }
}
