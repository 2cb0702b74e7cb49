use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
#[allow(unused_imports)] // used inside the x_kube attributes
use kube::core::{ListMerge, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Go `time.ParseDuration` syntax without a sign: `10s`, `1m30s`, `1.5h`.
const DURATION_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+$";

/// A DNS-1123 label, the syntax of container names.
const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A qualified Kubernetes name with optional DNS prefix (label keys).
const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// Which containers ferry protects and how: checkpoint interval, where the
/// replicas live, how long archives are kept and when to fail over.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "CheckpointPolicy",
    plural = "checkpointpolicies",
    shortname = "cpp",
    category = "ferry",
    namespaced,
    status = "CheckpointPolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Target","type":"string","description":"Pods the policy selects","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Interval","type":"string","description":"Checkpoint period","jsonPath":".spec.interval"}"#,
    printcolumn = r#"{"name":"Last Checkpoint","type":"date","description":"When the newest checkpoint was taken","jsonPath":".status.lastCheckpointTime"}"#,
    printcolumn = r#"{"name":"Restore Target","type":"string","description":"Node a failover would restore on","jsonPath":".status.restoreTarget"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","description":"Protected, Degraded, FailingOver, Suspended or Pending","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.strategy != 'StateApi' || has(self.stateApi)")
    .message("stateApi (port, path) is required when strategy is StateApi")
    .field_path(".stateApi")
    .reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new(format!(
        // Malformed durations are reported by their own fields' patterns;
        // this rule only compares well-formed ones.
        "!self.interval.matches(r'{DURATION_PATTERN}') || !self.failover.maxCheckpointAge.matches(r'{DURATION_PATTERN}') || duration(self.failover.maxCheckpointAge) >= duration(self.interval)"
    ))
    .message("failover.maxCheckpointAge must not be shorter than interval: every checkpoint would be too old to restore")
    .field_path(".failover.maxCheckpointAge"))]
#[serde(rename_all = "camelCase")]
pub struct CheckpointPolicySpec {
    /// Pods to protect, of any owner (Deployment, StatefulSet, bare Pod), in
    /// the policy's namespace. Must not be empty.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)")
        .message("selector must have matchLabels or matchExpressions: an empty selector would select every pod in the namespace"))]
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])")
        .message("selector.matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist"))]
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))")
        .message("selector.matchExpressions[].values must be non-empty for In and NotIn and empty for Exists and DoesNotExist"))]
    pub selector: LabelSelector,

    /// Names of the containers to checkpoint. Empty means every container of
    /// the pod.
    #[serde(default)]
    #[schemars(length(max = 32), inner(regex(pattern = DNS_LABEL_PATTERN), length(max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub containers: Vec<String>,

    /// How often each container is checkpointed (Go duration, 1s to 24h).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{DURATION_PATTERN}') || (duration(self) >= duration('1s') && duration(self) <= duration('24h'))"))
        .message("interval must be between 1s and 24h"))]
    pub interval: String,

    /// Number of other nodes that hold a replica of every archive (0 to 10).
    /// With 0 a failover can only restore on the pod's own node.
    #[serde(default = "default_standbys")]
    #[schemars(range(min = 0, max = 10))]
    pub standbys: i32,

    /// Which nodes may hold replicas and receive restores.
    #[serde(default)]
    pub placement: Placement,

    /// How many archives each node keeps per container.
    #[serde(default)]
    pub retention: Retention,

    /// When and how to fail over.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How state is captured: `Checkpoint` (CRIU, whole process memory) or
    /// `StateApi` (the application's own HTTP state endpoint).
    #[serde(default)]
    pub strategy: Strategy,

    /// Settings of the `StateApi` strategy; required with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_api: Option<StateApiSpec>,

    /// Stops new checkpoints and failovers; archives are kept.
    #[serde(default)]
    pub suspend: bool,
}

