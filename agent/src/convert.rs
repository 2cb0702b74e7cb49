//! Conversions between the store's records and the wire types.

use ferry_proto::v1 as pb;

use crate::Error;
use crate::retention::Retention;
use crate::store::{ArchiveMeta, RuntimeInfo};

pub fn archive_to_proto(meta: &ArchiveMeta) -> pb::Archive {
    pb::Archive {
        id: meta.id.clone(),
        policy: meta.policy.clone(),
        container: Some(pb::ContainerRef {
            namespace: meta.namespace.clone(),
            pod: meta.pod.clone(),
            pod_uid: meta.pod_uid.clone(),
            container: meta.container.clone(),
        }),
        source_node: meta.source_node.clone(),
        taken_at_millis: meta.taken_at_millis,
        size_bytes: meta.size_bytes,
        source: Some(pb::NodeInfo {
            node_name: meta.source_node.clone(),
            runtime: meta.runtime.runtime.clone(),
            architecture: meta.runtime.architecture.clone(),
            kernel_version: meta.runtime.kernel_version.clone(),
            criu_version: meta.runtime.criu_version.clone(),
            container_runtime: meta.runtime.container_runtime.clone(),
            ..Default::default()
        }),
        container_image: meta.container_image.clone(),
        retention: meta.retention.map(Retention::to_proto),
    }
}

pub fn dump_stats_to_proto(stats: crate::image::CriuDumpStats) -> pb::CriuDumpStats {
    pb::CriuDumpStats {
        freezing_micros: stats.freezing_time_us,
        frozen_micros: stats.frozen_time_us,
        memdump_micros: stats.memdump_time_us,
        memwrite_micros: stats.memwrite_time_us,
        pages_scanned: stats.pages_scanned,
        pages_written: stats.pages_written,
    }
}

/// The store record for a wire archive; every name is validated.
pub fn archive_from_proto(archive: pb::Archive) -> Result<ArchiveMeta, Error> {
    let container = archive.container.ok_or(Error::InvalidName {
        field: "archive.container",
        reason: "missing".into(),
    })?;
    let source = archive.source.unwrap_or_default();
    let meta = ArchiveMeta {
        id: archive.id,
        policy: archive.policy,
        namespace: container.namespace,
        pod: container.pod,
        pod_uid: container.pod_uid,
        container: container.container,
        source_node: archive.source_node,
        taken_at_millis: archive.taken_at_millis,
        size_bytes: archive.size_bytes,
        container_image: archive.container_image,
        // How the bytes are stored is each agent's own business.
        encrypted: false,
        retention: archive.retention.as_ref().map(Retention::from_proto),
        runtime: RuntimeInfo {
            runtime: source.runtime,
            architecture: source.architecture,
            kernel_version: source.kernel_version,
            criu_version: source.criu_version,
            container_runtime: source.container_runtime,
        },
    };
    meta.validate()?;
    Ok(meta)
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidName { .. } | Error::TooLarge { .. } => Self::invalid_argument(message),
            Error::ArchiveNotFound { .. } => Self::not_found(message),
            Error::HashMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::SegmentCorrupt { .. }
            | Error::EncryptedSize { .. } => Self::data_loss(message),
            Error::StoreFull { .. } | Error::NoRoom { .. } | Error::TooManyTransfers { .. } => {
                Self::resource_exhausted(message)
            }
            Error::OffsetMismatch { .. } | Error::TransferInProgress { .. } => {
                Self::aborted(message)
            }
            Error::Kubelet { .. } | Error::Peer { .. } => Self::unavailable(message),
            Error::Unsupported { .. } | Error::SealedArchive { .. } => {
                Self::failed_precondition(message)
            }
            _ => Self::internal(message),
        }
    }
}

/// Replication outcomes as the API reports them.
pub fn outcomes_to_proto(outcomes: Vec<crate::replication::Outcome>) -> Vec<pb::ReplicaOutcome> {
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
