//! The harness itself: a full control plane comes up, kwok nodes turn Ready,
//! pods get scheduled and run, and everything goes away on drop.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::Duration;

use ferry_testenv::{ControlPlane, Options, node_is_ready};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};

#[tokio::test]
async fn full_control_plane_runs_pods_on_kwok_nodes() {
    let plane = ControlPlane::start(Options::full(3))
        .await
        .expect("control plane starts");
    eprintln!(
        "control plane with 3 kwok nodes ready in {:?}",
        plane.startup_time()
    );
    let client = plane.client().await.expect("client");

    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    assert_eq!(list.items.len(), 3);
    assert!(
        list.items.iter().all(node_is_ready),
        "every kwok node is Ready"
    );

    // RBAC is on: an unprivileged identity is refused.
    let output = plane
        .kubectl()
        .args([
            "auth",
            "can-i",
            "list",
            "pods",
            "--as=system:serviceaccount:default:nobody",
        ])
        .output()
        .expect("kubectl runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "no");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let running = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let pod = pods.get("probe").await.expect("get pod");
            let status = pod.status.unwrap_or_default();
            if status.phase.as_deref() == Some("Running") {
                return pod.spec.and_then(|s| s.node_name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("pod is scheduled to a kwok node and runs");
    assert!(running.is_some_and(|node| node.starts_with("kwok-node-")));

    let dir = plane.dir().to_owned();
    drop(plane);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
}

#[tokio::test]
async fn shared_control_plane_is_started_once() {
    let first = ControlPlane::shared().await.expect("shared control plane");
    let second = ControlPlane::shared().await.expect("shared control plane");
    assert!(std::ptr::eq(first, second));
    let client = first.client().await.expect("client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.minor, "34");
    eprintln!("shared control plane ready in {:?}", first.startup_time());
}
