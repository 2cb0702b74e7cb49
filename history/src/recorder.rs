//! The recorder: rows wait in a bounded buffer and one task writes them.
//! Nothing that records ever waits for the database. A database that is
//! down, slow or refusing fills the buffer; once it is full, new rows are
//! dropped and counted. The task reconnects with backoff, applies the
//! migrations each time it connects, and keeps the row it was writing when
//! the connection broke.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::connect::Database;
use crate::rows::Row;
use crate::schema;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How much waits, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct RecorderOptions {
    /// Rows kept while the database is away; more are dropped.
    pub capacity: usize,
    /// Bound on one write; longer counts as a broken connection.
    pub write_timeout: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    pub table: &'static str,
    /// `written`, `dropped` (the buffer was full) or `rejected` (the
    /// database refused the row itself).
    pub result: &'static str,
}

/// The recorder's metrics, registered under the caller's prefix.
#[derive(Clone, Debug, Default)]
pub struct HistoryMetrics {
    pub rows: Family<RowLabels, Counter>,
    pub connected: Gauge,
    pub buffered: Gauge,
    pub connection_errors: Counter,
}

impl HistoryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "history_rows",
            "History rows by table and result (dropped: the buffer was full while the database was away)",
            self.rows.clone(),
        );
        registry.register(
            "history_connected",
            "1 while the history database is connected and migrated",
            self.connected.clone(),
        );
        registry.register(
            "history_buffered_rows",
            "History rows waiting for the database",
            self.buffered.clone(),
        );
        registry.register(
            "history_connection_errors",
            "Failed attempts to connect to the history database or to write to it",
            self.connection_errors.clone(),
        );
    }
}

/// How the history is doing, for a status condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The database, without its password.
    pub database: String,
    pub connected: bool,
    /// The last connection or write error, while it lasts.
    pub error: Option<String>,
    /// Rows lost since the start: dropped or rejected.
    pub lost: u64,
}

#[derive(Debug)]
struct Shared {
    metrics: HistoryMetrics,
    health: Mutex<Health>,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn count(&self, row: &Row, result: &'static str) {
        self.metrics
            .rows
            .get_or_create(&RowLabels {
                table: row.table(),
                result,
            })
            .inc();
        if result != "written" {
            self.update(|h| h.lost += 1);
        }
    }
}

/// Where rows are recorded. Cheap to clone; `record` never waits.
#[derive(Clone, Debug)]
pub struct Recorder {
    sender: mpsc::Sender<Keyed>,
    shared: Arc<Shared>,
}

/// A row and the unique key it is stored under.
#[derive(Debug)]
struct Keyed {
    key: String,
    row: Row,
}

/// A key no other row gets: this process's start, its pid and a sequence.
fn next_key() -> String {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{start:x}-{:x}-{sequence:x}", std::process::id())
}

impl Recorder {
    /// A recorder writing to `database` in a task of its own.
    pub fn start(database: Database, options: RecorderOptions, metrics: HistoryMetrics) -> Self {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        let shared = Arc::new(Shared {
            metrics,
            health: Mutex::new(Health {
                database: database.to_string(),
                ..Health::default()
            }),
        });
        tokio::spawn(write_rows(
            database,
            options.write_timeout,
            receiver,
            shared.clone(),
        ));
        Self { sender, shared }
    }

    /// Queues a row; drops it (counted) when the buffer is full.
    pub fn record(&self, row: Row) {
        let keyed = Keyed {
            key: next_key(),
            row,
        };
        match self.sender.try_send(keyed) {
            Ok(()) => {
                self.shared.metrics.buffered.inc();
            }
            Err(
                mpsc::error::TrySendError::Full(keyed) | mpsc::error::TrySendError::Closed(keyed),
            ) => {
                tracing::debug!(
                    table = keyed.row.table(),
                    "history buffer full; row dropped"
                );
                self.shared.count(&keyed.row, "dropped");
            }
        };
    }

    pub fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn write_rows(
    database: Database,
    write_timeout: Duration,
    mut rows: mpsc::Receiver<Keyed>,
    shared: Arc<Shared>,
) {
    let mut pending: Option<Keyed> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        // A server that accepts the connection and then says nothing (an
        // overloaded or stopped one) must not hold the task forever.
        let ready = tokio::time::timeout(write_timeout, async {
            let mut client = database.connect().await?;
            let applied = schema::migrate(&mut client).await?;
            Ok::<_, crate::Error>((client, applied))
        })
        .await;
        let client = match ready {
            Ok(Ok((client, applied))) => {
                if !applied.is_empty() {
                    tracing::info!(database = %database, ?applied, "history schema migrated");
                }
                client
            }
            Ok(Err(err)) => {
                broken(&shared, &err.to_string(), backoff, &database);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                let message = format!("no answer within {write_timeout:?}");
                broken(&shared, &message, backoff, &database);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(database = %database, "history database connected");
        shared.metrics.connected.set(1);
        shared.update(|h| {
            h.connected = true;
            h.error = None;
        });
        backoff = Duration::from_secs(1);
        loop {
            let keyed = match pending.take() {
                Some(keyed) => keyed,
                None => match rows.recv().await {
                    Some(keyed) => {
                        shared.metrics.buffered.dec();
                        keyed
                    }
                    None => return,
                },
            };
            let insert = schema::insert(&client, &keyed.key, &keyed.row);
            match tokio::time::timeout(write_timeout, insert).await {
                Ok(Ok(())) => shared.count(&keyed.row, "written"),
                Ok(Err(err)) if !client.is_closed() && refuses_row(&err) => {
                    tracing::warn!(table = keyed.row.table(), error = %ferry_telemetry::error_chain(&err),
                        "the history database refused a row; it is dropped");
                    shared.count(&keyed.row, "rejected");
                }
                Ok(Err(err)) => {
                    pending = Some(keyed);
                    broken(
                        &shared,
                        &ferry_telemetry::error_chain(&err),
                        backoff,
                        &database,
                    );
                    break;
                }
                Err(_) => {
                    pending = Some(keyed);
                    let message = format!("a write took longer than {write_timeout:?}");
                    broken(&shared, &message, backoff, &database);
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Errors about the row itself (bad data, a constraint), as opposed to
/// the connection or the server.
fn refuses_row(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|code| {
        let class = &code.code()[..2];
        class == "22" || class == "23"
    })
}

fn broken(shared: &Shared, error: &str, retry_in: Duration, database: &crate::connect::Database) {
    shared.metrics.connected.set(0);
    shared.metrics.connection_errors.inc();
    let first = {
        let mut health = shared.health.lock().unwrap_or_else(PoisonError::into_inner);
        let first = health.connected || health.error.is_none();
        health.connected = false;
        health.error = Some(error.to_owned());
        first
    };
    if first {
        tracing::error!(%database, error, ?retry_in,
            "the history database is unavailable; rows wait in the buffer, checkpoints and failovers go on");
    } else {
        tracing::warn!(%database, error, ?retry_in, "the history database is still unavailable");
    }
}
