//! Peers that try to exhaust a node, with real agent processes on
//! loopback: a replica declared larger than the disk or the node's quota,
//! and more concurrent streams than the agent takes. Each is refused before
//! a byte is written, and transfers already running are not disturbed. The
//! hostile peer holds a valid agent certificate (node-evil) and the
//! controller announced its container: a compromised node, the worst case.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{AgentProcess, ContentHash, Pki, import_archive, listed, replicate_to};
use ferry_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const MIB: u64 = 1 << 20;

const EVIL: &str = "node-evil";

fn archive(id: &str, size_bytes: u64) -> pb::Archive {
    pb::Archive {
        id: id.to_owned(),
        policy: "default/counter".into(),
        container: Some(pb::ContainerRef {
            namespace: "default".into(),
            pod: "counter-0".into(),
            pod_uid: "3f2a1b4c-0000-4000-8000-000000000001".into(),
            container: "app".into(),
        }),
        source_node: EVIL.into(),
        size_bytes,
        ..Default::default()
    }
}

fn header(id: &str, size_bytes: u64) -> pb::PushReplicaRequest {
    pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Header(
            pb::ReplicaHeader {
                archive: Some(archive(id, size_bytes)),
                offset: 0,
                zstd: false,
                id_follows: false,
            },
        )),
    }
}

/// The controller tells `agent` to accept node-evil's replicas.
async fn announce_evil(pki: &Pki, agent: &AgentProcess) {
    common::announce(pki, &archive("", 0), &agent.peer()).await;
}

fn chunk(bytes: usize) -> pb::PushReplicaRequest {
    pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Chunk(
            vec![0x5a; bytes].into(),
        )),
    }
}

/// A stream that sent its header and one chunk and then stays open.
struct Hanging {
    _sender: mpsc::Sender<pb::PushReplicaRequest>,
    call: tokio::task::JoinHandle<Result<tonic::Response<pb::PushReplicaResponse>, tonic::Status>>,
}

