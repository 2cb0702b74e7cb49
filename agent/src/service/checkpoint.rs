//! Taking a checkpoint: the runtime's checkpoint into the store, the
//! container remembered for fencing, retention, replication to the peers.

use super::*;

impl AgentService {
    pub(super) async fn take_checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let identity = authz::caller(&request)?;
        let request = request.into_inner();
        let started = Instant::now();
        names::policy_ref("policy", &request.policy)?;
        let container = pod_container_ref(request.container)?;
        let peers = peers_from_proto(request.peers)?;
        let hash = ContentHash::from_proto(request.content_hash);
        let mut pod = None;
        if let Some(scope) = &self.inner.scope {
            match scope.check(&request.policy, &container).await {
                Ok(checked) => pod = Some(checked),
                Err(Ok(reason)) => {
                    return Err(authz::refuse(
                        &self.inner.metrics,
                        "Checkpoint",
                        &identity,
                        &format!(
                            "checkpoint of {}/{}/{}: {reason}",
                            container.namespace, container.pod, container.container
                        ),
                    ));
                }
                Err(Err(message)) => return Err(Status::unavailable(message)),
            }
        }
        if let Some(source) = &request.state_api {
            return self
                .take_state(
                    &request.policy,
                    container,
                    source,
                    pod.as_ref(),
                    request.retention.as_ref(),
                    peers,
                    hash,
                    started,
                )
                .await;
        }
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
                self.count_checkpoint("runtime");
                return Err(err.into());
            }
        };
        let mut meta = self.new_archive(
            &request.policy,
            &container,
            request.retention.as_ref(),
            false,
        );
        let source = taken.path.clone();
        // Replicated while stored: the standbys get the bytes as they are
        // read, under a transfer id, and the archive's id last.
        let read = {
            let source = source.clone();
            self.blocking(move |_| {
                let size = std::fs::metadata(&source)
                    .map_err(|e| Error::io("inspecting", &source, e))?
                    .len();
                let facts = image::read_checkpoint_metadata(&source)?;
                Ok((facts, size, names::random_transfer_id(hash)?))
            })
            .await
        };
        let (mut facts, size, transfer) = match read {
            Ok(read) => read,
            Err(status) => {
                self.count_checkpoint("store");
                self.discard(runtime, &taken).await;
                return Err(status);
            }
        };
        meta.container_image = facts
            .rootfs_image_name
            .take()
            .or(facts.rootfs_image.take())
            .unwrap_or_default();
        let mut announced = meta.clone();
        announced.id.clone_from(&transfer);
        announced.size_bytes = size;
        let (tee, streams) = self.inner.replicator.live(&announced, &peers);
        let protected = self.inner.protected.clone();
        let container_id = facts.container_id;
        let import = self.blocking(move |store| {
            let mut tee = tee;
            let archive =
                store.import_file_with(&source, meta, hash, &mut |chunk| tee.send(chunk))?;
            let stored_after = started.elapsed();
            tee.finish(&archive.id);
            record_protected(&protected, &archive, container_id);
            Ok((archive, stored_after))
        });
        let (imported, live) = tokio::join!(import, streams);
        self.discard(runtime, &taken).await;
        let ((archive, stored_after), dump_stats) = match imported.map(|i| (i, facts.dump_stats)) {
            Ok(imported) => imported,
            Err(status) => {
                self.count_checkpoint("store");
                return Err(status);
            }
        };
        let checkpoint_millis = self.count_stored(&archive, stored_after);
        tracing::info!(
            archive = %archive.id, policy = %archive.policy, namespace = %archive.namespace, pod = %archive.pod,
            container = %archive.container, bytes = archive.size_bytes, checkpoint_ms = checkpoint_millis,
            runtime_ms = taken.elapsed.as_millis() as u64, "checkpoint stored"
        );
        let outcomes = self
            .keep_and_replicate(&archive, &peers, Some((&transfer, live)))
            .await;
        let verified = outcomes.iter().filter(|o| o.result.is_ok()).count();
        tracing::info!(
            archive = %archive.id, peers = peers.len(), verified,
            verified_ms = started.elapsed().as_millis() as u64,
            "checkpoint replicated"
        );
        let replicas = convert::outcomes_to_proto(outcomes);
        Ok(Response::new(pb::CheckpointResponse {
            archive: Some(convert::archive_to_proto(&archive)),
            checkpoint_millis,
            replicas,
            criu_stats: dump_stats.map(convert::dump_stats_to_proto),
            state_api_call: None,
        }))
    }

    /// The record of an archive about to be taken on this node: by the
    /// node's runtime, or (`is_state`) read from the application.
    pub(super) fn new_archive(
        &self,
        policy: &str,
        container: &pb::ContainerRef,
        retention: Option<&pb::Retention>,
        is_state: bool,
    ) -> ArchiveMeta {
        let node = &self.inner.node;
        let (runtime, criu_version) = if is_state {
            ("state-api".to_owned(), String::new())
        } else {
            (node.runtime.clone(), node.criu_version.clone())
        };
        ArchiveMeta {
            id: String::new(),
            policy: policy.to_owned(),
            namespace: container.namespace.clone(),
            pod: container.pod.clone(),
            pod_uid: container.pod_uid.clone(),
            container: container.container.clone(),
            source_node: node.node_name.clone(),
            taken_at_millis: jiff::Timestamp::now().as_millisecond(),
            size_bytes: 0,
            container_image: String::new(),
            encrypted: false,
            retention: retention.map(Retention::from_proto),
            runtime: RuntimeInfo {
                runtime,
                architecture: node.architecture.clone(),
                kernel_version: node.kernel_version.clone(),
                criu_version,
                container_runtime: node.container_runtime.clone(),
            },
        }
    }

    /// Removes the runtime's own copy of a checkpoint, once stored (or not).
    async fn discard(
        &self,
        runtime: &crate::runtime::Runtime,
        taken: &crate::runtime::TakenCheckpoint,
    ) {
        if let Err(err) = runtime.discard(taken).await {
            tracing::warn!(path = %taken.path.display(), error = %err, "could not remove the runtime's copy");
        }
    }

    /// Counts a checkpoint (or state read) by how it ended.
    pub(super) fn count_checkpoint(&self, result: &'static str) {
        self.inner
            .metrics
            .checkpoints
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a checkpoint (or state) stored `elapsed` after the request;
    /// returns those milliseconds.
    pub(super) fn count_stored(&self, archive: &ArchiveMeta, elapsed: Duration) -> u64 {
        let metrics = &self.inner.metrics;
        self.count_checkpoint("ok");
        metrics.checkpoint_duration.observe(elapsed.as_secs_f64());
        metrics.checkpoint_bytes.inc_by(archive.size_bytes);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// What follows storing an archive taken here: the retention, and the
    /// replicas on the peers (each peer's outcome). `live`: the transfer id
    /// and outcomes of the streams that ran while it was stored.
    pub(super) async fn keep_and_replicate(
        &self,
        archive: &ArchiveMeta,
        peers: &[PeerTarget],
        live: Option<(&str, Vec<LiveOutcome>)>,
    ) -> Vec<Outcome> {
        self.enforce_retention(archive).await;
        let replicator = &self.inner.replicator;
        let outcomes = match live {
            Some((transfer, live)) => {
                replicator
                    .settle_live(&archive.id, transfer, peers, live)
                    .await
            }
            None => replicator.replicate(&archive.id, peers).await,
        };
        self.update_store_gauges().await;
        outcomes
    }

    /// Applies the retention stored with `archive` to its container's
    /// archives here, whether this node took it or holds a replica. A
    /// failure is logged: the archive itself is stored.
    pub(super) async fn enforce_retention(&self, archive: &ArchiveMeta) {
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
}

/// Remembers the container a checkpoint was taken of, for fencing. Its id
/// comes from the archive the runtime wrote (`config.dump`): the id of
/// exactly the container that was dumped, where the pod's status could
/// already name a restarted one. A failure is logged, not returned: the
/// checkpoint itself succeeded.
pub(super) fn record_protected(
    protected: &ProtectedContainers,
    archive: &ArchiveMeta,
    id: Option<String>,
) {
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

pub(super) fn peers_from_proto(peers: Vec<pb::Peer>) -> Result<Vec<PeerTarget>, Error> {
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
