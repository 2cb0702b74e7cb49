//! The failover's last stage: the replacement pod. Cold pods the owner
//! made without ferry's rewrite go, the gated replacement is released once
//! the failed instance is stopped, and the failover completes when the
//! replacement's containers run (or fails when its restore could not start).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use ferry_api::names::{FAILOVER_ANNOTATION, RESTORE_GATE, RESTORE_GRANT_ANNOTATION};
use ferry_api::{FailoverRecord, FailoverStage};

use super::machine::{Action, CLOCK_SLACK, NUDGE_EVERY, Observed, Step, give_up, nudgeable};
use super::started::Start;
use crate::schedule::owner_of;

/// Pods of the failed pod's owner created for this failover without
/// ferry's rewrite: they would run unfenced, and cold where a checkpoint
/// exists (the webhook was bypassed or failed open, or the owner replaced
/// an evicted pod before ferry knew).
pub fn cold_siblings<'a>(record: &FailoverRecord, pods: &[&'a Pod]) -> Vec<&'a Pod> {
    if record.owner.is_empty() {
        return Vec::new();
    }
    // An evicted pod's owner replaces it at once, before ferry recorded
    // anything: from the disruption on, a new pod is a replacement.
    let failed = record
        .failed_at
        .as_ref()
        .map_or(record.started_at.0, |t| t.0);
    let since = failed.checked_sub(CLOCK_SLACK).unwrap_or(failed);
    pods.iter()
        .copied()
        .filter(|p| {
            owner_of(p) == record.owner
                && p.uid().as_deref() != Some(record.pod_uid.as_str())
                && !p.annotations().contains_key(FAILOVER_ANNOTATION)
                && p.metadata.deletion_timestamp.is_none()
                && p.creation_timestamp().is_some_and(|t| t.0 >= since)
                // A StatefulSet's other replicas keep their own names.
                && (!record.owner.starts_with("StatefulSet/") || p.name_any() == record.pod)
        })
        .collect()
}

/// The position of ferry's gate among the pod's scheduling gates.
pub fn restore_gate(pod: &Pod) -> Option<usize> {
    pod.spec
        .as_ref()?
        .scheduling_gates
        .as_ref()?
        .iter()
        .position(|g| g.name == RESTORE_GATE)
}

/// The replacement's runtime could not restore it. ferry's runtime handler
/// spent the grant on that attempt, so the kubelet's retries are refused
/// and would never run it: an owned replacement, which never ran, is
/// deleted for its owner to start cold now rather than after the timeout.
fn restore_failed(record: &FailoverRecord, replacement: &Pod, why: &str) -> Step {
    let node = record.to_node.as_deref().unwrap_or("?");
    let name = replacement.name_any();
    if record.owner.is_empty() {
        return give_up(
            record,
            format!("the restore into {name} on node {node} failed: {why}"),
        );
    }
    let mut failed = record.clone();
    failed.stage = FailoverStage::Failed;
    failed.message = format!(
        "{}; the restore into {name} on node {node} failed ({why}): deleted it, {} starts it cold",
        record.message, record.owner
    );
    let note = failed.message.clone();
    Step::of(Action::DeletePods { names: vec![name] }, failed, note)
}

