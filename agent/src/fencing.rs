//! Self-fencing: an agent cut off from both the API server and every peer
//! agent stops the containers it protects, so that when the controller
//! restores them on a standby node there is never a second live copy.
//!
//! - [`decide`] is the pure rule (when to fence).
//! - [`ProtectedContainers`] is the persisted list of containers this agent
//!   checkpointed (their runtime ids and pod UIDs), so a restarted agent
//!   still knows them.
//! - [`kill_protected`] is the I/O edge: it SIGKILLs every process whose
//!   `/proc/<pid>/cgroup` names a protected container or pod. That works
//!   while the kubelet and containerd are frozen or unreachable (the
//!   processes of a container live in cgroups named after its id with the
//!   cgroupfs and the systemd drivers, cgroup v1 and v2; runc containers of
//!   the `runc` runtime in `/ferry/<id>`), and needs the host PID namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::ArchiveMeta;
use crate::{Error, lock};

/// Entries kept in the protected list; the oldest go first.
const MAX_PROTECTED: usize = 1024;

/// File name of the protected list in the data dir.
pub const PROTECTED_FILE: &str = "protected-containers.json";

/// When the agent last heard from the API server and from any peer agent.
/// Both start at the agent's start: a fresh agent gets a full timeout to
/// make contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    pub api: Instant,
    pub peer: Instant,
}

/// What [`decide`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `--fence-timeout 0`.
    Disabled,
    /// No live peer: there is no standby a pod of this node could be
    /// restored onto, so stopping it would only lose it.
    NoPeers,
    /// The API server or a peer answered within the timeout.
    InContact,
    /// Both have been silent this long (longer than the timeout): stop the
    /// protected containers.
    Fence { silent_for: Duration },
}

/// Fence when both the API server and every peer agent have been silent for
/// longer than `timeout`, and there is at least one live peer. A lone agent
/// never fences: with no peer there is no standby, so the controller cannot
/// restore its containers anywhere, and killing them would only turn a
/// network problem into an outage.
pub fn decide(
    contact: Contact,
    live_peers: usize,
    timeout: Option<Duration>,
    now: Instant,
) -> Decision {
    let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
        return Decision::Disabled;
    };
    if live_peers == 0 {
        return Decision::NoPeers;
    }
    let silent_for = now
        .saturating_duration_since(contact.api)
        .min(now.saturating_duration_since(contact.peer));
    if silent_for > timeout {
        Decision::Fence { silent_for }
    } else {
        Decision::InContact
    }
}

/// When [`decide`] says [`Decision::Fence`] if no contact comes before:
/// just after the newer of the two contacts plus the timeout. `None` when
/// it never does (fencing off, or no live peer).
pub fn fence_due(
    contact: Contact,
    live_peers: usize,
    timeout: Option<Duration>,
) -> Option<Instant> {
    let timeout = timeout.filter(|t| !t.is_zero())?;
    if live_peers == 0 {
        return None;
    }
    // `decide` fences once the silence is longer than the timeout.
    Some(contact.api.max(contact.peer) + timeout + Duration::from_millis(1))
}

/// One container this agent checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protected {
    /// The runtime's container id (`config.dump` `id` of its archive).
    pub id: String,
    pub namespace: String,
    pub pod: String,
    /// Empty when the caller did not say (runc runtime).
    #[serde(default)]
    pub pod_uid: String,
    pub container: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProtectedFile {
    containers: Vec<Protected>,
}

/// The persisted list of containers this agent checkpointed, newest last.
#[derive(Debug)]
pub struct ProtectedContainers {
    path: PathBuf,
    entries: Mutex<Vec<Protected>>,
}

