//! What ferry records: plain data, one type per table. The controller
//! builds these from what it already knows; nothing here does I/O.

use std::time::{Duration, SystemTime};

/// CRIU's own account of a dump, from the archive's `stats-dump`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CriuDumpStats {
    pub freezing: Duration,
    pub frozen: Duration,
    pub memdump: Duration,
    pub memwrite: Duration,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// Who a row is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The CheckpointPolicy's name.
    pub policy: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    pub taken_at: SystemTime,
    pub subject: Subject,
    pub pod_uid: String,
    pub container: String,
    pub node: String,
    /// `Checkpoint` or `StateApi`.
    pub strategy: String,
    /// The archive stored; `None` when the checkpoint failed.
    pub archive: Option<String>,
    pub size_bytes: Option<u64>,
    /// From the request to the archive stored on the node.
    pub total: Duration,
    pub criu: Option<CriuDumpStats>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationRow {
    pub finished_at: SystemTime,
    pub policy: String,
    pub namespace: String,
    pub archive: String,
    pub source_node: String,
    pub target_node: String,
    pub size_bytes: Option<u64>,
    pub duration: Option<Duration>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverRow {
    pub started_at: SystemTime,
    pub subject: Subject,
    pub pod_uid: String,
    pub strategy: String,
    /// ContainerFailure, PodLoss or NodeLoss.
    pub trigger: String,
    pub evidence: Vec<String>,
    pub from_node: String,
    pub to_node: Option<String>,
    pub replacement_pod: Option<String>,
    /// The archive restored (the first container's); `None` for a cold start.
    pub archive: Option<String>,
    /// Stage times after the failure.
    pub detected: Duration,
    pub fenced: Option<Duration>,
    pub restored: Option<Duration>,
    /// From the failure until the replacement ran.
    pub downtime: Option<Duration>,
    pub checkpoint_age: Option<Duration>,
    pub warm: bool,
    /// Completed or Failed.
    pub outcome: String,
    pub message: Option<String>,
}

/// A read of an application's state, or a write into its replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateApiOperation {
    Read,
    Write,
}

impl StateApiOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateApiRow {
    pub at: SystemTime,
    pub subject: Subject,
    pub container: String,
    pub node: String,
    pub operation: StateApiOperation,
    pub size_bytes: Option<u64>,
    pub duration: Duration,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// One row for any table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Row {
    Checkpoint(CheckpointRow),
    Replication(ReplicationRow),
    Failover(FailoverRow),
    StateApi(StateApiRow),
}

impl Row {
    /// The table it goes to, for logs and metrics.
    pub fn table(&self) -> &'static str {
        match self {
            Self::Checkpoint(_) => "checkpoints",
            Self::Replication(_) => "replications",
            Self::Failover(_) => "failovers",
            Self::StateApi(_) => "state_api_calls",
        }
    }
}

/// Milliseconds as PostgreSQL's bigint.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Bytes or counts as bigint.
pub fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
