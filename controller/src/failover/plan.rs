//! Planning a failover when a failure is detected: where to restore and
//! from which archives. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use ferry_api::{
    CheckpointPolicyStatus, CheckpointRecord, ContainerRestore, FailoverRecord, FailoverStage,
};

use crate::detect::{Failure, World};

fn elapsed_since(now: jiff::Timestamp, then: jiff::Timestamp) -> Duration {
    now.duration_since(then).try_into().unwrap_or_default()
}

/// The failover to record for `failure`: restore every checkpointed
/// container of the pod on the standby holding all their newest archives,
/// preferring `preferred`, or a cold start when there is none or the
/// archives are older than `max_age`.
pub fn plan_failover(
    failure: &Failure,
    status: &CheckpointPolicyStatus,
    max_age: Duration,
    preferred: Option<&str>,
    world: World<'_>,
) -> FailoverRecord {
    let records: Vec<&CheckpointRecord> = status
        .checkpoints
        .iter()
        .filter(|r| r.pod_uid == failure.pod_uid)
        .collect();
    let oldest = records.iter().map(|r| r.taken_at.0).min();
    let age = oldest.map(|t| elapsed_since(world.now, t));
    let mut record = FailoverRecord {
        reason: failure.reason,
        pod: failure.pod.clone(),
        pod_uid: failure.pod_uid.clone(),
        owner: failure.owner.clone(),
        from_node: failure.node.clone(),
        to_node: None,
        stage: FailoverStage::Detected,
        archive: None,
        containers: Vec::new(),
        pod_annotations: BTreeMap::new(),
        runtime_class: None,
        replacement_pod: None,
        checkpoint_age: age.map(|a| format!("{}s", a.as_secs())),
        cold_start: false,
        started_at: Time(world.now),
        failed_at: failure.failed_at.map(Time),
        evidence: failure.evidence.clone(),
        fenced_at: None,
        fence: String::new(),
        owner_nudged_at: None,
        fence_requested_at: None,
        restored_at: None,
        message: failure.detail.clone(),
    };
    let cold = |record: &mut FailoverRecord, why: String| {
        record.cold_start = true;
        record.message = format!("{}; starting cold: {why}", failure.detail);
    };
    if records.is_empty() {
        cold(&mut record, "no checkpoint".into());
        return record;
    }
    if age.is_some_and(|a| a > max_age) {
        cold(
            &mut record,
            format!(
                "newest checkpoint is {}s old, older than maxCheckpointAge {}s",
                age.unwrap_or_default().as_secs(),
                max_age.as_secs()
            ),
        );
        return record;
    }
    let source = world.agents.get(&failure.node);
    let mut rejected = Vec::new();
    let holds_all = |node: &str| records.iter().all(|r| r.replicas.iter().any(|n| n == node));
    let mut candidates: Vec<&str> = records[0]
        .replicas
        .iter()
        .map(String::as_str)
        .filter(|n| *n != failure.node && holds_all(n))
        .collect();
    // The preferred target first, then the others in the recorded order.
    candidates.sort_by_key(|n| Some(*n) != preferred);
    let target = candidates.into_iter().find(|node| {
        let usable = match (world.agents.live(node, world.now), world.nodes.get(*node)) {
            (None, _) => Err(format!("{node}: agent not live")),
            (_, None) => Err(format!("{node}: node gone")),
            (Some(_), Some(n)) if !crate::placement::node_ready(n) => {
                Err(format!("{node}: not Ready"))
            }
            // Its agent restores through ferry's runtime handler, which the
            // node's runtime must have.
            (Some(_), Some(n)) if let Some(handler) =
                crate::placement::missing_restore_handler(n, world.agents, world.now) =>
            {
                Err(format!(
                    "{node}: its container runtime has no runtime handler {handler} (docs/runtime-handler.md)"
                ))
            }
            (Some(agent), Some(_)) => match source {
                Some(source) => agent.can_restore_from(source),
                None => Ok(()),
            },
        };
        usable.map_err(|why| rejected.push(why)).is_ok()
    });
    match target {
        Some(node) => {
            record.to_node = Some(node.to_owned());
            record.archive = Some(records[0].archive.clone());
            record.containers = records
                .iter()
                .map(|r| ContainerRestore {
                    container: r.container.clone(),
                    archive: r.archive.clone(),
                    image: None,
                })
                .collect();
        }
        None if rejected.is_empty() => cold(&mut record, "no standby holds a replica".into()),
        None => cold(
            &mut record,
            format!("no usable standby ({})", rejected.join("; ")),
        ),
    }
    record
}

