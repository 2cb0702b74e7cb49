//! Is a node lost? Decided only on evidence from sources that do not share
//! fate with what failed: the API server's view of the node (the kubelet's
//! heartbeats), and peer agents that can no longer reach the node's agent
//! *and* its kubelet. An agent that stops renewing its Lease on a node the
//! API server sees Ready is an agent outage: the policy is Degraded, and no
//! pod is touched. Pure functions over plain data.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use ferry_api::agent::{PeerObservation, Reachability};

use crate::agents::{AgentIndex, AgentInfo};
use crate::placement::node_ready_condition;

/// The thresholds of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// How long the API server must report the node NotReady.
    pub not_ready: Duration,
    /// How long every peer must have failed to reach the node's agent and
    /// kubelet, and the node's agent must have been silent.
    pub unreachable: Duration,
}

/// What is known of one node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeHealth {
    Healthy,
    /// Something is wrong but it is no node loss (yet): why, and when the
    /// verdict would change if nothing else does.
    Suspect {
        why: String,
        recheck_in: Option<Duration>,
    },
    Lost(NodeLoss),
}

/// The evidence that a node is lost, and what is known about when it was
/// last in contact (for fencing).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoss {
    pub evidence: Vec<String>,
    /// The last moment anything heard from the node: its agent's last Lease
    /// renewal or a peer's last successful probe of its agent. `None`: never
    /// heard from (no agent).
    pub last_contact: Option<jiff::Timestamp>,
}

