//! The agents' identities on a real API server: an agent asks for its
//! certificate with a CertificateSigningRequest made with its pod-bound
//! ServiceAccount token (the agent's own code), and the controller's signer
//! (its own code) decides. The attacks: asking for another node's identity,
//! asking with another ServiceAccount's token, with a token bound to no pod,
//! and with the token of a pod that is gone.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use ferry_agent::identity::{CsrConfig, request_certificate};
use ferry_controller::identity::CertificateAuthority;
use ferry_controller::identity::signer::{self, SignerConfig};
use ferry_controller::metrics::Metrics;
use ferry_proto::tls::{CertificateFacts, Credentials, Identity};
use ferry_testenv::{ControlPlane, TestPki};

const NAMESPACE: &str = "ferry-identity";
const SIGNER: &str = "ferry.dev/agent-ferry-identity";

async fn apply(client: &Client, object: serde_json::Value) {
    let api_version = object["apiVersion"].as_str().unwrap().to_owned();
    let kind = object["kind"].as_str().unwrap().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<kube::api::DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("ferry-identity-test").force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// A node, the two ServiceAccounts, the agents' RBAC for CSRs, and a pod
/// of `service_account` on `node`.
async fn pod_on(client: &Client, name: &str, node: &str, service_account: &str) -> Pod {
    apply(
        client,
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "ferry-agent:test"}],
        },
    }))
    .unwrap();
    let _ = pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await;
    for _ in 0..50 {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => return created,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("creating pod {name}: {e}"),
        }
    }
    panic!("pod {name} was never deleted");
}

async fn setup(client: &Client) {
    apply(
        client,
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await;
    for account in ["ferry-agent", "intruder"] {
        apply(
            client,
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": NAMESPACE}}),
        )
        .await;
    }
    // The chart's agent rule for CSRs, given to both accounts: RBAC is not
    // what stops the intruder, the signer is.
    apply(
        client,
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "ferry-identity-test-csr"},
            "rules": [{"apiGroups": ["certificates.k8s.io"],
                "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]}]}),
    )
    .await;
    apply(
        client,
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "ferry-identity-test-csr"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "ferry-identity-test-csr"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "ferry-agent", "namespace": NAMESPACE},
                {"kind": "ServiceAccount", "name": "intruder", "namespace": NAMESPACE},
            ]}),
    )
    .await;
}

/// A token of `service_account`, bound to `pod` if given (as the kubelet
/// projects it into the pod), else bound to nothing.
async fn token(client: &Client, service_account: &str, pod: Option<&Pod>) -> String {
    let bound = pod.map(|pod| {
        serde_json::json!({"kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid})
    });
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600, "boundObjectRef": bound},
    });
    let http = http::Request::post(format!(
        "/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{service_account}/token"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&request).unwrap())
    .unwrap();
    let answer: serde_json::Value = client.request(http).await.unwrap();
    answer["status"]["token"].as_str().unwrap().to_owned()
}

/// A client that authenticates with `token` only.
async fn client_with(cp: &ControlPlane, token: &str) -> Client {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap();
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        });
    }
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

fn csr_config(node: &str, ca_pem: &str) -> CsrConfig {
    CsrConfig {
        node: node.into(),
        signer_name: SIGNER.into(),
        ca_pem: ca_pem.as_bytes().to_vec(),
        validity: Duration::from_secs(8 * 3600),
        renew_before: None,
        sign_timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_agent_pod_of_a_node_obtains_that_nodes_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = ControlPlane::shared().await.unwrap();
    let admin = cp.client().await.unwrap();
    setup(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    let ca = Arc::new(
        CertificateAuthority::new(&pki.ca_pem, &std::fs::read_to_string(&pki.ca_key).unwrap())
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::default());
    let signing = tokio::spawn(signer::run(
        admin.clone(),
        ca,
        SignerConfig {
            signer_name: SIGNER.into(),
            agent_namespace: NAMESPACE.into(),
            agent_service_account: "ferry-agent".into(),
            max_validity: Duration::from_secs(4 * 3600),
        },
        metrics.clone(),
    ));

    // The agent pod of node-a, with its pod-bound token, is signed for
    // node-a, for at most the signer's cap.
    let agent_a = pod_on(&admin, "ferry-agent-a", "node-a", "ferry-agent").await;
    let as_agent_a = client_with(cp, &token(&admin, "ferry-agent", Some(&agent_a)).await).await;
    let (chain, key) = request_certificate(&as_agent_a, &csr_config("node-a", &pki.ca_pem))
        .await
        .unwrap();
    let credentials = Credentials::new(pki.ca_pem.as_bytes(), chain.as_bytes(), key.as_bytes())
        .expect("the issued certificate chains to the CA and matches the key");
    let facts: CertificateFacts = credentials.facts();
    assert_eq!(facts.identity, Identity::agent("node-a"));
    let life = facts.not_after.duration_since(facts.not_before).unwrap();
    assert!(life <= Duration::from_secs(4 * 3600 + 60), "{life:?}");

    // The same agent asking for node-b's identity still gets node-a's: the
    // signer writes the node its token is bound to, never what the request
    // says.
    let (chain, _) = request_certificate(&as_agent_a, &csr_config("node-b", &pki.ca_pem))
        .await
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        Identity::of_certificate(&first).unwrap(),
        Identity::agent("node-a")
    );

    // Another ServiceAccount's pod on node-b: denied, naming the requester.
    let intruder = pod_on(&admin, "intruder-b", "node-b", "intruder").await;
    let as_intruder = client_with(cp, &token(&admin, "intruder", Some(&intruder)).await).await;
    let err = request_certificate(&as_intruder, &csr_config("node-b", &pki.ca_pem))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("was denied"), "{err}");
    assert!(
        err.contains(&format!("system:serviceaccount:{NAMESPACE}:intruder")),
        "{err}"
    );

    // The agents' ServiceAccount with a token bound to no pod (a token
    // Secret, or one minted with `kubectl create token`): denied.
    let unbound = client_with(cp, &token(&admin, "ferry-agent", None).await).await;
    let err = request_certificate(&unbound, &csr_config("node-a", &pki.ca_pem))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not bound to an agent pod"), "{err}");

    // The token of an agent pod that is gone cannot even ask.
    let gone = pod_on(&admin, "ferry-agent-gone", "node-b", "ferry-agent").await;
    let gone_token = token(&admin, "ferry-agent", Some(&gone)).await;
    Api::<Pod>::namespaced(admin.clone(), NAMESPACE)
        .delete("ferry-agent-gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let as_gone = client_with(cp, &gone_token).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match request_certificate(&as_gone, &csr_config("node-b", &pki.ca_pem)).await {
            Err(err) => {
                let err = err.to_string();
                assert!(
                    err.contains("Unauthorized")
                        || err.contains("denied")
                        || err.contains("no longer exists"),
                    "{err}"
                );
                break;
            }
            // The pod's deletion may take a moment to reach the token check.
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "a gone pod's token was signed"
            ),
        }
    }
    let text = {
        let mut buffer = String::new();
        prometheus_client::encoding::text::encode(&mut buffer, &metrics.registry).unwrap();
        buffer
    };
    assert!(
        text.contains("ferry_controller_certificate_requests_total{result=\"signed\"}"),
        "{text}"
    );
    assert!(
        text.contains("ferry_controller_certificate_requests_total{result=\"denied\"}"),
        "{text}"
    );
    signing.abort();
}
