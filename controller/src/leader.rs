//! Leader election on a `coordination.k8s.io/v1` Lease, so the chart can run
//! more than one controller replica while only one of them acts.
//!
//! kube-runtime 5 ships no leader election (kube-rs/kube#485), so this
//! follows client-go's `leaderelection` semantics with a Lease lock:
//!
//! - every write is a replace carrying the resourceVersion that was read, so
//!   of two candidates racing for the same Lease exactly one wins (the other
//!   gets 409 Conflict and reads again);
//! - a Lease held by someone else is taken over only when it is expired both
//!   by its own timestamps (`renewTime + leaseDurationSeconds` is past) and
//!   by this process's monotonic clock (the Lease has not changed for
//!   `leaseDurationSeconds` since this candidate first saw that version), so
//!   a candidate whose wall clock runs ahead never takes a live Lease;
//! - the holder stops considering itself leader when it has not renewed for
//!   `lease_duration` minus a margin, measured from when it *sent* its last
//!   successful renewal, so it gives up before any candidate can take over.
//!
//! Wall-clock skew therefore never makes a live Lease look expired; a holder
//! whose clock runs ahead only delays a takeover by that skew.
//!
//! Identities must be unique per process (the pod name is): a candidate that
//! finds its own identity in the Lease takes it back at once, which is what a
//! restarted container of the same pod wants.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Everything that can go wrong while electing a leader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election on Lease {lease}: {reason}")]
    Config { lease: String, reason: String },
    #[error("{action} Lease {lease}: {source}")]
    Kube {
        action: &'static str,
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing Lease {lease}: gave up after {attempts} conflicting updates")]
    ReleaseConflicts { lease: String, attempts: u32 },
}

/// Where the Lease lives, who we are, and the timing.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process; the pod name.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal. Written to the
    /// Lease in whole seconds (rounded up).
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How often a waiting candidate reads the Lease again, and how soon the
    /// leader retries a failed renewal.
    pub retry_interval: Duration,
}

impl LeaderElectionConfig {
    /// Far shorter than client-go's 15 s / 10 s / 2 s: a leader lost with
    /// its node delays every failover of that node by about the Lease
    /// duration, and with 3 s that case is as fast as the fence deadline
    /// allows (docs/failover.md). Renewing every 500 ms leaves three more
    /// tries before the leader gives up (two thirds of 3 s). Losing the
    /// Lease to a slow API server costs a takeover by the warm standby,
    /// never a wrong decision.
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(3);
    pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(500);
    pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Self::DEFAULT_LEASE_DURATION,
            renew_interval: Self::DEFAULT_RENEW_INTERVAL,
            retry_interval: Self::DEFAULT_RETRY_INTERVAL,
        }
    }
}

/// A candidate for the Lease.
pub struct LeaderElection {
    client: Client,
    namespace: String,
    lease_name: String,
    identity: String,
    lease_duration: Duration,
    renew_interval: Duration,
    retry_interval: Duration,
}

impl fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderElection")
            .field("lease", &self.lease())
            .field("identity", &self.identity)
            .field("lease_duration", &self.lease_duration)
            .field("renew_interval", &self.renew_interval)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

/// Why leadership ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The Lease names another holder (or none).
    TakenOver { holder: Option<String> },
    /// No renewal succeeded for this long; others may take over soon.
    RenewalFailed { since: Duration, last_error: String },
    /// The Lease was deleted.
    Deleted,
    /// The renewal task ended (aborted or panicked).
    RenewerStopped,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::TakenOver { holder: Some(h) } => write!(f, "the Lease is now held by {h}"),
            Lost::TakenOver { holder: None } => write!(f, "the Lease no longer names a holder"),
            Lost::RenewalFailed { since, last_error } => write!(
                f,
                "no renewal succeeded for {:.1}s (last error: {last_error})",
                since.as_secs_f64()
            ),
            Lost::Deleted => write!(f, "the Lease was deleted"),
            Lost::RenewerStopped => write!(f, "the renewal task stopped"),
        }
    }
}

