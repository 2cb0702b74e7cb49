//! Node agents as the controller sees them: who is alive (from the agents'
//! Leases, a pure index) and a pool of mutual-TLS gRPC channels to call them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use tonic::transport::{Channel, Endpoint};

use ferry_api::agent::{
    BLAKE3, FENCING_ANNOTATION, FencingInfo, KUBELET_ENDPOINT_ANNOTATION, NODE_INFO_CONTENT_HASHES,
    PEER_OBSERVATIONS_ANNOTATION, PeerObservations, SHA256,
};
use ferry_api::names::{AGENT_ENDPOINT_ANNOTATION, AGENT_NODE_INFO_ANNOTATION};
use ferry_proto::tls::{Credentials, Identity};
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_client::AgentClient;

/// What an agent's Lease says.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInfo {
    pub node: String,
    /// `host:port` of its gRPC API.
    pub endpoint: String,
    pub renewed: jiff::Timestamp,
    pub lease_duration: Duration,
    pub architecture: String,
    pub criu_version: String,
    pub kernel_version: String,
    /// The runtime handler its node's runtime must have for restores there
    /// (`ferry`); empty: none.
    pub restore_handler: String,
    /// How the agent fences its node when cut off; `None`: it does not.
    pub fencing: Option<FencingInfo>,
    /// Whether it publishes a kubelet endpoint for peers to probe.
    pub kubelet_probed: bool,
    /// What it sees of the other nodes.
    pub observations: PeerObservations,
    /// The content hashes it names and verifies archives by
    /// (`ferry_api::agent::SHA256`, `BLAKE3`); sha256 alone for an agent
    /// from before BLAKE3, which does not say.
    pub content_hashes: Vec<String>,
}

impl AgentInfo {
    /// Reads an agent Lease; `None` for Leases that are not (complete) agent Leases.
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let node = ferry_api::agent::lease_node(lease)?;
        let annotations = lease.metadata.annotations.as_ref()?;
        let endpoint = annotations.get(AGENT_ENDPOINT_ANNOTATION)?.clone();
        let spec = lease.spec.as_ref()?;
        let renewed = spec.renew_time.as_ref()?.0;
        let lease_duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
        let facts: serde_json::Value = annotations
            .get(AGENT_NODE_INFO_ANNOTATION)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        let fact = |key: &str| facts[key].as_str().unwrap_or_default().to_owned();
        let fencing = annotations
            .get(FENCING_ANNOTATION)
            .and_then(|json| serde_json::from_str::<FencingInfo>(json).ok())
            .filter(|f| f.timeout_millis > 0);
        // Unreadable observations count as none: absence of evidence.
        let observations = annotations
            .get(PEER_OBSERVATIONS_ANNOTATION)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        Some(Self {
            node,
            endpoint,
            renewed,
            lease_duration,
            architecture: fact("architecture"),
            criu_version: fact("criuVersion"),
            kernel_version: fact("kernelVersion"),
            restore_handler: fact("restoreHandler"),
            fencing,
            kubelet_probed: annotations.contains_key(KUBELET_ENDPOINT_ANNOTATION),
            observations,
            content_hashes: facts[NODE_INFO_CONTENT_HASHES]
                .as_array()
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|name| Some(name.as_str()?.to_owned()))
                        .collect()
                })
                .unwrap_or_else(|| vec![SHA256.to_owned()]),
        })
    }

    fn verifies(&self, hash: &str) -> bool {
        self.content_hashes.iter().any(|h| h == hash)
    }

    /// When the Lease runs out unless renewed.
    pub fn expires(&self) -> jiff::Timestamp {
        self.renewed
            .checked_add(self.lease_duration)
            .unwrap_or(self.renewed)
    }

    pub fn live(&self, now: jiff::Timestamp) -> bool {
        self.expires() > now
    }

    /// Whether a checkpoint taken where `source` runs can be restored here.
    /// Unknown facts (an agent that does not report them) do not block.
    pub fn can_restore_from(&self, source: &AgentInfo) -> Result<(), String> {
        let differs = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
        if differs(&self.architecture, &source.architecture) {
            return Err(format!(
                "node {} is {}, the checkpoint was taken on {}",
                self.node, self.architecture, source.architecture
            ));
        }
        if differs(&self.criu_version, &source.criu_version) {
            return Err(format!(
                "node {} has CRIU {}, the checkpoint was taken with CRIU {}",
                self.node, self.criu_version, source.criu_version
            ));
        }
        Ok(())
    }
}

