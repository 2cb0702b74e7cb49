//! `ferry-agent`: see the crate documentation of `ferry_agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferry_agent::containerd::{ContainerdConfig, ContainerdImporter};
use ferry_agent::encryption::ArchiveKey;
use ferry_agent::fencing::ProtectedContainers;
use ferry_agent::heartbeat::{Heartbeat, HeartbeatConfig};
use ferry_agent::identity::CsrConfig;
use ferry_agent::kubelet::{KubeletClient, KubeletConfig};
use ferry_agent::lease::LeaseConfig;
use ferry_agent::metrics::Metrics;
use ferry_agent::prepared::PreparedRestores;
use ferry_agent::replication::{ReplicationConfig, Replicator};
use ferry_agent::runc::{RuncConfig, RuncRuntime};
use ferry_agent::runtime::{Runtime, SyntheticRuntime};
use ferry_agent::service::{AgentService, NodeFacts, ServiceParts};
use ferry_agent::store::{Store, StoreLimits};
use ferry_agent::sweeper::SweepConfig;
use ferry_agent::tls::{Credentials, TlsFiles};
use ferry_agent::{Error, sys};
use ferry_proto::v1::agent_server::AgentServer;
use ferry_telemetry::{Endpoints, LogFormat, Readiness};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RestoreBackend {
    /// Checkpoint images stay OCI layouts in the agent's data dir.
    None,
    /// Checkpoint images are imported into the node's containerd.
    Containerd,
    /// ferry's runtime handler (ferry-runc, installed on the node) restores
    /// from a grant when the replacement container starts: no image, no
    /// restore through CRI (containerd 2.4 removed it).
    RuntimeHandler,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IdentitySource {
    /// `--tls-cert` and `--tls-key`, re-read every
    /// `--certificate-reload-interval` (hosts that are not Kubernetes
    /// nodes, tests).
    Files,
    /// A CertificateSigningRequest that the ferry controller signs, bound
    /// to this pod and node by its ServiceAccount token (clusters).
    KubernetesCsr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// The kubelet checkpoint API (production).
    Kubelet,
    /// CRIU through runc on a host that is not a Kubernetes node: the agent
    /// runs the containers itself (local demo, tier-4 tests, benchmarks).
    Runc,
    /// Test double for the kubelet: writes archives of pseudo-random bytes.
    Synthetic,
    /// No runtime: this agent only stores and serves replicas.
    None,
}

/// ferry node agent: checkpoints, archive store, replication and restores.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Name of the node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Address of the gRPC API (mutual TLS).
    #[arg(long, env = "FERRY_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    grpc_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FERRY_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Directory of the archive store.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "/var/lib/ferry")]
    data_dir: PathBuf,
    /// CA that signs every ferry certificate.
    #[arg(long, env = "FERRY_TLS_CA", default_value = "/etc/ferry/ca/ca.crt")]
    tls_ca: PathBuf,
    /// Where this agent's certificate comes from.
    #[arg(long, value_enum, env = "FERRY_IDENTITY", default_value = "files")]
    identity: IdentitySource,
    /// With `--identity files`: this agent's certificate, whose URI SAN is
    /// `spiffe://ferry.dev/agent/<node>` and DNS SAN `ferry-agent`.
    #[arg(long, env = "FERRY_TLS_CERT", default_value = "/etc/ferry/tls/tls.crt")]
    tls_cert: PathBuf,
    /// With `--identity files`: its private key.
    #[arg(long, env = "FERRY_TLS_KEY", default_value = "/etc/ferry/tls/tls.key")]
    tls_key: PathBuf,
    /// With `--identity files`: how often the files are re-read.
    #[arg(long, env = "FERRY_CERTIFICATE_RELOAD_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    certificate_reload_interval: Duration,
    /// With `--identity kubernetes-csr`: the signer name the controller
    /// serves.
    #[arg(long, env = "FERRY_CSR_SIGNER_NAME", default_value = "ferry.dev/agent")]
    csr_signer_name: String,
    /// With `--identity kubernetes-csr`: the certificate's validity (at
    /// least 10m, the API's minimum; the controller may shorten it).
    #[arg(long, env = "FERRY_CERTIFICATE_VALIDITY", default_value = "4h", value_parser = parse_duration)]
    certificate_validity: Duration,
    /// Renew the certificate when this little of its life is left; default:
    /// a third of its life.
    #[arg(long, env = "FERRY_CERTIFICATE_RENEW_BEFORE", value_parser = parse_duration)]
    certificate_renew_before: Option<Duration>,
    #[arg(long, value_enum, default_value = "kubelet")]
    runtime: RuntimeKind,
    /// Do not check checkpoint requests against the API server (that the pod
    /// runs here and a policy of its namespace selects it). Only for agents
    /// without a Kubernetes API (`--lease-namespace` unset implies it).
    #[arg(long)]
    skip_checkpoint_scope: bool,
    /// Address of this node's kubelet.
    #[arg(long, env = "KUBELET_ADDRESS", default_value = "127.0.0.1")]
    kubelet_address: String,
    /// Port of the kubelet's HTTPS API; 0: read it from this node's Node
    /// object (status.daemonEndpoints.kubeletEndpoint.Port).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// CA of the kubelet's serving certificate.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kubelet_ca: PathBuf,
    /// ServiceAccount token presented to the kubelet (re-read on every call).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    kubelet_token: PathBuf,
    /// Name the kubelet's certificate is issued for, if not its address.
    #[arg(long)]
    kubelet_server_name: Option<String>,
    #[arg(long, default_value = "/var/lib/kubelet/checkpoints")]
    kubelet_checkpoint_dir: PathBuf,
    /// Where restores are prepared: `containerd` imports each checkpoint
    /// image into the node's containerd (2.2/2.3, restore through CRI);
    /// `none` leaves it as an OCI layout in the data dir (CRI-O reads one).
    #[arg(long, value_enum, default_value = "none")]
    restore_backend: RestoreBackend,
    /// With `--restore-backend runtime-handler`: where restore grants are
    /// prepared, the same path on the host (ferry-runc reads it there).
    #[arg(long, default_value = "/var/lib/ferry/grants")]
    restore_grants_dir: PathBuf,
    /// With `--restore-backend runtime-handler`: the host directory
    /// ferry-runc and its configuration are installed into; the runtime
    /// handler's `BinaryName` is `<dir>/ferry-runc`.
    #[arg(long, default_value = "/opt/ferry/bin")]
    runtime_handler_dir: PathBuf,
    /// With `--restore-backend runtime-handler`: the ferry-runc binary to
    /// install (in the agent's image).
    #[arg(long, default_value = "/ferry-runc")]
    ferry_runc_binary: PathBuf,
    /// With `--restore-backend runtime-handler`: the node's runc (a host
    /// path), which ferry-runc hands every other command to.
    #[arg(long, default_value = "/usr/sbin/runc")]
    host_runc: PathBuf,
    /// With `--restore-backend containerd`: containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_address: PathBuf,
    /// With `--restore-backend containerd`: the namespace of the kubelet's
    /// images.
    #[arg(long, default_value = "k8s.io")]
    containerd_namespace: String,
    /// With `--restore-backend containerd`: the `ctr` binary.
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    /// With `--runtime runc`: the runc binary.
    #[arg(long, default_value = "runc")]
    runc_binary: PathBuf,
    /// With `--runtime runc`: directory of the `criu` binary runc uses
    /// (hack/criu.sh builds one); default: criu on PATH.
    #[arg(long, env = "FERRY_CRIU_DIR")]
    criu_dir: Option<PathBuf>,
    /// With `--runtime runc`: directory of OCI bundles containers run from.
    #[arg(long, default_value = "/var/lib/ferry/bundles")]
    runc_bundles: PathBuf,
    /// With `--runtime runc`: network namespace (e.g. /run/netns/node-a)
    /// this "node"'s containers join.
    #[arg(long)]
    runc_netns: Option<PathBuf>,
    /// With `--runtime synthetic`: bytes of page data per archive.
    #[arg(long, default_value_t = 16 << 20)]
    synthetic_archive_bytes: u64,
    /// File with the AES-256 key archives are encrypted with at rest (32 raw
    /// bytes, 64 hex digits or base64 of 32 bytes), e.g. a mounted Secret.
    /// Without it archives are stored in plaintext; archives stored in
    /// plaintext earlier stay readable either way.
    #[arg(long, env = "FERRY_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    /// Largest archive the store accepts.
    #[arg(long, default_value_t = 64 << 30)]
    max_archive_bytes: u64,
    /// Replicas this agent receives at once; more are refused
    /// (RESOURCE_EXHAUSTED) and the sender retries.
    #[arg(long, default_value_t = 8)]
    max_incoming_transfers: usize,
    /// Bytes of archives this node holds at most, replicas in flight
    /// included (0: no quota, the disk is the bound). An incoming replica
    /// that would exceed it is refused before a byte is written.
    #[arg(long, default_value_t = 0)]
    store_quota_bytes: u64,
    /// Free disk space incoming replicas always leave, so checkpoints of
    /// this node's own pods still fit.
    #[arg(long, default_value_t = 1 << 30)]
    store_reserve_free_bytes: u64,
    /// How often the store applies each container's retention by itself
    /// (a `maxAge` runs out without a new checkpoint) and removes abandoned
    /// partial replicas.
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    store_sweep_interval: Duration,
    /// A partial replica no transfer touched for this long is removed; an
    /// interrupted transfer resumes only within it.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    partial_transfer_ttl: Duration,
    /// What a restore left on this node (its checkpoint image in
    /// containerd, the image's files) is removed when the controller says
    /// the restore is done, or at the latest this long after it was made.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    prepared_restore_ttl: Duration,
    /// Outgoing replica transfers at once.
    #[arg(long, default_value_t = 2)]
    max_concurrent_transfers: usize,
    /// Compress replica streams with zstd.
    #[arg(long)]
    zstd: bool,
    /// A replica transfer, in either direction, or any other call between
    /// agents that makes no progress for this long is given up (the partial
    /// replica stays and the sender's retry resumes). Connections between
    /// agents are pinged every quarter of it and closed when a ping goes
    /// unanswered for half of it.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    peer_stall_timeout: Duration,
    /// Namespace of this agent's Lease (advertising its endpoint and node
    /// facts); without it no Lease is kept (hosts that are not Kubernetes
    /// nodes).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// `host:port` peers and the controller dial; default: POD_IP and the
    /// gRPC port.
    #[arg(long, env = "FERRY_ADVERTISE_ENDPOINT")]
    advertise_endpoint: Option<String>,
    /// This agent's pod IP (from the downward API).
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<String>,
    /// Who holds the Lease: this agent's pod name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// How often the agent probes its peers (their agents' gRPC health and
    /// their kubelets' TLS port) and renews its Lease with what it saw.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    heartbeat_interval: Duration,
    /// Stop every container this agent checkpointed once neither the API
    /// server nor any peer agent has answered for this long (and it has a
    /// live peer a failover could go to); 0 disables fencing.
    #[arg(long, value_parser = parse_duration, default_value = "2500ms")]
    fence_timeout: Duration,
    /// How long the Lease stays valid without renewal. It is renewed every
    /// heartbeat; its expiry alone never triggers a failover. A new
    /// controller leader watches the agents for one Lease period before it
    /// decides anything, so a short Lease (5 missed heartbeats) keeps a
    /// leader change from delaying failovers.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    lease_duration: Duration,
    /// The host's /proc (the agent runs in the host PID namespace when it
    /// fences), where fencing finds the processes of protected containers.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    ferry_api::parse_duration("duration", value).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    ferry_agent::sys::tune_allocator();
    let args = Args::parse();
    ferry_telemetry::init_logging(args.log_format);
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::warn!("a rustls crypto provider was already installed");
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    ferry_agent::names::dns_subdomain("--node-name", &args.node_name)?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    // Health and metrics are served from the start: waiting for the first
    // certificate (the controller signs it) is starting, not hanging, and
    // the liveness probe must not restart the agent for it.
    let endpoints = Endpoints {
        registry: metrics.registry.clone(),
        readiness: readiness.clone(),
        not_ready_message: "starting: waiting for this agent's certificate or its store",
    };
    let http_addr = args.http_addr;
    let mut http = tokio::spawn(ferry_telemetry::serve(http_addr, endpoints));
    let tls = tokio::select! {
        tls = credentials(&args, &metrics) => tls?,
        served = &mut http => return Err(http_failed(served)),
    };
    let key = args
        .encryption_key_file
        .as_deref()
        .map(ArchiveKey::load)
        .transpose()?;
    match (&key, &args.encryption_key_file) {
        (Some(key), Some(path)) => tracing::info!(
            key_file = %path.display(), key_id = %key.id_hex(),
            "encryption at rest on: new archives and replicas are stored with AES-256-GCM"
        ),
        _ => tracing::info!(
            "encryption at rest off: archives are stored in plaintext (--encryption-key-file turns it on)"
        ),
    }
    let store_dir = args.data_dir.clone();
    let max_archive_bytes = args.max_archive_bytes;
    let limits = StoreLimits {
        max_incoming: args.max_incoming_transfers.max(1),
        quota_bytes: (args.store_quota_bytes > 0).then_some(args.store_quota_bytes),
        reserve_free_bytes: args.store_reserve_free_bytes,
    };
    let store = tokio::task::spawn_blocking(move || {
        Store::open_with(&store_dir, max_archive_bytes, key).map(|s| s.with_limits(limits))
    })
    .await
    .map_err(|e| {
        Error::io(
            "opening the store in",
            &args.data_dir,
            std::io::Error::other(e),
        )
    })??;
    let store = Arc::new(store);
    let kubelet_port = match (args.runtime, args.kubelet_port) {
        (RuntimeKind::Kubelet, 0) => kubelet_port_of(&args.node_name).await?,
        (_, port) => port,
    };
    let runtime = match args.runtime {
        RuntimeKind::Kubelet => Some(Runtime::Kubelet(KubeletClient::new(KubeletConfig {
            node_name: args.node_name.clone(),
            address: args.kubelet_address.clone(),
            port: kubelet_port,
            token_path: args.kubelet_token.clone(),
            ca_path: args.kubelet_ca.clone(),
            tls_server_name: args.kubelet_server_name.clone(),
            checkpoint_dir: args.kubelet_checkpoint_dir.clone(),
        })?)),
        RuntimeKind::Runc => Some(Runtime::Runc(RuncRuntime::new(RuncConfig {
            runc: args.runc_binary.clone(),
            criu_dir: args.criu_dir.clone(),
            bundles: args.runc_bundles.clone(),
            netns: args.runc_netns.clone(),
            work: args.data_dir.join("runc"),
            timeout: Duration::from_secs(120),
        })?)),
        RuntimeKind::Synthetic => Some(Runtime::Synthetic(SyntheticRuntime::new(
            &args.data_dir.join("synthetic-checkpoints"),
            args.synthetic_archive_bytes,
            "registry.invalid/synthetic:1",
        )?)),
        RuntimeKind::None => None,
    };
    let node = NodeFacts {
        node_name: args.node_name.clone(),
        runtime: runtime.as_ref().map_or("none", Runtime::name).to_owned(),
        architecture: sys::architecture().to_owned(),
        kernel_version: sys::kernel_release(),
        criu_version: sys::criu_version(args.criu_dir.as_deref()),
        container_runtime: match args.runtime {
            RuntimeKind::Runc => "runc".to_owned(),
            _ => String::new(),
        },
        restore_handler: if args.restore_backend == RestoreBackend::RuntimeHandler {
            ferry_agent::grants::HANDLER.to_owned()
        } else {
            String::new()
        },
    };
    let replicator = Arc::new(Replicator::new(
        store.clone(),
        tls.clone(),
        ReplicationConfig {
            max_concurrent: args.max_concurrent_transfers,
            zstd: args.zstd,
            stall_timeout: args.peer_stall_timeout,
            ..ReplicationConfig::default()
        },
        metrics.clone(),
    ));
    let protected = {
        let dir = args.data_dir.clone();
        tokio::task::spawn_blocking(move || ProtectedContainers::open(&dir))
            .await
            .map_err(|e| {
                Error::io(
                    "opening the protected-container list in",
                    &args.data_dir,
                    std::io::Error::other(e),
                )
            })??
    };
    let protected = Arc::new(protected);
    let published = Arc::new(ferry_agent::peers::PublishedReach::default());
    let fencer = Arc::new(ferry_agent::watchdog::Fencer {
        node: args.node_name.clone(),
        proc_root: args.proc_root.clone(),
        store: store.clone(),
        protected: protected.clone(),
        metrics: metrics.clone(),
        fenced: Arc::new(ferry_agent::fencing::FencedPods::open(
            &args.data_dir,
            jiff::Timestamp::now(),
        )?),
    });
    if let Some(namespace) = &args.lease_namespace {
        ferry_agent::names::dns_label("--lease-namespace", namespace)?;
        let endpoint = match (&args.advertise_endpoint, &args.pod_ip) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(ip)) if ip.contains(':') => format!("[{ip}]:{}", args.grpc_addr.port()),
            (None, Some(ip)) => format!("{ip}:{}", args.grpc_addr.port()),
            (None, None) => args.grpc_addr.to_string(),
        };
        ferry_agent::names::endpoint("--advertise-endpoint", &endpoint)?;
        if args.heartbeat_interval < Duration::from_millis(100)
            || args.lease_duration < 2 * args.heartbeat_interval
        {
            return Err(Error::Unsupported {
                what: "--heartbeat-interval and --lease-duration",
                reason: format!(
                    "the heartbeat must be at least 100ms and the Lease last at least two heartbeats (got {:?} and {:?})",
                    args.heartbeat_interval, args.lease_duration
                ),
            });
        }
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Serve {
                what: "the node Lease".into(),
                message: format!("no Kubernetes configuration: {e}"),
            })?;
        // Only the kubelet runtime has a kubelet for peers to probe.
        let kubelet_endpoint = (args.runtime == RuntimeKind::Kubelet).then(|| {
            if args.kubelet_address.contains(':') {
                format!("[{}]:{kubelet_port}", args.kubelet_address)
            } else {
                format!("{}:{kubelet_port}", args.kubelet_address)
            }
        });
        let fence_timeout = (!args.fence_timeout.is_zero()).then_some(args.fence_timeout);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let heartbeat = Heartbeat {
            client,
            lease: LeaseConfig {
                namespace: namespace.clone(),
                endpoint,
                holder: args
                    .pod_name
                    .clone()
                    .unwrap_or_else(|| args.node_name.clone()),
                duration: args.lease_duration,
                kubelet_endpoint,
                fencing: fence_timeout.map(|timeout| ferry_api::agent::FencingInfo {
                    timeout_millis: millis(timeout),
                    heartbeat_millis: millis(args.heartbeat_interval),
                    // The watchdog fences when the timeout runs out.
                    lag_millis: Some(0),
                    ..ferry_api::agent::FencingInfo::default()
                }),
            },
            facts: node.clone(),
            tls: tls.clone(),
            config: HeartbeatConfig {
                interval: args.heartbeat_interval,
                fence_timeout,
            },
            metrics: metrics.clone(),
            fencer: fencer.clone(),
            published: published.clone(),
        };
        tracing::info!(
            heartbeat_ms = millis(args.heartbeat_interval),
            fence_timeout_ms = fence_timeout.map(millis),
            "heartbeat: probing peers and renewing the Lease"
        );
        tokio::spawn(async move {
            if let Err(err) = heartbeat.run().await {
                tracing::error!(error = %err, "the heartbeat stopped: no Lease renewals, no fencing");
            }
        });
    } else if !args.fence_timeout.is_zero() {
        tracing::info!(
            "no --lease-namespace: no peers are known, so this agent neither probes nor fences"
        );
    }
    tokio::spawn(ferry_agent::sweeper::run(
        store.clone(),
        metrics.clone(),
        SweepConfig {
            every: args.store_sweep_interval.max(Duration::from_secs(1)),
            partial_transfer_ttl: args.partial_transfer_ttl,
        },
    ));
    let importer = match args.restore_backend {
        RestoreBackend::None | RestoreBackend::RuntimeHandler => None,
        RestoreBackend::Containerd => Some(ContainerdImporter::new(ContainerdConfig {
            ctr: args.ctr.clone(),
            address: args.containerd_address.clone(),
            namespace: args.containerd_namespace.clone(),
            ..ContainerdConfig::default()
        })),
    };
    let mut prepared = PreparedRestores::new(args.data_dir.join("images"), importer.clone());
    if args.restore_backend == RestoreBackend::RuntimeHandler {
        let installed = ferry_agent::grants::install_handler(
            &args.ferry_runc_binary,
            &args.runtime_handler_dir,
            &ferry_runc::Config {
                runc: args.host_runc.clone(),
                grants: args.restore_grants_dir.clone(),
            },
        )?;
        tracing::info!(handler = %installed.display(), grants = %args.restore_grants_dir.display(),
            "ferry's runtime handler installed on this node");
        prepared = prepared.with_grants(ferry_agent::grants::Grants::new(
            args.restore_grants_dir.clone(),
        ));
    }
    let prepared = Arc::new(prepared);
    tokio::spawn(ferry_agent::sweeper::release_stale_restores(
        prepared.clone(),
        args.store_sweep_interval.max(Duration::from_secs(1)),
        args.prepared_restore_ttl,
    ));
    let scope = match (&args.lease_namespace, args.skip_checkpoint_scope) {
        (Some(_), false) => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::Serve {
                    what: "checkpoint scope checks".into(),
                    message: format!("no Kubernetes configuration: {e}"),
                })?;
            Some(ferry_agent::scope::CheckpointScope::new(
                client,
                args.node_name.clone(),
            ))
        }
        _ => {
            tracing::warn!(
                "checkpoint requests are not checked against the API server (no --lease-namespace, or --skip-checkpoint-scope)"
            );
            None
        }
    };
    let service = AgentService::new(ServiceParts {
        node,
        store,
        replicator,
        runtime,
        prepared,
        importer,
        metrics: metrics.clone(),
        protected,
        published,
        fencer,
        announcements: ferry_agent::announcements::Announcements::open(
            &args.data_dir.join("replica-announcements.json"),
        ),
        scope,
        peer_stall_timeout: args.peer_stall_timeout,
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    let listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|e| Error::io("binding", args.grpc_addr.to_string(), e))?;
    let bound = listener.local_addr().unwrap_or(args.grpc_addr);
    let refused_metrics = metrics.clone();
    let incoming =
        ferry_proto::tls::serve_tls(listener, tls.server_config(), move |remote, reason| {
            refused_metrics.tls_refused.inc();
            tracing::warn!(%remote, reason, "refused a connection");
        });
    let (ping_every, ping_timeout) = ferry_agent::replication::keepalive(args.peer_stall_timeout);
    let grpc = tonic::transport::Server::builder()
        .layer(ferry_agent::authz::AuthorizeLayer::new(metrics.clone()))
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_timeout))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(health_service)
        .add_service(
            AgentServer::new(service)
                .max_decoding_message_size(4 << 20)
                .max_encoding_message_size(4 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown());
    tracing::info!(addr = %bound, node = %args.node_name, runtime = ?args.runtime, "serving the agent gRPC API with mutual TLS");
    readiness.set();
    tokio::select! {
        served = grpc => served.map_err(|e| Error::Serve { what: format!("gRPC on {bound}"), message: ferry_telemetry::error_chain(&e) }),
        served = http => Err(http_failed(served)),
    }
}