/// Held leadership. Renews the Lease in the background until it is lost,
/// released or dropped. Dropping it stops renewing without releasing, so a
/// successor has to wait for the Lease to expire; call [`Leadership::release`]
/// on graceful shutdown instead.
pub struct Leadership {
    client: Client,
    namespace: String,
    lease_name: String,
    identity: String,
    retry_interval: Duration,
    state: watch::Receiver<Option<Lost>>,
    renewer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &format!("{}/{}", self.namespace, self.lease_name))
            .field("identity", &self.identity)
            .field("lost", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// What a candidate may do with the Lease it read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Nobody holds it: take it now.
    Free,
    /// It names us already (e.g. our container restarted): keep it.
    Ours,
    /// Its holder stopped renewing: take it over.
    Expired,
    /// Valid for someone else: wait.
    Held { holder: String },
}

/// Decides from the Lease's spec, the wall clock `now`, and how long this
/// candidate has seen the same version of the Lease (`unchanged_for`).
fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    now: jiff::Timestamp,
    unchanged_for: Duration,
    fallback_duration: Duration,
) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Decision::Free;
    };
    if holder == identity {
        return Decision::Ours;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .filter(|d| *d > 0)
        .map_or(fallback_duration, |d| {
            Duration::from_secs(d.unsigned_abs().into())
        });
    let last = spec.and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()));
    let expired_by_timestamps = match last {
        Some(MicroTime(last)) => now.duration_since(*last).unsigned_abs() > duration && now > *last,
        // No timestamps at all: only our own observation can tell.
        None => true,
    };
    if expired_by_timestamps && unchanged_for >= duration {
        Decision::Expired
    } else {
        Decision::Held {
            holder: holder.to_owned(),
        }
    }
}