async fn hanging_stream(pki: &Pki, agent: &AgentProcess, id: &str, size: u64) -> Hanging {
    announce_evil(pki, agent).await;
    let (sender, stream) = mpsc::channel(4);
    sender.send(header(id, size)).await.unwrap();
    sender.send(chunk(64 * 1024)).await.unwrap();
    let mut client = pki.as_agent(&agent.endpoint, EVIL).await;
    let call = tokio::spawn(async move { client.push_replica(ReceiverStream::new(stream)).await });
    let part = agent.data_dir.join("incoming").join(format!("{id}.part"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "stream {id} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Hanging {
        _sender: sender,
        call,
    }
}

async fn push_refusal(pki: &Pki, agent: &AgentProcess, id: &str, size: u64) -> tonic::Status {
    announce_evil(pki, agent).await;
    let mut client = pki.as_agent(&agent.endpoint, EVIL).await;
    client
        .push_replica(tokio_stream::iter(vec![header(id, size), chunk(1024)]))
        .await
        .expect_err("the replica must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_declared_larger_than_the_disk_or_quota_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let quota = format!("--store-quota-bytes={}", 12 * MIB);
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[&quota]).await;

    // Larger than any archive may be: refused at once.
    let status = push_refusal(&pki, &b, &"aa".repeat(32), 1 << 50).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("the store accepts at most"),
        "{status}"
    );
    // Larger than the quota (and than this disk): refused before a byte.
    let status = push_refusal(&pki, &b, &"ab".repeat(32), 40 << 30).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("refused"), "{status}");
    assert_eq!(
        std::fs::read_dir(b.data_dir.join("incoming"))
            .unwrap()
            .count(),
        0,
        "a refused replica writes nothing"
    );

    // Within the quota: stored. Beyond it: refused, naming the quota.
    let first = import_archive(&a.data_dir, 8 * MIB, 1);
    let second = import_archive(&a.data_dir, 8 * MIB, 2);
    let outcome = replicate_to(&pki, &a, &first, b.peer()).await;
    assert!(outcome.ok, "{}", outcome.error);
    let outcome = replicate_to(&pki, &a, &second, b.peer()).await;
    assert!(!outcome.ok);
    assert!(
        outcome.error.contains("quota of 12582912 bytes"),
        "{}",
        outcome.error
    );
    assert_eq!(listed(&b), vec![first.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_allowed_are_refused_and_the_running_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let b = AgentProcess::start(
        &pki,
        "node-b",
        &dir.path().join("b"),
        0,
        &["--max-incoming-transfers=2"],
    )
    .await;

    // A peer holds both slots with streams it never finishes.
    let one = hanging_stream(&pki, &b, &"01".repeat(32), 4 * MIB).await;
    let two = hanging_stream(&pki, &b, &"02".repeat(32), 4 * MIB).await;
    let status = push_refusal(&pki, &b, &"03".repeat(32), 4 * MIB).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(
        status
            .message()
            .contains("2 incoming transfers are already running"),
        "{status}"
    );

    // The hanging streams end (the peer is cut off); a real replica then
    // gets through, verified, and nothing of the others became visible.
    one.call.abort();
    two.call.abort();
    drop((one, two));
    let archive = import_archive(&a.data_dir, 2 * MIB, 9);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = replicate_to(&pki, &a, &archive, b.peer()).await;
        if outcome.ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slots never came free: {}",
            outcome.error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(listed(&b), vec![archive.id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cannot_rename_or_smuggle_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    announce_evil(&pki, &b).await;
    let trailer = |id: &str| pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Trailer(
            pb::ReplicaTrailer {
                archive_id: id.to_owned(),
            },
        )),
    };
    let streamed = |id: &str| {
        let mut message = header(id, 1024);
        if let Some(pb::push_replica_request::Message::Header(h)) = &mut message.message {
            h.id_follows = true;
        }
        message
    };
    let bytes_id = ContentHash::Sha256.id_of_bytes(&[0x5a; 1024]);
    let bytes_blake3 = ContentHash::Blake3.id_of_bytes(&[0x5a; 1024]);
    let push = |messages: Vec<pb::PushReplicaRequest>| {
        let pki = pki.clone();
        let endpoint = b.endpoint.clone();
        async move {
            pki.as_agent(&endpoint, EVIL)
                .await
                .push_replica(tokio_stream::iter(messages))
                .await
        }
    };
    let cases = [
        // A trailer where the header named the archive itself.
        (
            vec![header(&bytes_id, 1024), chunk(1024), trailer(&bytes_id)],
            Code::InvalidArgument,
            "only chunks may follow",
        ),
        // Chunks after the trailer, or a second trailer.
        (
            vec![
                streamed(&"c1".repeat(32)),
                chunk(512),
                trailer(&bytes_id),
                chunk(512),
            ],
            Code::InvalidArgument,
            "then one trailer",
        ),
        (
            vec![
                streamed(&"c2".repeat(32)),
                chunk(1024),
                trailer(&bytes_id),
                trailer(&bytes_id),
            ],
            Code::InvalidArgument,
            "then one trailer",
        ),
        // A trailer that names other bytes than were sent.
        (
            vec![
                streamed(&"c3".repeat(32)),
                chunk(1024),
                trailer(&"dd".repeat(32)),
            ],
            Code::DataLoss,
            "",
        ),
        // The right bytes named by the other hash than the transfer id's
        // form asked the receiver to compute: it cannot vouch for them.
        (
            vec![
                streamed(&format!("blake3-{}", "c7".repeat(32))),
                chunk(1024),
                trailer(&bytes_id),
            ],
            Code::DataLoss,
            "",
        ),
        (
            vec![
                streamed(&"c8".repeat(32)),
                chunk(1024),
                trailer(&bytes_blake3),
            ],
            Code::DataLoss,
            "",
        ),
        // A name that is not an archive id.
        (
            vec![
                streamed(&"c4".repeat(32)),
                chunk(1024),
                trailer("../../etc/passwd"),
            ],
            Code::InvalidArgument,
            "trailer.archive_id",
        ),
    ];
    for (messages, code, says) in cases {
        let status = push(messages).await.expect_err("refused");
        assert_eq!(status.code(), code, "{status}");
        assert!(status.message().contains(says), "{status}");
    }
    // A streamed transfer that ends without its trailer stores nothing.
    let status = push(vec![streamed(&"c5".repeat(32)), chunk(1024)])
        .await
        .expect_err("no trailer, no archive");
    assert!(status.message().contains("ended early"), "{status}");
    assert!(listed(&b).is_empty(), "{:?}", listed(&b));
    // The same bytes, named right, are stored under their hash.
    let stored = push(vec![
        streamed(&"c6".repeat(32)),
        chunk(1024),
        trailer(&bytes_id),
    ])
    .await
    .unwrap_or_else(|s| panic!("{s}\n{}", b.log_text()))
    .into_inner();
    assert_eq!(stored.archive.unwrap().id, bytes_id);
    assert_eq!(listed(&b), vec![bytes_id.clone()]);
    // And under their BLAKE3 id, streamed under a BLAKE3 transfer id.
    let stored = push(vec![
        streamed(&format!("blake3-{}", "c9".repeat(32))),
        chunk(1024),
        trailer(&bytes_blake3),
    ])
    .await
    .unwrap_or_else(|s| panic!("{s}\n{}", b.log_text()))
    .into_inner();
    assert_eq!(stored.archive.unwrap().id, bytes_blake3);
    let mut both = vec![bytes_id, bytes_blake3];
    both.sort();
    let mut held = listed(&b);
    held.sort();
    assert_eq!(held, both);
}
