//! The failover step of a reconciliation: advance recorded failovers one
//! step each, then detect new failures and start those the budget admits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use ferry_api::{CheckpointPolicy, CheckpointPolicyStatus, FailoverRecord, FailoverStage};
use ferry_proto::v1 as pb;

use super::{FAILOVER_POLL, NODE_LOSS_SLACK, PendingEvents, RESYNC, Snapshot};
use crate::agents::{AgentIndex, status_message};
use crate::detect::{self, World};
use crate::failover::execute;
use crate::failover::machine::Observed;
use crate::failover::plan_failover;
use crate::metrics::{ErrorLabels, FailoverLabels, PolicyLabels};
use crate::status::ValidSpec;
use crate::{Context, evidence, view};

/// Moves recorded failovers one step on, then detects new failures,
/// records those the budget admits and queues the rest. Returns when to
/// look again. Nothing is decided while the view is incomplete.
#[allow(clippy::too_many_arguments)]
pub(super) async fn advance_failovers(
    policy: &CheckpointPolicy,
    valid: &ValidSpec,
    namespace: &str,
    status: &mut CheckpointPolicyStatus,
    snapshot: &Snapshot,
    context: &Context,
    events: &mut PendingEvents,
    problems: &mut Vec<(String, String)>,
) -> Duration {
    let key = format!("{namespace}/{}", policy.name_any());
    if let Err(incomplete) = view::complete(snapshot.watched, &snapshot.agents, snapshot.now) {
        context
            .metrics
            .failover_decisions_deferred
            .get_or_create(&ErrorLabels {
                reason: incomplete.reason(),
            })
            .inc();
        tracing::debug!(policy = %key, reason = incomplete.reason(),
            "no failover decided or advanced: {incomplete}");
        return incomplete
            .retry_in()
            .unwrap_or(FAILOVER_POLL)
            .max(NODE_LOSS_SLACK);
    }
    let pods: BTreeMap<String, &Pod> = snapshot
        .pods
        .iter()
        .filter_map(|p| Some((p.uid()?, p.as_ref())))
        .collect();
    let pod_list: Vec<&Pod> = snapshot.pods.iter().map(AsRef::as_ref).collect();
    let nodes: BTreeMap<String, &Node> = snapshot
        .nodes
        .iter()
        .map(|n| (n.name_any(), n.as_ref()))
        .collect();
    let world = World {
        pods: &pods,
        departed: &snapshot.departed,
        nodes: &nodes,
        agents: &snapshot.agents,
        now: snapshot.now,
    };
    let mut wake: Option<Duration> = None;
    // Advance what was recorded by an earlier reconciliation first: a new
    // failover is only acted on after its record is written.
    let mut still_running = Vec::new();
    for failover in std::mem::take(&mut status.failovers) {
        let observed = Observed {
            now: snapshot.now,
            pods: &pod_list,
            from_node: nodes.get(&failover.from_node).copied(),
            from_fencing: snapshot
                .agents
                .get(&failover.from_node)
                .and_then(|a| a.fencing.as_ref()),
            last_contact: evidence::last_contact_of(&failover.from_node, &snapshot.agents),
            kubelet_contact: evidence::kubelet_contact_of(&failover.from_node, &snapshot.agents),
            from_renewed: snapshot.agents.get(&failover.from_node).map(|a| a.renewed),
            target_live: failover
                .to_node
                .as_deref()
                .is_some_and(|n| snapshot.agents.live(n, snapshot.now).is_some()),
            tolerations: &policy.spec.placement.tolerations,
            state_api: valid.state_api.as_ref(),
        };
        let outcome = execute::advance(
            &failover,
            observed,
            (namespace, &policy.name_any()),
            &snapshot.agents,
            context,
        )
        .await;
        if let Some(at) = outcome.wake_at {
            let wait: Duration = snapshot
                .now
                .duration_until(at)
                .try_into()
                .unwrap_or_default();
            wake = Some(wake.map_or(wait, |w| w.min(wait)));
        }
        if !outcome.note.is_empty() {
            if outcome.failed {
                // Retried on the next look; meanwhile the status says why.
                problems.push((
                    "FailoverStepFailed".into(),
                    format!("failover of {}: {}", failover.pod, outcome.note),
                ));
                tracing::warn!(policy = %key, pod = %failover.pod, stage = ?failover.stage, "{}", outcome.note);
            } else {
                tracing::info!(policy = %key, pod = %failover.pod, stage = ?failover.stage, "{}", outcome.note);
            }
        }
        let finished = outcome.finished();
        let Some(record) = outcome.record else {
            release_restore(context, &snapshot.agents, &failover);
            events.push((
                EventType::Normal,
                "FailoverCancelled",
                format!("{}: {}", failover.pod, outcome.note),
            ));
            context
                .metrics
                .failovers
                .get_or_create(&FailoverLabels {
                    reason: trigger_name(failover.reason),
                    result: "cancelled",
                })
                .inc();
            continue;
        };
        if !finished {
            still_running.push(record);
            continue;
        }
        release_restore(context, &snapshot.agents, &record);
        let result = match (record.stage, record.cold_start) {
            (FailoverStage::Completed, false) => "restored",
            (FailoverStage::Completed, true) => "cold_start",
            _ => "failed",
        };
        context
            .metrics
            .failovers
            .get_or_create(&FailoverLabels {
                reason: trigger_name(record.reason),
                result,
            })
            .inc();
        if let Some(history) = &context.history {
            history.record(crate::history::failover_row(
                &policy.name_any(),
                namespace,
                &format!("{:?}", policy.spec.strategy),
                &record,
            ));
        }
        let took = snapshot.now.duration_since(record.started_at.0);
        context
            .metrics
            .failover_duration
            .observe(took.as_secs_f64().max(0.0));
        let (type_, reason) = if result == "failed" {
            (EventType::Warning, "FailoverFailed")
        } else {
            (EventType::Normal, "FailoverCompleted")
        };
        events.push((
            type_,
            reason,
            format!(
                "{}: {} in {:.1}s",
                record.pod,
                outcome.note,
                took.as_secs_f64()
            ),
        ));
        status.checkpoints.retain(|r| r.pod_uid != record.pod_uid);
        status.last_failover = Some(record);
    }
    status.failovers = still_running;

    let detection = detect::detect(
        status,
        &policy.spec.failover.triggers,
        valid.thresholds(),
        world,
    );
    for released in &detection.released {
        tracing::info!(policy = %key, pod = %released.pod, "{}; its checkpoint records are released", released.why);
        events.push((
            EventType::Normal,
            "CheckpointsReleased",
            format!("{}: {}; no failover", released.pod, released.why),
        ));
        status.checkpoints.retain(|r| r.pod_uid != released.pod_uid);
    }
    context
        .metrics
        .suspect_nodes
        .get_or_create(&PolicyLabels {
            policy: key.clone(),
        })
        .set(i64::try_from(detection.suspect_nodes.len()).unwrap_or(i64::MAX));
    for why in &detection.suspect_nodes {
        problems.push(("NodeSuspect".into(), why.clone()));
    }
    let admission = context.budget.admit(
        &key,
        detection.failures,
        status.failovers.len(),
        valid.max_concurrent_failovers,
        || running_failovers(context),
    );
    context
        .metrics
        .failovers_running
        .set(i64::try_from(context.budget.running()).unwrap_or(i64::MAX));
    context
        .metrics
        .failovers_queued
        .get_or_create(&PolicyLabels {
            policy: key.clone(),
        })
        .set(i64::try_from(admission.queued.len()).unwrap_or(i64::MAX));
    if admission.queued != status.queued_failovers && !admission.queued.is_empty() {
        tracing::warn!(policy = %key, queued = admission.queued.len(), "failed pods wait for a failover slot");
    }
    status.queued_failovers = admission.queued;
    for failure in admission.start {
        let record = plan_failover(
            &failure,
            status,
            valid.max_checkpoint_age,
            status.restore_target.as_deref(),
            world,
        );
        let message = match (&record.to_node, record.cold_start) {
            (Some(node), false) => format!(
                "{}: {}; restoring from {} (age {}) on node {node}",
                failure.pod,
                failure.detail,
                short(record.archive.as_deref().unwrap_or_default()),
                record.checkpoint_age.as_deref().unwrap_or("?"),
            ),
            _ => format!("{}: {}", failure.pod, record.message),
        };
        tracing::warn!(policy = %key, pod = %failure.pod,
            reason = trigger_name(failure.reason), evidence = ?failure.evidence, "{message}");
        events.push((EventType::Warning, "FailoverStarted", message));
        status.failovers.push(record);
    }
    if !status.failovers.is_empty() || !status.queued_failovers.is_empty() {
        return wake.map_or(FAILOVER_POLL, |w| w.max(NODE_LOSS_SLACK).min(FAILOVER_POLL));
    }
    detection
        .recheck_in
        .map_or(RESYNC, |wait| wait.max(NODE_LOSS_SLACK))
}

