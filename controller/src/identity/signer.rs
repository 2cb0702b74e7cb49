//! Signs the agents' CertificateSigningRequests.
//!
//! The API server writes into each request who made it. An agent's request
//! is made with its pod's ServiceAccount token, which is bound to the pod and
//! its node, so the request carries `authentication.kubernetes.io/node-name`,
//! `pod-name` and `pod-uid`. The certificate names that node, and only if
//! - the requester is the agent ServiceAccount of this installation;
//! - the pod the token is bound to still exists with that UID, runs on that
//!   node and is not being deleted.
//!
//! The names in the request itself (its subject, any SANs) are ignored: the
//! signer writes the identity. Anything else is denied with the reason, so
//! `kubectl get csr` shows why.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use ferry_proto::tls::Identity;

use super::CertificateAuthority;
use crate::metrics::Metrics;

const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// What the signer accepts.
#[derive(Clone, Debug)]
pub struct SignerConfig {
    /// `spec.signerName` it serves.
    pub signer_name: String,
    /// Namespace of the agents (the release namespace).
    pub agent_namespace: String,
    /// The agents' ServiceAccount.
    pub agent_service_account: String,
    /// The longest validity it signs.
    pub max_validity: Duration,
}

impl SignerConfig {
    fn agent_username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.agent_namespace, self.agent_service_account
        )
    }
}

/// What the signer does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not for this signer, or decided already.
    Skip,
    Deny(String),
    /// Sign, once the pod checks out.
    Check {
        node: String,
        pod: String,
        pod_uid: String,
        validity: Duration,
    },
}

/// The decision on a request from what it says alone.
pub fn review(csr: &CertificateSigningRequest, config: &SignerConfig) -> Verdict {
    if csr.spec.signer_name != config.signer_name {
        return Verdict::Skip;
    }
    let status = csr.status.clone().unwrap_or_default();
    let decided = status
        .conditions
        .iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True");
    if decided || status.certificate.is_some_and(|c| !c.0.is_empty()) {
        return Verdict::Skip;
    }
    let username = csr.spec.username.clone().unwrap_or_default();
    if username != config.agent_username() {
        return Verdict::Deny(format!(
            "only {} may ask signer {} for a certificate; this request came from {username:?}",
            config.agent_username(),
            config.signer_name
        ));
    }
    let extra = csr.spec.extra.clone().unwrap_or_default();
    let one = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Ok(value.clone()),
        _ => Err(Verdict::Deny(format!(
            "the requester's token is not bound to an agent pod on a node (no {key}): \
             agents must authenticate with their pod's projected ServiceAccount token"
        ))),
    };
    let (node, pod, pod_uid) = match (one(NODE_NAME), one(POD_NAME), one(POD_UID)) {
        (Ok(node), Ok(pod), Ok(uid)) => (node, pod, uid),
        (Err(deny), _, _) | (_, Err(deny), _) | (_, _, Err(deny)) => return deny,
    };
    if Identity::from_uri(&Identity::agent(node.clone()).uri()).is_none() {
        return Verdict::Deny(format!(
            "node name {node:?} cannot be a certificate identity"
        ));
    }
    let requested = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.max_validity, Duration::from_secs);
    Verdict::Check {
        node,
        pod,
        pod_uid,
        validity: requested.min(config.max_validity),
    }
}

