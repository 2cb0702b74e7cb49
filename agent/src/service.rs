//! The gRPC service `ferry.agent.v1.Agent`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_server::Agent;
use ferry_proto::v1::push_replica_request::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::containerd::ContainerdImporter;
use crate::fencing::{Protected, ProtectedContainers};
use crate::incoming::{self, Piece};
use crate::metrics::{Metrics, ResultLabels};
use crate::peers::PublishedReach;
use crate::prepared::PreparedRestores;
use crate::replication::{PeerTarget, Replicator};
use crate::retention::{self, Retention};
use crate::runc::RuncRuntime;
use crate::runtime::Runtime;
use crate::store::{ArchiveMeta, RuntimeInfo, Store};
use crate::watchdog::Fencer;
use crate::{Error, convert, image, names};

/// Chunks queued between the network and the file writer of one transfer.
const QUEUED_CHUNKS: usize = 4;

/// Default bound on a kubelet checkpoint call.
const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Facts about this node, reported by `GetNodeInfo` and recorded in every
/// archive taken here.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node_name: String,
    pub runtime: String,
    pub architecture: String,
    pub kernel_version: String,
    pub criu_version: String,
    pub container_runtime: String,
}

/// The agent's gRPC service.
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeFacts,
    store: Arc<Store>,
    replicator: Arc<Replicator>,
    runtime: Option<Runtime>,
    /// What restores left on this node, removed once they are done.
    prepared: Arc<PreparedRestores>,
    /// Where prepared checkpoint images are imported (containerd nodes).
    importer: Option<ContainerdImporter>,
    metrics: Arc<Metrics>,
    protected: Arc<ProtectedContainers>,
    published: Arc<PublishedReach>,
    fencer: Arc<Fencer>,
}

/// What the service is built from.
#[derive(Debug)]
pub struct ServiceParts {
    pub node: NodeFacts,
    pub store: Arc<Store>,
    pub replicator: Arc<Replicator>,
    pub runtime: Option<Runtime>,
    /// What restores left on this node (built under its directory).
    pub prepared: Arc<PreparedRestores>,
    /// Where prepared checkpoint images are imported (containerd nodes).
    pub importer: Option<ContainerdImporter>,
    pub metrics: Arc<Metrics>,
    /// Where every checkpointed container is recorded for fencing.
    pub protected: Arc<ProtectedContainers>,
    /// What this agent's Lease last said it reaches (peers' heartbeats).
    pub published: Arc<PublishedReach>,
    /// Stops pods the controller asks to be fenced.
    pub fencer: Arc<Fencer>,
}

impl AgentService {
    pub fn new(parts: ServiceParts) -> Self {
        let ServiceParts {
            node,
            store,
            replicator,
            runtime,
            prepared,
            importer,
            metrics,
            protected,
            published,
            fencer,
        } = parts;
        Self {
            inner: Arc::new(Inner {
                node,
                store,
                replicator,
                runtime,
                prepared,
                importer,
                metrics,
                protected,
                published,
                fencer,
            }),
        }
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Applies the retention stored with `archive` to its container's
    /// archives here, whether this node took it or holds a replica. A
    /// failure is logged: the archive itself is stored.
    async fn enforce_retention(&self, archive: &ArchiveMeta) {
        let Some(rules) = archive.retention else {
            return;
        };
        let like = archive.clone();
        let now = jiff::Timestamp::now().as_millisecond();
        match self
            .blocking(move |store| store.enforce_retention(&like, rules, now))
            .await
        {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(?deleted, policy = %archive.policy, namespace = %archive.namespace,
                    pod = %archive.pod, container = %archive.container, "retention removed archives");
                self.inner.metrics.count_deleted("retention", deleted.len());
            }
            Ok(_) => {}
            Err(status) => {
                tracing::warn!(archive = %archive.id, error = %status.message(), "retention failed")
            }
        }
    }