/// Failovers in progress per policy, as the cached statuses say.
/// Asks the target node's agent, in the background, to remove what it
/// prepared for this failover's restore (the checkpoint image in its
/// container runtime and the image's files): the restored pod runs, or the
/// failover ended without it, and a copy of the process's memory must not
/// outlive the restore. A failed call is logged; the agent removes what
/// nobody released after its TTL.
fn release_restore(context: &Context, agents: &AgentIndex, record: &FailoverRecord) {
    let Some(node) = record.to_node.clone() else {
        return;
    };
    let Some(agent) = agents.get(&node) else {
        return;
    };
    let archives: BTreeSet<String> = record
        .containers
        .iter()
        .map(|c| c.archive.clone())
        .chain(record.archive.clone())
        .filter(|id| ferry_api::agent::is_archive_id(id))
        .collect();
    if archives.is_empty() {
        return;
    }
    let pool = context.agents.clone();
    let endpoint = agent.endpoint.clone();
    let node = agent.node.clone();
    let failover = record.pod_uid.clone();
    let pod = record.pod.clone();
    tokio::spawn(async move {
        for archive_id in archives {
            let mut request = tonic::Request::new(pb::ReleaseRestoreRequest {
                archive_id: archive_id.clone(),
                failover: failover.clone(),
            });
            request.set_timeout(RELEASE_TIMEOUT);
            let result = match pool.client(&node, &endpoint) {
                Ok(mut client) => client
                    .release_restore(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| status_message(&s)),
                Err(err) => Err(err),
            };
            match result {
                Ok(released) => tracing::info!(%pod, %node, archive = %short(&archive_id),
                    images = ?released.images, freed_bytes = released.freed_bytes,
                    "released the restore: its prepared image and files are gone"),
                Err(error) => tracing::warn!(%pod, %node, archive = %short(&archive_id), %error,
                    "could not release the restore; the agent removes it after its TTL"),
            }
        }
    });
}

/// Removing an image waits for containerd's garbage collection.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

fn running_failovers(context: &Context) -> BTreeMap<String, usize> {
    context
        .policies()
        .map(|store| store.state())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                p.status.as_ref().map_or(0, |s| s.failovers.len()),
            )
        })
        .collect()
}

fn trigger_name(trigger: ferry_api::FailureTrigger) -> &'static str {
    match trigger {
        ferry_api::FailureTrigger::ContainerFailure => "ContainerFailure",
        ferry_api::FailureTrigger::PodLoss => "PodLoss",
        ferry_api::FailureTrigger::NodeLoss => "NodeLoss",
    }
}

fn short(archive: &str) -> String {
    format!("{}…", archive.chars().take(12).collect::<String>())
}
