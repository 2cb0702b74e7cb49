//! The history on a real PostgreSQL server (Debian's package, started by
//! ferry-testenv as an unprivileged user): every table written with bigint
//! columns, migrations applied once by replicas starting together, and a
//! database that is killed, stopped or refusing never blocks a caller and
//! loses only what the buffer cannot hold, counted.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::{Duration, Instant, SystemTime};

use ferry_history::rows::{
    CheckpointRow, CriuDumpStats, FailoverRow, ReplicationRow, StateApiOperation, StateApiRow,
    Subject,
};
use ferry_history::{Database, HistoryMetrics, Recorder, RecorderOptions, Row};
use ferry_testenv::postgres::Postgres;

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn subject() -> Subject {
    Subject {
        policy: "counter".into(),
        namespace: "demo".into(),
        pod: "counter-7d9c-x2".into(),
    }
}

fn checkpoint(n: u64) -> Row {
    Row::Checkpoint(CheckpointRow {
        taken_at: SystemTime::now(),
        subject: subject(),
        pod_uid: "3f2a1b4c".into(),
        container: "app".into(),
        node: "ferry-a".into(),
        strategy: "Checkpoint".into(),
        archive: Some(format!("{n:064x}")),
        // Past what int4 holds: the columns must be bigint.
        size_bytes: Some(5 << 30),
        total: Duration::from_millis(2_400 + n),
        criu: Some(CriuDumpStats {
            freezing: Duration::from_micros(136),
            frozen: Duration::from_millis(1_900),
            memdump: Duration::from_millis(1_200),
            memwrite: Duration::from_millis(600),
            pages_scanned: 3 << 30,
            pages_written: 1 << 20,
        }),
        error: None,
    })
}

fn every_table() -> Vec<Row> {
    vec![
        checkpoint(0),
        Row::Replication(ReplicationRow {
            finished_at: SystemTime::now(),
            policy: "counter".into(),
            namespace: "demo".into(),
            archive: "ab".repeat(32),
            source_node: "ferry-a".into(),
            target_node: "ferry-b".into(),
            size_bytes: Some(5 << 30),
            duration: Some(Duration::from_millis(4_100)),
            error: None,
        }),
        Row::Failover(FailoverRow {
            started_at: SystemTime::now(),
            subject: subject(),
            pod_uid: "3f2a1b4c".into(),
            strategy: "Checkpoint".into(),
            trigger: "NodeLoss".into(),
            evidence: vec![
                "node ferry-a NotReady".into(),
                "peers lost its agent".into(),
            ],
            from_node: "ferry-a".into(),
            to_node: Some("ferry-b".into()),
            replacement_pod: Some("counter-7d9c-y7".into()),
            archive: Some(format!("{:064x}", 0)),
            detected: Duration::from_millis(1_900),
            fenced: Some(Duration::from_millis(2_900)),
            restored: Some(Duration::from_millis(4_800)),
            downtime: Some(Duration::from_millis(4_800)),
            checkpoint_age: Some(Duration::from_millis(7_000)),
            warm: true,
            outcome: "Completed".into(),
            message: None,
        }),
        Row::StateApi(StateApiRow {
            at: SystemTime::now(),
            subject: subject(),
            container: "app".into(),
            node: "ferry-b".into(),
            operation: StateApiOperation::Write,
            size_bytes: Some(1 << 20),
            duration: Duration::from_millis(12),
            http_status: Some(204),
            error: None,
        }),
    ]
}

async fn count(postgres: &Postgres, table: &str) -> i64 {
    let client = postgres.superuser().await.unwrap();
    match client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => 0, // not migrated yet
    }
}

