//! What this agent sees of its peers, as plain data: which peers exist (from
//! their Leases) and how their agents and kubelets answered the last probes.
//! Pure functions only; [`crate::heartbeat`] does the probing and writing.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::agent::{
    KUBELET_ENDPOINT_ANNOTATION, PeerObservation, PeerObservations, Reachability,
};
use ferry_api::names::AGENT_ENDPOINT_ANNOTATION;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// A peer agent as its Lease advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// `host:port` of its gRPC API.
    pub endpoint: String,
    /// `host:port` of its node's kubelet; `None` when it advertises none
    /// (runtimes without a kubelet).
    pub kubelet_endpoint: Option<String>,
    /// Whether its Lease was current when it was read: only such a peer is
    /// a standby the controller could restore onto.
    pub live: bool,
}

/// The peers in `leases` (every agent Lease but `me`'s), by node. A Lease
/// that is not an agent's or names an unusable endpoint is skipped. A peer
/// counts as live while its Lease is within its duration plus `skew` (the
/// renew time is the peer's clock, `now` this node's). Peers whose Lease
/// ran out stay in the list: the controller most needs to hear about the
/// nodes that stopped renewing.
pub fn peers_from_leases<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    me: &str,
    now: jiff::Timestamp,
    skew: Duration,
) -> BTreeMap<String, Peer> {
    let mut peers = BTreeMap::new();
    for lease in leases {
        let Some(node) = ferry_api::agent::lease_node(lease) else {
            continue;
        };
        if node == me || crate::names::dns_subdomain("peer node", &node).is_err() {
            continue;
        }
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let Some(endpoint) = annotations
            .get(AGENT_ENDPOINT_ANNOTATION)
            .filter(|e| crate::names::endpoint("peer endpoint", e).is_ok())
        else {
            continue;
        };
        let kubelet_endpoint = annotations
            .get(KUBELET_ENDPOINT_ANNOTATION)
            .filter(|e| crate::names::endpoint("peer kubelet endpoint", e).is_ok())
            .cloned();
        let live = lease.spec.as_ref().is_some_and(|spec| {
            let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds)
            else {
                return false;
            };
            let valid = Duration::from_secs(u64::try_from(seconds).unwrap_or(0)) + skew;
            renewed
                .0
                .checked_add(valid)
                .is_ok_and(|expires| expires > now)
        });
        peers.insert(
            node.clone(),
            Peer {
                node,
                endpoint: endpoint.clone(),
                kubelet_endpoint,
                live,
            },
        );
    }
    peers
}

/// What probing one peer found. `kubelet: None`: not probed (the peer
/// advertises no kubelet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub node: String,
    pub agent: Result<(), String>,
    /// When the peer last wrote to its Lease that it reaches this agent
    /// (its answer to our heartbeat call); `None`: never, or unknown.
    pub published_reach: Option<jiff::Timestamp>,
    /// When the peer last wrote its Lease at all; `None`: never, or unknown.
    pub last_lease_write: Option<jiff::Timestamp>,
    pub kubelet: Option<Result<(), String>>,
}

/// When this agent last wrote to its Lease that it reaches each peer's agent
/// (peer node → time of that probe): the answer to a peer's heartbeat call.
/// The heartbeat updates it after each successful Lease write.
#[derive(Debug, Default)]
pub struct PublishedReach(std::sync::Mutex<Published>);

#[derive(Debug, Default)]
struct Published {
    reach: BTreeMap<String, jiff::Timestamp>,
    written_at: Option<jiff::Timestamp>,
}

impl PublishedReach {
    /// `written` went into a Lease write that succeeded at `at`.
    pub fn published(&self, written: &PeerObservations, at: jiff::Timestamp) {
        let mut published = crate::lock(&self.0);
        published.written_at = Some(at);
        for (node, seen) in &written.peers {
            if let Some(ok) = &seen.agent.last_ok {
                published.reach.insert(node.clone(), ok.0);
            }
        }
    }

    /// When this agent last published that it reaches `node`.
    pub fn of(&self, node: &str) -> Option<jiff::Timestamp> {
        crate::lock(&self.0).reach.get(node).copied()
    }

    /// When this agent last wrote its Lease.
    pub fn written_at(&self) -> Option<jiff::Timestamp> {
        crate::lock(&self.0).written_at
    }
}

/// What a heartbeat in which every live peer answered says about the API
/// server: when that heartbeat was, and the newest Lease write any of the
/// peers reported, both on this agent's monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeersAnswered {
    pub at: std::time::Instant,
    /// `None`: no peer reported a Lease write.
    pub newest_write: Option<std::time::Instant>,
}

