//! The gRPC service `ferry.agent.v1.Agent`: a thin adapter. The use cases
//! live beside it: taking a checkpoint (checkpoint.rs), receiving and
//! deleting archives (replicas.rs), preparing and releasing restores
//! (restore.rs).

mod checkpoint;
mod replicas;
mod restore;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_server::Agent;
use ferry_proto::v1::push_replica_request::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::announcements::{Announcements, Expected};
use crate::containerd::ContainerdImporter;
use crate::content_hash::ContentHash;
use crate::fencing::{Protected, ProtectedContainers};
use crate::incoming::{self, Piece};
use crate::metrics::{Metrics, ResultLabels};
use crate::peers::PublishedReach;
use crate::prepared::PreparedRestores;
use crate::replication::{LiveOutcome, Outcome, PeerTarget, Replicator};
use crate::retention::{self, Retention};
use crate::runc::RuncRuntime;
use crate::runtime::Runtime;
use crate::scope::CheckpointScope;
use crate::store::{ArchiveMeta, RuntimeInfo, Store};
use crate::watchdog::Fencer;
use crate::{Error, authz, convert, image, names};

/// Chunks queued between the network and the file writer of one transfer.
const QUEUED_CHUNKS: usize = 4;

/// Default bound on a kubelet checkpoint call.
const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Facts about this node, recorded in every archive taken here.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node_name: String,
    pub runtime: String,
    pub architecture: String,
    pub kernel_version: String,
    pub criu_version: String,
    pub container_runtime: String,
    /// The runtime handler that restores here (`ferry` with the
    /// runtime-handler backend); empty: restores need none.
    pub restore_handler: String,
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
    announcements: Announcements,
    scope: Option<CheckpointScope>,
    /// An incoming replica that brings no data for this long is given up.
    peer_stall_timeout: Duration,
    /// For applications' state endpoints (strategy StateApi), made once.
    state_client: std::sync::OnceLock<Result<reqwest::Client, String>>,
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
    /// Which replicas the controller said to accept.
    pub announcements: Announcements,
    /// Checks each checkpoint's target against the API server; `None` on
    /// hosts that are not Kubernetes nodes.
    pub scope: Option<CheckpointScope>,
    /// An incoming replica that brings no data for this long is given up;
    /// its partial file stays for the sender's resumed retry.
    pub peer_stall_timeout: Duration,
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
            announcements,
            scope,
            peer_stall_timeout,
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
                announcements,
                scope,
                peer_stall_timeout,
                state_client: std::sync::OnceLock::new(),
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

#[tonic::async_trait]
impl Agent for AgentService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let identity = authz::caller(&request)?;
        let caller = request.into_inner().node;
        if identity.node() != Some(caller.as_str()) {
            return Err(authz::refuse(
                &self.inner.metrics,
                "Heartbeat",
                &identity,
                &format!("it claims to be node {caller:?}"),
            ));
        }
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
        self.take_checkpoint(request).await
    }

    async fn expect_replicas(
        &self,
        request: Request<pb::ExpectReplicasRequest>,
    ) -> Result<Response<pb::ExpectReplicasResponse>, Status> {
        let request = request.into_inner();
        names::dns_subdomain("source_node", &request.source_node)?;
        names::policy_ref("policy", &request.policy)?;
        let container = pod_container_ref(request.container)?;
        self.inner.announcements.announce(
            Expected {
                source_node: request.source_node,
                policy: request.policy,
                namespace: container.namespace,
                pod_uid: container.pod_uid,
                container: container.container,
            },
            Duration::from_secs(u64::from(request.ttl_seconds)),
            std::time::SystemTime::now(),
        );
        Ok(Response::new(pb::ExpectReplicasResponse {}))
    }

    async fn push_replica(
        &self,
        request: Request<Streaming<pb::PushReplicaRequest>>,
    ) -> Result<Response<pb::PushReplicaResponse>, Status> {
        self.receive_replica(request).await
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

    async fn delete_archives(
        &self,
        request: Request<pb::DeleteArchivesRequest>,
    ) -> Result<Response<pb::DeleteArchivesResponse>, Status> {
        self.delete_stored(request).await
    }

    async fn prepare_restore(
        &self,
        request: Request<pb::PrepareRestoreRequest>,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        self.prepare_restore_here(request).await
    }

    async fn release_restore(
        &self,
        request: Request<pb::ReleaseRestoreRequest>,
    ) -> Result<Response<pb::ReleaseRestoreResponse>, Status> {
        self.release_restore_here(request).await
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

    async fn restore_state(
        &self,
        request: Request<pb::RestoreStateRequest>,
    ) -> Result<Response<pb::RestoreStateResponse>, Status> {
        self.write_state(request).await
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

/// A [`container_ref`] of a pod, whose UID is checked too.
fn pod_container_ref(container: Option<pb::ContainerRef>) -> Result<pb::ContainerRef, Status> {
    let container = container_ref(container)?;
    names::uid("container.pod_uid", &container.pod_uid)?;
    Ok(container)
}
