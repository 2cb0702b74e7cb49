//! `ferry-report`: what ferry's history database says about checkpoint
//! cost and failover downtime, as tables and PNG charts.

pub mod chart;
pub mod query;
pub mod stats;

use std::fmt::Write;
use std::path::PathBuf;

use stats::{CheckpointLine, FailoverLine, Percentiles};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] ferry_history::Error),
    #[error("reading the history: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("font {path}: {message} (Debian's fonts-dejavu-core has one; or pass --font)")]
    Font { path: PathBuf, message: String },
    #[error("drawing {path}: {message}")]
    Chart { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
}

fn ms(value: Option<i64>) -> String {
    value.map_or_else(|| "-".into(), |ms| format!("{:.2}", ms as f64 / 1000.0))
}

fn pair(p: &Percentiles) -> String {
    format!("{} / {}", ms(p.p50), ms(p.p95))
}

/// The two tables as text, seconds as p50 / p95.
pub fn tables(checkpoints: &[CheckpointLine], failovers: &[FailoverLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Checkpoints (seconds, p50 / p95)");
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:>5} {:>6} {:>15} {:>15} {:>15}",
        "policy", "size", "n", "failed", "checkpoint", "pause (CRIU)", "replication"
    );
    for line in checkpoints {
        let _ = writeln!(
            out,
            "{:<28} {:<7} {:>5} {:>6} {:>15} {:>15} {:>15}",
            line.policy,
            line.size.to_string(),
            line.checkpoint.count,
            line.failed,
            pair(&line.checkpoint),
            pair(&line.pause),
            pair(&line.replication)
        );
    }
    let _ = writeln!(out, "\nFailovers: downtime (seconds, p50 / p95)");
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:<18} {:>5} {:>15}",
        "policy", "size", "restore", "n", "downtime"
    );
    for line in failovers {
        let _ = writeln!(
            out,
            "{:<28} {:<7} {:<18} {:>5} {:>15}",
            line.policy,
            line.size.to_string(),
            line.kind.to_string(),
            line.downtime.count,
            pair(&line.downtime)
        );
    }
    out
}
