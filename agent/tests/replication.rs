//! Three (and more) real agent processes on loopback, talking gRPC with
//! mutual TLS: replication, resume after a killed receiver, corruption,
//! authentication, hostile input and a full disk.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::{
    AgentProcess, ContentHash, Pki, checkpoint_request, import_archive, import_archive_with,
    key_flag, listed, replicate_to, write_key,
};
use ferry_proto::v1 as pb;
use tonic::Code;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_archive_replicates_to_two_peers_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), GIB, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    let c = AgentProcess::start(&pki, "node-c", &dir.path().join("c"), 0, &[]).await;

    let response =
        common::checkpoint_announced(&pki, &a, checkpoint_request(vec![b.peer(), c.peer()]))
            .await
            .unwrap_or_else(|s| panic!("checkpoint: {s}\n{}", a.log_text()))
            .into_inner();
    let archive = response.archive.expect("archive");
    assert!(
        archive.size_bytes > GIB,
        "archive holds the 1 GiB memory image"
    );
    assert_eq!(response.replicas.len(), 2);
    for replica in &response.replicas {
        assert!(
            replica.ok,
            "replica to {}: {}",
            replica.node_name, replica.error
        );
        assert_eq!(replica.resumed_from, 0);
        eprintln!(
            "{}: {} bytes in {} ms ({:.0} MiB/s)",
            replica.node_name,
            replica.bytes_sent,
            replica.millis,
            replica.bytes_sent as f64 / MIB as f64 / (replica.millis.max(1) as f64 / 1000.0)
        );
    }
    for peer in [&b, &c] {
        assert_eq!(
            listed(peer),
            vec![archive.id.clone()],
            "{} lists the replica",
            peer.name
        );
        let stored = common::listed_archive(peer, &archive.id);
        assert_eq!(stored, archive, "{} keeps the same metadata", peer.name);
        // The receiver already verified; check again independently.
        let store = ferry_agent::store::Store::open(&peer.data_dir, u64::MAX).unwrap();
        store.verify(&archive.id).unwrap();
        eprintln!("{} peak RSS {} MiB", peer.name, peer.peak_rss_kib() / 1024);
    }
    eprintln!(
        "{} (sender) peak RSS {} MiB",
        a.name,
        a.peak_rss_kib() / 1024
    );
    // The kubelet's (here: the synthetic runtime's) copy is gone.
    let leftovers = std::fs::read_dir(a.data_dir.join("synthetic-checkpoints"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_receiver_leaves_no_visible_partial_and_the_retry_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let mut b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    let archive = import_archive(&a.data_dir, 768 * MIB, 7);
    let part = b
        .data_dir
        .join("incoming")
        .join(format!("{}.part", archive.id));

    common::announce(
        &pki,
        &ferry_agent::convert::archive_to_proto(&archive),
        &b.peer(),
    )
    .await;
    let sending = common::sender(&pki, &a, None, false);
    let (id, target) = (archive.id.clone(), common::target(&b.peer()));
    let replication = tokio::spawn(async move { sending.replicate(&id, &[target]).await });

    // Kill the receiver once a good part of the archive arrived.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 64 * MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "transfer never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.kill();
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        held < archive.size_bytes,
        "killed mid-transfer ({held} bytes)"
    );
    assert!(
        !b.data_dir
            .join("archives")
            .join(format!("{}.json", archive.id))
            .exists(),
        "a partial archive is never visible"
    );

    // The sender retries with backoff; the restarted receiver is back in time.
    b.restart(&pki).await;
    let outcome = ferry_agent::convert::outcomes_to_proto(replication.await.unwrap()).remove(0);
    assert!(outcome.ok, "{}\n{}", outcome.error, a.log_text());
    assert!(
        outcome.resumed_from > 0 && outcome.resumed_from <= held,
        "resumed from {} of {held} held bytes",
        outcome.resumed_from
    );
    eprintln!(
        "receiver killed at {held} bytes; retry resumed from {} and sent {} more bytes",
        outcome.resumed_from,
        archive.size_bytes - outcome.resumed_from
    );
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    assert!(!part.exists(), "the partial file became the archive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_detected_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let c = AgentProcess::start(&pki, "node-c", &dir.path().join("c"), 0, &[]).await;
    let mut client = pki.controller(&a.endpoint).await;
    // Either hash catches it: BLAKE3, and sha256 (an archive an agent from
    // before BLAKE3 stored, which this one still serves).
    for (seed, hash) in [(9, ContentHash::Blake3), (10, ContentHash::Sha256)] {
        let archive = common::import_archive_hashed(&a.data_dir, 32 * MIB, seed, None, hash);
        assert_eq!(ContentHash::of_id(&archive.id), Some(hash));

        // Flip one byte of the stored archive on node A.
        let path = a
            .data_dir
            .join("archives")
            .join(format!("{}.tar", archive.id));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12_345_678] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();

        let outcome = replicate_to(&pki, &a, &archive, c.peer()).await;
        assert!(!outcome.ok, "{hash:?}");
        assert!(
            outcome.error.contains("DataLoss") && outcome.error.contains("is corrupt"),
            "{hash:?}: {}",
            outcome.error
        );
        assert!(listed(&c).is_empty(), "the corrupt replica is not stored");
        let incoming: Vec<_> = std::fs::read_dir(c.data_dir.join("incoming"))
            .unwrap()
            .collect();
        assert!(
            incoming.is_empty(),
            "nothing of the corrupt replica is kept for a resume"
        );

        // A restore from the corrupt archive is refused before anything runs.
        let status = client
            .prepare_restore(pb::PrepareRestoreRequest {
                archive_id: archive.id.clone(),
                failover: String::new(),
                namespace: "default".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{status}");
        assert!(status.message().contains("is corrupt"), "{status}");
    }
    // An intact archive named by sha256 replicates and verifies as before.
    let legacy = common::import_archive_hashed(&a.data_dir, 8 * MIB, 11, None, ContentHash::Sha256);
    let outcome = replicate_to(&pki, &a, &legacy, c.peer()).await;
    assert!(outcome.ok, "{}", outcome.error);
    assert_eq!(listed(&c), vec![legacy.id]);
}

#[tokio::test]
async fn hostile_names_and_ids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let mut client = pki.controller(&a.endpoint).await;
    let long = "a".repeat(10_000);
    let hostile = ["../x", "/etc/passwd", "a\0b", "..", "", long.as_str()];

    for value in hostile {
        let status = client
            .delete_archives(pb::DeleteArchivesRequest {
                archive_ids: vec![value.into()],
                policy: String::new(),
                gone_pods: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");

        let mut request = checkpoint_request(vec![]);
        request.container.as_mut().unwrap().container = value.into();
        let status = client.checkpoint(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");
        assert!(status.message().contains("container.container"), "{status}");

        let mut request = checkpoint_request(vec![]);
        request.container.as_mut().unwrap().pod = value.into();
        let status = client.checkpoint(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");

        let status = client
            .checkpoint(checkpoint_request(vec![pb::Peer {
                node_name: "node-b".into(),
                endpoint: format!("{value}:50051"),
            }]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");

        if !value.is_empty() {
            let status = client
                .delete_archives(pb::DeleteArchivesRequest {
                    policy: value.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");
        }

        // A replica whose header smuggles a path in as the id.
        let header = pb::PushReplicaRequest {
            message: Some(pb::push_replica_request::Message::Header(
                pb::ReplicaHeader {
                    archive: Some(pb::Archive {
                        id: value.into(),
                        policy: "default/counter".into(),
                        container: checkpoint_request(vec![]).container,
                        source_node: "node-b".into(),
                        size_bytes: 3,
                        ..Default::default()
                    }),
                    offset: 0,
                    zstd: false,
                    id_follows: false,
                },
            )),
        };
        let status = pki
            .as_agent(&a.endpoint, "node-b")
            .await
            .push_replica(tokio_stream::iter(vec![header]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value:?}: {status}");
    }
    // Nothing was written anywhere outside the store.
    assert!(listed(&a).is_empty());
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "ferry-test",
                path.to_str().unwrap(),
            ])
            .status()
            .expect("mount runs (the test needs root)");
        assert!(
            status.success(),
            "mounting a tmpfs at {} (the test needs root)",
            path.display()
        );
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_a_clear_error_and_keeps_earlier_archives() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let small_disk = dir.path().join("d");
    let _tmpfs = Tmpfs::mount(&small_disk, "48m");
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    // No free space kept back: the tmpfs is the whole bound here.
    let d = AgentProcess::start(
        &pki,
        "node-d",
        &small_disk,
        0,
        &["--store-reserve-free-bytes=0"],
    )
    .await;
    let first = import_archive(&a.data_dir, 8 * MIB, 1);
    let too_big = import_archive(&a.data_dir, 64 * MIB, 2);

    let outcome = replicate_to(&pki, &a, &first, d.peer()).await;
    assert!(outcome.ok, "{}", outcome.error);

    let outcome = replicate_to(&pki, &a, &too_big, d.peer()).await;
    assert!(!outcome.ok);
    // Refused before a byte is written: the declared size does not fit.
    assert!(
        outcome.error.contains("ResourceExhausted")
            && outcome.error.contains(&format!(
                "archive {} ({} bytes) refused: the disk of",
                too_big.id, too_big.size_bytes
            )),
        "{}",
        outcome.error
    );
    eprintln!("full disk: {}", outcome.error);

    // The earlier archive is intact and the failed one left nothing behind.
    assert_eq!(listed(&d), vec![first.id.clone()]);
    let store = ferry_agent::store::Store::open(&d.data_dir, u64::MAX).unwrap();
    store.verify(&first.id).unwrap();
    let incoming: Vec<_> = std::fs::read_dir(d.data_dir.join("incoming"))
        .unwrap()
        .collect();
    assert!(
        incoming.is_empty(),
        "the partial replica was removed to free the space"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compressed_streams_arrive_verified() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;
    let archive = import_archive(&a.data_dir, 48 * MIB + 12_345, 5);
    let zstd = common::sender(&pki, &a, None, true);
    let outcome = common::replicate_with(&pki, &zstd, &archive, b.peer()).await;
    assert!(outcome.ok, "{}\n{}", outcome.error, b.log_text());
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    ferry_agent::store::Store::open(&b.data_dir, u64::MAX)
        .unwrap()
        .verify(&archive.id)
        .unwrap();
}

/// Every file under `dir` (recursively).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_agents_replicate_and_keep_no_plaintext_on_disk() {
    use ferry_agent::encryption::{ArchiveKey, encrypted_len};
    use ferry_agent::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // Each node its own key.
    let (key_a, key_b) = (
        write_key(dir.path(), "a.key", 0xA1),
        write_key(dir.path(), "b.key", 0xB2),
    );
    let a = AgentProcess::start(
        &pki,
        "node-a",
        &dir.path().join("a"),
        24 * MIB + 12_345,
        &[&key_flag(&key_a)],
    )
    .await;
    let b = AgentProcess::start(
        &pki,
        "node-b",
        &dir.path().join("b"),
        0,
        &[&key_flag(&key_b)],
    )
    .await;
    for agent in [&a, &b] {
        assert!(
            agent.log_text().contains("encryption at rest on"),
            "{}",
            agent.log_text()
        );
    }

    // A real (synthetic) checkpoint: its tar member names are known plaintext.
    let response = common::checkpoint_announced(&pki, &a, checkpoint_request(vec![b.peer()]))
        .await
        .unwrap_or_else(|s| panic!("checkpoint: {s}\n{}", a.log_text()))
        .into_inner();
    let archive = response.archive.expect("archive");
    let outcome = &response.replicas[0];
    assert!(outcome.ok, "{}\n{}", outcome.error, b.log_text());
    assert_eq!(listed(&b), vec![archive.id.clone()]);

    for agent in [&a, &b] {
        let stored = agent
            .data_dir
            .join("archives")
            .join(format!("{}.tar", archive.id));
        assert_eq!(
            std::fs::metadata(&stored).unwrap().len(),
            encrypted_len(archive.size_bytes),
            "{} stores the encrypted form",
            agent.name
        );
        let files = files_under(&agent.data_dir);
        assert!(files.contains(&stored));
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            for marker in [b"checkpoint/pages-1.img".as_slice(), b"config.dump"] {
                assert!(
                    !contains(&bytes, marker),
                    "{}: {} holds plaintext {:?}",
                    agent.name,
                    file.display(),
                    String::from_utf8_lossy(marker)
                );
            }
        }
    }

    // The receiver's store verifies with its own key only.
    let load = |path| Some(ArchiveKey::load(path).unwrap());
    let store = Store::open_with(&b.data_dir, u64::MAX, load(&key_b)).unwrap();
    let meta = store.verify(&archive.id).unwrap();
    assert!(meta.encrypted);
    let err = Store::open_with(&b.data_dir, u64::MAX, load(&key_a))
        .unwrap()
        .verify(&archive.id)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encrypted with another key"), "{err}");
    let err = Store::open(&b.data_dir, u64::MAX)
        .unwrap()
        .verify(&archive.id)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption key"), "{err}");

    // A restore on the receiver decrypts to a temporary file and removes it;
    // the file to restore from is the image's layer: the plaintext archive.
    let restore = pki
        .controller(&b.endpoint)
        .await
        .prepare_restore(pb::PrepareRestoreRequest {
            archive_id: archive.id.clone(),
            failover: String::new(),
            namespace: "default".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("prepare restore: {s}\n{}", b.log_text()))
        .into_inner();
    let plaintext = std::fs::read(&restore.archive_path).unwrap();
    assert_eq!(plaintext.len() as u64, archive.size_bytes);
    assert_eq!(ContentHash::Blake3.id_of_bytes(&plaintext), archive.id);
    assert_eq!(
        std::fs::read_dir(b.data_dir.join("tmp")).unwrap().count(),
        0
    );

    // Once the restore is released, no plaintext copy is left anywhere
    // under the agent's data directory.
    let released = pki
        .controller(&b.endpoint)
        .await
        .release_restore(pb::ReleaseRestoreRequest {
            archive_id: archive.id.clone(),
            failover: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("release restore: {s}\n{}", b.log_text()))
        .into_inner();
    assert!(
        released.freed_bytes >= archive.size_bytes,
        "freed {} bytes",
        released.freed_bytes
    );
    assert!(!std::path::Path::new(&restore.archive_path).exists());
    for file in files_under(&b.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for marker in [b"checkpoint/pages-1.img".as_slice(), b"config.dump"] {
            assert!(
                !contains(&bytes, marker),
                "after the release {} holds plaintext {:?}",
                file.display(),
                String::from_utf8_lossy(marker)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_encrypted_receiver_resumes_after_its_complete_segments() {
    use ferry_agent::encryption::{ArchiveKey, SEGMENT};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (key_a, key_b) = (
        write_key(dir.path(), "a.key", 0x0A),
        write_key(dir.path(), "b.key", 0x0B),
    );
    let a = AgentProcess::start(
        &pki,
        "node-a",
        &dir.path().join("a"),
        0,
        &[&key_flag(&key_a)],
    )
    .await;
    let mut b = AgentProcess::start(
        &pki,
        "node-b",
        &dir.path().join("b"),
        0,
        &[&key_flag(&key_b)],
    )
    .await;
    // Smaller than the plaintext test's: AES-GCM is generic code, compiled
    // unoptimised in the debug agents and this test (~5 MiB/s); release
    // builds run at disk speed.
    let archive = import_archive_with(
        &a.data_dir,
        96 * MIB + 4321,
        17,
        Some(ArchiveKey::load(&key_a).unwrap()),
    );
    assert!(archive.encrypted);
    let part = b
        .data_dir
        .join("incoming")
        .join(format!("{}.part", archive.id));

    common::announce(
        &pki,
        &ferry_agent::convert::archive_to_proto(&archive),
        &b.peer(),
    )
    .await;
    let sending = common::sender(&pki, &a, Some(&key_a), false);
    let (id, target) = (archive.id.clone(), common::target(&b.peer()));
    let replication = tokio::spawn(async move { sending.replicate(&id, &[target]).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 16 * MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "transfer never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.kill();
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        held < archive.size_bytes,
        "killed mid-transfer ({held} bytes)"
    );
    assert!(
        !b.data_dir
            .join("archives")
            .join(format!("{}.json", archive.id))
            .exists(),
        "a partial archive is never visible"
    );
    let head = std::fs::read(&part).unwrap();
    assert!(head.starts_with(ferry_agent::encryption::MAGIC));
    assert!(
        !contains(&head, common::PLAINTEXT_MARKER),
        "plaintext in the partial file"
    );
    drop(head);

    b.restart(&pki).await;
    let outcome = ferry_agent::convert::outcomes_to_proto(replication.await.unwrap()).remove(0);
    assert!(outcome.ok, "{}\n{}", outcome.error, b.log_text());
    // Whole segments only, and fewer archive bytes than the file held
    // (headers and tags, and a torn or unsealed last segment are not counted).
    assert!(
        outcome.resumed_from > 0
            && outcome.resumed_from.is_multiple_of(SEGMENT as u64)
            && outcome.resumed_from < held,
        "resumed from {} with {held} file bytes held",
        outcome.resumed_from
    );
    eprintln!(
        "encrypted receiver killed at {held} file bytes; retry resumed from {}",
        outcome.resumed_from
    );
    assert_eq!(listed(&b), vec![archive.id.clone()]);
    assert!(!part.exists());
    ferry_agent::store::Store::open_with(
        &b.data_dir,
        u64::MAX,
        Some(ArchiveKey::load(&key_b).unwrap()),
    )
    .unwrap()
    .verify(&archive.id)
    .unwrap();
}

#[tokio::test]
async fn a_bad_encryption_key_file_stops_the_agent_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let key = dir.path().join("short.key");
    std::fs::write(&key, "c2VjcmV0LWtleQ==\n").unwrap(); // base64 of 10 bytes
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args([
            "--node-name=node-a".to_owned(),
            "--grpc-addr=127.0.0.1:0".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            format!("--data-dir={}", dir.path().join("a").display()),
            format!("--tls-ca={}", pki.ca.display()),
            format!("--tls-cert={}", pki.agent("node-a").0.display()),
            format!("--tls-key={}", pki.agent("node-a").1.display()),
            "--runtime=none".to_owned(),
            "--log-format=text".to_owned(),
            key_flag(&key),
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains(&format!(
            "encryption key file {} holds base64 of 10 bytes",
            key.display()
        )),
        "{log}"
    );
    assert!(!log.contains("c2VjcmV0"), "the key is never printed: {log}");
}
