//! The agent keeps its node's Lease on a real kube-apiserver.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::time::Duration;

use common::{AgentProcess, Pki};
use ferry_agent::lease::{ENDPOINT_ANNOTATION, NODE_INFO_ANNOTATION};
use ferry_testenv::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

async fn renew_time(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt("ferry-agent-node-a").await.unwrap()?;
    Some(
        serde_json::to_value(lease.spec?.renew_time?)
            .unwrap()
            .as_str()?
            .to_owned(),
    )
}

#[tokio::test]
async fn agent_advertises_itself_in_a_renewed_lease() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "ferry-system"}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &namespace).await;
    let leases: Api<Lease> = Api::namespaced(client, "ferry-system");

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let kubeconfig = plane.kubeconfig_path().to_str().unwrap().to_owned();
    let mut agent = AgentProcess::start_with_env(
        &pki,
        "node-a",
        &dir.path().join("a"),
        0,
        &[
            "--lease-namespace=ferry-system",
            "--pod-name=ferry-agent-x2k1",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;

    let mut first = None;
    for _ in 0..100 {
        first = renew_time(&leases).await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.unwrap_or_else(|| panic!("no lease; agent log:\n{}", agent.log_text()));
    let lease = leases.get("ferry-agent-node-a").await.unwrap();
    let annotations = lease.metadata.annotations.unwrap();
    assert_eq!(annotations[ENDPOINT_ANNOTATION], agent.endpoint);
    let info: serde_json::Value = serde_json::from_str(&annotations[NODE_INFO_ANNOTATION]).unwrap();
    assert_eq!(info["runtime"], "synthetic");
    assert_eq!(info["architecture"], "amd64");
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("ferry-agent-x2k1"));
    assert_eq!(spec.lease_duration_seconds, Some(5));

    tokio::time::sleep(Duration::from_secs(6)).await;
    let renewed = renew_time(&leases).await.unwrap();
    assert!(renewed > first, "renewed: {first} -> {renewed}");

    // A dead agent stops renewing (the controller reads that, with its
    // peers' word on the node's kubelet, as an outage or a node loss).
    agent.kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(renew_time(&leases).await.unwrap(), renewed);
}
