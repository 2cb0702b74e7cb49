//! Tier 4: real checkpoint and restore of a real process with CRIU and runc.
//! Two "nodes" are network namespaces with an agent each (mutual TLS); the
//! static test-app runs in a runc container on node A with a memory ballast,
//! is checkpointed, replicated to B, killed on A and restored on B, where
//! its counter continues and its ballast verifies bit for bit.
//!
//! Needs root. hack/criu.sh (CRIU 4.2.1, runc, nftables) and
//! hack/test-app-bundle.sh (the static test-app) run from here; both are
//! cached after their first run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Pki;
use common::nodes::{Node, container};
use ferry_proto::v1 as pb;
use ferry_testenv::netns::{criu, test_app_bundle};

const BALLAST_MIB: u64 = 32;

/// Checkpoints container counter-0 on `source` and replicates it to
/// `standby`, as the controller asks.
async fn checkpoint_to_standby(pki: &Pki, source: &Node, standby: &Node) -> pb::CheckpointResponse {
    let taken = common::checkpoint_announced(
        pki,
        &source.agent,
        pb::CheckpointRequest {
            policy: "tier4/counter".into(),
            container: Some(container("counter-0")),
            peers: vec![standby.agent.peer()],
            timeout_seconds: 60,
            retention: None,
            state_api: None,
            content_hash: pb::ContentHash::Blake3.into(),
        },
    )
    .await
    .unwrap_or_else(|s| panic!("checkpoint: {s:?}\n{}", source.agent.log_text()))
    .into_inner();
    assert!(taken.replicas[0].ok, "{:?}", taken.replicas);
    taken
}