impl ProtectedContainers {
    /// Loads `<data_dir>/protected-containers.json` (empty if absent).
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(PROTECTED_FILE);
        let entries = read_list::<ProtectedFile>(&path, "protected-container list")?.containers;
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// Records a checkpointed container; writes the file (temp file, fsync,
    /// rename) only when the entry is new. Blocking.
    pub fn record(&self, entry: Protected) -> Result<bool, Error> {
        crate::names::container_id("container id", &entry.id)?;
        let mut entries = lock(&self.entries);
        let Some(updated) = with_entry(&entries, entry) else {
            return Ok(false);
        };
        write_list(
            &self.path,
            &ProtectedFile {
                containers: updated.clone(),
            },
        )?;
        *entries = updated;
        Ok(true)
    }

    pub fn entries(&self) -> Vec<Protected> {
        lock(&self.entries).clone()
    }
}

/// Reads one of the agent's JSON lists; an absent file is an empty list.
fn read_list<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &str,
) -> Result<T, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
            id: String::new(),
            path: path.to_path_buf(),
            reason: format!("unreadable {what}: {e}"),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(err) => Err(Error::io("reading", path, err)),
    }
}

/// Writes one of the agent's JSON lists durably (temp file, fsync,
/// rename, fsync of the directory). Blocking.
fn write_list<T: Serialize>(path: &Path, list: &T) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::store::write_json_atomically(dir, path, list)?;
    crate::store::sync_dir(dir)
}

/// The list with `entry` added (`None`: it is already there), at most
/// [`MAX_PROTECTED`] long.
fn with_entry(entries: &[Protected], entry: Protected) -> Option<Vec<Protected>> {
    if entries.contains(&entry) {
        return None;
    }
    let mut updated = entries.to_vec();
    updated.push(entry);
    let excess = updated.len().saturating_sub(MAX_PROTECTED);
    updated.drain(..excess);
    Some(updated)
}

/// What fencing looks for in `/proc/<pid>/cgroup`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceTargets {
    pub container_ids: BTreeSet<String>,
    pub pod_uids: BTreeSet<String>,
}

impl FenceTargets {
    pub fn is_empty(&self) -> bool {
        self.container_ids.is_empty() && self.pod_uids.is_empty()
    }
}

/// How long a fenced pod is kept stopped: its failover either finishes
/// within this (the controller gives up after 180 s) or the kubelet's
/// restarts of it show as a container failure, which fails it over.
pub const FENCE_HOLD: Duration = Duration::from_secs(600);

/// The fenced pods (UID → when fenced) still held at `now`.
pub fn still_held(
    fenced: &BTreeMap<String, jiff::Timestamp>,
    now: jiff::Timestamp,
) -> BTreeMap<String, jiff::Timestamp> {
    fenced
        .iter()
        .filter(|(_, at)| {
            let held = now.duration_since(**at);
            // A clock stepped back keeps the pod held.
            held.is_negative() || Duration::try_from(held).is_ok_and(|held| held < FENCE_HOLD)
        })
        .map(|(uid, at)| (uid.clone(), *at))
        .collect()
}

/// File name of the fenced-pod list in the data dir.
pub const FENCED_FILE: &str = "fenced-pods.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct FencedFile {
    pods: BTreeMap<String, jiff::Timestamp>,
}

/// The pods this agent fenced (UID → when), kept on disk: an agent that
/// restarts while it holds a pod stopped (its failover still running)
/// must go on holding it, and go on listing it in its Lease.
#[derive(Debug)]
pub struct FencedPods {
    path: PathBuf,
    pods: Mutex<BTreeMap<String, jiff::Timestamp>>,
}

impl FencedPods {
    /// Loads `<data_dir>/fenced-pods.json` (empty if absent), keeping the
    /// pods still held at `now`.
    pub fn open(data_dir: &Path, now: jiff::Timestamp) -> Result<Self, Error> {
        let path = data_dir.join(FENCED_FILE);
        let pods = read_list::<FencedFile>(&path, "fenced-pod list")?.pods;
        Ok(Self {
            path,
            pods: Mutex::new(still_held(&pods, now)),
        })
    }

