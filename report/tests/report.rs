//! ferry-report against a real PostgreSQL that ferry's recorder filled:
//! the tables' percentiles and the two PNG charts.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::{Duration, Instant, SystemTime};

use ferry_history::rows::{CheckpointRow, CriuDumpStats, FailoverRow, ReplicationRow, Subject};
use ferry_history::{Database, HistoryMetrics, Recorder, RecorderOptions, Row};
use ferry_testenv::postgres::Postgres;

fn subject(policy: &str) -> Subject {
    Subject {
        policy: policy.into(),
        namespace: "demo".into(),
        pod: "counter-0".into(),
    }
}

/// Checkpoints of 64 MiB taking 1..=20 s, each replicated in a tenth of
/// that; failovers warm in 4..=5 s and one cold in 30 s.
fn history() -> Vec<Row> {
    let mut rows = Vec::new();
    for n in 1..=20u64 {
        let archive = format!("{n:064x}");
        rows.push(Row::Checkpoint(CheckpointRow {
            taken_at: SystemTime::now(),
            subject: subject("counter"),
            pod_uid: "uid".into(),
            container: "app".into(),
            node: "ferry-a".into(),
            strategy: "Checkpoint".into(),
            archive: Some(archive.clone()),
            size_bytes: Some(64 << 20),
            total: Duration::from_secs(n),
            criu: Some(CriuDumpStats {
                frozen: Duration::from_millis(n * 500),
                ..Default::default()
            }),
            error: None,
        }));
        rows.push(Row::Replication(ReplicationRow {
            finished_at: SystemTime::now(),
            policy: "counter".into(),
            namespace: "demo".into(),
            archive,
            source_node: "ferry-a".into(),
            target_node: "ferry-b".into(),
            size_bytes: Some(64 << 20),
            duration: Some(Duration::from_millis(n * 100)),
            error: None,
        }));
    }
    for (n, (seconds, warm)) in [(4, true), (5, true), (30, false)].into_iter().enumerate() {
        rows.push(Row::Failover(FailoverRow {
            started_at: SystemTime::now(),
            subject: subject("counter"),
            pod_uid: format!("uid-{n}"),
            strategy: "Checkpoint".into(),
            trigger: "NodeLoss".into(),
            evidence: vec![],
            from_node: "ferry-a".into(),
            to_node: Some("ferry-b".into()),
            replacement_pod: None,
            archive: warm.then(|| format!("{:064x}", 1)),
            detected: Duration::from_secs(1),
            fenced: None,
            restored: Some(Duration::from_secs(seconds)),
            downtime: Some(Duration::from_secs(seconds)),
            checkpoint_age: None,
            warm,
            outcome: "Completed".into(),
            message: None,
        }));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_prints_percentiles_and_draws_both_charts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let postgres = Postgres::start(false).await.unwrap();
    let recorder = Recorder::start(
        Database::new(&postgres.url(), None).unwrap(),
        RecorderOptions::default(),
        HistoryMetrics::default(),
    );
    let rows = history();
    let expected = rows.len() as u64;
    for row in rows {
        recorder.record(row);
    }
    let superuser = postgres.superuser().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written: i64 = superuser
            .query_one(
                "SELECT (SELECT count(*) FROM checkpoints) + (SELECT count(*) FROM replications)
                      + (SELECT count(*) FROM failovers)",
                &[],
            )
            .await
            .map_or(0, |r| r.get(0));
        if written as u64 == expected {
            break;
        }
        assert!(Instant::now() < deadline, "{written} of {expected} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = tempfile::tempdir().unwrap();
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-report"))
        .arg("--out")
        .arg(out.path())
        .env("FERRY_HISTORY_DATABASE_URL", postgres.url())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&report.stderr)
    );
    // 64 MiB checkpoints of 1..=20 s: p50 10 s, p95 19 s; pause half
    // that; replication a tenth.
    let line = text
        .lines()
        .find(|l| l.starts_with("demo/counter") && l.contains("≤128Mi") && l.contains("20"))
        .unwrap_or_else(|| panic!("no checkpoint line:\n{text}"));
    assert!(line.contains("10.00 / 19.00"), "{line}");
    assert!(line.contains("5.00 / 9.50"), "{line}");
    assert!(line.contains("1.00 / 1.90"), "{line}");
    assert!(
        text.lines()
            .any(|l| l.contains("Checkpoint (warm)") && l.contains("4.00 / 5.00")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("cold start") && l.contains("30.00 / 30.00")),
        "{text}"
    );
    for chart in ["checkpoint-time.png", "downtime.png"] {
        let bytes = std::fs::read(out.path().join(chart)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{chart} is not a PNG"
        );
        assert!(bytes.len() > 5_000, "{chart}: {} bytes", bytes.len());
    }

    // A database that is not there: a clear error, no report.
    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-report"))
        .env(
            "FERRY_HISTORY_DATABASE_URL",
            format!(
                "postgresql://ferry:x@127.0.0.1:{}/ferry_history?sslmode=disable",
                1
            ),
        )
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("connecting to the history database postgresql://ferry@127.0.0.1:1"),
        "{err}"
    );
}
