//! Failure detection: pure functions over the pods, nodes and agents the
//! controller sees, the policy's status and the clock.
//!
//! A failure needs evidence. Node loss comes from [`crate::evidence`]. A pod
//! that goes away is a failure only when the API server says it was
//! disrupted (the `DisruptionTarget` condition that eviction, preemption,
//! taint-based and kubelet-initiated deletion set) or it failed; a pod
//! deleted by its own controller (scale-down, rollout) or by a person is
//! released, not restored.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};

use ferry_api::{CheckpointPolicyStatus, CheckpointRecord, FailureTrigger};

use crate::agents::AgentIndex;
use crate::evidence::{NodeHealth, Thresholds, node_health};
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
    /// Each observation, naming its source.
    pub evidence: Vec<String>,
    /// Node loss only: the last time anything heard from the node.
    pub last_contact: Option<jiff::Timestamp>,
    /// When the pod's deletion was requested, if it was disrupted.
    pub failed_at: Option<jiff::Timestamp>,
}

/// A checkpointed pod that went away without a failure: its records go.
#[derive(Clone, Debug, PartialEq)]
pub struct Released {
    pub pod: String,
    pub pod_uid: String,
    pub why: String,
}

/// What the controller remembers of a pod that was being deleted when it
/// last saw it, so a pod already gone from the cache can still be judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Departure {
    /// The `DisruptionTarget` condition's reason and message, if it was set.
    pub disruption: Option<String>,
    /// When its deletion was requested (the API server's clock).
    pub requested_at: Option<jiff::Timestamp>,
    pub seen_at: jiff::Timestamp,
}

impl Departure {
    pub fn of(pod: &Pod, now: jiff::Timestamp) -> Self {
        Self {
            disruption: disruption(pod),
            requested_at: deletion_requested_at(pod),
            seen_at: now,
        }
    }
}

/// When the pod's end began: the earlier of when the API server marked it
/// as a disruption target and when its deletion was requested (its
/// deletionTimestamp is that moment plus the grace period). A deletion
/// shortened later (a kubelet, or ferry stopping the pod) moves the
/// deletionTimestamp, so callers keep the earliest value they saw.
pub fn deletion_requested_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let requested = pod.metadata.deletion_timestamp.as_ref().and_then(|at| {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        at.0.checked_sub(jiff::SignedDuration::from_secs(grace))
            .ok()
    });
    let disrupted = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    earliest(requested, disrupted)
}

/// The earlier of two optional moments.
pub fn earliest(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Option<jiff::Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why the API server disrupted the pod, if it did.
pub fn disruption(pod: &Pod) -> Option<String> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?;
    Some(format!(
        "{}: {}",
        condition.reason.as_deref().unwrap_or("DisruptionTarget"),
        condition.message.as_deref().unwrap_or("no message")
    ))
}

/// What the detector needs to know about the world.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    /// Pods of the policy's namespace by UID.
    pub pods: &'a BTreeMap<String, &'a Pod>,
    /// Pods seen being deleted, by UID.
    pub departed: &'a BTreeMap<String, Departure>,
    pub nodes: &'a BTreeMap<String, &'a Node>,
    pub agents: &'a AgentIndex,
    pub now: jiff::Timestamp,
}

/// Everything one look at a policy's pods found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detection {
    pub failures: Vec<Failure>,
    pub released: Vec<Released>,
    /// Nodes that look wrong without being lost, for the Degraded reason.
    pub suspect_nodes: Vec<String>,
    /// When to look again because a verdict may change by itself.
    pub recheck_in: Option<Duration>,
}

/// Whether a failover of the pod `uid` is in progress, queued, or was the
/// last one.
pub fn failover_recorded(status: &CheckpointPolicyStatus, uid: &str) -> bool {
    status.failovers.iter().any(|f| f.pod_uid == uid)
        || status
            .last_failover
            .as_ref()
            .is_some_and(|f| f.pod_uid == uid)
}