/// Every known agent by node name.
#[derive(Clone, Debug, Default)]
pub struct AgentIndex {
    pub by_node: BTreeMap<String, AgentInfo>,
}

impl AgentIndex {
    pub fn from_leases<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> Self {
        let mut by_node = BTreeMap::new();
        for info in leases.into_iter().filter_map(AgentInfo::from_lease) {
            // Two Leases for one node (a renamed namespace): the fresher wins.
            let fresher = by_node
                .get(&info.node)
                .is_none_or(|known: &AgentInfo| known.renewed < info.renewed);
            if fresher {
                by_node.insert(info.node.clone(), info);
            }
        }
        Self { by_node }
    }

    pub fn get(&self, node: &str) -> Option<&AgentInfo> {
        self.by_node.get(node)
    }

    /// The agent of `node` if its Lease is current.
    pub fn live(&self, node: &str, now: jiff::Timestamp) -> Option<&AgentInfo> {
        self.get(node).filter(|a| a.live(now))
    }
}

/// Channels to agents, reused across calls (one HTTP/2 connection each).
#[derive(Debug)]
pub struct AgentPool {
    tls: Option<Credentials>,
    connect_timeout: Duration,
    /// By endpoint: the node whose agent answered there, and the channel.
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl AgentPool {
    /// `tls: None` only for tests that run agents without TLS; production
    /// agents refuse such callers.
    pub fn new(tls: Option<Credentials>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
            channels: Mutex::default(),
        }
    }

    /// A client for the agent of `node` at `endpoint`: the connection fails
    /// unless the agent there presents that node's identity. Connecting is
    /// lazy: errors surface on the first call, naming the endpoint there.
    pub fn client(&self, node: &str, endpoint: &str) -> Result<AgentClient<Channel>, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match channels.get(endpoint) {
            Some((known, channel)) if known == node => channel.clone(),
            _ => {
                let builder = Endpoint::from_shared(format!("http://{endpoint}"))
                    .map_err(|e| format!("agent endpoint {endpoint:?}: {e}"))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                let channel = match &self.tls {
                    Some(tls) => {
                        builder.connect_with_connector_lazy(tls.connector(Identity::agent(node)))
                    }
                    None => builder.connect_lazy(),
                };
                channels.insert(endpoint.to_owned(), (node.to_owned(), channel.clone()));
                channel
            }
        };
        Ok(AgentClient::new(channel))
    }

    /// Sends `request` to the agents of `agents` at once, each call bounded
    /// by `timeout`; an agent whose Lease expired gets no call and an error.
    /// Returns each node's answer.
    pub async fn delete_archives_on<'a>(
        &self,
        agents: impl IntoIterator<Item = &'a AgentInfo>,
        request: &ferry_proto::v1::DeleteArchivesRequest,
        timeout: Duration,
        now: jiff::Timestamp,
    ) -> Vec<(
        String,
        Result<ferry_proto::v1::DeleteArchivesResponse, String>,
    )> {
        let calls = agents.into_iter().map(|agent| async move {
            if !agent.live(now) {
                return (agent.node.clone(), Err("agent lease expired".to_owned()));
            }
            let result = async {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
                self.client(&agent.node, &agent.endpoint)?
                    .delete_archives(call)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| status_message(&s))
            }
            .await;
            (agent.node.clone(), result)
        });
        futures::future::join_all(calls).await
    }

    /// Drops the channel of an endpoint after a transport error, so the
    /// next call reconnects (an agent that restarted on the same address).
    pub fn forget(&self, endpoint: &str) {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(endpoint);
    }
}

/// `status.message()` with the code when the message is empty.
pub fn status_message(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    }
}

