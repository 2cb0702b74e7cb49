//! Runs checkpoints off the reconcile path: each due container becomes a
//! job that calls the agent of its node (which checkpoints, stores and
//! replicates), bounded overall and per node. Results are handed back to the
//! policy's next reconciliation, the only place status is written.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, mpsc};

use ferry_api::{CheckpointPolicy, CheckpointRecord};
use ferry_proto::v1 as pb;

use crate::agents::{AgentPool, status_message};
use crate::metrics::Metrics;
use crate::schedule::Target;

/// One checkpoint to take.
#[derive(Clone, Debug)]
pub struct Job {
    pub policy: ObjectRef<CheckpointPolicy>,
    pub target: Target,
    pub namespace: String,
    /// Endpoint of the agent on the target's node.
    pub endpoint: String,
    /// Standbys to replicate to: (node, endpoint).
    pub peers: Vec<(String, String)>,
    pub retention: pb::Retention,
    pub timeout: Duration,
    /// When the checkpoint was due, for the lateness metric.
    pub due: jiff::Timestamp,
}

/// Why a checkpoint did not produce a replicated archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The agent could not be reached.
    AgentUnreachable(String),
    /// The agent answered with an error (kubelet, CRIU, store).
    CheckpointFailed(String),
}

/// What a job produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub target: Target,
    pub result: Result<Done, Failure>,
}

#[derive(Clone, Debug)]
pub struct Done {
    pub record: CheckpointRecord,
    /// Standbys that did not get the replica, with why.
    pub replica_errors: Vec<(String, String)>,
}

type JobKey = (String, String, String);

impl Job {
    /// `namespace/name` of the policy, as agents group archives.
    fn policy_key(&self) -> String {
        format!("{}/{}", self.namespace, self.policy.name)
    }
}

fn key(policy: &str, target: &Target) -> JobKey {
    (
        policy.to_owned(),
        target.pod_uid.clone(),
        target.container.clone(),
    )
}

/// Limits and the hand-off of results.
#[derive(Debug)]
pub struct Checkpointer {
    pool: Arc<AgentPool>,
    metrics: Arc<Metrics>,
    overall: Arc<Semaphore>,
    per_node_limit: usize,
    per_node: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Mutex<HashSet<JobKey>>,
    results: Mutex<HashMap<ObjectRef<CheckpointPolicy>, Vec<Outcome>>>,
    wake: mpsc::UnboundedSender<ObjectRef<CheckpointPolicy>>,
}

impl Checkpointer {
    /// Returns the checkpointer and the stream of policies to reconcile
    /// because a checkpoint of theirs finished.
    pub fn new(
        pool: Arc<AgentPool>,
        metrics: Arc<Metrics>,
        max_concurrent: usize,
        per_node_limit: usize,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<ObjectRef<CheckpointPolicy>>,
    ) {
        let (wake, woken) = mpsc::unbounded_channel();
        let checkpointer = Arc::new(Self {
            pool,
            metrics,
            overall: Arc::new(Semaphore::new(max_concurrent.max(1))),
            per_node_limit: per_node_limit.max(1),
            per_node: Mutex::default(),
            in_flight: Mutex::default(),
            results: Mutex::default(),
            wake,
        });
        (checkpointer, woken)
    }

    pub fn is_in_flight(&self, policy: &str, target: &Target) -> bool {
        lock(&self.in_flight).contains(&key(policy, target))
    }

