//! The `CheckpointPolicy` custom resource (`ferry.dev/v1alpha1`) and the
//! names ferry puts on other objects.
//!
//! The schema carries every rule the API server can check by itself
//! (patterns, ranges, list types and CEL rules), so a bad spec is refused at
//! `kubectl apply` time with a message naming the field, instead of surfacing
//! later as a controller error.

pub mod agent;
mod conditions;
mod crd;
mod duration;
pub mod names;
mod policy;
mod tolerations;

pub use conditions::{ConditionStatus, set_condition};
pub use crd::{CRD_FILE, CRD_NAME, crd_yaml};
pub use duration::parse_duration;
pub use policy::*;
pub use tolerations::toleration_problems;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{field}: {value:?} is not a duration ({reason}); use Go syntax such as 10s, 1m30s or 2h"
    )]
    InvalidDuration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{field}: {value:?} is negative; durations must be positive")]
    NegativeDuration { field: &'static str, value: String },
    #[error("serializing the CustomResourceDefinition to YAML: {0}")]
    CrdYaml(#[from] serde_yaml::Error),
}