/// Constraints on the standby nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a standby node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of standby nodes that the replicas and restored pods tolerate,
    /// validated as a Pod's tolerations are (restored pods carry them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.operator) || t.operator in ['Exists', 'Equal'])")
        .message("placement.tolerations[].operator must be Exists or Equal"))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute'])")
        .message("placement.tolerations[].effect must be NoSchedule, PreferNoSchedule or NoExecute (or empty for all)"))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.operator) || t.operator != 'Exists' || !has(t.value) || t.value == '')")
        .message("placement.tolerations[].value must be empty when operator is Exists"))]
    #[x_kube(validation = Rule::new("self.all(t, (has(t.key) && t.key != '') || (has(t.operator) && t.operator == 'Exists'))")
        .message("placement.tolerations[].key may be empty only with operator Exists"))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))")
        .message("placement.tolerations[].tolerationSeconds needs effect NoExecute"))]
    pub tolerations: Vec<Toleration>,

    /// Node label whose values the standbys are spread over (for example
    /// `topology.kubernetes.io/zone`), preferring values other than the
    /// source node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LABEL_KEY_PATTERN), length(max = 316))]
    pub topology_spread_key: Option<String>,

    /// Keep a small pause pod of this policy on every node that holds
    /// replicas, referencing the ConfigMaps and Secrets the protected pods
    /// use. The node's kubelet then has them cached when a restore lands
    /// there, instead of asking the API server at the moment its node
    /// authorizer may not yet know the new pod (a wait of about a second).
    #[serde(default = "default_true")]
    pub warm_standbys: bool,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            topology_spread_key: None,
            warm_standbys: true,
        }
    }
}

/// Retention of archives, per container, on every node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Newest archives kept (1 to 100).
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: i32,

    /// Upper bound on the bytes kept; oldest archives go first, the newest is
    /// always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_quantity_schema")]
    #[x_kube(validation = Rule::new("quantity(string(self)).isGreaterThan(quantity('0'))")
        .message("retention.maxBytes must be greater than zero"))]
    pub max_bytes: Option<Quantity>,

    /// Archives older than this are deleted (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{DURATION_PATTERN}') || (duration(self) >= duration('1s'))"))
        .message("retention.maxAge must be at least 1s"))]
    pub max_age: Option<String>,
}

impl CheckpointPolicy {
    /// The pod selector, parsed. Invalid and empty selectors select nothing
    /// (`None`); validation reports them.
    pub fn pod_selector(&self) -> Option<kube::core::Selector> {
        kube::core::Selector::try_from(self.spec.selector.clone())
            .ok()
            .filter(|selector| !selector.selects_all())
    }

    /// Whether the policy selects a pod with these labels (the pod is in the
    /// policy's namespace).
    pub fn selects_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.pod_selector()
            .is_some_and(|selector| kube::core::SelectorExt::matches(&selector, labels))
    }

    /// Whether `container` is one the policy protects.
    pub fn protects_container(&self, container: &str) -> bool {
        self.spec.containers.is_empty() || self.spec.containers.iter().any(|c| c == container)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: default_keep(),
            max_bytes: None,
            max_age: None,
        }
    }
}

/// What counts as a failure and how old a checkpoint may be to restore.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Failures that start a failover. Empty disables automatic failover.
    #[serde(default = "all_triggers")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub triggers: Vec<FailureTrigger>,

    /// How long the API server may report a node NotReady before its pods
    /// are failed over. An agent that stops renewing its Lease on a Ready
    /// node is an agent outage, never a node loss.
    #[serde(default = "default_node_loss_grace_period")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub node_loss_grace_period: String,

    /// How long every peer agent must have failed to reach both the agent
    /// and the kubelet of a node whose agent stopped renewing its Lease
    /// before the node counts as lost. This is the fast path; the
    /// NotReady grace period above is the slow one.
    #[serde(default = "default_unreachable_grace_period")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub unreachable_grace_period: String,

    /// Failovers of this policy that run at once; further failed pods wait
    /// (status.queuedFailovers) so losing a zone does not flood the API
    /// server and the standbys.
    #[serde(default = "default_max_concurrent_failovers")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent: i32,

    /// A newer checkpoint than this is required to restore; otherwise the
    /// replacement starts cold and the status says so.
    #[serde(default = "default_max_checkpoint_age")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub max_checkpoint_age: String,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            triggers: all_triggers(),
            node_loss_grace_period: default_node_loss_grace_period(),
            unreachable_grace_period: default_unreachable_grace_period(),
            max_concurrent: default_max_concurrent_failovers(),
            max_checkpoint_age: default_max_checkpoint_age(),
        }
    }
}