/// `Some` when this beat's probes reached every peer that was live when
/// last listed (and there was one).
pub fn peers_answered(
    results: &[ProbeResult],
    wall_now: jiff::Timestamp,
    mono_now: std::time::Instant,
) -> Option<PeersAnswered> {
    if results.is_empty() || results.iter().any(|r| r.agent.is_err()) {
        return None;
    }
    Some(PeersAnswered {
        at: mono_now,
        newest_write: results
            .iter()
            .filter_map(|r| r.last_lease_write)
            .max()
            .map(|at| to_instant(at, wall_now, mono_now)),
    })
}

/// Whether the API server is down for everyone at `now`: in a heartbeat at
/// most `answer_age` ago every live peer answered, and none has written
/// its Lease within `api_fresh`. Then no agent is live for the controller,
/// so nothing can be failed over, and fencing would only stop every
/// protected container in the cluster. Judged at `now`, not when the
/// answers came: the fence watchdog asks at its deadline, between beats.
pub fn api_down_for_everyone(
    answered: Option<PeersAnswered>,
    api_fresh: Duration,
    answer_age: Duration,
    now: std::time::Instant,
) -> bool {
    answered.is_some_and(|a| {
        now.saturating_duration_since(a.at) <= answer_age
            && a.newest_write
                .is_none_or(|write| now.saturating_duration_since(write) > api_fresh)
    })
}

fn to_instant(
    at: jiff::Timestamp,
    wall_now: jiff::Timestamp,
    mono_now: std::time::Instant,
) -> std::time::Instant {
    let age: Duration = wall_now.duration_since(at).try_into().unwrap_or_default();
    mono_now.checked_sub(age).unwrap_or(mono_now)
}

/// The newest contact with peers, as a point on this agent's monotonic
/// clock (`mono_now` is `wall_now`), from this beat's probes of the peers
/// that were live when last listed.
///
/// - Normally the latest reach of this agent that a peer published: contact
///   the controller can see. Contact through a peer that is cut off from
///   the API server too, or that this agent reaches but that does not reach
///   it, does not count: the controller would not know of it and would
///   count this node fenced while it is not.
/// - Except when the API server is down for everyone
///   ([`api_down_for_everyone`]): that counts as contact now.
pub fn peer_contact(
    results: &[ProbeResult],
    api_fresh: Duration,
    wall_now: jiff::Timestamp,
    mono_now: std::time::Instant,
) -> Option<std::time::Instant> {
    let answered = peers_answered(results, wall_now, mono_now);
    if api_down_for_everyone(answered, api_fresh, Duration::ZERO, mono_now) {
        return Some(mono_now);
    }
    results
        .iter()
        .filter(|r| r.agent.is_ok())
        .filter_map(|r| r.published_reach)
        .max()
        .map(|at| to_instant(at, wall_now, mono_now))
}

/// Which of a peer's things was probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Agent,
    Kubelet,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Kubelet => "kubelet",
        }
    }
}

/// A probe target that went from answering to failing or back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub node: String,
    pub target: Target,
    /// True: it answers again; false: it started failing.
    pub ok: bool,
}

/// New observations and what flipped since the previous ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub observations: PeerObservations,
    pub flips: Vec<Flip>,
}

/// Folds one round of probe `results` made at `now` into `previous`. Peers
/// without a result this round are dropped (they have no Lease any more). A
/// peer seen for the first time and failing counts as a flip, so it is
/// published at once; one seen answering does not.
pub fn track(
    previous: &PeerObservations,
    results: &[ProbeResult],
    now: jiff::Timestamp,
) -> Tracked {
    let at = MicroTime(now);
    let mut flips = Vec::new();
    let mut peers = BTreeMap::new();
    for result in results {
        let before = previous.peers.get(&result.node);
        let mut observe = |target: Target, outcome: Option<&Result<(), String>>| {
            let old = before.map(|p| match target {
                Target::Agent => &p.agent,
                Target::Kubelet => &p.kubelet,
            });
            let Some(outcome) = outcome else {
                return Reachability::default();
            };
            let new = update(old.cloned().unwrap_or_default(), outcome, &at);
            let was_failing = old.is_some_and(|r| r.failing_since.is_some());
            let is_failing = new.failing_since.is_some();
            if was_failing != is_failing {
                flips.push(Flip {
                    node: result.node.clone(),
                    target,
                    ok: !is_failing,
                });
            }
            new
        };
        let agent = observe(Target::Agent, Some(&result.agent));
        let kubelet = observe(Target::Kubelet, result.kubelet.as_ref());
        peers.insert(result.node.clone(), PeerObservation { agent, kubelet });
    }
    Tracked {
        observations: PeerObservations {
            observed_at: Some(at),
            peers,
        },
        flips,
    }
}

