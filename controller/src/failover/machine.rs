//! The failover as a pure state machine: `next step = f(record, observed
//! world, now)`. Each step names one action and the record as it should be
//! once that action succeeded; the executor ([`super::execute`]) carries the
//! action out and writes the record. A record is written before the action
//! that depends on it, so a controller that restarts or loses leadership at
//! any point continues the same failover and never starts a second one.
//!
//! Stages: Detected → (prepare the restore on the target) → Prepared →
//! (stop the failed instance, and know it stopped) → Fenced → (the
//! replacement runs) → Completed. At most one live copy: a replacement is
//! never released to the scheduler before the fence is confirmed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use ferry_api::agent::FencingInfo;
use ferry_api::names::{FAILED_NODE_TAINT, OUT_OF_SERVICE_TAINT};
use ferry_api::{FailoverRecord, FailoverStage, FailureTrigger};

/// A failover with no running replacement after this long gives up.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a failed pod on a healthy node gets to stop: it is being
/// replaced from its checkpoint, so nothing it does now is kept.
pub const STOP_GRACE_SECONDS: i64 = 1;

/// Clock slack when comparing a pod's creation with the failure.
pub const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// Added to a node's fence timeout and the agent's lag (see
/// `FencingInfo::lag_millis`) before its self-fencing is trusted: the kill
/// itself and a little clock difference between the agent and the
/// controller.
pub const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// What the machine sees of the world for one failover.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub now: jiff::Timestamp,
    /// Pods of the policy's namespace.
    pub pods: &'a [&'a Pod],
    /// The node the failed pod ran on, if it still exists.
    pub from_node: Option<&'a Node>,
    /// How the failed node's agent fences itself (from its last Lease).
    pub from_fencing: Option<&'a FencingInfo>,
    /// The last time anything heard from the failed node's agent.
    pub last_contact: Option<jiff::Timestamp>,
    /// The last time a peer reached the failed node's kubelet.
    pub kubelet_contact: Option<jiff::Timestamp>,
    /// When the failed node's agent last renewed its Lease. Only that renewal
    /// shows the node back together with what its agent fenced meanwhile
    /// (a peer's probe may succeed before it).
    pub from_renewed: Option<jiff::Timestamp>,
    /// Whether the target node's agent is live.
    pub target_live: bool,
    /// Tolerations a replacement ferry creates gets.
    pub tolerations: &'a [Toleration],
    /// Strategy StateApi: the application's state endpoint; the replacement
    /// starts from its image and receives the state with PUT.
    pub state_api: Option<&'a ferry_proto::v1::StateApi>,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing until the world changes.
    Wait,
    /// Only the record changes.
    Record,
    /// Ask the target agent to prepare these archives.
    Prepare { node: String, archives: Vec<String> },
    /// NoSchedule taint on the failed node.
    TaintNode { node: String },
    /// Delete the failed pod through its kubelet (graceful, short).
    StopPod { name: String, uid: String },
    /// Remove the failed pod's object without its kubelet (the instance is
    /// known to be stopped).
    ForceRemovePod { name: String, uid: String },
    /// Create the replacement of a bare pod.
    CreatePod(Box<Pod>),
    /// Remove ferry's scheduling gate from the replacement.
    ReleasePod { name: String, gate_index: usize },
    /// Delete pods that must not run: cold replacements, extra replacements.
    DeletePods { names: Vec<String> },
    /// Drop the failover: what failed recovered before anything was
    /// stopped, so the original keeps running.
    Cancel,
    /// Make the owner (`Kind/name`) retry creating the replacement now.
    NudgeOwner { owner: String },
    /// Ask the failed node's agent to stop the failed pod (`FencePod`): its
    /// kubelet is lost, its agent is in contact and so never fences itself.
    AskAgentToFence { node: String },
    /// Strategy StateApi: have the agent of `node` write each container's
    /// state into the replacement (PUT to `address`), then open the pod's
    /// readiness gate.
    RestoreState {
        node: String,
        pod: String,
        uid: String,
        address: String,
        /// (container, archive)
        restores: Vec<(String, String)>,
    },
    /// Remove the spent restore grant from the restored replacement, so that
    /// the kubelet restarts its containers as any other pod's (ferry-runc
    /// refuses a grant twice), then record the failover.
    ForgetGrant { pod: String },
    /// Strategy StateApi: open the replacement's readiness gate without a
    /// restored state (the failover gave up): it serves from zero rather
    /// than never.
    OpenStateGate {
        pod: String,
        uid: String,
        message: String,
    },
}

/// The next step of a failover.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub action: Action,
    /// The record once the action succeeded.
    pub record: FailoverRecord,
    /// What happens, for logs and Events; empty when nothing does.
    pub note: String,
    /// When the verdict changes by itself if nothing else happens.
    pub wake_at: Option<jiff::Timestamp>,
}

impl Step {
    pub(super) fn wait(record: &FailoverRecord, note: impl Into<String>) -> Self {
        Self::of(Action::Wait, record.clone(), note)
    }

    pub(super) fn of(action: Action, record: FailoverRecord, note: impl Into<String>) -> Self {
        Self {
            action,
            record,
            note: note.into(),
            wake_at: None,
        }
    }

    /// The same step, looked at again at `at` if nothing else happens.
    pub(super) fn waking_at(self, at: Option<jiff::Timestamp>) -> Self {
        Self {
            wake_at: at,
            ..self
        }
    }

    /// Whether this step ends the failover.
    pub fn finishes(&self) -> bool {
        ended(&self.record)
    }
}

/// Whether the failover is over (Completed or Failed).
pub fn ended(record: &FailoverRecord) -> bool {
    matches!(
        record.stage,
        FailoverStage::Completed | FailoverStage::Failed
    )
}

fn elapsed(now: jiff::Timestamp, since: jiff::Timestamp) -> Duration {
    now.duration_since(since).try_into().unwrap_or_default()
}