/// A kind of failure that ferry reacts to.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum FailureTrigger {
    /// The container restarted, terminated or fails its liveness probe.
    ContainerFailure,
    /// The pod was deleted, evicted or failed.
    PodLoss,
    /// The pod's node is NotReady past the grace period, gone from the API,
    /// or unreachable from every peer agent (its agent and its kubelet).
    NodeLoss,
}

/// How the state of a container is captured.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Strategy {
    /// CRIU checkpoint through the kubelet: the whole process memory.
    #[default]
    Checkpoint,
    /// The application's HTTP state endpoint (GET to save, PUT to restore).
    StateApi,
}

/// Where the application serves its state for the `StateApi` strategy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateApiSpec {
    /// Container port of the state endpoint.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// HTTP path of the state endpoint.
    #[serde(default = "default_state_path")]
    #[schemars(regex(pattern = r"^/[!-~]*$"), length(max = 1024))]
    pub path: String,

    /// Scheme of the state endpoint.
    #[serde(default)]
    pub scheme: StateApiScheme,

    /// Bound on one GET or PUT (Go duration).
    #[serde(default = "default_state_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{DURATION_PATTERN}') || (duration(self) >= duration('100ms') && duration(self) <= duration('10m'))"))
        .message("stateApi.timeout must be between 100ms and 10m"))]
    pub timeout: String,

    /// Largest state accepted (bytes; up to 1Gi): a larger answer fails
    /// the checkpoint, naming the limit.
    #[serde(default = "default_state_max_size")]
    #[schemars(schema_with = "state_size_schema")]
    #[x_kube(validation = Rule::new("quantity(string(self)).isGreaterThan(quantity('0')) && !quantity(string(self)).isGreaterThan(quantity('1Gi'))")
        .message("stateApi.maxSize must be greater than zero and at most 1Gi"))]
    pub max_size: Quantity,

    /// Media type of the state: the GET's Accept and the PUT's Content-Type.
    #[serde(default = "default_state_content_type")]
    #[schemars(regex(pattern = r"^[!-~]+/[!-~]+$"), length(max = 128))]
    pub content_type: String,
}

/// Scheme of the state endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StateApiScheme {
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

/// What the controller observed and did; written by server-side apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary of the policy's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The selector in `kubectl` syntax, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,

    /// When the newest checkpoint of any selected container was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_time: Option<Time>,

    /// Node a failover would restore on right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_target: Option<String>,

    /// Newest checkpoint of each protected container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["pod".into(), "container".into()]))]
    pub checkpoints: Vec<CheckpointRecord>,

    /// The most recent finished failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,

    /// Failovers in progress, one per failed pod. A failover is recorded
    /// here before anything is done about it, so a restarted controller
    /// finishes it instead of starting a second one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["podUid".into()]))]
    pub failovers: Vec<FailoverRecord>,

    /// Failed pods waiting for a failover slot (spec.failover.maxConcurrent
    /// or the controller's overall budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["podUid".into()]))]
    pub queued_failovers: Vec<QueuedFailover>,

    /// Ready, Protected and the reasons behind them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Summary of a policy's state, shown by `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; no container has a replicated checkpoint yet.
    Pending,
    /// Every selected container has a recent checkpoint on its standbys.
    Protected,
    /// Some container is not protected; the conditions say why.
    Degraded,
    /// A restore is in progress.
    FailingOver,
    /// `spec.suspend` is set.
    Suspended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Protected => "Protected",
            Self::Degraded => "Degraded",
            Self::FailingOver => "FailingOver",
            Self::Suspended => "Suspended",
        }
    }
}

