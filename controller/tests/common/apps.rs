//! Apps and policies the failover tests create, and waiting for them.

use std::time::Duration;

use ferry_api::{CheckpointPolicy, Phase};
use k8s_openapi::api::core::v1::Pod;
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