/// Errors worth waiting out rather than reporting: the API server being
/// briefly away or overloaded. Authorization and validation errors are not.
fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Whole seconds, rounded up so others never wait less than we assume.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl LeaderElection {
    /// Checks the timing: a leader has to renew well within the duration.
    pub fn new(client: Client, config: LeaderElectionConfig) -> Result<Self, Error> {
        let election = Self {
            client,
            namespace: config.namespace,
            lease_name: config.lease_name,
            identity: config.identity,
            lease_duration: config.lease_duration,
            renew_interval: config.renew_interval,
            retry_interval: config.retry_interval,
        };
        let invalid = |reason: String| Error::Config {
            lease: election.lease(),
            reason,
        };
        if election.identity.is_empty() {
            return Err(invalid("the identity is empty".into()));
        }
        if election.lease_duration < Duration::from_secs(1) {
            return Err(invalid(format!(
                "lease_duration {:?} is shorter than the Lease's 1 s resolution",
                election.lease_duration
            )));
        }
        if election.renew_interval.is_zero() || election.retry_interval.is_zero() {
            return Err(invalid(
                "renew_interval and retry_interval must be > 0".into(),
            ));
        }
        let deadline = renew_deadline(election.lease_duration);
        if election.renew_interval >= deadline {
            return Err(invalid(format!(
                "renew_interval {:?} must be shorter than the renew deadline {:?} (two thirds of lease_duration {:?})",
                election.renew_interval, deadline, election.lease_duration
            )));
        }
        Ok(election)
    }

    /// `<namespace>/<name>` of the Lease, as every message names it.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn kube_error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::Kube {
            action,
            lease: self.lease(),
            source,
        }
    }

    /// Waits until this identity holds the Lease, then returns the
    /// leadership, which renews in a task on the current runtime. Returns an
    /// error only for failures waiting will not fix (e.g. RBAC, a missing
    /// namespace); transient ones are logged and retried.
    pub async fn acquire(&self) -> Result<Leadership, Error> {
        let api = self.api();
        let lease = self.lease();
        // The version of the Lease last seen and since when (monotonic).
        let mut observed: Option<(String, Instant)> = None;
        // Log the holder when it changes and once a minute, not every poll.
        let mut logged: Option<(String, Instant)> = None;
        loop {
            match self.try_acquire(&api, &mut observed).await {
                Ok(Attempt::Acquired { lease: held, sent }) => {
                    tracing::info!(lease = %lease, identity = %self.identity, "acquired leadership");
                    return Ok(self.lead(*held, sent));
                }
                // Someone wrote between our read and write: read again now.
                Ok(Attempt::Raced) => continue,
                Ok(Attempt::Held { holder }) => {
                    let due = logged.as_ref().is_none_or(|(h, at)| {
                        *h != holder || at.elapsed() >= Duration::from_secs(60)
                    });
                    if due {
                        tracing::info!(lease = %lease, identity = %self.identity, holder = %holder, "waiting for leadership; the Lease is held by another replica");
                        logged = Some((holder, Instant::now()));
                    } else {
                        tracing::debug!(lease = %lease, holder = %holder, "Lease still held");
                    }
                }
                Err(Error::Kube { action, source, .. }) if is_transient(&source) => {
                    tracing::warn!(lease = %lease, error = %source, "{action} Lease failed; retrying");
                }
                Err(err) => return Err(err),
            }
            tokio::time::sleep(self.retry_interval).await;
        }
    }

    async fn try_acquire(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<Attempt, Error> {
        let Some(mut current) = api
            .get_opt(&self.lease_name)
            .await
            .map_err(self.kube_error("reading"))?
        else {
            return self.create(api).await;
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let seen_since = match observed {
            Some((v, since)) if *v == version => *since,
            _ => {
                let since = Instant::now();
                *observed = Some((version, since));
                since
            }
        };
        let decision = decide(
            current.spec.as_ref(),
            &self.identity,
            jiff::Timestamp::now(),
            seen_since.elapsed(),
            self.lease_duration,
        );
        let spec = current.spec.get_or_insert_with(LeaseSpec::default);
        let stamp = now();
        match decision {
            Decision::Held { holder } => return Ok(Attempt::Held { holder }),
            Decision::Ours => {}
            Decision::Free | Decision::Expired => {
                if let Decision::Expired = decision {
                    tracing::info!(lease = %self.lease(), previous = ?spec.holder_identity, "taking over an expired Lease");
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.acquire_time = Some(stamp.clone());
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        spec.renew_time = Some(stamp);
        spec.lease_duration_seconds = Some(duration_seconds(self.lease_duration));
        let sent = Instant::now();
        // The read resourceVersion is still in `current`: the replace fails
        // with 409 if anyone wrote since.
        match api
            .replace(&self.lease_name, &PostParams::default(), &current)
            .await
        {
            Ok(lease) => Ok(Attempt::Acquired {
                lease: Box::new(lease),
                sent,
            }),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                Ok(Attempt::Raced)
            }
            Err(err) => Err(self.kube_error("taking")(err)),
        }
    }

    async fn create(&self, api: &Api<Lease>) -> Result<Attempt, Error> {
        let stamp = now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.lease_name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(duration_seconds(self.lease_duration)),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let sent = Instant::now();
        match api.create(&PostParams::default(), &lease).await {
            Ok(lease) => Ok(Attempt::Acquired {
                lease: Box::new(lease),
                sent,
            }),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Attempt::Raced),
            Err(err) => Err(self.kube_error("creating")(err)),
        }
    }

    fn lead(&self, lease: Lease, sent: Instant) -> Leadership {
        let (tx, rx) = watch::channel(None);
        let renewer = Renewer {
            api: self.api(),
            lease_ref: self.lease(),
            lease_name: self.lease_name.clone(),
            identity: self.identity.clone(),
            renew_interval: self.renew_interval,
            retry_interval: self.retry_interval,
            deadline: renew_deadline(self.lease_duration),
            lease_duration_seconds: duration_seconds(self.lease_duration),
        };
        let handle = tokio::spawn(async move {
            let lost = renewer.run(lease, sent).await;
            tracing::error!(lease = %renewer.lease_ref, identity = %renewer.identity, reason = %lost, "lost leadership");
            let _ = tx.send(Some(lost));
        });
        Leadership {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            lease_name: self.lease_name.clone(),
            identity: self.identity.clone(),
            retry_interval: self.retry_interval,
            state: rx,
            renewer: Some(handle),
        }
    }
}

enum Attempt {
    Acquired { lease: Box<Lease>, sent: Instant },
    Raced,
    Held { holder: String },
}

/// The leader gives up a third of the duration before anyone may take over:
/// room for clock rate drift and for the request that was in flight.
fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration - lease_duration / 3
}

struct Renewer {
    api: Api<Lease>,
    lease_ref: String,
    lease_name: String,
    identity: String,
    renew_interval: Duration,
    retry_interval: Duration,
    deadline: Duration,
    lease_duration_seconds: i32,
}

enum Renewal {
    Renewed { lease: Box<Lease>, sent: Instant },
    Lost(Lost),
}

impl Renewer {
    /// Renews until leadership is lost; returns why.
    async fn run(&self, mut lease: Lease, mut last_ok: Instant) -> Lost {
        let mut last_error = String::new();
        let mut wait = self.renew_interval;
        loop {
            let give_up_at = last_ok + self.deadline;
            tokio::time::sleep_until((Instant::now() + wait).min(give_up_at)).await;
            // A request hanging past the deadline must not keep us leader.
            match tokio::time::timeout_at(give_up_at, self.renew_once(&lease)).await {
                Err(_elapsed) => {
                    return Lost::RenewalFailed {
                        since: last_ok.elapsed(),
                        last_error: if last_error.is_empty() {
                            "renewal did not complete in time".into()
                        } else {
                            last_error
                        },
                    };
                }
                Ok(Ok(Renewal::Renewed {
                    lease: renewed,
                    sent,
                })) => {
                    if !last_error.is_empty() {
                        tracing::info!(lease = %self.lease_ref, "renewing the Lease works again");
                        last_error.clear();
                    }
                    lease = *renewed;
                    last_ok = sent;
                    wait = self.renew_interval;
                }
                Ok(Ok(Renewal::Lost(lost))) => return lost,
                Ok(Err(err)) => {
                    tracing::warn!(lease = %self.lease_ref, error = %err, "renewing the Lease failed; retrying");
                    last_error = err.to_string();
                    wait = self.retry_interval;
                }
            }
        }
    }

    /// Errors come back as text: they are only logged and reported in
    /// [`Lost::RenewalFailed`].
    async fn renew_once(&self, lease: &Lease) -> Result<Renewal, String> {
        let mut current = lease.clone();
        // One re-read after a conflict: someone else wrote (taken over, or
        // an unrelated metadata change we must not overwrite).
        for _ in 0..2 {
            let spec = current.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
            if holder != Some(self.identity.as_str()) {
                return Ok(Renewal::Lost(Lost::TakenOver {
                    holder: holder.map(str::to_owned),
                }));
            }
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(self.lease_duration_seconds);
            let sent = Instant::now();
            match self
                .api
                .replace(&self.lease_name, &PostParams::default(), &current)
                .await
            {
                Ok(lease) => {
                    return Ok(Renewal::Renewed {
                        lease: Box::new(lease),
                        sent,
                    });
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    let fresh = self.api.get_opt(&self.lease_name).await;
                    match fresh.map_err(|e| format!("reading after a conflict: {e}"))? {
                        Some(fresh) => current = fresh,
                        None => return Ok(Renewal::Lost(Lost::Deleted)),
                    }
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    return Ok(Renewal::Lost(Lost::Deleted));
                }
                Err(err) => return Err(format!("replacing: {err}")),
            }
        }
        // Still conflicting: treat like a failed renewal and retry soon.
        Err("the Lease changed twice during one renewal".into())
    }
}

impl Leadership {
    /// Completes when leadership is lost: the Lease was taken over or
    /// deleted, or renewing failed for too long. The caller must stop acting
    /// at once (the controller exits so it restarts as a follower).
    pub async fn lost(&self) -> Lost {
        let mut state = self.state.clone();
        match state.wait_for(Option::is_some).await {
            Ok(lost) => lost.clone().unwrap_or(Lost::RenewerStopped),
            Err(_closed) => Lost::RenewerStopped,
        }
    }

    /// The same signal as [`Leadership::lost`], for `select!` loops and for
    /// handing to other tasks: the value turns `Some` once leadership is lost.
    pub fn subscribe(&self) -> watch::Receiver<Option<Lost>> {
        self.state.clone()
    }

    /// Whether leadership is still held, as far as this process knows.
    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_none() && self.renewer.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `<namespace>/<name>` of the Lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }

    /// Stops renewing and clears the holder, so a waiting replica takes over
    /// at its next read instead of after the Lease expires. Call it after the
    /// work that needed leadership has stopped (e.g. on SIGTERM).
    pub async fn release(mut self) -> Result<(), Error> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
            let _ = renewer.await;
        }
        let lease = self.lease();
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let kube_error = |action| {
                let lease = lease.clone();
                move |source| Error::Kube {
                    action,
                    lease,
                    source,
                }
            };
            let Some(mut current) = api
                .get_opt(&self.lease_name)
                .await
                .map_err(kube_error("reading before release of"))?
            else {
                return Ok(());
            };
            let spec = current.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                tracing::info!(lease = %lease, holder = ?spec.holder_identity, "not releasing the Lease: held by someone else");
                return Ok(());
            }
            // client-go releases the same way, so mixed candidates agree.
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
            match api
                .replace(&self.lease_name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => {
                    tracing::info!(lease = %lease, identity = %self.identity, "released leadership");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    tracing::debug!(lease = %lease, attempt, "conflict releasing the Lease; reading again");
                    tokio::time::sleep(self.retry_interval.min(Duration::from_millis(200))).await;
                }
                Err(err) => return Err(kube_error("releasing")(err)),
            }
        }
        Err(Error::ReleaseConflicts {
            lease,
            attempts: ATTEMPTS,
        })
    }
}

