//! Prometheus metrics of the controller.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Short, bounded name of what failed (`kube`, `invalid_object`, …).
    pub reason: &'static str,
}

/// The controller's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciliations: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub status_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_controller");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        // 1 ms to ~16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let status_writes = Counter::default();
        registry.register(
            "reconciliations",
            "CheckpointPolicy reconciliations by result",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed CheckpointPolicy reconciliations by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one CheckpointPolicy reconciliation took",
            reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "CheckpointPolicy status patches sent (only when the status changed)",
            status_writes.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            status_writes,
        }
    }
}

impl Metrics {
    pub fn observe(&self, elapsed: Duration, ok: bool) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.reconciliations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
