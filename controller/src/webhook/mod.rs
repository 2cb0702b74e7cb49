//! Mutating admission webhook that points a replacement pod at its checkpoint.
//!
//! When a protected pod fails, the controller records a failover in the
//! CheckpointPolicy's status and, once the target agent has prepared the
//! checkpoint images, fences the failed pod. Its owner (ReplicaSet or
//! StatefulSet controller) then creates a replacement, and this webhook
//! rewrites that replacement on CREATE: the restored containers run the
//! local checkpoint image (never pulled), the pod is pinned to the target
//! node and carries the annotations the container runtime restores from.
//!
//! The webhook never blocks pod creation: every answer is "allowed", with a
//! patch only when a pending failover matches, and the chart registers it
//! with `failurePolicy: Ignore`. A replacement that is not rewritten starts
//! cold, which the controller notices (no pod carries
//! [`FAILOVER_ANNOTATION`]) and reports.

mod https;
mod patch;
pub use https::{WebhookListener, serve, serve_listener, server_config};
pub use patch::restore_patch;
#[cfg(test)]
use patch::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ferry_api::names::{
    FAILOVER_ANNOTATION, RESTORE_GATE, RESTORED_FROM_ANNOTATION, STATE_RESTORED_CONDITION,
};
use ferry_api::{CheckpointPolicy, FailoverRecord, FailoverStage};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Selector, SelectorExt};
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_rustls::rustls;

/// Path the API server posts AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate";

/// How long a request waits for the first CheckpointPolicy list at start-up;
/// well inside the API server's 5 s webhook timeout.
const STORE_READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A Pod (at most ~1.5 MB in etcd) wrapped in an AdmissionReview.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Everything that can go wrong while setting up or running the webhook
/// server. Problems with single admission requests are not errors: the pod
/// is allowed unmodified and the problem logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading webhook {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("webhook {what} {path} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("webhook certificate {0} holds no PEM CERTIFICATE block")]
    NoCertificate(PathBuf),
    #[error(
        "webhook key {0} holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey(PathBuf),
    #[error("webhook certificate {cert} and key {key} do not make a TLS configuration: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("binding the webhook to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("serving the webhook: {0}")]
    Serve(#[source] io::Error),
}

/// PEM files of the webhook's serving certificate (followed by any
/// intermediates) and its private key; read once at start-up.
#[derive(Clone, Debug)]
pub struct WebhookTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

// ---------------------------------------------------------------------------
// Decision

/// What the webhook does to one replacement pod.
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePlan {
    /// The CheckpointPolicy whose status holds the failover.
    pub policy: String,
    /// Name and UID of the failed pod (the failover's key).
    pub failed_pod: String,
    pub failed_pod_uid: String,
    /// Node the replacement is pinned to.
    pub node: String,
    /// Containers that restore from a checkpoint; the others start cold.
    pub containers: Vec<String>,
    /// RFC 6902 patch against the pod as the API server sent it.
    pub patch: Patch,
}

/// The annotations a replacement pod carries: the target agent's, the
/// failed pod's UID and the archive each container restores from. Used for
/// pods the webhook rewrites and for bare pods ferry recreates itself.
pub fn restore_annotations(failover: &FailoverRecord) -> BTreeMap<String, String> {
    let mut annotations = failover.pod_annotations.clone();
    annotations.insert(FAILOVER_ANNOTATION.to_owned(), failover.pod_uid.clone());
    let restored_from = failover
        .containers
        .iter()
        .map(|r| format!("{}={}", r.container, r.archive))
        .collect::<Vec<_>>()
        .join(",");
    annotations.insert(RESTORED_FROM_ANNOTATION.to_owned(), restored_from);
    annotations
}

/// Finds the pending failover a newly created pod carries out, if any, and
/// the patch that points the pod at its checkpoint. Pure: no I/O, no clock.
///
/// `claimed` holds the failed-pod UIDs already handed to another
/// replacement, so one failure is restored into one pod only.
pub fn plan_restore(
    pod: &Pod,
    policies: &[CheckpointPolicy],
    claimed: &HashSet<String>,
) -> Option<RestorePlan> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref()?;
    // Already rewritten (reinvocation, or a pod created from a copy).
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(FAILOVER_ANNOTATION))
    {
        return None;
    }
    let owner = controller_owner(pod)?;
    let spec = pod.spec.as_ref()?;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);

    let mut best: Option<(&CheckpointPolicy, &FailoverRecord)> = None;
    for policy in policies {
        if policy.metadata.namespace.as_deref() != Some(namespace)
            // A policy being deleted is removing its archives.
            || policy.metadata.deletion_timestamp.is_some()
            || !selects(&policy.spec.selector, labels)
        {
            continue;
        }
        let Some(status) = &policy.status else {
            continue;
        };
        for failover in &status.failovers {
            let state_api = policy.spec.strategy == ferry_api::Strategy::StateApi;
            if !carries_out(failover, pod, spec, &owner, claimed, state_api) {
                continue;
            }
            let older = best.is_none_or(|(_, b)| {
                (failover.started_at.0, &failover.pod_uid) < (b.started_at.0, &b.pod_uid)
            });
            if older {
                best = Some((policy, failover));
            }
        }
    }
    let (policy, failover) = best?;
    let state_gate = policy.spec.strategy == ferry_api::Strategy::StateApi && !failover.cold_start;
    let patch = restore_patch(
        pod,
        failover,
        &policy.spec.placement.tolerations,
        state_gate,
    );
    Some(RestorePlan {
        policy: policy.metadata.name.clone().unwrap_or_default(),
        failed_pod: failover.pod.clone(),
        failed_pod_uid: failover.pod_uid.clone(),
        node: failover.to_node.clone().unwrap_or_default(),
        containers: failover
            .containers
            .iter()
            .filter(|r| spec.containers.iter().any(|c| c.name == r.container))
            .map(|r| r.container.clone())
            .collect(),
        patch,
    })
}

