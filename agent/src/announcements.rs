//! Which replicas this agent accepts: the controller announces, before each
//! checkpoint, that the agent of one node will send archives of one
//! container of one policy. A replica that no announcement covers, or that
//! comes from another node than announced, is refused. Announcements expire,
//! so a node that stopped being a container's source stops being trusted
//! for it. They are kept on disk too, so a standby that restarts in the
//! middle of a transfer still accepts the sender's retry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What an announcement covers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    pub source_node: String,
    /// `namespace/name` of the CheckpointPolicy.
    pub policy: String,
    pub namespace: String,
    pub pod_uid: String,
    pub container: String,
}

/// Bound on how many announcements are held (a controller announces one per
/// protected container and standby).
const MAX_ANNOUNCEMENTS: usize = 100_000;

/// Longest an announcement may hold.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct Announcements {
    until: Mutex<HashMap<Expected, SystemTime>>,
    /// Where they are kept; `None`: in memory only.
    file: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    expected: Expected,
    until_unix_millis: u64,
}

impl Announcements {
    /// Announcements kept in `file`, loaded from it. An unreadable file is
    /// no announcement (the controller repeats them before each checkpoint).
    pub fn open(file: &Path) -> Self {
        let saved: Vec<Saved> = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let until = saved
            .into_iter()
            .map(|s| {
                (
                    s.expected,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(s.until_unix_millis),
                )
            })
            .collect();
        Self {
            until: Mutex::new(until),
            file: Some(file.to_owned()),
        }
    }

    fn save(&self, until: &HashMap<Expected, SystemTime>) {
        let Some(file) = &self.file else { return };
        let saved: Vec<Saved> = until
            .iter()
            .map(|(expected, until)| Saved {
                expected: expected.clone(),
                until_unix_millis: until
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let temporary = file.with_extension("tmp");
                std::fs::write(&temporary, bytes)?;
                std::fs::rename(&temporary, file)
            });
        if let Err(err) = written {
            tracing::warn!(file = %file.display(), error = %err, "keeping replica announcements on disk failed; they hold in memory");
        }
    }

    pub fn announce(&self, expected: Expected, ttl: Duration, now: SystemTime) {
        let mut until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.retain(|_, expires| *expires > now);
        if until.len() >= MAX_ANNOUNCEMENTS && !until.contains_key(&expected) {
            // Full of live announcements: the oldest-expiring one goes.
            if let Some(first) = until
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                until.remove(&first);
            }
        }
        let expires = now + ttl.min(MAX_TTL);
        // Renewing an announcement that still holds for long needs no write.
        let known = until.get(&expected).copied();
        until.insert(expected, expires);
        if known.is_none_or(|known| known + ttl.min(MAX_TTL) / 2 < expires) {
            self.save(&until);
        }
    }

    /// Whether a replica with these facts, sent by the agent of
    /// `caller_node`, was announced; the error says what is missing.
    pub fn check(
        &self,
        caller_node: &str,
        replica: &Expected,
        now: SystemTime,
    ) -> Result<(), String> {
        if replica.source_node != caller_node {
            return Err(format!(
                "the archive was taken on node {}, so only that node's agent may send it",
                replica.source_node
            ));
        }
        let until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match until.get(replica) {
            Some(expires) if *expires > now => Ok(()),
            Some(_) => Err(format!(
                "the controller's announcement of container {}/{} of policy {} from node {} expired",
                replica.namespace, replica.container, replica.policy, replica.source_node
            )),
            None => Err(format!(
                "the controller announced no replicas of container {}/{} (pod {}) of policy {} from node {}",
                replica.namespace,
                replica.container,
                replica.pod_uid,
                replica.policy,
                replica.source_node
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(source: &str) -> Expected {
        Expected {
            source_node: source.into(),
            policy: "demo/counter".into(),
            namespace: "demo".into(),
            pod_uid: "uid-1".into(),
            container: "app".into(),
        }
    }

    #[test]
    fn an_announced_replica_is_accepted_from_its_source_only() {
        let now = SystemTime::now();
        let announcements = Announcements::default();
        announcements.announce(expected("a"), Duration::from_secs(60), now);
        assert_eq!(announcements.check("a", &expected("a"), now), Ok(()));
        let err = announcements.check("c", &expected("a"), now).unwrap_err();
        assert!(err.contains("only that node's agent"), "{err}");
        // A node that claims to be the source of what it sends still needs
        // an announcement.
        let err = announcements.check("c", &expected("c"), now).unwrap_err();
        assert!(err.contains("announced no replicas"), "{err}");
    }

    #[test]
    fn announcements_expire() {
        let now = SystemTime::now();
        let announcements = Announcements::default();
        announcements.announce(expected("a"), Duration::from_secs(60), now);
        let later = now + Duration::from_secs(61);
        assert!(
            announcements
                .check("a", &expected("a"), later)
                .unwrap_err()
                .contains("expired")
        );
    }

    #[test]
    fn announcements_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("announcements.json");
        let now = SystemTime::now();
        Announcements::open(&file).announce(expected("a"), Duration::from_secs(60), now);
        assert_eq!(
            Announcements::open(&file).check("a", &expected("a"), now),
            Ok(())
        );
    }

    #[test]
    fn another_container_or_pod_is_not_covered() {
        let now = SystemTime::now();
        let announcements = Announcements::default();
        announcements.announce(expected("a"), Duration::from_secs(60), now);
        let mut other = expected("a");
        other.pod_uid = "uid-2".into();
        assert!(announcements.check("a", &other, now).is_err());
        let mut other = expected("a");
        other.policy = "demo/other".into();
        assert!(announcements.check("a", &other, now).is_err());
    }
}
