//! Whether the controller's view of the world is complete enough to decide
//! a failover. A new leader, or one whose caches have not synced, sees
//! nodes and agents as missing that merely have not arrived yet; an agent
//! Lease read a moment ago says little about whether it is still renewed.
//! So no failure is detected and no failover acted on until the caches
//! synced and the agents have been watched for at least one Lease period.
//! The same holds after a watch broke (an API server restart, a network
//! blip): until the watches have run without an error for a Lease period
//! again, the caches may be missing what happened meanwhile, and agents
//! whose renewals were lost with the API server look silent.

use std::time::Duration;

use crate::agents::AgentIndex;

/// How long agents are watched before their silence means anything when
/// no agent Lease states its own duration.
pub const DEFAULT_AGENT_PERIOD: Duration = Duration::from_secs(15);

/// The longest a broken watch of pods, nodes or agent Leases waits before
/// it tries again (its backoff's ceiling). With jitter a wait lasts up to
/// twice this; a view that saw no error for longer than that has had a
/// successful attempt since the last error.
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(1);

/// When the watches behind the view started, and when one last failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// When every cache had synced, on this controller's clock (`None`:
    /// not yet).
    pub synced_at: Option<jiff::Timestamp>,
    /// The last error of the pod, node or agent Lease watch, if any.
    pub failed_at: Option<jiff::Timestamp>,
}

/// Why a decision has to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Pods, nodes or agent Leases have not been listed yet.
    CachesNotSynced,
    /// The agents have been watched for less than one Lease period.
    AgentViewTooYoung { watched: Duration, needed: Duration },
    /// A watch failed less than one Lease period ago.
    WatchInterrupted { since: Duration, needed: Duration },
}

impl Incomplete {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CachesNotSynced => "caches_not_synced",
            Self::AgentViewTooYoung { .. } => "agent_view_too_young",
            Self::WatchInterrupted { .. } => "watch_interrupted",
        }
    }

    /// How long until the view may be complete; `None`: unknown.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            Self::CachesNotSynced => None,
            Self::AgentViewTooYoung { watched, needed } => Some(needed.saturating_sub(*watched)),
            Self::WatchInterrupted { since, needed } => Some(needed.saturating_sub(*since)),
        }
    }
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CachesNotSynced => write!(f, "caches of pods, nodes and agent Leases not synced"),
            Self::AgentViewTooYoung { watched, needed } => write!(
                f,
                "agents watched for {:.1}s, less than one Lease period ({:.1}s)",
                watched.as_secs_f64(),
                needed.as_secs_f64()
            ),
            Self::WatchInterrupted { since, needed } => write!(
                f,
                "a watch of pods, nodes or agent Leases failed {:.1}s ago; the view counts again once it ran {:.1}s without an error",
                since.as_secs_f64(),
                needed.as_secs_f64()
            ),
        }
    }
}

/// One Lease period: the longest duration any agent Lease states.
pub fn agent_period(agents: &AgentIndex) -> Duration {
    agents
        .by_node
        .values()
        .map(|a| a.lease_duration)
        .max()
        .unwrap_or(DEFAULT_AGENT_PERIOD)
}

/// Ok when a failover may be decided at `now`.
pub fn complete(
    watched: Watched,
    agents: &AgentIndex,
    now: jiff::Timestamp,
) -> Result<(), Incomplete> {
    let synced_at = watched.synced_at.ok_or(Incomplete::CachesNotSynced)?;
    let age = |since: jiff::Timestamp| -> Duration {
        now.duration_since(since).try_into().unwrap_or_default()
    };
    let needed = agent_period(agents);
    let watched_for = age(synced_at);
    if watched_for < needed {
        return Err(Incomplete::AgentViewTooYoung {
            watched: watched_for,
            needed,
        });
    }
    if let Some(failed_at) = watched.failed_at {
        // The retry after the error must have happened, and the agents
        // must have had a Lease period to renew through it.
        let needed = needed.max(2 * WATCH_RETRY_MAX);
        let since = age(failed_at);
        if since < needed {
            return Err(Incomplete::WatchInterrupted { since, needed });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn nothing_is_decided_before_the_caches_synced() {
        let err = complete(Watched::default(), &AgentIndex::default(), at(100)).unwrap_err();
        assert_eq!(err, Incomplete::CachesNotSynced);
        assert_eq!(err.reason(), "caches_not_synced");
    }

    #[test]
    fn a_fresh_view_waits_one_agent_lease_period() {
        let agents = AgentIndex::default();
        let fresh = Watched {
            synced_at: Some(at(0)),
            failed_at: None,
        };
        let err = complete(fresh, &agents, at(10)).unwrap_err();
        assert_eq!(err.retry_in(), Some(Duration::from_secs(5)));
        assert!(
            err.to_string()
                .contains("less than one Lease period (15.0s)")
        );
        assert_eq!(complete(fresh, &agents, at(15)), Ok(()));
    }

    #[test]
    fn a_failed_watch_closes_the_view_for_a_lease_period_after_its_last_error() {
        let agents = AgentIndex::default();
        let interrupted = Watched {
            synced_at: Some(at(0)),
            failed_at: Some(at(100)),
        };
        let err = complete(interrupted, &agents, at(110)).unwrap_err();
        assert_eq!(err.reason(), "watch_interrupted");
        assert_eq!(err.retry_in(), Some(Duration::from_secs(5)));
        assert!(err.to_string().contains("failed 10.0s ago"), "{err}");
        assert_eq!(complete(interrupted, &agents, at(115)), Ok(()));
        // A view that was still young when the watch failed waits for both.
        let young = Watched {
            synced_at: Some(at(100)),
            failed_at: Some(at(90)),
        };
        assert_eq!(
            complete(young, &agents, at(110)).unwrap_err().reason(),
            "agent_view_too_young"
        );
    }
}
