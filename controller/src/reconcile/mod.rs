//! One reconciliation of a CheckpointPolicy, as a pipeline:
//! dereference (pods, nodes, agents) → validate → fold finished checkpoints
//! into status → detect failures and advance failovers → schedule due
//! checkpoints → compute conditions → write status only when it changed.

mod failovers;
mod gone_pods;
mod warm_standbys;
use failovers::advance_failovers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use ferry_api::names::{CONTROLLER_FIELD_MANAGER, POLICY_FINALIZER};
use ferry_api::{CheckpointPolicy, CheckpointPolicyStatus};
use ferry_proto::v1 as pb;

use crate::agents::AgentIndex;
use crate::checkpointer::{Admission, Failure as CheckpointFailure, Job};
use crate::detect;
use crate::metrics::{ErrorLabels, PolicyLabels};
use crate::placement::{choose_standbys, node_ready};
use crate::schedule::{Target, matches, selector_of, targets_of};
use crate::status::{
    ValidSpec, desired_status, set_history_condition, set_overlap_condition, set_protection,
    set_runtime_handler_condition, set_warm_standby_condition, validate,
};
use crate::{Context, Error};

/// How often a policy is looked at even when nothing changed, so a status
/// edited or wiped by hand is repaired.
pub(super) const RESYNC: Duration = Duration::from_secs(300);

/// How often a policy with a failover in progress is looked at.
pub(super) const FAILOVER_POLL: Duration = Duration::from_millis(200);

/// Lower bound of the wait for a node-loss deadline, so clock rounding
/// never turns it into a busy loop.
pub(super) const NODE_LOSS_SLACK: Duration = Duration::from_millis(100);

/// Status writes that only record new checkpoints come at most this often
/// per policy: with many pods per policy every finished checkpoint would
/// otherwise be a write of its own. Anything else (a failure, a failover
/// stage, a condition) is written at once.
const STATUS_PROGRESS_PERIOD: Duration = Duration::from_secs(5);

pub use crate::status::{OVERLAP, PROTECTED};

pub async fn reconcile(
    policy: Arc<CheckpointPolicy>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingMetadata("metadata.namespace"))?;
    let api: Api<CheckpointPolicy> = Api::namespaced(context.client.clone(), &namespace);
    let object = format!("CheckpointPolicy {namespace}/{}", policy.name_any());
    let result = finalizer(&api, POLICY_FINALIZER, policy, |event| async {
        match event {
            Event::Apply(policy) => apply(&policy, &context).await,
            Event::Cleanup(policy) => cleanup(&policy, &context).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        object,
        source: Box::new(source),
    });
    context.metrics.observe(started.elapsed(), result.is_ok());
    result
}

pub fn error_policy(policy: Arc<CheckpointPolicy>, error: &Error, context: Arc<Context>) -> Action {
    let reason = match error {
        Error::Kube { .. } | Error::Finalizer { .. } => "kube",
        Error::MissingMetadata(_) => "invalid_object",
        _ => "other",
    };
    context
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { reason })
        .inc();
    tracing::warn!(
        policy = %policy.name_any(),
        namespace = policy.namespace().as_deref().unwrap_or(""),
        error = %error,
        "reconcile failed; retrying in 5s"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Everything one reconciliation sees, taken from the caches at once.
pub(super) struct Snapshot {
    pub(super) pods: Vec<Arc<Pod>>,
    pub(super) departed: BTreeMap<String, detect::Departure>,
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) agents: AgentIndex,
    pub(super) policies: Vec<Arc<CheckpointPolicy>>,
    pub(super) watched: crate::view::Watched,
    pub(super) now: jiff::Timestamp,
}

impl Snapshot {
    fn take(context: &Context, namespace: &str) -> Self {
        Self {
            pods: context
                .pods
                .state()
                .into_iter()
                .filter(|p| p.namespace().as_deref() == Some(namespace))
                .collect(),
            departed: context.departed(),
            nodes: context.nodes.state(),
            agents: AgentIndex::from_leases(context.leases.state().iter().map(AsRef::as_ref)),
            watched: context.watched(),
            policies: context
                .policies()
                .map(|s| s.state())
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.namespace().as_deref() == Some(namespace))
                .collect(),
            now: jiff::Timestamp::now(),
        }
    }
}

