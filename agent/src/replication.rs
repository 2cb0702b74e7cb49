//! Sending archives to peer agents.
//!
//! A transfer streams the archive in 1 MiB chunks read by a blocking task
//! into a channel of a few chunks, so memory stays bounded whatever the
//! archive's size. Before sending, the sender asks the peer how much it
//! already holds and continues from there; failed attempts are retried with
//! backoff. The receiver verifies the sha256 before the archive becomes
//! visible, so the sender does not hash again.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::v1::agent_client::AgentClient;
use ferry_proto::v1::{
    GetReplicaOffsetRequest, PushReplicaRequest, ReplicaHeader, push_replica_request,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::lock;
use crate::metrics::Metrics;
use crate::store::{ArchiveReader, Store};
use crate::{Error, convert};
use ferry_proto::tls::{Credentials, Identity};
use ferry_telemetry::error_chain;

/// Bytes per gRPC message.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks queued between the file reader and the network.
const QUEUED_CHUNKS: usize = 4;

/// A peer to send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    pub node_name: String,
    /// `host:port`.
    pub endpoint: String,
}

/// How one peer's transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub node_name: String,
    pub result: Result<(), String>,
    pub bytes_sent: u64,
    pub resumed_from: u64,
    pub elapsed: Duration,
}

/// Settings of the replicator.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Transfers running at once on this agent (outgoing).
    pub max_concurrent: usize,
    /// Attempts per peer before giving up.
    pub attempts: u32,
    /// First backoff; doubles per attempt.
    pub backoff: Duration,
    /// Compress the stream with zstd (level 1): pays off on slow links only.
    pub zstd: bool,
    pub connect_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 2,
            attempts: 4,
            backoff: Duration::from_millis(500),
            zstd: false,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Sends archives from the local store to peers.
#[derive(Debug)]
pub struct Replicator {
    store: Arc<Store>,
    tls: Credentials,
    /// One HTTP/2 connection per peer, reused: a TLS handshake per archive
    /// costs more than a small archive's transfer. Dropped after a failed
    /// attempt so the retry connects afresh.
    channels: std::sync::Mutex<std::collections::HashMap<String, Channel>>,
    permits: Arc<Semaphore>,
    config: ReplicationConfig,
    metrics: Arc<Metrics>,
}

