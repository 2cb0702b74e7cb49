//! Apps and policies the failover tests create, and waiting for them.

use std::time::Duration;

use ferry_api::{CheckpointPolicy, FailoverRecord, FailoverStage, FailureTrigger, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, EvictParams, ListParams};

use super::{Installation, eventually};

// Generous: the tests run in parallel, each with its own control plane,
// on two cores; a new leader also waits one agent Lease period.
pub const WAIT: Duration = Duration::from_secs(150);

pub fn policy(name: &str, app: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "selector": {"matchLabels": {"app": app}},
        "interval": "2s",
        "standbys": 1,
        "failover": {"nodeLossGracePeriod": "3s", "maxCheckpointAge": "1m"},
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": name},
        "spec": spec,
    })
}

pub fn deployment(app: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.invalid/counter:1"}],
                    "tolerations": [{"operator": "Exists"}],
                },
            },
        },
    })
}

pub async fn get_policy(client: &kube::Client, namespace: &str, name: &str) -> CheckpointPolicy {
    Api::<CheckpointPolicy>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap()
}

pub async fn pods(client: &kube::Client, namespace: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

/// Waits until the policy protects `pod` (a replicated checkpoint of it)
/// and returns (its node, the standby).
pub async fn protected(
    ferry: &Installation,
    namespace: &str,
    name: &str,
    pod_uid: &str,
) -> (String, String) {
    eventually(
        "a replicated checkpoint",
        WAIT,
        || ferry.logs(),
        || async {
            let policy = get_policy(&ferry.client, namespace, name).await;
            let status = policy.status?;
            let record = status.checkpoints.iter().find(|r| r.pod_uid == pod_uid)?;
            (status.phase == Some(Phase::Protected) && !record.replicas.is_empty())
                .then(|| (record.node.clone(), record.replicas[0].clone()))
        },
    )
    .await
}

pub async fn running_pod(ferry: &Installation, namespace: &str, app: &str) -> Pod {
    eventually(
        "one running pod",
        WAIT,
        || ferry.logs(),
        || async {
            let pods = pods(&ferry.client, namespace, app).await;
            let running: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (running.len() == 1).then(|| running[0].clone())
        },
    )
    .await
}

/// Evicts a pod through the Eviction API, as a drain or a disruption
/// controller does: the API server marks it with a DisruptionTarget
/// condition, which is what makes its loss a failure.
pub async fn evict(client: &kube::Client, namespace: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .evict(name, &EvictParams::default())
        .await
        .unwrap();
}

/// Waits for the failover of `failed_uid` to complete and checks its
/// outcome: one pod, created by the owner, restored on the standby.
pub async fn failed_over(
    ferry: &Installation,
    namespace: &str,
    name: &str,
    app: &str,
    failed_uid: &str,
    standby: &str,
    reason: FailureTrigger,
) -> (FailoverRecord, Pod) {
    let record = eventually(
        "the failover to complete",
        WAIT,
        || ferry.logs(),
        || async {
            let policy = get_policy(&ferry.client, namespace, name).await;
            let last = policy.status?.last_failover?;
            (last.pod_uid == failed_uid).then_some(last)
        },
    )
    .await;
    assert_eq!(record.stage, FailoverStage::Completed, "{record:?}");
    assert_eq!(record.reason, reason);
    assert!(!record.cold_start, "{record:?}");
    assert_eq!(record.to_node.as_deref(), Some(standby));
    assert!(record.restored_at.is_some());
    // The restore ran: what the standby prepared for it is released.
    let prepared = ferry.dir.join(standby).join("images");
    eventually(
        "the standby to release the prepared restore",
        WAIT,
        || ferry.logs(),
        || async {
            std::fs::read_dir(&prepared)
                .map_or(true, |mut entries| entries.next().is_none())
                .then_some(())
        },
    )
    .await;
    let replacement_name = record
        .replacement_pod
        .clone()
        .expect("replacement recorded");
    // Exactly one pod remains once cold racers are gone.
    let pod = eventually(
        "exactly one pod of the app",
        WAIT,
        || ferry.logs(),
        || async {
            let all = pods(&ferry.client, namespace, app).await;
            (all.len() == 1 && all[0].name_any() == replacement_name).then(|| all[0].clone())
        },
    )
    .await;
    let annotations = pod.annotations();
    assert_eq!(
        annotations[ferry_api::names::FAILOVER_ANNOTATION],
        failed_uid
    );
    assert!(annotations[ferry_api::names::RESTORED_FROM_ANNOTATION].starts_with("app="));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(standby),
        "pinned to the standby"
    );
    let container = &spec.containers[0];
    assert!(
        container.image.as_deref().unwrap().starts_with(&format!(
            "localhost/ferry/checkpoint/{namespace}/{name}/app:"
        )),
        "{:?}",
        container.image
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .unwrap();
    assert!(
        matches!(owner.kind.as_str(), "ReplicaSet" | "StatefulSet"),
        "{owner:?}"
    );
    (record, pod)
}