/// Events to publish once the status that explains them is written.
pub(super) type PendingEvents = Vec<(EventType, &'static str, String)>;

async fn apply(policy: &CheckpointPolicy, context: &Arc<Context>) -> Result<Action, Error> {
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingMetadata("metadata.namespace"))?;
    let name = policy
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("metadata.name"))?;
    let key = format!("{namespace}/{name}");
    let policy_ref = ObjectRef::from_obj(policy);
    let snapshot = Snapshot::take(context, &namespace);
    let now = snapshot.now;
    let mut status = desired_status(policy, Time(now));
    let mut events = PendingEvents::new();
    context
        .checkpointer
        .checkpoints_seen(&policy_ref, policy.status.as_ref());
    let results = context.checkpointer.results(&policy_ref);
    let mut requeue = RESYNC;

    if let Ok(valid) = validate(&policy.spec) {
        let (owned, overlapping) = owned_pods(policy, &snapshot);
        set_overlap_condition(&mut status, policy, &overlapping, now);
        let nodes: Vec<&Node> = snapshot.nodes.iter().map(AsRef::as_ref).collect();
        let without_handler = crate::placement::nodes_without_restore_handler(
            &nodes,
            &policy.spec.placement,
            &snapshot.agents,
            now,
        );
        set_runtime_handler_condition(&mut status, policy, &without_handler, now);
        let history = context
            .history
            .as_ref()
            .map(ferry_history::Recorder::health);
        set_history_condition(&mut status, policy, history.as_ref(), now);
        let targets: Vec<Target> = owned.iter().flat_map(|p| targets_of(policy, p)).collect();
        let mut problems = fold_results(&mut status, &results, &mut events);
        prune_records(&mut status, &targets, &snapshot, policy);
        if !policy.spec.suspend {
            let poll = advance_failovers(
                policy,
                &valid,
                &namespace,
                &mut status,
                &snapshot,
                context,
                &mut events,
                &mut problems,
            )
            .await;
            requeue = requeue.min(poll);
            // A failover that ended here may free a tainted node that
            // became Ready long before: no node event would come for it.
            let tainted: Vec<&Node> = snapshot
                .nodes
                .iter()
                .map(AsRef::as_ref)
                .filter(|n| crate::nodes::taint_index(n).is_some())
                .collect();
            if !tainted.is_empty() {
                crate::nodes::lift_taints(
                    &context.client,
                    tainted,
                    &context.policies().map(|s| s.state()).unwrap_or_default(),
                );
            }
            let next = schedule(
                policy,
                &policy_ref,
                &namespace,
                &valid,
                &status,
                &targets,
                &snapshot,
                context,
                &mut problems,
            );
            requeue = requeue.min(next);
        }
        // With a complete view only: a pod missing from a cache that is not
        // synced is not gone. A suspended policy keeps its archives.
        if !policy.spec.suspend
            && crate::view::complete(snapshot.watched, &snapshot.agents, now).is_ok()
            && context.gone_pod_sweep_due(&key, gone_pods::SWEEP_EVERY)
        {
            let live = gone_pods::live_pod_uids(
                &snapshot.pods,
                policy.status.iter().chain(std::iter::once(&status)),
            );
            gone_pods::sweep(
                context,
                &snapshot.agents,
                gone_pods::request(&key, live, now),
                now,
            );
        }
        let warm_failures =
            warm_standbys::converge(policy, &namespace, &owned, &status, &snapshot, context).await;
        set_warm_standby_condition(&mut status, policy, &warm_failures, now);
        if let Some(age) = set_protection(
            &mut status,
            policy,
            &valid,
            &targets,
            &problems,
            snapshot.now,
        ) {
            context
                .metrics
                .checkpoint_age
                .get_or_create(&PolicyLabels {
                    policy: key.clone(),
                })
                .set(age.as_secs_f64());
        }
    }

    if policy.status.as_ref() != Some(&status) {
        let since_write = context.since_status_write(&key);
        let wait =
            STATUS_PROGRESS_PERIOD.saturating_sub(since_write.unwrap_or(STATUS_PROGRESS_PERIOD));
        let progress = only_progress(policy.status.as_ref(), &status) && events.is_empty();
        if progress && !wait.is_zero() {
            // New checkpoints alone are folded into one write per period;
            // the results stay queued until then.
            return Ok(Action::requeue(requeue.min(wait)));
        }
        if progress {
            // Written in the background: under a slow API server, waiting
            // here would hold up this policy's next due checkpoints (its
            // reconciliations run one at a time). A write already on its
            // way is not joined: the next period writes what it missed.
            if let Ok(guard) = context.status_lock(&key).try_lock_owned() {
                let context = context.clone();
                let consumed = results.last().map(|outcome| outcome.seq);
                tokio::spawn(async move {
                    match write_status(&context, &namespace, &name, &status).await {
                        Ok(()) => {
                            context.status_written(&key);
                            context.checkpointer.failures_written(&policy_ref, consumed);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "checkpoint progress not written; retried next period")
                        }
                    }
                    drop(guard);
                });
            }
            return Ok(Action::requeue(requeue.min(STATUS_PROGRESS_PERIOD)));
        }
        let _writing = context.status_lock(&key).lock_owned().await;
        write_status(context, &namespace, &name, &status).await?;
        context.status_written(&key);
    }
    context
        .checkpointer
        .failures_written(&policy_ref, results.last().map(|outcome| outcome.seq));
    for (type_, reason, note) in events {
        publish(context, policy, type_, reason, note).await;
    }
    Ok(Action::requeue(requeue))
}

