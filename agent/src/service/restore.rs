//! Preparing a restore on this node (a checkpoint image the runtime
//! restores from) and releasing what it left once the restore ran.

use super::*;

/// Names the archive a replacement pod restores from.
const RESTORE_ARCHIVE_ANNOTATION: &str = "ferry.dev/restore-archive";

impl AgentService {
    pub(super) async fn prepare_restore_here(
        &self,
        request: Request<pb::PrepareRestoreRequest>,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        let identity = authz::caller(&request)?;
        let pb::PrepareRestoreRequest {
            archive_id: id,
            failover,
            namespace,
        } = request.into_inner();
        names::archive_id("archive_id", &id)?;
        if !failover.is_empty() {
            names::uid("failover", &failover)?;
        }
        names::dns_label("namespace", &namespace)?;
        let archive = id.clone();
        let owner = self
            .blocking(move |store| store.get(&archive))
            .await?
            .namespace;
        if owner != namespace {
            return Err(authz::refuse(
                &self.inner.metrics,
                "PrepareRestore",
                &identity,
                &format!(
                    "archive {id} belongs to namespace {owner}, not {namespace}: a restore never crosses namespaces"
                ),
            ));
        }
        // A late release of an earlier preparation waits for this one.
        let _busy = self.inner.prepared.lock().await;
        if let Some(grants) = self.inner.prepared.grants().cloned() {
            return self.prepare_grant(grants, id, failover).await;
        }
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
                    built
                        .layout_dir
                        .join("blobs")
                        .join("sha256")
                        .join(built.layer_digest.trim_start_matches("sha256:"))
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
            tokio::task::spawn_blocking(move || prepared.record(&record_id, &failover, &reference))
                .await
                .map_err(|e| Status::internal(format!("recording the prepared image: {e}")))??;
            importer
                .import(archive, &built.reference)
                .await
                .map_err(Status::from)?;
        }
        let mut pod_annotations = std::collections::HashMap::new();
        pod_annotations.insert(RESTORE_ARCHIVE_ANNOTATION.to_owned(), meta.id.clone());
        Ok(Response::new(pb::PrepareRestoreResponse {
            archive: Some(convert::archive_to_proto(&meta)),
            image: built.reference,
            pod_annotations,
            archive_path: path.display().to_string(),
            runtime_class: String::new(),
        }))
    }

    /// The runtime-handler backend: a grant ferry-runc restores from when
    /// the replacement container starts; the pod keeps its image.
    async fn prepare_grant(
        &self,
        grants: crate::grants::Grants,
        id: String,
        failover: String,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        let name = names::random_grant()?;
        // Recorded first, so a crash before the grant is whole still leaves
        // a trace the release (or the TTL) cleans up.
        let prepared = self.inner.prepared.clone();
        let (record_id, reference) = (
            id.clone(),
            format!("{}{name}", crate::grants::REFERENCE_PREFIX),
        );
        tokio::task::spawn_blocking(move || prepared.record(&record_id, &failover, &reference))
            .await
            .map_err(|e| Status::internal(format!("recording the restore grant: {e}")))??;
        let grant = name.clone();
        let meta = self
            .blocking(move |store| {
                // Verified while read (an encrypted archive decrypted to a
                // private copy that goes when `plaintext` drops).
                let plaintext = store.plaintext_archive(&id)?;
                let meta = plaintext.meta().clone();
                grants.prepare(plaintext.path(), &meta, &grant)?;
                Ok(meta)
            })
            .await?;
        tracing::info!(archive = %meta.id, grant = %name, namespace = %meta.namespace,
            container = %meta.container, "restore grant prepared for ferry's runtime handler");
        let mut pod_annotations = std::collections::HashMap::new();
        pod_annotations.insert(RESTORE_ARCHIVE_ANNOTATION.to_owned(), meta.id.clone());
        pod_annotations.insert(ferry_runc::grant::GRANT_ANNOTATION.to_owned(), name);
        Ok(Response::new(pb::PrepareRestoreResponse {
            archive: Some(convert::archive_to_proto(&meta)),
            image: String::new(),
            pod_annotations,
            archive_path: String::new(),
            runtime_class: crate::grants::HANDLER.to_owned(),
        }))
    }

    pub(super) async fn release_restore_here(
        &self,
        request: Request<pb::ReleaseRestoreRequest>,
    ) -> Result<Response<pb::ReleaseRestoreResponse>, Status> {
        let pb::ReleaseRestoreRequest {
            archive_id: id,
            failover,
        } = request.into_inner();
        let released = self.inner.prepared.release(&id, &failover).await?;
        if !released.images.is_empty() || !released.grants.is_empty() || released.bytes > 0 {
            tracing::info!(archive = %id, images = ?released.images, grants = ?released.grants,
                freed_bytes = released.bytes,
                "restore released: its prepared image and files are gone");
        }
        Ok(Response::new(pb::ReleaseRestoreResponse {
            images: released.images,
            freed_bytes: released.bytes,
        }))
    }
}
