//! The local checkpoint/restore demo (hack/demo-local.sh runs it): two
//! "nodes" as network namespaces with a ferry agent each (runc runtime,
//! mutual TLS between them), the test-app in a runc container on node A
//! with a 64 MiB ballast, checkpointed every 2 s and replicated to node B.
//! Then node A fails (its agent and its container are killed) and node B
//! restores the newest checkpoint. Prints the timeline.
//!
//! Needs root. `--ballast-mib N` and `--checkpoints N` change the setup.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a demo: panics are failures, the output is the point

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Pki;
use common::nodes::{Node, container};
use ferry_proto::v1 as pb;
use ferry_testenv::netns::{criu, test_app_bundle};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
        .unwrap_or(default)
}

fn say(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn counter(state: &serde_json::Value) -> u64 {
    state["counter"].as_u64().unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let ballast_mib = arg("--ballast-mib", 64);
    let checkpoints = arg("--checkpoints", 3);
    common::install_crypto_provider();
    say("CRIU, runc and the static test-app (hack/criu.sh, hack/test-app-bundle.sh)");
    let criu = criu();
    println!("criu {}", criu.display());
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    test_app_bundle(&bundles, "counter", ballast_mib);

    say("Two nodes: a network namespace and an agent each (runc runtime, mutual TLS)");
    let pki = Pki::new(dir.path());
    let mut a = Node::start(&pki, dir.path(), "node-a", &criu, &bundles).await;
    let b = Node::start(&pki, dir.path(), "node-b", &criu, &bundles).await;
    println!(
        "node A: netns {}, agent {}\nnode B: netns {}, agent {}",
        a.netns.path(),
        a.agent.endpoint,
        b.netns.path(),
        b.agent.endpoint
    );
    let mut a_client = pki.controller(&a.agent.endpoint).await;
    let mut b_client = pki.controller(&b.agent.endpoint).await;

    say(&format!(
        "test-app on node A with a {ballast_mib} MiB ballast"
    ));
    a_client
        .run_container(pb::RunContainerRequest {
            container: Some(container("counter-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap();
    a.netns.wait_serving(Duration::from_secs(30));
    println!("serving on A: {}", a.netns.get("/verify").unwrap());

    say(&format!(
        "{checkpoints} checkpoints, every 2 s, each replicated to node B"
    ));
    let mut newest = None;
    for round in 1..=checkpoints {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        let response = common::checkpoint_announced(
            &pki,
            &a.agent,
            pb::CheckpointRequest {
                policy: "tier4/counter".into(),
                container: Some(container("counter-0")),
                peers: vec![b.agent.peer()],
                timeout_seconds: 60,
                retention: Some(pb::Retention {
                    keep: 2,
                    max_bytes: 0,
                    max_age_seconds: 0,
                }),
                state_api: None,
                content_hash: pb::ContentHash::Blake3.into(),
            },
        )
        .await
        .unwrap()
        .into_inner();
        let archive = response.archive.unwrap();
        let replica = &response.replicas[0];
        println!(
            "checkpoint {round}: archive {}… {} MiB; checkpoint {} ms (CRIU dump, archive, import), replication to B {} ms ({}), total {} ms",
            &archive.id[..12],
            archive.size_bytes >> 20,
            response.checkpoint_millis,
            replica.millis,
            if replica.ok {
                "verified"
            } else {
                replica.error.as_str()
            },
            started.elapsed().as_millis()
        );
        newest = Some((archive, response.checkpoint_millis, replica.millis));
    }
    let (archive, checkpoint_ms, replication_ms) = newest.expect("at least one checkpoint");

    say("Node A fails: its agent and its container are killed");
    let at_kill = a
        .netns
        .get("/state")
        .map(|s| counter(&s))
        .unwrap_or_default();
    let killed = Instant::now();
    a.agent.kill();
    a.kill_containers();
    println!(
        "counter at the failure: {at_kill}; A serves: {}",
        a.netns.get("/state").is_some()
    );

    say("Node B restores the newest replicated checkpoint");
    let restored = b_client
        .restore(pb::RestoreRequest {
            archive_id: archive.id.clone(),
            container: Some(container("counter-0")),
            bundle: "counter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let state = b.netns.wait_serving(Duration::from_secs(30));
    let serving_after = killed.elapsed();
    let restored_counter = counter(&state);
    let verified = b.netns.get("/verify").unwrap();
    println!("restored on B: pid {}, {}", restored.pid, verified);

    say("Timeline");
    println!("| step | value |");
    println!("|---|---|");
    println!("| ballast | {ballast_mib} MiB |");
    println!("| archive | {} MiB |", archive.size_bytes >> 20);
    println!("| checkpoint (CRIU dump, archive, store) | {checkpoint_ms} ms |");
    println!("| replication A → B (mutual TLS, verified) | {replication_ms} ms |");
    println!("| counter at the failure | {at_kill} |");
    println!("| counter right after the restore | {restored_counter} |");
    println!(
        "| steps lost (work since the newest checkpoint) | {} |",
        at_kill.saturating_sub(restored_counter)
    );
    println!(
        "| restore on B (verify archive, unpack, runc restore) | {} ms (CRIU {} ms) |",
        restored.restore_millis, restored.criu_millis
    );
    println!(
        "| from the failure to serving on B (no detection here: restore starts at once) | {} ms |",
        serving_after.as_millis()
    );
    println!(
        "| ballast verified bit for bit | {} |",
        verified["ballast_ok"] == true
    );
    assert!(restored_counter > 0, "restored, not restarted from zero");
    assert_eq!(verified["ballast_ok"], true);
}
