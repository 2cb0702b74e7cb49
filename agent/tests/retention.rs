//! Retention on every node that holds a copy, with real agent processes on
//! loopback: standbys keep only the policy's newest archives, `maxAge` runs
//! out without a new checkpoint, archives of pods that no longer exist go,
//! and a partial replica whose sender never comes back is swept.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{AgentProcess, Pki, listed};
use ferry_proto::v1 as pb;
use tonic::Code;

const MIB: u64 = 1 << 20;
const POD_UID: &str = "3f2a1b4c-0000-4000-8000-000000000001";

fn checkpoint_request(peers: Vec<pb::Peer>, retention: pb::Retention) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        policy: "default/counter".into(),
        container: Some(pb::ContainerRef {
            namespace: "default".into(),
            pod: "counter-7d9c".into(),
            pod_uid: POD_UID.into(),
            container: "app".into(),
        }),
        peers,
        timeout_seconds: 30,
        retention: Some(retention),
        state_api: None,
        content_hash: pb::ContentHash::Blake3.into(),
    }
}

fn keep(keep: u32) -> pb::Retention {
    pb::Retention {
        keep,
        ..Default::default()
    }
}

fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Checkpoints on `source`, replicated to `peers`; the archive id.
async fn checkpoint(
    pki: &Pki,
    source: &AgentProcess,
    peers: Vec<pb::Peer>,
    retention: pb::Retention,
) -> String {
    let response = common::checkpoint_announced(pki, source, checkpoint_request(peers, retention))
        .await
        .unwrap_or_else(|s| panic!("checkpoint: {s}\n{}", source.log_text()))
        .into_inner();
    assert!(
        response.replicas.iter().all(|r| r.ok),
        "{:?}",
        response.replicas
    );
    response.archive.unwrap().id
}

async fn wait_until_listed(agent: &AgentProcess, expected: &[String], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut held = listed(agent);
        held.sort();
        let mut want = expected.to_vec();
        want.sort();
        if held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} holds {held:?}, expected {want:?}\n{}",
            agent.name,
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_keeps_only_the_newest_archives_the_policy_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), MIB, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(checkpoint(&pki, &a, vec![b.peer()], keep(2)).await);
    }
    let newest = ids[3..].to_vec();
    wait_until_listed(&a, &newest, "the source").await;
    wait_until_listed(&b, &newest, "the standby").await;

    // The rules travel with the archive: the standby reports what it applies.
    let archive = common::listed_archive(&b, &ids[4]);
    assert_eq!(archive.retention.map(|r| r.keep), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_runs_out_on_the_standby_without_a_new_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), MIB, &[]).await;
    let sweep = ["--store-sweep-interval=1s"];
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &sweep).await;

    let rules = pb::Retention {
        keep: 10,
        max_age_seconds: 2,
        ..Default::default()
    };
    let older = checkpoint(&pki, &a, vec![b.peer()], rules).await;
    let newest = checkpoint(&pki, &a, vec![b.peer()], rules).await;
    let both = [older, newest.clone()];
    let mut held = listed(&b);
    held.sort();
    let mut expected = both.to_vec();
    expected.sort();
    assert_eq!(held, expected, "both are younger than maxAge at first");
    // No checkpoint comes any more; the sweep alone lets the older one go,
    // and the newest stays whatever its age (a failover needs it).
    wait_until_listed(&b, &[newest], "after maxAge ran out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_of_gone_pods_go_and_those_of_live_pods_stay() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), MIB, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    let id = checkpoint(&pki, &a, vec![b.peer()], keep(3)).await;
    let mut client = pki.controller(&b.endpoint).await;
    let prune = |live: Vec<String>, taken_before_millis| pb::DeleteArchivesRequest {
        archive_ids: Vec::new(),
        policy: "default/counter".into(),
        gone_pods: Some(pb::GonePods {
            live_pod_uids: live,
            taken_before_millis,
        }),
    };

    let deleted = |r: pb::DeleteArchivesResponse| r.deleted;
    let live = client
        .delete_archives(prune(vec![POD_UID.into()], now_millis() + 60_000))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted(live).is_empty(), "the pod is live");
    let too_new = client
        .delete_archives(prune(Vec::new(), now_millis() - 60_000))
        .await
        .unwrap()
        .into_inner();
    assert!(
        deleted(too_new).is_empty(),
        "taken after the caller's view was taken"
    );
    let other_policy = client
        .delete_archives(pb::DeleteArchivesRequest {
            policy: "default/other".into(),
            ..prune(Vec::new(), now_millis() + 60_000)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted(other_policy).is_empty(), "another policy's pods");
    assert_eq!(listed(&b), vec![id.clone()]);

    let gone = client
        .delete_archives(prune(Vec::new(), now_millis() + 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted(gone), vec![id]);
    assert!(listed(&b).is_empty());

    let status = client
        .delete_archives(pb::DeleteArchivesRequest {
            policy: String::new(),
            ..prune(Vec::new(), now_millis())
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("gone_pods"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_replica_whose_sender_never_returns_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let flags = ["--store-sweep-interval=1s", "--partial-transfer-ttl=2s"];
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &flags).await;
    let incoming = b.data_dir.join("incoming");
    let id = "ab".repeat(32);
    let header = pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Header(
            pb::ReplicaHeader {
                archive: Some(pb::Archive {
                    id: id.clone(),
                    policy: "default/counter".into(),
                    container: checkpoint_request(vec![], keep(1)).container,
                    source_node: "node-a".into(),
                    size_bytes: 4 * MIB,
                    ..Default::default()
                }),
                offset: 0,
                zstd: false,
                id_follows: false,
            },
        )),
    };
    let chunk = pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Chunk(
            vec![7u8; MIB as usize].into(),
        )),
    };
    let expected = pb::Archive {
        source_node: "node-a".into(),
        policy: "default/counter".into(),
        container: checkpoint_request(vec![], keep(1)).container,
        ..Default::default()
    };
    common::announce(&pki, &expected, &b.peer()).await;
    let (sender, stream) = tokio::sync::mpsc::channel(4);
    sender.send(header).await.unwrap();
    sender.send(chunk).await.unwrap();
    // node-a's agent, sending and then never returning.
    let mut client = pki.as_agent(&b.endpoint, "node-a").await;
    let push = tokio::spawn(async move {
        client
            .push_replica(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    let part = incoming.join(format!("{id}.part"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < MIB {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A transfer in progress is never swept, however long it takes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(part.exists(), "a live transfer lost its partial file");

    // The sender vanishes mid-transfer and never resumes.
    push.abort();
    drop(sender);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&incoming).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the partial replica stayed: {:?}\n{}",
            std::fs::read_dir(&incoming)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect::<Vec<_>>(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed(&b).is_empty());
}
