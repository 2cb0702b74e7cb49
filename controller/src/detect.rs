//! Failure detection and restore planning: pure functions over the pods,
//! nodes and agents the controller sees, the policy's status and the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use ferry_api::{
    CheckpointPolicyStatus, CheckpointRecord, ContainerRestore, FailoverRecord, FailoverStage,
    FailureTrigger,
};

use crate::agents::AgentIndex;
use crate::placement::node_ready_condition;
use crate::schedule::owner_of;

/// A failed, checkpointed pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    pub owner: String,
    pub reason: FailureTrigger,
    /// What was observed, for status and Events.
    pub detail: String,
}

/// What the detector needs to know about the world.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    /// Pods of the policy's namespace by UID.
    pub pods: &'a BTreeMap<String, &'a Pod>,
    pub nodes: &'a BTreeMap<String, &'a Node>,
    pub agents: &'a AgentIndex,
    pub now: jiff::Timestamp,
}

fn elapsed_since(now: jiff::Timestamp, then: jiff::Timestamp) -> Duration {
    now.duration_since(then).try_into().unwrap_or_default()
}

/// Why `node` counts as lost, if it does: NotReady (or Unknown) for longer
/// than `grace`, gone from the API, or its agent's Lease expired `grace` ago.
pub fn node_loss(node_name: &str, world: World<'_>, grace: Duration) -> Option<String> {
    let Some(node) = world.nodes.get(node_name) else {
        return Some(format!("node {node_name} no longer exists"));
    };
    if let Some(ready) = node_ready_condition(node)
        && ready.status != "True"
    {
        let since = ready.last_transition_time.as_ref().map(|t| t.0);
        let down_for = since.map(|t| elapsed_since(world.now, t)).unwrap_or(grace);
        if down_for >= grace {
            return Some(format!(
                "node {node_name} Ready={} for {}s",
                ready.status,
                down_for.as_secs()
            ));
        }
    }
    if let Some(agent) = world.agents.get(node_name) {
        let expired_for = elapsed_since(world.now, agent.expires());
        if agent.expires() < world.now && expired_for >= grace {
            return Some(format!(
                "agent lease of node {node_name} expired {}s ago",
                expired_for.as_secs()
            ));
        }
    }
    None
}

/// How long until [`node_loss`] would report `node_name` lost if nothing
/// changes: the rest of the grace period of a NotReady node, or of an agent
/// Lease that is not renewed. `None` when it is lost already or was never
/// seen with an agent. A reconciliation scheduled then replaces polling.
pub fn node_loss_in(node_name: &str, world: World<'_>, grace: Duration) -> Option<Duration> {
    let node = world.nodes.get(node_name)?;
    let remaining = |since: jiff::Timestamp| {
        grace
            .checked_sub(elapsed_since(world.now, since))
            .filter(|left| !left.is_zero())
    };
    let not_ready = node_ready_condition(node)
        .filter(|ready| ready.status != "True")
        .map(|ready| {
            ready
                .last_transition_time
                .as_ref()
                .map_or(Some(Duration::ZERO), |t| remaining(t.0))
        });
    let lease = world.agents.get(node_name).map(|agent| {
        let expires = agent.expires();
        if expires > world.now {
            Some(elapsed_since(expires, world.now) + grace)
        } else {
            remaining(expires)
        }
    });
    match (not_ready, lease) {
        (Some(None), _) | (_, Some(None)) => None,
        (Some(Some(a)), Some(Some(b))) => Some(a.min(b)),
        (Some(Some(a)), None) | (None, Some(Some(a))) => Some(a),
        (None, None) => None,
    }
}

/// Whether a failover of the pod `uid` is in progress or was the last one.
pub fn failover_recorded(status: &CheckpointPolicyStatus, uid: &str) -> bool {
    status.failovers.iter().any(|f| f.pod_uid == uid)
        || status
            .last_failover
            .as_ref()
            .is_some_and(|f| f.pod_uid == uid)
}