#[tokio::test]
async fn a_container_checkpointed_on_a_continues_on_b_with_its_memory() {
    common::install_crypto_provider();
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    test_app_bundle(&bundles, "counter", BALLAST_MIB);
    let pki = Pki::new(dir.path());
    let a = Node::start(&pki, dir.path(), "node-a", &criu, &bundles).await;
    let b = Node::start(&pki, dir.path(), "node-b", &criu, &bundles).await;
    let mut a_client = pki.controller(&a.agent.endpoint).await;
    let mut b_client = pki.controller(&b.agent.endpoint).await;

    a_client
        .run_container(pb::RunContainerRequest {
            container: Some(container("counter-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap();
    a.netns.wait_serving(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = a.netns.get("/state").unwrap()["counter"].as_u64().unwrap();
    assert!(before >= 5, "counter runs: {before}");

    let taken = checkpoint_to_standby(&pki, &a, &b).await;
    let archive = taken.archive.clone().unwrap();
    assert!(
        archive.size_bytes > BALLAST_MIB << 20,
        "the archive holds the ballast: {} bytes",
        archive.size_bytes
    );
    assert!(
        !a.netns.nft_tables().contains("CRIU"),
        "the network-lock table is removed: {}",
        a.netns.nft_tables()
    );
    stats_match_the_archive(
        &taken.criu_stats.expect("CRIU's statistics"),
        &a.agent
            .data_dir
            .join("archives")
            .join(format!("{}.tar", archive.id)),
    );
    let at_checkpoint = a.netns.get("/state").unwrap()["counter"].as_u64().unwrap();
    assert!(
        at_checkpoint >= before,
        "A keeps running after the checkpoint"
    );

    // Node A fails: its container is gone.
    a_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container("counter-0")),
        })
        .await
        .unwrap();
    assert!(a.netns.get("/state").is_none(), "A no longer serves");

    let restored = b_client
        .restore(pb::RestoreRequest {
            archive_id: archive.id.clone(),
            container: Some(container("counter-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("restore: {s:?}\n{}", b.agent.log_text()))
        .into_inner();
    assert!(restored.pid > 0);
    let verified = b.netns.get("/verify").expect("B serves the restored app");
    let counter = verified["counter"].as_u64().unwrap();
    assert!(
        counter >= before,
        "the counter continues from the checkpoint ({before}), not from zero: {verified}"
    );
    assert_eq!(verified["ballast_ok"], true, "{verified}");
    assert_eq!(
        verified["ballast_bytes"].as_u64().unwrap(),
        BALLAST_MIB << 20
    );
    println!(
        "counter {before} before the checkpoint, {counter} after the restore; checkpoint {} ms, restore {} ms (CRIU {} ms), archive {} MiB",
        taken.checkpoint_millis,
        restored.restore_millis,
        restored.criu_millis,
        archive.size_bytes >> 20
    );
    b_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container("counter-0")),
        })
        .await
        .unwrap();

    // A corrupt archive never reaches CRIU.
    let stored = b
        .agent
        .data_dir
        .join("archives")
        .join(format!("{}.tar", archive.id));
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&stored, bytes).unwrap();
    let refused = b_client
        .restore(pb::RestoreRequest {
            archive_id: archive.id.clone(),
            container: Some(container("counter-1")),
            bundle: "counter".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
    assert!(
        refused.message().contains("corrupt"),
        "{}",
        refused.message()
    );
    assert!(b.netns.get("/state").is_none(), "nothing was restored");
}

#[tokio::test]
async fn criu_failures_quote_criu() {
    common::install_crypto_provider();
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    test_app_bundle(&bundles, "counter", 1);
    let pki = Pki::new(dir.path());
    let a = Node::start(&pki, dir.path(), "node-q", &criu, &bundles).await;
    let mut client = pki.controller(&a.agent.endpoint).await;
    client
        .run_container(pb::RunContainerRequest {
            container: Some(container("quote-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap();
    a.netns.wait_serving(Duration::from_secs(30));
    let taken = client
        .checkpoint(pb::CheckpointRequest {
            policy: "tier4/quote".into(),
            container: Some(container("quote-0")),
            peers: vec![],
            timeout_seconds: 60,
            retention: None,
            state_api: None,
            content_hash: pb::ContentHash::Blake3.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let archive = taken.archive.unwrap();
    // Restoring next to the still running original: CRIU cannot bind the
    // app's listening port a second time in this node's namespace, and its
    // own words must reach the caller. (A memory image cut short is no good
    // test: CRIU 4.2.1's restorer then reads in an endless loop, which is
    // what the runtime's timeout is for.)
    let failed = client
        .restore(pb::RestoreRequest {
            archive_id: archive.id,
            container: Some(container("quote-1")),
            bundle: "counter".into(),
        })
        .await
        .unwrap_err();
    println!("{}", failed.message());
    assert!(
        failed.message().contains("runc restore"),
        "{}",
        failed.message()
    );
    assert!(
        failed.message().contains("CRIU: ") && failed.message().contains("Address already in use"),
        "quotes CRIU's log: {}",
        failed.message()
    );
    assert!(
        a.netns.get("/state").is_some(),
        "the original keeps serving"
    );
    client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container("quote-0")),
        })
        .await
        .unwrap();
}

/// The statistics the agent reported (and the controller records in its
/// history) are the archive's own `stats-dump`, decoded independently of
/// the agent's parser by `protoc --decode_raw` (hack/criu.sh installs it).
fn stats_match_the_archive(reported: &pb::CriuDumpStats, archive: &std::path::Path) {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut stats_dump = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("stats-dump") {
            std::io::Read::read_to_end(&mut entry, &mut stats_dump).unwrap();
        }
    }
    assert!(stats_dump.len() > 12, "the archive holds a stats-dump");
    // Two magics and the payload's size precede the StatsEntry message.
    let mut protoc = std::process::Command::new("protoc")
        .arg("--decode_raw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("protoc (hack/criu.sh installs protobuf-compiler)");
    std::io::Write::write_all(&mut protoc.stdin.take().unwrap(), &stats_dump[12..]).unwrap();
    let decoded = protoc.wait_with_output().unwrap();
    assert!(decoded.status.success(), "{decoded:?}");
    let text = String::from_utf8(decoded.stdout).unwrap();
    // StatsEntry { 1: DumpStatsEntry { 1: freezing µs, 2: frozen µs,
    // 3: memdump µs, 4: memwrite µs, 5: pages scanned, 7: pages written } }
    let field = |number: u32| -> u64 {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(&format!("{number}: ")))
            .unwrap_or_else(|| panic!("field {number} in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        (
            reported.freezing_micros,
            reported.frozen_micros,
            reported.memdump_micros,
            reported.memwrite_micros,
            reported.pages_scanned,
            reported.pages_written
        ),
        (field(1), field(2), field(3), field(4), field(5), field(7)),
        "protoc decodes the archive's stats-dump as\n{text}"
    );
    assert!(reported.pages_written > 0, "{reported:?}");
}

/// The runtime-handler backend end to end on real processes: node B's
/// agent installs ferry-runc, prepares a grant from A's replicated
/// checkpoint (no image), and the installed ferry-runc, called as the
/// runtime's shim calls it for the replacement container, restores it in
/// B's namespace; the grant is gone afterwards.
#[tokio::test]
async fn the_runtime_handler_restores_from_the_grant_the_agent_prepared() {
    common::install_crypto_provider();
    let criu = criu();
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    test_app_bundle(&bundles, "counter", BALLAST_MIB);
    let pki = Pki::new(dir.path());
    let handler_dir = dir.path().join("b-handler");
    let grants_dir = dir.path().join("b-grants");
    // Built by `cargo test --workspace` beside this test's own binaries.
    let ferry_runc = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("ferry-runc");
    assert!(ferry_runc.exists(), "run `cargo build -p ferry-runc` first");
    let a = Node::start(&pki, dir.path(), "node-c", &criu, &bundles).await;
    let b = Node::start_with(
        &pki,
        dir.path(),
        "node-d",
        &criu,
        &bundles,
        &[
            "--restore-backend=runtime-handler",
            &format!("--restore-grants-dir={}", grants_dir.display()),
            &format!("--runtime-handler-dir={}", handler_dir.display()),
            &format!("--ferry-runc-binary={}", ferry_runc.display()),
            "--host-runc=/usr/sbin/runc",
        ],
    )
    .await;
    let mut a_client = pki.controller(&a.agent.endpoint).await;
    let mut b_client = pki.controller(&b.agent.endpoint).await;
    a_client
        .run_container(pb::RunContainerRequest {
            container: Some(container("counter-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap();
    a.netns.wait_serving(Duration::from_secs(30));
    a.netns
        .request("PUT", "/state", Some(r#"{"counter": 777000}"#))
        .unwrap();
    let taken = checkpoint_to_standby(&pki, &a, &b).await;
    let archive = taken.archive.clone().unwrap();

    let prepared = b_client
        .prepare_restore(pb::PrepareRestoreRequest {
            archive_id: archive.id.clone(),
            failover: String::new(),
            namespace: "tier4".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("prepare: {s:?}\n{}", b.agent.log_text()))
        .into_inner();
    assert_eq!(prepared.runtime_class, "ferry");
    assert_eq!(prepared.image, "", "the pod keeps its image");
    let grant = prepared.pod_annotations[ferry_runc::grant::GRANT_ANNOTATION].clone();
    assert!(grants_dir.join(&grant).join("checkpoint").is_dir());
    let installed = handler_dir.join("ferry-runc");
    assert!(installed.exists() && handler_dir.join("ferry-runc.json").exists());

    // Node A fails; the replacement starts on B through the handler.
    a_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container("counter-0")),
        })
        .await
        .unwrap();
    ferry_testenv::netns::test_app_bundle_in(&bundles, "replacement", BALLAST_MIB, Some(&b.netns));
    let bundle = bundles.join("replacement");
    ferry_testenv::netns::annotate_as_cri(&bundle, "tier4", "counter-1", Some(&grant));
    let root = dir.path().join("b-runtime");
    let path = format!(
        "{}:{}",
        criu.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shim = |args: &[&str]| {
        ferry_testenv::netns::run_with_pipes(
            std::process::Command::new(&installed)
                .arg("--root")
                .arg(&root)
                .args(args)
                .env("PATH", &path),
        )
    };
    let created = shim(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        bundle.join("init.pid").to_str().unwrap(),
        "replacement",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(shim(&["start", "replacement"]).status.success());
    let verified = b
        .netns
        .get("/verify")
        .expect("the restored app answers on B");
    assert!(
        verified["counter"].as_u64().unwrap() >= 777000,
        "{verified}"
    );
    assert_eq!(verified["ballast_ok"], true, "{verified}");
    assert!(!grants_dir.join(&grant).exists(), "the grant was used up");

    let released = b_client
        .release_restore(pb::ReleaseRestoreRequest {
            archive_id: archive.id.clone(),
            failover: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.images.is_empty(), "{released:?}");
    let _ = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", "replacement"])
        .status();
}
