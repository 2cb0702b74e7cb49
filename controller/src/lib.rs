//! ferry's controller.
//!
//! Each CheckpointPolicy is reconciled as a pipeline (see [`reconcile`]):
//! look at the selected pods, their nodes and the node agents; validate the
//! spec; fold finished checkpoints into status; detect failures and carry
//! recorded failovers one stage further; start due checkpoints; and write
//! the status with server-side apply only when it differs from what is
//! stored, so the controller's own writes never re-trigger work. Decisions
//! (what is due, which node is a standby, what failed, where to restore) are
//! pure functions in [`schedule`], [`placement`] and [`detect`].

pub mod agents;
pub mod announcements;
pub mod checkpointer;
pub mod crd;
pub mod detect;
pub mod evidence;
pub mod failover;
pub mod history;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod placement;
pub mod reconcile;
pub mod schedule;
pub mod status;
pub mod view;
pub mod warm;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use ferry_api::CheckpointPolicy;
use ferry_telemetry::Readiness;

use crate::agents::AgentPool;
use crate::checkpointer::Checkpointer;
pub use crate::metrics::Metrics;

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "CustomResourceDefinition {name} is not installed; install the chart (`helm install ferry charts/ferry`) or `kubectl apply -f charts/ferry/crds/`"
    )]
    CrdMissing { name: String },
    #[error(
        "CustomResourceDefinition {name} is not Established after {waited_secs}s: {conditions}"
    )]
    CrdNotEstablished {
        name: String,
        waited_secs: u64,
        conditions: String,
    },
    #[error(
        "CustomResourceDefinition {name} does not serve version {version}; upgrade the CRD from charts/ferry/crds/"
    )]
    CrdVersionNotServed { name: String, version: String },
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: {source}")]
    Finalizer {
        object: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    #[error("serving /healthz, /readyz and /metrics: {0}")]
    Http(#[source] std::io::Error),
    #[error("CheckpointPolicy has no {0}; the API server always sets it")]
    MissingMetadata(&'static str),
    #[error("loading the TLS files for calling agents: {0}")]
    Tls(#[from] ferry_proto::tls::TlsError),
    #[error(transparent)]
    History(#[from] ferry_history::Error),
    #[error("admission webhook: {0}")]
    Webhook(#[from] webhook::Error),
    #[error("leader election: {0}")]
    Leader(#[from] leader::Error),
    #[error("lost leadership ({0}); exiting so that a new leader takes over")]
    LostLeadership(String),
}

/// How the controller runs; from flags in `main`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bound on one kubelet checkpoint call.
    pub checkpoint_timeout: Duration,
    /// Checkpoints running at once, overall and per node.
    pub max_concurrent_checkpoints: usize,
    pub max_checkpoints_per_node: usize,
    /// Namespace whose Leases are the agents'; `None`: every namespace.
    pub agent_namespace: Option<String>,
    /// This controller's identity (its pod name), for Events and leadership.
    pub identity: String,
    /// Failovers running at once across all policies.
    pub max_concurrent_failovers: usize,
    /// Where checkpoints and failovers are recorded (PostgreSQL); off when
    /// `None`.
    pub history: Option<ferry_history::Recorder>,
    /// The image of warm standby pods (`warm`).
    pub warm_standby_image: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            checkpoint_timeout: Duration::from_secs(60),
            max_concurrent_checkpoints: 32,
            max_checkpoints_per_node: 2,
            agent_namespace: None,
            identity: "ferry-controller".into(),
            max_concurrent_failovers: 10,
            history: None,
            warm_standby_image: warm::DEFAULT_IMAGE.to_owned(),
        }
    }
}

/// Shared state of all reconciliations.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    policies: OnceLock<Store<CheckpointPolicy>>,
    pub agents: Arc<AgentPool>,
    pub checkpointer: Arc<Checkpointer>,
    pub recorder: Recorder,
    pub checkpoint_timeout: Duration,
    /// When each policy's status was last written (`namespace/name`).
    status_writes: Mutex<HashMap<String, std::time::Instant>>,
    /// When each policy's archives of gone pods were last swept.
    gone_pod_sweeps: Mutex<HashMap<String, std::time::Instant>>,
    /// Held while a policy's status is written, so a background write of
    /// checkpoint progress never lands after, and undoes, a later write.
    status_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When the caches of pods, nodes and agent Leases had all synced.
    synced_at: OnceLock<jiff::Timestamp>,
    /// When a watch of pods, nodes or agent Leases last failed.
    watch_failed_at: Mutex<Option<jiff::Timestamp>>,
    /// Pods seen being deleted, by UID, so one already gone from the cache
    /// can still be told apart: disrupted (a failure) or deleted on purpose.
    departed: Mutex<BTreeMap<String, detect::Departure>>,
    /// The controller-wide failover budget.
    pub budget: failover::budget::Budget,
    /// Where finished failovers are recorded, if anywhere.
    pub history: Option<ferry_history::Recorder>,
    /// The image of warm standby pods.
    pub warm_standby_image: String,
}

/// How long a departed pod is remembered: far longer than any reconcile
/// takes to look at it.
const DEPARTURE_MEMORY: Duration = Duration::from_secs(600);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// The shared state over the given caches; also returns the stream of
    /// policies whose checkpoints finished.
    pub fn new(
        client: Client,
        config: &Config,
        agents: Arc<AgentPool>,
        metrics: Arc<Metrics>,
        caches: (Store<Pod>, Store<Node>, Store<Lease>),
    ) -> (
        Self,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<CheckpointPolicy>>,
    ) {
        let (checkpointer, finished) = Checkpointer::new(
            agents.clone(),
            metrics.clone(),
            config.max_concurrent_checkpoints,
            config.max_checkpoints_per_node,
            config.history.clone(),
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "ferry-controller".into(),
                instance: Some(config.identity.clone()),
            },
        );
        let (pods, nodes, leases) = caches;
        let context = Self {
            client,
            metrics,
            pods,
            nodes,
            leases,
            policies: OnceLock::new(),
            agents,
            checkpointer,
            recorder,
            checkpoint_timeout: config.checkpoint_timeout,
            status_writes: Mutex::default(),
            gone_pod_sweeps: Mutex::default(),
            status_locks: Mutex::default(),
            synced_at: OnceLock::new(),
            watch_failed_at: Mutex::default(),
            departed: Mutex::default(),
            budget: failover::budget::Budget::new(config.max_concurrent_failovers),
            history: config.history.clone(),
            warm_standby_image: config.warm_standby_image.clone(),
        };
        (context, finished)
    }

    pub fn policies(&self) -> Option<&Store<CheckpointPolicy>> {
        self.policies.get()
    }

    /// When every cache had synced; `None` until then.
    pub fn synced_at(&self) -> Option<jiff::Timestamp> {
        self.synced_at.get().copied()
    }

    /// When the watches behind the caches started and last failed.
    pub fn watched(&self) -> view::Watched {
        view::Watched {
            synced_at: self.synced_at(),
            failed_at: *self
                .watch_failed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Notes a failed watch: the view is incomplete until the watches ran
    /// a Lease period without an error (see [`view::complete`]). The
    /// watcher retries by itself.
    fn watch_failed(&self, resource: &'static str, error: &watcher::Error) {
        let mut failed_at = self
            .watch_failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed_at.is_none_or(|at| {
            jiff::Timestamp::now()
                .duration_since(at)
                .try_into()
                .is_ok_and(|ago: Duration| ago > 2 * view::WATCH_RETRY_MAX)
        }) {
            tracing::warn!(resource, error = %error, "watch failed; retrying, and deciding no failover until it has run a Lease period without an error");
        } else {
            tracing::debug!(resource, error = %error, "watch failed again");
        }
        *failed_at = Some(jiff::Timestamp::now());
        self.metrics
            .watch_errors
            .get_or_create(&metrics::ErrorLabels { reason: resource })
            .inc();
    }

    /// Remembers a pod that is being (or was) deleted.
    pub fn pod_departing(&self, pod: &Pod, now: jiff::Timestamp) {
        let Some(uid) = pod.uid() else {
            return;
        };
        let mut departed = self
            .departed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let departure = detect::Departure::of(pod, now);
        // A disruption seen once stays: the final delete event may lack it.
        // The first request stays too: a shortened deletion moves it later.
        let known = departed.get(&uid);
        let disruption = departure
            .disruption
            .or_else(|| known.and_then(|d| d.disruption.clone()));
        let requested_at =
            detect::earliest(departure.requested_at, known.and_then(|d| d.requested_at));
        departed.insert(
            uid,
            detect::Departure {
                disruption,
                requested_at,
                seen_at: now,
            },
        );
        departed.retain(|_, d| {
            now.duration_since(d.seen_at)
                .try_into()
                .is_ok_and(|age: Duration| age < DEPARTURE_MEMORY)
        });
    }

    /// Departed pods, for a snapshot.
    pub fn departed(&self) -> BTreeMap<String, detect::Departure> {
        self.departed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Time since the policy's status was last written by this process.
    pub fn since_status_write(&self, policy: &str) -> Option<Duration> {
        self.status_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(policy)
            .map(std::time::Instant::elapsed)
    }

    /// The lock serializing status writes of `policy` (`namespace/name`).
    pub fn status_lock(&self, policy: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.status_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(policy.to_owned())
            .or_default()
            .clone()
    }

    pub fn status_written(&self, policy: &str) {
        self.status_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(policy.to_owned(), std::time::Instant::now());
    }

    /// Whether `policy`'s gone pods are due for a sweep (at most once per
    /// `every`); a due sweep counts as started.
    pub fn gone_pod_sweep_due(&self, policy: &str, every: Duration) -> bool {
        let mut sweeps = self
            .gone_pod_sweeps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = sweeps.get(policy).is_none_or(|at| at.elapsed() >= every);
        if due {
            sweeps.insert(policy.to_owned(), std::time::Instant::now());
        }
        due
    }

    pub fn forget_policy(&self, policy: &str) {
        self.status_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.gone_pod_sweeps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.status_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.budget.forget(policy);
        self.checkpointer.forget_policy(policy);
    }
}

/// A reflector for `api`, without managedFields (a third of a pod's bytes
/// the controller never reads), and the stream that drives it.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // A short ceiling: the view stays closed after an error until a retry
    // got through (see `view::WATCH_RETRY_MAX`).
    let backoff = kube::runtime::watcher::ExponentialBackoff::from(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(view::WATCH_RETRY_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
    );
    let stream = watcher(api, config)
        .backoff(backoff)
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// The objects of a watch stream. Its errors are recorded (the view closes
/// for a while, see [`Context::watch_failed`]) and dropped, never ending
/// the stream: the watcher retries by itself, and the stream is what keeps
/// the cache current. (A `try_for_each` on it once ended at the first
/// error and froze the cache.)
/// Keeps `ferry_controller_view_complete` true to the view every second,
/// also while no policy is reconciled (a fresh install, a standby).
async fn report_view_completeness(context: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let agents =
            agents::AgentIndex::from_leases(context.leases.state().iter().map(AsRef::as_ref));
        let complete = view::complete(context.watched(), &agents, jiff::Timestamp::now()).is_ok();
        context.metrics.view_complete.set(i64::from(complete));
    }
}

fn watched_objects<K>(
    context: Arc<Context>,
    resource: &'static str,
    events: impl futures::Stream<Item = Result<K, watcher::Error>>,
) -> impl futures::Stream<Item = K> {
    events.filter_map(move |event| {
        let object = match event {
            Ok(object) => Some(object),
            Err(error) => {
                context.watch_failed(resource, &error);
                None
            }
        };
        futures::future::ready(object)
    })
}

/// Policies a changed pod matters to: those selecting it now and those
/// whose status remembers it (it may have been deleted or relabelled).
fn policies_for_pod(
    policies: &Store<CheckpointPolicy>,
    pod: &Pod,
) -> Vec<ObjectRef<CheckpointPolicy>> {
    let uid = pod.uid().unwrap_or_default();
    policies
        .state()
        .iter()
        .filter(|p| p.namespace() == pod.namespace())
        .filter(|p| {
            schedule::selects(p, pod)
                || p.status.as_ref().is_some_and(|s| {
                    s.checkpoints.iter().any(|r| r.pod_uid == uid)
                        || s.failovers
                            .iter()
                            .any(|f| f.pod_uid == uid || f.owner == schedule::owner_of(pod))
                })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// What of a node a policy reacts to: readiness (failure detection) and
/// what placement reads (labels, taints, schedulability).
#[derive(Debug, PartialEq)]
struct NodeState {
    ready: Option<String>,
    gone: bool,
    deleting: bool,
    unschedulable: bool,
    labels: std::collections::BTreeMap<String, String>,
    taints: Vec<(String, Option<String>, String)>,
}

impl NodeState {
    fn of(node: &Node, gone: bool) -> Self {
        let spec = node.spec.as_ref();
        Self {
            ready: placement::node_ready_condition(node).map(|c| c.status.clone()),
            gone,
            deleting: node.metadata.deletion_timestamp.is_some(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            labels: node.labels().clone(),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|taints| {
                    taints
                        .iter()
                        .map(|t| (t.key.clone(), t.value.clone(), t.effect.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What one agent reports of each peer node: whether its agent and its
/// kubelet answer. A change wakes the policies with pods on that node.
#[derive(Debug, PartialEq)]
struct PeerView(BTreeMap<String, (bool, bool)>);

impl PeerView {
    fn of(agent: &agents::AgentInfo) -> Self {
        Self(
            agent
                .observations
                .peers
                .iter()
                .map(|(node, seen)| {
                    (
                        node.clone(),
                        (
                            seen.agent.failing_since.is_some(),
                            seen.kubelet.failing_since.is_some(),
                        ),
                    )
                })
                .collect(),
        )
    }

    fn changed_nodes(&self, old: &Self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(node, flags)| old.0.get(*node) != Some(flags))
            .map(|(node, _)| node.clone())
            .chain(old.0.keys().filter(|n| !self.0.contains_key(*n)).cloned())
            .collect()
    }
}

/// Policies a changed node matters to: those with checkpoints or replicas
/// on it, or failovers from it.
fn policies_for_node_name(
    policies: &Store<CheckpointPolicy>,
    name: &str,
) -> Vec<ObjectRef<CheckpointPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.checkpoints
                    .iter()
                    .any(|r| r.node == name || r.replicas.iter().any(|n| n == name))
                    || s.failovers.iter().any(|f| f.from_node == name)
            })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Checks the CRD, fills the caches of pods, nodes and agent Leases, then,
/// once `leading` says so, runs the CheckpointPolicy controller until the
/// process receives SIGTERM or SIGINT (or, with leader election, until
/// leadership is lost).
///
/// A replica standing by keeps its caches and its view of the agents warm
/// and writes nothing: when it takes over, its view is already complete,
/// so a failover is not delayed by one agent Lease period of watching.
pub async fn run(
    client: Client,
    config: Config,
    agents: Arc<AgentPool>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    crd::ensure_installed(&client, ferry_api::CRD_NAME, Duration::from_secs(30)).await?;
    let leases_api: Api<Lease> = match &config.agent_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let agent_leases = watcher::Config::default().labels(&format!(
        "{}={}",
        ferry_api::names::AGENT_COMPONENT_LABEL.0,
        ferry_api::names::AGENT_COMPONENT_LABEL.1
    ));
    let (pods, pod_events) = cached(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let (nodes, node_events) = cached(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let (leases, lease_events) = cached(leases_api, agent_leases);
    let (context, finished) = Context::new(
        client.clone(),
        &config,
        agents,
        metrics,
        (pods.clone(), nodes.clone(), leases.clone()),
    );
    let context = Arc::new(context);

    let policies: Api<CheckpointPolicy> = Api::all(client.clone());
    let (triggers, triggered) = tokio::sync::mpsc::unbounded_channel();
    let controller = Controller::new(policies, watcher::Config::default().any_semantic())
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            finished,
        ))
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            triggered,
        ))
        .shutdown_on_signal();
    let store = controller.store();
    let _ = context.policies.set(store.clone());

    // Pods and nodes wake the policies they concern; agent Leases wake
    // them only when what peers see of a node changes (their renewals
    // every heartbeat would wake everything).
    // While standing by, departures are still tracked (they decide whether a
    // gone pod was deleted on purpose), but nothing is queued or written.
    let pod_triggers = triggers.clone();
    let pod_store = store.clone();
    let pod_context = context.clone();
    let pod_leading = leading.clone();
    let pod_events = watched_objects(context.clone(), "pods", pod_events);
    let lease_events = watched_objects(context.clone(), "agent_leases", lease_events);
    let node_events = watched_objects(context.clone(), "nodes", node_events);
    tokio::spawn(pod_events.for_each(move |pod| {
        if pod.metadata.deletion_timestamp.is_some()
            || pod_context.pods.get(&ObjectRef::from_obj(&pod)).is_none()
        {
            pod_context.pod_departing(&pod, jiff::Timestamp::now());
        }
        if !*pod_leading.borrow() {
            return futures::future::ready(());
        }
        for policy in policies_for_pod(&pod_store, &pod) {
            let _ = pod_triggers.send(policy);
        }
        futures::future::ready(())
    }));
    let lease_triggers = triggers.clone();
    let lease_store = store.clone();
    let lease_leading = leading.clone();
    let mut peer_views: HashMap<String, PeerView> = HashMap::new();
    tokio::spawn(lease_events.for_each(move |lease| {
        if let Some(agent) = agents::AgentInfo::from_lease(&lease) {
            let view = PeerView::of(&agent);
            let changed = match peer_views.get(&agent.node) {
                Some(old) => view.changed_nodes(old),
                None => view.0.keys().cloned().collect(),
            };
            peer_views.insert(agent.node.clone(), view);
            if !*lease_leading.borrow() {
                return futures::future::ready(());
            }
            for node in changed {
                for policy in policies_for_node_name(&lease_store, &node) {
                    let _ = lease_triggers.send(policy);
                }
            }
        }
        futures::future::ready(())
    }));
    let node_store = store.clone();
    let mut node_states: HashMap<String, NodeState> = HashMap::new();
    let node_cache = nodes.clone();
    let taint_client = client.clone();
    let node_leading = leading.clone();
    tokio::spawn(node_events.for_each(move |node| {
        let leader = *node_leading.borrow();
        if leader {
            nodes::lift_taints(&taint_client, [&node], &node_store.state());
        }
        // Heartbeats change a node's status every few seconds; only a change
        // of readiness or of what placement looks at concerns a policy.
        // The cache is updated before the event arrives: a node missing
        // from it was deleted.
        let gone = node_cache.get(&ObjectRef::from_obj(&node)).is_none();
        let state = NodeState::of(&node, gone);
        if node_states.get(&node.name_any()) != Some(&state) {
            node_states.insert(node.name_any(), state);
            if !leader {
                return futures::future::ready(());
            }
            for policy in policies_for_node_name(&node_store, &node.name_any()) {
                let _ = triggers.send(policy);
            }
        }
        futures::future::ready(())
    }));
    let caches_synced = {
        let (pods, nodes, leases) = (pods.clone(), nodes.clone(), leases.clone());
        async move {
            pods.wait_until_ready().await?;
            nodes.wait_until_ready().await?;
            leases.wait_until_ready().await
        }
    };
    // Nothing is reconciled before pods, nodes and agent Leases are listed:
    // a missing object in a half-filled cache must never look deleted.
    if let Err(err) = caches_synced.await {
        tracing::error!(error = %err, "a cache writer was dropped before it synced");
        return Ok(());
    }
    let _ = context.synced_at.set(jiff::Timestamp::now());
    tokio::spawn(report_view_completeness(context.clone()));
    tracing::info!(
        agent_period_secs = view::agent_period(&agents::AgentIndex::from_leases(
            leases.state().iter().map(AsRef::as_ref)
        ))
        .as_secs_f64(),
        "caches of pods, nodes and agent Leases synced; failover decisions start once agents were watched for one Lease period"
    );
    if leading.wait_for(|leader| *leader).await.is_err() {
        tracing::info!("stopped before becoming the leader");
        return Ok(());
    }
    tracing::info!("leading: reconciling policies");

    tokio::spawn(async move {
        // Store readiness wakes only the most recent waiter, and the
        // controller itself waits on it too: poll again now and then
        // instead of waiting once.
        loop {
            // Pods, nodes and agent Leases synced before reconciling began.
            let all = store.wait_until_ready();
            match tokio::time::timeout(Duration::from_millis(250), all).await {
                Ok(Ok(())) => {
                    readiness.set();
                    tracing::info!(
                        "caches of policies, pods, nodes and agent leases synced; ready"
                    );
                    return;
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "a cache writer was dropped");
                    return;
                }
                Err(_elapsed) => {}
            }
        }
    });
    controller
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile loop");
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