/// `Kind/name` of the pod's controller ownerReference.
fn controller_owner(pod: &Pod) -> Option<(String, String)> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// Label selector matching (matchLabels AND every matchExpression). An
/// empty or unparsable selector selects nothing here: the CRD refuses
/// both, and a policy must never capture every pod of a namespace.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    match Selector::try_from(selector.clone()) {
        Ok(selector) => !selector.selects_all() && selector.matches(labels),
        Err(_) => false,
    }
}

/// Whether `failover` is pending and `pod` is the replacement its owner
/// creates for it.
fn carries_out(
    failover: &FailoverRecord,
    pod: &Pod,
    spec: &PodSpec,
    (kind, name): &(String, String),
    claimed: &HashSet<String>,
    state_api: bool,
) -> bool {
    // A cold start gets the rewrite too (annotation and gate, no images):
    // it must not run before the failed instance is stopped either.
    let pending = matches!(
        failover.stage,
        FailoverStage::Prepared | FailoverStage::Fenced
    ) && failover.replacement_pod.is_none()
        && !failover.pod_uid.is_empty()
        && (failover.cold_start || failover.to_node.as_deref().is_some_and(|n| !n.is_empty()));
    if !pending {
        return false;
    }
    // Bare pods (empty owner) are recreated by the controller itself.
    if failover.owner.is_empty() || failover.owner != format!("{kind}/{name}") {
        return false;
    }
    // A StatefulSet recreates the pod under the same name; a different name
    // is another replica (scale-up), which must start cold.
    if kind == "StatefulSet" && pod.metadata.name.as_deref() != Some(failover.pod.as_str()) {
        return false;
    }
    if claimed.contains(&failover.pod_uid)
        || pod.metadata.uid.as_deref() == Some(failover.pod_uid.as_str())
    {
        return false;
    }
    // Every restore needs a container to go into and, from a checkpoint,
    // its prepared image, or a grant of ferry's runtime handler (then it
    // keeps its own image; a state needs neither: it is written in later).
    let prepared = |image: Option<&str>| match image {
        Some(image) => !image.is_empty() || failover.runtime_class.is_some(),
        None => false,
    };
    failover.cold_start
        || !failover.containers.is_empty()
            && failover.containers.iter().all(|r| {
                (state_api || prepared(r.image.as_deref()))
                    && spec.containers.iter().any(|c| c.name == r.container)
            })
}

// ---------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `restored`, `unchanged` or `error`.
    pub result: &'static str,
}

/// Counters of the webhook; register them with [`register_metrics`].
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    pub admissions: Family<AdmissionLabels, Counter>,
}

impl WebhookMetrics {
    fn count(&self, result: &'static str) {
        self.admissions
            .get_or_create(&AdmissionLabels { result })
            .inc();
    }

    /// How many admissions ended with `result` (for tests and logs).
    pub fn admissions(&self, result: &'static str) -> u64 {
        self.admissions
            .get_or_create(&AdmissionLabels { result })
            .get()
    }
}

/// Registers `webhook_admissions{result}` (exposed as
/// `<prefix>_webhook_admissions_total`) and returns the handle to pass to
/// [`WebhookState::new`].
pub fn register_metrics(registry: &mut Registry) -> WebhookMetrics {
    let metrics = WebhookMetrics::default();
    registry.register(
        "webhook_admissions",
        "Pod CREATE admissions by the failover webhook, by result (restored, unchanged, error); every pod is allowed",
        metrics.admissions.clone(),
    );
    metrics
}

// ---------------------------------------------------------------------------
// Handler

/// Shared state of the webhook handler.
#[derive(Clone, Debug)]
pub struct WebhookState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policies: Store<CheckpointPolicy>,
    /// Failed-pod UIDs already given to a replacement, so two pods created
    /// at once never restore the same failure. Entries leave once the
    /// failover is no longer pending in any status.
    /// With when: a claim whose pod never came (its creation failed after
    /// this webhook answered) expires after [`CLAIM_TTL`], or the owner's
    /// retries would never be rewritten again.
    claimed: Mutex<HashMap<String, std::time::Instant>>,
    claim_ttl: std::time::Duration,
    metrics: WebhookMetrics,
    /// With a client, each decision reads the pod's namespace's policies
    /// from the API server instead of trusting the cache (see
    /// [`WebhookState::reading_fresh`]).
    fresh: Option<FreshReads>,
}

/// The client decisions read through.
#[derive(Clone)]
struct FreshReads(kube::Client);

impl std::fmt::Debug for FreshReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FreshReads")
    }
}

/// An answer, and whether the webhook could decide at all. An undecided
/// answer closes the connection, so the API server's next call dials a
/// replica again instead of reusing this one's connection.
#[derive(Debug)]
pub struct Verdict {
    pub response: AdmissionResponse,
    pub decided: bool,
}