impl Drop for Leadership {
    /// Stops renewing without releasing (see the type's docs).
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let renewed = jiff::Timestamp::from_second(1_800_000_000 - renewed_secs_ago).unwrap();
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    fn at() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);
    const FALLBACK: Duration = Duration::from_secs(15);

    #[test]
    fn free_or_ours_is_taken_at_once() {
        assert_eq!(
            decide(None, "a", at(), Duration::ZERO, FALLBACK),
            Decision::Free
        );
        let empty = spec(Some(""), 0, 15);
        assert_eq!(
            decide(Some(&empty), "a", at(), Duration::ZERO, FALLBACK),
            Decision::Free
        );
        let ours = spec(Some("a"), 0, 15);
        assert_eq!(
            decide(Some(&ours), "a", at(), Duration::ZERO, FALLBACK),
            Decision::Ours
        );
    }

    #[test]
    fn a_valid_lease_of_someone_else_is_never_taken() {
        let fresh = spec(Some("b"), 3, 15);
        let held = Decision::Held { holder: "b".into() };
        // Even if we have watched it unchanged for long (our clock is behind).
        assert_eq!(decide(Some(&fresh), "a", at(), LONG, FALLBACK), held);
        // Expired by its timestamps, but it changed recently in our eyes
        // (our wall clock may run ahead).
        let stale = spec(Some("b"), 20, 15);
        assert_eq!(
            decide(Some(&stale), "a", at(), Duration::from_secs(5), FALLBACK),
            held
        );
        // Renewed "in the future" by a holder whose clock runs ahead.
        let future = spec(Some("b"), -100, 15);
        assert_eq!(decide(Some(&future), "a", at(), LONG, FALLBACK), held);
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let stale = spec(Some("b"), 16, 15);
        assert_eq!(
            decide(Some(&stale), "a", at(), Duration::from_secs(15), FALLBACK),
            Decision::Expired
        );
        // Without a duration on the Lease, ours applies.
        let mut no_duration = spec(Some("b"), 16, 15);
        no_duration.lease_duration_seconds = None;
        assert_eq!(
            decide(
                Some(&no_duration),
                "a",
                at(),
                Duration::from_secs(15),
                FALLBACK
            ),
            Decision::Expired
        );
        assert_eq!(
            decide(
                Some(&no_duration),
                "a",
                at(),
                Duration::from_secs(14),
                FALLBACK
            ),
            Decision::Held { holder: "b".into() }
        );
    }

    #[test]
    fn durations_round_up_and_the_deadline_leaves_a_margin() {
        assert_eq!(duration_seconds(Duration::from_secs(15)), 15);
        assert_eq!(duration_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(
            renew_deadline(Duration::from_secs(15)),
            Duration::from_secs(10)
        );
        assert_eq!(
            renew_deadline(Duration::from_secs(3)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn lost_says_why() {
        let lost = Lost::TakenOver {
            holder: Some("ferry-controller-2".into()),
        };
        assert_eq!(
            lost.to_string(),
            "the Lease is now held by ferry-controller-2"
        );
    }
}
