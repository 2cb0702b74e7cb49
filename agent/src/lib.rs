//! ferry's node agent.
//!
//! One agent runs on every node. It takes checkpoints through a runtime
//! (`kubelet` in production), keeps the archives in a content-addressed
//! store, streams them to peer agents over mutual TLS, and prepares restores.
//! The gRPC API is `ferry.agent.v1` from `ferry-proto`.

pub mod announcements;
pub mod authz;
pub mod containerd;
pub mod content_hash;
pub mod convert;
pub mod encryption;
pub mod fencing;
pub mod grants;
pub mod heartbeat;
pub mod identity;
pub mod image;
pub mod incoming;
pub mod kubelet;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod peers;
pub mod prepared;
pub mod replication;
pub mod retention;
pub mod runc;
pub mod runtime;
pub mod scope;
pub mod service;
pub mod state_api;
pub mod store;
pub mod sweeper;
pub mod sys;
pub mod tls;
pub mod watchdog;

use std::path::PathBuf;

/// Everything that can go wrong in the agent. Messages name the object
/// (archive, container, peer, file) and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name or id from a request failed validation.
    #[error("invalid {field}: {reason}")]
    InvalidName { field: &'static str, reason: String },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store's file system is full; nothing already stored was touched.
    #[error("no space left in the archive store writing {path}; earlier archives are intact")]
    StoreFull { path: PathBuf },

    #[error("archive {id} not found")]
    ArchiveNotFound { id: String },

    /// Bytes received or read back do not hash to the archive's id.
    #[error("archive {id} is corrupt: its content hashes to {actual}")]
    HashMismatch { id: String, actual: String },

    /// A segment of an encrypted archive was altered, reordered, spliced in
    /// from another file, or is missing its successors.
    #[error("archive {id} is corrupt: segment {segment} fails authentication")]
    SegmentCorrupt { id: String, segment: u64 },

    /// An encrypted archive file does not have the length its size implies.
    #[error(
        "archive {id} is corrupt: {path} is {actual} bytes but an encrypted archive of {size} bytes takes {expected} (truncated or extended)"
    )]
    EncryptedSize {
        id: String,
        path: PathBuf,
        size: u64,
        expected: u64,
        actual: u64,
    },

    /// An encrypted archive this agent cannot decrypt (no key, another key).
    #[error("archive {id} ({path}) cannot be read: {reason}")]
    SealedArchive {
        id: String,
        path: PathBuf,
        reason: String,
    },

    /// The encryption key file is unusable; the message never holds key bytes.
    #[error("encryption key file {path} {reason}")]
    EncryptionKey { path: PathBuf, reason: String },

    /// The archive is larger or smaller than announced.
    #[error("archive {id}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },

    #[error("{what} is {size} bytes; the store accepts at most {max}")]
    TooLarge { what: String, size: u64, max: u64 },

    /// A resumed transfer does not continue where the partial file ends.
    #[error(
        "archive {id}: transfer asked to resume at byte {requested} but this agent holds {held}"
    )]
    OffsetMismatch {
        id: String,
        requested: u64,
        held: u64,
    },

    #[error("archive {id} is already being received from another sender")]
    TransferInProgress { id: String },

    /// An incoming replica would not fit: the disk, or this node's quota,
    /// with what the transfers in flight already reserved.
    #[error(
        "archive {id} ({size} bytes) refused: {limit} has {available} bytes left after {reserved} bytes reserved by transfers in flight"
    )]
    NoRoom {
        id: String,
        size: u64,
        limit: String,
        available: u64,
        reserved: u64,
    },

    /// More incoming replicas at once than this agent takes.
    #[error("archive {id} refused: {max} incoming transfers are already running; retry later")]
    TooManyTransfers { id: String, max: usize },

    #[error("archive {id}: metadata {path}: {reason}")]
    Metadata {
        id: String,
        path: PathBuf,
        reason: String,
    },

    /// The kubelet's checkpoint API refused or failed.
    #[error("kubelet checkpoint of {container} on {node}: {message}")]
    Kubelet {
        container: String,
        node: String,
        message: String,
    },

    /// TLS material could not be loaded or a TLS connection failed.
    #[error("TLS {what}: {message}")]
    Tls { what: String, message: String },

    /// This agent's certificate could not be obtained.
    #[error("certificate of the agent of node {node}: {message}")]
    Identity { node: String, message: String },

    /// A certificate or key file is unreadable or not PEM.
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsError),

    /// A peer agent could not be reached or refused a request.
    #[error("peer {peer} ({endpoint}): {step}: {message}")]
    Peer {
        peer: String,
        endpoint: String,
        step: &'static str,
        message: String,
    },

    /// A server of this agent stopped with an error.
    #[error("serving {what}: {message}")]
    Serve { what: String, message: String },

    /// The request needs something this agent was not set up for.
    #[error("{what} is not available on this agent: {reason}")]
    Unsupported { what: &'static str, reason: String },

    /// runc or CRIU failed; the message quotes their own words.
    #[error("{what}: {message}")]
    Runtime { what: &'static str, message: String },

    /// Building a checkpoint image from an archive failed.
    #[error("checkpoint image from archive {archive}: {message}")]
    CheckpointImage { archive: String, message: String },
}

impl Error {
    /// An I/O error, turned into [`Error::StoreFull`] when the disk is full.
    /// Like [`Error::io`] for errors of a reader that may carry an agent
    /// error inside (an [`crate::store::ArchiveReader`] reports a corrupt
    /// segment that way).
    pub fn from_read(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        if !source.get_ref().is_some_and(|inner| inner.is::<Self>()) {
            return Self::io(action, path, source);
        }
        let kind = source.kind();
        match source.into_inner().map(|inner| inner.downcast::<Self>()) {
            Some(Ok(agent_error)) => *agent_error,
            Some(Err(other)) => Self::io(action, path, std::io::Error::new(kind, other)),
            None => Self::io(action, path, std::io::Error::from(kind)),
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == std::io::ErrorKind::StorageFull
        {
            return Self::StoreFull { path };
        }
        Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Locks `mutex`, carrying on after a panic elsewhere poisoned it (the data
/// it guards is never left half-updated).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
