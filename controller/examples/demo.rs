//! The local demo of a failover (hack/demo-kwok.sh runs it): a real control
//! plane with three kwok-simulated nodes, a real ferry agent per node
//! (mutual TLS; the `synthetic` runtime stands in for the kubelet checkpoint
//! API, which kwok nodes do not have, and writes real archives), the real
//! controller with its admission webhook. A Deployment is protected, its
//! node is lost, and the owner's replacement pod is restored on the standby.
//!
//! `--keep` leaves everything running until Ctrl-C.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a demo: panics are failures, the output is the point

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use ferry_api::{CheckpointPolicy, FailoverStage};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

const WAIT: Duration = Duration::from_secs(120);

fn say(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn kubectl(ferry: &common::Installation, args: &[&str]) {
    println!("$ kubectl {}", args.join(" "));
    let output = ferry.plane.kubectl().args(args).output().unwrap();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    print!("{}", String::from_utf8_lossy(&output.stderr));
}

async fn apply(ferry: &common::Installation, yaml: &str) {
    let path = ferry.dir.join("apply.yaml");
    std::fs::write(&path, yaml).unwrap();
    kubectl(
        ferry,
        &["apply", "-n", "demo", "-f", path.to_str().unwrap()],
    );
}

#[tokio::main]
async fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    let begun = Instant::now();
    say("Control plane with 3 kwok nodes, a ferry agent per node, the controller and its webhook");
    let ferry = common::install(3, 16 << 20, &["demo"]).await;
    println!("up in {:.1}s", begun.elapsed().as_secs_f64());
    kubectl(
        &ferry,
        &["get", "nodes", "-L", "topology.kubernetes.io/zone"],
    );
    kubectl(
        &ferry,
        &[
            "get",
            "leases",
            "-n",
            common::AGENT_NAMESPACE,
            "-L",
            "ferry.dev/node",
        ],
    );

    say("A Deployment to protect, and a CheckpointPolicy for it");
    apply(
        &ferry,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: counter}
spec:
  replicas: 1
  selector: {matchLabels: {app: counter}}
  template:
    metadata: {labels: {app: counter}}
    spec:
      containers: [{name: app, image: ferry-test-app:dev}]
      tolerations: [{operator: Exists}]
---
apiVersion: ferry.dev/v1alpha1
kind: CheckpointPolicy
metadata: {name: counter}
spec:
  selector: {matchLabels: {app: counter}}
  interval: 5s
  standbys: 1
  failover: {nodeLossGracePeriod: 5s, maxCheckpointAge: 1m}
"#,
    )
    .await;
    let policies: Api<CheckpointPolicy> = Api::namespaced(ferry.client.clone(), "demo");
    let protected = common::eventually(
        "the first replicated checkpoint",
        WAIT,
        || ferry.logs(),
        || async {
            let status = policies.get("counter").await.ok()?.status?;
            let record = status.checkpoints.first()?.clone();
            (!record.replicas.is_empty()).then_some(record)
        },
    )
    .await;
    println!(
        "checkpoint of {}/{} on {}: archive {}… ({} MiB) in {} ms, replicated to {:?}",
        protected.pod,
        protected.container,
        protected.node,
        &protected.archive[..12],
        protected.size_bytes >> 20,
        protected.duration_ms,
        protected.replicas
    );
    kubectl(&ferry, &["get", "pods", "-n", "demo", "-o", "wide"]);
    kubectl(&ferry, &["get", "checkpointpolicies", "-n", "demo"]);

    say(&format!(
        "Node {} is lost: its kubelet stops reporting (Ready=Unknown)",
        protected.node
    ));
    let lost_at = common::lose_node(&ferry.client, &protected.node).await;
    let failover = common::eventually(
        "the failover",
        WAIT,
        || ferry.logs(),
        || async {
            let status = policies.get("counter").await.ok()?.status?;
            let last = status.last_failover?;
            (last.pod_uid == protected.pod_uid).then_some(last)
        },
    )
    .await;
    let restored_at = failover
        .restored_at
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(lost_at);
    println!(
        "timeline: node lost {lost_at}; failover detected {} (grace period 5s); restored {}",
        failover.started_at.0, restored_at
    );
    println!(
        "  {:?} {:?}: {} on {} -> {} on {}, from archive {}… (age {}), {:.1}s from node loss",
        failover.reason,
        failover.stage,
        failover.pod,
        failover.from_node,
        failover.replacement_pod.as_deref().unwrap_or("?"),
        failover.to_node.as_deref().unwrap_or("?"),
        &failover.archive.clone().unwrap_or_default()
            [..12.min(failover.archive.as_deref().unwrap_or("").len())],
        failover.checkpoint_age.as_deref().unwrap_or("?"),
        restored_at.duration_since(lost_at).as_secs_f64()
    );
    assert_eq!(failover.stage, FailoverStage::Completed);
    let pods: Api<Pod> = Api::namespaced(ferry.client.clone(), "demo");
    let replacement = pods
        .get(failover.replacement_pod.as_deref().unwrap())
        .await
        .unwrap();
    println!(
        "  replacement pod: image {}, imagePullPolicy {}, node {}, annotations {:?}",
        replacement.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref()
            .unwrap_or(""),
        replacement.spec.as_ref().unwrap().containers[0]
            .image_pull_policy
            .as_deref()
            .unwrap_or(""),
        replacement
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .unwrap_or(""),
        replacement
            .annotations()
            .iter()
            .filter(|(k, _)| k.starts_with("ferry.dev/"))
            .collect::<Vec<_>>()
    );
    kubectl(&ferry, &["get", "pods", "-n", "demo", "-o", "wide"]);
    common::eventually(
        "the replacement protected",
        WAIT,
        || ferry.logs(),
        || async {
            let status = policies.get("counter").await.ok()?.status?;
            (status.phase == Some(ferry_api::Phase::Protected)).then_some(())
        },
    )
    .await;
    kubectl(&ferry, &["get", "checkpointpolicies", "-n", "demo"]);
    kubectl(
        &ferry,
        &[
            "get",
            "events",
            "-n",
            "demo",
            "--field-selector",
            "involvedObject.kind=CheckpointPolicy",
        ],
    );

    say("The API server refuses a broken policy, naming each field");
    let broken: CheckpointPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointPolicy",
        "metadata": {"name": "broken"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "interval": "500ms", "standbys": 11},
    }))
    .unwrap();
    match policies.create(&PostParams::default(), &broken).await {
        Err(err) => println!("refused: {err}"),
        Ok(_) => println!("unexpectedly accepted"),
    }

    if keep {
        say(&format!(
            "Running; KUBECONFIG={} — Ctrl-C stops and removes everything",
            ferry.plane.kubeconfig_path().display()
        ));
        let _ = tokio::signal::ctrl_c().await;
    }
}
