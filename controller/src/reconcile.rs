//! One reconciliation of a CheckpointPolicy: validate → desired status →
//! apply when changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use ferry_api::CheckpointPolicy;
use ferry_api::names::CONTROLLER_FIELD_MANAGER;

use crate::metrics::ErrorLabels;
use crate::status::desired_status;
use crate::{Context, Error};

/// How often a policy is looked at even when nothing changed, so a status
/// edited or wiped by hand is repaired.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(
    policy: Arc<CheckpointPolicy>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = apply_status(&policy, &context).await;
    context.metrics.observe(started.elapsed(), result.is_ok());
    result.map(|()| Action::requeue(RESYNC))
}

pub fn error_policy(policy: Arc<CheckpointPolicy>, error: &Error, context: Arc<Context>) -> Action {
    let reason = match error {
        Error::Kube { .. } => "kube",
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

async fn apply_status(policy: &CheckpointPolicy, context: &Context) -> Result<(), Error> {
    let namespace = policy
        .namespace()
        .ok_or(Error::MissingMetadata("metadata.namespace"))?;
    let name = policy
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("metadata.name"))?;
    let now = Time(jiff::Timestamp::now());
    let desired = desired_status(policy, now);
    if policy.status.as_ref() == Some(&desired) {
        tracing::debug!(policy = %name, %namespace, "status up to date");
        return Ok(());
    }
    let api: Api<CheckpointPolicy> = Api::namespaced(context.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "status": desired,
    });
    api.patch_status(
        &name,
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
    tracing::info!(
        policy = %name,
        %namespace,
        generation = desired.observed_generation,
        phase = desired.phase.map(|p| p.as_str()),
        "status updated"
    );
    Ok(())
}