pub(super) fn give_up(record: &FailoverRecord, why: String) -> Step {
    let mut failed = record.clone();
    failed.stage = FailoverStage::Failed;
    failed.message = format!("{}; {why}", record.message);
    let note = failed.message.clone();
    // The failover guard refused the owner's tries while this ran, and the
    // owner backs off further after each refusal (up to many minutes). With
    // the guard lifted it is asked to create its pod now, cold but running.
    let action = if nudgeable(&record.owner) {
        Action::NudgeOwner {
            owner: record.owner.clone(),
        }
    } else {
        Action::Record
    };
    Step::of(action, failed, note)
}

/// The next step of `record` in `world`.
pub fn next(record: &FailoverRecord, world: Observed<'_>) -> Step {
    if record.stage < FailoverStage::Completed
        && elapsed(world.now, record.started_at.0) > FAILOVER_TIMEOUT
    {
        let mut step = give_up(
            record,
            format!(
                "gave up: no replacement pod ran within {}s",
                FAILOVER_TIMEOUT.as_secs()
            ),
        );
        // A replacement waiting for its state would never become Ready.
        if world.state_api.is_some()
            && let Some(replacement) = super::replacement(record, world.pods)
            && replacement.uid().is_some()
        {
            step.action = Action::OpenStateGate {
                pod: replacement.name_any(),
                uid: replacement.uid().unwrap_or_default(),
                message: step.record.message.clone(),
            };
        }
        return step;
    }
    if let Some(step) = cancel_if_recovered(record, &world) {
        return step;
    }
    match record.stage {
        FailoverStage::Detected => prepare(record, world),
        FailoverStage::Prepared => fence(record, world),
        FailoverStage::Fenced => super::replace::replace(record, world),
        FailoverStage::Completed | FailoverStage::Failed => Step::wait(record, ""),
    }
}

/// A node that is Ready again and whose agent was heard from after the
/// failover started recovered before it was fenced: nothing was stopped,
/// so the original pod keeps running and the failover is dropped. If the
/// node fails again, that is a new failure (a flapping node never restores
/// twice, because nothing was restored the first time).
fn cancel_if_recovered(record: &FailoverRecord, world: &Observed<'_>) -> Option<Step> {
    let before_fence = matches!(
        record.stage,
        FailoverStage::Detected | FailoverStage::Prepared
    );
    let ready = world.from_node.is_some_and(crate::placement::node_ready);
    let heard_since = world.from_renewed.is_some_and(|t| t > record.started_at.0);
    let pod_running =
        failed_pod(record, world).is_some_and(|p| p.metadata.deletion_timestamp.is_none());
    // Its agent stopped it while cut off: the failover must go on, or the
    // pod would stay down.
    let fenced = fenced_by_agent(record, world).is_some();
    (record.reason == FailureTrigger::NodeLoss
        && before_fence
        && ready
        && heard_since
        && pod_running
        && !fenced)
        .then(|| {
            Step::of(
                Action::Cancel,
                record.clone(),
                format!(
                    "node {} recovered (Ready, its agent answers) before it was fenced: pod {} keeps running there",
                    record.from_node, record.pod
                ),
            )
        })
}

fn prepare(record: &FailoverRecord, world: Observed<'_>) -> Step {
    // On a healthy node the failed pod is stopped while the target prepares
    // the restore, not after: the kubelet's confirmation then arrives about
    // when the image is ready. A bare pod stays until its replacement has
    // been created from its spec; a lost node's pod is fenced by its agent.
    if record.reason != FailureTrigger::NodeLoss
        && !record.owner.is_empty()
        && failed_pod(record, &world).is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    {
        return stop_pod(record, "while the restore is prepared");
    }
    let target = record.to_node.clone().filter(|_| !record.cold_start);
    let Some(target) = target else {
        let mut prepared = record.clone();
        prepared.stage = FailoverStage::Prepared;
        return Step::of(Action::Record, prepared, "cold start: nothing to prepare");
    };
    if !world.target_live {
        return Step::wait(
            record,
            format!("waiting for the agent of node {target} to be live"),
        );
    }
    // A state needs no image: the replacement starts from its own and
    // receives the state once it runs.
    if world.state_api.is_some() {
        let mut prepared = record.clone();
        prepared.stage = FailoverStage::Prepared;
        let note = format!(
            "node {target} holds the state of pod {}; the replacement receives it once it runs",
            record.pod
        );
        return Step::of(Action::Record, prepared, note);
    }
    let archives: Vec<String> = record
        .containers
        .iter()
        .filter(|c| c.image.is_none())
        .map(|c| c.archive.clone())
        .collect();
    let mut prepared = record.clone();
    prepared.stage = FailoverStage::Prepared;
    let note = format!(
        "node {target} prepared the restore of pod {} ({} containers)",
        record.pod,
        record.containers.len()
    );
    Step::of(
        Action::Prepare {
            node: target,
            archives,
        },
        prepared,
        note,
    )
}

/// What the target agent answered for one archive.
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    Ready {
        archive: String,
        /// Empty with a runtime class: the container keeps its image.
        image: String,
        annotations: BTreeMap<String, String>,
        /// The RuntimeClass whose handler restores it, if it is not the image.
        runtime_class: Option<String>,
    },
    /// The archive is missing or corrupt there: no restore is possible.
    Unusable { archive: String, why: String },
}

/// The record after the target agent answered: images filled in, or a cold
/// start when an archive cannot be restored.
pub fn prepared(record: &FailoverRecord, answers: &[Prepared]) -> FailoverRecord {
    let mut next = record.clone();
    for answer in answers {
        match answer {
            Prepared::Ready {
                archive,
                image,
                annotations,
                runtime_class,
            } => {
                for container in next.containers.iter_mut().filter(|c| &c.archive == archive) {
                    container.image = Some(image.clone());
                }
                next.pod_annotations.extend(annotations.clone());
                if runtime_class.is_some() {
                    next.runtime_class.clone_from(runtime_class);
                }
            }
            Prepared::Unusable { archive, why } => {
                next.cold_start = true;
                next.containers.clear();
                next.message = format!(
                    "{}; starting cold: node {} cannot restore archive {archive}: {why}",
                    record.message,
                    record.to_node.as_deref().unwrap_or("?")
                );
                break;
            }
        }
    }
    next.stage = FailoverStage::Prepared;
    next
}

