//! A real Kubernetes control plane for tests: etcd and kube-apiserver with
//! freshly generated certificates and RBAC on, and on request
//! kube-controller-manager, kube-scheduler and kwok with simulated nodes.
//!
//! Binaries come from a `KUBEBUILDER_ASSETS`-style directory provided by
//! `hack/kube-assets.sh`. Every process listens on a free loopback port and
//! dies with the test process (parent-death signal), so a panicking or
//! aborted test leaves nothing running; the data directory is removed on drop
//! or, for the per-binary shared control plane, by the next run.

pub mod attack;
mod certs;
pub mod netns;
pub mod pki;
pub mod postgres;
mod process;
mod proxy;

pub use pki::{TestPki, validity_now};
pub use proxy::ApiProxy;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use crate::process::Component;

/// Annotation that makes kwok manage a node (and nothing else).
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Setting this annotation to `custom` makes kwok stop touching a node's
/// status, which lets a test make the node NotReady.
pub const KWOK_STATUS_ANNOTATION: &str = "kwok.x-k8s.io/status";

const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");

/// What can go wrong while providing a control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hack/kube-assets.sh failed: {0}")]
    Assets(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("test PKI: {0}")]
    Pki(String),
    #[error("test PostgreSQL: {0}")]
    Postgres(String),
    #[error("test PKI: {0}")]
    PkiIo(#[from] std::io::Error),
    #[error("starting {component}: {source}")]
    Spawn {
        component: &'static str,
        source: std::io::Error,
    },
    #[error("{component} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {waited:?}; logs in {dir}")]
    Timeout {
        what: String,
        waited: Duration,
        dir: PathBuf,
    },
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("building a client: {0}")]
    Client(#[from] kube::Error),
    #[error("the shared control plane failed to start earlier: {0}")]
    SharedFailed(String),
}

/// Which components to run besides etcd and kube-apiserver.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub controller_manager: bool,
    pub scheduler: bool,
    /// Number of kwok nodes (`kwok-node-0` …); 0 runs no kwok.
    pub kwok_nodes: usize,
}

impl Options {
    /// Everything: a control plane that runs workloads on `nodes` simulated nodes.
    pub fn full(nodes: usize) -> Self {
        Self {
            controller_manager: true,
            scheduler: true,
            kwok_nodes: nodes,
        }
    }
}

/// A running control plane. Dropping it stops every process and removes its
/// directory (set `FERRY_TESTENV_KEEP=1` to keep the directory and logs).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    assets: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    components: Mutex<Vec<Component>>,
    startup: Duration,
}

static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