/// Whether `new` differs from `old` only by checkpoint progress (newer
/// records, last checkpoint time, restore target).
fn only_progress(old: Option<&CheckpointPolicyStatus>, new: &CheckpointPolicyStatus) -> bool {
    let Some(old) = old else {
        return false;
    };
    let strip = |status: &CheckpointPolicyStatus| {
        let mut status = status.clone();
        status.last_checkpoint_time = None;
        status.restore_target = None;
        for record in &mut status.checkpoints {
            record.archive.clear();
            record.size_bytes = 0;
            record.duration_ms = 0;
            record.taken_at = Time(jiff::Timestamp::UNIX_EPOCH);
            record.replicas.sort();
        }
        status
    };
    strip(old) == strip(new)
}

/// The condition reason and message of a failed checkpoint of `target`.
fn checkpoint_problem(target: &Target, failure: &CheckpointFailure) -> (&'static str, String) {
    let (reason, message) = match failure {
        CheckpointFailure::AgentUnreachable(m) => ("AgentUnreachable", m),
        CheckpointFailure::CheckpointFailed(m) => ("CheckpointFailed", m),
    };
    (
        reason,
        format!("{}/{}: {message}", target.pod, target.container),
    )
}

/// Selected pods this policy protects, and the pods it leaves to an older
/// policy that selects them too (with that policy's name).
fn owned_pods(
    policy: &CheckpointPolicy,
    snapshot: &Snapshot,
) -> (Vec<Arc<Pod>>, Vec<(String, String)>) {
    let rank = |p: &CheckpointPolicy| (p.creation_timestamp().map(|t| t.0), p.name_any());
    let mine = rank(policy);
    let mut owned = Vec::new();
    let mut overlapping = Vec::new();
    // Parsed once per reconciliation, not once per pod.
    let selector = selector_of(policy);
    let others: Vec<(&CheckpointPolicy, Option<kube::core::Selector>)> = snapshot
        .policies
        .iter()
        .filter(|other| other.uid() != policy.uid())
        .map(|other| (other.as_ref(), selector_of(other)))
        .collect();
    // Warm standby pods are ferry's own, even under a selector as wide as
    // the whole namespace.
    for pod in snapshot
        .pods
        .iter()
        .filter(|p| matches(selector.as_ref(), p) && !crate::warm::is_warm_pod(p))
    {
        let older = others
            .iter()
            .filter(|(_, other_selector)| matches(other_selector.as_ref(), pod))
            .map(|(other, _)| *other)
            .min_by_key(|other| rank(other));
        if let Some(other) = older {
            overlapping.push((pod.name_any(), other.name_any()));
            if rank(other) < mine {
                continue;
            }
        }
        owned.push(pod.clone());
    }
    (owned, overlapping)
}

