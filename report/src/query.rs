//! What the report reads from the history database.

use std::time::SystemTime;

use tokio_postgres::Client;

use crate::stats::{Checkpoint, Failover};

/// Checkpoints since `since`, each with its slowest successful replication.
pub async fn checkpoints(
    client: &Client,
    since: SystemTime,
) -> Result<Vec<Checkpoint>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.namespace || '/' || c.policy, c.size_bytes, c.total_ms, c.criu_frozen_ms,
                    (SELECT max(r.duration_ms) FROM replications r
                      WHERE r.archive = c.archive AND r.error IS NULL),
                    c.error IS NULL
               FROM checkpoints c
              WHERE c.taken_at >= $1
              ORDER BY c.taken_at",
            &[&since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Checkpoint {
            policy: row.get(0),
            size_bytes: row.get(1),
            total_ms: row.get(2),
            pause_ms: row.get(3),
            replication_ms: row.get(4),
            ok: row.get(5),
        })
        .collect())
}

/// Completed failovers since `since`, with the size of the archive each
/// restored.
pub async fn failovers(
    client: &Client,
    since: SystemTime,
) -> Result<Vec<Failover>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT f.namespace || '/' || f.policy, f.strategy,
                    (SELECT max(c.size_bytes) FROM checkpoints c WHERE c.archive = f.archive),
                    f.downtime_ms, f.warm
               FROM failovers f
              WHERE f.started_at >= $1 AND f.outcome = 'Completed'
              ORDER BY f.started_at",
            &[&since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Failover {
            policy: row.get(0),
            strategy: row.get(1),
            size_bytes: row.get(2),
            downtime_ms: row.get(3),
            warm: row.get(4),
        })
        .collect())
}
