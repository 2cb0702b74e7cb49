//! What a checkpoint request may name. The controller is the only caller
//! of Checkpoint, but the agent does not take its word for the target: the
//! pod must exist with that UID, run on this agent's node, and be selected
//! by the named CheckpointPolicy of the same namespace, which must protect
//! that container. A request for anything else (a stolen controller
//! identity aiming at another tenant's pod, a stale request after the pod
//! moved) is refused before the kubelet is asked.

use ferry_api::CheckpointPolicy;
use ferry_proto::v1 as pb;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

/// Whether a checkpoint of `container` for `policy` (`namespace/name`) may
/// be taken on `node`, given what the API server has.
pub fn check(
    node: &str,
    policy_key: &str,
    container: &pb::ContainerRef,
    pod: Option<&Pod>,
    policy: Option<&CheckpointPolicy>,
) -> Result<(), String> {
    let target = format!("{}/{}", container.namespace, container.pod);
    let (policy_namespace, _) = policy_key.split_once('/').unwrap_or(("", policy_key));
    if policy_namespace != container.namespace {
        return Err(format!(
            "policy {policy_key} is not in the namespace of pod {target}"
        ));
    }
    let policy = policy.ok_or_else(|| format!("policy {policy_key} does not exist"))?;
    let pod = pod.ok_or_else(|| format!("pod {target} does not exist"))?;
    if pod.metadata.uid.as_deref() != Some(container.pod_uid.as_str()) {
        return Err(format!(
            "pod {target} is not the pod {} the request names",
            container.pod_uid
        ));
    }
    let runs_on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if runs_on != Some(node) {
        return Err(format!(
            "pod {target} runs on {}, not on this node ({node})",
            runs_on.unwrap_or("no node")
        ));
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if !policy.selects_labels(&labels) {
        return Err(format!("policy {policy_key} does not select pod {target}"));
    }
    let has_container = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == container.container));
    if !has_container || !policy.protects_container(&container.container) {
        return Err(format!(
            "policy {policy_key} protects no container {} in pod {target}",
            container.container
        ));
    }
    Ok(())
}

/// Reads what [`check`] needs, fresh from the API server.
#[derive(Clone)]
pub struct CheckpointScope {
    client: Client,
    node: String,
}

impl std::fmt::Debug for CheckpointScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointScope")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl CheckpointScope {
    pub fn new(client: Client, node: String) -> Self {
        Self { client, node }
    }

    /// The pod, when the checkpoint may be taken. `Err(Ok(reason))`:
    /// refused; `Err(Err(message))`: the API server could not be asked.
    pub async fn check(
        &self,
        policy_key: &str,
        container: &pb::ContainerRef,
    ) -> Result<Pod, Result<String, String>> {
        let (policy_namespace, policy_name) =
            policy_key.split_once('/').unwrap_or(("", policy_key));
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &container.namespace);
        let policies: Api<CheckpointPolicy> =
            Api::namespaced(self.client.clone(), policy_namespace);
        let (pod, policy) =
            tokio::try_join!(pods.get_opt(&container.pod), policies.get_opt(policy_name)).map_err(
                |e| {
                    Err(format!(
                        "reading pod {}/{} and policy {policy_key}: {e}",
                        container.namespace, container.pod
                    ))
                },
            )?;
        check(
            &self.node,
            policy_key,
            container,
            pod.as_ref(),
            policy.as_ref(),
        )
        .map_err(Ok)?;
        pod.ok_or_else(|| Ok("the pod is gone".into()))
    }

    /// The replacement pod a state is written into, when it may receive
    /// it (see [`check_restore_target`]).
    pub async fn restore_target(
        &self,
        container: &pb::ContainerRef,
    ) -> Result<Pod, Result<String, String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &container.namespace);
        let pod = pods.get_opt(&container.pod).await.map_err(|e| {
            Err(format!(
                "reading pod {}/{}: {e}",
                container.namespace, container.pod
            ))
        })?;
        check_restore_target(&self.node, container, pod.as_ref()).map_err(Ok)?;
        pod.ok_or_else(|| Ok("the pod is gone".into()))
    }
}