    /// Refreshes the stored-archives gauges.
    async fn update_store_gauges(&self) {
        if let Ok(archives) = self.blocking(|store| store.list()).await {
            let bytes: u64 = archives.iter().map(|a| a.size_bytes).sum();
            self.inner
                .metrics
                .stored_archives
                .set(i64::try_from(archives.len()).unwrap_or(i64::MAX));
            self.inner
                .metrics
                .stored_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

/// Remembers the container a checkpoint was taken of, for fencing. Its id
/// comes from the archive the runtime wrote (`config.dump`): the id of
/// exactly the container that was dumped, where the pod's status could
/// already name a restarted one. A failure is logged, not returned: the
/// checkpoint itself succeeded.
fn record_protected(protected: &ProtectedContainers, archive: &ArchiveMeta, id: Option<String>) {
    let Some(id) = id else {
        tracing::warn!(archive = %archive.id, "the archive names no container id: fencing cannot protect this container");
        return;
    };
    let entry = Protected {
        id,
        namespace: archive.namespace.clone(),
        pod: archive.pod.clone(),
        pod_uid: archive.pod_uid.clone(),
        container: archive.container.clone(),
    };
    match protected.record(entry) {
        Ok(true) => tracing::info!(
            namespace = %archive.namespace, pod = %archive.pod, container = %archive.container,
            "container recorded as protected: fencing stops it when this node is cut off"
        ),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(archive = %archive.id, error = %err, "could not record the protected container")
        }
    }
}

fn peers_from_proto(peers: Vec<pb::Peer>) -> Result<Vec<PeerTarget>, Error> {
    peers
        .into_iter()
        .map(|peer| {
            names::dns_subdomain("peers[].node_name", &peer.node_name)?;
            names::endpoint("peers[].endpoint", &peer.endpoint)?;
            Ok(PeerTarget {
                node_name: peer.node_name,
                endpoint: peer.endpoint,
            })
        })
        .collect()
}

fn outcomes_to_proto(outcomes: Vec<crate::replication::Outcome>) -> Vec<pb::ReplicaOutcome> {
    outcomes
        .into_iter()
        .map(|outcome| pb::ReplicaOutcome {
            node_name: outcome.node_name,
            ok: outcome.result.is_ok(),
            error: outcome.result.err().unwrap_or_default(),
            bytes_sent: outcome.bytes_sent,
            millis: u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX),
            resumed_from: outcome.resumed_from,
        })
        .collect()
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_node_info(
        &self,
        _: Request<pb::GetNodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let node = &self.inner.node;
        let free = self.inner.store.free_bytes();
        Ok(Response::new(pb::NodeInfo {
            node_name: node.node_name.clone(),
            runtime: node.runtime.clone(),
            architecture: node.architecture.clone(),
            kernel_version: node.kernel_version.clone(),
            criu_version: node.criu_version.clone(),
            container_runtime: node.container_runtime.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            store_free_bytes: free,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = request.into_inner().node;
        let published = self
            .inner
            .published
            .of(&caller)
            .map_or(0, |at| at.as_microsecond());
        let written = self
            .inner
            .published
            .written_at()
            .map_or(0, |at| at.as_microsecond());
        Ok(Response::new(pb::HeartbeatResponse {
            node: self.inner.node.node_name.clone(),
            published_reach_unix_micros: published,
            last_lease_write_unix_micros: written,
        }))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        names::policy_ref("policy", &request.policy)?;
        let container = request
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        names::dns_label("container.namespace", &container.namespace)?;
        names::dns_subdomain("container.pod", &container.pod)?;
        names::uid("container.pod_uid", &container.pod_uid)?;
        names::dns_label("container.container", &container.container)?;
        let peers = peers_from_proto(request.peers)?;
        let runtime = self.inner.runtime.as_ref().ok_or_else(|| {
            Status::from(Error::Unsupported {
                what: "Checkpoint",
                reason: "no runtime configured".into(),
            })
        })?;
        let timeout = match request.timeout_seconds {
            0 => DEFAULT_CHECKPOINT_TIMEOUT,
            seconds => Duration::from_secs(u64::from(seconds).min(3600)),
        };
        let metrics = &self.inner.metrics;
        let taken = match runtime
            .checkpoint(
                &container.namespace,
                &container.pod,
                &container.container,
                timeout,
            )
            .await
        {
            Ok(taken) => taken,
            Err(err) => {
                metrics
                    .checkpoints
                    .get_or_create(&ResultLabels { result: "runtime" })
                    .inc();
                return Err(err.into());
            }
        };
        let node = &self.inner.node;
        let meta = ArchiveMeta {
            id: String::new(),
            policy: request.policy.clone(),
            namespace: container.namespace.clone(),
            pod: container.pod.clone(),
            pod_uid: container.pod_uid.clone(),
            container: container.container.clone(),
            source_node: node.node_name.clone(),
            taken_at_millis: jiff::Timestamp::now().as_millisecond(),
            size_bytes: 0,
            container_image: String::new(),
            encrypted: false,
            retention: request.retention.as_ref().map(Retention::from_proto),
            runtime: RuntimeInfo {
                runtime: node.runtime.clone(),
                architecture: node.architecture.clone(),
                kernel_version: node.kernel_version.clone(),
                criu_version: node.criu_version.clone(),
                container_runtime: node.container_runtime.clone(),
            },
        };
        let source = taken.path.clone();
        let protected = self.inner.protected.clone();
        let imported = self
            .blocking(move |store| {
                let mut meta = meta;
                let facts = image::read_checkpoint_metadata(&source)?;
                meta.container_image = facts
                    .rootfs_image_name
                    .or(facts.rootfs_image)
                    .unwrap_or_default();
                let archive = store.import_file(&source, meta)?;
                record_protected(&protected, &archive, facts.container_id);
                Ok(archive)
            })
            .await;
        if let Err(err) = runtime.discard(&taken).await {
            tracing::warn!(path = %taken.path.display(), error = %err, "could not remove the runtime's copy");
        }
        let archive = match imported {
            Ok(archive) => archive,
            Err(status) => {
                metrics
                    .checkpoints
                    .get_or_create(&ResultLabels { result: "store" })
                    .inc();
                return Err(status);
            }
        };
        let checkpoint_millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        metrics
            .checkpoints
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.checkpoint_bytes.inc_by(archive.size_bytes);
        tracing::info!(
            archive = %archive.id, policy = %archive.policy, namespace = %archive.namespace, pod = %archive.pod,
            container = %archive.container, bytes = archive.size_bytes, checkpoint_ms = checkpoint_millis,
            runtime_ms = taken.elapsed.as_millis() as u64, "checkpoint stored"
        );
        self.enforce_retention(&archive).await;
        let outcomes = self.inner.replicator.replicate(&archive.id, &peers).await;
        self.update_store_gauges().await;
        Ok(Response::new(pb::CheckpointResponse {
            archive: Some(convert::archive_to_proto(&archive)),
            checkpoint_millis,
            replicas: outcomes_to_proto(outcomes),
        }))
    }

    async fn push_replica(
        &self,
        request: Request<Streaming<pb::PushReplicaRequest>>,
    ) -> Result<Response<pb::PushReplicaResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.message) {
            Some(Message::Header(header)) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the replica header",
                ));
            }
        };
        let archive = header
            .archive
            .ok_or_else(|| Status::invalid_argument("header.archive is required"))?;
        let meta = convert::archive_from_proto(archive)?;
        let offset = header.offset;
        let received = self.inner.metrics.received.clone();
        let incoming = match self
            .blocking(move |store| store.receive(meta, offset))
            .await
        {
            Ok(incoming) => incoming,
            Err(status) => {
                received
                    .get_or_create(&ResultLabels { result: "refused" })
                    .inc();
                return Err(status);
            }
        };
        let Some(incoming) = incoming else {
            // Already stored and verified: nothing to receive.
            return Ok(Response::new(pb::PushReplicaResponse::default()));
        };
        let id = incoming.meta().id.clone();
        let (sender, pieces) = mpsc::channel(QUEUED_CHUNKS);
        let zstd = header.zstd;
        let writer =
            tokio::task::spawn_blocking(move || incoming::write_incoming(incoming, pieces, zstd));
        let mut bytes_received = 0u64;
        let mut failure = None;
        loop {
            match stream.message().await {
                Ok(Some(pb::PushReplicaRequest {
                    message: Some(Message::Chunk(chunk)),
                })) => {
                    bytes_received += chunk.len() as u64;
                    if sender.send(Piece::Data(chunk)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(Some(_)) => {
                    failure = Some(Status::invalid_argument(
                        "only chunks may follow the header",
                    ));
                    break;
                }
                Ok(None) => {
                    let _ = sender.send(Piece::End).await;
                    break;
                }
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            }
        }
        drop(sender);
        let written = writer
            .await
            .map_err(|e| Status::internal(format!("writer task for archive {id} failed: {e}")))?;
        self.inner.metrics.received_bytes.inc_by(bytes_received);
        let result = match (written, failure) {
            (Ok(meta), None) => {
                tracing::info!(archive = %meta.id, bytes = meta.size_bytes, received = bytes_received, "replica verified and stored");
                self.enforce_retention(&meta).await;
                self.update_store_gauges().await;
                Ok(Response::new(pb::PushReplicaResponse {
                    archive: Some(convert::archive_to_proto(&meta)),
                    bytes_received,
                }))
            }
            // A write error explains more than the stream ending because of it.
            (Err(err), _) => Err(Status::from(err)),
            (Ok(_), Some(status)) => Err(status),
        };
        let label = if result.is_ok() { "ok" } else { "failed" };
        received
            .get_or_create(&ResultLabels { result: label })
            .inc();
        if let Err(status) = &result {
            tracing::warn!(archive = %id, error = %status.message(), "replica not stored");
        }
        result
    }

    async fn get_replica_offset(
        &self,
        request: Request<pb::GetReplicaOffsetRequest>,
    ) -> Result<Response<pb::GetReplicaOffsetResponse>, Status> {
        let id = request.into_inner().archive_id;
        names::archive_id("archive_id", &id)?;
        let (offset, complete) = self
            .blocking(move |store| store.incoming_offset(&id))
            .await?;
        Ok(Response::new(pb::GetReplicaOffsetResponse {
            offset,
            complete,
        }))
    }

    async fn replicate(
        &self,
        request: Request<pb::ReplicateRequest>,
    ) -> Result<Response<pb::ReplicateResponse>, Status> {
        let request = request.into_inner();
        names::archive_id("archive_id", &request.archive_id)?;
        let peers = peers_from_proto(request.peers)?;
        let id = request.archive_id.clone();
        self.blocking(move |store| store.get(&id)).await?;
        let outcomes = self
            .inner
            .replicator
            .replicate(&request.archive_id, &peers)
            .await;
        Ok(Response::new(pb::ReplicateResponse {
            replicas: outcomes_to_proto(outcomes),
        }))
    }

    async fn list_archives(
        &self,
        request: Request<pb::ListArchivesRequest>,
    ) -> Result<Response<pb::ListArchivesResponse>, Status> {
        let filter = request.into_inner();
        if !filter.policy.is_empty() {
            names::policy_ref("policy", &filter.policy)?;
        }
        if !filter.namespace.is_empty() {
            names::dns_label("namespace", &filter.namespace)?;
        }
        if !filter.pod.is_empty() {
            names::dns_subdomain("pod", &filter.pod)?;
        }
        if !filter.container.is_empty() {
            names::dns_label("container", &filter.container)?;
        }
        let archives = self.blocking(|store| store.list()).await?;
        let matches = |wanted: &str, actual: &str| wanted.is_empty() || wanted == actual;
        let archives = archives
            .iter()
            .filter(|a| {
                matches(&filter.policy, &a.policy)
                    && matches(&filter.namespace, &a.namespace)
                    && matches(&filter.pod, &a.pod)
                    && matches(&filter.container, &a.container)
            })
            .map(convert::archive_to_proto)
            .collect();
        Ok(Response::new(pb::ListArchivesResponse { archives }))
    }

    async fn get_archive(
        &self,
        request: Request<pb::GetArchiveRequest>,
    ) -> Result<Response<pb::Archive>, Status> {
        let id = request.into_inner().archive_id;
        names::archive_id("archive_id", &id)?;
        let meta = self.blocking(move |store| store.get(&id)).await?;
        Ok(Response::new(convert::archive_to_proto(&meta)))
    }

    async fn delete_archives(
        &self,
        request: Request<pb::DeleteArchivesRequest>,
    ) -> Result<Response<pb::DeleteArchivesResponse>, Status> {
        let request = request.into_inner();
        for id in &request.archive_ids {
            names::archive_id("archive_ids[]", id)?;
        }
        if !request.policy.is_empty() {
            names::policy_ref("policy", &request.policy)?;
        }
        if request.gone_pods.is_some() && request.policy.is_empty() {
            return Err(Status::invalid_argument(
                "gone_pods needs the policy whose pods it names",
            ));
        }
        let reason = match (&request.gone_pods, request.policy.is_empty()) {
            (Some(_), _) => "gone_pod",
            (None, false) => "policy_deleted",
            (None, true) => "requested",
        };
        let (deleted, freed_bytes) = self
            .blocking(move |store| {
                let mut ids = request.archive_ids;
                if !request.policy.is_empty() {
                    let archives = store.list()?;
                    match &request.gone_pods {
                        Some(gone) => {
                            let live = gone.live_pod_uids.iter().map(String::as_str).collect();
                            ids.extend(retention::gone_pod_victims(
                                &archives,
                                &request.policy,
                                &live,
                                gone.taken_before_millis,
                            ));
                        }
                        None => ids.extend(
                            archives
                                .into_iter()
                                .filter(|a| a.policy == request.policy)
                                .map(|a| a.id),
                        ),
                    }
                }
                let mut deleted = Vec::new();
                let mut freed = 0;
                for id in ids {
                    let bytes = store.delete(&id)?;
                    if bytes > 0 {
                        freed += bytes;
                        deleted.push(id);
                    }
                }
                Ok((deleted, freed))
            })
            .await?;
        self.inner.metrics.count_deleted(reason, deleted.len());
        for id in &deleted {
            // A restore prepared from an archive goes with it.
            if let Err(err) = self.inner.prepared.release(id).await {
                tracing::warn!(archive = %id, error = %err, "could not remove the restore prepared from a deleted archive");
            }
        }
        tracing::info!(?deleted, freed_bytes, "archives deleted");
        self.update_store_gauges().await;
        Ok(Response::new(pb::DeleteArchivesResponse {
            deleted,
            freed_bytes,
        }))
    }

    async fn prepare_restore(
        &self,
        request: Request<pb::PrepareRestoreRequest>,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        let id = request.into_inner().archive_id;
        names::archive_id("archive_id", &id)?;
        let build_dir = self.inner.prepared.build_dir(&id);
        let (meta, path, built) = self
            .blocking(move |store| {
                // A restore must never start from bytes that changed on disk:
                // the archive is verified (an encrypted one decrypted to a
                // private temporary copy, verified while written).
                let plaintext = store.plaintext_archive(&id)?;
                let meta = plaintext.meta().clone();
                let reference = names::checkpoint_image(
                    &meta.namespace,
                    &meta.policy,
                    &meta.container,
                    &names::random_grant()?,
                );
                let built = image::build_checkpoint_image(
                    plaintext.path(),
                    &id,
                    &reference,
                    &build_dir,
                    true,
                )?;
                // The decrypted copy goes when `plaintext` drops; the image's
                // layer is the same plaintext archive and stays as the file
                // to restore from.
                let path = if plaintext.is_copy() {
                    built.layout_dir.join("blobs").join("sha256").join(&id)
                } else {
                    plaintext.path().to_owned()
                };
                Ok((meta, path, built))
            })
            .await?;
        if let Some(importer) = &self.inner.importer {
            let archive = built.archive_path.as_deref().ok_or_else(|| {
                Status::internal(format!(
                    "checkpoint image of archive {} was built without its OCI archive",
                    meta.id
                ))
            })?;
            let record_id = meta.id.clone();
            let reference = built.reference.clone();
            let prepared = self.inner.prepared.clone();
            tokio::task::spawn_blocking(move || prepared.record(&record_id, &reference))
                .await
                .map_err(|e| Status::internal(format!("recording the prepared image: {e}")))??;
            importer
                .import(archive, &built.reference)
                .await
                .map_err(Status::from)?;
        }
        let mut pod_annotations = std::collections::HashMap::new();
        pod_annotations.insert("ferry.dev/restore-archive".to_owned(), meta.id.clone());
        Ok(Response::new(pb::PrepareRestoreResponse {
            archive: Some(convert::archive_to_proto(&meta)),
            image: built.reference,
            pod_annotations,
            archive_path: path.display().to_string(),
        }))
    }

    async fn release_restore(
        &self,
        request: Request<pb::ReleaseRestoreRequest>,
    ) -> Result<Response<pb::ReleaseRestoreResponse>, Status> {
        let id = request.into_inner().archive_id;
        let released = self.inner.prepared.release(&id).await?;
        if !released.images.is_empty() || released.bytes > 0 {
            tracing::info!(archive = %id, images = ?released.images, freed_bytes = released.bytes,
                "restore released: its prepared image and files are gone");
        }
        Ok(Response::new(pb::ReleaseRestoreResponse {
            images: released.images,
            freed_bytes: released.bytes,
        }))
    }

    async fn run_container(
        &self,
        request: Request<pb::RunContainerRequest>,
    ) -> Result<Response<pb::RunContainerResponse>, Status> {
        let request = request.into_inner();
        let container = container_ref(request.container)?;
        let runc = self.runc("RunContainer")?;
        let id =
            RuncRuntime::container_id(&container.namespace, &container.pod, &container.container);
        let pid = runc.run(&id, &request.bundle).await?;
        tracing::info!(container = %id, bundle = %request.bundle, pid, "container running");
        Ok(Response::new(pb::RunContainerResponse {
            container_id: id,
            pid,
        }))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        names::archive_id("archive_id", &request.archive_id)?;
        let container = container_ref(request.container)?;
        let runc = self.runc("Restore")?;
        let id =
            RuncRuntime::container_id(&container.namespace, &container.pod, &container.container);
        let archive_id = request.archive_id.clone();
        // Verified (and decrypted) before CRIU ever sees it.
        let plaintext = self
            .blocking(move |store| store.plaintext_archive(&archive_id))
            .await?;
        let restored = runc.restore(plaintext.path(), &id, &request.bundle).await;
        drop(plaintext);
        let restored = restored?;
        let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            archive = %request.archive_id, container = %id, pid = restored.pid, restore_ms = millis,
            criu_ms = restored.criu.as_millis() as u64, "container restored"
        );
        Ok(Response::new(pb::RestoreResponse {
            container_id: restored.container_id,
            pid: restored.pid,
            restore_millis: millis,
            criu_millis: u64::try_from(restored.criu.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn delete_container(
        &self,
        request: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<pb::DeleteContainerResponse>, Status> {
        let container = container_ref(request.into_inner().container)?;
        let runc = self.runc("DeleteContainer")?;
        let id =
            RuncRuntime::container_id(&container.namespace, &container.pod, &container.container);
        runc.delete(&id).await?;
        Ok(Response::new(pb::DeleteContainerResponse {}))
    }

    async fn fence_pod(
        &self,
        request: Request<pb::FencePodRequest>,
    ) -> Result<Response<pb::FencePodResponse>, Status> {
        let request = request.into_inner();
        if request.pod_uid.is_empty() {
            return Err(Status::invalid_argument("FencePod needs pod_uid"));
        }
        let killed = self
            .inner
            .fencer
            .fence_pod(&request.pod_uid)
            .await
            .map_err(|e| {
                Status::internal(format!(
                    "fencing pod {}/{} ({}): {e}",
                    request.namespace, request.pod, request.pod_uid
                ))
            })?;
        tracing::warn!(namespace = %request.namespace, pod = %request.pod, pod_uid = %request.pod_uid, killed,
            "fenced a pod on the controller's request: its kubelet is lost, and it stays stopped while it is failed over");
        Ok(Response::new(pb::FencePodResponse {
            killed_processes: killed as u64,
        }))
    }
}

impl AgentService {
    fn runc(&self, what: &'static str) -> Result<&RuncRuntime, Status> {
        self.inner
            .runtime
            .as_ref()
            .and_then(Runtime::runc)
            .ok_or_else(|| {
                Status::unimplemented(
                    Error::Unsupported {
                        what,
                        reason: "only the runc runtime runs containers itself; under the kubelet the container runtime restores pods".into(),
                    }
                    .to_string(),
                )
            })
    }
}

/// A validated container reference.
fn container_ref(container: Option<pb::ContainerRef>) -> Result<pb::ContainerRef, Status> {
    let container = container.ok_or_else(|| Status::invalid_argument("container is required"))?;
    names::dns_label("container.namespace", &container.namespace)?;
    names::dns_subdomain("container.pod", &container.pod)?;
    names::dns_label("container.container", &container.container)?;
    Ok(container)
}