async fn wait_for_rows(postgres: &Postgres, table: &str, rows: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = count(postgres, table).await;
        if now >= rows {
            assert_eq!(now, rows, "{table}");
            return;
        }
        assert!(Instant::now() < deadline, "{table}: {now} rows of {rows}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn options(capacity: usize) -> RecorderOptions {
    RecorderOptions {
        capacity,
        write_timeout: Duration::from_secs(2),
    }
}

fn counter(metrics: &HistoryMetrics, table: &'static str, result: &'static str) -> u64 {
    metrics
        .rows
        .get_or_create(&ferry_history::recorder::RowLabels { table, result })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_is_written_and_no_column_is_int4() {
    install_crypto_provider();
    let postgres = Postgres::start(false).await.unwrap();
    let metrics = HistoryMetrics::default();
    let recorder = Recorder::start(
        Database::new(&postgres.url(), None).unwrap(),
        options(100),
        metrics.clone(),
    );
    for row in every_table() {
        recorder.record(row);
    }
    for table in [
        "checkpoints",
        "replications",
        "failovers",
        "state_api_calls",
    ] {
        wait_for_rows(&postgres, table, 1, Duration::from_secs(30)).await;
    }
    let client = postgres.superuser().await.unwrap();
    let int4: Vec<String> = client
        .query(
            "SELECT table_name || '.' || column_name FROM information_schema.columns
             WHERE table_schema = 'public' AND data_type IN ('integer', 'smallint')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(int4.is_empty(), "int4 columns: {int4:?}");
    let row = client
        .query_one(
            "SELECT size_bytes, total_ms, criu_frozen_ms, criu_pages_scanned FROM checkpoints",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5 << 30);
    assert_eq!(row.get::<_, i64>(1), 2_400);
    assert_eq!(row.get::<_, i64>(2), 1_900);
    assert_eq!(row.get::<_, i64>(3), 3 << 30);
    let evidence: Vec<String> = client
        .query_one("SELECT evidence FROM failovers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(evidence.len(), 2);
    assert_eq!(counter(&metrics, "failovers", "written"), 1);
    // A failover ended twice (a new leader finishing it again) is one row.
    recorder.record(every_table().swap_remove(2));
    recorder.record(checkpoint(1));
    wait_for_rows(&postgres, "checkpoints", 2, Duration::from_secs(30)).await;
    assert_eq!(count(&postgres, "failovers").await, 1);
    assert!(recorder.health().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_each_migration_once() {
    install_crypto_provider();
    let postgres = Postgres::start(false).await.unwrap();
    let database = Database::new(&postgres.url(), None).unwrap();
    let migrations = (0..4).map(|_| {
        let database = database.clone();
        tokio::spawn(async move {
            let mut client = database.connect().await.unwrap();
            ferry_history::schema::migrate(&mut client).await.unwrap()
        })
    });
    let mut applied: Vec<i64> = Vec::new();
    for migration in migrations {
        applied.extend(migration.await.unwrap());
    }
    let versions: Vec<i64> = ferry_history::schema::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .collect();
    applied.sort();
    assert_eq!(applied, versions, "each migration applied by exactly one");
    assert_eq!(
        count(&postgres, "ferry_schema_migrations").await,
        versions.len() as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_killed_and_back_loses_nothing_the_buffer_holds() {
    install_crypto_provider();
    let mut postgres = Postgres::start(false).await.unwrap();
    let metrics = HistoryMetrics::default();
    let recorder = Recorder::start(
        Database::new(&postgres.url(), None).unwrap(),
        options(50),
        metrics.clone(),
    );
    for n in 0..5 {
        recorder.record(checkpoint(n));
    }
    wait_for_rows(&postgres, "checkpoints", 5, Duration::from_secs(30)).await;

    postgres.kill();
    for n in 5..45 {
        recorder.record(checkpoint(n));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorder.health().connected {
        assert!(Instant::now() < deadline, "the loss was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = recorder.health();
    assert!(health.error.is_some(), "{health:?}");
    assert_eq!(health.lost, 0);

    postgres.run().await.unwrap();
    wait_for_rows(&postgres, "checkpoints", 45, Duration::from_secs(60)).await;
    assert_eq!(counter(&metrics, "checkpoints", "dropped"), 0);
    assert!(recorder.health().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_never_blocks_a_caller_and_drops_what_does_not_fit() {
    install_crypto_provider();
    let postgres = Postgres::start(false).await.unwrap();
    let metrics = HistoryMetrics::default();
    let recorder = Recorder::start(
        Database::new(&postgres.url(), None).unwrap(),
        options(10),
        metrics.clone(),
    );
    recorder.record(checkpoint(0));
    wait_for_rows(&postgres, "checkpoints", 1, Duration::from_secs(30)).await;

    // The server takes connections and answers nothing.
    postgres.pause();
    for n in 1..=100 {
        recorder.record(checkpoint(n));
    }
    // The buffer holds 10 and the writer one more: the rest is dropped,
    // counted, and said.
    let dropped = counter(&metrics, "checkpoints", "dropped");
    assert!((89..=90).contains(&dropped), "{dropped} dropped");
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorder.health().error.is_none() {
        assert!(Instant::now() < deadline, "the stall was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorder.health().lost, dropped);

    postgres.resume();
    let kept = 101 - dropped as i64;
    wait_for_rows(&postgres, "checkpoints", kept, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_a_missing_database_and_a_bad_url_say_what_is_wrong() {
    install_crypto_provider();
    let postgres = Postgres::start(false).await.unwrap();
    let wrong_password = postgres
        .url()
        .replace(ferry_testenv::postgres::PASSWORD, "not-the-password");
    let err = Database::new(&wrong_password, None)
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains("postgresql://ferry@127.0.0.1"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");

    let missing = postgres.url().replace("/ferry_history", "/nonexistent");
    let err = Database::new(&missing, None)
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"nonexistent\" does not exist"), "{err}");

    let err = Database::new("postgres://ferry@127.0.0.1:5432/x?sslmode=sometimes", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("history database URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_server_is_verified() {
    install_crypto_provider();
    let postgres = Postgres::start(true).await.unwrap();
    let ca = postgres.ca.clone().unwrap();
    let metrics = HistoryMetrics::default();
    let recorder = Recorder::start(
        Database::new(&postgres.url(), Some(&ca)).unwrap(),
        options(10),
        metrics,
    );
    recorder.record(checkpoint(0));
    wait_for_rows(&postgres, "checkpoints", 1, Duration::from_secs(30)).await;
    let client = postgres.superuser().await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT bool_or(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE usename = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "ferry's connection is not TLS");

    // Another CA's server is refused at the handshake.
    let other = Postgres::start(true).await.unwrap();
    let err = Database::new(&other.url(), Some(&ca))
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
}