/// Failed pods among those with checkpoints, skipping pods whose failover
/// is already recorded. One failure per pod.
pub fn detect(
    status: &CheckpointPolicyStatus,
    triggers: &[FailureTrigger],
    grace: Duration,
    world: World<'_>,
) -> Vec<Failure> {
    let mut by_pod: BTreeMap<&str, Vec<&CheckpointRecord>> = BTreeMap::new();
    for record in status.checkpoints.iter().filter(|r| !r.pod_uid.is_empty()) {
        by_pod.entry(&record.pod_uid).or_default().push(record);
    }
    let mut failures = Vec::new();
    for (uid, records) in by_pod {
        if failover_recorded(status, uid) {
            continue;
        }
        let first = records[0];
        let pod = world.pods.get(uid).copied();
        let node = pod
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_else(|| first.node.clone());
        let failure = |reason, detail: String| Failure {
            pod: first.pod.clone(),
            pod_uid: uid.to_owned(),
            node: node.clone(),
            owner: pod
                .map(owner_of)
                .unwrap_or_else(|| first_owner(status, uid)),
            reason,
            detail,
        };
        let found = classify(pod, &records, &node, grace, world);
        if let Some((reason, detail)) = found
            && triggers.contains(&reason)
        {
            failures.push(failure(reason, detail));
        }
    }
    failures
}

/// The owner remembered for a pod that is gone: recorded checkpoints do not
/// carry it, so a gone pod's owner comes from the failover when there is one.
fn first_owner(status: &CheckpointPolicyStatus, uid: &str) -> String {
    status
        .failovers
        .iter()
        .find(|f| f.pod_uid == uid)
        .map(|f| f.owner.clone())
        .unwrap_or_default()
}