/// How long a decision waits for the API server's answer about the pod's
/// namespace's policies; well inside the API server's webhook timeout.
const FRESH_READ_TIMEOUT: Duration = Duration::from_secs(1);

impl WebhookState {
    /// `policies` is a reflector store of all CheckpointPolicies (the
    /// controller's own store works).
    pub fn new(policies: Store<CheckpointPolicy>, metrics: WebhookMetrics) -> Self {
        Self::build(policies, metrics, None)
    }

    /// Like [`WebhookState::new`], but a pod with an owner is decided on the
    /// policies of its namespace as the API server has them now. A replica
    /// whose watch fell behind (its node cut off from the API server while
    /// the API server still reaches it, and it holds the API server's
    /// connection) would otherwise answer every replacement "no failover
    /// pending" from a stale cache, for as long as that connection lives.
    /// A replica that cannot read them answers undecided.
    pub fn reading_fresh(
        policies: Store<CheckpointPolicy>,
        metrics: WebhookMetrics,
        client: kube::Client,
    ) -> Self {
        Self::build(policies, metrics, Some(client))
    }

    fn build(
        policies: Store<CheckpointPolicy>,
        metrics: WebhookMetrics,
        fresh: Option<kube::Client>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policies,
                claimed: Mutex::new(HashMap::new()),
                claim_ttl: CLAIM_TTL,
                metrics,
                fresh: fresh.map(FreshReads),
            }),
        }
    }

    pub fn metrics(&self) -> &WebhookMetrics {
        &self.inner.metrics
    }

    /// Answers one admission request: always allowed, patched when a
    /// failover matches.
    pub async fn admit(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        self.decide(request).await.response
    }

    /// Like [`WebhookState::admit`], saying whether the webhook decided.
    pub async fn decide(&self, request: &AdmissionRequest<DynamicObject>) -> Verdict {
        let decided = |response| Verdict {
            response,
            decided: true,
        };
        let response = AdmissionResponse::from(request);
        let is_pod_create = request.operation == Operation::Create
            && request.kind.group.is_empty()
            && request.kind.version == "v1"
            && request.kind.kind == "Pod"
            && request.sub_resource.is_none();
        if !is_pod_create {
            self.inner.metrics.count("unchanged");
            return decided(response);
        }
        match self.plan(request).await {
            Ok(Some((plan, pod))) => match response.clone().with_patch(plan.patch.clone()) {
                Ok(patched) => {
                    tracing::info!(
                        policy = %plan.policy,
                        namespace = request.namespace.as_deref().unwrap_or_default(),
                        failed_pod = %plan.failed_pod,
                        failed_pod_uid = %plan.failed_pod_uid,
                        replacement = pod.metadata.name.as_deref().unwrap_or_default(),
                        replacement_generate_name = pod.metadata.generate_name.as_deref().unwrap_or_default(),
                        node = %plan.node,
                        containers = ?plan.containers,
                        dry_run = request.dry_run,
                        "replacement pod restores from checkpoint"
                    );
                    self.inner.metrics.count("restored");
                    decided(patched)
                }
                Err(err) => self.failed(request, &err.to_string(), response),
            },
            Ok(None) => {
                self.inner.metrics.count("unchanged");
                decided(response)
            }
            Err(problem) => self.failed(request, &problem, response),
        }
    }

    fn failed(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        problem: &str,
        response: AdmissionResponse,
    ) -> Verdict {
        tracing::warn!(
            namespace = request.namespace.as_deref().unwrap_or_default(),
            name = %request.name,
            uid = %request.uid,
            problem,
            "admitting pod unmodified: the webhook could not decide"
        );
        self.inner.metrics.count("error");
        Verdict {
            response,
            decided: false,
        }
    }

    /// The policies of `namespace`: as the API server has them now when
    /// reading fresh, else from the cache.
    async fn namespace_policies(
        &self,
        namespace: Option<&str>,
        cached: &[Arc<CheckpointPolicy>],
    ) -> Result<Vec<CheckpointPolicy>, String> {
        let Some(FreshReads(client)) = &self.inner.fresh else {
            return Ok(cached
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == namespace)
                .map(|p| (**p).clone())
                .collect());
        };
        let namespace = namespace.ok_or("pod without a namespace")?;
        let api = kube::Api::<CheckpointPolicy>::namespaced(client.clone(), namespace);
        match tokio::time::timeout(FRESH_READ_TIMEOUT, api.list(&Default::default())).await {
            Ok(Ok(list)) => Ok(list.items),
            Ok(Err(err)) => Err(format!(
                "reading the CheckpointPolicies of namespace {namespace} from the API server: {err}"
            )),
            Err(_) => Err(format!(
                "reading the CheckpointPolicies of namespace {namespace} from the API server: no answer within {FRESH_READ_TIMEOUT:?}"
            )),
        }
    }

    async fn plan(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Result<Option<(RestorePlan, Pod)>, String> {
        let object = request
            .object
            .as_ref()
            .ok_or("CREATE request without object")?;
        let raw = serde_json::to_value(object).map_err(|e| format!("pod to JSON: {e}"))?;
        let mut pod: Pod =
            serde_json::from_value(raw.clone()).map_err(|e| format!("not a v1 Pod: {e}"))?;
        if pod.metadata.namespace.is_none() {
            pod.metadata.namespace = request.namespace.clone();
        }
        if pod.metadata.owner_references.is_none() {
            // Only pods with an owner can be replacements; skip the store.
            return Ok(None);
        }
        match tokio::time::timeout(STORE_READY_TIMEOUT, self.inner.policies.wait_until_ready())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("CheckpointPolicy cache writer is gone".into()),
            Err(_) => return Err("CheckpointPolicy cache not synced yet".into()),
        }
        let all = self.inner.policies.state();
        let namespace = pod.metadata.namespace.as_deref();
        let here = self.namespace_policies(namespace, &all).await?;
        let candidates: Vec<CheckpointPolicy> = here
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| !s.failovers.is_empty()))
            .cloned()
            .collect();

        // One lock from lookup to claim, so concurrent CREATEs serialise.
        let mut claimed = self
            .inner
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pending: HashSet<&str> = all
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| p.metadata.namespace.as_deref() != namespace)
            .chain(&here)
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| &s.failovers)
            .filter(|f| {
                f.replacement_pod.is_none()
                    && !matches!(f.stage, FailoverStage::Completed | FailoverStage::Failed)
            })
            .map(|f| f.pod_uid.as_str())
            .collect();
        let ttl = self.inner.claim_ttl;
        claimed.retain(|uid, at| pending.contains(uid.as_str()) && at.elapsed() < ttl);
        let taken: HashSet<String> = claimed.keys().cloned().collect();

        let Some(plan) = plan_restore(&pod, &candidates, &taken) else {
            return Ok(None);
        };
        // The patch was built from the typed pod; make sure it applies to
        // what the API server sent before promising it.
        let mut check = raw;
        json_patch::patch(&mut check, &plan.patch.0)
            .map_err(|e| format!("restore patch does not apply: {e}"))?;
        // A dry run must not use up the failover.
        if !request.dry_run {
            claimed.insert(plan.failed_pod_uid.clone(), std::time::Instant::now());
        }
        Ok(Some((plan, pod)))
    }
}

