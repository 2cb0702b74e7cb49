//! Real agent processes on loopback for integration tests: certificates,
//! start/kill/restart, gRPC clients.

#![allow(dead_code)] // each test binary uses a different part

pub mod nodes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use ferry_agent::content_hash::ContentHash;
use ferry_agent::encryption::ArchiveKey;
use ferry_agent::store::{ArchiveMeta, RuntimeInfo, Store};
use ferry_proto::v1::agent_client::AgentClient;
use ferry_testenv::TestPki;
use tonic::transport::Channel;

/// ferry's test PKI (`ferry_testenv::TestPki`) with gRPC clients of agents.
#[derive(Debug, Clone)]
pub struct Pki(pub TestPki);

impl std::ops::Deref for Pki {
    type Target = TestPki;
    fn deref(&self) -> &TestPki {
        &self.0
    }
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        Self(TestPki::new(dir).unwrap())
    }

    /// A client that presents the given certificate (or none).
    pub async fn client(
        &self,
        endpoint: &str,
        identity: Option<(&Path, &Path)>,
    ) -> Result<AgentClient<Channel>, String> {
        install_crypto_provider();
        let identity =
            identity.map(|(cert, key)| (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
        ferry_testenv::attack::connect(endpoint, self.ca_pem.as_bytes(), identity).await
    }

    /// A client that presents the certificate of the agent of `node`.
    pub async fn as_agent(&self, endpoint: &str, node: &str) -> AgentClient<Channel> {
        let (cert, key) = self.agent(node);
        self.client(endpoint, Some((&cert, &key)))
            .await
            .unwrap_or_else(|e| panic!("connecting to {endpoint} as node {node}: {e}"))
    }

    /// A client with the controller's valid certificate.
    pub async fn controller(&self, endpoint: &str) -> AgentClient<Channel> {
        self.client(
            endpoint,
            Some((&self.controller_cert, &self.controller_key)),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
    }
}

/// The ferry-agent binary: cargo names it for tests and benches; examples
/// find it next to their own directory (target/<profile>/examples/..).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_ferry-agent") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("ferry-agent");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p ferry-agent)",
        path.display()
    );
    path
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn free_port() -> u16 {
    ferry_testenv::free_ports(1)[0]
}

/// One agent process.
pub struct AgentProcess {
    pub name: String,
    pub data_dir: PathBuf,
    pub endpoint: String,
    pub http: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `ferry-agent` with the synthetic runtime writing archives of
    /// `synthetic_bytes`, and waits until it answers gRPC.
    pub async fn start(
        pki: &Pki,
        name: &str,
        data_dir: &Path,
        synthetic_bytes: u64,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(pki, name, data_dir, synthetic_bytes, extra, &[]).await
    }

    /// Like `start`, with extra environment variables.
    pub async fn start_with_env(
        pki: &Pki,
        name: &str,
        data_dir: &Path,
        synthetic_bytes: u64,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let grpc_port = free_port();
        let http_port = free_port();
        let mut args = vec![
            format!("--node-name={name}"),
            format!("--grpc-addr=127.0.0.1:{grpc_port}"),
            format!("--http-addr=127.0.0.1:{http_port}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--tls-ca={}", pki.ca.display()),
            format!("--tls-cert={}", pki.agent(name).0.display()),
            format!("--tls-key={}", pki.agent(name).1.display()),
            "--log-format=text".into(),
        ];
        // The synthetic runtime unless the test picks one.
        if !extra.iter().any(|a| a.starts_with("--runtime")) {
            args.push("--runtime=synthetic".into());
            args.push(format!("--synthetic-archive-bytes={synthetic_bytes}"));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut agent = Self {
            name: name.to_owned(),
            data_dir: data_dir.to_owned(),
            endpoint: format!("127.0.0.1:{grpc_port}"),
            http: format!("127.0.0.1:{http_port}"),
            log: pki.dir.join(format!("{name}.log")),
            args,
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
        };
        agent.spawn(pki).await;
        agent
    }

    async fn spawn(&mut self, pki: &Pki) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(agent_binary())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ferry-agent starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "agent {} exited ({status}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if pki
                .client(
                    &self.endpoint,
                    Some((&pki.controller_cert, &pki.controller_key)),
                )
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not come up; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGSTOP: the process keeps its connections open and answers nothing,
    /// as a node that vanished without resetting them does.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`AgentProcess::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL, as a crashing node would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self, pki: &Pki) {
        self.kill();
        self.spawn(pki).await;
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn peer(&self) -> ferry_proto::v1::Peer {
        ferry_proto::v1::Peer {
            node_name: self.name.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts every MiB of the archives `import_archive` writes, so a test can
/// look for plaintext on disk.
pub const PLAINTEXT_MARKER: &[u8] = b"ferry-test-plaintext-marker";

/// Writes an encryption key file (64 hex digits and a newline, as a person
/// would) whose key bytes are all `seed`, and returns its path.
pub fn write_key(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", hex::encode([seed; 32]))).unwrap();
    path
}

/// `--encryption-key-file=<path>`.
pub fn key_flag(path: &Path) -> String {
    format!("--encryption-key-file={}", path.display())
}

/// Puts an archive of `size` pseudo-random bytes into the store under
/// `data_dir` (as if a checkpoint had been taken there) and returns it.
pub fn import_archive(data_dir: &Path, size: u64, seed: u64) -> ArchiveMeta {
    import_archive_with(data_dir, size, seed, None)
}

/// A file of `size` incompressible bytes from `seed`, each MiB starting
/// with [`PLAINTEXT_MARKER`] (so a test can look for plaintext on disk).
pub fn write_pseudo_random(path: &Path, size: u64, seed: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        block[..PLAINTEXT_MARKER.len()].copy_from_slice(PLAINTEXT_MARKER);
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// Like `import_archive`, encrypted with `key` when given (as an agent
/// started with that key would store it).
pub fn import_archive_with(
    data_dir: &Path,
    size: u64,
    seed: u64,
    key: Option<ArchiveKey>,
) -> ArchiveMeta {
    import_archive_hashed(data_dir, size, seed, key, ContentHash::Blake3)
}

/// Like `import_archive_with`, named by `hash` (sha256: as an agent from
/// before BLAKE3 stored it).
pub fn import_archive_hashed(
    data_dir: &Path,
    size: u64,
    seed: u64,
    key: Option<ArchiveKey>,
    hash: ContentHash,
) -> ArchiveMeta {
    let source = data_dir.with_extension(format!("source-{seed}"));
    write_pseudo_random(&source, size, seed);
    let store = Store::open_with(data_dir, u64::MAX, key).unwrap();
    let meta = store
        .import_file(
            &source,
            ArchiveMeta {
                id: String::new(),
                policy: "default/counter".into(),
                namespace: "default".into(),
                pod: "counter-0".into(),
                pod_uid: String::new(),
                container: "app".into(),
                source_node: "node-a".into(),
                taken_at_millis: 1_700_000_000_000 + seed as i64,
                size_bytes: 0,
                container_image: "counter:1".into(),
                runtime: RuntimeInfo::default(),
                ..ArchiveMeta::default()
            },
            hash,
        )
        .unwrap();
    std::fs::remove_file(&source).unwrap();
    meta
}

/// Tells `target`, as the controller does, to accept replicas of
/// `archive`'s container from its source node.
pub async fn announce(
    pki: &Pki,
    archive: &ferry_proto::v1::Archive,
    target: &ferry_proto::v1::Peer,
) {
    pki.controller(&target.endpoint)
        .await
        .expect_replicas(ferry_proto::v1::ExpectReplicasRequest {
            source_node: archive.source_node.clone(),
            policy: archive.policy.clone(),
            container: archive.container.clone(),
            ttl_seconds: 600,
        })
        .await
        .unwrap_or_else(|s| panic!("announcing to {}: {s}", target.node_name));
}

/// A checkpoint on `source` the way the controller asks for one: every
/// peer first hears that the container's replicas will come.
pub async fn checkpoint_announced(
    pki: &Pki,
    source: &AgentProcess,
    request: ferry_proto::v1::CheckpointRequest,
) -> Result<tonic::Response<ferry_proto::v1::CheckpointResponse>, tonic::Status> {
    checkpoint_announced_at(
        pki.clone(),
        source.name.clone(),
        source.endpoint.clone(),
        request,
    )
    .await
}

/// [`checkpoint_announced`] on the agent of `node` at `endpoint`, owning
/// what it needs (for a checkpoint run in the background).
pub async fn checkpoint_announced_at(
    pki: Pki,
    node: String,
    endpoint: String,
    request: ferry_proto::v1::CheckpointRequest,
) -> Result<tonic::Response<ferry_proto::v1::CheckpointResponse>, tonic::Status> {
    let expected = ferry_proto::v1::Archive {
        source_node: node,
        policy: request.policy.clone(),
        container: request.container.clone(),
        ..Default::default()
    };
    for peer in &request.peers {
        announce(&pki, &expected, peer).await;
    }
    pki.controller(&endpoint).await.checkpoint(request).await
}

/// The sending half of `source`'s agent, in this process: its store (with
/// its encryption key, if it has one) and its node's certificate. Tests
/// replicate archives they imported with it; in a cluster only checkpoints
/// are replicated, inside the agent's Checkpoint call.
pub fn sender(
    pki: &Pki,
    source: &AgentProcess,
    key: Option<&Path>,
    zstd: bool,
) -> ferry_agent::replication::Replicator {
    sender_with(
        pki,
        source,
        key,
        ferry_agent::replication::ReplicationConfig {
            zstd,
            ..Default::default()
        },
        std::sync::Arc::new(ferry_agent::metrics::Metrics::default()),
    )
}

/// [`sender`] with its settings and metrics.
pub fn sender_with(
    pki: &Pki,
    source: &AgentProcess,
    key: Option<&Path>,
    config: ferry_agent::replication::ReplicationConfig,
    metrics: std::sync::Arc<ferry_agent::metrics::Metrics>,
) -> ferry_agent::replication::Replicator {
    install_crypto_provider();
    let key = key.map(|path| ArchiveKey::load(path).unwrap());
    let store = Store::open_with(&source.data_dir, u64::MAX, key).unwrap();
    let (cert, key) = pki.agent(&source.name);
    let credentials = ferry_proto::tls::Credentials::load(&ferry_proto::tls::TlsFiles {
        ca: pki.ca.clone(),
        cert,
        key,
    })
    .unwrap();
    ferry_agent::replication::Replicator::new(
        std::sync::Arc::new(store),
        credentials,
        config,
        metrics,
    )
}

/// Sends archive `meta` from `source` to `peer` (told to expect it first);
/// the outcome of that one replica.
pub async fn replicate_to(
    pki: &Pki,
    source: &AgentProcess,
    meta: &ArchiveMeta,
    peer: ferry_proto::v1::Peer,
) -> ferry_proto::v1::ReplicaOutcome {
    replicate_with(pki, &sender(pki, source, None, false), meta, peer).await
}

/// Sends archive `meta` with `sender` to `peer` (told to expect it first).
pub async fn replicate_with(
    pki: &Pki,
    sender: &ferry_agent::replication::Replicator,
    meta: &ArchiveMeta,
    peer: ferry_proto::v1::Peer,
) -> ferry_proto::v1::ReplicaOutcome {
    announce(pki, &ferry_agent::convert::archive_to_proto(meta), &peer).await;
    let outcomes = sender.replicate(&meta.id, &[target(&peer)]).await;
    ferry_agent::convert::outcomes_to_proto(outcomes).remove(0)
}

/// Where a sender sends to reach `peer`.
pub fn target(peer: &ferry_proto::v1::Peer) -> ferry_agent::replication::PeerTarget {
    ferry_agent::replication::PeerTarget {
        node_name: peer.node_name.clone(),
        endpoint: peer.endpoint.clone(),
    }
}

/// The archives an agent holds, newest first, read from its store's
/// metadata files (which appear only once an archive is verified).
pub fn listed_archives(agent: &AgentProcess) -> Vec<ferry_proto::v1::Archive> {
    let mut metas: Vec<ArchiveMeta> = std::fs::read_dir(agent.data_dir.join("archives"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect();
    metas.sort_by(|a, b| {
        b.taken_at_millis
            .cmp(&a.taken_at_millis)
            .then(a.id.cmp(&b.id))
    });
    metas
        .iter()
        .map(ferry_agent::convert::archive_to_proto)
        .collect()
}

/// One archive's metadata as the agent holds it.
pub fn listed_archive(agent: &AgentProcess, id: &str) -> ferry_proto::v1::Archive {
    listed_archives(agent)
        .into_iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{} holds no archive {id}", agent.name))
}

/// Ids of the archives an agent holds.
pub fn listed(agent: &AgentProcess) -> Vec<String> {
    listed_archives(agent).into_iter().map(|a| a.id).collect()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// The checkpoint the tests ask for: one container of `default/counter`,
/// replicated to `peers`, keeping two archives.
pub fn checkpoint_request(peers: Vec<ferry_proto::v1::Peer>) -> ferry_proto::v1::CheckpointRequest {
    ferry_proto::v1::CheckpointRequest {
        policy: "default/counter".into(),
        container: Some(ferry_proto::v1::ContainerRef {
            namespace: "default".into(),
            pod: "counter-7d9c".into(),
            pod_uid: "3f2a1b4c-0000-4000-8000-000000000001".into(),
            container: "app".into(),
        }),
        peers,
        timeout_seconds: 30,
        retention: Some(ferry_proto::v1::Retention {
            keep: 2,
            max_bytes: 0,
            max_age_seconds: 0,
        }),
        state_api: None,
        content_hash: ferry_proto::v1::ContentHash::Blake3.into(),
    }
}