/// Writes finished checkpoints into `status.checkpoints` and returns the
/// problems they reported, as (reason, message).
fn fold_results(
    status: &mut CheckpointPolicyStatus,
    results: &[crate::checkpointer::Outcome],
    events: &mut PendingEvents,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for outcome in results {
        match &outcome.result {
            Ok(done) => {
                let record = done.record.clone();
                match status
                    .checkpoints
                    .iter_mut()
                    .find(|r| r.pod == record.pod && r.container == record.container)
                {
                    Some(existing) if existing.taken_at.0 > record.taken_at.0 => {}
                    Some(existing) => *existing = record,
                    None => status.checkpoints.push(record),
                }
                for (node, error) in &done.replica_errors {
                    problems.push((
                        "ReplicationFailed".into(),
                        format!(
                            "replica of {}/{} to node {node}: {error}",
                            outcome.target.pod, outcome.target.container
                        ),
                    ));
                }
            }
            Err(failure) => {
                let (reason, message) = checkpoint_problem(&outcome.target, failure);
                events.push((EventType::Warning, reason, message.clone()));
                problems.push((reason.into(), message));
            }
        }
    }
    status
        .checkpoints
        .sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
    problems
}

/// Drops records of pods that are gone once nothing needs them any more:
/// a gone pod's record stays until its failover is recorded.
fn prune_records(
    status: &mut CheckpointPolicyStatus,
    targets: &[Target],
    snapshot: &Snapshot,
    policy: &CheckpointPolicy,
) {
    let failover_known = |uid: &str| detect::failover_recorded(status, uid);
    let pod_exists = |uid: &str| {
        snapshot
            .pods
            .iter()
            .any(|p| p.uid().as_deref() == Some(uid))
    };
    let watched_for_loss = !policy.spec.failover.triggers.is_empty() && !policy.spec.suspend;
    let keep: Vec<bool> = status
        .checkpoints
        .iter()
        .map(|r| {
            let current = targets
                .iter()
                .any(|t| t.pod_uid == r.pod_uid && t.container == r.container);
            let in_failover = status.failovers.iter().any(|f| f.pod_uid == r.pod_uid);
            current
                || in_failover
                || (pod_exists(&r.pod_uid) && !failover_known(&r.pod_uid))
                || (!pod_exists(&r.pod_uid) && watched_for_loss && !failover_known(&r.pod_uid))
        })
        .collect();
    let mut flags = keep.into_iter();
    status.checkpoints.retain(|_| flags.next().unwrap_or(true));
}

