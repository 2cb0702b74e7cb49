//! The thin executor of the failover state machine: carries out the one
//! action [`machine::next`] chose, against the API server or an agent, and
//! returns the record to write. Every action is idempotent (preconditions
//! on UIDs, 404 and 409 taken as done), so repeating one after a restart is
//! harmless.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use ferry_api::FailoverRecord;
use ferry_api::names::{
    FAILED_NODE_TAINT, RESTORE_GATE, RESTORE_GRANT_ANNOTATION, STATE_RESTORED_CONDITION,
};
use ferry_proto::v1 as pb;

use super::machine::{self, Action, Observed, Prepared, STOP_GRACE_SECONDS};
use crate::Context;
use crate::agents::{AgentIndex, status_message};

/// What one step did.
#[derive(Debug)]
pub struct Outcome {
    /// The record to keep; `None` when the failover was cancelled.
    pub record: Option<FailoverRecord>,
    /// What happened; empty when nothing did.
    pub note: String,
    /// Whether the action failed (it is retried on the next look).
    pub failed: bool,
    /// When to look again without a change in the world.
    pub wake_at: Option<jiff::Timestamp>,
}

impl Outcome {
    pub fn finished(&self) -> bool {
        self.record.as_ref().is_some_and(machine::ended)
    }
}

/// Advances `record` of the policy `(namespace, name)` by one step.
pub async fn advance(
    record: &FailoverRecord,
    world: Observed<'_>,
    (namespace, policy): (&str, &str),
    agents: &AgentIndex,
    context: &Context,
) -> Outcome {
    let step = machine::next(record, world);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let kept = |note: String| Outcome {
        record: Some(record.clone()),
        note,
        failed: true,
        wake_at: None,
    };
    let result: Result<FailoverRecord, String> = match &step.action {
        Action::Wait | Action::Record => Ok(step.record.clone()),
        Action::Cancel => {
            return Outcome {
                record: None,
                note: step.note,
                failed: false,
                wake_at: None,
            };
        }
        Action::Prepare { node, archives } => {
            prepare(
                record, node, namespace, archives, agents, context, world.now,
            )
            .await
        }
        Action::TaintNode { node } => taint(context, node).await.map(|()| step.record.clone()),
        Action::StopPod { name, uid } => {
            delete_pod(&pods, name, Some(uid), Some(STOP_GRACE_SECONDS))
                .await
                .map(|()| step.record.clone())
        }
        Action::ForceRemovePod { name, uid } => delete_pod(&pods, name, Some(uid), Some(0))
            .await
            .map(|()| step.record.clone()),
        Action::CreatePod(pod) => match pods.create(&PostParams::default(), pod).await {
            Ok(_) => Ok(step.record.clone()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(step.record.clone()),
            Err(err) => Err(format!(
                "creating replacement pod {namespace}/{}: {err}",
                pod.metadata.name.as_deref().unwrap_or_default()
            )),
        },
        Action::ReleasePod { name, gate_index } => release(&pods, name, *gate_index)
            .await
            .map(|()| step.record.clone()),
        Action::ForgetGrant { pod } => forget_grant(&pods, pod).await.map(|()| step.record.clone()),
        Action::NudgeOwner { owner } => nudge(context, namespace, owner, world.now)
            .await
            .map(|()| step.record.clone()),
        Action::AskAgentToFence { node } => ask_to_fence(record, node, namespace, agents, context)
            .await
            .map(|()| step.record.clone()),
        Action::RestoreState {
            node,
            pod,
            uid,
            address,
            restores,
        } => {
            let target = StateTarget {
                node,
                namespace,
                policy,
                pod,
                uid,
                address,
            };
            restore_state(&target, restores, world.state_api, agents, context)
                .await
                .map(|()| step.record.clone())
        }
        Action::OpenStateGate { pod, uid, message } => {
            set_state_condition(&pods, pod, uid, false, message, world.now)
                .await
                .map(|()| step.record.clone())
        }
        Action::DeletePods { names } => {
            let mut result = Ok(step.record.clone());
            for name in names {
                if let Err(err) = delete_pod(&pods, name, None, Some(STOP_GRACE_SECONDS)).await {
                    result = Err(err);
                }
            }
            result
        }
    };
    match result {
        Ok(next) => Outcome {
            record: Some(next),
            note: step.note,
            failed: false,
            wake_at: step.wake_at,
        },
        Err(error) => kept(format!(
            "{} failed (retried): {error}",
            describe(&step.action)
        )),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Wait | Action::Record | Action::Cancel => "recording".into(),
        Action::Prepare { node, .. } => format!("preparing the restore on node {node}"),
        Action::TaintNode { node } => format!("tainting node {node}"),
        Action::StopPod { name, .. } => format!("stopping pod {name}"),
        Action::ForceRemovePod { name, .. } => format!("removing pod {name}"),
        Action::CreatePod(pod) => format!(
            "creating pod {}",
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
        Action::ReleasePod { name, .. } => format!("releasing pod {name}"),
        Action::ForgetGrant { pod } => format!("removing the spent restore grant from pod {pod}"),
        Action::DeletePods { names } => format!("deleting {}", names.join(", ")),
        Action::NudgeOwner { owner } => format!("asking {owner} to retry"),
        Action::AskAgentToFence { node } => format!("asking the agent of node {node} to fence"),
        Action::RestoreState { node, pod, .. } => {
            format!("writing the state into {pod} from node {node}")
        }
        Action::OpenStateGate { pod, .. } => format!("opening the readiness gate of {pod}"),
    }
}

/// Annotates the owner, which makes its controller sync it (and retry
/// creating pods) at once instead of after its backoff.
async fn nudge(
    context: &Context,
    namespace: &str,
    owner: &str,
    now: jiff::Timestamp,
) -> Result<(), String> {
    let patch = Patch::Merge(serde_json::json!({
        "metadata": {"annotations": {ferry_api::names::NUDGED_ANNOTATION: now.to_string()}}
    }));
    let params = PatchParams::default();
    let client = context.client.clone();
    let result = match owner.split_once('/') {
        Some(("ReplicaSet", name)) => {
            Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client, namespace)
                .patch(name, &params, &patch)
                .await
                .map(|_| ())
        }
        Some(("StatefulSet", name)) => {
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client, namespace)
                .patch(name, &params, &patch)
                .await
                .map(|_| ())
        }
        _ => return Ok(()),
    };
    match result {
        // An owner that is gone has nothing to retry.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map_err(|err| format!("annotating {namespace}/{owner}: {err}")),
    }
}