/// Whether the pod a request's token is bound to is the agent of `node`.
pub fn check_pod(pod: Option<&Pod>, node: &str, name: &str, uid: &str) -> Result<(), String> {
    let pod = pod.ok_or_else(|| format!("the requesting pod {name} no longer exists"))?;
    if pod.metadata.uid.as_deref() != Some(uid) {
        return Err(format!(
            "pod {name} is not the pod that asked (UID changed)"
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("pod {name} is being deleted"));
    }
    let runs_on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if runs_on != Some(node) {
        return Err(format!(
            "pod {name} runs on {runs_on:?}, its token says node {node}"
        ));
    }
    Ok(())
}

/// Watches the signer's requests and decides each, for as long as the
/// controller runs. Every controller replica signs (signing needs no
/// leader, so agents get certificates while a leader is being replaced):
/// two replicas deciding the same request conflict on its resourceVersion,
/// and one of them wins.
pub async fn run(
    client: Client,
    ca: Arc<CertificateAuthority>,
    config: SignerConfig,
    metrics: Arc<Metrics>,
) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client, &config.agent_namespace);
    let selector = format!("spec.signerName={}", config.signer_name);
    let mut requests = watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    tracing::info!(signer = %config.signer_name, "signing agent certificates");
    while let Some(event) = requests.next().await {
        let csr = match event {
            Ok(csr) => csr,
            Err(err) => {
                tracing::warn!(error = %err, "watching CertificateSigningRequests");
                continue;
            }
        };
        let name = csr.metadata.name.clone().unwrap_or_default();
        let outcome = decide(&csr, &config, &pods, &ca).await;
        let version = csr.metadata.resource_version.clone().unwrap_or_default();
        let result = match outcome {
            Ok(None) => continue,
            Ok(Some(Decision::Signed { node, certificate })) => {
                approve_and_sign(&api, &name, &version, &node, &certificate).await
            }
            Ok(Some(Decision::Denied(reason))) | Err(reason) => {
                deny(&api, &name, &version, &reason).await
            }
        };
        match result {
            Ok(outcome) => metrics.certificate_requests(outcome),
            Err(err) => {
                metrics.certificate_requests("error");
                tracing::warn!(csr = %name, error = %err, "answering a certificate request");
            }
        }
    }
}

enum Decision {
    Signed { node: String, certificate: String },
    Denied(String),
}

async fn decide(
    csr: &CertificateSigningRequest,
    config: &SignerConfig,
    pods: &Api<Pod>,
    ca: &CertificateAuthority,
) -> Result<Option<Decision>, String> {
    let (node, pod, pod_uid, validity) = match review(csr, config) {
        Verdict::Skip => return Ok(None),
        Verdict::Deny(reason) => return Ok(Some(Decision::Denied(reason))),
        Verdict::Check {
            node,
            pod,
            pod_uid,
            validity,
        } => (node, pod, pod_uid, validity),
    };
    // A fresh read: a cache could still hold a pod that is gone.
    let found = pods
        .get_opt(&pod)
        .await
        .map_err(|e| format!("reading pod {}/{pod}: {e}", config.agent_namespace))?;
    if let Err(reason) = check_pod(found.as_ref(), &node, &pod, &pod_uid) {
        return Ok(Some(Decision::Denied(reason)));
    }
    let request = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let parsed = match rcgen::CertificateSigningRequestParams::from_pem(&request) {
        Ok(parsed) => parsed,
        Err(e) => return Ok(Some(Decision::Denied(format!("unreadable request: {e}")))),
    };
    let certificate = ca
        .issue(&Identity::agent(node.clone()), &parsed.public_key, validity)
        .map_err(|e| e.to_string())?;
    Ok(Some(Decision::Signed {
        node,
        certificate: format!("{certificate}{}", ca.ca_pem()),
    }))
}

fn condition(type_: &str, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": jiff::Timestamp::now().to_string(),
    })
}

/// Whether a write lost the race to another controller replica (the
/// request changed since it was read).
fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// Approves, then writes the certificate. Each write names the version it
/// read, so when several replicas answer one request, one of them does and
/// the others step back ("raced").
async fn approve_and_sign(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    version: &str,
    node: &str,
    certificate: &str,
) -> Result<&'static str, String> {
    let approval = serde_json::json!({
        "metadata": {"resourceVersion": version},
        "status": {"conditions": [condition(
            "Approved",
            "FerryAgentOfNode",
            &format!("the agent pod of node {node} asked with its bound ServiceAccount token"),
        )]},
    });
    let approved = match api
        .patch_subresource(
            "approval",
            name,
            &PatchParams::default(),
            &Patch::Merge(&approval),
        )
        .await
    {
        Ok(approved) => approved,
        Err(err) if conflict(&err) => return Ok("raced"),
        Err(err) => return Err(format!("approving: {err}")),
    };
    let status = serde_json::json!({
        "metadata": {"resourceVersion": approved.metadata.resource_version},
        "status": {"certificate": base64_encode(certificate.as_bytes())},
    });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(_) => {
            tracing::info!(csr = %name, node, "signed an agent certificate");
            Ok("signed")
        }
        Err(err) if conflict(&err) => Ok("raced"),
        Err(err) => Err(format!("writing the certificate: {err}")),
    }
}