/// The HTTP endpoints' task ended, which it only does on an error.
fn http_failed(served: Result<std::io::Result<()>, tokio::task::JoinError>) -> Error {
    let message = match served {
        Ok(Ok(())) => "stopped".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    Error::Serve {
        what: "/healthz, /readyz and /metrics".into(),
        message,
    }
}

/// This agent's certificate, and the task that keeps it fresh.
async fn credentials(args: &Args, metrics: &Arc<Metrics>) -> Result<Credentials, Error> {
    match args.identity {
        IdentitySource::Files => {
            let files = TlsFiles {
                ca: args.tls_ca.clone(),
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
            };
            let credentials = Credentials::load(&files)?;
            check_identity(&credentials, &args.node_name)?;
            let metrics = metrics.clone();
            ferry_agent::identity::observe(&metrics, &credentials.facts(), "ok");
            tokio::spawn(credentials.clone().keep_reloaded(
                files,
                args.certificate_reload_interval.max(Duration::from_secs(1)),
                move |facts, ok| {
                    ferry_agent::identity::observe(
                        &metrics,
                        facts,
                        if ok { "ok" } else { "error" },
                    );
                },
            ));
            Ok(credentials)
        }
        IdentitySource::KubernetesCsr => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::Identity {
                    node: args.node_name.clone(),
                    message: format!("no Kubernetes configuration: {e}"),
                })?;
            let ca_pem = std::fs::read(&args.tls_ca)
                .map_err(|e| Error::io("reading the CA certificate", &args.tls_ca, e))?;
            let config = CsrConfig {
                node: args.node_name.clone(),
                signer_name: args.csr_signer_name.clone(),
                ca_pem,
                validity: args.certificate_validity,
                renew_before: args.certificate_renew_before,
                sign_timeout: Duration::from_secs(600),
            };
            let credentials =
                ferry_agent::identity::first_credentials(&client, &config, metrics).await;
            check_identity(&credentials, &args.node_name)?;
            tokio::spawn(ferry_agent::identity::keep_renewed(
                client,
                config,
                credentials.clone(),
                metrics.clone(),
            ));
            Ok(credentials)
        }
    }
}

