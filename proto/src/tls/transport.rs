//! TLS over TCP for tonic, with rustls configurations that change their
//! certificate at run time (tonic's own TLS settings are fixed at start-up):
//! an accept loop for servers that attaches the caller's identity to every
//! request, and a connector for clients that only accepts the server it
//! meant to reach.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use tonic::transport::server::Connected;

use super::{AGENT_SERVER_NAME, CONTROLLER_SERVER_NAME, Identity};

/// A bound on the handshake, so a peer that connects and stalls holds
/// nothing for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who called, attached to every request of the connection (tonic puts it
/// in the request's extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: Identity,
}

/// A server-side connection whose handshake finished and whose client
/// certificate named a ferry identity.
#[derive(Debug)]
pub struct TlsIo {
    stream: server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections on `listener` and hands tonic those whose handshake
/// succeeded. Each handshake runs on its own task, so a slow or hostile
/// client delays nobody. `refused` hears about every connection turned away
/// (no certificate, another CA, expired, no ferry identity), with the
/// reason.
pub fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    refused: impl Fn(SocketAddr, &str) + Send + Sync + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsIo, io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let refused = Arc::new(refused);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if sender.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                match handshake(&acceptor, tcp, remote).await {
                    Ok(io) => {
                        let _ = sender.send(Ok(io)).await;
                    }
                    Err(reason) => refused(remote, &reason),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<TlsIo, String> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no client certificate")?;
    let identity = Identity::of_certificate(cert).map_err(|e| e.to_string())?;
    Ok(TlsIo {
        stream,
        peer: PeerInfo { remote, identity },
    })
}

/// Dials `http://host:port` URIs over TCP and TLS, and fails unless the
/// server's certificate names the expected identity.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    expected: Identity,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub(super) fn new(config: Arc<ClientConfig>, expected: Identity) -> Self {
        Self {
            tls: TlsConnector::from(config),
            expected,
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<client::TlsStream<TcpStream>>, io::Error>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let expected = self.expected.clone();
        Box::pin(async move {
            let endpoint = uri.authority().map(ToString::to_string).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} names no host"))
            })?;
            let tcp = TcpStream::connect(&endpoint).await?;
            tcp.set_nodelay(true)?;
            let name = match expected {
                Identity::Controller => CONTROLLER_SERVER_NAME,
                Identity::Agent { .. } => AGENT_SERVER_NAME,
            };
            let server_name = ServerName::try_from(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tls.connect(server_name, tcp).await?;
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Identity::of_certificate(cert).map_err(|e| e.to_string()))
                .unwrap_or_else(|| Err("no certificate".to_owned()));
            match presented {
                Ok(identity) if identity == expected => Ok(TokioIo::new(stream)),
                Ok(identity) => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{endpoint} is {identity}, not {expected}"),
                )),
                Err(e) => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{endpoint}: {e}"),
                )),
            }
        })
    }
}