/// Failed and released pods among those with checkpoints, skipping pods
/// whose failover is already recorded. One verdict per pod.
pub fn detect(
    status: &CheckpointPolicyStatus,
    triggers: &[FailureTrigger],
    thresholds: Thresholds,
    world: World<'_>,
) -> Detection {
    let mut by_pod: BTreeMap<&str, Vec<&CheckpointRecord>> = BTreeMap::new();
    for record in status.checkpoints.iter().filter(|r| !r.pod_uid.is_empty()) {
        by_pod.entry(&record.pod_uid).or_default().push(record);
    }
    let mut health: BTreeMap<String, NodeHealth> = BTreeMap::new();
    let mut detection = Detection::default();
    for (uid, records) in by_pod {
        if failover_recorded(status, uid) {
            continue;
        }
        let first = records[0];
        let pod = world.pods.get(uid).copied();
        let node = pod
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_else(|| first.node.clone());
        let node_health = health.entry(node.clone()).or_insert_with(|| {
            node_health(&node, world.nodes, world.agents, thresholds, world.now)
        });
        if let NodeHealth::Suspect { why, recheck_in } = node_health {
            if !detection.suspect_nodes.contains(why) {
                detection.suspect_nodes.push(why.clone());
            }
            if let Some(wait) = recheck_in {
                detection.recheck_in = Some(detection.recheck_in.map_or(*wait, |r| r.min(*wait)));
            }
        }
        let verdict = classify(pod, world.departed.get(uid), &records, node_health);
        match verdict {
            Verdict::Fine => {}
            Verdict::Released(why) => detection.released.push(Released {
                pod: first.pod.clone(),
                pod_uid: uid.to_owned(),
                why,
            }),
            Verdict::Failed {
                reason,
                detail,
                evidence,
                last_contact,
                failed_at,
            } if triggers.contains(&reason) => detection.failures.push(Failure {
                pod: first.pod.clone(),
                pod_uid: uid.to_owned(),
                node: node.clone(),
                owner: pod.map(owner_of).unwrap_or_else(|| first.owner.clone()),
                reason,
                detail,
                evidence,
                last_contact,
                failed_at,
            }),
            Verdict::Failed { .. } => {}
        }
    }
    detection
}

enum Verdict {
    Fine,
    Released(String),
    Failed {
        reason: FailureTrigger,
        detail: String,
        evidence: Vec<String>,
        last_contact: Option<jiff::Timestamp>,
        failed_at: Option<jiff::Timestamp>,
    },
}

fn failed(reason: FailureTrigger, detail: String) -> Verdict {
    disrupted(reason, detail, None)
}

fn disrupted(
    reason: FailureTrigger,
    detail: String,
    failed_at: Option<jiff::Timestamp>,
) -> Verdict {
    Verdict::Failed {
        reason,
        evidence: vec![format!("API server: {detail}")],
        detail,
        last_contact: None,
        failed_at,
    }
}

