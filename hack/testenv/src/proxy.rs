//! A TCP proxy in front of the API server that a test can cut and reopen:
//! a component behind it loses the API server (every connection reset,
//! new ones closed as soon as they connect) while everything else keeps it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::ControlPlane;

/// See the module documentation.
#[derive(Debug)]
pub struct ApiProxy {
    port: u16,
    /// While set, new connections are closed at once.
    cut: Arc<AtomicBool>,
    accept: tokio::task::AbortHandle,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl ApiProxy {
    /// Listens on a free loopback port, forwarding to `plane`. The port stays
    /// bound until the proxy is dropped, cut or not: a test running beside
    /// this one must not be handed it as a free port.
    ///
    /// # Panics
    /// When it cannot listen.
    pub async fn start(plane: &ControlPlane) -> Self {
        let upstream = plane.server().trim_start_matches("https://").to_owned();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy's address: {e}"))
            .port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, connections) = (cut.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let connection = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    lock(&connections).push(connection.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            port,
            cut,
            accept,
            connections,
        }
    }

    /// Forwards new connections again after [`ApiProxy::cut`].
    pub async fn open(&mut self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Resets every connection and closes new ones as they come.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in lock(&self.connections).drain(..) {
            task.abort();
        }
    }

    /// Writes a kubeconfig that reaches the API server through this proxy
    /// into `dir`, and returns its path.
    ///
    /// # Panics
    /// When the plane's kubeconfig cannot be read or the copy written.
    pub fn kubeconfig(&self, plane: &ControlPlane, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(plane.kubeconfig_path())
            .unwrap_or_else(|e| panic!("reading the kubeconfig: {e}"));
        let path = dir.join(format!("kubeconfig-{}", self.port));
        let proxied = text.replace(plane.server(), &format!("https://127.0.0.1:{}", self.port));
        std::fs::write(&path, proxied)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
