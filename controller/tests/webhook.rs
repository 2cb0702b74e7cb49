//! The failover admission webhook against a real kube-apiserver: the API
//! server calls the in-process webhook server over TLS (url clientConfig,
//! caBundle of a test CA), applies its JSON patch and stores the result, so
//! this checks the wire format, the patch semantics and `failurePolicy:
//! Ignore` as Kubernetes implements them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::{Duration, Instant};

use ferry_api::names::{FAILOVER_ANNOTATION, RESTORED_FROM_ANNOTATION};
use ferry_api::{CheckpointPolicy, FailoverRecord};
use ferry_controller::webhook::{
    WebhookListener, WebhookState, WebhookTls, register_metrics, serve_listener,
};
use ferry_testenv::ControlPlane;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, CustomResourceExt};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const NS: &str = "ferry-webhook-tests";
const RESTORE_IMAGE: &str = "localhost/ferry/checkpoint/counter-app:sha256-aa";

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        ferry_api::CRD_NAME,
        &PatchParams::apply("ferry-tests").force(),
        &Patch::Apply(CheckpointPolicy::crd()),
    )
    .await
    .expect("apply CRD");
    ferry_controller::crd::ensure_installed(client, ferry_api::CRD_NAME, Duration::from_secs(30))
        .await
        .expect("CRD becomes Established");
}

async fn namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(err) => panic!("creating namespace {name}: {err}"),
    }
}

/// A CA and a serving certificate for 127.0.0.1 it signed (ferry's test
/// PKI), in a fresh directory; returns the CA PEM and the files.
fn serving_certificate() -> (String, WebhookTls, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferry-webhook-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = ferry_testenv::TestPki::new(&dir).unwrap();
    let tls = WebhookTls {
        cert: pki.controller_cert.clone(),
        key: pki.controller_key.clone(),
    };
    (pki.ca_pem, tls, dir)
}

fn failover(uid: &str, owner: &str, stage: &str) -> FailoverRecord {
    serde_json::from_value(json!({
        "reason": "PodLoss",
        "pod": format!("failed-{uid}"),
        "podUid": uid,
        "owner": owner,
        "fromNode": "node-a",
        "toNode": "node-b",
        "stage": stage,
        "archive": "sha256:aa",
        "containers": [{"container": "app", "archive": "sha256:aa", "image": RESTORE_IMAGE}],
        "podAnnotations": {"io.kubernetes.cri-o.annotations.checkpoint.name": "app"},
        "startedAt": "2025-01-01T00:00:00Z",
    }))
    .unwrap()
}

/// A pod as its ReplicaSet would create it (the API server does not check
/// that the owner exists).
fn replica(owner: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "generateName": format!("{owner}-"),
            "labels": {"app": "counter"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                "uid": format!("00000000-0000-0000-0000-{:0>12}", owner.len()),
                "controller": true
            }]
        },
        "spec": {"containers": [
            {"name": "app", "image": "counter:1"},
            {"name": "sidecar", "image": "proxy:2"}
        ]}
    }))
    .unwrap()
}

fn annotations(pod: &Pod) -> std::collections::BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

fn assert_unmodified(pod: &Pod, what: &str) {
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("counter:1"),
        "{what}"
    );
    assert_ne!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Never"),
        "{what}"
    );
    assert!(
        !annotations(pod).contains_key(FAILOVER_ANNOTATION),
        "{what}: {:?}",
        pod.metadata.annotations
    );
    assert!(spec.affinity.is_none(), "{what}: {:?}", spec.affinity);
}

