//! Prometheus metrics of the controller.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckpointLabels {
    /// `ok`, `agent_unreachable`, `checkpoint_failed` or `replication_incomplete`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// `ContainerFailure`, `PodLoss` or `NodeLoss`.
    pub reason: &'static str,
    /// `restored`, `cold_start` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name`.
    pub policy: String,
}

/// The controller's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciliations: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub status_writes: Counter,
    pub checkpoints: Family<CheckpointLabels, Counter>,
    pub checkpoint_duration: Histogram,
    pub checkpoint_lateness: Histogram,
    pub checkpoint_age: Family<PolicyLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub failovers: Family<FailoverLabels, Counter>,
    pub failover_duration: Histogram,
    /// Failover decisions not taken because the view was incomplete.
    pub failover_decisions_deferred: Family<ErrorLabels, Counter>,
    /// 1 while failovers may be decided (caches synced, agents watched
    /// for a Lease period), else 0.
    pub view_complete: Gauge,
    /// Failed watches of pods, nodes and agent Leases, by resource.
    pub watch_errors: Family<ErrorLabels, Counter>,
    /// Failovers in progress and failed pods waiting for a slot.
    pub failovers_running: Gauge,
    pub failovers_queued: Family<PolicyLabels, Gauge>,
    /// Nodes that look wrong without being lost (agent outage, NotReady
    /// within its grace period), by policy.
    pub suspect_nodes: Family<PolicyLabels, Gauge>,
    pub webhook: crate::webhook::WebhookMetrics,
    /// Agent certificate requests answered, by outcome.
    pub certificate_requests: Family<ResultLabels, Counter>,
    /// Renewals of the controller's own certificate, by result.
    pub certificate_renewals: Family<ResultLabels, Counter>,
    /// Unix time when the controller's certificate expires.
    pub certificate_expiry: Gauge,
    /// The history database's rows, connection and buffer.
    pub history: ferry_history::HistoryMetrics,
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
        let checkpoints = Family::<CheckpointLabels, Counter>::default();
        // 10 ms to ~160 s.
        let checkpoint_duration = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        // 1 ms to ~65 s.
        let checkpoint_lateness = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let checkpoint_age = Family::default();
        let failovers = Family::<FailoverLabels, Counter>::default();
        // 100 ms to ~27 min.
        let failover_duration = Histogram::new(exponential_buckets(0.1, 2.0, 15));
        registry.register(
            "checkpoints",
            "Checkpoint jobs by result (a checkpoint missing a standby replica is replication_incomplete)",
            checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time from asking an agent for a checkpoint to it being stored and replicated",
            checkpoint_duration.clone(),
        );
        registry.register(
            "checkpoint_lateness_seconds",
            "How long after its scheduled time a checkpoint started",
            checkpoint_lateness.clone(),
        );
        registry.register(
            "checkpoint_age_seconds",
            "Age of the oldest newest-checkpoint among a policy's containers",
            checkpoint_age.clone(),
        );
        registry.register(
            "failovers",
            "Failovers by trigger and result",
            failovers.clone(),
        );
        registry.register(
            "failover_duration_seconds",
            "Time from detecting a failure to the replacement pod running",
            failover_duration.clone(),
        );
        let failover_decisions_deferred = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "failover_decisions_deferred",
            "Reconciliations that decided no failover because the view was incomplete, by reason",
            failover_decisions_deferred.clone(),
        );
        let watch_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Failed watches of pods, nodes and agent Leases, by resource (reason); each closes the view for a Lease period",
            watch_errors.clone(),
        );
        let view_complete = Gauge::default();
        registry.register(
            "view_complete",
            "1 once caches synced and agents were watched for a Lease period, so failovers may be decided",
            view_complete.clone(),
        );
        let failovers_running = Gauge::default();
        registry.register(
            "failovers_running",
            "Failovers in progress across all policies",
            failovers_running.clone(),
        );
        let failovers_queued = Family::default();
        registry.register(
            "failovers_queued",
            "Failed pods waiting for a failover slot",
            failovers_queued.clone(),
        );
        let suspect_nodes = Family::default();
        registry.register(
            "suspect_nodes",
            "Nodes of a policy's pods that look wrong without counting as lost",
            suspect_nodes.clone(),
        );
        let webhook = crate::webhook::register_metrics(&mut registry);
        let certificate_requests = Family::default();
        registry.register(
            "certificate_requests",
            "Agent CertificateSigningRequests answered (signed, denied, error)",
            certificate_requests.clone(),
        );
        let certificate_renewals = Family::default();
        registry.register(
            "certificate_renewals",
            "Renewals of the controller's own certificate, by result",
            certificate_renewals.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time when the controller's current certificate expires",
            certificate_expiry.clone(),
        );
        let history = ferry_history::HistoryMetrics::default();
        history.register(&mut registry);
        Self {
            history,
            certificate_requests,
            certificate_renewals,
            certificate_expiry,
            failover_decisions_deferred,
            view_complete,
            watch_errors,
            failovers_running,
            failovers_queued,
            suspect_nodes,
            webhook,
            registry: Arc::new(registry),
            checkpoints,
            checkpoint_duration,
            checkpoint_lateness,
            checkpoint_age,
            failovers,
            failover_duration,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            status_writes,
        }
    }
}

impl Metrics {
    pub fn observe_checkpoint(
        &self,
        elapsed: Duration,
        result: &Result<crate::checkpointer::Done, crate::checkpointer::Failure>,
    ) {
        use crate::checkpointer::Failure;
        self.checkpoint_duration.observe(elapsed.as_secs_f64());
        let result = match result {
            Ok(done) if done.replica_errors.is_empty() => "ok",
            Ok(_) => "replication_incomplete",
            Err(Failure::AgentUnreachable(_)) => "agent_unreachable",
            Err(Failure::CheckpointFailed(_)) => "checkpoint_failed",
        };
        self.checkpoints
            .get_or_create(&CheckpointLabels { result })
            .inc();
    }

    pub fn certificate_requests(&self, result: &'static str) {
        self.certificate_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn certificate_renewed(
        &self,
        facts: &ferry_proto::tls::CertificateFacts,
        result: &'static str,
    ) {
        self.certificate_renewals
            .get_or_create(&ResultLabels { result })
            .inc();
        self.certificate_expiry.set(facts.expires_unix_seconds());
    }

    pub fn observe(&self, elapsed: Duration, ok: bool) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.reconciliations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