impl ControlPlane {
    /// etcd + kube-apiserver shared by all tests of this test binary.
    /// Create a namespace per test to keep tests apart.
    pub async fn shared() -> Result<&'static ControlPlane, Error> {
        let result = SHARED
            .get_or_init(|| async {
                Self::start(Options::default())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        result.as_ref().map_err(|e| Error::SharedFailed(e.clone()))
    }

    /// Starts a control plane of its own.
    pub async fn start(options: Options) -> Result<ControlPlane, Error> {
        let started = Instant::now();
        install_crypto_provider();
        let assets = assets_dir()?;
        let dir = process::fresh_dir()?;
        let certs = certs::write(&dir)?;

        let etcd_client = process::free_port()?;
        let etcd_peer = process::free_port()?;
        let apiserver_port = process::free_port()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_file(&kubeconfig, &certs.kubeconfig(&server))?;

        let mut plane = ControlPlane {
            dir: dir.clone(),
            assets: assets.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            components: Mutex::new(Vec::new()),
            startup: Duration::ZERO,
        };

        let etcd_data = dir.join("etcd");
        plane.spawn(
            "etcd",
            &assets.join("etcd"),
            &[
                "--name=testenv".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=testenv=http://127.0.0.1:{etcd_peer}"),
                "--log-level=warn".into(),
            ],
        )?;

        let mut disabled_admission = Vec::new();
        if !options.controller_manager {
            // Without kube-controller-manager nobody creates the `default`
            // ServiceAccount that this plugin insists on for every pod.
            disabled_admission.push("ServiceAccount");
        }
        let mut apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", certs.serving_cert.display()),
            format!("--tls-private-key-file={}", certs.serving_key.display()),
            format!("--client-ca-file={}", certs.ca_cert.display()),
            format!(
                "--service-account-key-file={}",
                certs.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                certs.service_account_key.display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if !disabled_admission.is_empty() {
            apiserver_args.push(format!(
                "--disable-admission-plugins={}",
                disabled_admission.join(",")
            ));
        }
        plane.spawn(
            "kube-apiserver",
            &assets.join("kube-apiserver"),
            &apiserver_args,
        )?;

        let client = plane.client().await?;
        plane
            .wait_for("kube-apiserver /readyz", Duration::from_secs(60), || {
                let client = client.clone();
                async move { readyz(&client).await }
            })
            .await?;

        if options.controller_manager {
            let port = process::free_port()?;
            let kubeconfig = kubeconfig.display().to_string();
            plane.spawn(
                "kube-controller-manager",
                &assets.join("kube-controller-manager"),
                &[
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    format!("--cert-dir={}", dir.join("kcm-certs").display()),
                    format!(
                        "--service-account-private-key-file={}",
                        certs.service_account_key.display()
                    ),
                    format!("--root-ca-file={}", certs.ca_cert.display()),
                    "--leader-elect=false".into(),
                    "--controllers=*".into(),
                    "--v=1".into(),
                ],
            )?;
        }
        if options.scheduler {
            let port = process::free_port()?;
            let kubeconfig = kubeconfig.display().to_string();
            plane.spawn(
                "kube-scheduler",
                &assets.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    format!("--cert-dir={}", dir.join("scheduler-certs").display()),
                    "--leader-elect=false".into(),
                    "--v=1".into(),
                ],
            )?;
        }
        if options.kwok_nodes > 0 {
            let stages = dir.join("kwok-stages.yaml");
            write_file(&stages, KWOK_STAGES)?;
            plane.spawn(
                "kwok",
                &assets.join("kwok"),
                &[
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--config={}", stages.display()),
                    "--manage-all-nodes=false".into(),
                    format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                    format!("--disregard-status-with-annotation-selector={KWOK_STATUS_ANNOTATION}=custom"),
                    // Pod IPs on loopback (127.0.0.0/8 is all local): a test
                    // can serve a pod's endpoints at its IP (StateApi).
                    "--cidr=127.244.0.1/16".into(),
                    "--node-ip=10.243.0.1".into(),
                    "--node-lease-duration-seconds=40".into(),
                ],
            )?;
            create_kwok_nodes(&client, options.kwok_nodes).await?;
            let want = options.kwok_nodes;
            plane
                .wait_for(
                    &format!("{want} kwok nodes Ready"),
                    Duration::from_secs(60),
                    || {
                        let client = client.clone();
                        async move { ready_nodes(&client).await.map(|n| n >= want) }
                    },
                )
                .await?;
        }
        if options.controller_manager {
            // The ServiceAccount controller is the last piece pods depend on.
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            plane
                .wait_for(
                    "the default ServiceAccount",
                    Duration::from_secs(60),
                    || {
                        let accounts = accounts.clone();
                        async move { Ok(accounts.get_opt("default").await?.is_some()) }
                    },
                )
                .await?;
        }
        plane.startup = started.elapsed();
        tracing::info!(dir = %plane.dir.display(), server = %plane.server, startup = ?plane.startup, "control plane ready");
        Ok(plane)
    }

    /// A new client for the admin user (system:masters). Each call builds a
    /// new one, so tests running on different runtimes never share one.
    pub async fn client(&self) -> Result<Client, Error> {
        install_crypto_provider();
        let config = self.kube_config().await?;
        Ok(Client::try_from(config)?)
    }

    /// The admin client configuration, for code that builds its own client.
    pub async fn kube_config(&self) -> Result<Config, Error> {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })
    }

    /// Admin kubeconfig file (client certificate of group system:masters).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Directory holding the binaries (kubectl among them).
    pub fn assets_dir(&self) -> &Path {
        &self.assets
    }

    /// Directory with certificates, data and one log file per component.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time from `start` being called to every requested component being ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `kubectl` from the assets directory with `--kubeconfig` set.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.assets.join("kubectl"));
        command.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        command
    }

    fn spawn(&mut self, name: &'static str, binary: &Path, args: &[String]) -> Result<(), Error> {
        let component = Component::spawn(name, binary, args, &self.dir.join("logs"))?;
        self.components
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(component);
        Ok(())
    }

    /// Polls `check` until it says yes; fails early when a component died.
    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, kube::Error>>,
    {
        let started = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok(true) = check().await {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    waited: limit,
                    dir: self.dir.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ensure_running(&self) -> Result<(), Error> {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components
            .iter_mut()
            .try_for_each(Component::ensure_running)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let components = self
            .components
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Stop in reverse start order: clients before the apiserver before etcd.
        while let Some(mut component) = components.pop() {
            component.stop();
        }
        if std::env::var_os("FERRY_TESTENV_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Root of the ferry repository: the nearest directory with a Cargo.lock
/// above the running test's package. Found at run time, because checkouts in
/// different places share one build cache (CARGO_TARGET_DIR) and cargo
/// reuses a build made in another checkout: a path compiled in would point
/// there.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or_else(|| start.join("../.."), Path::to_path_buf)
}

/// The `KUBEBUILDER_ASSETS` directory, provided (and cached) by
/// `hack/kube-assets.sh`, which honours `KUBEBUILDER_ASSETS` itself.
pub fn assets_dir() -> Result<PathBuf, Error> {
    static ASSETS: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let result = ASSETS.get_or_init(|| {
        let script = repo_root().join("hack/kube-assets.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|err| format!("running {}: {err}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    });
    result.clone().map_err(Error::Assets)
}

/// kube-rs needs one process-wide rustls provider; tests may link several.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

async fn readyz(client: &Client) -> Result<bool, kube::Error> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(client.request_text(request).await? == "ok")
}

async fn ready_nodes(client: &Client) -> Result<usize, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await?;
    Ok(list.items.iter().filter(|node| node_is_ready(node)).count())
}

/// True when the node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

async fn create_kwok_nodes(client: &Client, count: usize) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    for index in 0..count {
        let name = format!("kwok-node-{index}");
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    // Three zones, so placement tests can spread standbys.
                    "topology.kubernetes.io/zone": format!("zone-{}", index % 3),
                },
            },
        }))
        .map_err(|err| Error::Io {
            action: "building node",
            path: PathBuf::from(&name),
            source: err.into(),
        })?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// `count` distinct free TCP ports on 127.0.0.1 for processes a test starts.
///
/// They come from below the kernel's ephemeral range (32768 and up here):
/// a port picked there with `bind(:0)` and released can be taken by any
/// outgoing connection before the process that should listen on it starts,
/// which happened with 50 agents and a busy API server. All listeners are
/// held until every port is chosen, so the ports also differ from each other.
pub fn free_ports(count: usize) -> Vec<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut held = Vec::with_capacity(count);
    let mut candidate = seed % SPAN;
    for _ in 0..SPAN {
        if held.len() == count {
            break;
        }
        let port = u16::try_from(FIRST + candidate).unwrap_or(u16::MAX);
        candidate = (candidate + 7_919) % SPAN;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect()
}
