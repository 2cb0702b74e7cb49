//! Archives of pods that no longer exist. Agents apply retention per pod
//! and container, so every pod a Deployment ever replaced would keep its
//! last `keep` archives on every node forever. Once a minute, with a
//! complete view, the leader tells each live agent which pods of the policy
//! still matter; the agents delete the rest (taken long enough ago that a
//! pod too new for this view keeps its first archives).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use ferry_api::CheckpointPolicyStatus;
use ferry_proto::v1 as pb;

use crate::Context;
use crate::agents::{AgentIndex, AgentInfo};

/// How often one policy's gone pods are swept.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Archives younger than this are never taken for a gone pod's: the pod
/// may be newer than the cache, and clocks differ between nodes.
const GRACE: Duration = Duration::from_secs(120);

/// Pod UIDs whose archives stay: every pod of the namespace the cache holds,
/// and every pod a status still names (checkpoint records, failovers in
/// progress and the last failover's failed pod, whose archive restored the
/// replacement until that has archives of its own).
pub(super) fn live_pod_uids<'a>(
    pods: &[Arc<Pod>],
    statuses: impl IntoIterator<Item = &'a CheckpointPolicyStatus>,
) -> Vec<String> {
    let mut uids: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    for status in statuses {
        uids.extend(status.checkpoints.iter().map(|r| r.pod_uid.clone()));
        uids.extend(
            status
                .failovers
                .iter()
                .chain(status.last_failover.as_ref())
                .map(|f| f.pod_uid.clone()),
        );
    }
    uids.remove("");
    uids.into_iter().collect()
}

/// What each agent is asked to delete.
pub(super) fn request(
    policy: &str,
    live: Vec<String>,
    now: jiff::Timestamp,
) -> pb::DeleteArchivesRequest {
    let grace = i64::try_from(GRACE.as_millis()).unwrap_or(i64::MAX);
    pb::DeleteArchivesRequest {
        archive_ids: Vec::new(),
        policy: policy.to_owned(),
        gone_pods: Some(pb::GonePods {
            live_pod_uids: live,
            taken_before_millis: now.as_millisecond().saturating_sub(grace),
        }),
    }
}

/// Sends `request` to every live agent, in the background: a slow agent
/// never holds up the reconciliation. Failures are logged; the next sweep
/// tries again.
pub(super) fn sweep(
    context: &Arc<Context>,
    agents: &AgentIndex,
    request: pb::DeleteArchivesRequest,
    now: jiff::Timestamp,
) {
    let live: Vec<AgentInfo> = agents
        .by_node
        .values()
        .filter(|a| a.live(now))
        .cloned()
        .collect();
    let context = context.clone();
    tokio::spawn(async move {
        let results = context
            .agents
            .delete_archives_on(&live, &request, CALL_TIMEOUT, now)
            .await;
        for (node, result) in results {
            match result {
                Ok(done) if !done.deleted.is_empty() => tracing::info!(
                    policy = %request.policy, %node, archives = done.deleted.len(),
                    freed_bytes = done.freed_bytes, "deleted archives of pods that no longer exist"),
                Ok(_) => {}
                Err(error) => tracing::warn!(policy = %request.policy, %node, %error,
                    "could not delete archives of pods that no longer exist; the next sweep retries"),
            }
        }
    });
}

/// How long one agent may take to answer a sweep.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "demo", "uid": uid},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn pods_the_cache_or_the_status_names_keep_their_archives() {
        let status: CheckpointPolicyStatus = serde_json::from_value(serde_json::json!({
            "checkpoints": [{"pod": "a", "podUid": "recorded", "container": "app", "node": "n",
                "archive": "x", "sizeBytes": 1, "durationMs": 1, "takenAt": "2026-01-01T00:00:00Z"}],
            "failovers": [{"pod": "b", "podUid": "failing", "reason": "NodeLoss", "stage": "Detected",
                "fromNode": "n", "startedAt": "2026-01-01T00:00:00Z"}],
            "lastFailover": {"pod": "c", "podUid": "restored-from", "reason": "NodeLoss",
                "stage": "Completed", "fromNode": "n", "startedAt": "2026-01-01T00:00:00Z"},
        }))
        .unwrap();
        assert_eq!(
            live_pod_uids(&[pod("cached")], [&status]),
            ["cached", "failing", "recorded", "restored-from"]
        );
    }

    #[test]
    fn archives_newer_than_the_grace_are_never_asked_for() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let asked = request("demo/counter", vec!["u".into()], now);
        let gone = asked.gone_pods.unwrap();
        assert_eq!(
            gone.taken_before_millis,
            1_800_000_000_000 - 120_000,
            "two minutes before now"
        );
        assert_eq!(asked.policy, "demo/counter");
        assert!(asked.archive_ids.is_empty());
    }
}