/// The hash a checkpoint's archive is named by: BLAKE3 when the agent that
/// takes it and every standby it goes to know it, sha256 otherwise. In a
/// rolling upgrade an agent that knows only sha256 would refuse a BLAKE3
/// archive, and the checkpoint would not reach it.
pub fn content_hash_for<'a>(
    source: &'a AgentInfo,
    standbys: impl IntoIterator<Item = &'a AgentInfo>,
) -> pb::ContentHash {
    let mut agents = std::iter::once(source).chain(standbys);
    if agents.all(|agent| agent.verifies(BLAKE3)) {
        pb::ContentHash::Blake3
    } else {
        pb::ContentHash::Sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::names::AGENT_NODE_LABEL;

    fn lease(node: &str, renewed_secs: i64, endpoint: Option<&str>) -> Lease {
        let mut annotations = serde_json::json!({
            AGENT_NODE_INFO_ANNOTATION: r#"{"architecture":"amd64","criuVersion":"4.2"}"#,
        });
        if let Some(endpoint) = endpoint {
            annotations[AGENT_ENDPOINT_ANNOTATION] = endpoint.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("ferry-agent-{node}"),
                "namespace": "ferry-system",
                "labels": {AGENT_NODE_LABEL: node},
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": "agent",
                "leaseDurationSeconds": 15,
                "renewTime": jiff::Timestamp::from_second(renewed_secs).unwrap().to_string(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn leases_become_agents_with_liveness() {
        let index = AgentIndex::from_leases(&[
            lease("a", 100, Some("10.0.0.1:7443")),
            lease("b", 50, Some("10.0.0.2:7443")),
            lease("c", 100, None),
        ]);
        let now = jiff::Timestamp::from_second(110).unwrap();
        assert_eq!(
            index.by_node.len(),
            2,
            "a Lease without endpoint is no agent"
        );
        assert_eq!(index.live("a", now).unwrap().endpoint, "10.0.0.1:7443");
        assert_eq!(index.live("a", now).unwrap().architecture, "amd64");
        assert!(index.get("b").is_some());
        assert!(index.live("b", now).is_none(), "expired at 65");
    }

    #[test]
    fn compatibility_checks_known_facts_only() {
        let a = AgentInfo::from_lease(&lease("a", 1, Some("x:1"))).unwrap();
        let mut b = a.clone();
        b.node = "b".into();
        assert!(b.can_restore_from(&a).is_ok());
        b.criu_version = "3.17".into();
        assert!(b.can_restore_from(&a).unwrap_err().contains("CRIU 3.17"));
        b.criu_version.clear();
        b.architecture = "arm64".into();
        assert!(b.can_restore_from(&a).unwrap_err().contains("arm64"));
    }

    #[test]
    fn blake3_only_when_the_source_and_every_standby_verify_it() {
        let old = AgentInfo::from_lease(&lease("old", 1, Some("x:1"))).unwrap();
        assert_eq!(
            old.content_hashes,
            [SHA256],
            "a Lease that does not say: sha256 alone"
        );
        let mut new = old.clone();
        new.content_hashes = vec![SHA256.into(), BLAKE3.into()];
        let choose = |source: &AgentInfo, standbys: &[&AgentInfo]| {
            content_hash_for(source, standbys.iter().copied())
        };
        assert_eq!(choose(&new, &[]), pb::ContentHash::Blake3);
        assert_eq!(choose(&new, &[&new, &new]), pb::ContentHash::Blake3);
        // Any agent from before BLAKE3, wherever it is, keeps sha256.
        assert_eq!(choose(&new, &[&new, &old]), pb::ContentHash::Sha256);
        assert_eq!(choose(&new, &[&old, &new]), pb::ContentHash::Sha256);
        assert_eq!(choose(&old, &[&new]), pb::ContentHash::Sha256);
        assert_eq!(choose(&old, &[]), pb::ContentHash::Sha256);
        // An agent that names only BLAKE3 (none does yet) is no blocker.
        let mut only_b3 = new.clone();
        only_b3.content_hashes = vec![BLAKE3.into()];
        assert_eq!(choose(&new, &[&only_b3]), pb::ContentHash::Blake3);
    }

    #[test]
    fn the_lease_names_the_hashes() {
        let mut with = lease("a", 1, Some("x:1"));
        with.metadata.annotations.as_mut().unwrap().insert(
            AGENT_NODE_INFO_ANNOTATION.into(),
            r#"{"contentHashes":["sha256","blake3"]}"#.into(),
        );
        let agent = AgentInfo::from_lease(&with).unwrap();
        assert_eq!(agent.content_hashes, [SHA256, BLAKE3]);
    }
}