    /// Starts `job` unless the same container is already being checkpointed.
    pub fn submit(self: &Arc<Self>, job: Job) -> bool {
        if !lock(&self.in_flight).insert(key(&job.policy_key(), &job.target)) {
            return false;
        }
        let node_limit = lock(&self.per_node)
            .entry(job.target.node.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_node_limit)))
            .clone();
        let this = self.clone();
        tokio::spawn(async move {
            let (Ok(_overall), Ok(_node)) = (
                this.overall.clone().acquire_owned().await,
                node_limit.acquire_owned().await,
            ) else {
                return;
            };
            let lateness = jiff::Timestamp::now()
                .duration_since(job.due)
                .as_secs_f64()
                .max(0.0);
            this.metrics.checkpoint_lateness.observe(lateness);
            // The histogram's buckets are coarse; the log carries the exact
            // value (the scale bench computes percentiles from it).
            let lateness_ms = (lateness * 1000.0).round() as u64;
            let started = Instant::now();
            let result = this.run(&job).await;
            this.metrics.observe_checkpoint(started.elapsed(), &result);
            match &result {
                Ok(done) => tracing::info!(
                    policy = %job.policy, pod = %job.target.pod, container = %job.target.container,
                    node = %job.target.node, archive = %done.record.archive,
                    bytes = done.record.size_bytes, replicas = ?done.record.replicas,
                    millis = started.elapsed().as_millis() as u64, lateness_ms, "checkpoint taken"
                ),
                Err(failure) => tracing::warn!(
                    policy = %job.policy, pod = %job.target.pod, container = %job.target.container,
                    node = %job.target.node, lateness_ms, error = ?failure, "checkpoint failed"
                ),
            }
            lock(&this.results)
                .entry(job.policy.clone())
                .or_default()
                .push(Outcome {
                    target: job.target.clone(),
                    result,
                });
            lock(&this.in_flight).remove(&key(&job.policy_key(), &job.target));
            let _ = this.wake.send(job.policy);
        });
        true
    }

    async fn run(&self, job: &Job) -> Result<Done, Failure> {
        let mut client = self
            .pool
            .client(&job.endpoint)
            .map_err(Failure::AgentUnreachable)?;
        let request = pb::CheckpointRequest {
            policy: job.policy_key(),
            container: Some(pb::ContainerRef {
                namespace: job.namespace.clone(),
                pod: job.target.pod.clone(),
                pod_uid: job.target.pod_uid.clone(),
                container: job.target.container.clone(),
            }),
            peers: job
                .peers
                .iter()
                .map(|(node_name, endpoint)| pb::Peer {
                    node_name: node_name.clone(),
                    endpoint: endpoint.clone(),
                })
                .collect(),
            timeout_seconds: u32::try_from(job.timeout.as_secs()).unwrap_or(u32::MAX),
            retention: Some(job.retention),
        };
        let mut request = tonic::Request::new(request);
        // Replication to the standbys happens inside the call.
        request.set_timeout(job.timeout * 4);
        let response = client.checkpoint(request).await.map_err(|status| {
            let message = format!(
                "agent {} on node {}: {}",
                job.endpoint,
                job.target.node,
                status_message(&status)
            );
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                self.pool.forget(&job.endpoint);
                Failure::AgentUnreachable(message)
            } else {
                Failure::CheckpointFailed(message)
            }
        })?;
        let response = response.into_inner();
        let archive = response.archive.ok_or_else(|| {
            Failure::CheckpointFailed(format!("agent {} returned no archive", job.endpoint))
        })?;
        let taken_at = jiff::Timestamp::from_millisecond(archive.taken_at_millis)
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let mut replicas = Vec::new();
        let mut replica_errors = Vec::new();
        for outcome in response.replicas {
            if outcome.ok {
                replicas.push(outcome.node_name);
            } else {
                replica_errors.push((outcome.node_name, outcome.error));
            }
        }
        Ok(Done {
            record: CheckpointRecord {
                pod: job.target.pod.clone(),
                container: job.target.container.clone(),
                pod_uid: job.target.pod_uid.clone(),
                restart_count: job.target.restart_count,
                node: job.target.node.clone(),
                archive: archive.id,
                size_bytes: i64::try_from(archive.size_bytes).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(response.checkpoint_millis).unwrap_or(i64::MAX),
                taken_at: Time(taken_at),
                replicas,
            },
            replica_errors,
        })
    }

    /// The finished jobs of `policy` not yet in its status.
    pub fn results(&self, policy: &ObjectRef<CheckpointPolicy>) -> Vec<Outcome> {
        lock(&self.results).get(policy).cloned().unwrap_or_default()
    }

    /// Forgets the first `count` results of `policy` once its status holds them.
    pub fn consumed(&self, policy: &ObjectRef<CheckpointPolicy>, count: usize) {
        let mut results = lock(&self.results);
        if let Some(list) = results.get_mut(policy) {
            list.drain(..count.min(list.len()));
            if list.is_empty() {
                results.remove(policy);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