/// One target after one probe: success records `last_ok` and clears the
/// failure; a failure keeps the first `failing_since` and the newest error.
fn update(mut reach: Reachability, outcome: &Result<(), String>, at: &MicroTime) -> Reachability {
    match outcome {
        Ok(()) => {
            reach.last_ok = Some(at.clone());
            reach.failing_since = None;
            reach.error.clear();
        }
        Err(error) => {
            if reach.failing_since.is_none() {
                reach.failing_since = Some(at.clone());
            }
            reach.error.clone_from(error);
        }
    }
    reach
}

/// Nodes whose agent or kubelet currently fails to answer.
pub fn unreachable_count(observations: &PeerObservations) -> usize {
    observations
        .peers
        .values()
        .filter(|p| p.agent.failing_since.is_some() || p.kubelet.failing_since.is_some())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::names::AGENT_NODE_LABEL;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn result(
        node: &str,
        agent: Result<(), &str>,
        kubelet: Option<Result<(), &str>>,
    ) -> ProbeResult {
        ProbeResult {
            node: node.into(),
            agent: agent.map_err(str::to_owned),
            published_reach: None,
            last_lease_write: None,
            kubelet: kubelet.map(|k| k.map_err(str::to_owned)),
        }
    }

    #[test]
    fn the_api_server_down_for_everyone_is_judged_when_asked_not_when_answered() {
        let mono = std::time::Instant::now();
        let second = Duration::from_secs(1);
        let fresh = 3 * second;
        let mut b = result("b", Ok(()), None);
        b.last_lease_write = Some(at(8));
        // At 10 every peer answered; B wrote its Lease 2 s before.
        let answered = peers_answered(&[b.clone()], at(10), mono);
        assert_eq!(answered.unwrap().newest_write, Some(mono - 2 * second));
        assert!(!api_down_for_everyone(answered, fresh, second, mono));
        // Asked at 11.5, before the next heartbeat: B's write is 3.5 s old.
        let later = mono + 1500 * Duration::from_millis(1);
        assert!(api_down_for_everyone(answered, fresh, 2 * second, later));
        // Answers older than the allowed age say nothing.
        assert!(!api_down_for_everyone(answered, fresh, second, later));
        // A live peer that did not answer: maybe an island, never "everyone".
        let c = result("c", Err("refused"), None);
        assert_eq!(peers_answered(&[b, c], at(10), mono), None);
        assert_eq!(peers_answered(&[], at(10), mono), None);
        assert!(!api_down_for_everyone(None, fresh, second, later));
    }

    #[test]
    fn only_reach_a_peer_published_counts_as_contact() {
        let mono = std::time::Instant::now();
        let fresh = Duration::from_secs(3);
        let mut answering = result("b", Ok(()), None);
        answering.last_lease_write = Some(at(10));
        // B answers and writes its Lease, but never wrote that it reaches
        // us (our packets reach it, its packets do not reach us).
        assert_eq!(
            peer_contact(&[answering.clone()], fresh, at(10), mono),
            None
        );
        answering.published_reach = Some(at(7));
        let mut failing = result("c", Err("refused"), None);
        failing.published_reach = Some(at(9));
        let contact = peer_contact(&[answering.clone(), failing.clone()], fresh, at(10), mono);
        assert_eq!(
            mono - contact.unwrap(),
            Duration::from_secs(3),
            "B's, 3 s ago"
        );

        // B cut off from the API server as well, and C unreachable: an
        // island the controller sees as lost; B's old publication is all.
        answering.last_lease_write = Some(at(2));
        let contact = peer_contact(&[answering.clone(), failing], fresh, at(10), mono);
        assert_eq!(mono - contact.unwrap(), Duration::from_secs(3));
        // Every live peer answers and none reaches the API server: down for
        // everyone, nothing can be failed over, so no reason to fence.
        assert_eq!(peer_contact(&[answering], fresh, at(10), mono), Some(mono));
        assert_eq!(peer_contact(&[], fresh, at(10), mono), None);

        let reach = PublishedReach::default();
        let written = track(
            &PeerObservations::default(),
            &[result("b", Ok(()), None), result("c", Err("refused"), None)],
            at(5),
        )
        .observations;
        reach.published(&written, at(6));
        assert_eq!(reach.of("b"), Some(at(5)));
        assert_eq!(reach.of("c"), None);
        assert_eq!(reach.written_at(), Some(at(6)));
    }

    #[test]
    fn success_failure_and_recovery_are_tracked_per_target() {
        let start = PeerObservations::default();
        let first = track(&start, &[result("b", Ok(()), Some(Ok(())))], at(0));
        assert!(first.flips.is_empty(), "a peer seen answering is no flip");
        let b = &first.observations.peers["b"];
        assert_eq!(b.agent.last_ok, Some(MicroTime(at(0))));
        assert_eq!(b.kubelet.failing_since, None);

        // The agent dies, the kubelet still answers.
        let second = track(
            &first.observations,
            &[result("b", Err("connection refused"), Some(Ok(())))],
            at(1),
        );
        assert_eq!(
            second.flips,
            [Flip {
                node: "b".into(),
                target: Target::Agent,
                ok: false
            }]
        );
        let b = &second.observations.peers["b"];
        assert_eq!(b.agent.failing_since, Some(MicroTime(at(1))));
        assert_eq!(b.agent.last_ok, Some(MicroTime(at(0))), "last_ok is kept");
        assert_eq!(b.agent.error, "connection refused");
        assert_eq!(b.kubelet.last_ok, Some(MicroTime(at(1))));

        // Still failing: failing_since stays, the error is the newest, no flip.
        let third = track(
            &second.observations,
            &[result("b", Err("deadline exceeded"), Some(Ok(())))],
            at(2),
        );
        assert!(third.flips.is_empty());
        let b = &third.observations.peers["b"];
        assert_eq!(b.agent.failing_since, Some(MicroTime(at(1))));
        assert_eq!(b.agent.error, "deadline exceeded");
        assert_eq!(
            b.agent.failing_for(at(4)),
            Some(Duration::from_secs(3)),
            "as the controller reads it"
        );

        // Back: failure cleared, flip to ok.
        let fourth = track(
            &third.observations,
            &[result("b", Ok(()), Some(Ok(())))],
            at(3),
        );
        assert_eq!(
            fourth.flips,
            [Flip {
                node: "b".into(),
                target: Target::Agent,
                ok: true
            }]
        );
        let b = &fourth.observations.peers["b"];
        assert_eq!(b.agent.failing_since, None);
        assert!(b.agent.error.is_empty());
        assert_eq!(fourth.observations.observed_at, Some(MicroTime(at(3))));
    }

    #[test]
    fn a_new_failing_peer_is_a_flip_and_gone_peers_are_dropped() {
        let first = track(
            &PeerObservations::default(),
            &[
                result("b", Ok(()), None),
                result("c", Ok(()), Some(Err("connection refused"))),
            ],
            at(0),
        );
        assert_eq!(
            first.flips,
            [Flip {
                node: "c".into(),
                target: Target::Kubelet,
                ok: false
            }]
        );
        // No kubelet advertised: never probed, never failing.
        assert_eq!(
            first.observations.peers["b"].kubelet,
            Reachability::default()
        );
        assert_eq!(unreachable_count(&first.observations), 1);

        let second = track(&first.observations, &[result("b", Ok(()), None)], at(1));
        assert!(second.flips.is_empty());
        assert_eq!(second.observations.peers.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(unreachable_count(&second.observations), 0);
    }

    fn lease(name: &str, node: Option<&str>, renewed: i64, kubelet: Option<&str>) -> Lease {
        let mut annotations = serde_json::json!({AGENT_ENDPOINT_ANNOTATION: "10.0.0.2:50051"});
        if let Some(kubelet) = kubelet {
            annotations[KUBELET_ENDPOINT_ANNOTATION] = kubelet.into();
        }
        let mut labels = serde_json::json!({});
        if let Some(node) = node {
            labels[AGENT_NODE_LABEL] = node.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {
                "renewTime": MicroTime(at(renewed)),
                "leaseDurationSeconds": 15,
            },
        }))
        .unwrap()
    }

    #[test]
    fn peers_come_from_agent_leases_other_than_mine() {
        let leases = [
            lease("ferry-agent-a", Some("a"), 0, Some("10.0.0.1:10250")),
            lease("ferry-agent-b", Some("b"), 0, Some("10.0.0.2:10250")),
            // Named by its Lease only, expired, no kubelet.
            lease("ferry-agent-c", None, -60, None),
            // Not an agent Lease.
            lease("something-else", None, 0, None),
            // A kubelet endpoint that is not host:port is ignored.
            lease("ferry-agent-d", Some("d"), 0, Some("nonsense")),
        ];
        let peers = peers_from_leases(&leases, "a", at(10), Duration::from_secs(2));
        assert_eq!(peers.keys().collect::<Vec<_>>(), ["b", "c", "d"]);
        assert_eq!(
            peers["b"],
            Peer {
                node: "b".into(),
                endpoint: "10.0.0.2:50051".into(),
                kubelet_endpoint: Some("10.0.0.2:10250".into()),
                live: true,
            }
        );
        assert!(!peers["c"].live, "expired 45 s ago");
        assert_eq!(peers["c"].kubelet_endpoint, None);
        assert_eq!(peers["d"].kubelet_endpoint, None);
        // 15 s duration + 2 s skew.
        let later = peers_from_leases(&leases, "a", at(16), Duration::from_secs(2));
        assert!(later["b"].live);
        let later = peers_from_leases(&leases, "a", at(17), Duration::from_secs(2));
        assert!(!later["b"].live);
    }
}