/// An agent must present its own node's identity: peers would refuse it.
fn check_identity(credentials: &Credentials, node: &str) -> Result<(), Error> {
    let identity = credentials.identity();
    if identity.node() == Some(node) {
        return Ok(());
    }
    Err(Error::Identity {
        node: node.to_owned(),
        message: format!("the certificate names {identity}"),
    })
}

/// The kubelet port this node's Node object advertises.
async fn kubelet_port_of(node_name: &str) -> Result<u16, Error> {
    let failed = |message: String| Error::Serve {
        what: "the kubelet port (--kubelet-port 0)".into(),
        message,
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| failed(format!("no Kubernetes configuration: {e}")))?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let node = nodes
        .get(node_name)
        .await
        .map_err(|e| failed(format!("reading Node {node_name}: {e}")))?;
    let port = node
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .ok_or_else(|| {
            failed(format!(
                "Node {node_name} has no status.daemonEndpoints.kubeletEndpoint"
            ))
        })?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| failed(format!("Node {node_name} advertises kubelet port {port}")))?;
    tracing::info!(
        node = node_name,
        port,
        "kubelet port read from the Node object"
    );
    Ok(port)
}

async fn shutdown() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(error = %err, "no SIGTERM handler; stop with SIGKILL");
                std::future::pending::<()>().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
