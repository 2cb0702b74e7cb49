//! A TCP proxy in front of the API server that a test can cut and reopen:
//! a component behind it loses the API server (every connection reset,
//! new ones refused) while everything else keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::ControlPlane;

/// See the module documentation.
#[derive(Debug)]
pub struct ApiProxy {
    port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl ApiProxy {
    /// Listens on a free loopback port, forwarding to `plane`.
    ///
    /// # Panics
    /// When it cannot listen.
    pub async fn start(plane: &ControlPlane) -> Self {
        let upstream = plane.server().trim_start_matches("https://").to_owned();
        let port = crate::free_ports(1)[0];
        let mut proxy = Self {
            port,
            upstream,
            tasks: Arc::default(),
        };
        proxy.open().await;
        proxy
    }

    /// Accepts connections again after [`ApiProxy::cut`].
    ///
    /// # Panics
    /// When it cannot listen on its port again.
    pub async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen on {}: {e}", self.port));
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lock(&tasks).push(connection.abort_handle());
            }
        });
        lock(&self.tasks).push(accept.abort_handle());
    }

    /// Resets every connection and refuses new ones.
    pub fn cut(&self) {
        for task in lock(&self.tasks).drain(..) {
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
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