impl Replicator {
    pub fn new(
        store: Arc<Store>,
        tls: Credentials,
        config: ReplicationConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            store,
            tls,
            channels: std::sync::Mutex::default(),
            config,
            metrics,
        }
    }

    async fn client(&self, node: &str, endpoint: &str) -> Result<AgentClient<Channel>, String> {
        let cached = lock(&self.channels).get(endpoint).cloned();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let channel =
                    connect_channel(&self.tls, node, endpoint, self.config.connect_timeout).await?;
                lock(&self.channels).insert(endpoint.to_owned(), channel.clone());
                channel
            }
        };
        Ok(agent_client(channel))
    }

    fn forget(&self, endpoint: &str) {
        lock(&self.channels).remove(endpoint);
    }

    /// Sends archive `id` to every peer concurrently (each transfer waits for
    /// one of the agent's transfer slots). Never fails as a whole: each
    /// peer's outcome says what happened.
    pub async fn replicate(&self, id: &str, peers: &[PeerTarget]) -> Vec<Outcome> {
        futures::future::join_all(peers.iter().map(|peer| self.replicate_to(id, peer))).await
    }

    async fn replicate_to(&self, id: &str, peer: &PeerTarget) -> Outcome {
        let started = Instant::now();
        let _permit = self.permits.acquire().await;
        let mut bytes_sent = 0;
        let mut last_error = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            match self.push_once(id, peer).await {
                Ok(sent) => {
                    bytes_sent += sent.bytes_sent;
                    let resumed_from = sent.resumed_from;
                    let elapsed = started.elapsed();
                    self.metrics.replication_finished(
                        &peer.node_name,
                        sent.bytes_sent,
                        elapsed,
                        None,
                    );
                    tracing::info!(
                        archive = id, peer = %peer.node_name, attempt, bytes = sent.bytes_sent,
                        resumed_from = sent.resumed_from, elapsed_ms = elapsed.as_millis() as u64,
                        "replica stored and verified by peer"
                    );
                    return Outcome {
                        node_name: peer.node_name.clone(),
                        result: Ok(()),
                        bytes_sent,
                        resumed_from,
                        elapsed,
                    };
                }
                Err((err, sent)) => {
                    self.forget(&peer.endpoint);
                    bytes_sent += sent;
                    last_error = err.to_string();
                    let retry = is_retryable(&err) && attempt < self.config.attempts;
                    tracing::warn!(archive = id, peer = %peer.node_name, attempt, error = %err, retry, "replication attempt failed");
                    if !retry {
                        self.metrics.replication_finished(
                            &peer.node_name,
                            0,
                            started.elapsed(),
                            Some(failure_reason(&err)),
                        );
                        break;
                    }
                    tokio::time::sleep(self.config.backoff * 2u32.saturating_pow(attempt - 1))
                        .await;
                }
            }
        }
        Outcome {
            node_name: peer.node_name.clone(),
            result: Err(last_error),
            bytes_sent,
            resumed_from: 0,
            elapsed: started.elapsed(),
        }
    }

    /// One attempt. On failure also returns the bytes that went out.
    async fn push_once(&self, id: &str, peer: &PeerTarget) -> Result<Sent, (Error, u64)> {
        let peer_error = |step: &'static str, message: String| Error::Peer {
            peer: peer.node_name.clone(),
            endpoint: peer.endpoint.clone(),
            step,
            message,
        };
        let mut client = self
            .client(&peer.node_name, &peer.endpoint)
            .await
            .map_err(|message| (peer_error("connecting", message), 0))?;
        let offset = client
            .get_replica_offset(GetReplicaOffsetRequest {
                archive_id: id.to_owned(),
            })
            .await
            .map_err(|status| {
                (
                    peer_error("asking for the resume offset", status_message(&status)),
                    0,
                )
            })?
            .into_inner();
        if offset.complete {
            return Ok(Sent {
                bytes_sent: 0,
                resumed_from: offset.offset,
            });
        }
        let (meta, reader) = {
            let store = self.store.clone();
            let id = id.to_owned();
            let start = offset.offset;
            tokio::task::spawn_blocking(move || store.open_archive(&id, start))
                .await
                .map_err(|e| (peer_error("reading the archive", e.to_string()), 0))?
                .map_err(|e| (e, 0))?
        };
        if offset.offset > meta.size_bytes {
            return Err((
                peer_error(
                    "resuming",
                    format!(
                        "peer holds {} bytes of a {}-byte archive",
                        offset.offset, meta.size_bytes
                    ),
                ),
                0,
            ));
        }

        let (sender, receiver) = mpsc::channel(QUEUED_CHUNKS);
        let header = PushReplicaRequest {
            message: Some(push_replica_request::Message::Header(ReplicaHeader {
                archive: Some(convert::archive_to_proto(&meta)),
                offset: offset.offset,
                zstd: self.config.zstd,
            })),
        };
        sender
            .send(header)
            .await
            .map_err(|_| (peer_error("sending", "stream closed".into()), 0))?;
        let zstd = self.config.zstd;
        // Small archives get small chunks: a zeroed 1 MiB buffer per chunk
        // costs more than sending 4 KiB.
        let chunk_bytes = if zstd {
            CHUNK_BYTES
        } else {
            let left = meta.size_bytes.saturating_sub(offset.offset);
            usize::try_from(left)
                .unwrap_or(CHUNK_BYTES)
                .clamp(1, CHUNK_BYTES)
        };
        let reader =
            tokio::task::spawn_blocking(move || stream_file(reader, zstd, chunk_bytes, &sender));
        let response = client.push_replica(ReceiverStream::new(receiver)).await;
        // The reader stops by itself once the stream is dropped.
        let sent = reader.await.unwrap_or(Ok(0));
        match (response, sent) {
            (Ok(_), Ok(bytes_sent)) => Ok(Sent {
                bytes_sent,
                resumed_from: offset.offset,
            }),
            (Err(status), sent) => Err((
                peer_error("sending", status_message(&status)),
                sent.unwrap_or(0),
            )),
            (Ok(_), Err(err)) => Err((err, 0)),
        }
    }
}

