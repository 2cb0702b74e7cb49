//! Peers that stop moving without closing anything: a frozen receiver, a
//! sender that went silent mid-stream (as when its node vanishes). Real
//! agent processes; SIGSTOP freezes one with its connections open. Each
//! side gives the transfer up after the stall timeout, the partial replica
//! stays, and the next transfer resumes from it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{AgentProcess, Pki, announce, import_archive, listed, target};
use ferry_agent::metrics::{Metrics, PeerLabels};
use ferry_agent::replication::ReplicationConfig;
use ferry_proto::v1 as pb;
use tonic::Code;

const MIB: u64 = 1 << 20;
const STALL: Duration = Duration::from_secs(2);

fn stall_flag() -> String {
    format!("--peer-stall-timeout={}ms", STALL.as_millis())
}

fn failed_attempts(metrics: &Metrics, peer: &str) -> Vec<(&'static str, u64)> {
    ["stalled", "peer_error", "unreachable"]
        .into_iter()
        .map(|reason| {
            let labels = PeerLabels {
                peer: peer.to_owned(),
                result: reason,
            };
            (
                reason,
                metrics
                    .replication_attempts_failed
                    .get_or_create(&labels)
                    .get(),
            )
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

async fn wait_for_part(part: &std::path::Path, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if held >= bytes {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "transfer never reached {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_receiver_is_given_up_after_the_stall_timeout_and_the_retry_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[&stall_flag()]).await;
    let archive = import_archive(&a.data_dir, 512 * MIB, 21);
    let part = b
        .data_dir
        .join("incoming")
        .join(format!("{}.part", archive.id));
    announce(
        &pki,
        &ferry_agent::convert::archive_to_proto(&archive),
        &b.peer(),
    )
    .await;

    let metrics = Arc::new(Metrics::default());
    let sending = common::sender_with(
        &pki,
        &a,
        None,
        ReplicationConfig {
            stall_timeout: STALL,
            attempts: 8,
            backoff: Duration::from_millis(250),
            connect_timeout: STALL,
            ..ReplicationConfig::default()
        },
        metrics.clone(),
    );
    let (id, to) = (archive.id.clone(), target(&b.peer()));
    let replication = tokio::spawn(async move { sending.replicate(&id, &[to]).await });

    wait_for_part(&part, 32 * MIB).await;
    b.freeze();
    let frozen_at = Instant::now();
    // Without a deadline the sender would wait for as long as B is frozen.
    while failed_attempts(&metrics, "node-b").is_empty() {
        assert!(
            frozen_at.elapsed() < 2 * STALL + Duration::from_secs(1),
            "the sender did not give up on the frozen receiver within {:?}",
            2 * STALL
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = frozen_at.elapsed();
    let held = std::fs::metadata(&part).unwrap().len();
    // B stays frozen past its own stall timeout, then comes back.
    tokio::time::sleep(STALL).await;
    b.thaw();

    let outcome = ferry_agent::convert::outcomes_to_proto(replication.await.unwrap()).remove(0);
    assert!(outcome.ok, "{}\n{}", outcome.error, b.log_text());
    // B wrote what its socket buffers held once thawed: more than `held`.
    assert!(
        outcome.resumed_from > 0 && outcome.resumed_from < archive.size_bytes,
        "resumed from {} of {} bytes ({held} held when frozen)",
        outcome.resumed_from,
        archive.size_bytes
    );
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    eprintln!(
        "receiver frozen at {held} bytes; sender gave up after {noticed:?} ({:?}); the retry resumed from {}",
        failed_attempts(&metrics, "node-b"),
        outcome.resumed_from
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_gone_silent_mid_stream_is_given_up_and_a_resumed_transfer_completes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[&stall_flag()]).await;
    let archive = import_archive(&a.data_dir, 64 * MIB, 22);
    let proto = ferry_agent::convert::archive_to_proto(&archive);
    announce(&pki, &proto, &b.peer()).await;
    let part = b
        .data_dir
        .join("incoming")
        .join(format!("{}.part", archive.id));

    // Node A's agent, as far as B can tell: the header and 8 MiB, then
    // nothing, with the stream left open.
    let store = ferry_agent::store::Store::open(&a.data_dir, u64::MAX).unwrap();
    let (_, mut reader) = store.open_archive(&archive.id, 0).unwrap();
    let (messages, stream) = tokio::sync::mpsc::channel(16);
    messages
        .send(pb::PushReplicaRequest {
            message: Some(pb::push_replica_request::Message::Header(
                pb::ReplicaHeader {
                    archive: Some(proto.clone()),
                    offset: 0,
                    zstd: false,
                    id_follows: false,
                },
            )),
        })
        .await
        .unwrap();
    for _ in 0..8 {
        let mut chunk = vec![0u8; MIB as usize];
        std::io::Read::read_exact(&mut reader, &mut chunk).unwrap();
        messages
            .send(pb::PushReplicaRequest {
                message: Some(pb::push_replica_request::Message::Chunk(chunk.into())),
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    let answer = pki
        .as_agent(&b.peer().endpoint, "node-a")
        .await
        .push_replica(tokio_stream::wrappers::ReceiverStream::new(stream))
        .await;
    let gave_up = started.elapsed();
    let status = answer.expect_err("a silent sender's transfer cannot succeed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no data from the sender"),
        "{}",
        status.message()
    );
    assert!(
        gave_up < STALL + Duration::from_secs(3),
        "B held the transfer for {gave_up:?}"
    );
    drop(messages);
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        held > 0,
        "the partial replica is kept for a resumed transfer"
    );
    assert!(listed(&b).is_empty(), "a partial replica is never visible");

    // The real sender, back: its transfer resumes from what B kept.
    let outcome = common::replicate_to(&pki, &a, &archive, b.peer()).await;
    assert!(outcome.ok, "{}\n{}", outcome.error, b.log_text());
    assert!(
        outcome.resumed_from > 0 && outcome.resumed_from <= held,
        "resumed from {} of {held} bytes kept",
        outcome.resumed_from
    );
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    eprintln!(
        "B gave up on the silent sender after {gave_up:?} with {held} bytes; the resumed transfer sent the other {}",
        archive.size_bytes - held
    );
}
