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