/// How it is known that the failed instance no longer runs.
#[derive(Clone, Debug, PartialEq)]
enum Fence {
    Confirmed(String),
    WaitUntil(jiff::Timestamp, String),
    Waiting(String),
    /// Ask the node's agent to stop the pod.
    AskAgent(String),
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == key))
}

fn failed_pod<'a>(record: &FailoverRecord, world: &Observed<'a>) -> Option<&'a Pod> {
    world
        .pods
        .iter()
        .copied()
        .find(|p| p.uid().as_deref() == Some(record.pod_uid.as_str()))
}

/// When the failed node's agent reports having fenced the failed pod.
fn fenced_by_agent(record: &FailoverRecord, world: &Observed<'_>) -> Option<jiff::Timestamp> {
    world
        .from_fencing?
        .fenced_pods
        .get(&record.pod_uid)
        .map(|at| at.0)
}

/// How often the failed node's agent is asked again to fence a pod while
/// its Lease does not list it yet.
pub const FENCE_ASK_EVERY: Duration = Duration::from_secs(2);

/// Whether the failed node's agent renewed its own Lease within a
/// heartbeat and the margin: in contact, so it will not fence by itself,
/// but it answers. (A lost node's agent is silent for two heartbeats.)
fn agent_in_contact(world: &Observed<'_>) -> bool {
    let heartbeat = world.from_fencing.map_or(1000, |f| f.heartbeat_millis);
    let fresh = Duration::from_millis(heartbeat) + FENCE_MARGIN;
    world.from_renewed.is_some_and(|renewed| {
        Duration::try_from(world.now.duration_since(renewed)).is_ok_and(|age| age <= fresh)
            || renewed > world.now
    })
}

/// Whether the instance on a lost node is known to be stopped.
fn node_fence(record: &FailoverRecord, world: &Observed<'_>) -> Fence {
    let node = &record.from_node;
    if world
        .from_node
        .is_some_and(|n| has_taint(n, OUT_OF_SERVICE_TAINT))
    {
        return Fence::Confirmed(format!(
            "node {node} carries {OUT_OF_SERVICE_TAINT}: its workloads are declared stopped"
        ));
    }
    if let Some(at) = fenced_by_agent(record, world) {
        return Fence::Confirmed(format!(
            "the agent of node {node} reports it stopped pod {} at {at} while cut off, and keeps it stopped",
            record.pod
        ));
    }
    if agent_in_contact(world) {
        let why = format!(
            "the kubelet of node {node} is lost but its agent is not (so it does not fence by itself): asked it to stop pod {}; waiting for its Lease to list the pod as fenced",
            record.pod
        );
        let again = record
            .fence_requested_at
            .as_ref()
            .and_then(|t| t.0.checked_add(FENCE_ASK_EVERY).ok());
        return match again {
            Some(at) if world.now < at => Fence::WaitUntil(at, why),
            _ => Fence::AskAgent(why),
        };
    }
    let Some(fencing) = world.from_fencing else {
        return Fence::Waiting(format!(
            "the agent of node {node} does not fence itself; waiting for its kubelet to confirm, or for `kubectl taint node {node} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute`"
        ));
    };
    let since = world.last_contact.unwrap_or(record.started_at.0);
    // An agent that was down when its node was cut off (crashed, being
    // rolled) fenced nothing: its kubelet answered after the agent fell
    // silent. Only the kubelet, the agent's own report or an administrator
    // can say the pod stopped then.
    let agent_gap =
        Duration::from_millis(fencing.heartbeat_millis.saturating_mul(2)) + FENCE_MARGIN;
    if let Some(kubelet) = world.kubelet_contact
        && since.checked_add(agent_gap).is_ok_and(|t| kubelet > t)
    {
        return Fence::Waiting(format!(
            "the agent of node {node} fell silent at {since} while its kubelet still answered at {kubelet}: it was not running when the node was cut off, so it cannot have fenced; waiting for its kubelet to confirm, for the agent to report pod {} fenced, or for `kubectl taint node {node} {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute`",
            record.pod
        ));
    }
    let timeout = Duration::from_millis(fencing.timeout_millis)
        + Duration::from_millis(fencing.lag_millis.unwrap_or(fencing.heartbeat_millis))
        + FENCE_MARGIN;
    let fenced_by = since.checked_add(timeout).unwrap_or(since);
    let why = format!(
        "node {node} fenced itself: nothing heard from it since {since}, and its agent stops protected containers after {:.1}s without the API server and its peers",
        Duration::from_millis(fencing.timeout_millis).as_secs_f64()
    );
    if world.now >= fenced_by {
        Fence::Confirmed(why)
    } else {
        Fence::WaitUntil(fenced_by, why)
    }
}

