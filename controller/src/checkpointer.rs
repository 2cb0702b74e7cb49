//! Runs checkpoints off the reconcile path: each due container becomes a
//! job that calls the agent of its node (which checkpoints, stores and
//! replicates), bounded overall and per node. Results are handed back to the
//! policy's next reconciliation, the only place status is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, mpsc};

use ferry_api::{CheckpointPolicy, CheckpointRecord};
use ferry_proto::v1 as pb;

use crate::agents::{AgentPool, status_message};
use crate::announcements::{Announced, AnnouncementKey};
use crate::metrics::Metrics;
use crate::schedule::Target;

/// How long a standby accepts a container's replicas after an announcement:
/// longer than any checkpoint with its replication takes, so an announcement
/// made before a checkpoint still holds when its replicas arrive.
const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(900);

/// Announcements are repeated after this long (well before they run out).
const ANNOUNCEMENT_REFRESH: Duration = Duration::from_secs(300);

/// Bound on one announcement call.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The policy's interval: the policy is woken when the next one is due.
    pub interval: Duration,
    /// Strategy StateApi: read the application's state instead of a CRIU
    /// checkpoint.
    pub state_api: Option<pb::StateApi>,
    /// The hash the archive is named by ([`crate::agents::content_hash_for`]).
    pub content_hash: pb::ContentHash,
}

/// Whether a due container may be checkpointed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Being checkpointed, or checkpointed already by a job the caller's
    /// status does not show yet. The job wakes the policy when it ends and
    /// when the next checkpoint is due.
    Busy,
    /// The last attempt failed; try again after this long.
    RetryIn(Duration),
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
    /// Increases with every result, so "written through here" is exact
    /// even when several status writes of one policy overlap.
    pub seq: u64,
    pub target: Target,
    pub result: Result<Done, Failure>,
}

#[derive(Clone, Debug)]
pub struct Done {
    pub record: CheckpointRecord,
    /// Standbys that did not get the replica, with why.
    pub replica_errors: Vec<(String, String)>,
    /// Each standby's transfer, as the agent reported it.
    pub replications: Vec<pb::ReplicaOutcome>,
    /// CRIU's own account of the dump, when the archive had one.
    pub criu_stats: Option<pb::CriuDumpStats>,
    /// Strategy StateApi: the GET that read the state.
    pub state_api_call: Option<pb::StateApiCall>,
}

type JobKey = (String, String, String);

/// A failed checkpoint is tried again no sooner than this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Slots of containers not checkpointed for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The newest job of one container.
#[derive(Clone, Debug)]
struct Slot {
    /// When that job was due.
    due: jiff::Timestamp,
    state: SlotState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SlotState {
    Running,
    /// With the `takenAt` of the archive it produced.
    Succeeded {
        taken_at: jiff::Timestamp,
    },
    Failed {
        at: jiff::Timestamp,
        failure: Failure,
    },
}

#[derive(Debug, Default)]
struct Slots {
    by_key: HashMap<JobKey, Slot>,
    /// Size at which old slots are next forgotten.
    prune_at: usize,
}

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
    /// Remembered across reconciliations because the policy a
    /// reconciliation reads may predate the status write that recorded the
    /// last checkpoint (the watch lags the write): without this, a due time
    /// computed from the older status would checkpoint the container twice.
    slots: Mutex<Slots>,
    /// When each container's pod was first seen (`policy`, pod UID), to
    /// spread first checkpoints over one interval.
    first_seen: Mutex<HashMap<(String, String), jiff::Timestamp>>,
    /// Policies being deleted: no new job starts for them.
    closing: Mutex<std::collections::HashSet<String>>,
    results: Mutex<HashMap<ObjectRef<CheckpointPolicy>, Vec<Outcome>>>,
    next_seq: std::sync::atomic::AtomicU64,
    wake: mpsc::UnboundedSender<ObjectRef<CheckpointPolicy>>,
    /// Which standbys expect which containers' replicas.
    announced: Announced,
    /// Where every checkpoint and replication is recorded, if anywhere.
    history: Option<ferry_history::Recorder>,
}

