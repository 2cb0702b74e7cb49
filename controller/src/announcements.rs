//! Which standbys were told to expect which container's replicas, so the
//! announcement (`ExpectReplicas`) is repeated only when it is about to run
//! out, not before every checkpoint: a standby that does not answer (paused,
//! partitioned) then delays a checkpoint once per refresh, not every
//! interval. Standbys keep announcements across restarts; one that lost
//! them refuses the next replica, and the refusal makes the controller
//! announce again ([`Announced::forget`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one announcement covers, on one standby.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AnnouncementKey {
    pub standby: String,
    pub source: String,
    pub policy: String,
    pub pod_uid: String,
    pub container: String,
}

/// Announcements made, by when.
#[derive(Debug, Default)]
pub struct Announced {
    at: Mutex<HashMap<AnnouncementKey, Instant>>,
}

impl Announced {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AnnouncementKey, Instant>> {
        self.at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` needs announcing again: never announced, or announced
    /// more than `refresh` ago.
    pub fn due(&self, key: &AnnouncementKey, refresh: Duration, now: Instant) -> bool {
        self.lock()
            .get(key)
            .is_none_or(|at| now.duration_since(*at) >= refresh)
    }

    /// Records an announcement the standby accepted; drops records older
    /// than `ttl` (pods that are gone).
    pub fn record(&self, key: AnnouncementKey, ttl: Duration, now: Instant) {
        let mut at = self.lock();
        at.retain(|_, made| now.duration_since(*made) < ttl);
        at.insert(key, now);
    }

    /// The standby refused a replica for want of an announcement.
    pub fn forget(&self, key: &AnnouncementKey) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(standby: &str) -> AnnouncementKey {
        AnnouncementKey {
            standby: standby.into(),
            source: "a".into(),
            policy: "ns/p".into(),
            pod_uid: "u".into(),
            container: "app".into(),
        }
    }

    #[test]
    fn an_announcement_is_repeated_only_when_it_is_due_or_was_refused() {
        let announced = Announced::default();
        let now = Instant::now();
        let refresh = Duration::from_secs(300);
        let ttl = Duration::from_secs(900);
        assert!(announced.due(&key("b"), refresh, now));
        announced.record(key("b"), ttl, now);
        assert!(!announced.due(&key("b"), refresh, now + Duration::from_secs(10)));
        assert!(announced.due(&key("c"), refresh, now), "another standby");
        assert!(announced.due(&key("b"), refresh, now + refresh));
        announced.forget(&key("b"));
        assert!(announced.due(&key("b"), refresh, now + Duration::from_secs(10)));
    }
}
