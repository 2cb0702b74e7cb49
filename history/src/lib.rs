//! ferry's history in PostgreSQL: every checkpoint (with CRIU's own
//! statistics), replication, failover and StateApi call, for evaluating
//! and tuning ferry. Optional and off by default; when on, a database that
//! is down, slow or refusing never delays or loses a checkpoint or a
//! failover (see [`recorder`]).

pub mod connect;
pub mod recorder;
pub mod rows;
pub mod schema;

pub use connect::Database;
pub use recorder::{Health, HistoryMetrics, Recorder, RecorderOptions};
pub use rows::Row;

use std::path::PathBuf;

/// What went wrong with the history database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("history database URL: {0}")]
    Url(String),
    #[error("history database CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("connecting to the history database {database}: {message}")]
    Connect { database: String, message: String },
    #[error("history schema migration {version} ({name}): {message}")]
    Migration {
        version: i64,
        name: String,
        message: String,
    },
}

impl Error {
    fn migration(version: i64, name: &str, err: &tokio_postgres::Error) -> Self {
        Self::Migration {
            version,
            name: name.to_owned(),
            message: ferry_telemetry::error_chain(err),
        }
    }
}