struct Sent {
    bytes_sent: u64,
    resumed_from: u64,
}

/// Opens a mutual-TLS channel to the agent of `node`.
pub async fn connect(
    tls: &Credentials,
    node: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<AgentClient<Channel>, String> {
    Ok(agent_client(
        connect_channel(tls, node, endpoint, timeout).await?,
    ))
}

fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel)
        .max_decoding_message_size(4 * CHUNK_BYTES)
        .max_encoding_message_size(4 * CHUNK_BYTES)
}

/// The handshake fails unless the peer's certificate names the agent of
/// `node`: an address in a stale Lease, or a stolen certificate, never gets
/// another node's archive.
pub(crate) async fn connect_channel(
    tls: &Credentials,
    node: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect_with_connector(tls.connector(Identity::agent(node)))
        .await
        .map_err(|e| error_chain(&e))
}

/// Reads the archive (from where the reader starts; decrypted when stored
/// encrypted: replicas travel in plaintext inside mutual TLS and each agent
/// encrypts with its own key) into chunk messages until the end or until the
/// receiving side hangs up. Returns the bytes read.
fn stream_file(
    file: ArchiveReader,
    zstd: bool,
    chunk_bytes: usize,
    sender: &mpsc::Sender<PushReplicaRequest>,
) -> Result<u64, Error> {
    let mut read_total = 0u64;
    let mut source: Box<dyn Read> = if zstd {
        Box::new(
            zstd::stream::read::Encoder::new(file, 1)
                .map_err(|e| Error::io("compressing", "archive", e))?,
        )
    } else {
        Box::new(file)
    };
    loop {
        let mut chunk = vec![0u8; chunk_bytes];
        let mut filled = 0;
        while filled < chunk_bytes {
            let read = source
                .read(&mut chunk[filled..])
                .map_err(|e| Error::from_read("reading", "archive", e))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            return Ok(read_total);
        }
        chunk.truncate(filled);
        read_total += filled as u64;
        let message = PushReplicaRequest {
            message: Some(push_replica_request::Message::Chunk(chunk.into())),
        };
        if sender.blocking_send(message).is_err() {
            return Ok(read_total);
        }
    }
}

/// Failures a later attempt can get past: the network, a restarting peer, a
/// transfer of the same archive still running there.
fn is_retryable(err: &Error) -> bool {
    match err {
        Error::Peer {
            step: "connecting", ..
        } => true,
        Error::Peer { message, .. } => [
            "Unavailable",
            "Aborted",
            "DeadlineExceeded",
            "Cancelled",
            "Unknown",
        ]
        .iter()
        .any(|code| message.starts_with(code)),
        _ => false,
    }
}

fn failure_reason(err: &Error) -> &'static str {
    match err {
        Error::Peer {
            step: "connecting", ..
        } => "unreachable",
        Error::Peer { message, .. } if message.starts_with("DataLoss") => "corrupt",
        Error::Peer { message, .. } if message.starts_with("ResourceExhausted") => "peer_full",
        Error::Peer { message, .. } if message.starts_with("Unauthenticated") => "unauthenticated",
        Error::Peer { .. } => "peer_error",
        _ => "local_error",
    }
}

/// `Code: message`, with the code first so retry decisions can read it.
fn status_message(status: &tonic::Status) -> String {
    let code = match status.code() {
        Code::Unknown => {
            // Transport failures (TLS refused, connection reset) arrive as Unknown.
            return format!("Unknown: {}", error_chain(status));
        }
        code => format!("{code:?}"),
    };
    format!("{code}: {}", status.message())
}