fn classify(
    pod: Option<&Pod>,
    records: &[&CheckpointRecord],
    node: &str,
    grace: Duration,
    world: World<'_>,
) -> Option<(FailureTrigger, String)> {
    // Node loss first: a pod on a lost node may still look Running.
    if let Some(detail) = node_loss(node, world, grace) {
        return Some((FailureTrigger::NodeLoss, detail));
    }
    let Some(pod) = pod else {
        return Some((FailureTrigger::PodLoss, "pod deleted".into()));
    };
    let status = pod.status.as_ref();
    if pod.metadata.deletion_timestamp.is_some() {
        return Some((FailureTrigger::PodLoss, "pod is being deleted".into()));
    }
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        let why = status
            .and_then(|s| s.reason.clone())
            .unwrap_or_else(|| "Failed".into());
        return Some((FailureTrigger::PodLoss, format!("pod failed ({why})")));
    }
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    for record in records {
        let Some(current) = statuses.iter().find(|s| s.name == record.container) else {
            continue;
        };
        if current.restart_count > record.restart_count {
            return Some((
                FailureTrigger::ContainerFailure,
                format!(
                    "container {} restarted (restart count {} → {})",
                    record.container, record.restart_count, current.restart_count
                ),
            ));
        }
        if let Some(terminated) = current.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return Some((
                FailureTrigger::ContainerFailure,
                format!(
                    "container {} terminated with exit code {}",
                    record.container, terminated.exit_code
                ),
            ));
        }
    }
    None
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
        replacement_pod: None,
        checkpoint_age: age.map(|a| format!("{}s", a.as_secs())),
        cold_start: false,
        started_at: Time(world.now),
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
            p.annotations()
                .get(ferry_api::names::FAILOVER_ANNOTATION)
                .is_some_and(|uid| *uid == failover.pod_uid)
        })
        .min_by_key(|p| p.creation_timestamp().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn node(name: &str, ready: &str, since: i64) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "lastTransitionTime": at(since).to_string()}]},
        }))
        .unwrap()
    }

    fn agents(renewed: &[(&str, i64)]) -> AgentIndex {
        let leases: Vec<Lease> = renewed
            .iter()
            .map(|(n, t)| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("ferry-agent-{n}"),
                        "annotations": {"ferry.dev/grpc-endpoint": "127.0.0.1:1"}},
                    "spec": {"leaseDurationSeconds": 15,
                        "renewTime": at(*t).strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
                }))
                .unwrap()
            })
            .collect();
        AgentIndex::from_leases(&leases)
    }

    fn pod(restarts: i32, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r", "controller": true}]},
            "spec": {"nodeName": "a", "containers": [{"name": "app"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": restarts, "image": "i", "imageID": "", "state": {"running": {}}}]},
        }))
        .unwrap()
    }

    fn status(taken_at: i64, replicas: &[&str]) -> CheckpointPolicyStatus {
        serde_json::from_value(serde_json::json!({
            "checkpoints": [{"pod": "p", "podUid": "u1", "container": "app", "node": "a",
                "archive": "abc", "sizeBytes": 1, "durationMs": 1, "restartCount": 1,
                "takenAt": at(taken_at).to_string(), "replicas": replicas}],
        }))
        .unwrap()
    }

    struct Fixture {
        pods: Vec<Pod>,
        nodes: Vec<Node>,
        agents: AgentIndex,
    }

    impl Fixture {
        fn with_world<T>(&self, now: i64, look: impl FnOnce(World<'_>) -> T) -> T {
            let pods: BTreeMap<String, &Pod> =
                self.pods.iter().map(|p| (p.uid().unwrap(), p)).collect();
            let nodes: BTreeMap<String, &Node> =
                self.nodes.iter().map(|n| (n.name_any(), n)).collect();
            look(World {
                pods: &pods,
                nodes: &nodes,
                agents: &self.agents,
                now: at(now),
            })
        }

        fn run(&self, status: &CheckpointPolicyStatus, now: i64) -> Vec<Failure> {
            let triggers = [
                FailureTrigger::ContainerFailure,
                FailureTrigger::PodLoss,
                FailureTrigger::NodeLoss,
            ];
            self.with_world(now, |world| {
                detect(status, &triggers, Duration::from_secs(20), world)
            })
        }

        fn node_loss_in(&self, node: &str, now: i64) -> Option<Duration> {
            self.with_world(now, |world| {
                node_loss_in(node, world, Duration::from_secs(20))
            })
        }
    }

    #[test]
    fn node_loss_deadline_follows_the_lease_and_readiness() {
        let mut world = healthy();
        // Lease renewed at 100 for 15 s: lost at 115 + 20 unless renewed.
        assert_eq!(world.node_loss_in("a", 101), Some(Duration::from_secs(34)));
        // Expired at 115, counted from there.
        assert_eq!(world.node_loss_in("a", 125), Some(Duration::from_secs(10)));
        assert_eq!(world.node_loss_in("a", 135), None, "lost already");
        // NotReady since 110: the earlier of the two deadlines.
        world.nodes = vec![node("a", "Unknown", 110)];
        assert_eq!(world.node_loss_in("a", 112), Some(Duration::from_secs(18)));
        assert_eq!(world.node_loss_in("gone", 112), None);
        // A node without an agent is watched through its readiness only.
        world.agents = agents(&[]);
        assert_eq!(world.node_loss_in("a", 112), Some(Duration::from_secs(18)));
        world.nodes = vec![node("a", "True", 0)];
        assert_eq!(world.node_loss_in("a", 112), None);
    }

    fn healthy() -> Fixture {
        Fixture {
            pods: vec![pod(1, "Running")],
            nodes: vec![node("a", "True", 0), node("b", "True", 0)],
            agents: agents(&[("a", 100), ("b", 100)]),
        }
    }

    #[test]
    fn a_healthy_pod_has_no_failure() {
        assert!(healthy().run(&status(90, &["b"]), 101).is_empty());
    }

    #[test]
    fn restart_count_rise_is_a_container_failure() {
        let mut world = healthy();
        world.pods = vec![pod(2, "Running")];
        let failures = world.run(&status(90, &["b"]), 101);
        assert_eq!(failures[0].reason, FailureTrigger::ContainerFailure);
        assert!(
            failures[0].detail.contains("1 → 2"),
            "{}",
            failures[0].detail
        );
        assert_eq!(failures[0].owner, "ReplicaSet/rs");
    }

    #[test]
    fn deleted_or_failed_pods_are_pod_loss() {
        let mut world = healthy();
        world.pods.clear();
        assert_eq!(
            world.run(&status(90, &["b"]), 101)[0].reason,
            FailureTrigger::PodLoss
        );
        world.pods = vec![pod(1, "Failed")];
        assert_eq!(
            world.run(&status(90, &["b"]), 101)[0].reason,
            FailureTrigger::PodLoss
        );
    }

    #[test]
    fn node_loss_waits_for_the_grace_period() {
        let mut world = healthy();
        world.nodes[0] = node("a", "Unknown", 100);
        assert!(
            world.run(&status(90, &["b"]), 110).is_empty(),
            "10s < 20s grace"
        );
        let failures = world.run(&status(90, &["b"]), 121);
        assert_eq!(failures[0].reason, FailureTrigger::NodeLoss);
        assert!(failures[0].detail.contains("Ready=Unknown"));
    }

    #[test]
    fn an_expired_agent_lease_is_node_loss_after_the_grace_period() {
        let mut world = healthy();
        world.agents = agents(&[("a", 60), ("b", 100)]);
        // Lease expires at 75; grace 20s.
        assert!(world.run(&status(90, &["b"]), 90).is_empty());
        assert_eq!(
            world.run(&status(90, &["b"]), 96)[0].reason,
            FailureTrigger::NodeLoss
        );
    }

    #[test]
    fn recorded_failovers_are_not_detected_twice() {
        let mut world = healthy();
        world.pods.clear();
        let mut s = status(90, &["b"]);
        let failure = &world.run(&s, 101)[0];
        let record = plan_failover(
            failure,
            &s,
            Duration::from_secs(300),
            None,
            World {
                pods: &BTreeMap::new(),
                nodes: &world.nodes.iter().map(|n| (n.name_any(), n)).collect(),
                agents: &world.agents,
                now: at(101),
            },
        );
        s.failovers.push(record);
        assert!(world.run(&s, 102).is_empty());
        world.pods.clear();
    }

    fn plan(world: &Fixture, s: &CheckpointPolicyStatus, now: i64) -> FailoverRecord {
        let nodes: BTreeMap<String, &Node> =
            world.nodes.iter().map(|n| (n.name_any(), n)).collect();
        let failure = Failure {
            pod: "p".into(),
            pod_uid: "u1".into(),
            node: "a".into(),
            owner: "ReplicaSet/rs".into(),
            reason: FailureTrigger::NodeLoss,
            detail: "node a Ready=Unknown for 20s".into(),
        };
        plan_failover(
            &failure,
            s,
            Duration::from_secs(60),
            None,
            World {
                pods: &BTreeMap::new(),
                nodes: &nodes,
                agents: &world.agents,
                now: at(now),
            },
        )
    }

    #[test]
    fn restore_goes_to_a_live_standby_with_the_archive() {
        let mut world = healthy();
        world.nodes.push(node("c", "True", 0));
        world.agents = agents(&[("a", 100), ("b", 100), ("c", 100)]);
        let record = plan(&world, &status(90, &["b", "c"]), 101);
        assert_eq!(record.to_node.as_deref(), Some("b"));
        assert_eq!(record.containers[0].archive, "abc");
        assert!(!record.cold_start);
        world.nodes[1] = node("b", "False", 0);
        assert_eq!(
            plan(&world, &status(90, &["b", "c"]), 101)
                .to_node
                .as_deref(),
            Some("c")
        );
    }

    #[test]
    fn old_or_missing_checkpoints_mean_a_cold_start() {
        let world = healthy();
        let old = plan(&world, &status(0, &["b"]), 101);
        assert!(old.cold_start);
        assert!(
            old.message.contains("older than maxCheckpointAge"),
            "{}",
            old.message
        );
        let unreplicated = plan(&world, &status(90, &[]), 101);
        assert!(unreplicated.cold_start);
        assert!(
            unreplicated.message.contains("no standby"),
            "{}",
            unreplicated.message
        );
    }
}
