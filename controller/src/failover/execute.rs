//! Carrying out a recorded failover, one stage per reconciliation. Each
//! stage is written to the policy's status before the next action, and every
//! action is idempotent, so a controller that restarts anywhere finishes the
//! failover exactly once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use ferry_api::{CheckpointPolicy, FailoverRecord, FailoverStage, FailureTrigger};
use ferry_proto::v1 as pb;

use crate::Context;
use crate::agents::{AgentIndex, status_message};

/// A failover with no running replacement after this long gives up.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);

/// What one step did, for logs and Events.
#[derive(Debug, Default)]
pub struct Step {
    /// Human-readable account of the step; `None` when nothing happened.
    pub note: Option<String>,
    /// Set when the failover ended (Completed or Failed).
    pub finished: bool,
}

/// Advances `failover` by at most one stage.
pub async fn advance(
    failover: &mut FailoverRecord,
    policy: &CheckpointPolicy,
    namespace: &str,
    pods: &[Arc<Pod>],
    agents: &AgentIndex,
    context: &Context,
    now: jiff::Timestamp,
) -> Step {
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let elapsed: Duration = now
        .duration_since(failover.started_at.0)
        .try_into()
        .unwrap_or_default();
    if elapsed > FAILOVER_TIMEOUT && failover.stage < FailoverStage::Completed {
        failover.stage = FailoverStage::Failed;
        failover.message = format!(
            "{}; gave up: no replacement pod ran within {}s",
            failover.message,
            FAILOVER_TIMEOUT.as_secs()
        );
        return finished(failover.message.clone());
    }
    match failover.stage {
        FailoverStage::Detected => prepare(failover, agents, context, now).await,
        FailoverStage::Prepared => fence(failover, policy, &pods_api, pods).await,
        FailoverStage::Fenced => watch_replacement(failover, policy, &pods_api, pods, now).await,
        FailoverStage::Completed | FailoverStage::Failed => Step {
            note: None,
            finished: true,
        },
    }
}

fn finished(note: String) -> Step {
    Step {
        note: Some(note),
        finished: true,
    }
}

fn progressed(note: String) -> Step {
    Step {
        note: Some(note),
        finished: false,
    }
}

/// Detected → Prepared: the target agent verifies each archive and turns it
/// into something its node can restore from.
async fn prepare(
    failover: &mut FailoverRecord,
    agents: &AgentIndex,
    context: &Context,
    now: jiff::Timestamp,
) -> Step {
    let Some(target) = failover.to_node.clone().filter(|_| !failover.cold_start) else {
        failover.stage = FailoverStage::Prepared;
        return progressed("cold start: nothing to prepare".into());
    };
    let Some(agent) = agents.live(&target, now) else {
        return Step {
            note: Some(format!("waiting for the agent of node {target} to be live")),
            finished: false,
        };
    };
    let mut client = match context.agents.client(&agent.endpoint) {
        Ok(client) => client,
        Err(err) => return progressed(format!("agent of node {target}: {err}")),
    };
    for restore in failover.containers.iter_mut().filter(|c| c.image.is_none()) {
        let mut request = tonic::Request::new(pb::PrepareRestoreRequest {
            archive_id: restore.archive.clone(),
        });
        request.set_timeout(Duration::from_secs(120));
        match client.prepare_restore(request).await {
            Ok(response) => {
                let response = response.into_inner();
                restore.image = Some(response.image);
                failover.pod_annotations.extend(response.pod_annotations);
            }
            Err(status) => {
                if status.code() == tonic::Code::NotFound || status.code() == tonic::Code::DataLoss
                {
                    // The archive is gone or corrupt on that node: no restore.
                    failover.cold_start = true;
                    failover.containers.clear();
                    failover.stage = FailoverStage::Prepared;
                    failover.message = format!(
                        "{}; starting cold: node {target} cannot restore archive: {}",
                        failover.message,
                        status_message(&status)
                    );
                    return progressed(failover.message.clone());
                }
                context.agents.forget(&agent.endpoint);
                return progressed(format!(
                    "preparing archive {} on node {target} failed (will retry): {}",
                    restore.archive,
                    status_message(&status)
                ));
            }
        }
    }
    failover.stage = FailoverStage::Prepared;
    progressed(format!(
        "node {target} prepared the restore of pod {} ({} containers)",
        failover.pod,
        failover.containers.len()
    ))
}