#[tokio::test]
async fn replacement_pods_are_pointed_at_the_checkpoint() {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("client");
    install_crd(&client).await;
    namespace(&client, NS).await;

    // The webhook's view of the policies: a reflector fed by a real watch.
    let (store, writer) = reflector::store::<CheckpointPolicy>();
    let watch = reflector(
        writer,
        watcher(Api::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects();
    let watch_task = tokio::spawn(watch.for_each(|_| std::future::ready(())));

    let (ca_pem, tls, cert_dir) = serving_certificate();
    let listener = WebhookListener::bind("127.0.0.1:0".parse().unwrap(), &tls)
        .await
        .expect("bind webhook");
    let port = listener.local_addr().unwrap().port();
    let metrics = register_metrics(&mut Registry::default());
    let state = WebhookState::new(store.clone(), metrics.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(listener, state, async {
        let _ = stopped.await;
    }));

    // Registered for this test's namespace only.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config_name = format!("{NS}-failover");
    let mut config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "failover.ferry.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}
        }]
    }))
    .unwrap();
    config.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
        Some(ByteString(ca_pem.into_bytes()));
    let _ = configs.delete(&config_name, &DeleteParams::default()).await;
    configs
        .create(&PostParams::default(), &config)
        .await
        .expect("create MutatingWebhookConfiguration");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // The API server picks the configuration up asynchronously: dry-run
    // pods until one reaches the webhook (which also proves TLS works).
    let deadline = Instant::now() + Duration::from_secs(30);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "probe-"},
        "spec": {"containers": [{"name": "c", "image": "pause"}]}
    }))
    .unwrap();
    while metrics.admissions("unchanged") == 0 {
        assert!(
            Instant::now() < deadline,
            "the API server never called the webhook"
        );
        pods.create(&dry_run, &probe).await.expect("dry-run probe");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A policy with two pending failovers: ReplicaSet x (Prepared) and z
    // (Fenced).
    let policies: Api<CheckpointPolicy> = Api::namespaced(client.clone(), NS);
    let policy: CheckpointPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": "counter"},
        "spec": {
            "selector": {"matchLabels": {"app": "counter"}},
            "placement": {"tolerations": [{"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"}]}
        }
    }))
    .unwrap();
    let _ = policies.delete("counter", &DeleteParams::default()).await;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");
    let failovers = [
        failover("uid-x", "ReplicaSet/x", "Prepared"),
        failover("uid-z", "ReplicaSet/z", "Fenced"),
    ];
    policies
        .patch_status(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"failovers": failovers}})),
        )
        .await
        .expect("write failovers to status");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.state().iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(NS)
            && p.status.as_ref().is_some_and(|s| s.failovers.len() == 2)
    }) {
        assert!(
            Instant::now() < deadline,
            "the reflector never saw the failovers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The replacement of ReplicaSet x is rewritten.
    let restored = pods
        .create(&PostParams::default(), &replica("x"))
        .await
        .expect("create replacement");
    let spec = restored.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].image.as_deref(), Some(RESTORE_IMAGE));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Never")
    );
    assert_eq!(
        spec.containers[1].image.as_deref(),
        Some("proxy:2"),
        "sidecar starts cold"
    );
    let notes = annotations(&restored);
    assert_eq!(
        notes.get(FAILOVER_ANNOTATION).map(String::as_str),
        Some("uid-x")
    );
    assert_eq!(
        notes.get(RESTORED_FROM_ANNOTATION).map(String::as_str),
        Some("app=sha256:aa")
    );
    assert_eq!(
        notes
            .get("io.kubernetes.cri-o.annotations.checkpoint.name")
            .map(String::as_str),
        Some("app")
    );
    let affinity = serde_json::to_value(&spec.affinity).unwrap();
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["node-b"]}
        ]}]})
    );
    let tolerations: Vec<Value> = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    assert!(
        tolerations.contains(
            &json!({"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"})
        ),
        "{tolerations:?}"
    );

    // A second pod of the same owner (a scale-up at the same time) does
    // not get the same failover.
    let second = pods
        .create(&PostParams::default(), &replica("x"))
        .await
        .expect("create second pod");
    assert_unmodified(&second, "second pod of ReplicaSet x");

    // Another owner's pod is left alone.
    let other = pods
        .create(&PostParams::default(), &replica("y"))
        .await
        .expect("create other pod");
    assert_unmodified(&other, "pod of ReplicaSet y");
    assert_eq!(metrics.admissions("restored"), 1);
    assert_eq!(metrics.admissions("error"), 0);

    // With the webhook down the pod is still created, unmodified, although
    // ReplicaSet z has a pending failover.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server stops")
        .unwrap()
        .expect("server ends cleanly");
    let started = Instant::now();
    let cold = pods
        .create(&PostParams::default(), &replica("z"))
        .await
        .expect("pod creation must not depend on the webhook");
    assert_unmodified(&cold, "pod of ReplicaSet z with the webhook down");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "creation waited {:?}",
        started.elapsed()
    );
    assert_eq!(metrics.admissions("restored"), 1);

    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .expect("delete MutatingWebhookConfiguration");
    watch_task.abort();
    let _ = std::fs::remove_dir_all(cert_dir);
}

/// The AdmissionRequest the API server would send for creating `pod` in
/// `namespace`.
fn create_request(
    pod: &Pod,
    namespace: &str,
) -> kube::core::admission::AdmissionRequest<kube::core::DynamicObject> {
    let review: kube::core::admission::AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "req-stale",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
            }
        }))
        .unwrap();
    review.try_into().unwrap()
}

/// A webhook replica whose watch fell behind (its node cut off from the API
/// server while the API server still reaches it) holds a cache without the
/// failover. Reading the namespace's policies fresh, it still rewrites the
/// replacement; trusting its cache, it would not, and the failover guard
/// would refuse every retry the API server sent over that connection.
#[tokio::test]
async fn a_replica_with_a_stale_cache_decides_on_what_the_api_server_has_now() {
    const STALE_NS: &str = "ferry-webhook-stale";
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("client");
    install_crd(&client).await;
    namespace(&client, STALE_NS).await;
    let policies: Api<CheckpointPolicy> = Api::namespaced(client.clone(), STALE_NS);
    let policy: CheckpointPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": "counter", "namespace": STALE_NS},
        "spec": {"selector": {"matchLabels": {"app": "counter"}}}
    }))
    .unwrap();
    let _ = policies.delete("counter", &DeleteParams::default()).await;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");

    // The cache as the replica last saw it: the policy, nothing pending.
    let (stale, mut writer) = reflector::store::<CheckpointPolicy>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(policy.clone()));
    writer.apply_watcher_event(&watcher::Event::InitDone);

    // Since then the leader recorded a failover.
    policies
        .patch_status(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"failovers": [failover("uid-s", "ReplicaSet/s", "Fenced")]}}),
            ),
        )
        .await
        .expect("write failover to status");

    let request = create_request(&replica("s"), STALE_NS);
    let trusting = WebhookState::new(stale.clone(), register_metrics(&mut Registry::default()));
    let answer = trusting.admit(&request).await;
    assert!(
        answer.patch.is_none(),
        "the stale cache alone misses the failover"
    );

    let fresh = WebhookState::reading_fresh(
        stale,
        register_metrics(&mut Registry::default()),
        client.clone(),
    );
    let verdict = fresh.decide(&request).await;
    assert!(verdict.decided);
    assert!(verdict.response.allowed);
    let patch: Value = serde_json::from_slice(
        verdict
            .response
            .patch
            .as_deref()
            .expect("the replacement is rewritten"),
    )
    .unwrap();
    assert!(
        patch.to_string().contains(RESTORE_IMAGE),
        "restores from the checkpoint: {patch}"
    );
    policies
        .delete("counter", &DeleteParams::default())
        .await
        .unwrap();
}
