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
pub mod checkpointer;
pub mod crd;
pub mod detect;
pub mod failover;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod reconcile;
pub mod schedule;
pub mod status;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            checkpoint_timeout: Duration::from_secs(60),
            max_concurrent_checkpoints: 32,
            max_checkpoints_per_node: 2,
            agent_namespace: None,
            identity: "ferry-controller".into(),
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
    /// When each container was first seen, to spread first checkpoints.
    first_seen: Mutex<HashMap<(String, String), jiff::Timestamp>>,
    /// When each policy's status was last written (`namespace/name`).
    status_writes: Mutex<HashMap<String, std::time::Instant>>,
    /// Held while a policy's status is written, so a background write of
    /// checkpoint progress never lands after, and undoes, a later write.
    status_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

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
            first_seen: Mutex::default(),
            status_writes: Mutex::default(),
            status_locks: Mutex::default(),
        };
        (context, finished)
    }

    pub fn policies(&self) -> Option<&Store<CheckpointPolicy>> {
        self.policies.get()
    }

    pub fn first_seen(&self, policy: &str, pod_uid: &str, now: jiff::Timestamp) -> jiff::Timestamp {
        *self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((policy.to_owned(), pod_uid.to_owned()))
            .or_insert(now)
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

    pub fn forget_policy(&self, policy: &str) {
        self.status_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.status_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
        self.first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(p, _), _| p != policy);
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
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (reader, stream)
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

/// Policies a changed node matters to: those with checkpoints or replicas on it.
fn policies_for_node(
    policies: &Store<CheckpointPolicy>,
    node: &Node,
) -> Vec<ObjectRef<CheckpointPolicy>> {
    let name = node.name_any();
    policies
        .state()
        .iter()
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.checkpoints
                    .iter()
                    .any(|r| r.node == name || r.replicas.contains(&name))
            })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Checks the CRD, then runs the CheckpointPolicy controller until the
/// process receives SIGTERM or SIGINT (or, with leader election, until
/// leadership is lost).
pub async fn run(
    client: Client,
    config: Config,
    agents: Arc<AgentPool>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
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

    // Pods and nodes wake the policies they concern; agent Leases only feed
    // the cache (their renewals every few seconds would wake everything).
    let pod_triggers = triggers.clone();
    let pod_store = store.clone();
    tokio::spawn(pod_events.try_for_each(move |pod| {
        for policy in policies_for_pod(&pod_store, &pod) {
            let _ = pod_triggers.send(policy);
        }
        futures::future::ready(Ok(()))
    }));
    let node_store = store.clone();
    let mut node_states: HashMap<String, NodeState> = HashMap::new();
    let node_cache = nodes.clone();
    tokio::spawn(node_events.try_for_each(move |node| {
        // Heartbeats change a node's status every few seconds; only a change
        // of readiness or of what placement looks at concerns a policy.
        // The cache is updated before the event arrives: a node missing
        // from it was deleted.
        let gone = node_cache.get(&ObjectRef::from_obj(&node)).is_none();
        let state = NodeState::of(&node, gone);
        if node_states.get(&node.name_any()) != Some(&state) {
            node_states.insert(node.name_any(), state);
            for policy in policies_for_node(&node_store, &node) {
                let _ = triggers.send(policy);
            }
        }
        futures::future::ready(Ok(()))
    }));
    tokio::spawn(lease_events.for_each(|_| futures::future::ready(())));

    tokio::spawn(async move {
        // Store readiness wakes only the most recent waiter, and the
        // controller itself waits on it too: poll again now and then
        // instead of waiting once.
        loop {
            let all = async {
                store.wait_until_ready().await?;
                pods.wait_until_ready().await?;
                nodes.wait_until_ready().await?;
                leases.wait_until_ready().await
            };
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