fn fence(record: &FailoverRecord, world: Observed<'_>) -> Step {
    let pod = failed_pod(record, &world);
    // A lost node's kubelet cannot confirm anything: the fence comes from
    // the node's own agent (or an administrator), never from a deletion.
    let node_lost = record.reason == FailureTrigger::NodeLoss;
    if node_lost
        && let Some(node) = world.from_node
        && !has_taint(node, FAILED_NODE_TAINT)
    {
        return Step::of(
            Action::TaintNode {
                node: record.from_node.clone(),
            },
            record.clone(),
            format!(
                "tainted node {} {FAILED_NODE_TAINT}:NoSchedule: no new pods there while it is failed over",
                record.from_node
            ),
        );
    }
    if record.owner.is_empty() && super::replacement(record, world.pods).is_none() {
        // A bare pod has no owner to replace it: ferry creates the
        // replacement (gated) from the failed pod's spec before that goes.
        let state_gate = world.state_api.is_some() && !record.cold_start;
        return match super::bare_replacement(record, world.pods, world.tolerations, state_gate) {
            Some(replacement) => {
                let note = format!(
                    "created {} to replace bare pod {} on node {}",
                    replacement.name_any(),
                    record.pod,
                    record.to_node.as_deref().unwrap_or("?")
                );
                Step::of(
                    Action::CreatePod(Box::new(replacement)),
                    record.clone(),
                    note,
                )
            }
            None => give_up(
                record,
                format!(
                    "bare pod {} is gone and had no owner to recreate it from",
                    record.pod
                ),
            ),
        };
    }
    let fence = match pod {
        // A pod gone from a lost node says nothing: anyone may have
        // force-deleted it while its containers still run.
        _ if node_lost => node_fence(record, &world),
        None => Fence::Confirmed(format!(
            "pod {} is gone from the API server (its kubelet confirmed it stopped)",
            record.pod
        )),
        Some(pod) if pod.metadata.deletion_timestamp.is_none() => {
            return stop_pod(record, "before its replacement is released");
        }
        Some(pod) if all_terminated(pod) => Fence::Confirmed(format!(
            "the kubelet of node {} reports every container of pod {} terminated",
            record.from_node, record.pod
        )),
        Some(_) => Fence::Waiting(format!(
            "waiting for the kubelet of node {} to confirm pod {} stopped",
            record.from_node, record.pod
        )),
    };
    match fence {
        Fence::Confirmed(how) => {
            let mut fenced = record.clone();
            fenced.stage = FailoverStage::Fenced;
            fenced.fenced_at = Some(Time(world.now));
            fenced.fence = how.clone();
            let action = match pod {
                Some(_) => Action::ForceRemovePod {
                    name: record.pod.clone(),
                    uid: record.pod_uid.clone(),
                },
                None => Action::Record,
            };
            Step::of(action, fenced, how)
        }
        Fence::WaitUntil(at, why) => {
            Step::wait(record, format!("until {at}: {why}")).waking_at(Some(at))
        }
        Fence::Waiting(why) => Step::wait(record, why),
        Fence::AskAgent(why) => {
            let mut asked = record.clone();
            asked.fence_requested_at = Some(Time(world.now));
            Step::of(
                Action::AskAgentToFence {
                    node: record.from_node.clone(),
                },
                asked,
                why,
            )
            .waking_at(world.now.checked_add(FENCE_ASK_EVERY).ok())
        }
    }
}

fn stop_pod(record: &FailoverRecord, when: &str) -> Step {
    Step::of(
        Action::StopPod {
            name: record.pod.clone(),
            uid: record.pod_uid.clone(),
        },
        record.clone(),
        format!(
            "stopping failed pod {} on node {} (grace {STOP_GRACE_SECONDS}s) {when}",
            record.pod, record.from_node
        ),
    )
}

/// How long the owner may take to create the replacement before it is asked
/// to retry, and again.
pub(super) const NUDGE_EVERY: Duration = Duration::from_secs(2);

/// Owners whose controllers retry at once when the object changes.
pub(super) fn nudgeable(owner: &str) -> bool {
    owner.starts_with("ReplicaSet/") || owner.starts_with("StatefulSet/")
}

