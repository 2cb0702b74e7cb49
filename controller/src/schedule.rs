//! Which containers a policy protects and when each is due for its next
//! checkpoint: pure functions of pods, status and the clock.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::SelectorExt;

use ferry_api::{CheckpointPolicy, CheckpointRecord};

/// One container a policy protects, as it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    pub container: String,
    pub restart_count: i32,
    /// Running, Ready and its pod Ready: safe to checkpoint. A container
    /// failing its probes is not, so a bad state never replaces a good one.
    pub healthy: bool,
    /// `Kind/name` of the pod's controller; empty for a bare pod.
    pub owner: String,
}

/// `policy`'s pod selector, parsed. Invalid and empty selectors select
/// nothing (`None`); validation reports them.
pub fn selector_of(policy: &CheckpointPolicy) -> Option<kube::core::Selector> {
    policy.pod_selector()
}

/// Whether a selector from [`selector_of`] selects `pod`.
pub fn matches(selector: Option<&kube::core::Selector>, pod: &Pod) -> bool {
    selector.is_some_and(|selector| selector.matches(pod.labels()))
}

/// Whether `policy`'s selector selects `pod` (same namespace assumed).
pub fn selects(policy: &CheckpointPolicy, pod: &Pod) -> bool {
    policy.selects_labels(pod.labels())
}

/// `Kind/name` of the pod's controlling owner, empty when it has none.
pub fn owner_of(pod: &Pod) -> String {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
        .unwrap_or_default()
}

fn pod_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The protected containers of one selected pod. Pods not yet scheduled,
/// finished or being deleted have none.
pub fn targets_of(policy: &CheckpointPolicy, pod: &Pod) -> Vec<Target> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Vec::new();
    };
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    if !running || pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    // A replacement waiting for its state (ferry's readiness gate) is not
    // Ready under a kubelet; it is not checkpointed under any, or an empty
    // state would become the newest.
    let waits_for_state = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|gates| {
            gates
                .iter()
                .any(|g| g.condition_type == ferry_api::names::STATE_RESTORED_CONDITION)
        })
        && !pod_condition(pod, ferry_api::names::STATE_RESTORED_CONDITION);
    let pod_ready = pod_condition(pod, "Ready") && !waits_for_state;
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let wanted = &policy.spec.containers;
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .filter(|c| wanted.is_empty() || wanted.contains(&c.name))
        .map(|c| {
            let state = statuses.iter().find(|s| s.name == c.name);
            let container_running = state
                .and_then(|s| s.state.as_ref())
                .is_some_and(|s| s.running.is_some());
            Target {
                pod: pod.name_any(),
                pod_uid: pod.uid().unwrap_or_default(),
                node: node.clone(),
                container: c.name.clone(),
                restart_count: state.map(|s| s.restart_count).unwrap_or(0),
                healthy: pod_ready && container_running && state.is_some_and(|s| s.ready),
                owner: owner_of(pod),
            }
        })
        .collect()
}

/// A fixed offset in `[0, span)` per container, so containers that appear
/// together are not all checkpointed in the same instant.
pub fn jitter(pod_uid: &str, container: &str, span: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (pod_uid, container).hash(&mut hasher);
    let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hasher.finish() % span_ms)
}

/// When the container's next checkpoint is due. The first one is spread
/// over one interval from when the controller first saw the pod; later ones
/// follow the previous checkpoint by `interval`.
pub fn due_at(
    target: &Target,
    last: Option<&CheckpointRecord>,
    interval: Duration,
    first_seen: jiff::Timestamp,
) -> jiff::Timestamp {
    match last.filter(|r| r.pod_uid == target.pod_uid || r.pod_uid.is_empty()) {
        Some(record) => record
            .taken_at
            .0
            .checked_add(interval)
            .unwrap_or(record.taken_at.0),
        None => {
            let offset = jitter(&target.pod_uid, &target.container, interval);
            first_seen.checked_add(offset).unwrap_or(first_seen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(containers: &[&str]) -> CheckpointPolicy {
        let spec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "counter"}},
            "containers": containers,
        }))
        .unwrap();
        CheckpointPolicy::new("p", spec)
    }

    pub(crate) fn pod(name: &str, phase: &str, ready: bool, restarts: i32) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "counter"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "sidecar"}]},
            "status": {"phase": phase,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                "containerStatuses": [
                    {"name": "app", "ready": ready, "restartCount": restarts, "image": "i", "imageID": "", "state": {"running": {}}},
                    {"name": "sidecar", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}},
                ]},
        }))
        .unwrap()
    }

    #[test]
    fn running_pods_yield_their_listed_containers() {
        let targets = targets_of(&policy(&["app"]), &pod("p1", "Running", true, 2));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].container, "app");
        assert_eq!(targets[0].restart_count, 2);
        assert_eq!(targets[0].owner, "ReplicaSet/rs");
        assert!(targets[0].healthy);
        assert_eq!(
            targets_of(&policy(&[]), &pod("p1", "Running", true, 0)).len(),
            2
        );
        assert!(targets_of(&policy(&[]), &pod("p1", "Pending", true, 0)).is_empty());
    }

    #[test]
    fn failing_probes_make_a_container_unhealthy() {
        let targets = targets_of(&policy(&["app"]), &pod("p1", "Running", false, 0));
        assert!(!targets[0].healthy);
    }

    #[test]
    fn a_replacement_waiting_for_its_state_is_not_checkpointed() {
        // Ready as a kubelet that ignores gates would say (kwok), but its
        // state has not been written yet.
        let mut replacement = pod("p1", "Running", true, 0);
        let spec = replacement.spec.as_mut().unwrap();
        spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
            condition_type: ferry_api::names::STATE_RESTORED_CONDITION.into(),
        }]);
        assert!(!targets_of(&policy(&["app"]), &replacement)[0].healthy);
        let conditions = replacement
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap();
        conditions.push(
            serde_json::from_value(serde_json::json!({
                "type": ferry_api::names::STATE_RESTORED_CONDITION, "status": "True"}))
            .unwrap(),
        );
        assert!(targets_of(&policy(&["app"]), &replacement)[0].healthy);
    }

    #[test]
    fn selector_matches_labels() {
        assert!(selects(&policy(&[]), &pod("p1", "Running", true, 0)));
        let mut other = pod("p2", "Running", true, 0);
        other.metadata.labels = None;
        assert!(!selects(&policy(&[]), &other));
    }

    #[test]
    fn first_checkpoints_are_spread_and_later_ones_follow_the_interval() {
        let interval = Duration::from_secs(10);
        let seen: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let target = &targets_of(&policy(&["app"]), &pod("p1", "Running", true, 0))[0];
        let first = due_at(target, None, interval, seen);
        assert!(first >= seen && first < seen.checked_add(interval).unwrap());
        assert_eq!(first, due_at(target, None, interval, seen), "stable");
        let record: CheckpointRecord = serde_json::from_value(serde_json::json!({
            "pod": "p1", "podUid": "uid-p1", "container": "app", "node": "node-a", "archive": "x",
            "sizeBytes": 1, "durationMs": 1, "takenAt": "2026-01-01T00:00:07Z",
        }))
        .unwrap();
        assert_eq!(
            due_at(target, Some(&record), interval, seen),
            "2026-01-01T00:00:17Z".parse::<jiff::Timestamp>().unwrap()
        );
        let spread: std::collections::BTreeSet<_> = (0..20)
            .map(|i| jitter(&format!("uid-{i}"), "app", interval))
            .collect();
        assert!(spread.len() > 15, "offsets differ between containers");
    }
}