/// Whether `container`'s pod may receive a state here: it exists with that
/// UID, runs on this node, is not being deleted and has that container.
pub fn check_restore_target(
    node: &str,
    container: &pb::ContainerRef,
    pod: Option<&Pod>,
) -> Result<(), String> {
    let target = format!("{}/{}", container.namespace, container.pod);
    let pod = pod.ok_or_else(|| format!("pod {target} does not exist"))?;
    if pod.metadata.uid.as_deref() != Some(container.pod_uid.as_str()) {
        return Err(format!(
            "pod {target} is not the pod {} the request names",
            container.pod_uid
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("pod {target} is being deleted"));
    }
    let runs_on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if runs_on != Some(node) {
        return Err(format!(
            "pod {target} runs on {}, not on this node ({node})",
            runs_on.unwrap_or("no node")
        ));
    }
    let has_container = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == container.container));
    if !has_container {
        return Err(format!(
            "pod {target} has no container {}",
            container.container
        ));
    }
    Ok(())
}

/// The pod's IP, as its status has it.
pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

/// The runtime's id of `container` in the pod's status (without the
/// `containerd://` scheme).
pub fn container_id(pod: &Pod, container: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == container)?
        .container_id
        .as_deref()
        .and_then(|id| id.rsplit_once("://").map(|(_, id)| id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> pb::ContainerRef {
        pb::ContainerRef {
            namespace: "shop".into(),
            pod: "cart-0".into(),
            pod_uid: "u1".into(),
            container: "app".into(),
        }
    }

    fn pod(node: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cart-0", "namespace": "shop", "uid": "u1", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "app"}, {"name": "sidecar"}]},
        }))
        .unwrap()
    }

    fn policy(containers: &[&str]) -> CheckpointPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointPolicy",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "cart"}}, "containers": containers},
        }))
        .unwrap()
    }

    #[test]
    fn a_selected_pod_on_this_node_may_be_checkpointed() {
        let pod = pod("node-a", serde_json::json!({"app": "cart"}));
        assert_eq!(
            check(
                "node-a",
                "shop/cart",
                &container(),
                Some(&pod),
                Some(&policy(&[]))
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "node-a",
                "shop/cart",
                &container(),
                Some(&pod),
                Some(&policy(&["app"]))
            ),
            Ok(())
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let selected = pod("node-a", serde_json::json!({"app": "cart"}));
        let cases = [
            (
                "node-b",
                "shop/cart",
                Some(selected.clone()),
                Some(policy(&[])),
                "runs on node-a, not on this node",
            ),
            (
                "node-a",
                "other/cart",
                Some(selected.clone()),
                Some(policy(&[])),
                "not in the namespace",
            ),
            (
                "node-a",
                "shop/cart",
                Some(selected.clone()),
                None,
                "does not exist",
            ),
            (
                "node-a",
                "shop/cart",
                None,
                Some(policy(&[])),
                "pod shop/cart-0 does not exist",
            ),
            (
                "node-a",
                "shop/cart",
                Some(pod("node-a", serde_json::json!({"app": "billing"}))),
                Some(policy(&[])),
                "does not select",
            ),
            (
                "node-a",
                "shop/cart",
                Some(selected.clone()),
                Some(policy(&["sidecar"])),
                "protects no container app",
            ),
        ];
        for (node, key, pod, policy, expected) in cases {
            let err = check(node, key, &container(), pod.as_ref(), policy.as_ref()).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let mut other = container();
        other.pod_uid = "u2".into();
        let err = check(
            "node-a",
            "shop/cart",
            &other,
            Some(&selected),
            Some(&policy(&[])),
        )
        .unwrap_err();
        assert!(err.contains("is not the pod u2"), "{err}");
    }
}