impl Checkpointer {
    /// Returns the checkpointer and the stream of policies to reconcile
    /// because a checkpoint of theirs finished.
    pub fn new(
        pool: Arc<AgentPool>,
        metrics: Arc<Metrics>,
        max_concurrent: usize,
        per_node_limit: usize,
        history: Option<ferry_history::Recorder>,
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
            slots: Mutex::default(),
            first_seen: Mutex::default(),
            closing: Mutex::default(),
            results: Mutex::default(),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            wake,
            announced: Announced::default(),
            history,
        });
        (checkpointer, woken)
    }

    /// Whether `target` of the policy `policy_key`, due at `due`, may be
    /// checkpointed now.
    pub fn admission(&self, policy_key: &str, target: &Target, due: jiff::Timestamp) -> Admission {
        let slots = lock(&self.slots);
        let Some(slot) = slots.by_key.get(&key(policy_key, target)) else {
            return Admission::Go;
        };
        match slot.state {
            SlotState::Running => Admission::Busy,
            SlotState::Succeeded { .. } if due <= slot.due => Admission::Busy,
            SlotState::Failed { at, .. } if due <= slot.due => {
                let since: Duration = at
                    .duration_until(jiff::Timestamp::now())
                    .try_into()
                    .unwrap_or_default();
                match RETRY_AFTER_FAILURE.checked_sub(since) {
                    Some(wait) if !wait.is_zero() => Admission::RetryIn(wait),
                    _ => Admission::Go,
                }
            }
            SlotState::Succeeded { .. } | SlotState::Failed { .. } => Admission::Go,
        }
    }

    /// When the container is next due, if this controller took its last
    /// checkpoint: one interval after the time that one was due, so the
    /// time a checkpoint takes does not stretch the period (never before
    /// its archive was taken). The slot, not status, is the truth here: the
    /// status a reconciliation reads may predate the last write.
    /// When `target` is next due at `now`: from its slot when this
    /// process checkpointed it, else from its last record, else spread over
    /// one interval from when its pod was first seen. The one owner of the
    /// due-time state; `now` is an input, so it is testable.
    pub fn due(
        &self,
        policy_key: &str,
        target: &Target,
        last: Option<&ferry_api::CheckpointRecord>,
        interval: Duration,
        now: jiff::Timestamp,
    ) -> jiff::Timestamp {
        if let Some(due) = self.next_due(policy_key, target, interval) {
            return due;
        }
        let first_seen = *lock(&self.first_seen)
            .entry((policy_key.to_owned(), target.pod_uid.clone()))
            .or_insert(now);
        crate::schedule::due_at(target, last, interval, first_seen)
    }

    /// Forgets a deleted policy's first-seen times, and lets a policy of
    /// the same name start afresh.
    pub fn forget_policy(&self, policy_key: &str) {
        lock(&self.first_seen).retain(|(p, _), _| p != policy_key);
        lock(&self.closing).remove(policy_key);
    }

    /// Starts no new job for the policy and waits (at most `limit`) until
    /// its running jobs ended, so deleting its archives afterwards leaves
    /// none behind that a job stored a moment later. Returns whether they
    /// all ended.
    pub async fn drain(&self, policy_key: &str, limit: Duration) -> bool {
        lock(&self.closing).insert(policy_key.to_owned());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let running = lock(&self.slots)
                .by_key
                .iter()
                .any(|(key, slot)| key.0 == policy_key && slot.state == SlotState::Running);
            if !running {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn next_due(
        &self,
        policy_key: &str,
        target: &Target,
        interval: Duration,
    ) -> Option<jiff::Timestamp> {
        let slots = lock(&self.slots);
        let slot = slots.by_key.get(&key(policy_key, target))?;
        match slot.state {
            SlotState::Succeeded { taken_at } => next_after(slot.due, taken_at, interval),
            _ => None,
        }
    }

    /// Why the last checkpoint of `target` failed, until one succeeds: the
    /// policy stays Degraded for as long, not just in the reconciliation
    /// that saw the failure.
    pub fn failing(&self, policy_key: &str, target: &Target) -> Option<Failure> {
        match &lock(&self.slots)
            .by_key
            .get(&key(policy_key, target))?
            .state
        {
            SlotState::Failed { failure, .. } => Some(failure.clone()),
            _ => None,
        }
    }

    /// Starts `job` if [`Self::admission`] allows it.
    pub fn submit(self: &Arc<Self>, job: Job) -> bool {
        let key = key(&job.policy_key(), &job.target);
        if lock(&self.closing).contains(&key.0) {
            return false;
        }
        if self.admission(&key.0, &job.target, job.due) != Admission::Go {
            return false;
        }
        let now = jiff::Timestamp::now();
        let first = {
            let mut slots = lock(&self.slots);
            let previous = slots.by_key.insert(
                key.clone(),
                Slot {
                    due: job.due,
                    state: SlotState::Running,
                },
            );
            if slots.by_key.len() >= slots.prune_at {
                let horizon = now - FORGET_AFTER;
                slots
                    .by_key
                    .retain(|_, slot| slot.state == SlotState::Running || slot.due > horizon);
                slots.prune_at = (slots.by_key.len() * 2).max(1024);
            }
            previous.is_none()
        };
        let node_limit = lock(&self.per_node)
            .entry(job.target.node.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_node_limit)))
            .clone();
        let this = self.clone();
        let submitted = Instant::now();
        tokio::spawn(async move {
            let (Ok(overall_permit), Ok(node_permit)) = (
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
            // value (the scale bench computes percentiles from it), and how
            // much of it was spent waiting for a free slot.
            let lateness_ms = (lateness * 1000.0).round() as u64;
            let queued_ms = submitted.elapsed().as_millis() as u64;
            let started = Instant::now();
            let result = this.run(&job).await;
            drop((overall_permit, node_permit));
            this.metrics.observe_checkpoint(started.elapsed(), &result);
            if let Some(history) = &this.history {
                let strategy = if job.state_api.is_some() {
                    "StateApi"
                } else {
                    "Checkpoint"
                };
                let rows = crate::history::checkpoint_rows(
                    &job,
                    strategy,
                    &result,
                    started.elapsed(),
                    std::time::SystemTime::now(),
                );
                rows.into_iter().for_each(|row| history.record(row));
            }
            match &result {
                Ok(done) => tracing::info!(
                    policy = %job.policy, pod = %job.target.pod, container = %job.target.container,
                    node = %job.target.node, archive = %done.record.archive,
                    bytes = done.record.size_bytes, replicas = ?done.record.replicas,
                    millis = started.elapsed().as_millis() as u64, lateness_ms, queued_ms,
                    "checkpoint taken"
                ),
                Err(failure) => tracing::warn!(
                    policy = %job.policy, pod = %job.target.pod, container = %job.target.container,
                    node = %job.target.node, lateness_ms, queued_ms, error = ?failure,
                    "checkpoint failed"
                ),
            }
            let (state, next_due) = match &result {
                Ok(done) => {
                    let taken_at = done.record.taken_at.0;
                    (
                        SlotState::Succeeded { taken_at },
                        next_after(job.due, taken_at, job.interval),
                    )
                }
                Err(failure) => (
                    SlotState::Failed {
                        at: jiff::Timestamp::now(),
                        failure: failure.clone(),
                    },
                    None,
                ),
            };
            let failed = result.is_err();
            lock(&this.results)
                .entry(job.policy.clone())
                .or_default()
                .push(Outcome {
                    seq: this
                        .next_seq
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    target: job.target.clone(),
                    result,
                });
            if let Some(slot) = lock(&this.slots).by_key.get_mut(&key) {
                slot.state = state;
            }
            // A failure or a container's first checkpoint is reported at
            // once; otherwise the policy is next looked at when this
            // container is due again (status progress is folded anyway).
            if failed || first {
                let _ = this.wake.send(job.policy.clone());
            }
            if let Some(next_due) = next_due {
                let wait: Duration = jiff::Timestamp::now()
                    .duration_until(next_due)
                    .try_into()
                    .unwrap_or_default();
                tokio::time::sleep(wait).await;
                let _ = this.wake.send(job.policy);
            }
        });
        true
    }

    fn announcement(job: &Job, standby: &str) -> AnnouncementKey {
        AnnouncementKey {
            standby: standby.to_owned(),
            source: job.target.node.clone(),
            policy: job.policy_key(),
            pod_uid: job.target.pod_uid.clone(),
            container: job.target.container.clone(),
        }
    }

    /// Tells each standby to accept this container's archives from the
    /// target's node (agents refuse replicas nobody announced), unless it
    /// was told recently. A standby that misses the announcement refuses the
    /// replica, and the checkpoint's outcome for it says so.
    async fn announce_replicas(&self, job: &Job, container: &pb::ContainerRef) {
        let now = Instant::now();
        let due = job.peers.iter().filter(|(node, _)| {
            self.announced
                .due(&Self::announcement(job, node), ANNOUNCEMENT_REFRESH, now)
        });
        let calls = due.map(|(node, endpoint)| async move {
            let mut request = tonic::Request::new(pb::ExpectReplicasRequest {
                source_node: job.target.node.clone(),
                policy: job.policy_key(),
                container: Some(container.clone()),
                ttl_seconds: u32::try_from(ANNOUNCEMENT_TTL.as_secs()).unwrap_or(u32::MAX),
            });
            request.set_timeout(ANNOUNCE_TIMEOUT);
            let result = match self.pool.client(node, endpoint) {
                Ok(mut client) => client
                    .expect_replicas(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| status_message(&s)),
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => self.announced.record(
                    Self::announcement(job, node),
                    ANNOUNCEMENT_TTL,
                    Instant::now(),
                ),
                Err(err) => {
                    tracing::debug!(node, error = %err, "announcing replicas to a standby failed");
                }
            }
        });
        futures::future::join_all(calls).await;
    }

    async fn run(&self, job: &Job) -> Result<Done, Failure> {
        let mut client = self
            .pool
            .client(&job.target.node, &job.endpoint)
            .map_err(Failure::AgentUnreachable)?;
        let container = pb::ContainerRef {
            namespace: job.namespace.clone(),
            pod: job.target.pod.clone(),
            pod_uid: job.target.pod_uid.clone(),
            container: job.target.container.clone(),
        };
        self.announce_replicas(job, &container).await;
        let request = pb::CheckpointRequest {
            policy: job.policy_key(),
            container: Some(container),
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
            state_api: job.state_api.clone(),
            content_hash: job.content_hash.into(),
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
        for outcome in &response.replicas {
            if outcome.ok {
                replicas.push(outcome.node_name.clone());
            } else {
                if outcome.error.contains("announced no replicas") {
                    self.announced
                        .forget(&Self::announcement(job, &outcome.node_name));
                }
                replica_errors.push((outcome.node_name.clone(), outcome.error.clone()));
            }
        }
        Ok(Done {
            record: CheckpointRecord {
                pod: job.target.pod.clone(),
                container: job.target.container.clone(),
                pod_uid: job.target.pod_uid.clone(),
                restart_count: job.target.restart_count,
                owner: job.target.owner.clone(),
                node: job.target.node.clone(),
                archive: archive.id,
                size_bytes: i64::try_from(archive.size_bytes).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(response.checkpoint_millis).unwrap_or(i64::MAX),
                taken_at: Time(taken_at),
                replicas,
            },
            replica_errors,
            replications: response.replicas,
            criu_stats: response.criu_stats,
            state_api_call: response.state_api_call,
        })
    }

    /// The finished jobs of `policy` not yet in its status.
    pub fn results(&self, policy: &ObjectRef<CheckpointPolicy>) -> Vec<Outcome> {
        lock(&self.results).get(policy).cloned().unwrap_or_default()
    }

    /// Forgets the failures of `policy` up to `through` (an
    /// [`Outcome::seq`]) once a status write reported them.
    pub fn failures_written(&self, policy: &ObjectRef<CheckpointPolicy>, through: Option<u64>) {
        let Some(through) = through else {
            return;
        };
        self.forget(policy, |outcome| {
            outcome.result.is_err() && outcome.seq <= through
        });
    }

    /// Forgets the checkpoints of `policy` that `status` (the policy as the
    /// cache has it now) shows, or newer ones of the same container. Kept
    /// until then: a reconciliation may read a policy older than the last
    /// status write, and writing a status without them would drop their
    /// records.
    pub fn checkpoints_seen(
        &self,
        policy: &ObjectRef<CheckpointPolicy>,
        status: Option<&ferry_api::CheckpointPolicyStatus>,
    ) {
        let horizon = jiff::Timestamp::now() - FORGET_AFTER;
        self.forget(policy, |outcome| {
            let Ok(done) = &outcome.result else {
                return false;
            };
            let taken = done.record.taken_at.0;
            taken < horizon
                || status.is_some_and(|status| {
                    status.checkpoints.iter().any(|r| {
                        r.pod_uid == done.record.pod_uid
                            && r.container == done.record.container
                            // Status keeps whole seconds (metav1.Time).
                            && r.taken_at.0.as_second() >= taken.as_second()
                    })
                })
        });
    }

    fn forget(&self, policy: &ObjectRef<CheckpointPolicy>, done: impl Fn(&Outcome) -> bool) {
        let mut results = lock(&self.results);
        if let Some(list) = results.get_mut(policy) {
            list.retain(|outcome| !done(outcome));
            if list.is_empty() {
                results.remove(policy);
            }
        }
    }
}

/// One interval after `due`, but not before `taken_at`.
fn next_after(
    due: jiff::Timestamp,
    taken_at: jiff::Timestamp,
    interval: Duration,
) -> Option<jiff::Timestamp> {
    due.checked_add(interval)
        .ok()
        .map(|next| next.max(taken_at))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            pod: "p".into(),
            pod_uid: "u1".into(),
            node: "a".into(),
            container: "app".into(),
            restart_count: 0,
            healthy: true,
            owner: String::new(),
        }
    }

    fn job(due: jiff::Timestamp) -> Job {
        Job {
            policy: ObjectRef::new("policy").within("ns"),
            target: target(),
            namespace: "ns".into(),
            // Nothing listens there: the job fails fast.
            endpoint: "127.0.0.1:1".into(),
            peers: Vec::new(),
            retention: pb::Retention::default(),
            timeout: Duration::from_secs(1),
            due,
            interval: Duration::from_secs(10),
            state_api: None,
            content_hash: pb::ContentHash::Blake3,
        }
    }

    #[tokio::test]
    async fn a_container_is_not_checkpointed_twice_for_one_due_time() {
        let pool = Arc::new(AgentPool::new(None, Duration::from_millis(200)));
        let (checkpointer, mut woken) =
            Checkpointer::new(pool, Arc::new(Metrics::default()), 4, 2, None);
        let due = jiff::Timestamp::now();
        assert_eq!(
            checkpointer.admission("ns/policy", &target(), due),
            Admission::Go
        );
        assert!(checkpointer.submit(job(due)));
        // Running: a reconciliation reading an older status must not start
        // it again.
        assert!(!checkpointer.submit(job(due)));

        // The agent is unreachable: the failure wakes the policy at once.
        let woken_policy = tokio::time::timeout(Duration::from_secs(10), woken.recv())
            .await
            .expect("the failed job wakes its policy");
        assert_eq!(woken_policy, Some(ObjectRef::new("policy").within("ns")));
        let outcomes = checkpointer.results(&ObjectRef::new("policy").within("ns"));
        assert!(
            matches!(outcomes[0].result, Err(Failure::AgentUnreachable(_))),
            "{outcomes:?}"
        );
        // Retried only after a pause, unless a later due time comes.
        assert!(matches!(
            checkpointer.admission("ns/policy", &target(), due),
            Admission::RetryIn(wait) if wait <= RETRY_AFTER_FAILURE
        ));
        let later = due + Duration::from_secs(10);
        assert_eq!(
            checkpointer.admission("ns/policy", &target(), later),
            Admission::Go
        );
    }

    #[test]
    fn the_period_runs_from_due_time_to_due_time() {
        let due = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let interval = Duration::from_secs(10);
        // Taken 1.5 s late: the next is still due 10 s after the last due time.
        let taken = due + Duration::from_millis(1500);
        assert_eq!(next_after(due, taken, interval), Some(due + interval));
        // A checkpoint that took longer than the interval: right after it.
        let slow = due + Duration::from_secs(12);
        assert_eq!(next_after(due, slow, interval), Some(slow));
    }

    #[tokio::test]
    async fn the_first_due_time_is_spread_from_first_sight_and_kept() {
        let pool = Arc::new(AgentPool::new(None, Duration::from_millis(200)));
        let (checkpointer, _woken) =
            Checkpointer::new(pool, Arc::new(Metrics::default()), 4, 2, None);
        let interval = Duration::from_secs(10);
        let seen = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let first = checkpointer.due("ns/policy", &target(), None, interval, seen);
        assert!(first >= seen && first < seen + interval, "{first}");
        // Later looks keep the first sight: the due time does not drift.
        let later = seen + Duration::from_secs(5);
        assert_eq!(
            checkpointer.due("ns/policy", &target(), None, interval, later),
            first
        );
        // A deleted policy forgets it.
        checkpointer.forget_policy("ns/policy");
        assert_ne!(
            checkpointer.due("ns/policy", &target(), None, interval, later),
            first
        );
    }
}
