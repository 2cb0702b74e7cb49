//! The tables and how rows go into them. Migrations are SQL files embedded
//! at build time and applied in order at start-up, each in its own
//! transaction, under an advisory lock so that controller replicas starting
//! together apply each one once.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::Error;
use crate::rows::{Row, bigint, millis};

/// Every migration, in order: (version, name, SQL). Never edit a released
/// one; add the next.
pub const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "history", include_str!("../migrations/0001_history.sql"))];

/// Key of the advisory lock that serialises migrations ("ferry" in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6572_7279;

/// Applies the migrations this database lacks; returns the versions
/// applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i64>, Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ferry_schema_migrations (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| Error::migration(0, "the migrations table", &e))?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let transaction = client
            .transaction()
            .await
            .map_err(|e| Error::migration(*version, name, &e))?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| Error::migration(*version, name, &e))?;
        let done = transaction
            .query_opt(
                "SELECT 1 FROM ferry_schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(|e| Error::migration(*version, name, &e))?
            .is_some();
        if done {
            continue;
        }
        transaction
            .batch_execute(sql)
            .await
            .map_err(|e| Error::migration(*version, name, &e))?;
        transaction
            .execute(
                "INSERT INTO ferry_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(|e| Error::migration(*version, name, &e))?;
        transaction
            .commit()
            .await
            .map_err(|e| Error::migration(*version, name, &e))?;
        applied.push(*version);
    }
    Ok(applied)
}

const INSERT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (record_key, taken_at, policy, namespace, pod, pod_uid,
    container, node, strategy, archive, size_bytes, total_ms, criu_freezing_ms, criu_frozen_ms,
    criu_memdump_ms, criu_memwrite_ms, criu_pages_scanned, criu_pages_written, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
    ON CONFLICT DO NOTHING";

const INSERT_REPLICATION: &str =
    "INSERT INTO replications (record_key, finished_at, policy, namespace,
    archive, source_node, target_node, size_bytes, duration_ms, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT DO NOTHING";

// A failover is written once it ends; a leader that took over and ends it
// again finds the row there already (unique namespace and pod UID).
const INSERT_FAILOVER: &str = "INSERT INTO failovers (record_key, started_at, policy, namespace, pod,
    pod_uid, strategy, trigger, evidence, from_node, to_node, replacement_pod, archive, detected_ms,
    fenced_ms, restored_ms, downtime_ms, checkpoint_age_ms, warm, outcome, message)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
    ON CONFLICT DO NOTHING";

const INSERT_STATE_API: &str =
    "INSERT INTO state_api_calls (record_key, at, policy, namespace, pod,
    container, node, operation, size_bytes, duration_ms, http_status, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT DO NOTHING";

/// Writes one row under its unique key (a repeated write is a no-op).
pub async fn insert(client: &Client, key: &str, row: &Row) -> Result<(), tokio_postgres::Error> {
    match row {
        Row::Checkpoint(c) => {
            let criu = c.criu.unwrap_or_default();
            let has_criu = c.criu.is_some();
            let criu_ms = |d| has_criu.then(|| millis(d));
            let criu_count = |n| has_criu.then(|| bigint(n));
            let params: [&(dyn ToSql + Sync); 19] = [
                &key,
                &c.taken_at,
                &c.subject.policy,
                &c.subject.namespace,
                &c.subject.pod,
                &c.pod_uid,
                &c.container,
                &c.node,
                &c.strategy,
                &c.archive,
                &c.size_bytes.map(bigint),
                &millis(c.total),
                &criu_ms(criu.freezing),
                &criu_ms(criu.frozen),
                &criu_ms(criu.memdump),
                &criu_ms(criu.memwrite),
                &criu_count(criu.pages_scanned),
                &criu_count(criu.pages_written),
                &c.error,
            ];
            client.execute(INSERT_CHECKPOINT, &params).await?;
        }
        Row::Replication(r) => {
            let params: [&(dyn ToSql + Sync); 10] = [
                &key,
                &r.finished_at,
                &r.policy,
                &r.namespace,
                &r.archive,
                &r.source_node,
                &r.target_node,
                &r.size_bytes.map(bigint),
                &r.duration.map(millis),
                &r.error,
            ];
            client.execute(INSERT_REPLICATION, &params).await?;
        }
        Row::Failover(f) => {
            let params: [&(dyn ToSql + Sync); 21] = [
                &key,
                &f.started_at,
                &f.subject.policy,
                &f.subject.namespace,
                &f.subject.pod,
                &f.pod_uid,
                &f.strategy,
                &f.trigger,
                &f.evidence,
                &f.from_node,
                &f.to_node,
                &f.replacement_pod,
                &f.archive,
                &millis(f.detected),
                &f.fenced.map(millis),
                &f.restored.map(millis),
                &f.downtime.map(millis),
                &f.checkpoint_age.map(millis),
                &f.warm,
                &f.outcome,
                &f.message,
            ];
            client.execute(INSERT_FAILOVER, &params).await?;
        }
        Row::StateApi(s) => {
            let params: [&(dyn ToSql + Sync); 12] = [
                &key,
                &s.at,
                &s.subject.policy,
                &s.subject.namespace,
                &s.subject.pod,
                &s.container,
                &s.node,
                &s.operation.as_str(),
                &s.size_bytes.map(bigint),
                &millis(s.duration),
                &s.http_status.map(i64::from),
                &s.error,
            ];
            client.execute(INSERT_STATE_API, &params).await?;
        }
    }
    Ok(())
}
