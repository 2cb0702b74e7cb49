//! Prometheus metrics of the agent.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or a short failure reason (`kubelet`, `store_full`, …).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
    /// `ok` or a short failure reason (`unreachable`, `corrupt`, …).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub peer: String,
    /// `agent` (gRPC health check) or `kubelet` (TLS handshake).
    pub target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeletionLabels {
    /// `retention`, `sweep`, `gone_pod`, `requested`, `policy_deleted`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The gRPC method, e.g. `Checkpoint`.
    pub method: String,
    /// The caller's identity, e.g. `agent/ferry-b` or `controller`.
    pub caller: String,
}

/// The agent's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub checkpoints: Family<ResultLabels, Counter>,
    pub checkpoint_duration: Histogram,
    pub checkpoint_bytes: Counter,
    pub replications: Family<PeerLabels, Counter>,
    pub replication_attempts_failed: Family<PeerLabels, Counter>,
    pub replication_bytes: Counter,
    pub replication_duration: Histogram,
    pub received: Family<ResultLabels, Counter>,
    pub received_bytes: Counter,
    pub stored_archives: Gauge,
    pub stored_bytes: Gauge,
    pub archives_deleted: Family<DeletionLabels, Counter>,
    pub incoming_swept: Counter,
    pub peer_probe_failures: Family<ProbeLabels, Counter>,
    pub peer_probe_duration: Family<TargetLabels, Histogram>,
    pub peers_unreachable: Gauge,
    pub lease_writes: Family<ResultLabels, Counter>,
    pub api_silence: Gauge<f64, AtomicU64>,
    pub peer_silence: Gauge<f64, AtomicU64>,
    pub fence_actions: Counter,
    pub fenced_processes: Counter,
    pub rpc_refused: Family<RefusedLabels, Counter>,
    pub tls_refused: Counter,
    pub certificate_expiry: Gauge,
    pub certificate_renewals: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn count_deleted(&self, reason: &'static str, archives: usize) {
        self.archives_deleted
            .get_or_create(&DeletionLabels { reason })
            .inc_by(archives as u64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_agent");
        let metrics = Self {
            checkpoints: Family::default(),
            // 10 ms to ~160 s.
            checkpoint_duration: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            checkpoint_bytes: Counter::default(),
            replications: Family::default(),
            replication_attempts_failed: Family::default(),
            replication_bytes: Counter::default(),
            replication_duration: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            received: Family::default(),
            received_bytes: Counter::default(),
            stored_archives: Gauge::default(),
            stored_bytes: Gauge::default(),
            archives_deleted: Family::default(),
            incoming_swept: Counter::default(),
            peer_probe_failures: Family::default(),
            // 0.5 ms to ~4 s.
            peer_probe_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            peers_unreachable: Gauge::default(),
            lease_writes: Family::default(),
            api_silence: Gauge::default(),
            peer_silence: Gauge::default(),
            fence_actions: Counter::default(),
            fenced_processes: Counter::default(),
            rpc_refused: Family::default(),
            tls_refused: Counter::default(),
            certificate_expiry: Gauge::default(),
            certificate_renewals: Family::default(),
            registry: Arc::default(),
        };
        registry.register(
            "checkpoints",
            "Checkpoints taken by result",
            metrics.checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time from the checkpoint request to the archive being stored",
            metrics.checkpoint_duration.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Bytes of archives checkpointed",
            metrics.checkpoint_bytes.clone(),
        );
        registry.register(
            "replications",
            "Replica transfers to peers by result",
            metrics.replications.clone(),
        );
        registry.register(
            "replication_attempts_failed",
            "Failed attempts of replica transfers (each retried until the attempts run out) by reason",
            metrics.replication_attempts_failed.clone(),
        );
        registry.register(
            "replication_bytes",
            "Bytes sent to peers in verified replicas",
            metrics.replication_bytes.clone(),
        );
        registry.register(
            "replication_duration_seconds",
            "Time to replicate one archive to one peer, retries included",
            metrics.replication_duration.clone(),
        );
        registry.register(
            "replicas_received",
            "Replicas received from peers by result",
            metrics.received.clone(),
        );
        registry.register(
            "replica_received_bytes",
            "Bytes received from peers",
            metrics.received_bytes.clone(),
        );
        registry.register(
            "stored_archives",
            "Archives in the store",
            metrics.stored_archives.clone(),
        );
        registry.register(
            "stored_bytes",
            "Bytes of archives in the store",
            metrics.stored_bytes.clone(),
        );
        registry.register(
            "archives_deleted",
            "Archives deleted from the store by reason",
            metrics.archives_deleted.clone(),
        );
        registry.register(
            "incoming_swept",
            "Partial replicas removed after no transfer touched them for too long",
            metrics.incoming_swept.clone(),
        );
        registry.register(
            "peer_probe_failures",
            "Failed probes of peer nodes by peer and target (agent health check, kubelet TLS handshake)",
            metrics.peer_probe_failures.clone(),
        );
        registry.register(
            "peer_probe_duration_seconds",
            "Time a successful peer probe took, by target",
            metrics.peer_probe_duration.clone(),
        );
        registry.register(
            "peers_unreachable",
            "Peer nodes whose agent or kubelet currently fails its probe",
            metrics.peers_unreachable.clone(),
        );
        registry.register(
            "lease_writes",
            "Writes of this agent's Lease by result",
            metrics.lease_writes.clone(),
        );
        registry.register(
            "api_silence_seconds",
            "Time since the API server last answered this agent",
            metrics.api_silence.clone(),
        );
        registry.register(
            "peer_silence_seconds",
            "Time since any peer agent last answered this agent's health check",
            metrics.peer_silence.clone(),
        );
        registry.register(
            "fence_actions",
            "Times this agent, cut off from the API server and every peer, stopped its protected containers",
            metrics.fence_actions.clone(),
        );
        registry.register(
            "fenced_processes",
            "Processes of protected containers killed by fencing",
            metrics.fenced_processes.clone(),
        );
        registry.register(
            "rpc_refused",
            "Calls refused with PERMISSION_DENIED, by method and caller identity",
            metrics.rpc_refused.clone(),
        );
        registry.register(
            "tls_refused",
            "Connections turned away at the TLS handshake (no certificate, another CA, expired, no ferry identity)",
            metrics.tls_refused.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time when the agent's current certificate expires",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Certificate renewals, by result",
            metrics.certificate_renewals.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }
}

impl Metrics {
    /// One attempt of a replica transfer failed for `reason`; it is retried
    /// until the attempts run out.
    pub fn replication_attempt_failed(&self, peer: &str, reason: &'static str) {
        self.replication_attempts_failed
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
                result: reason,
            })
            .inc();
    }

    pub fn replication_finished(
        &self,
        peer: &str,
        bytes: u64,
        elapsed: Duration,
        failure: Option<&'static str>,
    ) {
        let result = failure.unwrap_or("ok");
        self.replications
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
                result,
            })
            .inc();
        if failure.is_none() {
            self.replication_bytes.inc_by(bytes);
            self.replication_duration.observe(elapsed.as_secs_f64());
        }
    }
}
