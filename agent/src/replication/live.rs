//! Replicating an archive while it is being stored: the thread that reads
//! the runtime's checkpoint file and stores it hands every chunk to a
//! [`Tee`] too, which sends it to each peer. So the bytes are read once
//! and hashed once (by the store), and the standbys verify the archive
//! about when the store has it, instead of a transfer after the store.
//!
//! The hash, and so the archive's id, is known only at the end: the stream
//! runs under a random transfer id and a trailer names the archive. The
//! receiver verifies the bytes against that name before anything becomes
//! visible, as for any replica. A peer that cannot keep up (nothing taken
//! for the stall timeout), has no free transfer slot, or whose stream
//! breaks, gets the stored archive afterwards, resuming under the same
//! transfer id where its stream stopped.
//!
//! Memory stays bounded: each peer's queue holds a few chunks, and the
//! chunks are shared between the peers.

use std::io::Write;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::*;
use crate::store::ArchiveMeta;

/// Feeds the live streams of one archive; owned by the storing thread.
/// Dropped without [`Tee::finish`] (the store failed), every stream ends
/// without a trailer and the peers keep nothing visible.
pub struct Tee {
    feeds: Vec<Option<mpsc::Sender<PushReplicaRequest>>>,
    encoder: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    stall: Duration,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("streams", &self.feeds.iter().flatten().count())
            .finish_non_exhaustive()
    }
}

impl Tee {
    /// Hands the next archive bytes to every peer still in the stream.
    /// Blocking, from the storing thread: it waits for the slowest peer, at
    /// most the stall timeout per chunk, and drops a peer that took nothing
    /// for that long.
    pub fn send(&mut self, chunk: &Bytes) {
        if self.feeds.iter().all(Option::is_none) {
            return;
        }
        match &mut self.encoder {
            Some(encoder) => {
                if encoder.write_all(chunk).is_err() {
                    self.feeds.fill(None);
                    return;
                }
                if encoder.get_ref().len() >= CHUNK_BYTES {
                    let compressed = Bytes::from(std::mem::take(encoder.get_mut()));
                    self.broadcast(&chunk_message(compressed));
                }
            }
            None => self.broadcast(&chunk_message(chunk.clone())),
        }
    }

    /// Ends every stream still running with the archive's id, which each
    /// peer verifies the bytes against.
    pub fn finish(mut self, archive_id: &str) {
        if let Some(encoder) = self.encoder.take() {
            match encoder.finish() {
                Ok(rest) if !rest.is_empty() => self.broadcast(&chunk_message(rest.into())),
                Ok(_) => {}
                Err(_) => {
                    self.feeds.fill(None);
                    return;
                }
            }
        }
        self.broadcast(&trailer(archive_id));
    }

    fn broadcast(&mut self, message: &PushReplicaRequest) {
        let Self {
            feeds,
            stall,
            handle,
            ..
        } = self;
        for feed in feeds.iter_mut() {
            let Some(sender) = feed else {
                continue;
            };
            let sent = handle.block_on(tokio::time::timeout(*stall, sender.send(message.clone())));
            if !matches!(sent, Ok(Ok(()))) {
                // Too slow or gone: it gets the stored archive afterwards.
                *feed = None;
            }
        }
    }
}

/// How one peer's live stream ended.
#[derive(Debug)]
pub struct LiveOutcome {
    peer: PeerTarget,
    result: Result<u64, Error>,
    elapsed: Duration,
}

