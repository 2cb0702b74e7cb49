//! Attacks on one agent's gRPC API, shared by the tier-3 tests (agents on
//! loopback) and the tier-5 tool `agent-attack` (the real cluster):
//! - a caller without a certificate, with one of another CA, or with an
//!   expired one, must be turned away at the handshake;
//! - a caller holding a valid agent certificate of another node (a stolen
//!   key) must be refused every call only the controller may make, and every
//!   replica it was not announced for.
//!
//! Each attempt's answer is kept; [`Attempt::refused`] judges it.

use std::time::Duration;

use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_client::AgentClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A client of the agent at `endpoint` (`host:port`) that trusts `ca_pem`
/// and presents `identity` (certificate and key PEM), or no certificate.
/// The error is the whole chain, since the handshake's reason is deep in it.
pub async fn connect(
    endpoint: &str,
    ca_pem: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<AgentClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(ferry_proto::tls::AGENT_SERVER_NAME);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{endpoint}"))
        .map_err(|e| format!("endpoint {endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(AgentClient::new(channel))
}

/// Whether a caller is turned away at the handshake: it either cannot
/// connect, or (TLS 1.3 tells a client of the refusal only when it reads)
/// its first call fails without an answer from the service.
pub async fn refused_at_handshake(
    endpoint: &str,
    ca_pem: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<String, String> {
    match connect(endpoint, ca_pem, identity).await {
        Err(err) => Ok(err),
        Ok(mut client) => match client
            .delete_archives(pb::DeleteArchivesRequest::default())
            .await
        {
            // Codes the agent itself would answer with: the call got in.
            Err(status)
                if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::InvalidArgument | Code::NotFound
                ) =>
            {
                Err(format!("the service answered: {status}"))
            }
            Err(status) => Ok(format!("{status:?}")),
            Ok(_) => Err("the agent answered".into()),
        },
    }
}

/// What the attacker aims at: an archive of the victim and its container.
#[derive(Clone, Debug)]
pub struct Target {
    pub archive_id: String,
    pub policy: String,
    pub container: pb::ContainerRef,
}

/// One call and how the agent answered it.
#[derive(Debug)]
pub struct Attempt {
    pub method: &'static str,
    pub answer: Result<(), tonic::Status>,
}

impl Attempt {
    /// `Ok` when the agent refused with PERMISSION_DENIED naming `caller`
    /// (e.g. "the agent of node a") and the method.
    pub fn refused(&self, caller: &str) -> Result<(), String> {
        let method = self.method;
        match &self.answer {
            Ok(()) => Err(format!("{method}: answered")),
            Err(status) if status.code() != Code::PermissionDenied => Err(format!(
                "{method}: {:?} instead of PermissionDenied: {status}",
                status.code()
            )),
            Err(status)
                if !status.message().contains(caller) || !status.message().contains(method) =>
            {
                Err(format!(
                    "{method}: the refusal names neither {caller:?} nor the method: {status}"
                ))
            }
            Err(_) => Ok(()),
        }
    }
}

fn attempt<T>(method: &'static str, answer: Result<T, tonic::Status>) -> Attempt {
    Attempt {
        method,
        answer: answer.map(|_| ()),
    }
}

/// Every call a stolen certificate of the agent of `thief_node` could try
/// on another node's agent: the controller's calls, a heartbeat in another
/// node's name, announcing replicas for itself and pushing a replica of a
/// pod nobody announced. All must be refused.
pub async fn privileged_calls(
    client: &mut AgentClient<Channel>,
    thief_node: &str,
    target: &Target,
) -> Vec<Attempt> {
    let container = || Some(target.container.clone());
    let mut attempts = vec![
        attempt(
            "Checkpoint",
            client
                .checkpoint(pb::CheckpointRequest {
                    policy: target.policy.clone(),
                    container: container(),
                    timeout_seconds: 30,
                    ..Default::default()
                })
                .await,
        ),
        attempt(
            "DeleteArchives",
            client
                .delete_archives(pb::DeleteArchivesRequest {
                    policy: target.policy.clone(),
                    ..Default::default()
                })
                .await,
        ),
        attempt(
            "PrepareRestore",
            client
                .prepare_restore(pb::PrepareRestoreRequest {
                    archive_id: target.archive_id.clone(),
                    failover: "stolen".into(),
                    namespace: target.container.namespace.clone(),
                })
                .await,
        ),
        attempt(
            "ReleaseRestore",
            client
                .release_restore(pb::ReleaseRestoreRequest {
                    archive_id: target.archive_id.clone(),
                    failover: String::new(),
                })
                .await,
        ),
        attempt(
            "FencePod",
            client
                .fence_pod(pb::FencePodRequest {
                    pod_uid: target.container.pod_uid.clone(),
                    namespace: target.container.namespace.clone(),
                    pod: target.container.pod.clone(),
                })
                .await,
        ),
        attempt(
            "ExpectReplicas",
            client
                .expect_replicas(pb::ExpectReplicasRequest {
                    source_node: thief_node.into(),
                    policy: target.policy.clone(),
                    container: container(),
                    ttl_seconds: 60,
                })
                .await,
        ),
        attempt(
            "RestoreState",
            client
                .restore_state(pb::RestoreStateRequest {
                    archive_id: target.archive_id.clone(),
                    container: container(),
                    state_api: None,
                })
                .await,
        ),
        attempt(
            "Heartbeat",
            client
                .heartbeat(pb::HeartbeatRequest {
                    node: format!("{thief_node}-impersonated"),
                })
                .await,
        ),
    ];
    // A replica of a pod the controller never announced, from anyone: the
    // thief's own node is the announced source of that node's containers,
    // and what a node's agent sends of those is its own to send.
    let forged = pb::ContainerRef {
        pod: format!("forged-by-{thief_node}"),
        pod_uid: "ffffffff-ffff-4fff-bfff-ffffffffffff".into(),
        ..target.container.clone()
    };
    let push = replica_push(pb::Archive {
        id: "ab".repeat(32),
        policy: target.policy.clone(),
        container: Some(forged),
        source_node: thief_node.into(),
        size_bytes: 1024,
        ..Default::default()
    });
    attempts.push(attempt(
        "PushReplica",
        client.push_replica(tokio_stream::iter(push)).await,
    ));
    attempts
}

/// The messages of a replica push of `archive` from offset 0: its header
/// and one 1 KiB chunk of zeros (the bytes never matter: it must be
/// refused before any is stored).
pub fn replica_push(archive: pb::Archive) -> Vec<pb::PushReplicaRequest> {
    let header = pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Header(
            pb::ReplicaHeader {
                archive: Some(archive),
                offset: 0,
                zstd: false,
                id_follows: false,
            },
        )),
    };
    let chunk = pb::PushReplicaRequest {
        message: Some(pb::push_replica_request::Message::Chunk(
            vec![0u8; 1024].into(),
        )),
    };
    vec![header, chunk]
}