async fn deny(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    version: &str,
    reason: &str,
) -> Result<&'static str, String> {
    let denial = serde_json::json!({
        "metadata": {"resourceVersion": version},
        "status": {"conditions": [condition("Denied", "NotAnAgentOfThisNode", reason)]},
    });
    match api
        .patch_subresource(
            "approval",
            name,
            &PatchParams::default(),
            &Patch::Merge(&denial),
        )
        .await
    {
        Ok(_) => {
            tracing::warn!(csr = %name, reason, "denied a certificate request");
            Ok("denied")
        }
        Err(err) if conflict(&err) => Ok("raced"),
        Err(err) => Err(format!("denying: {err}")),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SignerConfig {
        SignerConfig {
            signer_name: "ferry.dev/agent".into(),
            agent_namespace: "ferry-system".into(),
            agent_service_account: "ferry-agent".into(),
            max_validity: Duration::from_secs(4 * 3600),
        }
    }

    fn csr(username: &str, extra: serde_json::Value) -> CertificateSigningRequest {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {
                "signerName": "ferry.dev/agent",
                "request": "",
                "username": username,
                "extra": extra,
                "expirationSeconds": 99_999,
            },
        }))
        .unwrap()
    }

    fn bound(node: &str) -> serde_json::Value {
        serde_json::json!({NODE_NAME: [node], POD_NAME: ["ferry-agent-x"], POD_UID: ["u1"]})
    }

    #[test]
    fn the_agent_service_account_bound_to_a_node_gets_that_node_capped_in_time() {
        let verdict = review(
            &csr(
                "system:serviceaccount:ferry-system:ferry-agent",
                bound("ferry-b"),
            ),
            &config(),
        );
        assert_eq!(
            verdict,
            Verdict::Check {
                node: "ferry-b".into(),
                pod: "ferry-agent-x".into(),
                pod_uid: "u1".into(),
                validity: Duration::from_secs(4 * 3600),
            }
        );
    }

    #[test]
    fn anyone_else_is_denied_with_the_reason() {
        for user in [
            "system:serviceaccount:thief:ferry-agent",
            "system:serviceaccount:ferry-system:default",
            "admin",
        ] {
            let Verdict::Deny(reason) = review(&csr(user, bound("ferry-b")), &config()) else {
                panic!("{user} was not denied");
            };
            assert!(reason.contains(user), "{reason}");
        }
        // A token that is not bound to a pod on a node (a legacy Secret token).
        let Verdict::Deny(reason) = review(
            &csr(
                "system:serviceaccount:ferry-system:ferry-agent",
                serde_json::json!({}),
            ),
            &config(),
        ) else {
            panic!("an unbound token was not denied");
        };
        assert!(reason.contains("not bound"), "{reason}");
    }

    #[test]
    fn other_signers_and_decided_requests_are_left_alone() {
        let mut other = csr("system:serviceaccount:ferry-system:ferry-agent", bound("a"));
        other.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        assert_eq!(review(&other, &config()), Verdict::Skip);
        let mut denied = csr("x", bound("a"));
        denied.status = serde_json::from_value(
            serde_json::json!({"conditions": [{"type": "Denied", "status": "True"}]}),
        )
        .unwrap();
        assert_eq!(review(&denied, &config()), Verdict::Skip);
    }

    #[test]
    fn the_pod_must_still_be_the_agent_of_that_node() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"nodeName": "ferry-b", "containers": []},
        }))
        .unwrap();
        assert_eq!(check_pod(Some(&pod), "ferry-b", "p", "u1"), Ok(()));
        assert!(
            check_pod(Some(&pod), "ferry-a", "p", "u1")
                .unwrap_err()
                .contains("runs on")
        );
        assert!(
            check_pod(Some(&pod), "ferry-b", "p", "u2")
                .unwrap_err()
                .contains("UID")
        );
        assert!(
            check_pod(None, "ferry-b", "p", "u1")
                .unwrap_err()
                .contains("no longer exists")
        );
    }
}
