//! What a node agent publishes in its Lease for the controller and its
//! peers: how it can be reached, what it can restore, how it fences itself,
//! and what it sees of the other nodes. The agent writes these, the
//! controller reads them; both use these types so they cannot drift.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::{Deserialize, Serialize};

/// Key in the node-info annotation: the content hashes the agent names
/// archives by and verifies them by, by name ([`SHA256`], [`BLAKE3`]).
/// Absent (an agent from before BLAKE3): sha256 alone.
pub const NODE_INFO_CONTENT_HASHES: &str = "contentHashes";
pub const SHA256: &str = "sha256";
pub const BLAKE3: &str = "blake3";
/// What an archive id named by BLAKE3 starts with; 64 lowercase hex
/// digits follow. An id of the 64 digits alone is named by sha256.
pub const BLAKE3_ID_PREFIX: &str = "blake3-";

/// Whether `id` has the form of an archive id (either hash).
pub fn is_archive_id(id: &str) -> bool {
    let digits = id.strip_prefix(BLAKE3_ID_PREFIX).unwrap_or(id);
    digits.len() == 64
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lease annotation with [`PeerObservations`] (JSON).
pub const PEER_OBSERVATIONS_ANNOTATION: &str = "ferry.dev/peer-observations";

/// Lease annotation with [`FencingInfo`] (JSON). Absent: the agent does not
/// fence itself, so a failover off its node waits for the API server to
/// confirm that the old pod stopped.
pub const FENCING_ANNOTATION: &str = "ferry.dev/fencing";

/// Lease annotation with `host:port` of this node's kubelet HTTPS API, which
/// peers probe as evidence that does not share fate with the agent.
pub const KUBELET_ENDPOINT_ANNOTATION: &str = "ferry.dev/kubelet-endpoint";

/// The node an agent Lease belongs to: its node label, else the name
/// after the `ferry-agent-` prefix. `None` for Leases that are neither.
pub fn lease_node(lease: &k8s_openapi::api::coordination::v1::Lease) -> Option<String> {
    let labelled = lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::names::AGENT_NODE_LABEL));
    match labelled {
        Some(node) => Some(node.clone()),
        None => lease
            .metadata
            .name
            .as_deref()?
            .strip_prefix(crate::names::AGENT_LEASE_PREFIX)
            .map(str::to_owned),
    }
}

/// How an agent fences its node when it is cut off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FencingInfo {
    /// The agent stops every protected container on its node once neither
    /// the API server nor any peer agent has answered it for this long.
    pub timeout_millis: u64,
    /// How often the agent renews its Lease and probes its peers.
    pub heartbeat_millis: u64,
    /// How long after `timeoutMillis` of silence the fence comes at most,
    /// besides the kill pass itself: 0 for an agent that fences on a timer
    /// at the deadline. Agents that fenced on their next heartbeat do not
    /// set it; for them it is one heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_millis: Option<u64>,
    /// Pods whose containers this agent stopped by fencing, by pod UID, with
    /// when. While a pod is listed the agent keeps it stopped, so its
    /// failover can go on after the node is back, and the kubelet does not
    /// run it again in the meantime.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fenced_pods: BTreeMap<String, MicroTime>,
}

/// What one agent currently sees of every other agent's node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerObservations {
    /// When these observations were made (the agent's clock).
    pub observed_at: Option<MicroTime>,
    /// By node name.
    #[serde(default)]
    pub peers: BTreeMap<String, PeerObservation>,
}

/// One peer node as seen by the observing agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerObservation {
    /// The peer agent's gRPC health check.
    #[serde(default)]
    pub agent: Reachability,
    /// A TLS handshake with the peer node's kubelet.
    #[serde(default)]
    pub kubelet: Reachability,
}

/// Result of probing one thing repeatedly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reachability {
    /// Last time a probe succeeded; absent: never.
    pub last_ok: Option<MicroTime>,
    /// First failed probe since the last success; absent: the last probe
    /// succeeded (or none has run yet).
    pub failing_since: Option<MicroTime>,
    /// Why the last probe failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Reachability {
    /// How long it has been failing at `now`; `None` while it answers.
    pub fn failing_for(&self, now: jiff::Timestamp) -> Option<std::time::Duration> {
        let since = self.failing_since.as_ref()?.0;
        Some(
            now.duration_since(since)
                .try_into()
                .unwrap_or(std::time::Duration::ZERO),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_round_trip_in_camel_case() {
        let at = MicroTime("2026-12-05T10:00:00.250Z".parse().unwrap());
        let observations = PeerObservations {
            observed_at: Some(at.clone()),
            peers: BTreeMap::from([(
                "node-b".to_owned(),
                PeerObservation {
                    agent: Reachability {
                        last_ok: Some(at.clone()),
                        failing_since: None,
                        error: String::new(),
                    },
                    kubelet: Reachability {
                        last_ok: None,
                        failing_since: Some(at),
                        error: "connection refused".into(),
                    },
                },
            )]),
        };
        let json = serde_json::to_value(&observations).unwrap();
        assert_eq!(
            json["peers"]["node-b"]["kubelet"]["failingSince"],
            "2026-12-05T10:00:00.250000Z"
        );
        let back: PeerObservations = serde_json::from_value(json).unwrap();
        assert_eq!(back, observations);
        let now: jiff::Timestamp = "2026-12-05T10:00:03.250Z".parse().unwrap();
        assert_eq!(
            back.peers["node-b"].kubelet.failing_for(now),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(back.peers["node-b"].agent.failing_for(now), None);
    }
}
