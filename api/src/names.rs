//! Names of labels, annotations and finalizers that ferry reads or writes on
//! other objects. Kept in one place so controller, agent and webhook agree.

/// API group of every ferry resource.
pub const GROUP: &str = "ferry.dev";

/// Finalizer on a CheckpointPolicy: its archives are removed from every node
/// before the object goes away.
pub const POLICY_FINALIZER: &str = "ferry.dev/archives";

/// Field manager for everything the controller writes with server-side apply.
pub const CONTROLLER_FIELD_MANAGER: &str = "ferry-controller";

/// Label on pods and leases naming the CheckpointPolicy responsible for them.
pub const POLICY_LABEL: &str = "ferry.dev/policy";

/// Pod annotation that CRI-O reads to restore a container from a checkpoint image.
pub const CRIO_CHECKPOINT_ANNOTATION: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";

/// OCI image annotation that containerd reads to restore a container from a
/// checkpoint image.
pub const CONTAINERD_CHECKPOINT_ANNOTATION: &str = "org.criu.checkpoint.container.name";

/// Pod annotation the admission webhook sets on a replacement pod: the UID of
/// the failed pod whose failover it carries out.
pub const FAILOVER_ANNOTATION: &str = "ferry.dev/failover-of";

/// Pod annotation naming the archive each restored container starts from
/// (`container=archive,...`).
pub const RESTORED_FROM_ANNOTATION: &str = "ferry.dev/restored-from";

/// Pod annotation naming the one-time grant ferry's runtime handler restores
/// the pod's containers from (ferry-runc's `GRANT_ANNOTATION`).
pub const RESTORE_GRANT_ANNOTATION: &str = "ferry.dev/restore-grant";

/// Prefix of the Lease each node agent renews (`ferry-agent-<node>`).
pub const AGENT_LEASE_PREFIX: &str = "ferry-agent-";

/// Lease annotation with the agent's gRPC endpoint (`host:port`).
pub const AGENT_ENDPOINT_ANNOTATION: &str = "ferry.dev/grpc-endpoint";

/// Lease annotation with the agent's node facts (JSON).
pub const AGENT_NODE_INFO_ANNOTATION: &str = "ferry.dev/node-info";

/// Label on every agent Lease, for the controller's watch.
pub const AGENT_COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "ferry-agent");

/// Label on an agent Lease naming its node.
pub const AGENT_NODE_LABEL: &str = "ferry.dev/node";

/// Scheduling gate the admission webhook puts on a replacement pod: it is
/// not scheduled until the controller knows the failed instance stopped,
/// so two copies never run at once.
pub const RESTORE_GATE: &str = "ferry.dev/restore";

/// Readiness gate of a StateApi replacement: ferry sets its condition once
/// the pod received its state (PUT), so it takes no traffic before.
pub const STATE_RESTORED_CONDITION: &str = "ferry.dev/state-restored";

/// NoSchedule taint the controller puts on a node whose pods it fails over
/// for node loss, so nothing new lands there while the failover runs; it is
/// removed once the node is Ready again.
pub const FAILED_NODE_TAINT: &str = "ferry.dev/node-lost";

/// Kubernetes' non-graceful node shutdown taint: an administrator's (or a
/// remediation system's) word that the node's workloads are stopped.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Annotation ferry sets on a pod's owner (ReplicaSet, StatefulSet) to make
/// it retry creating a replacement at once; its value is when.
pub const NUDGED_ANNOTATION: &str = "ferry.dev/nudged-at";

/// Repository of every checkpoint image a restore runs:
/// `<repository>/<namespace>/<policy>/<container>:<grant>`. Admission
/// (the chart's ValidatingAdmissionPolicies) lets a pod run one only in that
/// namespace, and only as the replacement of a pending failover of that
/// policy; the tag is a random grant, so names cannot be guessed.
pub const CHECKPOINT_IMAGE_REPOSITORY: &str = "localhost/ferry/checkpoint";

/// Label on the warm standby pods the controller keeps on standby nodes
/// (value `"true"`); their controlling owner is the CheckpointPolicy.
pub const WARM_STANDBY_LABEL: &str = "ferry.dev/warm-standby";

/// Annotation on a warm standby pod: a fingerprint of what it was built
/// from, so a changed spec replaces it.
pub const WARM_STANDBY_SPEC_ANNOTATION: &str = "ferry.dev/warm-standby-spec";
