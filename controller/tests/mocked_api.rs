//! Tier 2: reconcile against a scripted API (tower-test), checking the exact
//! requests the controller sends.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::sync::Arc;
use std::time::Duration;

use ferry_api::CheckpointPolicy;
use ferry_controller::agents::AgentPool;
use ferry_controller::reconcile::reconcile;
use ferry_controller::{Config, Context, Metrics};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (context, _finished) = Context::new(
        client,
        &Config::default(),
        Arc::new(AgentPool::new(None, Duration::from_secs(1))),
        Arc::new(Metrics::default()),
        (
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
        ),
    );
    (Arc::new(context), handle)
}

fn policy() -> CheckpointPolicy {
    let mut policy: CheckpointPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        // The finalizer is in place, so reconcile goes straight to the status.
        "metadata": {"name": "counter", "namespace": "shop", "generation": 7,
            "finalizers": [ferry_api::names::POLICY_FINALIZER]},
        "spec": {"selector": {"matchLabels": {"app": "counter"}}},
    }))
    .expect("policy");
    policy.metadata.resource_version = Some("42".into());
    policy
}

/// Answers one status patch by storing what was applied; returns the object.
async fn answer_status_patch(mut handle: Handle, mut served: CheckpointPolicy) -> CheckpointPolicy {
    let (request, send) = handle.next_request().await.expect("a request");
    let body = request.into_body().collect_bytes().await.expect("body");
    let patch: serde_json::Value = serde_json::from_slice(&body).expect("json patch");
    served.status = serde_json::from_value(patch["status"].clone()).expect("status");
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&served).expect("reply")))
            .expect("response"),
    );
    served
}

#[tokio::test]
async fn unchanged_status_sends_no_request() {
    let (context, handle) = context();
    let policy = policy();
    let server = tokio::spawn(answer_status_patch(handle, policy.clone()));
    reconcile(Arc::new(policy), context.clone())
        .await
        .expect("first reconcile");
    let written = server.await.expect("scripted API server");
    assert_eq!(context.metrics.status_writes.get(), 1);

    let (second, mut handle) = self::context();
    reconcile(Arc::new(written), second.clone())
        .await
        .expect("second reconcile");
    let request = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(request.is_err(), "an unchanged status must not be written");
    assert_eq!(second.metrics.status_writes.get(), 0);
}

#[tokio::test]
async fn new_generation_is_applied_to_the_status_subresource() {
    let (context, mut handle) = context();
    let policy = policy();
    let served = policy.clone();
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::PATCH);
        let uri = request.uri().to_string();
        assert!(
            uri.starts_with(
                "/apis/ferry.dev/v1alpha1/namespaces/shop/checkpointpolicies/counter/status?"
            ),
            "{uri}"
        );
        assert!(
            uri.contains("fieldManager=ferry-controller") && uri.contains("force=true"),
            "{uri}"
        );
        assert_eq!(
            request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/apply-patch+yaml"[..])
        );
        let body = request.into_body().collect_bytes().await.expect("body");
        let patch: serde_json::Value = serde_json::from_slice(&body).expect("json patch");
        assert_eq!(patch["status"]["observedGeneration"], 7);
        assert_eq!(patch["status"]["phase"], "Pending");
        assert_eq!(patch["status"]["target"], "app=counter");
        assert_eq!(patch["status"]["conditions"][0]["type"], "Ready");
        assert!(patch.get("spec").is_none(), "only status is applied");
        let mut reply = served;
        reply.status = serde_json::from_value(patch["status"].clone()).expect("status");
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                .expect("response"),
        );
    });

    reconcile(Arc::new(policy), context.clone())
        .await
        .expect("reconcile");
    server.await.expect("scripted API server");
    assert_eq!(context.metrics.status_writes.get(), 1);
}

#[tokio::test]
async fn api_errors_name_the_policy() {
    let (context, mut handle) = context();
    let server = tokio::spawn(async move {
        let (_request, send) = handle.next_request().await.expect("a request");
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500,
        });
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&status).expect("status")))
                .expect("response"),
        );
    });
    let err = reconcile(Arc::new(policy()), context)
        .await
        .expect_err("a 500 fails the reconcile");
    server.await.expect("scripted API server");
    let message = err.to_string();
    assert!(
        message.contains("CheckpointPolicy shop/counter"),
        "{message}"
    );
    assert!(message.contains("request timed out"), "{message}");
}