/// Submits due checkpoints; returns how long until the next one is due.
#[allow(clippy::too_many_arguments)]
fn schedule(
    policy: &CheckpointPolicy,
    policy_ref: &ObjectRef<CheckpointPolicy>,
    namespace: &str,
    valid: &ValidSpec,
    status: &CheckpointPolicyStatus,
    targets: &[Target],
    snapshot: &Snapshot,
    context: &Context,
    problems: &mut Vec<(String, String)>,
) -> Duration {
    let policy_key = format!("{namespace}/{}", policy.name_any());
    let nodes: Vec<&Node> = snapshot.nodes.iter().map(AsRef::as_ref).collect();
    let mut next = RESYNC;
    // A failed pod is not checkpointed again: its newest checkpoint is what
    // it will be restored from (a restarted container runs cold).
    let failing: std::collections::HashSet<&str> = status
        .failovers
        .iter()
        .map(|f| f.pod_uid.as_str())
        .chain(status.queued_failovers.iter().map(|q| q.pod_uid.as_str()))
        .collect();
    for target in targets {
        if failing.contains(target.pod_uid.as_str()) {
            continue;
        }
        let last = status
            .checkpoints
            .iter()
            .find(|r| r.pod == target.pod && r.container == target.container);
        if let Some(failure) = context.checkpointer.failing(&policy_key, target) {
            let (reason, message) = checkpoint_problem(target, &failure);
            let problem = (reason.to_owned(), message);
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        let due = context
            .checkpointer
            .due(&policy_key, target, last, valid.interval, snapshot.now);
        if due > snapshot.now {
            let wait: Duration = snapshot.now.duration_until(due).try_into().unwrap_or(next);
            next = next.min(wait);
            continue;
        }
        if !target.healthy {
            problems.push((
                "ContainerNotReady".into(),
                format!(
                    "{}/{} is not Ready (failing probes?); not checkpointed so a bad state does not replace a good one",
                    target.pod, target.container
                ),
            ));
            next = next.min(valid.interval);
            continue;
        }
        match context.checkpointer.admission(&policy_key, target, due) {
            Admission::Go => {}
            Admission::Busy => {
                next = next.min(valid.interval * 2);
                continue;
            }
            Admission::RetryIn(wait) => {
                next = next.min(wait);
                continue;
            }
        }
        let node_ok = snapshot
            .nodes
            .iter()
            .any(|n| n.name_any() == target.node && node_ready(n));
        let Some(agent) = snapshot
            .agents
            .live(&target.node, snapshot.now)
            .filter(|_| node_ok)
        else {
            problems.push((
                "AgentUnreachable".into(),
                format!(
                    "no live ferry agent on node {} (pod {})",
                    target.node, target.pod
                ),
            ));
            next = next.min(valid.interval);
            continue;
        };
        let previous = last.map(|r| r.replicas.clone()).unwrap_or_default();
        let standbys = choose_standbys(
            &policy.spec.placement,
            usize::try_from(policy.spec.standbys).unwrap_or(0),
            &target.node,
            &format!("{}/{}", target.pod_uid, target.container),
            &nodes,
            &snapshot.agents,
            &previous,
            snapshot.now,
        );
        let standby_agents: Vec<_> = standbys
            .iter()
            .filter_map(|node| snapshot.agents.get(node))
            .collect();
        let content_hash = crate::agents::content_hash_for(agent, standby_agents.iter().copied());
        let peers = standby_agents
            .iter()
            .map(|standby| (standby.node.clone(), standby.endpoint.clone()))
            .collect();
        // The agent reads the pod's IP from the API server itself; this one
        // serves agents that have none (tests, the local demo).
        let state_api = valid.state_api.clone().map(|mut source| {
            source.address = snapshot
                .pods
                .iter()
                .find(|p| p.uid().as_deref() == Some(target.pod_uid.as_str()))
                .and_then(|p| p.status.as_ref()?.pod_ip.clone())
                .unwrap_or_default();
            source
        });
        context.checkpointer.submit(Job {
            policy: policy_ref.clone(),
            target: target.clone(),
            namespace: namespace.to_owned(),
            endpoint: agent.endpoint.clone(),
            peers,
            retention: retention(policy),
            timeout: context.checkpoint_timeout,
            due,
            interval: valid.interval,
            state_api,
            content_hash,
        });
        // The job wakes the policy when it fails or when this container is
        // due again; this is only a safety net.
        next = next.min(valid.interval * 2);
    }
    next
}

fn retention(policy: &CheckpointPolicy) -> pb::Retention {
    let spec = &policy.spec.retention;
    pb::Retention {
        keep: u32::try_from(spec.keep).unwrap_or(1),
        max_bytes: spec
            .max_bytes
            .as_ref()
            .and_then(|q| crate::status::quantity_bytes(&q.0))
            .unwrap_or(0),
        max_age_seconds: spec
            .max_age
            .as_deref()
            .and_then(|age| ferry_api::parse_duration("spec.retention.maxAge", age).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

async fn write_status(
    context: &Context,
    namespace: &str,
    name: &str,
    status: &CheckpointPolicyStatus,
) -> Result<(), Error> {
    let api: Api<CheckpointPolicy> = Api::namespaced(context.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(CONTROLLER_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "applying status of",
        object: format!("CheckpointPolicy {namespace}/{name}"),
        source,
    })?;
    context.metrics.status_writes.inc();
    tracing::debug!(policy = %name, %namespace, phase = status.phase.map(|p| p.as_str()), "status updated");
    Ok(())
}

async fn publish(
    context: &Context,
    policy: &CheckpointPolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(err) = context
        .recorder
        .publish(&event, &policy.object_ref(&()))
        .await
    {
        tracing::warn!(policy = %policy.name_any(), error = %err, "publishing an Event failed");
    }
}

/// Removes the policy's archives from every agent. Agents that cannot be
/// reached do not block the deletion: the policy is going away either way,
/// and their archives are named in the log.
async fn cleanup(policy: &CheckpointPolicy, context: &Context) -> Result<Action, Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", policy.name_any());
    // A checkpoint still running would store its archive after the
    // deletion below and leave it behind.
    if !context
        .checkpointer
        .drain(&key, context.checkpoint_timeout + Duration::from_secs(10))
        .await
    {
        tracing::warn!(policy = %key, "checkpoints still running after the timeout; their archives may stay until retention removes them");
    }
    let agents = AgentIndex::from_leases(context.leases.state().iter().map(AsRef::as_ref));
    let now = jiff::Timestamp::now();
    let request = pb::DeleteArchivesRequest {
        archive_ids: Vec::new(),
        policy: key.clone(),
        gone_pods: None,
    };
    let results = context
        .agents
        .delete_archives_on(
            agents.by_node.values(),
            &request,
            Duration::from_secs(10),
            now,
        )
        .await;
    for (node, result) in results {
        match result {
            Ok(deleted) => tracing::info!(policy = %key, %node, archives = deleted.deleted.len(),
                freed_bytes = deleted.freed_bytes, "deleted the policy's archives"),
            Err(error) => tracing::warn!(policy = %key, %node, %error,
                "could not delete the policy's archives on this node; they stay until removed by hand or by retention"),
        }
    }
    context.forget_policy(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CheckpointRecord;

    fn record(pod: &str, uid: &str) -> CheckpointRecord {
        serde_json::from_value(serde_json::json!({
            "pod": pod, "podUid": uid, "container": "app", "node": "a", "archive": "x",
            "sizeBytes": 1, "durationMs": 1, "takenAt": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn newer_results_replace_older_records_and_failures_become_problems() {
        let mut status = CheckpointPolicyStatus {
            checkpoints: vec![record("p", "u")],
            ..Default::default()
        };
        let mut newer = record("p", "u");
        newer.taken_at = Time("2026-01-01T00:00:10Z".parse().unwrap());
        newer.archive = "y".into();
        let target = Target {
            pod: "p".into(),
            pod_uid: "u".into(),
            node: "a".into(),
            container: "app".into(),
            restart_count: 0,
            healthy: true,
            owner: String::new(),
        };
        let results = vec![
            crate::checkpointer::Outcome {
                seq: 1,
                target: target.clone(),
                result: Ok(crate::checkpointer::Done {
                    record: newer,
                    replica_errors: vec![("b".into(), "refused".into())],
                    replications: vec![],
                    criu_stats: None,
                    state_api_call: None,
                }),
            },
            crate::checkpointer::Outcome {
                seq: 2,
                target,
                result: Err(CheckpointFailure::CheckpointFailed(
                    "kubelet said 500".into(),
                )),
            },
        ];
        let mut events = PendingEvents::new();
        let problems = fold_results(&mut status, &results, &mut events);
        assert_eq!(status.checkpoints.len(), 1);
        assert_eq!(status.checkpoints[0].archive, "y");
        assert_eq!(problems[0].0, "ReplicationFailed");
        assert_eq!(problems[1].0, "CheckpointFailed");
        assert!(problems[1].1.contains("kubelet said 500"));
        assert_eq!(events.len(), 1);
    }
}