fn classify(
    pod: Option<&Pod>,
    departure: Option<&Departure>,
    records: &[&CheckpointRecord],
    node_health: &NodeHealth,
) -> Verdict {
    // Node loss first: a pod on a lost node may still look Running.
    if let NodeHealth::Lost(loss) = node_health {
        return Verdict::Failed {
            reason: FailureTrigger::NodeLoss,
            detail: loss.evidence.join("; "),
            evidence: loss.evidence.clone(),
            last_contact: loss.last_contact,
            failed_at: None,
        };
    }
    let Some(pod) = pod else {
        return match departure.and_then(|d| d.disruption.clone()) {
            Some(why) => disrupted(
                FailureTrigger::PodLoss,
                format!("pod disrupted ({why})"),
                departure.and_then(|d| d.requested_at),
            ),
            None if departure.is_some() => Verdict::Released(
                "deleted by its controller or a user, without a disruption: not a failure".into(),
            ),
            None => Verdict::Released(
                "gone without any sign of a disruption (deleted while ferry was not watching)"
                    .into(),
            ),
        };
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return match disruption(pod) {
            Some(why) => disrupted(
                FailureTrigger::PodLoss,
                format!("pod disrupted ({why})"),
                earliest(
                    deletion_requested_at(pod),
                    departure.and_then(|d| d.requested_at),
                ),
            ),
            None => Verdict::Released(
                "being deleted by its controller or a user, without a disruption: not a failure"
                    .into(),
            ),
        };
    }
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        let why = status
            .and_then(|s| s.reason.clone())
            .unwrap_or_else(|| "Failed".into());
        return failed(FailureTrigger::PodLoss, format!("pod failed ({why})"));
    }
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    for record in records {
        let Some(current) = statuses.iter().find(|s| s.name == record.container) else {
            continue;
        };
        if current.restart_count > record.restart_count {
            return failed(
                FailureTrigger::ContainerFailure,
                format!(
                    "kubelet: container {} restarted (restart count {} → {})",
                    record.container, record.restart_count, current.restart_count
                ),
            );
        }
        if let Some(terminated) = current.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return failed(
                FailureTrigger::ContainerFailure,
                format!(
                    "kubelet: container {} terminated with exit code {}",
                    record.container, terminated.exit_code
                ),
            );
        }
        // Stopped after the checkpoint and not started again, without a
        // restart being counted: a restored container, whose checkpoint
        // image is released once the restore ran, cannot start in place
        // (ErrImageNeverPull); nor should it, since it would come back
        // from the old checkpoint.
        let waiting = current.state.as_ref().and_then(|s| s.waiting.as_ref());
        let stopped = current
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| {
                t.finished_at
                    .as_ref()
                    .is_some_and(|f| f.0 > record.taken_at.0)
            });
        if let (Some(waiting), Some(stopped)) = (waiting, stopped) {
            return failed(
                FailureTrigger::ContainerFailure,
                format!(
                    "kubelet: container {} stopped (exit code {}) and has not started again ({})",
                    record.container,
                    stopped.exit_code,
                    waiting.reason.as_deref().unwrap_or("waiting")
                ),
            );
        }
    }
    Verdict::Fine
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::ResourceExt;

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

    fn deleting(mut pod: Pod, disrupted: bool) -> Pod {
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(100)),
        );
        if disrupted {
            pod.status.as_mut().unwrap().conditions = Some(vec![
                serde_json::from_value(serde_json::json!({"type": "DisruptionTarget",
                    "status": "True", "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting"}))
                .unwrap(),
            ]);
        }
        pod
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
        departed: BTreeMap<String, Departure>,
        nodes: Vec<Node>,
        agents: AgentIndex,
    }

    impl Fixture {
        fn run(&self, status: &CheckpointPolicyStatus, now: i64) -> Detection {
            let pods: BTreeMap<String, &Pod> =
                self.pods.iter().map(|p| (p.uid().unwrap(), p)).collect();
            let nodes: BTreeMap<String, &Node> =
                self.nodes.iter().map(|n| (n.name_any(), n)).collect();
            let triggers = [
                FailureTrigger::ContainerFailure,
                FailureTrigger::PodLoss,
                FailureTrigger::NodeLoss,
            ];
            detect(
                status,
                &triggers,
                Thresholds {
                    not_ready: Duration::from_secs(20),
                    unreachable: Duration::from_secs(2),
                },
                World {
                    pods: &pods,
                    departed: &self.departed,
                    nodes: &nodes,
                    agents: &self.agents,
                    now: at(now),
                },
            )
        }
    }

    fn healthy() -> Fixture {
        Fixture {
            pods: vec![pod(1, "Running")],
            departed: BTreeMap::new(),
            nodes: vec![node("a", "True", 0), node("b", "True", 0)],
            agents: agents(&[("a", 100), ("b", 100)]),
        }
    }

    #[test]
    fn a_healthy_pod_has_no_failure() {
        assert_eq!(
            healthy().run(&status(90, &["b"]), 101),
            Detection::default()
        );
    }

    #[test]
    fn restart_count_rise_is_a_container_failure() {
        let mut world = healthy();
        world.pods = vec![pod(2, "Running")];
        let failures = world.run(&status(90, &["b"]), 101).failures;
        assert_eq!(failures[0].reason, FailureTrigger::ContainerFailure);
        assert!(
            failures[0].detail.contains("1 → 2"),
            "{}",
            failures[0].detail
        );
        assert!(failures[0].evidence[0].starts_with("API server: kubelet:"));
        assert_eq!(failures[0].owner, "ReplicaSet/rs");
    }

    #[test]
    fn a_container_that_stopped_and_cannot_start_again_is_a_container_failure() {
        let mut world = healthy();
        let mut stuck = pod(1, "Running");
        stuck.status.as_mut().unwrap().container_statuses = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "app", "ready": false,
                "restartCount": 1, "image": "localhost/ferry/checkpoint/ns/p/app:g", "imageID": "",
                "state": {"waiting": {"reason": "ErrImageNeverPull"}},
                "lastState": {"terminated": {"exitCode": 137, "finishedAt": at(95).to_string()}}}))
            .unwrap(),
        ]);
        world.pods = vec![stuck.clone()];
        let failures = world.run(&status(90, &["b"]), 101).failures;
        assert_eq!(failures[0].reason, FailureTrigger::ContainerFailure);
        assert!(
            failures[0].detail.contains("ErrImageNeverPull"),
            "{}",
            failures[0].detail
        );
        // A stop before the checkpoint was taken is old news.
        world.pods = vec![stuck];
        assert!(world.run(&status(96, &["b"]), 101).failures.is_empty());
    }

    #[test]
    fn evicted_or_failed_pods_are_pod_loss() {
        let mut world = healthy();
        world.pods = vec![deleting(pod(1, "Running"), true)];
        let failures = world.run(&status(90, &["b"]), 101).failures;
        assert_eq!(failures[0].reason, FailureTrigger::PodLoss);
        assert!(failures[0].detail.contains("EvictionByEvictionAPI"));
        world.pods = vec![pod(1, "Failed")];
        assert_eq!(
            world.run(&status(90, &["b"]), 101).failures[0].reason,
            FailureTrigger::PodLoss
        );
        // Gone from the cache, remembered as evicted.
        world.pods.clear();
        world.departed.insert(
            "u1".into(),
            Departure::of(&deleting(pod(1, "Running"), true), at(100)),
        );
        assert_eq!(
            world.run(&status(90, &["b"]), 101).failures[0].reason,
            FailureTrigger::PodLoss
        );
    }

    #[test]
    fn a_disruption_dates_from_its_first_sign_not_from_a_shortened_deletion() {
        let mut world = healthy();
        // Evicted at 95 with 30 s of grace; later stopped with 1 s of grace
        // at 99, which moves the deletionTimestamp to 100.
        let mut evicted = deleting(pod(1, "Running"), true);
        evicted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(125)),
        );
        evicted.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(deletion_requested_at(&evicted), Some(at(95)));
        let mut stopped = evicted.clone();
        stopped.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(100)),
        );
        stopped.metadata.deletion_grace_period_seconds = Some(1);
        let first = Departure::of(&evicted, at(95));
        world.departed.insert("u1".into(), first);
        world.pods = vec![stopped.clone()];
        let failures = world.run(&status(90, &["b"]), 101).failures;
        assert_eq!(failures[0].failed_at, Some(at(95)));
        // The DisruptionTarget condition's time counts when it is earlier.
        let mut marked = stopped;
        marked.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(94)));
        assert_eq!(deletion_requested_at(&marked), Some(at(94)));
    }

    #[test]
    fn scale_down_rollout_and_user_deletion_release_the_pod() {
        let mut world = healthy();
        // Being deleted by the ReplicaSet (scale-down or rollout).
        world.pods = vec![deleting(pod(1, "Running"), false)];
        let detection = world.run(&status(90, &["b"]), 101);
        assert!(detection.failures.is_empty());
        assert!(detection.released[0].why.contains("not a failure"));
        // Gone, and seen going without a disruption.
        world.pods.clear();
        world.departed.insert(
            "u1".into(),
            Departure::of(&deleting(pod(1, "Running"), false), at(100)),
        );
        assert_eq!(world.run(&status(90, &["b"]), 101).released.len(), 1);
        // Gone without ever being seen going: no evidence, no failover.
        world.departed.clear();
        let detection = world.run(&status(90, &["b"]), 101);
        assert!(detection.failures.is_empty());
        assert!(detection.released[0].why.contains("not watching"));
    }

    #[test]
    fn node_loss_waits_for_the_grace_period_and_names_its_evidence() {
        let mut world = healthy();
        world.nodes[0] = node("a", "Unknown", 100);
        let early = world.run(&status(90, &["b"]), 110);
        assert!(early.failures.is_empty(), "10s < 20s grace");
        assert_eq!(early.recheck_in, Some(Duration::from_secs(10)));
        assert_eq!(early.suspect_nodes.len(), 1);
        let failures = world.run(&status(90, &["b"]), 121).failures;
        assert_eq!(failures[0].reason, FailureTrigger::NodeLoss);
        assert!(failures[0].evidence[0].contains("Ready=Unknown"));
    }

    #[test]
    fn an_expired_agent_lease_on_a_ready_node_is_no_failure() {
        let mut world = healthy();
        world.agents = agents(&[("a", 60), ("b", 100)]);
        let detection = world.run(&status(90, &["b"]), 200);
        assert!(detection.failures.is_empty());
        assert!(
            detection.suspect_nodes[0].contains("agent of node a has not renewed"),
            "{:?}",
            detection.suspect_nodes
        );
    }

    #[test]
    fn recorded_failovers_are_not_detected_twice() {
        let mut world = healthy();
        world.pods = vec![pod(2, "Running")];
        let mut s = status(90, &["b"]);
        assert_eq!(world.run(&s, 101).failures.len(), 1);
        let mut record: ferry_api::FailoverRecord = serde_json::from_value(serde_json::json!({
            "reason": "ContainerFailure", "pod": "p", "podUid": "u1", "fromNode": "a",
            "startedAt": at(101).to_string(),
        }))
        .unwrap();
        record.stage = ferry_api::FailoverStage::Detected;
        s.failovers.push(record);
        assert!(world.run(&s, 102).failures.is_empty());
    }

    #[test]
    fn triggers_that_are_off_are_ignored() {
        let mut world = healthy();
        world.pods = vec![pod(2, "Running")];
        let pods: BTreeMap<String, &Pod> =
            world.pods.iter().map(|p| (p.uid().unwrap(), p)).collect();
        let nodes: BTreeMap<String, &Node> =
            world.nodes.iter().map(|n| (n.name_any(), n)).collect();
        world.departed.clear();
        let detection = detect(
            &status(90, &["b"]),
            &[FailureTrigger::NodeLoss],
            Thresholds {
                not_ready: Duration::from_secs(20),
                unreachable: Duration::from_secs(2),
            },
            World {
                pods: &pods,
                departed: &world.departed,
                nodes: &nodes,
                agents: &world.agents,
                now: at(101),
            },
        );
        assert!(detection.failures.is_empty());
    }
}
