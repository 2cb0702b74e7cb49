//! The webhook's HTTPS server: a TLS listener that bounds handshakes, so a
//! slow or stuck client never blocks the API server's admission calls.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use super::{Error, MUTATE_PATH, WebhookState, WebhookTls, router};

/// A TLS handshake that takes longer is abandoned (slow or stuck client).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections are dropped.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Binds `addr` and serves the webhook over TLS until the process ends.
pub async fn serve(addr: SocketAddr, tls: WebhookTls, state: WebhookState) -> Result<(), Error> {
    let listener = WebhookListener::bind(addr, &tls).await?;
    serve_listener(listener, state, std::future::pending()).await
}

/// Serves on an already bound listener until `shutdown` completes, then
/// finishes in-flight requests and closes every connection.
pub async fn serve_listener(
    listener: WebhookListener,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, path = MUTATE_PATH, "admission webhook listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// TLS configuration from PEM files: TLS 1.2 and 1.3, HTTP/1.1, the
/// process's default rustls provider (ring when none is installed).
pub fn server_config(tls: &WebhookTls) -> Result<rustls::ServerConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert_pem = read(&tls.cert, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what: "certificate",
            path: tls.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate(tls.cert.clone()));
    }
    let key_pem = read(&tls.key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => Error::NoKey(tls.key.clone()),
        source => Error::Pem {
            what: "key",
            path: tls.key.clone(),
            source,
        },
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let tls_error = |source| Error::Tls {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    // axum serves HTTP/1.1 only; the API server's client accepts that.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A finished handshake is boxed: a TLS stream is large.
type Handshake =
    Pin<Box<dyn Future<Output = Option<Box<(TlsStream<TcpStream>, SocketAddr)>>> + Send>>;

/// A TCP listener that hands out TLS streams to `axum::serve`. Handshakes
/// run concurrently while `accept` waits, so one slow client cannot hold up
/// the others.
pub struct WebhookListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: FuturesUnordered<Handshake>,
}

impl std::fmt::Debug for WebhookListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookListener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl WebhookListener {
    /// Loads the certificate and key and binds `addr` (port 0 picks one;
    /// see [`WebhookListener::local_addr`]).
    pub async fn bind(addr: SocketAddr, tls: &WebhookTls) -> Result<Self, Error> {
        let config = server_config(tls)?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: FuturesUnordered::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
            tracing::warn!(%peer, "too many TLS handshakes in flight; dropping connection");
            return;
        }
        let _ = stream.set_nodelay(true);
        let acceptor = self.acceptor.clone();
        self.handshakes.push(Box::pin(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(Box::new((tls, peer))),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "webhook TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    None
                }
            }
        }));
    }
}

enum Accepted {
    Tcp(io::Result<(TcpStream, SocketAddr)>),
    Tls(Option<Box<(TlsStream<TcpStream>, SocketAddr)>>),
}

impl axum::serve::Listener for WebhookListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Both futures are cancel-safe: axum may drop this one on shutdown.
            let next = tokio::select! {
                accepted = self.tcp.accept() => Accepted::Tcp(accepted),
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => Accepted::Tls(done),
            };
            match next {
                Accepted::Tcp(Ok((stream, peer))) => self.start_handshake(stream, peer),
                Accepted::Tcp(Err(err)) => {
                    // Out of file descriptors and the like: back off, retry.
                    tracing::warn!(error = %err, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Accepted::Tls(Some(done)) => return *done,
                Accepted::Tls(None) => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
