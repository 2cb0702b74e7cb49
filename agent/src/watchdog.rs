//! The fence watchdog: the I/O edge that stops protected containers when
//! [`crate::fencing::decide`] says so, at the moment the fence timeout runs
//! out rather than at the next heartbeat.
//!
//! The controller counts a lost node as fenced from the last contact anyone
//! had with it plus the fence timeout, so every moment the agent fences
//! late is a moment the controller must wait longer. The heartbeat only
//! reports contact (after its probes and after its Lease write); this task
//! sleeps until the deadline that contact implies and fences then. While
//! cut off it repeats the pass every heartbeat (the kubelet may start a
//! killed container again), and afterwards it keeps the pods it fenced
//! stopped for [`fencing::FENCE_HOLD`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fencing::{self, Contact, Decision, FencedPods, ProtectedContainers};
use crate::metrics::Metrics;
use crate::peers::{self, PeersAnswered};
use crate::store::Store;

/// What the heartbeat last knew about this agent's contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceInputs {
    pub contact: Contact,
    /// Live peer agents (a standby a pod could be restored onto).
    pub live_peers: usize,
    /// The last heartbeat in which every live peer answered, if the last
    /// heartbeat was one.
    pub answered: Option<PeersAnswered>,
}

/// Kills the processes of protected containers and remembers the pods it
/// stopped; shared by the watchdog and the `FencePod` RPC.
#[derive(Debug)]
pub struct Fencer {
    pub node: String,
    pub proc_root: PathBuf,
    pub store: Arc<Store>,
    pub protected: Arc<ProtectedContainers>,
    pub metrics: Arc<Metrics>,
    /// Pods fenced (UID → when), shared with the heartbeat, which publishes
    /// them in the Lease.
    pub fenced: Arc<FencedPods>,
}

/// Stops protected containers when contact runs out; see the module
/// documentation.
#[derive(Debug)]
pub struct Watchdog {
    pub fencer: Arc<Fencer>,
    pub interval: Duration,
    pub timeout: Option<Duration>,
}

impl Watchdog {
    /// Runs until the heartbeat (the sender) is gone.
    pub async fn run(self, mut inputs: watch::Receiver<FenceInputs>) {
        let mut cut_off = false;
        // Passes repeat once per heartbeat interval at most.
        let mut next_pass = Instant::now();
        loop {
            let current = *inputs.borrow_and_update();
            let now = Instant::now();
            let mut wake = None;
            let mut contact = current.contact;
            // The heartbeat counts an API server that is down for everyone
            // as contact; between two heartbeats the watchdog must too.
            if let Some(timeout) = self.timeout
                && peers::api_down_for_everyone(current.answered, timeout, 2 * self.interval, now)
            {
                contact.peer = now;
                wake = Some(now + self.interval);
            }
            match fencing::decide(contact, current.live_peers, self.timeout, now) {
                Decision::Fence { silent_for } => {
                    if !cut_off {
                        tracing::warn!(
                            silent_ms = u64::try_from(silent_for.as_millis()).unwrap_or(u64::MAX),
                            live_peers = current.live_peers,
                            "cut off from the API server and every peer: fencing, stopping every protected container"
                        );
                    }
                    cut_off = true;
                    if now >= next_pass {
                        self.fencer.metrics.fence_actions.inc();
                        let stopped = self.fencer.pass(None).await;
                        self.fencer.hold(stopped);
                        next_pass = Instant::now() + self.interval;
                    }
                    wake = Some(next_pass);
                }
                _ => {
                    if cut_off {
                        cut_off = false;
                        tracing::info!(
                            pods = self.fencer.fenced.held().len(),
                            "in contact again: the pods fenced meanwhile stay stopped until failed over (or for {}s)",
                            fencing::FENCE_HOLD.as_secs()
                        );
                    }
                    let held = self.fencer.hold(Vec::new());
                    if !held.is_empty() {
                        if now >= next_pass {
                            self.fencer.pass(Some(&held)).await;
                            next_pass = Instant::now() + self.interval;
                        }
                        wake = Some(next_pass);
                    }
                    let due = fencing::fence_due(contact, current.live_peers, self.timeout);
                    wake = match (wake, due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                changed = inputs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Fencer {
    /// Stops the pod with this UID on request (its node lost the kubelet,
    /// the agent is in contact, and the controller needs the pod stopped
    /// before it restores it elsewhere): kills its processes and holds it
    /// stopped like a pod fenced while cut off, listed in the Lease.
    /// Returns how many processes were killed, or why it could not look.
    pub async fn fence_pod(&self, pod_uid: &str) -> Result<usize, String> {
        let at = jiff::Timestamp::now();
        self.fenced
            .update([pod_uid.to_owned()], at)
            .map_err(|e| format!("recording the fence: {e}"))?;
        let only = BTreeMap::from([(pod_uid.to_owned(), at)]);
        self.metrics.fence_actions.inc();
        self.pass_counting(Some(&only))
            .await
            .map(|(_, killed)| killed)
    }

    /// Adds `stopped` to the held pods and drops those whose hold ended;
    /// returns the pods held now. A list that cannot be written stays held
    /// in memory (and is logged): stopping comes first.
    fn hold(&self, stopped: Vec<String>) -> BTreeMap<String, jiff::Timestamp> {
        let now = jiff::Timestamp::now();
        match self.fenced.update(stopped.iter().cloned(), now) {
            Ok(held) => held,
            Err(error) => {
                tracing::error!(%error, "could not record the fenced pods: a restart would forget them");
                let mut held = fencing::still_held(&self.fenced.held(), now);
                for uid in stopped {
                    held.entry(uid).or_insert(now);
                }
                held
            }
        }
    }

    /// One fencing pass: kills every process of a protected container, or
    /// of the `held` pods only. Returns the UIDs of the pods it covered.
    async fn pass(&self, held: Option<&BTreeMap<String, jiff::Timestamp>>) -> Vec<String> {
        match self.pass_counting(held).await {
            Ok((pods, _)) => pods,
            Err(error) => {
                tracing::error!(%error, "fencing pass failed");
                Vec::new()
            }
        }
    }

    /// [`Fencer::pass`], with how many processes it killed, or why it
    /// could not look.
    async fn pass_counting(
        &self,
        held: Option<&BTreeMap<String, jiff::Timestamp>>,
    ) -> Result<(Vec<String>, usize), String> {
        let store = self.store.clone();
        let protected = self.protected.clone();
        let node = self.node.clone();
        let proc_root = self.proc_root.clone();
        let held = held.map(fencing::pods_only);
        let pass = tokio::task::spawn_blocking(move || {
            let targets = match held {
                Some(targets) => targets,
                None => fencing::fence_targets(&protected.entries(), &store.list()?, &node),
            };
            fencing::kill_protected(&proc_root, &targets).map(|killed| (targets, killed))
        })
        .await;
        match pass {
            Ok(Ok((targets, killed))) => {
                self.metrics.fenced_processes.inc_by(killed.len() as u64);
                for process in &killed {
                    tracing::warn!(pid = process.pid, target = %process.target, "fenced: killed a process of a protected container");
                }
                tracing::debug!(
                    containers = targets.container_ids.len(),
                    pods = targets.pod_uids.len(),
                    killed = killed.len(),
                    "fencing pass"
                );
                Ok((targets.pod_uids.into_iter().collect(), killed.len()))
            }
            Ok(Err(err)) => Err(err.to_string()),
            Err(err) => Err(format!("fencing task: {err}")),
        }
    }
}