    /// The pods held now.
    pub fn held(&self) -> BTreeMap<String, jiff::Timestamp> {
        lock(&self.pods).clone()
    }

    /// Adds pods fenced `at` (those already held keep their time) and drops
    /// those whose hold ended by `at`; writes the file when that changed
    /// anything (a small file, written only when a fence starts or ends).
    /// Returns the pods held now.
    pub fn update(
        &self,
        fenced: impl IntoIterator<Item = String>,
        at: jiff::Timestamp,
    ) -> Result<BTreeMap<String, jiff::Timestamp>, Error> {
        let mut pods = lock(&self.pods);
        let mut updated = still_held(&pods, at);
        for uid in fenced {
            updated.entry(uid).or_insert(at);
        }
        if updated != *pods {
            write_list(
                &self.path,
                &FencedFile {
                    pods: updated.clone(),
                },
            )?;
            *pods = updated;
        }
        Ok(pods.clone())
    }
}

/// Targets that are these pods and nothing else.
pub fn pods_only(pods: &BTreeMap<String, jiff::Timestamp>) -> FenceTargets {
    FenceTargets {
        container_ids: BTreeSet::new(),
        pod_uids: pods.keys().cloned().collect(),
    }
}

/// The protected containers that still matter: those whose workload this
/// node still holds an archive of, taken here (a deleted policy's archives
/// are gone, and with them its containers' protection). A container the
/// kubelet restarts after a kill gets a new id, so the pod's UID is fenced
/// too: every container of a protected pod is stopped.
pub fn fence_targets(
    protected: &[Protected],
    archives: &[ArchiveMeta],
    node: &str,
) -> FenceTargets {
    let held: BTreeSet<(&str, &str, &str)> = archives
        .iter()
        .filter(|a| a.source_node == node)
        .map(|a| (a.namespace.as_str(), a.pod.as_str(), a.container.as_str()))
        .collect();
    let mut targets = FenceTargets::default();
    for entry in protected {
        if held.contains(&(&entry.namespace, &entry.pod, &entry.container)) {
            targets.container_ids.insert(entry.id.clone());
            if !entry.pod_uid.is_empty() {
                targets.pod_uids.insert(entry.pod_uid.clone());
            }
        }
    }
    targets
}

/// The protected container or pod a process belongs to, from the text of
/// its `/proc/<pid>/cgroup`; `None` if it is not protected.
///
/// A path component names container `id` when it is the id (cgroupfs:
/// `/kubepods/besteffort/pod<uid>/<id>`, runc: `/ferry/<id>`) or ends in
/// `-<id>` before an optional `.scope` (systemd: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`). It names pod `uid` when it is `pod<uid>` or ends in
/// `-pod<uid with _ for ->` before `.slice` (systemd).
pub fn protected_match<'a>(cgroup: &str, targets: &'a FenceTargets) -> Option<&'a str> {
    for line in cgroup.lines() {
        // hierarchy-id:controllers:path; the path may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let unit = component
                .strip_suffix(".scope")
                .or_else(|| component.strip_suffix(".slice"))
                .unwrap_or(component);
            for id in &targets.container_ids {
                if unit == id
                    || unit
                        .strip_suffix(id.as_str())
                        .is_some_and(|rest| rest.ends_with('-'))
                {
                    return Some(id);
                }
            }
            for uid in &targets.pod_uids {
                let systemd = uid.replace('-', "_");
                let Some(tail) = unit
                    .strip_suffix(uid.as_str())
                    .or_else(|| unit.strip_suffix(systemd.as_str()))
                else {
                    continue;
                };
                if tail == "pod" || tail.ends_with("-pod") {
                    return Some(uid);
                }
            }
        }
    }
    None
}

/// A process fencing killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Killed {
    pub pid: u32,
    /// The container id or pod UID its cgroup named.
    pub target: String,
}

