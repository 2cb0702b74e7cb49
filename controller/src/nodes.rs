//! The taint ferry puts on a node it fails over for node loss, and when it
//! comes off: once the node is Ready again and no failover from it is still
//! in progress in any policy.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use ferry_api::CheckpointPolicy;
use ferry_api::names::FAILED_NODE_TAINT;

use crate::placement::node_ready;

/// Index of ferry's taint on `node`, if it carries it.
pub fn taint_index(node: &Node) -> Option<usize> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .position(|t| t.key == FAILED_NODE_TAINT)
}

/// Index of ferry's taint on `node`, when it should come off now.
pub fn taint_to_lift(node: &Node, policies: &[Arc<CheckpointPolicy>]) -> Option<usize> {
    let index = taint_index(node)?;
    let name = node.name_any();
    let failing_over = policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.failovers)
        .any(|f| f.from_node == name);
    (node_ready(node) && !failing_over).then_some(index)
}

/// Lifts ferry's taint, in the background, from each of `nodes` where
/// [`taint_to_lift`] says so. Called on node events and on reconciles: the
/// failover that held a taint may end long after the node's last status
/// change, and a tainted node is no standby.
pub fn lift_taints<'a>(
    client: &Client,
    nodes: impl IntoIterator<Item = &'a Node>,
    policies: &[Arc<CheckpointPolicy>],
) {
    for node in nodes {
        let Some(index) = taint_to_lift(node, policies) else {
            continue;
        };
        let (client, name) = (client.clone(), node.name_any());
        tokio::spawn(async move {
            match lift_taint(client, &name, index).await {
                Ok(()) => {
                    tracing::info!(node = %name, "node Ready again and no failover from it runs: ferry's NoSchedule taint removed")
                }
                Err(error) => {
                    tracing::debug!(node = %name, %error, "could not remove ferry's taint (another reconcile may have)")
                }
            }
        });
    }
}

/// Removes ferry's taint at `index`; the patch tests it is still there.
pub async fn lift_taint(client: Client, node: &str, index: usize) -> Result<(), String> {
    let patch =
        crate::failover::execute::remove_checked("/spec/taints", index, "key", FAILED_NODE_TAINT)?;
    Api::<Node>::all(client)
        .patch(node, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
        .map_err(|e| format!("removing taint {FAILED_NODE_TAINT} from node {node}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, tainted: bool) -> Node {
        let taints = if tainted {
            serde_json::json!([{"key": "other", "effect": "NoSchedule"},
                {"key": FAILED_NODE_TAINT, "value": "ferry", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    fn policy(failing_from: Option<&str>) -> Arc<CheckpointPolicy> {
        let failovers = match failing_from {
            Some(node) => serde_json::json!([{"reason": "NodeLoss", "pod": "p",
                "podUid": "u", "fromNode": node, "startedAt": "2026-01-01T00:00:00Z"}]),
            None => serde_json::json!([]),
        };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointPolicy",
                "metadata": {"name": "p", "namespace": "n"},
                "spec": {"selector": {"matchLabels": {"app": "x"}}},
                "status": {"failovers": failovers},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_taint_stays_while_the_node_is_down_or_failing_over() {
        assert_eq!(taint_to_lift(&node("Unknown", true), &[policy(None)]), None);
        assert_eq!(
            taint_to_lift(&node("True", true), &[policy(Some("a"))]),
            None
        );
        assert_eq!(
            taint_to_lift(&node("True", true), &[policy(Some("b"))]),
            Some(1)
        );
        assert_eq!(taint_to_lift(&node("True", false), &[policy(None)]), None);
    }
}
