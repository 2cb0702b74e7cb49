//! The agent's Lease: one `coordination.k8s.io` Lease per node, renewed every
//! few seconds, that tells the controller where this agent listens and what
//! it can restore. A Lease that stops being renewed means the agent (or its
//! node) is gone.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

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
    pub renew_every: Duration,
}

/// Name of the Lease of `node`.
pub fn lease_name(node: &str) -> String {
    format!("{}{node}", ferry_api::names::AGENT_LEASE_PREFIX)
}

/// The Lease as applied at `now`.
pub fn desired_lease(
    config: &LeaseConfig,
    facts: &NodeFacts,
    now: jiff::Timestamp,
) -> serde_json::Value {
    let node_info = serde_json::json!({
        "runtime": facts.runtime,
        "architecture": facts.architecture,
        "kernelVersion": facts.kernel_version,
        "criuVersion": facts.criu_version,
        "containerRuntime": facts.container_runtime,
        "agentVersion": env!("CARGO_PKG_VERSION"),
    });
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
            "annotations": {
                ENDPOINT_ANNOTATION: config.endpoint,
                NODE_INFO_ANNOTATION: node_info.to_string(),
            },
        },
        "spec": {
            "holderIdentity": config.holder,
            "leaseDurationSeconds": config.duration.as_secs(),
            // MicroTime: RFC 3339 with microseconds.
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    })
}

/// Renews the Lease until the process ends. Failures are logged and retried
/// at the next tick: a missed renewal or two is what the duration allows.
pub async fn keep_lease(client: Client, config: LeaseConfig, facts: NodeFacts) {
    let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
    let name = lease_name(&facts.node_name);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut ticker = tokio::time::interval(config.renew_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = false;
    loop {
        ticker.tick().await;
        let lease = desired_lease(&config, &facts, jiff::Timestamp::now());
        match leases.patch(&name, &params, &Patch::Apply(&lease)).await {
            Ok(_) if !healthy => {
                healthy = true;
                tracing::info!(lease = %name, namespace = %config.namespace, endpoint = %config.endpoint, "lease renewed");
            }
            Ok(_) => {}
            Err(err) => {
                healthy = false;
                tracing::warn!(lease = %name, namespace = %config.namespace, error = %err, "renewing the lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_advertises_endpoint_and_node_facts() {
        let config = LeaseConfig {
            namespace: "ferry-system".into(),
            endpoint: "10.0.0.7:50051".into(),
            holder: "ferry-agent-x2k1".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let facts = NodeFacts {
            node_name: "node-a".into(),
            runtime: "kubelet".into(),
            architecture: "amd64".into(),
            kernel_version: "6.18.0".into(),
            criu_version: "4.2.1".into(),
            container_runtime: "containerd".into(),
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let lease = desired_lease(&config, &facts, now);
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
        // It parses as a Lease.
        let _: Lease = serde_json::from_value(lease).unwrap();
    }
}