pub(super) fn replace(record: &FailoverRecord, world: Observed<'_>) -> Step {
    let cold = cold_siblings(record, world.pods);
    if !cold.is_empty() {
        let names: Vec<String> = cold.iter().map(|p| p.name_any()).collect();
        let note = format!(
            "removing {} created by {} without the restore (never run cold)",
            names.join(", "),
            record.owner
        );
        return Step::of(Action::DeletePods { names }, record.clone(), note);
    }
    let Some(replacement) = super::replacement(record, world.pods) else {
        if record.owner.is_empty() {
            return give_up(
                record,
                format!("the replacement of bare pod {} is gone", record.pod),
            );
        }
        let owned: Vec<String> = world
            .pods
            .iter()
            .filter(|p| owner_of(p) == record.owner)
            .map(|p| {
                format!(
                    "{} (created {}{})",
                    p.name_any(),
                    p.creation_timestamp()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                    if p.metadata.deletion_timestamp.is_some() {
                        ", terminating"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let waiting = format!(
            "waiting for {} to create the replacement (its pods now: {})",
            record.owner,
            owned.join(", ")
        );
        // Admission refuses the owner's tries that a webhook replica with a
        // stale view let through unrewritten (one on a partitioned node, its
        // endpoint still listed), and the owner backs off further each time.
        // A change to the owner makes it try again at once.
        let since = record
            .owner_nudged_at
            .as_ref()
            .or(record.fenced_at.as_ref())
            .map_or(record.started_at.0, |t| t.0);
        let due = since.checked_add(NUDGE_EVERY).unwrap_or(since);
        if nudgeable(&record.owner) && world.now >= due {
            let mut nudged = record.clone();
            nudged.owner_nudged_at = Some(Time(world.now));
            return Step::of(
                Action::NudgeOwner {
                    owner: record.owner.clone(),
                },
                nudged,
                format!("{waiting}; asked it to retry now"),
            )
            .waking_at(world.now.checked_add(NUDGE_EVERY).ok());
        }
        return Step::wait(record, waiting).waking_at(Some(due));
    };
    let extras: Vec<String> = world
        .pods
        .iter()
        .filter(|p| {
            p.uid() != replacement.uid()
                && p.annotations()
                    .get(FAILOVER_ANNOTATION)
                    .is_some_and(|uid| *uid == record.pod_uid)
                && p.metadata.deletion_timestamp.is_none()
        })
        .map(|p| p.name_any())
        .collect();
    if !extras.is_empty() {
        let note = format!(
            "removing extra replacements {}: one failure restores into one pod",
            extras.join(", ")
        );
        return Step::of(Action::DeletePods { names: extras }, record.clone(), note);
    }
    let mut named = record.clone();
    named.replacement_pod = Some(replacement.name_any());
    if let Some(gate_index) = restore_gate(replacement) {
        let note = format!(
            "released {} to the scheduler: the failed instance is stopped ({})",
            replacement.name_any(),
            record.fence
        );
        return Step::of(
            Action::ReleasePod {
                name: replacement.name_any(),
                gate_index,
            },
            named,
            note,
        );
    }
    match super::started::start_of(replacement) {
        Start::Running => {}
        Start::Failed(why) if record.runtime_class.is_some() && !record.cold_start => {
            return restore_failed(&named, replacement, &why);
        }
        // Otherwise the kubelet retries (a checkpoint image stays until
        // released), and the timeout bounds it.
        Start::Pending | Start::Failed(_) => {
            let changed = named != *record;
            return Step::of(
                if changed {
                    Action::Record
                } else {
                    Action::Wait
                },
                named,
                String::new(),
            );
        }
    }
    if world.state_api.is_some() && !record.cold_start {
        let Some(address) = replacement
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            let action = if named != *record {
                Action::Record
            } else {
                Action::Wait
            };
            return Step::of(action, named, "waiting for the replacement's IP");
        };
        let node = record.to_node.clone().unwrap_or_default();
        let note = format!(
            "{} Running on node {node}, its state written from the checkpoint",
            replacement.name_any()
        );
        let mut restored = named;
        restored.stage = FailoverStage::Completed;
        restored.restored_at = Some(Time(world.now));
        return Step::of(
            Action::RestoreState {
                node,
                pod: replacement.name_any(),
                uid: replacement.uid().unwrap_or_default(),
                address,
                restores: record
                    .containers
                    .iter()
                    .map(|c| (c.container.clone(), c.archive.clone()))
                    .collect(),
            },
            restored,
            note,
        );
    }
    named.stage = FailoverStage::Completed;
    named.restored_at = Some(Time(world.now));
    let action = if replacement
        .annotations()
        .contains_key(RESTORE_GRANT_ANNOTATION)
    {
        Action::ForgetGrant {
            pod: replacement.name_any(),
        }
    } else {
        Action::Record
    };
    let note = if record.cold_start {
        format!("{} Running, started cold", replacement.name_any())
    } else {
        format!(
            "{} Running on node {}, restored from checkpoint",
            replacement.name_any(),
            record.to_node.as_deref().unwrap_or("?")
        )
    };
    Step::of(action, named, note)
}
