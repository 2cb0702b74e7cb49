//! Replication while the checkpoint is stored (`replication/live.rs`), with
//! real agent processes on loopback: a sender killed mid-stream, and a
//! standby that drops out of the stream and joins again.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{AgentProcess, ContentHash, Pki, checkpoint_request, listed};
use ferry_proto::v1 as pb;

const MIB: u64 = 1 << 20;

/// A checkpoint on `source`, announced to its peers as the controller does,
/// running in the background.
fn in_background(
    pki: &Pki,
    source: &AgentProcess,
    request: pb::CheckpointRequest,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::CheckpointResponse>, tonic::Status>> {
    tokio::spawn(common::checkpoint_announced_at(
        pki.clone(),
        source.name.clone(),
        source.endpoint.clone(),
        request,
    ))
}

/// The partial replica files in `data_dir`'s incoming directory.
fn partials(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("incoming"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "part"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `data_dir` holds a partial replica of at least `bytes`;
/// returns its path.
async fn partial_of_at_least(data_dir: &Path, bytes: u64) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(part) = partials(data_dir)
            .into_iter()
            .find(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) >= bytes)
        {
            return part;
        }
        assert!(Instant::now() < deadline, "no stream reached {bytes} bytes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_while_streaming_leaves_nothing_visible_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 512 * MIB, &[]).await;
    let b = AgentProcess::start(
        &pki,
        "node-b",
        &dir.path().join("b"),
        0,
        &["--store-sweep-interval=1s", "--partial-transfer-ttl=3s"],
    )
    .await;

    let checkpoint = in_background(&pki, &a, checkpoint_request(vec![b.peer()]));
    // The standby holds part of the stream: the sender has not finished
    // storing (it stores as it sends), and is killed now.
    let part = partial_of_at_least(&b.data_dir, 16 * MIB).await;
    a.kill();
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        checkpoint.await.unwrap().is_err(),
        "the call died with its agent"
    );
    assert!(held < 512 * MIB, "killed mid-stream ({held} bytes)");
    assert!(
        listed(&b).is_empty(),
        "nothing of an unfinished stream is visible"
    );
    // Nobody resumes a transfer whose sender died before it stored the
    // archive: the partial goes after the TTL.
    let deadline = Instant::now() + Duration::from_secs(30);
    while part.exists() {
        assert!(Instant::now() < deadline, "the orphaned partial stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The restarted sender keeps nothing half-stored and checkpoints again.
    a.restart(&pki).await;
    let response = common::checkpoint_announced(&pki, &a, checkpoint_request(vec![b.peer()]))
        .await
        .unwrap_or_else(|s| panic!("checkpoint after the restart: {s}\n{}", a.log_text()))
        .into_inner();
    let archive = response.archive.unwrap();
    assert!(response.replicas[0].ok, "{}", response.replicas[0].error);
    assert_eq!(listed(&a), vec![archive.id.clone()]);
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    ferry_agent::store::Store::open(&b.data_dir, u64::MAX)
        .unwrap()
        .verify(&archive.id)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_drops_out_of_the_stream_joins_again_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let stall = ["--peer-stall-timeout=2s"];
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 512 * MIB, &stall).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &stall).await;
    let c = AgentProcess::start(&pki, "node-c", &dir.path().join("c"), 0, &stall).await;

    let checkpoint = in_background(&pki, &a, checkpoint_request(vec![b.peer(), c.peer()]));
    // c stops answering mid-stream; the stream goes on to b, and c is
    // dropped from it once it took nothing for the stall timeout.
    let part = partial_of_at_least(&c.data_dir, 8 * MIB).await;
    c.freeze();
    let held = std::fs::metadata(&part).unwrap().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.thaw();

    let response = checkpoint
        .await
        .unwrap()
        .unwrap_or_else(|s| panic!("checkpoint: {s}\n{}", a.log_text()))
        .into_inner();
    let archive = response.archive.unwrap();
    let outcome = |node: &str| {
        response
            .replicas
            .iter()
            .find(|r| r.node_name == node)
            .unwrap()
            .clone()
    };
    let (on_b, on_c) = (outcome("node-b"), outcome("node-c"));
    assert!(on_b.ok && on_c.ok, "{on_b:?} {on_c:?}\n{}", a.log_text());
    assert_eq!(on_b.resumed_from, 0, "b took the whole stream");
    // It may have taken in a little more from its socket once thawed.
    assert!(
        on_c.resumed_from >= held,
        "c resumed from {}, though it held {held} bytes",
        on_c.resumed_from
    );
    eprintln!(
        "c dropped out at {held} bytes and resumed from {}",
        on_c.resumed_from
    );
    for peer in [&b, &c] {
        assert_eq!(listed(peer), vec![archive.id.clone()], "{}", peer.name);
        ferry_agent::store::Store::open(&peer.data_dir, u64::MAX)
            .unwrap()
            .verify(&archive.id)
            .unwrap();
        assert!(
            partials(&peer.data_dir).is_empty(),
            "{} keeps no partial",
            peer.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requested_hash_names_streams_and_verifies_the_archive() {
    // Unset is what an older controller sends; sha256 is what this one asks
    // for while a standby's agent knows only sha256 (a rolling upgrade).
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 24 * MIB, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    for (asked, named) in [
        (pb::ContentHash::Unspecified, ContentHash::Sha256),
        (pb::ContentHash::Sha256, ContentHash::Sha256),
        (pb::ContentHash::Blake3, ContentHash::Blake3),
    ] {
        let mut request = checkpoint_request(vec![b.peer()]);
        request.content_hash = asked.into();
        let response = in_background(&pki, &a, request)
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("{asked:?}: {s}\n{}", a.log_text()))
            .into_inner();
        let id = response.archive.unwrap().id;
        assert_eq!(ContentHash::of_id(&id), Some(named), "{asked:?}: {id}");
        let replica = &response.replicas[0];
        assert!(replica.ok, "{asked:?}: {}", replica.error);
        assert!(listed(&b).contains(&id), "{asked:?}");
        for node in [&a, &b] {
            let bytes =
                std::fs::read(node.data_dir.join("archives").join(format!("{id}.tar"))).unwrap();
            assert_eq!(named.id_of_bytes(&bytes), id, "{asked:?} on {}", node.name);
        }
    }
}
