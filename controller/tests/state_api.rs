//! Tier 3: strategy StateApi on a real control plane with kwok nodes, real
//! agents and ferry's real test application. kwok gives pods loopback IPs
//! (127.244.x.y), and the test runs each pod's application (the test app,
//! in this process) at its pod's IP, as the pod's container would: the
//! agents read the state there with GET and write it into the replacement
//! with PUT, and the controller opens the replacement's readiness gate.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::apps::*;
use common::{create, eventually, install};
use ferry_api::names::STATE_RESTORED_CONDITION;
use ferry_api::{FailoverStage, FailureTrigger};
use ferry_test_app::App;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

/// Each pod's application, started once its pod has an IP, by pod UID.
type Apps = Arc<Mutex<BTreeMap<String, Arc<App>>>>;

/// Runs the application of every pod of `app` in `namespace` at the pod's
/// IP and `port`, starting from zero, for the rest of the test.
fn run_pods_apps(
    client: kube::Client,
    namespace: &'static str,
    app: &'static str,
    port: u16,
) -> Apps {
    run_pods_apps_with(client, namespace, app, port, false)
}

/// Like [`run_pods_apps`]; with `refuse_put`, every pod but the first
/// answers a PUT of its state with 503 (an application that cannot take
/// it).
fn run_pods_apps_with(
    client: kube::Client,
    namespace: &'static str,
    app: &'static str,
    port: u16,
    refuse_put: bool,
) -> Apps {
    let apps: Apps = Arc::default();
    let started = apps.clone();
    tokio::spawn(async move {
        loop {
            for pod in pods(&client, namespace, app).await {
                let (Some(uid), Some(ip)) = (
                    pod.uid(),
                    pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                ) else {
                    continue;
                };
                if started.lock().unwrap().contains_key(&uid) {
                    continue;
                }
                let Ok(listener) = tokio::net::TcpListener::bind((ip.as_str(), port)).await else {
                    continue;
                };
                let application = Arc::new(App::new(0, 3));
                let first = started.lock().unwrap().is_empty();
                started.lock().unwrap().insert(uid, application.clone());
                let mut router = ferry_test_app::router(application);
                if refuse_put && !first {
                    router = axum::Router::new().route(
                        "/state",
                        axum::routing::put(|| async {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not today")
                        }),
                    );
                }
                tokio::spawn(async move { axum::serve(listener, router).await });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    apps
}

/// Waits for a condition of the `counter` policy whose message contains
/// `needle`, and returns that message.
async fn condition_saying(ferry: &common::Installation, what: &str, needle: &str) -> String {
    eventually(
        what,
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(&ferry.client, "apps", "counter").await.status?;
            status
                .conditions
                .iter()
                .map(|c| c.message.clone())
                .find(|m| m.contains(needle))
        },
    )
    .await
}

fn state_api_policy(name: &str, app: &str, port: u16) -> serde_json::Value {
    policy(
        name,
        app,
        serde_json::json!({
            "strategy": "StateApi",
            "stateApi": {"port": port, "path": "/state", "timeout": "2s", "maxSize": "1Mi"},
        }),
    )
}

#[tokio::test]
async fn a_state_is_read_replicated_and_written_into_the_replacement_before_it_is_ready() {
    let ferry = install(2, 0, &["apps"]).await;
    let client = &ferry.client;
    let port = ferry_testenv::free_ports(1)[0];
    let apps = run_pods_apps(client.clone(), "apps", "counter", port);
    create(client, "apps", deployment("counter")).await;
    create(client, "apps", state_api_policy("counter", "counter", port)).await;

    let pod = running_pod(&ferry, "apps", "counter").await;
    let uid = pod.uid().unwrap();
    // A counter no cold start reaches: it comes back only through ferry.
    let original = eventually(
        "the pod's application",
        WAIT,
        || ferry.logs(),
        || async { apps.lock().unwrap().get(&uid).cloned() },
    )
    .await;
    original.set_counter(777_000);
    let set_at = jiff::Timestamp::now();
    let (_, standby) = protected(&ferry, "apps", "counter", &uid).await;
    eventually(
        "a state read after the counter was set",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            let record = status.checkpoints.iter().find(|r| r.pod_uid == uid)?;
            (record.taken_at.0 > set_at && !record.replicas.is_empty()).then_some(())
        },
    )
    .await;

    evict(client, "apps", &pod.name_any()).await;
    let record = eventually(
        "the failover to complete",
        WAIT,
        || ferry.logs(),
        || async {
            let last = get_policy(client, "apps", "counter")
                .await
                .status?
                .last_failover?;
            (last.pod_uid == uid).then_some(last)
        },
    )
    .await;
    assert_eq!(record.stage, FailoverStage::Completed, "{record:?}");
    assert_eq!(record.reason, FailureTrigger::PodLoss);
    assert!(!record.cold_start, "{record:?}");
    assert_eq!(record.to_node.as_deref(), Some(standby.as_str()));

    // The replacement started from its own image, waited behind ferry's
    // readiness gate, and got the state.
    let replacement: Pod = Api::namespaced(client.clone(), "apps")
        .get(record.replacement_pod.as_deref().unwrap())
        .await
        .unwrap();
    let spec = replacement.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.invalid/counter:1")
    );
    assert!(
        spec.readiness_gates
            .iter()
            .flatten()
            .any(|g| g.condition_type == STATE_RESTORED_CONDITION),
        "{spec:?}"
    );
    let condition = replacement
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == STATE_RESTORED_CONDITION)
                .cloned()
        })
        .expect("the state-restored condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("True", Some("StateRestored"))
    );
    let restored = apps.lock().unwrap()[&replacement.uid().unwrap()].clone();
    assert!(
        restored.counter() >= 777_000,
        "counter {}",
        restored.counter()
    );
}

#[tokio::test]
async fn an_application_that_does_not_answer_is_named_in_the_status() {
    let ferry = install(2, 0, &["apps"]).await;
    let client = &ferry.client;
    // Nothing listens at the pods' state port.
    let port = ferry_testenv::free_ports(1)[0];
    create(client, "apps", deployment("counter")).await;
    create(client, "apps", state_api_policy("counter", "counter", port)).await;
    let pod = running_pod(&ferry, "apps", "counter").await;
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let message = condition_saying(
        &ferry,
        "the failure in the status",
        &format!("GET http://{ip}:{port}/state"),
    )
    .await;
    assert!(
        message.contains("Connection refused") || message.contains("refused"),
        "{message}"
    );
}

#[tokio::test]
async fn a_replacement_that_refuses_its_state_is_named_in_the_status() {
    let ferry = install(2, 0, &["apps"]).await;
    let client = &ferry.client;
    let port = ferry_testenv::free_ports(1)[0];
    let _apps = run_pods_apps_with(client.clone(), "apps", "counter", port, true);
    create(client, "apps", deployment("counter")).await;
    create(client, "apps", state_api_policy("counter", "counter", port)).await;
    let pod = running_pod(&ferry, "apps", "counter").await;
    let uid = pod.uid().unwrap();
    protected(&ferry, "apps", "counter", &uid).await;
    evict(client, "apps", &pod.name_any()).await;
    let message = condition_saying(&ferry, "the refused PUT in the status", "answered 503").await;
    assert!(message.contains("PUT http://127.244."), "{message}");
    assert!(message.contains("not today"), "{message}");
    // Not restored: the failover is still trying, the pod not let in.
    let status = get_policy(client, "apps", "counter").await.status.unwrap();
    assert!(
        status.failovers.iter().any(|f| f.pod_uid == uid),
        "{status:?}"
    );
}