/// Whether the kubelet reports every container of a pod being deleted as
/// terminated: it stopped them, and restarts nothing once deletion began.
/// The pod object itself goes only seconds later, after sandbox teardown.
fn all_terminated(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    pod.metadata.deletion_timestamp.is_some()
        && !statuses.is_empty()
        && statuses.iter().all(|s| {
            s.state
                .as_ref()
                .is_some_and(|state| state.terminated.is_some())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::replace::restore_gate;
    use ferry_api::ContainerRestore;
    use ferry_api::names::{FAILOVER_ANNOTATION, RESTORE_GATE, RESTORE_GRANT_ANNOTATION};

    fn at(ms: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
    }

    fn record(reason: FailureTrigger, stage: FailoverStage) -> FailoverRecord {
        let mut record: FailoverRecord = serde_json::from_value(serde_json::json!({
            "reason": "PodLoss", "pod": "web-1", "podUid": "u1", "owner": "ReplicaSet/web",
            "fromNode": "a", "toNode": "b", "startedAt": at(0).to_string(),
            "containers": [{"container": "app", "archive": "sha256:aa"}],
        }))
        .unwrap();
        record.reason = reason;
        record.stage = stage;
        record
    }

    fn prepared_record(reason: FailoverStage) -> FailoverRecord {
        let mut r = record(FailureTrigger::ContainerFailure, reason);
        r.containers = vec![ContainerRestore {
            container: "app".into(),
            archive: "sha256:aa".into(),
            image: Some("ckpt:aa".into()),
        }];
        r
    }

    fn pod(name: &str, uid: &str, created_ms: i64, annotated_for: Option<&str>) -> Pod {
        let annotations = match annotated_for {
            Some(failed) => serde_json::json!({FAILOVER_ANNOTATION: failed}),
            None => serde_json::json!({}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid, "namespace": "n",
                "creationTimestamp": jiff::Timestamp::from_second(at(created_ms).as_second()).unwrap().to_string(),
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": "rs", "controller": true}]},
            "spec": {"nodeName": "a", "containers": [{"name": "app", "image": "web:1"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    fn gated(mut pod: Pod) -> Pod {
        let spec = pod.spec.as_mut().unwrap();
        spec.node_name = None;
        spec.scheduling_gates = Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
            name: RESTORE_GATE.into(),
        }]);
        pod.status.as_mut().unwrap().phase = Some("Pending".into());
        pod
    }

    fn node(name: &str, ready: &str, taints: &[&str]) -> Node {
        let taints: Vec<_> = taints
            .iter()
            .map(|k| serde_json::json!({"key": k, "effect": "NoSchedule"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    struct World {
        pods: Vec<Pod>,
        node: Option<Node>,
        fencing: Option<FencingInfo>,
        last_contact: Option<jiff::Timestamp>,
        kubelet_contact: Option<jiff::Timestamp>,
        renewed: Option<jiff::Timestamp>,
        target_live: bool,
        state_api: Option<ferry_proto::v1::StateApi>,
    }

    impl World {
        fn new(pods: Vec<Pod>) -> Self {
            Self {
                pods,
                node: Some(node("a", "True", &[])),
                fencing: Some(FencingInfo {
                    timeout_millis: 3000,
                    heartbeat_millis: 1000,
                    ..FencingInfo::default()
                }),
                last_contact: Some(at(-500)),
                kubelet_contact: Some(at(-500)),
                renewed: Some(at(-500)),
                target_live: true,
                state_api: None,
            }
        }

        fn next(&self, record: &FailoverRecord, now_ms: i64) -> Step {
            let pods: Vec<&Pod> = self.pods.iter().collect();
            next(
                record,
                Observed {
                    now: at(now_ms),
                    pods: &pods,
                    from_node: self.node.as_ref(),
                    from_fencing: self.fencing.as_ref(),
                    last_contact: self.last_contact,
                    kubelet_contact: self.kubelet_contact,
                    from_renewed: self.renewed,
                    target_live: self.target_live,
                    tolerations: &[],
                    state_api: self.state_api.as_ref(),
                },
            )
        }
    }

    #[test]
    fn detected_prepares_on_a_live_target_and_waits_for_a_dead_one() {
        let record = record(FailureTrigger::ContainerFailure, FailoverStage::Detected);
        let mut failed = pod("web-1", "u1", -60_000, None);
        failed.metadata.deletion_timestamp = Some(Time(at(500)));
        let mut world = World::new(vec![failed]);
        let step = world.next(&record, 1000);
        assert_eq!(
            step.action,
            Action::Prepare {
                node: "b".into(),
                archives: vec!["sha256:aa".into()]
            }
        );
        assert_eq!(step.record.stage, FailoverStage::Prepared);
        world.target_live = false;
        let step = world.next(&record, 1000);
        assert_eq!(step.action, Action::Wait);
        assert_eq!(step.record, record, "nothing changes while waiting");
    }

    #[test]
    fn a_failed_pod_on_a_healthy_node_is_stopped_before_the_restore_is_prepared() {
        let record = record(FailureTrigger::ContainerFailure, FailoverStage::Detected);
        let world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        let step = world.next(&record, 1000);
        assert!(matches!(step.action, Action::StopPod { .. }), "{step:?}");
        assert_eq!(step.record.stage, FailoverStage::Detected);
        assert!(
            step.note.contains("while the restore is prepared"),
            "{}",
            step.note
        );

        // A lost node's pod is left to its agent's fence, and a bare pod
        // stays until its replacement exists.
        for record in [
            record_with(FailureTrigger::NodeLoss, |_| {}),
            record_with(FailureTrigger::ContainerFailure, |r| r.owner.clear()),
        ] {
            let step = world.next(&record, 1000);
            assert!(matches!(step.action, Action::Prepare { .. }), "{step:?}");
        }
    }

    fn record_with(reason: FailureTrigger, change: impl Fn(&mut FailoverRecord)) -> FailoverRecord {
        let mut record = record(reason, FailoverStage::Detected);
        change(&mut record);
        record
    }

    #[test]
    fn an_unusable_archive_turns_into_a_cold_start() {
        let record = record(FailureTrigger::ContainerFailure, FailoverStage::Detected);
        let cold = prepared(
            &record,
            &[Prepared::Unusable {
                archive: "sha256:aa".into(),
                why: "hash mismatch".into(),
            }],
        );
        assert!(cold.cold_start);
        assert!(cold.containers.is_empty());
        assert!(cold.message.contains("hash mismatch"));
        let warm = prepared(
            &record,
            &[Prepared::Ready {
                archive: "sha256:aa".into(),
                image: "ckpt:aa".into(),
                annotations: BTreeMap::from([("k".into(), "v".into())]),
                runtime_class: None,
            }],
        );
        assert_eq!(warm.containers[0].image.as_deref(), Some("ckpt:aa"));
        assert_eq!(warm.stage, FailoverStage::Prepared);
    }

    #[test]
    fn a_failed_pod_on_a_healthy_node_is_stopped_and_fenced_once_the_kubelet_confirms() {
        let record = prepared_record(FailoverStage::Prepared);
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        let step = world.next(&record, 1000);
        assert!(matches!(step.action, Action::StopPod { .. }), "{step:?}");
        assert_eq!(step.record.stage, FailoverStage::Prepared);
        // Being deleted: the owner's gated replacement waits with it.
        world.pods[0].metadata.deletion_timestamp = Some(Time(at(1000)));
        world.pods.push(gated(pod("web-2", "u2", 1000, Some("u1"))));
        let step = world.next(&record, 1500);
        assert_eq!(step.action, Action::Wait);
        assert!(step.note.contains("confirm"), "{}", step.note);
        // The kubelet reports its containers terminated: fenced, and the
        // object goes at once (a StatefulSet needs its name back).
        let mut stopped = world.pods[0].clone();
        stopped.status.as_mut().unwrap().container_statuses = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "app", "ready": false,
                "restartCount": 1, "image": "web:1", "imageID": "",
                "state": {"terminated": {"exitCode": 137}}}))
            .unwrap(),
        ]);
        let pods: Vec<&Pod> = vec![&stopped, &world.pods[1]];
        let step = next(
            &record,
            Observed {
                now: at(1600),
                pods: &pods,
                from_node: world.node.as_ref(),
                from_fencing: world.fencing.as_ref(),
                last_contact: world.last_contact,
                kubelet_contact: world.kubelet_contact,
                from_renewed: world.last_contact,
                target_live: true,
                tolerations: &[],
                state_api: None,
            },
        );
        assert!(
            matches!(step.action, Action::ForceRemovePod { .. }),
            "{step:?}"
        );
        assert!(
            step.record.fence.contains("terminated"),
            "{}",
            step.record.fence
        );
        // Gone: fenced by the kubelet's confirmation.
        world.pods.remove(0);
        let step = world.next(&record, 2000);
        assert_eq!(step.action, Action::Record);
        assert_eq!(step.record.stage, FailoverStage::Fenced);
        assert!(step.record.fence.contains("kubelet confirmed"));
        // Then the replacement is released, and completes when Running.
        let fenced = step.record;
        let step = world.next(&fenced, 2100);
        assert_eq!(
            step.action,
            Action::ReleasePod {
                name: "web-2".into(),
                gate_index: 0
            }
        );
        assert_eq!(step.record.replacement_pod.as_deref(), Some("web-2"));
        world.pods[0].spec.as_mut().unwrap().scheduling_gates = None;
        world.pods[0].status.as_mut().unwrap().phase = Some("Running".into());
        let step = world.next(&step.record, 3000);
        assert_eq!(step.record.stage, FailoverStage::Completed);
        assert!(step.finishes());
    }

    #[test]
    fn a_lost_node_is_tainted_then_fenced_by_its_agents_timeout() {
        let record = prepared_record(FailoverStage::Prepared);
        let mut record = record;
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "Unknown", &[]));
        let step = world.next(&record, 1000);
        assert_eq!(step.action, Action::TaintNode { node: "a".into() });
        world.node = Some(node("a", "Unknown", &[FAILED_NODE_TAINT]));
        // Last contact at -0.5 s; fence timeout 3 s, one heartbeat 1 s and
        // the margin 0.5 s: fenced by 4.0 s.
        let step = world.next(&record, 3900);
        assert_eq!(step.action, Action::Wait);
        assert_eq!(step.wake_at, Some(at(4000)));
        assert!(step.note.contains("fenced itself"), "{}", step.note);
        let step = world.next(&record, 4000);
        assert_eq!(
            step.action,
            Action::ForceRemovePod {
                name: "web-1".into(),
                uid: "u1".into()
            }
        );
        assert_eq!(step.record.stage, FailoverStage::Fenced);
        assert!(step.record.fence.contains("fenced itself"));
        // An agent that fences on a timer at the deadline (lag 0) spares
        // the heartbeat: fenced by 3.0 s.
        world.fencing = Some(FencingInfo {
            timeout_millis: 3000,
            heartbeat_millis: 1000,
            lag_millis: Some(0),
            ..FencingInfo::default()
        });
        let step = world.next(&record, 2900);
        assert_eq!(step.wake_at, Some(at(3000)));
        assert!(matches!(
            world.next(&record, 3000).action,
            Action::ForceRemovePod { .. }
        ));
    }

    #[test]
    fn a_partitioned_node_that_keeps_answering_peers_is_never_fenced_early() {
        // Contact keeps moving forward: the fence deadline moves with it.
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "Unknown", &[FAILED_NODE_TAINT]));
        for now in [3000, 6000, 9000] {
            world.last_contact = Some(at(now - 100));
            assert_eq!(world.next(&record, now).action, Action::Wait);
        }
    }

    #[test]
    fn an_agent_that_was_down_when_its_node_was_cut_off_is_not_trusted_to_fence() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "Unknown", &[FAILED_NODE_TAINT]));
        // The agent went silent at -30 s (crashed, being rolled); peers
        // reached its kubelet until -0.5 s, when the node was cut off.
        world.last_contact = Some(at(-30_000));
        world.renewed = Some(at(-30_000));
        world.kubelet_contact = Some(at(-500));
        let step = world.next(&record, 100_000);
        assert_eq!(step.action, Action::Wait);
        assert!(step.note.contains("cannot have fenced"), "{}", step.note);
        assert_eq!(step.wake_at, None);
        // A kubelet answering within two heartbeats of the agent's last
        // sign is the same cut: the deadline holds.
        world.kubelet_contact = Some(at(-28_000));
        assert!(matches!(
            world.next(&record, 100_000).action,
            Action::ForceRemovePod { .. }
        ));
        // The agent came back and reports the pod fenced: that counts.
        world.kubelet_contact = Some(at(-500));
        let mut fencing = world.fencing.clone().unwrap();
        fencing.fenced_pods.insert(
            "u1".into(),
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(-400)),
        );
        world.fencing = Some(fencing);
        world.renewed = Some(at(99_000));
        assert!(matches!(
            world.next(&record, 100_000).action,
            Action::ForceRemovePod { .. }
        ));
        // So does out-of-service.
        world.fencing = None;
        world.node = Some(node(
            "a",
            "Unknown",
            &[FAILED_NODE_TAINT, OUT_OF_SERVICE_TAINT],
        ));
        assert!(matches!(
            world.next(&record, 100_000).action,
            Action::ForceRemovePod { .. }
        ));
    }

    #[test]
    fn a_lost_kubelet_with_a_live_agent_is_fenced_through_the_agent() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "Unknown", &[FAILED_NODE_TAINT]));
        // The agent renews its Lease: in contact, so it never fences by
        // itself, and the deadline keeps moving.
        world.renewed = Some(at(99_600));
        world.last_contact = Some(at(99_600));
        world.kubelet_contact = Some(at(80_000));
        let step = world.next(&record, 100_000);
        assert_eq!(step.action, Action::AskAgentToFence { node: "a".into() });
        assert_eq!(step.record.fence_requested_at, Some(Time(at(100_000))));
        assert_eq!(step.wake_at, Some(at(102_000)));
        assert!(
            step.note.contains("kubelet of node a is lost"),
            "{}",
            step.note
        );
        // Asked; the Lease does not list the pod yet: wait, then ask again.
        let asked = step.record;
        world.renewed = Some(at(101_000));
        world.last_contact = Some(at(101_000));
        let step = world.next(&asked, 101_500);
        assert_eq!(step.action, Action::Wait);
        assert_eq!(step.wake_at, Some(at(102_000)));
        assert!(matches!(
            world.next(&asked, 102_000).action,
            Action::AskAgentToFence { .. }
        ));
        // The agent lists the pod as fenced: the old pod object goes.
        let mut fencing = world.fencing.clone().unwrap();
        fencing.fenced_pods.insert(
            "u1".into(),
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(100_100)),
        );
        world.fencing = Some(fencing);
        let step = world.next(&asked, 101_500);
        assert!(matches!(step.action, Action::ForceRemovePod { .. }));
        assert!(step.record.fence.contains("reports it stopped"));
    }

    #[test]
    fn without_self_fencing_a_lost_node_waits_for_out_of_service() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "Unknown", &[FAILED_NODE_TAINT]));
        world.fencing = None;
        let step = world.next(&record, 100_000);
        assert_eq!(step.action, Action::Wait);
        assert!(step.note.contains(OUT_OF_SERVICE_TAINT), "{}", step.note);
        // Someone force-deleted the pod: its containers may still run there.
        let pods = std::mem::take(&mut world.pods);
        assert_eq!(world.next(&record, 100_000).action, Action::Wait);
        world.pods = pods;
        world.node = Some(node(
            "a",
            "Unknown",
            &[FAILED_NODE_TAINT, OUT_OF_SERVICE_TAINT],
        ));
        let step = world.next(&record, 100_000);
        assert!(matches!(step.action, Action::ForceRemovePod { .. }));
    }

    #[test]
    fn a_node_that_recovers_before_the_fence_cancels_the_failover() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        // A peer reaching it again is not enough: only the agent's own Lease
        // says what it fenced while cut off.
        world.last_contact = Some(at(2000));
        assert_ne!(world.next(&record, 2500).action, Action::Cancel);
        world.renewed = Some(at(2000));
        let step = world.next(&record, 2500);
        assert_eq!(step.action, Action::Cancel);
        // Once fenced there is no way back.
        record.stage = FailoverStage::Fenced;
        assert_ne!(world.next(&record, 2500).action, Action::Cancel);
    }

    #[test]
    fn a_pod_its_agent_fenced_is_failed_over_even_when_the_node_is_back() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.reason = FailureTrigger::NodeLoss;
        let mut world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        world.node = Some(node("a", "True", &[FAILED_NODE_TAINT]));
        world.last_contact = Some(at(2000));
        world.renewed = Some(at(2000));
        if let Some(fencing) = world.fencing.as_mut() {
            fencing.fenced_pods.insert(
                "u1".into(),
                k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at(1500)),
            );
        }
        // Back before the controller's own fence deadline (2000 + 4500 ms),
        // but its agent stopped the pod: no cancel, fenced on its report.
        let step = world.next(&record, 2500);
        assert!(
            matches!(step.action, Action::ForceRemovePod { .. }),
            "{step:?}"
        );
        assert_eq!(step.record.stage, FailoverStage::Fenced);
        assert!(
            step.note.contains("reports it stopped pod web-1"),
            "{}",
            step.note
        );
    }

    #[test]
    fn an_owner_slow_to_replace_is_asked_to_retry_every_two_seconds() {
        let mut record = prepared_record(FailoverStage::Fenced);
        record.fenced_at = Some(Time(at(1000)));
        let world = World::new(vec![]);
        let step = world.next(&record, 2500);
        assert_eq!(step.action, Action::Wait);
        assert_eq!(step.wake_at, Some(at(3000)));
        let step = world.next(&record, 3000);
        assert_eq!(
            step.action,
            Action::NudgeOwner {
                owner: "ReplicaSet/web".into()
            }
        );
        let nudged = step.record;
        assert_eq!(nudged.owner_nudged_at, Some(Time(at(3000))));
        assert_eq!(world.next(&nudged, 4000).action, Action::Wait);
        assert!(matches!(
            world.next(&nudged, 5000).action,
            Action::NudgeOwner { .. }
        ));
        // Owners other than ReplicaSets and StatefulSets are left alone.
        record.owner = "Job/batch".into();
        assert_eq!(world.next(&record, 9000).action, Action::Wait);
    }

    #[test]
    fn cold_and_extra_replacements_are_removed() {
        let record = prepared_record(FailoverStage::Fenced);
        // The webhook failed open: the owner's pod came without the rewrite.
        let mut world = World::new(vec![pod("web-2", "u2", 1000, None)]);
        let step = world.next(&record, 2000);
        assert_eq!(
            step.action,
            Action::DeletePods {
                names: vec!["web-2".into()]
            }
        );
        // The owner replaced an evicted pod before ferry noticed (and ferry
        // may even have checkpointed it since): still a cold replacement.
        let mut evicted = record.clone();
        evicted.failed_at = Some(Time(at(-5000)));
        world.pods = vec![pod("web-2", "u2", -4000, None)];
        assert!(matches!(
            world.next(&evicted, 2000).action,
            Action::DeletePods { .. }
        ));
        // Older pods of the owner are other replicas, not replacements.
        world.pods = vec![pod("web-0", "u0", -60_000, None)];
        assert_eq!(world.next(&evicted, 1000).action, Action::Wait);
        // Two replacements claimed by two webhook replicas: the younger goes.
        world.pods = vec![
            gated(pod("web-2", "u2", 1000, Some("u1"))),
            gated(pod("web-3", "u3", 1500, Some("u1"))),
        ];
        assert_eq!(
            world.next(&record, 2000).action,
            Action::DeletePods {
                names: vec!["web-3".into()]
            }
        );
    }

    #[test]
    fn a_bare_pod_is_recreated_gated_before_it_is_stopped() {
        let mut record = prepared_record(FailoverStage::Prepared);
        record.owner = String::new();
        let mut failed = pod("web-1", "u1", -60_000, None);
        failed.metadata.owner_references = None;
        let mut world = World::new(vec![failed]);
        let step = world.next(&record, 1000);
        let Action::CreatePod(replacement) = &step.action else {
            panic!("{step:?}");
        };
        assert_eq!(restore_gate(replacement), Some(0));
        assert_eq!(
            replacement
                .annotations()
                .get(FAILOVER_ANNOTATION)
                .map(String::as_str),
            Some("u1")
        );
        assert_eq!(replacement.spec.as_ref().unwrap().node_name, None);
        assert_eq!(
            replacement.spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("ckpt:aa")
        );
        // With the replacement there, the failed pod is stopped next.
        let mut replacement = (**replacement).clone();
        replacement.metadata.uid = Some("u2".into());
        world.pods.push(replacement);
        assert!(matches!(
            world.next(&record, 1100).action,
            Action::StopPod { .. }
        ));
        // A bare pod already gone cannot be recreated.
        world.pods.clear();
        let step = world.next(&record, 1200);
        assert_eq!(step.record.stage, FailoverStage::Failed);
        assert!(step.record.message.contains("no owner"));
    }

    #[test]
    fn a_restore_its_runtime_handler_could_not_make_fails_now_and_goes_cold() {
        let mut record = prepared_record(FailoverStage::Fenced);
        record.to_node = Some("b".into());
        let mut replacement = pod("web-2", "u2", 500, Some("u1"));
        replacement.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Running",
                "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "",
                    "ready": false, "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 128, "reason": "StartError",
                        "message": "runc restore failed; CRIU: Error (criu/cr-restore.c)"}}}]}))
            .unwrap(),
        );
        let world = World::new(vec![replacement]);
        // Image restores: the kubelet's retries can still work.
        let step = world.next(&record, 2000);
        assert_eq!(step.record.stage, FailoverStage::Fenced, "{step:?}");
        assert_ne!(step.record.stage, FailoverStage::Completed);
        // A grant is spent by the failed attempt: the owner starts it cold.
        record.runtime_class = Some("ferry".into());
        let step = world.next(&record, 2000);
        assert_eq!(step.record.stage, FailoverStage::Failed, "{step:?}");
        assert_eq!(
            step.action,
            Action::DeletePods {
                names: vec!["web-2".into()]
            }
        );
        assert!(
            step.record
                .message
                .contains("the restore into web-2 on node b failed"),
            "{}",
            step.record.message
        );
        assert!(step.record.message.contains("CRIU: Error"));
    }

    #[test]
    fn a_restored_replacement_forgets_its_spent_grant() {
        let mut record = prepared_record(FailoverStage::Fenced);
        record.to_node = Some("b".into());
        record.runtime_class = Some("ferry".into());
        let mut replacement = pod("web-2", "u2", 500, Some("u1"));
        replacement
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(
                RESTORE_GRANT_ANNOTATION.into(),
                "0123456789abcdef0123456789abcdef".into(),
            );
        let step = World::new(vec![replacement.clone()]).next(&record, 2000);
        assert_eq!(step.record.stage, FailoverStage::Completed, "{step:?}");
        assert_eq!(
            step.action,
            Action::ForgetGrant {
                pod: "web-2".into()
            }
        );
        // Once it is gone, completing records only.
        replacement
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(RESTORE_GRANT_ANNOTATION);
        let step = World::new(vec![replacement]).next(&record, 2000);
        assert_eq!(step.action, Action::Record);
    }

    #[test]
    fn a_failover_that_does_not_finish_gives_up_after_the_timeout() {
        let record = prepared_record(FailoverStage::Fenced);
        let world = World::new(Vec::new());
        let late = i64::try_from(FAILOVER_TIMEOUT.as_millis()).unwrap() + 1;
        let step = world.next(&record, late);
        assert_eq!(step.record.stage, FailoverStage::Failed);
        assert!(step.record.message.contains("gave up"));
        // The owner, refused by the guard until now, retries at once.
        assert_eq!(
            step.action,
            Action::NudgeOwner {
                owner: record.owner.clone()
            },
            "{}",
            record.owner
        );
    }

    #[test]
    fn the_same_record_and_world_always_give_the_same_step() {
        // What a new leader does after a leader change: read the recorded
        // stage and take the same next step, never a second failover.
        let record = prepared_record(FailoverStage::Prepared);
        let world = World::new(vec![pod("web-1", "u1", -60_000, None)]);
        assert_eq!(world.next(&record, 1000), world.next(&record, 1000));
    }

    #[test]
    fn a_state_is_written_into_the_running_replacement_or_its_gate_opened_on_giving_up() {
        let mut world = World::new(vec![]);
        world.state_api = Some(ferry_proto::v1::StateApi {
            port: 8080,
            path: "/state".into(),
            ..Default::default()
        });
        // Nothing to prepare: the standby holds the state.
        let detected = record(FailureTrigger::NodeLoss, FailoverStage::Detected);
        let step = world.next(&detected, 1000);
        assert_eq!(step.action, Action::Record, "{step:?}");
        assert_eq!(step.record.stage, FailoverStage::Prepared);

        // The replacement runs: its state goes in before it counts as
        // restored, and not before it has an IP.
        let fenced = prepared_record(FailoverStage::Fenced);
        let mut replacement = pod("web-2", "u2", 500, Some("u1"));
        replacement.status =
            Some(serde_json::from_value(serde_json::json!({"phase": "Running"})).unwrap());
        world.pods = vec![replacement.clone()];
        let step = world.next(&fenced, 2000);
        assert!(
            matches!(step.action, Action::Record | Action::Wait),
            "{step:?}"
        );
        assert_eq!(step.record.stage, FailoverStage::Fenced);
        replacement.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Running", "podIP": "10.88.2.9"}))
                .unwrap(),
        );
        world.pods = vec![replacement];
        let step = world.next(&fenced, 2000);
        let Action::RestoreState {
            node,
            pod,
            address,
            restores,
            ..
        } = &step.action
        else {
            panic!("{step:?}")
        };
        assert_eq!(
            (node.as_str(), pod.as_str(), address.as_str()),
            ("b", "web-2", "10.88.2.9")
        );
        assert_eq!(restores.len(), fenced.containers.len());
        assert_eq!(step.record.stage, FailoverStage::Completed);

        // Past the timeout the replacement serves from zero rather than never.
        let late = 1000 + FAILOVER_TIMEOUT.as_millis() as i64 + 1000;
        let step = world.next(&fenced, late);
        assert!(
            matches!(step.action, Action::OpenStateGate { .. }),
            "{step:?}"
        );
        assert_eq!(step.record.stage, FailoverStage::Failed);
    }
}
