//! Failovers: planned when a failure is detected ([`plan`]), advanced as a
//! pure state machine ([`machine`]) by a thin executor ([`execute`]), and
//! paced by a budget ([`budget`]).

pub mod budget;
pub mod execute;
pub mod machine;
pub mod plan;
pub mod replace;
pub mod started;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use kube::ResourceExt;

use ferry_api::FailoverRecord;

pub use machine::FAILOVER_TIMEOUT;
pub use plan::{plan_failover, replacement};

/// Name of the pod ferry creates in place of a failed bare pod.
pub fn bare_replacement_name(record: &FailoverRecord) -> String {
    format!(
        "{}-r{}",
        record.pod.chars().take(50).collect::<String>(),
        record.pod_uid.chars().take(5).collect::<String>()
    )
}

/// The replacement of a failed bare pod: a copy of its spec with the same
/// restore rewrite the webhook gives an owner's replacement (images,
/// annotations, pinned to the target node, gated until the fence holds).
/// `None` when the failed pod is gone, so there is nothing to copy.
pub fn bare_replacement(
    record: &FailoverRecord,
    pods: &[&Pod],
    tolerations: &[Toleration],
    state_gate: bool,
) -> Option<Pod> {
    let failed = pods
        .iter()
        .find(|p| p.uid().as_deref() == Some(record.pod_uid.as_str()))?;
    let mut spec = failed.spec.clone()?;
    spec.node_name = None;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(bare_replacement_name(record)),
            namespace: failed.namespace(),
            labels: failed.metadata.labels.clone(),
            annotations: failed.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let patch = crate::webhook::restore_patch(&pod, record, tolerations, state_gate);
    let mut doc = serde_json::to_value(&pod).ok()?;
    json_patch::patch(&mut doc, &patch.0).ok()?;
    serde_json::from_value(doc).ok()
}