/// The replacement pod of a failover: the pod the webhook annotated with
/// the failed pod's UID (the oldest if, against the rules, there are more).
pub fn replacement<'a>(failover: &FailoverRecord, pods: &[&'a Pod]) -> Option<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| {
            p.uid().as_deref() != Some(failover.pod_uid.as_str())
                && p.annotations()
                    .get(ferry_api::names::FAILOVER_ANNOTATION)
                    .is_some_and(|uid| *uid == failover.pod_uid)
        })
        .min_by_key(|p| (p.creation_timestamp().map(|t| t.0), p.name_any()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::AgentIndex;
    use ferry_api::FailureTrigger;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastTransitionTime": at(0).to_string()}]},
        }))
        .unwrap()
    }

    fn agents(nodes: &[&str]) -> AgentIndex {
        agents_restoring_with(nodes, "")
    }

    /// Agents whose restores need runtime handler `handler` ("": none).
    fn agents_restoring_with(nodes: &[&str], handler: &str) -> AgentIndex {
        let info = serde_json::json!({"restoreHandler": handler}).to_string();
        let leases: Vec<Lease> = nodes
            .iter()
            .map(|n| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("ferry-agent-{n}"),
                        "annotations": {"ferry.dev/grpc-endpoint": "127.0.0.1:1",
                            "ferry.dev/node-info": info}},
                    "spec": {"leaseDurationSeconds": 15,
                        "renewTime": at(100).strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
                }))
                .unwrap()
            })
            .collect();
        AgentIndex::from_leases(&leases)
    }

    fn status(taken_at: i64, replicas: &[&str]) -> CheckpointPolicyStatus {
        serde_json::from_value(serde_json::json!({
            "checkpoints": [{"pod": "p", "podUid": "u1", "container": "app", "node": "a",
                "archive": "abc", "sizeBytes": 1, "durationMs": 1, "restartCount": 1,
                "takenAt": at(taken_at).to_string(), "replicas": replicas}],
        }))
        .unwrap()
    }

    fn plan(nodes: &[Node], agents: &AgentIndex, s: &CheckpointPolicyStatus) -> FailoverRecord {
        let nodes: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n)).collect();
        let failure = Failure {
            pod: "p".into(),
            pod_uid: "u1".into(),
            node: "a".into(),
            owner: "ReplicaSet/rs".into(),
            reason: FailureTrigger::NodeLoss,
            detail: "node a Ready=Unknown for 20s".into(),
            evidence: vec!["API server: node a Ready=Unknown for 20s".into()],
            last_contact: Some(at(95)),
            failed_at: None,
        };
        plan_failover(
            &failure,
            s,
            Duration::from_secs(60),
            None,
            World {
                pods: &BTreeMap::new(),
                departed: &BTreeMap::new(),
                nodes: &nodes,
                agents,
                now: at(101),
            },
        )
    }

    #[test]
    fn restore_goes_to_a_live_ready_standby_with_the_archive() {
        let mut nodes = vec![node("a", "Unknown"), node("b", "True"), node("c", "True")];
        let agents = agents(&["a", "b", "c"]);
        let record = plan(&nodes, &agents, &status(90, &["b", "c"]));
        assert_eq!(record.to_node.as_deref(), Some("b"));
        assert_eq!(record.containers[0].archive, "abc");
        assert_eq!(record.evidence.len(), 1);
        assert!(!record.cold_start);
        nodes[1] = node("b", "False");
        let record = plan(&nodes, &agents, &status(90, &["b", "c"]));
        assert_eq!(record.to_node.as_deref(), Some("c"));
    }

    /// A node whose runtime lacks ferry's handler is never the restore
    /// target when its agent restores through it; the record names it.
    #[test]
    fn a_standby_without_the_runtime_handler_is_passed_over() {
        let with_handler = |name: &str| {
            let mut n = node(name, "True");
            n.status.as_mut().unwrap().runtime_handlers =
                Some(vec![k8s_openapi::api::core::v1::NodeRuntimeHandler {
                    name: Some("ferry".into()),
                    features: None,
                }]);
            n
        };
        let restoring = agents_restoring_with(&["a", "b", "c"], "ferry");
        let nodes = vec![node("a", "Unknown"), node("b", "True"), with_handler("c")];
        let record = plan(&nodes, &restoring, &status(90, &["b", "c"]));
        assert_eq!(record.to_node.as_deref(), Some("c"));
        let nodes = vec![node("a", "Unknown"), node("b", "True"), node("c", "True")];
        let record = plan(&nodes, &restoring, &status(90, &["b", "c"]));
        assert!(record.cold_start);
        assert!(
            record
                .message
                .contains("b: its container runtime has no runtime handler ferry")
                && record
                    .message
                    .contains("c: its container runtime has no runtime handler ferry"),
            "{}",
            record.message
        );
        // Agents that restore through images need no handler.
        let record = plan(&nodes, &agents(&["a", "b", "c"]), &status(90, &["b", "c"]));
        assert_eq!(record.to_node.as_deref(), Some("b"));
    }

    #[test]
    fn old_or_missing_checkpoints_mean_a_cold_start() {
        let nodes = vec![node("a", "Unknown"), node("b", "True")];
        let agents = agents(&["a", "b"]);
        let old = plan(&nodes, &agents, &status(0, &["b"]));
        assert!(old.cold_start);
        assert!(
            old.message.contains("older than maxCheckpointAge"),
            "{}",
            old.message
        );
        let unreplicated = plan(&nodes, &agents, &status(90, &[]));
        assert!(unreplicated.cold_start);
        assert!(
            unreplicated.message.contains("no standby"),
            "{}",
            unreplicated.message
        );
    }
}