impl Replicator {
    /// Opens a stream to each peer for an archive about to be stored.
    /// `transfer` is its record with a transfer id for its id and the size
    /// it will have. Returns the tee for the storing thread and the streams
    /// to await beside it. A peer without a free transfer slot gets no
    /// stream (and the stored archive afterwards).
    pub fn live<'a>(
        &'a self,
        transfer: &ArchiveMeta,
        peers: &'a [PeerTarget],
    ) -> (
        Tee,
        impl std::future::Future<Output = Vec<LiveOutcome>> + 'a,
    ) {
        let mut feeds = Vec::new();
        let mut streams = Vec::new();
        for peer in peers {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                continue;
            };
            let (sender, receiver) = mpsc::channel(QUEUED_CHUNKS);
            let header = PushReplicaRequest {
                message: Some(push_replica_request::Message::Header(ReplicaHeader {
                    archive: Some(convert::archive_to_proto(transfer)),
                    offset: 0,
                    zstd: self.config.zstd,
                    id_follows: true,
                })),
            };
            // A fresh channel has room for the header.
            let _ = sender.try_send(header);
            feeds.push(Some(sender));
            streams.push(self.stream_live(peer, receiver, permit));
        }
        let encoder = self
            .config
            .zstd
            .then(|| zstd::stream::write::Encoder::new(Vec::new(), 1).ok())
            .flatten();
        if self.config.zstd && encoder.is_none() {
            feeds.fill(None);
        }
        let tee = Tee {
            feeds,
            encoder,
            stall: self.config.stall_timeout,
            handle: tokio::runtime::Handle::current(),
        };
        (tee, futures::future::join_all(streams))
    }

    async fn stream_live(
        &self,
        peer: &PeerTarget,
        chunks: mpsc::Receiver<PushReplicaRequest>,
        _permit: OwnedSemaphorePermit,
    ) -> LiveOutcome {
        let started = Instant::now();
        let stall = self.config.stall_timeout;
        let result = match self.client(&peer.node_name, &peer.endpoint).await {
            Err(message) => Err(peer.error("connecting", message)),
            Ok(mut client) => {
                let (stream, progress) = Progress::counting(ReceiverStream::new(chunks));
                match until_stalled(client.push_replica(stream), &progress, stall).await {
                    Some(Ok(response)) => Ok(response.into_inner().bytes_received),
                    Some(Err(status)) => Err(peer.error("streaming", status_message(&status))),
                    None => Err(peer.error("streaming", stalled(stall))),
                }
            }
        };
        LiveOutcome {
            peer: peer.clone(),
            result,
            elapsed: started.elapsed(),
        }
    }

    /// Each peer's outcome for archive `id` after its live streams under
    /// `transfer` ended: verified by the stream, or by a transfer of the
    /// stored archive that resumes where the stream stopped.
    pub async fn settle_live(
        &self,
        id: &str,
        transfer: &str,
        peers: &[PeerTarget],
        live: Vec<LiveOutcome>,
    ) -> Vec<Outcome> {
        futures::future::join_all(peers.iter().map(|peer| {
            let streamed = live.iter().find(|o| o.peer == *peer);
            self.settle_one(id, transfer, peer, streamed)
        }))
        .await
    }

    async fn settle_one(
        &self,
        id: &str,
        transfer: &str,
        peer: &PeerTarget,
        streamed: Option<&LiveOutcome>,
    ) -> Outcome {
        match streamed {
            Some(LiveOutcome {
                result: Ok(bytes),
                elapsed,
                ..
            }) => {
                self.metrics
                    .replication_finished(&peer.node_name, *bytes, *elapsed, None);
                tracing::info!(
                    archive = id, peer = %peer.node_name, bytes, elapsed_ms = elapsed.as_millis() as u64,
                    "replica streamed while stored, and verified by peer"
                );
                Outcome {
                    node_name: peer.node_name.clone(),
                    result: Ok(()),
                    bytes_sent: *bytes,
                    resumed_from: 0,
                    elapsed: *elapsed,
                }
            }
            Some(LiveOutcome {
                result: Err(err), ..
            }) => {
                self.forget(&peer.endpoint);
                self.metrics
                    .replication_attempt_failed(&peer.node_name, failure_reason(err));
                tracing::warn!(archive = id, peer = %peer.node_name, error = %err,
                    "live stream failed; sending the stored archive, resuming");
                self.replicate_to(id, Some(transfer), peer).await
            }
            None => self.replicate_to(id, None, peer).await,
        }
    }
}
