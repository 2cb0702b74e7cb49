//! Sending archives to peer agents.
//!
//! A transfer streams the archive in 1 MiB chunks read by a blocking task
//! into a channel of a few chunks, so memory stays bounded whatever the
//! archive's size. Before sending, the sender asks the peer how much it
//! already holds and continues from there; failed attempts are retried with
//! backoff. The receiver verifies the content hash before the archive becomes
//! visible, so the sender does not hash again.
//!
//! A peer that stops moving (its node gone without closing the connection,
//! its process frozen, its disk hung) is noticed within the stall timeout:
//! every call has a deadline, a push that moves no data for that long is
//! abandoned and retried (resuming), and HTTP/2 keepalive pings close a
//! connection whose peer no longer answers.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::v1::agent_client::AgentClient;
use ferry_proto::v1::{
    GetReplicaOffsetRequest, PushReplicaRequest, ReplicaHeader, ReplicaTrailer,
    push_replica_request,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::lock;
pub use live::{LiveOutcome, Tee};

mod live;
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

impl PeerTarget {
    /// What went wrong with this peer, at which step.
    fn error(&self, step: &'static str, message: String) -> Error {
        Error::Peer {
            peer: self.node_name.clone(),
            endpoint: self.endpoint.clone(),
            step,
            message,
        }
    }
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
    /// A call to a peer that makes no progress for this long is abandoned.
    pub stall_timeout: Duration,
}

/// Default of [`ReplicationConfig::stall_timeout`]: a transfer moves 1 MiB
/// chunks, so a healthy one is never this long without progress, even on a
/// slow disk.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 2,
            attempts: 4,
            backoff: Duration::from_millis(500),
            zstd: false,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
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
                let channel = connect_channel(
                    &self.tls,
                    node,
                    endpoint,
                    self.config.connect_timeout,
                    self.config.stall_timeout,
                )
                .await?;
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
        futures::future::join_all(peers.iter().map(|peer| self.replicate_to(id, None, peer))).await
    }

    /// Sends archive `id`, stored, to `peer`. With `transfer`, the peer
    /// holds (part of) it under that transfer id from a live stream
    /// ([`Replicator::live`]): the transfer resumes there and names the
    /// archive in its trailer.
    async fn replicate_to(&self, id: &str, transfer: Option<&str>, peer: &PeerTarget) -> Outcome {
        let started = Instant::now();
        let _permit = self.permits.acquire().await;
        let mut bytes_sent = 0;
        let mut last_error = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            match self.push_once(id, transfer, peer).await {
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
                    self.metrics
                        .replication_attempt_failed(&peer.node_name, failure_reason(&err));
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
    async fn push_once(
        &self,
        id: &str,
        transfer: Option<&str>,
        peer: &PeerTarget,
    ) -> Result<Sent, (Error, u64)> {
        let mut client = self
            .client(&peer.node_name, &peer.endpoint)
            .await
            .map_err(|message| (peer.error("connecting", message), 0))?;
        let stall = self.config.stall_timeout;
        let offset = tokio::time::timeout(
            stall,
            client.get_replica_offset(GetReplicaOffsetRequest {
                archive_id: transfer.unwrap_or(id).to_owned(),
            }),
        )
        .await
        .map_err(|_| {
            (
                peer.error("asking for the resume offset", stalled(stall)),
                0,
            )
        })?
        .map_err(|status| {
            (
                peer.error("asking for the resume offset", status_message(&status)),
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
                .map_err(|e| (peer.error("reading the archive", e.to_string()), 0))?
                .map_err(|e| (e, 0))?
        };
        if offset.offset > meta.size_bytes {
            return Err((
                peer.error(
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
        let mut announced = convert::archive_to_proto(&meta);
        if let Some(transfer) = transfer {
            announced.id = transfer.to_owned();
        }
        let header = PushReplicaRequest {
            message: Some(push_replica_request::Message::Header(ReplicaHeader {
                archive: Some(announced),
                offset: offset.offset,
                zstd: self.config.zstd,
                id_follows: transfer.is_some(),
            })),
        };
        sender
            .send(header)
            .await
            .map_err(|_| (peer.error("sending", "stream closed".into()), 0))?;
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
        let trailer = transfer.map(|_| trailer(id));
        let reader = tokio::task::spawn_blocking(move || {
            let read = stream_file(reader, zstd, chunk_bytes, &sender)?;
            if let Some(trailer) = trailer {
                // Fails only when the peer hung up, which the call reports.
                let _ = sender.blocking_send(trailer);
            }
            Ok(read)
        });
        let (stream, progress) = Progress::counting(ReceiverStream::new(receiver));
        let response = until_stalled(client.push_replica(stream), &progress, stall).await;
        // The reader stops by itself once the stream is dropped.
        let sent = reader.await.unwrap_or(Ok(0));
        match (response, sent) {
            (Some(Ok(_)), Ok(bytes_sent)) => Ok(Sent {
                bytes_sent,
                resumed_from: offset.offset,
            }),
            (Some(Err(status)), sent) => Err((
                peer.error("sending", status_message(&status)),
                sent.unwrap_or(0),
            )),
            (None, sent) => Err((peer.error("sending", stalled(stall)), sent.unwrap_or(0))),
            (Some(Ok(_)), Err(err)) => Err((err, 0)),
        }
    }
}

struct Sent {
    bytes_sent: u64,
    resumed_from: u64,
}

fn chunk_message(chunk: bytes::Bytes) -> PushReplicaRequest {
    PushReplicaRequest {
        message: Some(push_replica_request::Message::Chunk(chunk)),
    }
}

/// The message that names a streamed archive once it is hashed.
fn trailer(id: &str) -> PushReplicaRequest {
    PushReplicaRequest {
        message: Some(push_replica_request::Message::Trailer(ReplicaTrailer {
            archive_id: id.to_owned(),
        })),
    }
}

/// How a stalled call reads: the code first, as a peer's status would.
fn stalled(stall: Duration) -> String {
    format!("DeadlineExceeded: the peer made no progress for {stall:?}")
}

/// Counts what the network side took from an outgoing stream, its end
/// included: the gRPC client takes a message only when HTTP/2 flow control
/// lets it send, so a count that stops moving is a peer that stopped
/// reading.
#[derive(Clone, Debug, Default)]
struct Progress(Arc<std::sync::atomic::AtomicU64>);

impl Progress {
    fn counting<S: futures::Stream + Unpin>(
        mut inner: S,
    ) -> (impl futures::Stream<Item = S::Item>, Self) {
        let progress = Self::default();
        let counter = progress.clone();
        let stream = futures::stream::poll_fn(move |cx| {
            let next = futures::Stream::poll_next(std::pin::Pin::new(&mut inner), cx);
            if next.is_ready() {
                counter.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            next
        });
        (stream, progress)
    }

    fn taken(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `call` until it ends, or until `progress` has not moved for
/// `stall` (then `None`, and the call is dropped, which resets its stream).
/// After the stream's end the peer verifies and stores; that too must end
/// within `stall`.
async fn until_stalled<F: std::future::Future>(
    call: F,
    progress: &Progress,
    stall: Duration,
) -> Option<F::Output> {
    let check_every = (stall / 8).max(Duration::from_millis(10));
    let mut seen = progress.taken();
    let mut moved_at = tokio::time::Instant::now();
    tokio::pin!(call);
    loop {
        tokio::select! {
            output = &mut call => return Some(output),
            () = tokio::time::sleep(check_every) => {
                let now = progress.taken();
                if now != seen {
                    seen = now;
                    moved_at = tokio::time::Instant::now();
                } else if moved_at.elapsed() >= stall {
                    return None;
                }
            }
        }
    }
}

/// Opens a mutual-TLS channel to the agent of `node`.
pub async fn connect(
    tls: &Credentials,
    node: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<AgentClient<Channel>, String> {
    Ok(agent_client(
        connect_channel(tls, node, endpoint, timeout, DEFAULT_STALL_TIMEOUT).await?,
    ))
}

fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel)
        .max_decoding_message_size(4 * CHUNK_BYTES)
        .max_encoding_message_size(4 * CHUNK_BYTES)
}

/// HTTP/2 keepalive of a connection between agents whose calls give up
/// after `stall`: (ping every, close when unanswered after). A ping is
/// answered by the peer process itself, so it finds what TCP does not: a
/// frozen process or a node gone without a reset.
pub fn keepalive(stall: Duration) -> (Duration, Duration) {
    (stall / 4, stall / 2)
}

/// The handshake fails unless the peer's certificate names the agent of
/// `node`: an address in a stale Lease, or a stolen certificate, never gets
/// another node's archive. The connection is closed once the peer stops
/// answering keepalive pings (see [`keepalive`]).
pub(crate) async fn connect_channel(
    tls: &Credentials,
    node: &str,
    endpoint: &str,
    timeout: Duration,
    stall: Duration,
) -> Result<Channel, String> {
    let (ping_every, ping_timeout) = keepalive(stall);
    Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(ping_every))
        .http2_keep_alive_interval(ping_every)
        .keep_alive_timeout(ping_timeout)
        .keep_alive_while_idle(true)
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
        if sender.blocking_send(chunk_message(chunk.into())).is_err() {
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
        Error::Peer { message, .. }
            if message.starts_with("DeadlineExceeded")
                || message.contains("keep-alive timed out") =>
        {
            "stalled"
        }
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
    // A lost connection's cause (a keepalive ping unanswered, a reset) is
    // its source; its message alone says only "http2 error".
    match std::error::Error::source(status) {
        Some(cause) => format!("{code}: {}: {}", status.message(), error_chain(cause)),
        None => format!("{code}: {}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_stream_stops_moving_is_abandoned_after_the_stall_timeout() {
        let (sender, receiver) = mpsc::channel::<u32>(1);
        let (stream, progress) = Progress::counting(ReceiverStream::new(receiver));
        // The peer takes one message, then never reads again.
        let call = async move {
            futures::pin_mut!(stream);
            futures::StreamExt::next(&mut stream).await;
            std::future::pending::<()>().await;
        };
        sender.send(1).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(until_stalled(call, &progress, STALL).await.is_none());
        let waited = started.elapsed();
        assert!(
            waited >= STALL && waited < STALL + STALL / 4,
            "gave up after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_that_keeps_moving_runs_to_its_end() {
        let (sender, receiver) = mpsc::channel::<u32>(1);
        let (stream, progress) = Progress::counting(ReceiverStream::new(receiver));
        // One message every half stall, for ten stalls: slow, never stalled.
        tokio::spawn(async move {
            for n in 0..20 {
                tokio::time::sleep(STALL / 2).await;
                if sender.send(n).await.is_err() {
                    return;
                }
            }
        });
        let call = async move {
            futures::pin_mut!(stream);
            let mut count = 0;
            while futures::StreamExt::next(&mut stream).await.is_some() {
                count += 1;
            }
            count
        };
        assert_eq!(until_stalled(call, &progress, STALL).await, Some(20));
    }

    #[test]
    fn stalls_and_dead_connections_are_retried_and_counted_as_stalls() {
        let peer = |step, message: &str| Error::Peer {
            peer: "node-b".into(),
            endpoint: "10.0.0.2:50051".into(),
            step,
            message: message.into(),
        };
        let stall = peer("sending", &stalled(STALL));
        assert!(is_retryable(&stall));
        assert_eq!(failure_reason(&stall), "stalled");
        let ping = peer(
            "sending",
            "Unavailable: http2 error: keep-alive timed out: operation timed out",
        );
        assert!(is_retryable(&ping));
        assert_eq!(failure_reason(&ping), "stalled");
        let offset = peer("asking for the resume offset", &stalled(STALL));
        assert!(is_retryable(&offset));
    }
}
