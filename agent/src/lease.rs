//! The agent's Lease: one `coordination.k8s.io` Lease per node, renewed every
//! heartbeat (see [`crate::heartbeat`]), that tells the controller where this
//! agent listens, what it can restore, how it fences itself and what it sees
//! of its peers. A Lease that stops being renewed means the agent (or its
//! node, or its network) is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::agent::{
    FENCING_ANNOTATION, FencingInfo, KUBELET_ENDPOINT_ANNOTATION, NODE_INFO_CONTENT_HASHES,
    PEER_OBSERVATIONS_ANNOTATION, PeerObservations,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::content_hash::ContentHash;
use crate::service::NodeFacts;

/// Field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "ferry-agent";
pub use ferry_api::names::{
    AGENT_COMPONENT_LABEL as COMPONENT_LABEL, AGENT_ENDPOINT_ANNOTATION as ENDPOINT_ANNOTATION,
    AGENT_NODE_INFO_ANNOTATION as NODE_INFO_ANNOTATION, AGENT_NODE_LABEL as NODE_LABEL,
};

/// Where and how the Lease is kept.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    /// `host:port` peers and the controller dial.
    pub endpoint: String,
    /// Who holds the Lease (the agent pod's name).
    pub holder: String,
    pub duration: Duration,
    /// `host:port` of this node's kubelet, which peers probe; `None` on
    /// runtimes without a kubelet.
    pub kubelet_endpoint: Option<String>,
    /// How this agent fences itself; `None`: it does not.
    pub fencing: Option<FencingInfo>,
}

/// Name of the Lease of `node`.
pub fn lease_name(node: &str) -> String {
    format!("{}{node}", ferry_api::names::AGENT_LEASE_PREFIX)
}

/// The Lease as applied at `now`, with what this agent sees of its peers
/// and the pods it keeps fenced (pod UID → when).
pub fn desired_lease(
    config: &LeaseConfig,
    facts: &NodeFacts,
    observations: &PeerObservations,
    fenced_pods: &BTreeMap<String, jiff::Timestamp>,
    now: jiff::Timestamp,
) -> serde_json::Value {
    let node_info = serde_json::json!({
        "runtime": facts.runtime,
        "architecture": facts.architecture,
        "kernelVersion": facts.kernel_version,
        "criuVersion": facts.criu_version,
        "containerRuntime": facts.container_runtime,
        "restoreHandler": facts.restore_handler,
        "agentVersion": env!("CARGO_PKG_VERSION"),
        // What the controller may ask this agent to name archives by, and
        // what it verifies from peers.
        NODE_INFO_CONTENT_HASHES: ContentHash::SUPPORTED.map(ContentHash::name),
    });
    let mut annotations = serde_json::json!({
        ENDPOINT_ANNOTATION: config.endpoint,
        NODE_INFO_ANNOTATION: node_info.to_string(),
        PEER_OBSERVATIONS_ANNOTATION: serde_json::to_string(observations).unwrap_or_default(),
    });
    if let Some(kubelet) = &config.kubelet_endpoint {
        annotations[KUBELET_ENDPOINT_ANNOTATION] = kubelet.as_str().into();
    }
    if let Some(fencing) = &config.fencing {
        let fencing = FencingInfo {
            fenced_pods: fenced_pods
                .iter()
                .map(|(uid, at)| (uid.clone(), MicroTime(*at)))
                .collect(),
            ..fencing.clone()
        };
        annotations[FENCING_ANNOTATION] =
            serde_json::to_string(&fencing).unwrap_or_default().into();
    }
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(&facts.node_name),
            "namespace": config.namespace,
            "labels": {
                COMPONENT_LABEL.0: COMPONENT_LABEL.1,
                NODE_LABEL: facts.node_name,
            },
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": config.holder,
            "leaseDurationSeconds": config.duration.as_secs(),
            // MicroTime: RFC 3339 with microseconds.
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::agent::{PeerObservation, Reachability};
    use k8s_openapi::api::coordination::v1::Lease;

    #[test]
    fn lease_advertises_endpoint_node_facts_fencing_and_peers() {
        let config = LeaseConfig {
            namespace: "ferry-system".into(),
            endpoint: "10.0.0.7:50051".into(),
            holder: "ferry-agent-x2k1".into(),
            duration: Duration::from_secs(15),
            kubelet_endpoint: Some("10.0.0.7:10250".into()),
            fencing: Some(FencingInfo {
                timeout_millis: 3000,
                heartbeat_millis: 1000,
                ..FencingInfo::default()
            }),
        };
        let facts = NodeFacts {
            node_name: "node-a".into(),
            runtime: "kubelet".into(),
            architecture: "amd64".into(),
            kernel_version: "6.18.0".into(),
            criu_version: "4.2.1".into(),
            container_runtime: "containerd".into(),
            restore_handler: "ferry".into(),
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let observations = PeerObservations {
            observed_at: Some(MicroTime(now)),
            peers: [(
                "node-b".to_owned(),
                PeerObservation {
                    agent: Reachability {
                        last_ok: None,
                        failing_since: Some(MicroTime(now)),
                        error: "connection refused".into(),
                    },
                    kubelet: Reachability::default(),
                },
            )]
            .into(),
        };
        let fenced = BTreeMap::from([("uid-1".to_owned(), now)]);
        let lease = desired_lease(&config, &facts, &observations, &fenced, now);
        assert_eq!(lease["metadata"]["name"], "ferry-agent-node-a");
        assert_eq!(
            lease["metadata"]["annotations"][ENDPOINT_ANNOTATION],
            "10.0.0.7:50051"
        );
        assert_eq!(lease["spec"]["renewTime"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        let info: serde_json::Value = serde_json::from_str(
            lease["metadata"]["annotations"][NODE_INFO_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(info["criuVersion"], "4.2.1");
        assert_eq!(info["restoreHandler"], "ferry");
        assert_eq!(
            info["contentHashes"],
            serde_json::json!(["sha256", "blake3"])
        );
        let annotations = &lease["metadata"]["annotations"];
        assert_eq!(annotations[KUBELET_ENDPOINT_ANNOTATION], "10.0.0.7:10250");
        let fencing: FencingInfo =
            serde_json::from_str(annotations[FENCING_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(fencing.timeout_millis, 3000);
        assert_eq!(fencing.fenced_pods["uid-1"], MicroTime(now));
        let published: PeerObservations =
            serde_json::from_str(annotations[PEER_OBSERVATIONS_ANNOTATION].as_str().unwrap())
                .unwrap();
        assert_eq!(published, observations);
        // It parses as a Lease.
        let _: Lease = serde_json::from_value(lease.clone()).unwrap();

        // No kubelet, no fencing: neither annotation.
        let bare = LeaseConfig {
            kubelet_endpoint: None,
            fencing: None,
            ..config
        };
        let lease = desired_lease(
            &bare,
            &facts,
            &PeerObservations::default(),
            &BTreeMap::new(),
            now,
        );
        let annotations = lease["metadata"]["annotations"].as_object().unwrap();
        assert!(!annotations.contains_key(KUBELET_ENDPOINT_ANNOTATION));
        assert!(!annotations.contains_key(FENCING_ANNOTATION));
        assert!(annotations.contains_key(PEER_OBSERVATIONS_ANNOTATION));
    }
}