/// How long a failover given to one replacement pod is not given to
/// another: two pods created at once never both restore it, and a pod whose
/// creation failed after the rewrite does not block the owner's next try.
pub const CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The webhook's routes: `POST /mutate`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            tracing::warn!(error = %err, "webhook body is not JSON");
            state.inner.metrics.count("error");
            return (StatusCode::BAD_REQUEST, "body is not an AdmissionReview").into_response();
        }
    };
    let uid = value["request"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let request: Result<AdmissionRequest<DynamicObject>, String> =
        serde_json::from_value::<AdmissionReview<DynamicObject>>(value)
            .map_err(|e| e.to_string())
            .and_then(|review| {
                review
                    .try_into()
                    .map_err(|_| "no request in review".to_owned())
            });
    match request {
        Ok(request) => {
            let verdict = state.decide(&request).await;
            let mut response = axum::Json(verdict.response.into_review()).into_response();
            if !verdict.decided {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            response
        }
        Err(err) => {
            tracing::warn!(error = %err, uid, "unreadable AdmissionReview; allowing");
            state.inner.metrics.count("error");
            // Still answer "allowed" for the uid we could read.
            axum::Json(json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true},
            }))
            .into_response()
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    const NS: &str = "shop";
    const FAILED_UID: &str = "0000-failed";

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    /// A ReplicaSet replacement as the API server shows it to the webhook:
    /// generateName, no name, no uid yet.
    fn replacement() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "counter-7d9c-",
                "namespace": NS,
                "labels": {"app": "counter", "tier": "backend"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "counter-7d9c",
                    "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "containers": [
                    {"name": "app", "image": "counter:1", "imagePullPolicy": "IfNotPresent"},
                    {"name": "sidecar", "image": "proxy:2"}
                ]
            }
        })
    }

    fn failover(uid: &str, owner: &str, stage: &str, started: &str) -> FailoverRecord {
        serde_json::from_value(json!({
            "reason": "NodeLoss",
            "pod": format!("pod-{uid}"),
            "podUid": uid,
            "owner": owner,
            "fromNode": "node-a",
            "toNode": "node-b",
            "stage": stage,
            "containers": [{"container": "app", "archive": format!("sha256:{uid}"), "image": format!("localhost/ferry/checkpoint:{uid}")}],
            "podAnnotations": {"io.kubernetes.cri-o.annotations.checkpoint.name": "app"},
            "startedAt": started,
        }))
        .unwrap()
    }

    fn pending() -> FailoverRecord {
        failover(
            FAILED_UID,
            "ReplicaSet/counter-7d9c",
            "Prepared",
            "2025-01-01T00:00:10Z",
        )
    }

    fn policy(name: &str, failovers: Vec<FailoverRecord>) -> CheckpointPolicy {
        let mut policy: CheckpointPolicy = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "selector": {
                    "matchLabels": {"app": "counter"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend", "db"]}]
                },
                "placement": {"tolerations": [
                    {"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"}
                ]}
            }
        }))
        .unwrap();
        policy.status = Some(ferry_api::CheckpointPolicyStatus {
            failovers,
            ..Default::default()
        });
        policy
    }

    fn plan(pod_json: &Value, policies: &[CheckpointPolicy]) -> Option<RestorePlan> {
        plan_restore(&pod(pod_json.clone()), policies, &HashSet::new())
    }

    fn patched(pod_json: &Value, plan: &RestorePlan) -> Value {
        let mut doc = pod_json.clone();
        json_patch::patch(&mut doc, &plan.patch.0)
            .unwrap_or_else(|e| panic!("patch {:?} does not apply: {e}", plan.patch));
        doc
    }

    fn pin(node: &str) -> Value {
        json!({"key": "metadata.name", "operator": "In", "values": [node]})
    }

    #[test]
    fn replicaset_replacement_restores_only_the_listed_containers() {
        let input = replacement();
        let plan = plan(&input, &[policy("counter", vec![pending()])]).expect("a plan");
        assert_eq!(plan.policy, "counter");
        assert_eq!(plan.failed_pod, format!("pod-{FAILED_UID}"));
        assert_eq!(plan.failed_pod_uid, FAILED_UID);
        assert_eq!(plan.node, "node-b");
        assert_eq!(plan.containers, ["app"]);

        let expected = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "counter-7d9c-",
                "namespace": NS,
                "labels": {"app": "counter", "tier": "backend"},
                "ownerReferences": input["metadata"]["ownerReferences"],
                "annotations": {
                    "io.kubernetes.cri-o.annotations.checkpoint.name": "app",
                    FAILOVER_ANNOTATION: FAILED_UID,
                    RESTORED_FROM_ANNOTATION: format!("app=sha256:{FAILED_UID}"),
                }
            },
            "spec": {
                "containers": [
                    {"name": "app", "image": format!("localhost/ferry/checkpoint:{FAILED_UID}"), "imagePullPolicy": "Never"},
                    // Not in the failover: starts cold from its own image.
                    {"name": "sidecar", "image": "proxy:2"}
                ],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [pin("node-b")]}]
                }}},
                "tolerations": [{"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"}],
                // Not scheduled before the failed instance is known stopped.
                "schedulingGates": [{"name": RESTORE_GATE}]
            }
        });
        assert_eq!(patched(&input, &plan), expected);
        // The result is still a valid Pod.
        let _: Pod = serde_json::from_value(expected).unwrap();
    }

    /// ferry's runtime handler restores it: the pod keeps its image, runs
    /// with the handler's RuntimeClass and carries the grant.
    #[test]
    fn a_runtime_handler_replacement_keeps_its_image() {
        let input = replacement();
        let mut failover = pending();
        failover.containers[0].image = Some(String::new());
        failover.runtime_class = Some("ferry".into());
        failover.pod_annotations = BTreeMap::from([(
            ferry_api::names::RESTORE_GRANT_ANNOTATION.into(),
            "0123456789abcdef0123456789abcdef".into(),
        )]);
        let restore = plan(&input, &[policy("counter", vec![failover.clone()])]).expect("a plan");
        let pod = patched(&input, &restore);
        assert_eq!(pod["spec"]["runtimeClassName"], "ferry");
        assert_eq!(
            pod["spec"]["containers"], input["spec"]["containers"],
            "images unchanged"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["ferry.dev/restore-grant"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            pod["spec"]["schedulingGates"],
            json!([{"name": RESTORE_GATE}])
        );
        // Without the runtime class an empty image is nothing prepared.
        failover.runtime_class = None;
        assert_eq!(plan(&input, &[policy("counter", vec![failover])]), None);
    }

    #[test]
    fn several_containers_restore_in_one_pod() {
        let mut f = pending();
        f.containers.push(ferry_api::ContainerRestore {
            container: "sidecar".into(),
            archive: "sha256:side".into(),
            image: Some("localhost/ferry/checkpoint:side".into()),
        });
        let input = replacement();
        let plan = plan(&input, &[policy("counter", vec![f])]).expect("a plan");
        assert_eq!(plan.containers, ["app", "sidecar"]);
        let out = patched(&input, &plan);
        assert_eq!(
            out["spec"]["containers"][1],
            json!({"name": "sidecar", "image": "localhost/ferry/checkpoint:side", "imagePullPolicy": "Never"})
        );
        assert_eq!(
            out["metadata"]["annotations"][RESTORED_FROM_ANNOTATION],
            format!("app=sha256:{FAILED_UID},sidecar=sha256:side")
        );
    }

    #[test]
    fn other_owners_do_not_match() {
        let policies = [policy("counter", vec![pending()])];
        let mut other_rs = replacement();
        other_rs["metadata"]["ownerReferences"][0]["name"] = json!("counter-55f1");
        assert_eq!(plan(&other_rs, &policies), None, "other ReplicaSet");

        let mut other_kind = replacement();
        other_kind["metadata"]["ownerReferences"][0]["kind"] = json!("Job");
        assert_eq!(plan(&other_kind, &policies), None, "other kind");

        let mut not_controller = replacement();
        not_controller["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        assert_eq!(plan(&not_controller, &policies), None, "no controller ref");

        let mut bare = replacement();
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        assert_eq!(plan(&bare, &policies), None, "bare pod");

        // A bare pod's failover (no owner) is the controller's to recreate.
        let mut f = pending();
        f.owner = String::new();
        assert_eq!(plan(&bare, &[policy("counter", vec![f.clone()])]), None);
        assert_eq!(plan(&replacement(), &[policy("counter", vec![f])]), None);
    }

    #[test]
    fn only_prepared_and_fenced_failovers_without_replacement_match() {
        for (stage, matches) in [
            ("Detected", false),
            ("Prepared", true),
            ("Fenced", true),
            ("Completed", false),
            ("Failed", false),
        ] {
            let mut f = pending();
            f.stage = serde_json::from_value(json!(stage)).unwrap();
            let got = plan(&replacement(), &[policy("counter", vec![f])]);
            assert_eq!(got.is_some(), matches, "stage {stage}");
        }
        let mut f = pending();
        f.replacement_pod = Some("counter-7d9c-abcde".into());
        assert_eq!(plan(&replacement(), &[policy("counter", vec![f])]), None);

        let mut f = pending();
        f.containers[0].image = None;
        assert_eq!(
            plan(&replacement(), &[policy("counter", vec![f])]),
            None,
            "image not prepared yet"
        );

        let mut f = pending();
        f.containers[0].container = "gone".into();
        assert_eq!(
            plan(&replacement(), &[policy("counter", vec![f])]),
            None,
            "container not in the pod"
        );

        let mut f = pending();
        f.to_node = None;
        assert_eq!(plan(&replacement(), &[policy("counter", vec![f])]), None);

        // A cold start is claimed too: annotated and gated, not pinned, no
        // image, so it never runs beside the failed instance.
        let mut f = pending();
        f.to_node = None;
        f.cold_start = true;
        f.containers.clear();
        let cold = plan(&replacement(), &[policy("counter", vec![f])]).expect("a plan");
        let pod = patched(&replacement(), &cold);
        assert_eq!(
            pod["spec"]["schedulingGates"],
            json!([{"name": RESTORE_GATE}])
        );
        assert_eq!(
            pod["metadata"]["annotations"][FAILOVER_ANNOTATION],
            FAILED_UID
        );
        assert!(pod["spec"]["affinity"].is_null());
        assert_eq!(pod["spec"]["containers"][0]["image"], "counter:1");
    }

    #[test]
    fn statefulset_replacement_must_keep_the_failed_pods_name() {
        let mut f = pending();
        f.owner = "StatefulSet/db".into();
        f.pod = "db-1".into();
        let policies = [policy("db", vec![f])];
        let mut input = replacement();
        input["metadata"]["ownerReferences"][0]["kind"] = json!("StatefulSet");
        input["metadata"]["ownerReferences"][0]["name"] = json!("db");
        input["metadata"]["name"] = json!("db-2");
        assert_eq!(plan(&input, &policies), None, "another replica");
        input["metadata"]["name"] = json!("db-1");
        let plan = plan(&input, &policies).expect("same name restores");
        assert_eq!(plan.failed_pod, "db-1");
    }

    #[test]
    fn claimed_own_and_annotated_failovers_are_skipped_and_the_oldest_wins() {
        let older = failover(
            "uid-older",
            "ReplicaSet/counter-7d9c",
            "Fenced",
            "2025-01-01T00:00:05Z",
        );
        let policies = [policy("counter", vec![pending(), older])];
        let input = pod(replacement());

        let first = plan_restore(&input, &policies, &HashSet::new()).unwrap();
        assert_eq!(first.failed_pod_uid, "uid-older", "oldest startedAt first");

        let claimed: HashSet<String> = ["uid-older".to_owned()].into();
        let second = plan_restore(&input, &policies, &claimed).unwrap();
        assert_eq!(second.failed_pod_uid, FAILED_UID);

        let claimed: HashSet<String> = ["uid-older".to_owned(), FAILED_UID.to_owned()].into();
        assert_eq!(plan_restore(&input, &policies, &claimed), None);

        // The failed pod itself (same uid) is never its own replacement.
        let mut same = replacement();
        same["metadata"]["uid"] = json!("uid-older");
        let got = plan(&same, &policies).unwrap();
        assert_eq!(got.failed_pod_uid, FAILED_UID);

        let mut annotated = replacement();
        annotated["metadata"]["annotations"] = json!({FAILOVER_ANNOTATION: "x"});
        assert_eq!(plan(&annotated, &policies), None);
    }

    #[test]
    fn selector_and_namespace_decide_which_policies_apply() {
        let policies = [policy("counter", vec![pending()])];
        let mut wrong_label = replacement();
        wrong_label["metadata"]["labels"]["tier"] = json!("frontend");
        assert_eq!(plan(&wrong_label, &policies), None, "matchExpressions In");
        let mut no_labels = replacement();
        no_labels["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        assert_eq!(plan(&no_labels, &policies), None);
        let mut other_ns = replacement();
        other_ns["metadata"]["namespace"] = json!("elsewhere");
        assert_eq!(plan(&other_ns, &policies), None);

        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "counter"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["frontend"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert!(selects(
            &selector,
            &labels(&[("app", "counter"), ("team", "a")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("app", "counter"), ("team", "a"), ("tier", "frontend")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("app", "counter"), ("team", "a"), ("canary", "1")])
        ));
        assert!(!selects(&selector, &labels(&[("app", "counter")])));
        assert!(!selects(
            &selector,
            &labels(&[("app", "other"), ("team", "a")])
        ));
        assert!(
            !selects(&LabelSelector::default(), &labels(&[("app", "counter")])),
            "an empty selector selects nothing"
        );

        let mut deleting = policy("counter", vec![pending()]);
        deleting.metadata.deletion_timestamp = Some(failover_time());
        assert_eq!(plan(&replacement(), &[deleting]), None);
    }

    fn failover_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        pending().started_at
    }

    #[test]
    fn existing_required_node_affinity_is_anded_into_every_term() {
        let mut input = replacement();
        input["spec"]["affinity"] = json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-a"]}]}
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
                ]
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
        });
        input["spec"]["tolerations"] = json!([
            {"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "other", "operator": "Exists"}
        ]);
        let plan = plan(&input, &[policy("counter", vec![pending()])]).unwrap();
        let out = patched(&input, &plan);
        assert_eq!(
            out["spec"]["affinity"],
            json!({
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {
                            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
                            "matchFields": [pin("node-b")]
                        },
                        {"matchFields": [
                            {"key": "metadata.name", "operator": "NotIn", "values": ["node-a"]},
                            pin("node-b")
                        ]}
                    ]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
                    ]
                },
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
            })
        );
        // The policy's toleration is there already: not added twice.
        assert_eq!(out["spec"]["tolerations"], input["spec"]["tolerations"]);
    }

    #[test]
    fn missing_or_null_parents_are_created() {
        let policies = [policy("counter", vec![pending()])];
        // Affinity without nodeAffinity, null annotations, existing
        // annotations, tolerations present but without the policy's.
        let cases = [
            json!({"podAffinity": {}}),
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}),
        ];
        for affinity in cases {
            let mut input = replacement();
            input["spec"]["affinity"] = affinity.clone();
            input["metadata"]["annotations"] = json!({"keep": "me"});
            input["spec"]["tolerations"] = json!([{"key": "other", "operator": "Exists"}]);
            let plan = plan(&input, &policies).unwrap();
            let out = patched(&input, &plan);
            assert_eq!(
                out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
                json!({"nodeSelectorTerms": [{"matchFields": [pin("node-b")]}]}),
                "affinity {affinity}"
            );
            let mut kept = affinity.clone();
            if let Some(obj) = kept.get_mut("nodeAffinity").and_then(Value::as_object_mut) {
                obj.remove("requiredDuringSchedulingIgnoredDuringExecution");
            }
            for (key, value) in kept.as_object().unwrap() {
                if key != "nodeAffinity" {
                    assert_eq!(&out["spec"]["affinity"][key], value, "{affinity}");
                }
            }
            assert_eq!(out["metadata"]["annotations"]["keep"], "me");
            assert_eq!(
                out["metadata"]["annotations"][FAILOVER_ANNOTATION],
                FAILED_UID
            );
            assert_eq!(
                out["spec"]["tolerations"],
                json!([
                    {"key": "other", "operator": "Exists"},
                    {"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"}
                ])
            );
        }

        // JSON null where objects are expected.
        let mut input = replacement();
        input["metadata"]["annotations"] = Value::Null;
        input["spec"]["affinity"] = Value::Null;
        input["spec"]["tolerations"] = Value::Null;
        let plan = plan(&input, &policies).unwrap();
        let out = patched(&input, &plan);
        assert_eq!(
            out["metadata"]["annotations"][FAILOVER_ANNOTATION],
            FAILED_UID
        );
        assert_eq!(
            out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0],
            pin("node-b")
        );
        assert_eq!(out["spec"]["tolerations"][0]["key"], "ferry.dev/standby");
    }

    #[test]
    fn add_creating_parents_adds_at_the_first_missing_level() {
        let doc = json!({"a": {"b": null}, "x": 1});
        let op = add_creating_parents(&doc, &["a", "b", "c", "d"], json!(1));
        let PatchOperation::Add(op) = op else {
            panic!("not an add")
        };
        assert_eq!(op.path.to_string(), "/a/b");
        assert_eq!(op.value, json!({"c": {"d": 1}}));
        let op = add_creating_parents(&json!({}), &["metadata", "annotations"], json!({}));
        let PatchOperation::Add(op) = op else {
            panic!("not an add")
        };
        assert_eq!(op.path.to_string(), "/metadata");
        // Keys with '/' are escaped.
        let op = add(
            &["metadata", "annotations", "ferry.dev/failover-of"],
            json!("u"),
        );
        assert_eq!(
            op.path().to_string(),
            "/metadata/annotations/ferry.dev~1failover-of"
        );
    }

    /// The AdmissionReview the API server posts for creating `pod_json`.
    fn review(pod_json: &Value, dry_run: bool) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "req-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NS,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod_json,
                "dryRun": dry_run
            }
        })
    }

    fn request(pod_json: &Value, dry_run: bool) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(review(pod_json, dry_run)).unwrap();
        review.try_into().unwrap()
    }

    fn state_with(
        policies: Vec<CheckpointPolicy>,
    ) -> (WebhookState, reflector::store::Writer<CheckpointPolicy>) {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for p in policies {
            writer.apply_watcher_event(&Event::InitApply(p));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let mut registry = Registry::default();
        let metrics = register_metrics(&mut registry);
        (WebhookState::new(reader, metrics), writer)
    }

    #[tokio::test]
    async fn handler_claims_a_failover_once_and_never_on_dry_run() {
        let (state, _writer) = state_with(vec![policy("counter", vec![pending()])]);
        let input = replacement();

        let dry = state.admit(&request(&input, true)).await;
        assert!(dry.allowed && dry.patch.is_some(), "dry run gets the patch");

        let first = state.admit(&request(&input, false)).await;
        assert!(first.allowed);
        assert_eq!(first.uid, "req-1");
        let patch: Patch = serde_json::from_slice(first.patch.as_deref().unwrap()).unwrap();
        let mut out = input.clone();
        json_patch::patch(&mut out, &patch.0).unwrap();
        assert_eq!(
            out["metadata"]["annotations"][FAILOVER_ANNOTATION],
            FAILED_UID
        );

        let second = state.admit(&request(&input, false)).await;
        assert!(second.allowed && second.patch.is_none(), "claimed already");
        assert_eq!(state.metrics().admissions("restored"), 2);
        assert_eq!(state.metrics().admissions("unchanged"), 1);
    }

    #[tokio::test]
    async fn a_claim_whose_pod_never_came_expires() {
        let (mut state, _writer) = state_with(vec![policy("counter", vec![pending()])]);
        if let Some(inner) = Arc::get_mut(&mut state.inner) {
            inner.claim_ttl = std::time::Duration::ZERO;
        }
        let input = replacement();
        assert!(state.admit(&request(&input, false)).await.patch.is_some());
        // The rewritten pod was refused after the webhook answered; the
        // owner's next try is rewritten again.
        assert!(state.admit(&request(&input, false)).await.patch.is_some());
    }

    #[tokio::test]
    async fn claims_are_released_when_the_failover_is_no_longer_pending() {
        let (state, mut writer) = state_with(vec![policy("counter", vec![pending()])]);
        let input = replacement();
        assert!(state.admit(&request(&input, false)).await.patch.is_some());
        // The controller records the replacement: the claim is dropped.
        let mut done = pending();
        done.replacement_pod = Some("counter-7d9c-x1".into());
        writer.apply_watcher_event(&Event::Apply(policy("counter", vec![done])));
        assert!(state.admit(&request(&input, false)).await.patch.is_none());
        assert!(state.inner.claimed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn other_requests_are_allowed_unchanged() {
        let (state, _writer) = state_with(vec![policy("counter", vec![pending()])]);
        let mut update = request(&replacement(), false);
        update.operation = Operation::Update;
        let response = state.admit(&update).await;
        assert!(response.allowed && response.patch.is_none());

        // Not a pod at all.
        let mut weird = request(&replacement(), false);
        weird.object.as_mut().unwrap().data["spec"] = json!("not a spec");
        let response = state.admit(&weird).await;
        assert!(response.allowed && response.patch.is_none());
        assert_eq!(state.metrics().admissions("error"), 1);
    }

    /// The body of that review, as the handler receives it.
    fn review_body(pod_json: &Value) -> Bytes {
        Bytes::from(serde_json::to_vec(&review(pod_json, false)).unwrap())
    }

    /// A client of an API server that is not there (nothing listens on
    /// port 1), as a replica cut off from the API server has.
    fn unreachable_api_server() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn a_replica_that_cannot_read_the_policies_answers_undecided_and_hangs_up() {
        // Its cache says nothing is pending: trusting it would be wrong
        // answers for as long as the API server keeps this connection.
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(policy("counter", vec![])));
        writer.apply_watcher_event(&Event::InitDone);
        let state = WebhookState::reading_fresh(
            reader,
            WebhookMetrics::default(),
            unreachable_api_server(),
        );
        let response = mutate(State(state.clone()), review_body(&replacement())).await;
        assert_eq!(
            response
                .headers()
                .get(axum::http::header::CONNECTION)
                .map(|v| v.to_str().unwrap()),
            Some("close"),
            "the API server's next call must dial a replica again"
        );
        let body = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES)
            .await
            .unwrap();
        let review: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["response"]["allowed"], json!(true), "{review}");
        assert!(review["response"]["patch"].is_null(), "{review}");
        assert_eq!(state.metrics().admissions("error"), 1);

        // Pods without an owner are never replacements: decided at once.
        let mut bare = replacement();
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        let response = mutate(State(state.clone()), review_body(&bare)).await;
        assert!(
            response
                .headers()
                .get(axum::http::header::CONNECTION)
                .is_none()
        );
        assert_eq!(state.metrics().admissions("unchanged"), 1);
    }

    #[tokio::test]
    async fn unsynced_store_allows_and_counts_an_error() {
        let (reader, _writer) = reflector::store::<CheckpointPolicy>();
        let state = WebhookState::new(reader, WebhookMetrics::default());
        tokio::time::pause();
        let response = state.admit(&request(&replacement(), false)).await;
        assert!(response.allowed && response.patch.is_none());
        assert_eq!(state.metrics().admissions("error"), 1);
    }

    #[tokio::test]
    async fn unreadable_reviews_are_answered_allowed() {
        let (state, _writer) = state_with(vec![]);
        let body = Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc","operation":7}}"#);
        let response = mutate(State(state.clone()), body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["response"], json!({"uid": "abc", "allowed": true}));
        assert_eq!(state.metrics().admissions("error"), 1);
    }

    #[test]
    fn pem_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("ferry-webhook-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let missing = dir.join("missing.pem");
        let err = server_config(&WebhookTls {
            cert: missing.clone(),
            key: garbage.clone(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = server_config(&WebhookTls {
            cert: garbage.clone(),
            key: garbage.clone(),
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::NoCertificate(_)) && err.to_string().contains("garbage.pem"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
