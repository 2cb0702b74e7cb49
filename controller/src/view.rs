//! Whether the controller's view of the world is complete enough to decide
//! a failover. A new leader, or one whose caches have not synced, sees
//! nodes and agents as missing that merely have not arrived yet; an agent
//! Lease read a moment ago says little about whether it is still renewed.
//! So no failure is detected and no failover acted on until the caches
//! synced and the agents have been watched for at least one Lease period.

use std::time::Duration;

use crate::agents::AgentIndex;

/// How long agents are watched before their silence means anything when
/// no agent Lease states its own duration.
pub const DEFAULT_AGENT_PERIOD: Duration = Duration::from_secs(15);

/// Why a decision has to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Pods, nodes or agent Leases have not been listed yet.
    CachesNotSynced,
    /// The agents have been watched for less than one Lease period.
    AgentViewTooYoung { watched: Duration, needed: Duration },
}

impl Incomplete {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CachesNotSynced => "caches_not_synced",
            Self::AgentViewTooYoung { .. } => "agent_view_too_young",
        }
    }

    /// How long until the view may be complete; `None`: unknown.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            Self::CachesNotSynced => None,
            Self::AgentViewTooYoung { watched, needed } => Some(needed.saturating_sub(*watched)),
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

/// `synced_at`: when every cache had synced, on this controller's clock
/// (`None`: not yet). Ok when a failover may be decided at `now`.
pub fn complete(
    synced_at: Option<jiff::Timestamp>,
    agents: &AgentIndex,
    now: jiff::Timestamp,
) -> Result<(), Incomplete> {
    let synced_at = synced_at.ok_or(Incomplete::CachesNotSynced)?;
    let watched: Duration = now.duration_since(synced_at).try_into().unwrap_or_default();
    let needed = agent_period(agents);
    if watched < needed {
        return Err(Incomplete::AgentViewTooYoung { watched, needed });
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
        let err = complete(None, &AgentIndex::default(), at(100)).unwrap_err();
        assert_eq!(err, Incomplete::CachesNotSynced);
        assert_eq!(err.reason(), "caches_not_synced");
    }

    #[test]
    fn a_fresh_view_waits_one_agent_lease_period() {
        let agents = AgentIndex::default();
        let err = complete(Some(at(0)), &agents, at(10)).unwrap_err();
        assert_eq!(err.retry_in(), Some(Duration::from_secs(5)));
        assert!(
            err.to_string()
                .contains("less than one Lease period (15.0s)")
        );
        assert_eq!(complete(Some(at(0)), &agents, at(15)), Ok(()));
    }
}