/// The newest checkpoint of one container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    pub pod: String,
    pub container: String,
    /// UID of the pod the checkpoint was taken of.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    /// The container's restart count when it was checkpointed; a higher
    /// count later means the container failed.
    #[serde(default)]
    pub restart_count: i32,
    /// Controller of the pod (`ReplicaSet/counter-7d9c`), remembered so a
    /// pod that is gone can still be replaced by its owner; empty for a
    /// bare pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Node the checkpoint was taken on.
    pub node: String,
    /// Archive id: the hash of its content, `blake3-<64 hex>` (or 64 hex
    /// digits alone for an archive named by sha256).
    pub archive: String,
    pub size_bytes: i64,
    /// Time from the checkpoint request to the archive being stored.
    pub duration_ms: i64,
    pub taken_at: Time,
    /// Standby nodes holding a verified replica.
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// What happened in a failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    pub reason: FailureTrigger,
    /// The failed pod.
    pub pod: String,
    /// UID of the failed pod; identifies the failover.
    #[serde(default)]
    pub pod_uid: String,
    /// Controller of the failed pod (`ReplicaSet/counter-7d9c`); empty for a
    /// bare pod, which ferry recreates itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    pub from_node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node: Option<String>,
    /// How far the failover got; each stage is recorded before the next
    /// action.
    #[serde(default)]
    pub stage: FailoverStage,
    /// Archive restored from (the first container's); absent for a cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// What each container restores from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRestore>,
    /// Annotations the replacement pod gets (from the target agent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The RuntimeClass the replacement runs with: ferry's runtime
    /// handler restores it from the grant in its annotations, and it
    /// keeps its image. Absent: its containers run checkpoint images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// The pod that took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_pod: Option<String>,
    /// Age of that archive when the failover started (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_age: Option<String>,
    /// True when no recent enough checkpoint existed and the pod started from zero.
    #[serde(default)]
    pub cold_start: bool,
    pub started_at: Time,
    /// When the failed pod was disrupted (its deletion was requested), if
    /// it was: its owner may have replaced it from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Time>,
    /// What showed the failure, each from a source that does not share
    /// fate with what failed (node status, peer agents, the kubelet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    /// When the failed instance was known to be stopped, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fence: String,
    /// When ferry last made the owner retry creating the replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_nudged_at: Option<Time>,
    /// When ferry last asked the failed node's agent to stop the pod (its
    /// kubelet was lost, its agent was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_requested_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A detected failure waiting for a failover slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedFailover {
    pub pod: String,
    pub pod_uid: String,
    pub reason: FailureTrigger,
    /// What was observed, and which budget holds it back.
    pub message: String,
}

/// Steps of a failover, in order.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum FailoverStage {
    /// The failure is recorded and the restore target chosen.
    #[default]
    Detected,
    /// The target agent made the archives restorable (checkpoint images);
    /// the failed instance is being stopped.
    Prepared,
    /// The failed instance is known to be stopped (the API server confirmed
    /// it, or its node fenced itself) and its pod was removed; its owner
    /// (or ferry, for a bare pod) creates the replacement, which the
    /// admission webhook points at the checkpoint.
    Fenced,
    /// The replacement pod runs.
    Completed,
    /// Nothing could be restored; `message` says why.
    Failed,
}

/// The restore of one container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRestore {
    pub container: String,
    pub archive: String,
    /// Image the replacement container runs: a local checkpoint image on the
    /// target node (pulled never). Set once the target agent prepared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Schema of a byte quantity such as `2Gi` or `500M`: what `Quantity`
/// accepts, without a sign or sub-unit suffixes that make no sense for bytes.
fn byte_quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$",
        "description": "Upper bound on the bytes kept; oldest archives go first, the newest is always kept."
    })
}

/// Schema of the largest state, a byte quantity like `16Mi`.
fn state_size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE])?$",
        "description": "Largest state accepted (bytes; up to 1Gi): a larger answer fails the checkpoint, naming the limit."
    })
}

fn default_state_max_size() -> Quantity {
    Quantity("16Mi".into())
}
fn default_state_content_type() -> String {
    "application/json".into()
}
fn default_interval() -> String {
    "10s".into()
}
fn default_true() -> bool {
    true
}
fn default_standbys() -> i32 {
    1
}
fn default_keep() -> i32 {
    3
}
fn default_node_loss_grace_period() -> String {
    "20s".into()
}
fn default_unreachable_grace_period() -> String {
    "2s".into()
}
fn default_max_concurrent_failovers() -> i32 {
    5
}
fn default_max_checkpoint_age() -> String {
    "5m".into()
}
fn default_state_path() -> String {
    "/state".into()
}
fn default_state_timeout() -> String {
    "5s".into()
}
fn all_triggers() -> Vec<FailureTrigger> {
    vec![
        FailureTrigger::ContainerFailure,
        FailureTrigger::PodLoss,
        FailureTrigger::NodeLoss,
    ]
}
