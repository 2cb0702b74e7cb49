//! Receiving a replica from a peer, and deleting stored archives.

use super::*;

impl AgentService {
    pub(super) async fn receive_replica(
        &self,
        request: Request<Streaming<pb::PushReplicaRequest>>,
    ) -> Result<Response<pb::PushReplicaResponse>, Status> {
        let identity = authz::caller(&request)?;
        let stall = self.inner.peer_stall_timeout;
        let mut stream = request.into_inner();
        let first = tokio::time::timeout(stall, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no replica header within {stall:?} of the call"))
            })??;
        let header = match first.and_then(|m| m.message) {
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
        let expected = Expected {
            source_node: meta.source_node.clone(),
            policy: meta.policy.clone(),
            namespace: meta.namespace.clone(),
            pod_uid: meta.pod_uid.clone(),
            container: meta.container.clone(),
        };
        let caller_node = identity.node().unwrap_or_default();
        if let Err(why) =
            self.inner
                .announcements
                .check(caller_node, &expected, std::time::SystemTime::now())
        {
            return Err(authz::refuse(
                &self.inner.metrics,
                "PushReplica",
                &identity,
                &format!("archive {}: {why}", meta.id),
            ));
        }
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
        let id_follows = header.id_follows;
        let mut named = None;
        let writer =
            tokio::task::spawn_blocking(move || incoming::write_incoming(incoming, pieces, zstd));
        let mut bytes_received = 0u64;
        let mut failure = None;
        loop {
            // A sender whose node is gone may never close the stream; the
            // partial file stays for its resumed retry, and the transfer's
            // hold on the archive ends here.
            let Ok(next) = tokio::time::timeout(stall, stream.message()).await else {
                failure = Some(Status::deadline_exceeded(format!(
                    "archive {id}: no data from the sender for {stall:?} after {bytes_received} bytes; the partial replica is kept for a resumed transfer"
                )));
                break;
            };
            match next {
                Ok(Some(pb::PushReplicaRequest {
                    message: Some(Message::Chunk(chunk)),
                })) if named.is_none() => {
                    bytes_received += chunk.len() as u64;
                    if sender.send(Piece::Data(chunk)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(Some(pb::PushReplicaRequest {
                    message: Some(Message::Trailer(trailer)),
                })) if id_follows && named.is_none() => {
                    // The store checks the name before it uses it.
                    named = Some(trailer.archive_id);
                }
                Ok(Some(_)) => {
                    failure = Some(Status::invalid_argument(if id_follows {
                        "only chunks, then one trailer, may follow a header with id_follows"
                    } else {
                        "only chunks may follow the header"
                    }));
                    break;
                }
                // A transfer that names its archive last ends only with the
                // name: without it the stream was cut, and the partial file
                // stays for the resumed transfer.
                Ok(None) if id_follows && named.is_none() => break,
                Ok(None) => {
                    let _ = sender
                        .send(Piece::End {
                            named: named.take(),
                        })
                        .await;
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
            // The stall, or a message out of order, is why the stream
            // ended short.
            (Err(_), Some(status))
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::InvalidArgument
                ) =>
            {
                Err(status)
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

    pub(super) async fn delete_stored(
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
                store.delete_all(ids)
            })
            .await?;
        self.inner.metrics.count_deleted(reason, deleted.len());
        for id in &deleted {
            // A restore prepared from an archive goes with it.
            if let Err(err) = self.inner.prepared.release(id, "").await {
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
}
