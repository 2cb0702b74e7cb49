//! Carries out a warm standby plan (`crate::warm`): creates and deletes the
//! pods, and reports what the API server refused.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};

use ferry_api::CheckpointPolicy;

use super::Snapshot;
use crate::Context;
use crate::placement::unsuitable;
use crate::warm::{References, desired, is_warm_pod_of, plan, warm_nodes};

/// Brings `policy`'s warm standby pods in line with its pods and records;
/// returns one message per refused create or delete.
pub(super) async fn converge(
    policy: &CheckpointPolicy,
    namespace: &str,
    owned: &[std::sync::Arc<Pod>],
    status: &ferry_api::CheckpointPolicyStatus,
    snapshot: &Snapshot,
    context: &Context,
) -> Vec<String> {
    let pods: Vec<&Pod> = owned.iter().map(AsRef::as_ref).collect();
    let mut references = References::default();
    for pod in &pods {
        references.add(pod);
    }
    let nodes: Vec<&Node> = snapshot.nodes.iter().map(AsRef::as_ref).collect();
    let suitable = |name: &str| {
        nodes.iter().any(|n| {
            n.metadata.name.as_deref() == Some(name)
                && unsuitable(n, &policy.spec.placement, &snapshot.agents, snapshot.now).is_none()
        })
    };
    let targets: BTreeSet<String> = warm_nodes(&pods, status, suitable);
    let wanted = desired(policy, &context.warm_standby_image, &references, &targets);
    let existing: Vec<&Pod> = snapshot
        .pods
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| is_warm_pod_of(p, policy))
        .collect();
    let plan = plan(wanted, &existing);
    let api: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let mut failures = Vec::new();
    for pod in &plan.create {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        match api.create(&PostParams::default(), pod).await {
            Ok(_) => tracing::info!(
                pod = %pod.name_any(),
                %namespace,
                %node,
                "warm standby pod created"
            ),
            // Created by an earlier pass that the cache has not shown yet,
            // unless a pod of someone else's has the name.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let taken = snapshot
                    .pods
                    .iter()
                    .find(|p| p.metadata.name == pod.metadata.name);
                if taken.is_some_and(|p| !is_warm_pod_of(p, policy)) {
                    failures.push(format!(
                        "creating warm standby pod {namespace}/{} on node {node}: a pod that is not ferry's has that name",
                        pod.name_any()
                    ));
                }
            }
            Err(err) => {
                tracing::warn!(pod = %pod.name_any(), %namespace, %node, error = %err, "warm standby pod refused");
                failures.push(format!(
                    "creating warm standby pod {namespace}/{} on node {node}: {err}",
                    pod.name_any()
                ));
            }
        }
    }
    for (name, uid) in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(pod = %name, %namespace, "warm standby pod removed"),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(err) => {
                tracing::warn!(pod = %name, %namespace, error = %err, "warm standby pod not removed");
                failures.push(format!(
                    "removing warm standby pod {namespace}/{name}: {err}"
                ));
            }
        }
    }
    failures
}
