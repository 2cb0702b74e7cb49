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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fencing::{self, Contact, Decision, ProtectedContainers};
use crate::lock;
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

/// Pods this agent fenced (UID → when), shared with the heartbeat, which
/// publishes them in the Lease.
pub type FencedPods = Arc<Mutex<BTreeMap<String, jiff::Timestamp>>>;

/// Stops protected containers; see the module documentation.
#[derive(Debug)]
pub struct Watchdog {
    pub node: String,
    pub interval: Duration,
    pub timeout: Option<Duration>,
    pub proc_root: PathBuf,
    pub store: Arc<Store>,
    pub protected: Arc<ProtectedContainers>,
    pub metrics: Arc<Metrics>,
    pub fenced: FencedPods,
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
                        self.metrics.fence_actions.inc();
                        let stopped = self.pass(None).await;
                        let at = jiff::Timestamp::now();
                        let mut fenced = lock(&self.fenced);
                        for uid in stopped {
                            fenced.entry(uid).or_insert(at);
                        }
                        next_pass = Instant::now() + self.interval;
                    }
                    wake = Some(next_pass);
                }
                _ => {
                    if cut_off {
                        cut_off = false;
                        tracing::info!(
                            pods = lock(&self.fenced).len(),
                            "in contact again: the pods fenced meanwhile stay stopped until failed over (or for {}s)",
                            fencing::FENCE_HOLD.as_secs()
                        );
                    }
                    let held = {
                        let mut fenced = lock(&self.fenced);
                        *fenced = fencing::still_held(&fenced, jiff::Timestamp::now());
                        fenced.clone()
                    };
                    if !held.is_empty() {
                        if now >= next_pass {
                            self.pass(Some(&held)).await;
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

    /// One fencing pass: kills every process of a protected container, or
    /// of the `held` pods only. Returns the UIDs of the pods it covered.
    async fn pass(&self, held: Option<&BTreeMap<String, jiff::Timestamp>>) -> Vec<String> {
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
                targets.pod_uids.into_iter().collect()
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "fencing pass failed");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "fencing task failed");
                Vec::new()
            }
        }
    }
}