fn elapsed(now: jiff::Timestamp, since: jiff::Timestamp) -> Duration {
    now.duration_since(since).try_into().unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The health of `node_name` at `now`. `nodes` must come from a synced
/// cache: a node missing from it was deleted.
pub fn node_health(
    node_name: &str,
    nodes: &BTreeMap<String, &Node>,
    agents: &AgentIndex,
    thresholds: Thresholds,
    now: jiff::Timestamp,
) -> NodeHealth {
    let agent = agents.get(node_name);
    let last_contact = last_contact(node_name, agent, agents);
    let Some(node) = nodes.get(node_name) else {
        return NodeHealth::Lost(NodeLoss {
            evidence: vec![format!("node {node_name} was deleted from the API server")],
            last_contact,
        });
    };
    let mut suspicions = Vec::new();
    let mut recheck: Option<Duration> = None;
    let mut soonest = |wait: Duration| {
        recheck = Some(recheck.map_or(wait, |r: Duration| r.min(wait)));
    };

    if let Some(ready) = node_ready_condition(node)
        && ready.status != "True"
    {
        let down_for = ready
            .last_transition_time
            .as_ref()
            .map_or(thresholds.not_ready, |t| elapsed(now, t.0));
        let evidence = format!(
            "API server: node {node_name} Ready={} for {} ({})",
            ready.status,
            secs(down_for),
            ready.reason.as_deref().unwrap_or("no reason given")
        );
        if down_for >= thresholds.not_ready {
            return NodeHealth::Lost(NodeLoss {
                evidence: vec![evidence],
                last_contact,
            });
        }
        soonest(thresholds.not_ready - down_for);
        suspicions.push(evidence);
    }

    match peer_verdict(node_name, agent, agents, thresholds.unreachable, now) {
        PeerVerdict::Lost(evidence) => {
            return NodeHealth::Lost(NodeLoss {
                evidence,
                last_contact,
            });
        }
        PeerVerdict::Suspect(why, wait) => {
            suspicions.push(why);
            if let Some(wait) = wait {
                soonest(wait);
            }
        }
        PeerVerdict::Fine => {}
    }
    if suspicions.is_empty() {
        NodeHealth::Healthy
    } else {
        NodeHealth::Suspect {
            why: suspicions.join("; "),
            recheck_in: recheck,
        }
    }
}

enum PeerVerdict {
    Fine,
    Suspect(String, Option<Duration>),
    Lost(Vec<String>),
}

/// The fast path: the node's agent is silent, and every live peer has
/// failed for long enough to reach both that agent and the node's kubelet.
fn peer_verdict(
    node_name: &str,
    agent: Option<&AgentInfo>,
    agents: &AgentIndex,
    threshold: Duration,
    now: jiff::Timestamp,
) -> PeerVerdict {
    let Some(agent) = agent else {
        // No agent ever ran there: only the API server can tell.
        return PeerVerdict::Fine;
    };
    let silent_for = elapsed(now, agent.renewed);
    // The Lease is renewed every heartbeat; silence is measured from the
    // last renewal, so it shows an outage long before the Lease expires.
    let silence = agent
        .fencing
        .as_ref()
        .map(|f| Duration::from_millis(f.heartbeat_millis.saturating_mul(2)))
        .unwrap_or(agent.lease_duration)
        .max(threshold);
    if silent_for < silence && agent.live(now) {
        // Peers already miss it: look again once its silence would count,
        // or a failure seen early would wait for some unrelated event.
        let missed_by = agents.by_node.values().find(|peer| {
            peer.node != node_name
                && peer.live(now)
                && peer
                    .observations
                    .peers
                    .get(node_name)
                    .is_some_and(|seen| seen.agent.failing_since.is_some())
        });
        return match missed_by {
            Some(peer) => PeerVerdict::Suspect(
                format!(
                    "peer {} cannot reach the agent of node {node_name}, which renewed its Lease {} ago",
                    peer.node,
                    secs(silent_for)
                ),
                Some(silence - silent_for),
            ),
            None => PeerVerdict::Fine,
        };
    }
    let outage = format!(
        "agent of node {node_name} has not renewed its Lease for {}",
        secs(silent_for)
    );
    let peers: Vec<&AgentInfo> = agents
        .by_node
        .values()
        .filter(|peer| peer.node != node_name && peer.live(now))
        .collect();
    if peers.is_empty() {
        return PeerVerdict::Suspect(
            format!("{outage}; no live peer agent can confirm a node loss"),
            None,
        );
    }
    if !agent.kubelet_probed {
        return PeerVerdict::Suspect(
            format!(
                "{outage}; its kubelet is not probed by peers, so only NotReady can show a node loss"
            ),
            None,
        );
    }
    let mut evidence = vec![outage.clone()];
    let mut wait = Duration::ZERO;
    for peer in &peers {
        let Some(seen) = peer.observations.peers.get(node_name) else {
            return PeerVerdict::Suspect(
                format!("{outage}; peer {} has not reported on it", peer.node),
                None,
            );
        };
        let agent_down = seen.agent.failing_for(now);
        let kubelet_down = seen.kubelet.failing_for(now);
        let (Some(agent_down), Some(kubelet_down)) = (agent_down, kubelet_down) else {
            let reachable = if kubelet_down.is_none() {
                "its kubelet"
            } else {
                "its agent"
            };
            return PeerVerdict::Suspect(
                format!(
                    "{outage}; peer {} still reaches {reachable}: an agent outage, not a node loss",
                    peer.node
                ),
                None,
            );
        };
        let down = agent_down.min(kubelet_down);
        wait = wait.max(threshold.saturating_sub(down));
        evidence.push(format!(
            "peer {} cannot reach its agent for {} ({}) nor its kubelet for {} ({})",
            peer.node,
            secs(agent_down),
            seen.agent.error,
            secs(kubelet_down),
            seen.kubelet.error
        ));
    }
    if wait.is_zero() {
        PeerVerdict::Lost(evidence)
    } else {
        PeerVerdict::Suspect(
            format!(
                "{}; lost in {} unless it answers",
                evidence.join("; "),
                secs(wait)
            ),
            Some(wait),
        )
    }
}

/// The last time anything heard from the agent of `node_name`: its own
/// Lease renewal or a peer's successful probe.
pub fn last_contact_of(node_name: &str, agents: &AgentIndex) -> Option<jiff::Timestamp> {
    last_contact(node_name, agents.get(node_name), agents)
}

/// The last time a peer agent reached the node's kubelet.
pub fn kubelet_contact_of(node_name: &str, agents: &AgentIndex) -> Option<jiff::Timestamp> {
    last_reached(node_name, agents, |o| &o.kubelet)
}

/// The last time anything heard from the node's agent.
fn last_contact(
    node_name: &str,
    agent: Option<&AgentInfo>,
    agents: &AgentIndex,
) -> Option<jiff::Timestamp> {
    let renewed = agent.map(|a| a.renewed);
    renewed.max(last_reached(node_name, agents, |o| &o.agent))
}

/// The last time any peer reached `target` of the node.
fn last_reached(
    node_name: &str,
    agents: &AgentIndex,
    target: impl Fn(&PeerObservation) -> &Reachability,
) -> Option<jiff::Timestamp> {
    agents
        .by_node
        .values()
        .filter(|peer| peer.node != node_name)
        .filter_map(|peer| {
            target(peer.observations.peers.get(node_name)?)
                .last_ok
                .as_ref()
        })
        .map(|t| t.0)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::agent::{FencingInfo, PeerObservation, PeerObservations, Reachability};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn at(ms: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
    }

    fn node(name: &str, ready: &str, since_ms: i64) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready,
                "reason": "NodeStatusUnknown",
                "lastTransitionTime": at(since_ms).to_string()}]},
        }))
        .unwrap()
    }

    fn agent(name: &str, renewed_ms: i64) -> AgentInfo {
        AgentInfo {
            node: name.into(),
            endpoint: format!("{name}:1"),
            renewed: at(renewed_ms),
            lease_duration: Duration::from_secs(6),
            architecture: String::new(),
            criu_version: String::new(),
            kernel_version: String::new(),
            restore_handler: String::new(),
            fencing: Some(FencingInfo {
                timeout_millis: 3000,
                heartbeat_millis: 1000,
                ..FencingInfo::default()
            }),
            kubelet_probed: true,
            observations: PeerObservations::default(),
            content_hashes: Vec::new(),
        }
    }

    fn down_since(ms: i64) -> Reachability {
        Reachability {
            last_ok: Some(MicroTime(at(ms - 1000))),
            failing_since: Some(MicroTime(at(ms))),
            error: "timed out".into(),
        }
    }

    fn up(ms: i64) -> Reachability {
        Reachability {
            last_ok: Some(MicroTime(at(ms))),
            ..Reachability::default()
        }
    }

    struct World {
        nodes: Vec<Node>,
        agents: AgentIndex,
    }

    impl World {
        /// Nodes a and b, both Ready, agents renewed at 0.
        fn new() -> Self {
            let mut agents = AgentIndex::default();
            for name in ["a", "b"] {
                agents.by_node.insert(name.into(), agent(name, 0));
            }
            Self {
                nodes: vec![node("a", "True", -100_000), node("b", "True", -100_000)],
                agents,
            }
        }

        fn observe(&mut self, observer: &str, of: &str, seen: PeerObservation) {
            let peer = self.agents.by_node.get_mut(observer).unwrap();
            peer.observations.peers.insert(of.into(), seen);
        }

        fn health(&self, node: &str, now_ms: i64) -> NodeHealth {
            let nodes: BTreeMap<String, &Node> = self
                .nodes
                .iter()
                .map(|n| (n.metadata.name.clone().unwrap(), n))
                .collect();
            node_health(
                node,
                &nodes,
                &self.agents,
                Thresholds {
                    not_ready: Duration::from_secs(20),
                    unreachable: Duration::from_secs(2),
                },
                at(now_ms),
            )
        }
    }

    fn suspect(health: &NodeHealth) -> &str {
        match health {
            NodeHealth::Suspect { why, .. } => why,
            other => panic!("expected Suspect, got {other:?}"),
        }
    }

    #[test]
    fn a_ready_node_with_fresh_agents_is_healthy() {
        assert_eq!(World::new().health("a", 500), NodeHealth::Healthy);
    }

    #[test]
    fn an_agent_outage_on_a_ready_node_is_never_node_loss() {
        let mut world = World::new();
        // a's agent is gone for a minute; b still reaches a's kubelet.
        world.agents.by_node.get_mut("b").unwrap().renewed = at(60_000);
        world.observe(
            "b",
            "a",
            PeerObservation {
                agent: down_since(1_000),
                kubelet: up(60_000),
            },
        );
        let health = world.health("a", 60_000);
        assert!(
            suspect(&health).contains("still reaches its kubelet"),
            "{health:?}"
        );
        // Even with no peer report at all, an expired Lease alone is no loss.
        world.observe("b", "a", PeerObservation::default());
        assert!(matches!(
            world.health("a", 60_000),
            NodeHealth::Suspect { .. }
        ));
        world.agents.by_node.remove("b");
        assert!(suspect(&world.health("a", 60_000)).contains("no live peer"));
    }

    #[test]
    fn peers_losing_agent_and_kubelet_is_node_loss_after_the_threshold() {
        let mut world = World::new();
        world.agents.by_node.get_mut("b").unwrap().renewed = at(3_000);
        world.observe(
            "b",
            "a",
            PeerObservation {
                agent: down_since(500),
                kubelet: down_since(800),
            },
        );
        // At 2.5 s: a silent for 2.5 s, but the kubelet only down 1.7 s.
        match world.health("a", 2_500) {
            NodeHealth::Suspect { recheck_in, why } => {
                assert_eq!(recheck_in, Some(Duration::from_millis(300)), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let NodeHealth::Lost(loss) = world.health("a", 2_800) else {
            panic!("expected loss");
        };
        assert!(loss.evidence[0].contains("not renewed its Lease for 2.8s"));
        assert!(loss.evidence[1].contains("peer b cannot reach its agent"));
        // The last contact is the later of a's renewal and b's last probe.
        assert_eq!(loss.last_contact, Some(at(0)));
    }

    #[test]
    fn a_peer_that_misses_a_fresh_agent_brings_the_verdict_forward() {
        let mut world = World::new();
        world.agents.by_node.get_mut("b").unwrap().renewed = at(700);
        world.observe(
            "b",
            "a",
            PeerObservation {
                agent: down_since(600),
                kubelet: down_since(600),
            },
        );
        // a renewed at 0, silent for 0.7 s: not yet, but look again at 2 s.
        match world.health("a", 700) {
            NodeHealth::Suspect { recheck_in, .. } => {
                assert_eq!(recheck_in, Some(Duration::from_millis(1300)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_live_lease_outweighs_peers_that_cannot_reach_the_node() {
        // A partition between agents only: a still talks to the API server.
        let mut world = World::new();
        world.agents.by_node.get_mut("a").unwrap().renewed = at(9_500);
        world.agents.by_node.get_mut("b").unwrap().renewed = at(9_500);
        world.observe(
            "b",
            "a",
            PeerObservation {
                agent: down_since(0),
                kubelet: down_since(0),
            },
        );
        // Degraded (the peers cannot reach it), never lost.
        let health = world.health("a", 10_000);
        assert!(
            suspect(&health).contains("renewed its Lease 0.5s ago"),
            "{health:?}"
        );
    }

    #[test]
    fn every_live_peer_must_agree() {
        let mut world = World::new();
        world.nodes.push(node("c", "True", -100_000));
        world.agents.by_node.insert("c".into(), agent("c", 5_000));
        world.agents.by_node.get_mut("b").unwrap().renewed = at(5_000);
        let lost = PeerObservation {
            agent: down_since(0),
            kubelet: down_since(0),
        };
        world.observe("b", "a", lost.clone());
        world.observe(
            "c",
            "a",
            PeerObservation {
                agent: down_since(0),
                kubelet: up(5_000),
            },
        );
        assert!(suspect(&world.health("a", 5_000)).contains("peer c still reaches its kubelet"));
        world.observe("c", "a", lost);
        assert!(matches!(world.health("a", 5_000), NodeHealth::Lost(_)));
        // A peer whose own Lease expired does not count either way.
        world.observe("c", "a", PeerObservation::default());
        world.agents.by_node.get_mut("c").unwrap().renewed = at(-60_000);
        assert!(matches!(world.health("a", 5_000), NodeHealth::Lost(_)));
    }

    #[test]
    fn not_ready_past_the_grace_period_is_node_loss() {
        let mut world = World::new();
        world.nodes[0] = node("a", "Unknown", 0);
        match world.health("a", 15_000) {
            NodeHealth::Suspect { recheck_in, .. } => {
                assert_eq!(recheck_in, Some(Duration::from_secs(5)));
            }
            other => panic!("{other:?}"),
        }
        let NodeHealth::Lost(loss) = world.health("a", 20_000) else {
            panic!("expected loss");
        };
        assert!(loss.evidence[0].contains("Ready=Unknown for 20.0s"));
    }

    #[test]
    fn a_deleted_node_is_lost_and_a_node_without_agent_is_judged_by_readiness() {
        let mut world = World::new();
        assert!(matches!(world.health("gone", 0), NodeHealth::Lost(_)));
        world.agents.by_node.remove("a");
        world.agents.by_node.get_mut("b").unwrap().renewed = at(60_000);
        assert_eq!(world.health("a", 60_000), NodeHealth::Healthy);
    }

    #[test]
    fn a_node_whose_kubelet_nobody_probes_needs_not_ready() {
        let mut world = World::new();
        world.agents.by_node.get_mut("a").unwrap().kubelet_probed = false;
        world.agents.by_node.get_mut("b").unwrap().renewed = at(60_000);
        world.observe(
            "b",
            "a",
            PeerObservation {
                agent: down_since(0),
                kubelet: down_since(0),
            },
        );
        assert!(suspect(&world.health("a", 60_000)).contains("only NotReady"));
    }
}