/// Asks the target agent to prepare each archive.
/// Asks the failed node's agent to stop the failed pod. The agent lists it
/// in its Lease, which is what the machine takes as the fence.
async fn ask_to_fence(
    record: &FailoverRecord,
    node: &str,
    namespace: &str,
    agents: &AgentIndex,
    context: &Context,
) -> Result<(), String> {
    let agent = agents
        .get(node)
        .ok_or_else(|| format!("no agent Lease for node {node}"))?;
    let mut client = context.agents.client(&agent.node, &agent.endpoint)?;
    let mut request = tonic::Request::new(pb::FencePodRequest {
        pod_uid: record.pod_uid.clone(),
        namespace: namespace.to_owned(),
        pod: record.pod.clone(),
    });
    request.set_timeout(Duration::from_secs(10));
    match client.fence_pod(request).await {
        Ok(response) => {
            tracing::info!(node, pod = %record.pod, killed = response.into_inner().killed_processes,
                "the agent stopped the failed pod");
            Ok(())
        }
        Err(status) => {
            context.agents.forget(&agent.endpoint);
            Err(format!(
                "pod {namespace}/{}: {}",
                record.pod,
                status_message(&status)
            ))
        }
    }
}

async fn prepare(
    record: &FailoverRecord,
    node: &str,
    namespace: &str,
    archives: &[String],
    agents: &AgentIndex,
    context: &Context,
    now: jiff::Timestamp,
) -> Result<FailoverRecord, String> {
    let agent = agents
        .live(node, now)
        .ok_or_else(|| format!("the agent of node {node} is not live"))?;
    let mut client = context.agents.client(&agent.node, &agent.endpoint)?;
    let mut answers = Vec::new();
    for archive in archives {
        let mut request = tonic::Request::new(pb::PrepareRestoreRequest {
            archive_id: archive.clone(),
            failover: record.pod_uid.clone(),
            namespace: namespace.to_owned(),
        });
        request.set_timeout(Duration::from_secs(120));
        match client.prepare_restore(request).await {
            Ok(response) => {
                let response = response.into_inner();
                answers.push(Prepared::Ready {
                    archive: archive.clone(),
                    image: response.image,
                    annotations: response.pod_annotations.into_iter().collect(),
                    runtime_class: Some(response.runtime_class).filter(|c| !c.is_empty()),
                });
            }
            Err(status)
                if matches!(status.code(), tonic::Code::NotFound | tonic::Code::DataLoss) =>
            {
                answers.push(Prepared::Unusable {
                    archive: archive.clone(),
                    why: status_message(&status),
                });
                break;
            }
            Err(status) => {
                context.agents.forget(&agent.endpoint);
                return Err(format!("archive {archive}: {}", status_message(&status)));
            }
        }
    }
    Ok(machine::prepared(record, &answers))
}

/// The replacement a state goes into.
struct StateTarget<'a> {
    node: &'a str,
    namespace: &'a str,
    policy: &'a str,
    pod: &'a str,
    uid: &'a str,
    address: &'a str,
}