/// Prepared → Fenced: the failed instance goes, so its owner creates the
/// replacement (which the webhook points at the checkpoint). Pods on a lost
/// node are removed without waiting for a kubelet that will not answer.
async fn fence(
    failover: &mut FailoverRecord,
    policy: &CheckpointPolicy,
    pods_api: &Api<Pod>,
    pods: &[Arc<Pod>],
) -> Step {
    let failed = pods
        .iter()
        .find(|p| p.uid().as_deref() == Some(failover.pod_uid.as_str()));
    if failover.owner.is_empty() {
        let Some(failed) = failed else {
            failover.stage = FailoverStage::Failed;
            failover.message = format!(
                "{}; bare pod {} is gone and had no owner to recreate it from",
                failover.message, failover.pod
            );
            return finished(failover.message.clone());
        };
        if let Err(message) = recreate_bare_pod(failover, policy, pods_api, failed).await {
            return progressed(message);
        }
    }
    if failed.is_some() {
        let grace = match failover.reason {
            FailureTrigger::NodeLoss => Some(0),
            _ => None,
        };
        let params = DeleteParams {
            grace_period_seconds: grace,
            // Only the failed instance, never a replacement of the same name.
            preconditions: Some(Preconditions {
                uid: Some(failover.pod_uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods_api.delete(&failover.pod, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                return progressed(format!("deleting failed pod {}: {err}", failover.pod));
            }
        }
    }
    failover.stage = FailoverStage::Fenced;
    progressed(format!(
        "removed failed pod {} from node {}",
        failover.pod, failover.from_node
    ))
}

/// A bare pod has no owner to recreate it: ferry creates the replacement,
/// named after the failed pod, with the restore applied.
async fn recreate_bare_pod(
    failover: &FailoverRecord,
    policy: &CheckpointPolicy,
    pods_api: &Api<Pod>,
    failed: &Pod,
) -> Result<(), String> {
    let name = format!(
        "{}-r{}",
        failover.pod.chars().take(50).collect::<String>(),
        &failover.pod_uid.chars().take(5).collect::<String>()
    );
    let mut replacement = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: failed.namespace(),
            labels: failed.metadata.labels.clone(),
            annotations: failed.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: failed.spec.clone(),
        status: None,
    };
    if let Some(spec) = replacement.spec.as_mut() {
        spec.node_name = None;
    }
    apply_restore(&mut replacement, failover, policy);
    match pods_api.create(&PostParams::default(), &replacement).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(format!("creating replacement pod {name}: {err}")),
    }
}

/// Points a pod ferry creates itself at the checkpoint: restore images
/// (never pulled), the failover annotations, and the target node.
fn apply_restore(pod: &mut Pod, failover: &FailoverRecord, policy: &CheckpointPolicy) {
    pod.metadata
        .annotations
        .get_or_insert_default()
        .extend(crate::webhook::restore_annotations(failover));
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.node_name = failover.to_node.clone();
    for restore in &failover.containers {
        if let Some(container) = spec
            .containers
            .iter_mut()
            .find(|c| c.name == restore.container)
            && let Some(image) = &restore.image
        {
            container.image = Some(image.clone());
            container.image_pull_policy = Some("Never".into());
        }
    }
    spec.tolerations
        .get_or_insert_default()
        .extend(policy.spec.placement.tolerations.iter().cloned());
}

/// Fenced → Completed once the replacement runs. Extra replacements (two
/// pods admitted for one failover) and cold pods the owner created before
/// the restore was ready are removed, so exactly one instance continues.
async fn watch_replacement(
    failover: &mut FailoverRecord,
    policy: &CheckpointPolicy,
    pods_api: &Api<Pod>,
    pods: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> Step {
    let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let Some(replacement) = crate::detect::replacement(failover, &refs) else {
        if let Some(cold) = cold_sibling(failover, policy, &refs) {
            let name = cold.name_any();
            return match pods_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => progressed(format!(
                    "removed pod {name}, started cold by {} before the restore was ready",
                    failover.owner
                )),
                Err(err) => progressed(format!("removing cold pod {name}: {err}")),
            };
        }
        if failover.cold_start {
            // Nothing is annotated for a cold start: any new pod of the owner will do.
            failover.stage = FailoverStage::Completed;
            failover.restored_at = Some(Time(now));
            return finished(failover.message.clone());
        }
        return Step::default();
    };
    failover.replacement_pod = Some(replacement.name_any());
    for extra in refs.iter().filter(|p| {
        p.uid() != replacement.uid()
            && p.annotations()
                .get(ferry_api::names::FAILOVER_ANNOTATION)
                .is_some_and(|uid| *uid == failover.pod_uid)
    }) {
        let _ = pods_api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await;
    }
    let running = replacement.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !running {
        return Step::default();
    }
    failover.stage = FailoverStage::Completed;
    failover.restored_at = Some(Time(now));
    finished(format!(
        "{} Running on node {}, restored from checkpoint",
        replacement.name_any(),
        failover.to_node.as_deref().unwrap_or("?")
    ))
}

/// A pod of the failed pod's owner, created before the restore was
/// prepared, without the restore: a cold start that raced the failover
/// (a deleted pod is replaced by its ReplicaSet at once).
fn cold_sibling<'a>(
    failover: &FailoverRecord,
    policy: &CheckpointPolicy,
    pods: &[&'a Pod],
) -> Option<&'a Pod> {
    if failover.cold_start
        || failover.owner.is_empty()
        || failover.reason != FailureTrigger::PodLoss
    {
        return None;
    }
    let protected: std::collections::HashSet<&str> = policy
        .status
        .iter()
        .flat_map(|s| s.checkpoints.iter().map(|r| r.pod_uid.as_str()))
        .collect();
    pods.iter().copied().find(|p| {
        crate::schedule::owner_of(p) == failover.owner
            && p.uid()
                .is_some_and(|uid| uid != failover.pod_uid && !protected.contains(uid.as_str()))
            && !p
                .annotations()
                .contains_key(ferry_api::names::FAILOVER_ANNOTATION)
            && p.metadata.deletion_timestamp.is_none()
            && p.creation_timestamp()
                .is_some_and(|t| t.0 <= failover.started_at.0)
    })
}