/// SIGKILLs every process under `proc_root` (the host's `/proc`) whose
/// cgroup names one of `targets`, never the agent itself. Each process is
/// pinned with a pidfd before its cgroup is read, so a pid reused in
/// between is never hit. Blocking.
pub fn kill_protected(proc_root: &Path, targets: &FenceTargets) -> Result<Vec<Killed>, Error> {
    let mut killed = Vec::new();
    if targets.is_empty() {
        return Ok(killed);
    }
    let me = std::process::id();
    let entries = std::fs::read_dir(proc_root).map_err(|e| Error::io("listing", proc_root, e))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Gone already, or a kernel without pidfds: the cgroup check below
        // still decides, only without the pin.
        let pinned = crate::sys::pidfd_open(pid).ok();
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let Some(target) = protected_match(&cgroup, targets) else {
            continue;
        };
        let sent = match &pinned {
            Some(pidfd) => crate::sys::pidfd_kill(pidfd),
            None => crate::sys::kill(pid),
        };
        match sent {
            Ok(()) => killed.push(Killed {
                pid,
                target: target.to_owned(),
            }),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(err) => {
                tracing::warn!(pid, target, error = %err, "could not kill a fenced process")
            }
        }
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn fenced_pods_are_held_for_the_hold_period_and_only_they_are_targets() {
        let at = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
        let fenced = BTreeMap::from([("old".to_owned(), at(0)), ("new".to_owned(), at(500))]);
        let held = still_held(&fenced, at(650));
        assert_eq!(held.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(still_held(&fenced, at(-10)).len(), 2, "clock stepped back");
        let targets = pods_only(&held);
        assert!(targets.container_ids.is_empty());
        assert_eq!(targets.pod_uids, BTreeSet::from(["new".to_owned()]));
    }

    #[test]
    fn fenced_pods_survive_a_restart_until_their_hold_ends() {
        let at = |s: i64| jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fenced = FencedPods::open(dir.path(), at(0)).unwrap();
        assert!(fenced.held().is_empty());
        fenced.update(["a".to_owned()], at(10)).unwrap();
        // Fenced again later: the first time counts.
        fenced
            .update(["a".to_owned(), "b".to_owned()], at(20))
            .unwrap();
        let reopened = FencedPods::open(dir.path(), at(30)).unwrap();
        assert_eq!(
            reopened.held(),
            BTreeMap::from([("a".to_owned(), at(10)), ("b".to_owned(), at(20))])
        );
        // After the hold, gone from memory and from the file.
        let held = reopened.update([], at(615)).unwrap();
        assert_eq!(held.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            FencedPods::open(dir.path(), at(616)).unwrap().held().len(),
            1
        );
        assert!(
            FencedPods::open(dir.path(), at(700))
                .unwrap()
                .held()
                .is_empty()
        );
        // A damaged file is an error that names it.
        std::fs::write(dir.path().join(FENCED_FILE), b"{").unwrap();
        let err = FencedPods::open(dir.path(), at(0)).unwrap_err().to_string();
        assert!(err.contains(FENCED_FILE), "{err}");
    }

    #[test]
    fn fences_only_when_api_and_peers_are_both_silent_past_the_timeout() {
        let start = Instant::now();
        let timeout = Some(3 * SECOND);
        let contact = Contact {
            api: start,
            peer: start,
        };
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(decide(contact, 1, timeout, at(3)), Decision::InContact);
        assert_eq!(
            decide(contact, 1, timeout, at(4)),
            Decision::Fence {
                silent_for: 4 * SECOND
            }
        );
        // A peer answered recently: no fence, however long the API is gone.
        let peer_only = Contact {
            api: start,
            peer: at(9),
        };
        assert_eq!(decide(peer_only, 1, timeout, at(10)), Decision::InContact);
        // The API answered recently, every peer is gone: no fence.
        let api_only = Contact {
            api: at(9),
            peer: start,
        };
        assert_eq!(decide(api_only, 1, timeout, at(10)), Decision::InContact);
        // The silence is measured from the latest contact of either kind.
        let both = Contact {
            api: at(5),
            peer: at(6),
        };
        assert_eq!(
            decide(both, 2, timeout, at(10)),
            Decision::Fence {
                silent_for: 4 * SECOND
            }
        );
        // A lone agent never fences; 0 disables fencing.
        assert_eq!(decide(contact, 0, timeout, at(100)), Decision::NoPeers);
        assert_eq!(
            decide(contact, 1, Some(Duration::ZERO), at(100)),
            Decision::Disabled
        );
        assert_eq!(decide(contact, 1, None, at(100)), Decision::Disabled);
    }

    #[test]
    fn the_fence_is_due_the_moment_decide_would_fence() {
        let start = Instant::now();
        let timeout = Some(3 * SECOND);
        let contact = Contact {
            api: start + SECOND,
            peer: start + 2 * SECOND,
        };
        let due = fence_due(contact, 1, timeout).unwrap();
        assert_eq!(
            decide(contact, 1, timeout, due - Duration::from_millis(1)),
            Decision::InContact
        );
        assert!(matches!(
            decide(contact, 1, timeout, due),
            Decision::Fence { .. }
        ));
        assert_eq!(due - start, 5 * SECOND + Duration::from_millis(1));
        // Never due when `decide` never fences.
        assert_eq!(fence_due(contact, 0, timeout), None);
        assert_eq!(fence_due(contact, 1, None), None);
        assert_eq!(fence_due(contact, 1, Some(Duration::ZERO)), None);
    }

    fn targets(ids: &[&str], uids: &[&str]) -> FenceTargets {
        FenceTargets {
            container_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            pod_uids: uids.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    const ID: &str = "3f2a9c0d1e7b4a5f8c6d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";
    const UID: &str = "6b0a2c1e-4d3f-4e5a-9b8c-7d6e5f4a3b2c";

    #[test]
    fn cgroup_paths_of_every_driver_name_the_container() {
        let t = targets(&[ID], &[]);
        let cases = [
            // cgroupfs driver, v1 hybrid.
            format!("4:memory:/kubepods/besteffort/pod{UID}/{ID}\n0::/"),
            // systemd driver, containerd, v2.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
                UID.replace('-', "_")
            ),
            // CRI-O with systemd.
            format!("1:name=systemd:/kubepods.slice/crio-{ID}.scope"),
            // A kubelet with its own cgroup root (local cluster).
            format!("5:pids:/node-a/kubepods/pod{UID}/{ID}"),
        ];
        for cgroup in &cases {
            assert_eq!(protected_match(cgroup, &t), Some(ID), "{cgroup}");
        }
        let runc = targets(&["default.counter-0.app"], &[]);
        assert_eq!(
            protected_match("4:memory:/ferry/default.counter-0.app\n", &runc),
            Some("default.counter-0.app")
        );
    }

    #[test]
    fn other_processes_are_never_matched() {
        let t = targets(&[ID, "default.counter-0.app"], &[UID]);
        for cgroup in [
            "0::/user.slice/user-0.slice/session-1.scope".to_owned(),
            "4:memory:/process_api/78b5bb47e70f5e844c4aa5d634250321".to_owned(),
            // Another container whose id merely contains ours.
            format!("0::/kubepods/pod0000/x{ID}"),
            format!("0::/kubepods/pod0000/{ID}0"),
            "4:memory:/ferry/default.counter-0.app2".to_owned(),
            "4:memory:/ferry/xdefault.counter-0.app".to_owned(),
            // Another pod.
            "0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc".to_owned(),
            String::new(),
            "garbage without colons".to_owned(),
        ] {
            assert_eq!(protected_match(&cgroup, &t), None, "{cgroup}");
        }
    }

    #[test]
    fn every_container_of_a_protected_pod_is_matched() {
        let t = targets(&[], &[UID]);
        let restarted = format!("4:memory:/kubepods/burstable/pod{UID}/ffff0000");
        assert_eq!(protected_match(&restarted, &t), Some(UID));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-ffff.scope",
            UID.replace('-', "_")
        );
        assert_eq!(protected_match(&systemd, &t), Some(UID));
    }

    #[test]
    fn only_matching_processes_are_killed_never_the_agent() {
        use std::os::unix::process::ExitStatusExt;
        let mut protected = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        // A /proc whose cgroup files say what the test likes, for real pids.
        let proc_root = tempfile::tempdir().unwrap();
        let fake = |pid: u32, cgroup: &str| {
            let dir = proc_root.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        };
        fake(
            protected.id(),
            &format!("4:memory:/kubepods/pod{UID}/{ID}\n"),
        );
        fake(other.id(), "4:memory:/kubepods/pod0/other00\n");
        fake(
            std::process::id(),
            &format!("4:memory:/kubepods/pod{UID}/{ID}\n"),
        );
        std::fs::create_dir(proc_root.path().join("self")).unwrap();

        let killed = kill_protected(proc_root.path(), &targets(&[ID], &[])).unwrap();
        assert_eq!(
            killed,
            [Killed {
                pid: protected.id(),
                target: ID.into()
            }]
        );
        assert_eq!(protected.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(
            other.try_wait().unwrap().is_none(),
            "the other process runs"
        );
        // Nothing protected: nothing is even looked at.
        assert!(
            kill_protected(Path::new("/nonexistent"), &FenceTargets::default())
                .unwrap()
                .is_empty()
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    fn archive(namespace: &str, pod: &str, container: &str, node: &str) -> ArchiveMeta {
        ArchiveMeta {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
            source_node: node.into(),
            ..ArchiveMeta::default()
        }
    }

    fn protected(id: &str, pod: &str, uid: &str) -> Protected {
        Protected {
            id: id.into(),
            namespace: "default".into(),
            pod: pod.into(),
            pod_uid: uid.into(),
            container: "app".into(),
        }
    }

    #[test]
    fn only_containers_with_archives_taken_here_are_targets() {
        let list = [
            protected("aaa", "counter-0", UID),
            protected("bbb", "gone-0", ""),
            protected("ccc", "replica-0", ""),
        ];
        let archives = [
            archive("default", "counter-0", "app", "node-a"),
            // A replica of another node's container does not protect it here.
            archive("default", "replica-0", "app", "node-b"),
        ];
        assert_eq!(
            fence_targets(&list, &archives, "node-a"),
            targets(&["aaa"], &[UID])
        );
        assert!(fence_targets(&list, &[], "node-a").is_empty());
    }

    #[test]
    fn the_protected_list_survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let list = ProtectedContainers::open(dir.path()).unwrap();
        assert!(list.entries().is_empty());
        assert!(list.record(protected("aaaaa", "counter-0", UID)).unwrap());
        assert!(
            !list.record(protected("aaaaa", "counter-0", UID)).unwrap(),
            "known entries are not written again"
        );
        assert!(list.record(protected("bbbbb", "counter-0", UID)).unwrap());
        assert!(
            list.record(protected("../x", "counter-0", UID)).is_err(),
            "ids are validated"
        );
        let reopened = ProtectedContainers::open(dir.path()).unwrap();
        assert_eq!(
            reopened.entries(),
            [
                protected("aaaaa", "counter-0", UID),
                protected("bbbbb", "counter-0", UID)
            ]
        );

        let mut many = Vec::new();
        for i in 0..MAX_PROTECTED {
            many = with_entry(&many, protected(&format!("id{i}"), "p", "")).unwrap();
        }
        let full = with_entry(&many, protected("newest", "p", "")).unwrap();
        assert_eq!(full.len(), MAX_PROTECTED);
        assert_eq!(full[0].id, "id1", "the oldest goes");
        assert_eq!(full[MAX_PROTECTED - 1].id, "newest");
    }
}