/// Has the agent holding the state write each container's into the
/// replacement, records each write, then opens the pod's readiness gate.
async fn restore_state(
    target: &StateTarget<'_>,
    restores: &[(String, String)],
    source: Option<&pb::StateApi>,
    agents: &AgentIndex,
    context: &Context,
) -> Result<(), String> {
    let source = source.ok_or("the policy has no stateApi settings")?;
    let node = target.node;
    let agent = agents
        .get(node)
        .ok_or_else(|| format!("no agent Lease for node {node}"))?;
    let mut client = context.agents.client(&agent.node, &agent.endpoint)?;
    for (container, archive) in restores {
        let started = std::time::Instant::now();
        let mut request = tonic::Request::new(pb::RestoreStateRequest {
            archive_id: archive.clone(),
            container: Some(pb::ContainerRef {
                namespace: target.namespace.to_owned(),
                pod: target.pod.to_owned(),
                pod_uid: target.uid.to_owned(),
                container: container.clone(),
            }),
            state_api: Some(pb::StateApi {
                address: target.address.to_owned(),
                ..source.clone()
            }),
        });
        request.set_timeout(
            Duration::from_millis(u64::from(source.timeout_millis)) + Duration::from_secs(10),
        );
        let answer = client.restore_state(request).await;
        if let Some(history) = &context.history {
            let (call, error) = match &answer {
                Ok(response) => (response.get_ref().call, None),
                Err(status) => (None, Some(status_message(status))),
            };
            history.record(crate::history::state_write_row(
                (target.namespace, target.policy),
                (target.pod, container, node),
                call.as_ref(),
                started.elapsed(),
                error,
            ));
        }
        if let Err(status) = answer {
            if status.code() == tonic::Code::Unavailable {
                context.agents.forget(&agent.endpoint);
            }
            return Err(format!(
                "writing the state of {container} into pod {}/{} from node {node}: {}",
                target.namespace,
                target.pod,
                status_message(&status)
            ));
        }
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), target.namespace);
    set_state_condition(
        &pods,
        target.pod,
        target.uid,
        true,
        &format!("state restored from node {node}"),
        jiff::Timestamp::now(),
    )
    .await
}

/// Sets the replacement's readiness-gate condition: True once its state is
/// in, True with reason StateNotRestored when the failover gave up (the pod
/// then serves from zero rather than never).
async fn set_state_condition(
    pods: &Api<Pod>,
    name: &str,
    uid: &str,
    restored: bool,
    message: &str,
    now: jiff::Timestamp,
) -> Result<(), String> {
    let reason = if restored {
        "StateRestored"
    } else {
        "StateNotRestored"
    };
    let patch = serde_json::json!({
        "metadata": {"uid": uid},
        "status": {"conditions": [{
            "type": STATE_RESTORED_CONDITION,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now.to_string(),
        }]},
    });
    match pods
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(format!(
            "setting the {STATE_RESTORED_CONDITION} condition of pod {name}: {err}"
        )),
    }
}

async fn taint(context: &Context, node: &str) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(context.client.clone());
    let current = nodes
        .get(node)
        .await
        .map_err(|e| format!("reading node {node}: {e}"))?;
    let taints = current.spec.as_ref().and_then(|s| s.taints.as_ref());
    if taints.is_some_and(|t| t.iter().any(|t| t.key == FAILED_NODE_TAINT)) {
        return Ok(());
    }
    let taint = serde_json::json!({"key": FAILED_NODE_TAINT, "effect": "NoSchedule",
        "value": "ferry"});
    let patch = match taints {
        Some(_) => serde_json::json!([{"op": "add", "path": "/spec/taints/-", "value": taint}]),
        None => serde_json::json!([{"op": "add", "path": "/spec/taints", "value": [taint]}]),
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| format!("taint patch: {e}"))?;
    nodes
        .patch(node, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
        .map_err(|e| format!("tainting node {node}: {e}"))
}

async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    grace: Option<i64>,
) -> Result<(), String> {
    let params = DeleteParams {
        grace_period_seconds: grace.and_then(|g| u32::try_from(g).ok()),
        // Only that instance, never a replacement of the same name.
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(err) => Err(format!("deleting pod {name}: {err}")),
    }
}

/// A JSON patch that removes entry `index` of the list at `list`, only if
/// its `field` still is `value`: another writer may have changed the list
/// since it was read (taints, scheduling gates).
pub(crate) fn remove_checked(
    list: &str,
    index: usize,
    field: &str,
    value: &str,
) -> Result<json_patch::Patch, String> {
    let path = format!("{list}/{index}");
    serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("{path}/{field}"), "value": value},
        {"op": "remove", "path": path},
    ]))
    .map_err(|e| format!("patch removing {path}: {e}"))
}

/// Removes the spent restore grant's annotation from the restored pod.
async fn forget_grant(pods: &Api<Pod>, name: &str) -> Result<(), String> {
    let patch = serde_json::json!({"metadata": {"annotations": {RESTORE_GRANT_ANNOTATION: null}}});
    match pods
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(format!(
            "removing annotation {RESTORE_GRANT_ANNOTATION} of pod {name}: {err}"
        )),
    }
}

/// Removes ferry's scheduling gate, and only it: the patch tests that the
/// gate is still where the machine saw it.
async fn release(pods: &Api<Pod>, name: &str, gate_index: usize) -> Result<(), String> {
    let patch = remove_checked("/spec/schedulingGates", gate_index, "name", RESTORE_GATE)?;
    match pods
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(format!(
            "removing the {RESTORE_GATE} gate of pod {name}: {err}"
        )),
    }
}
