//! Strategy StateApi between real agent processes: the state read with GET
//! from a real application (ferry's test app, served on loopback), stored,
//! replicated to the standby and written into a replacement with PUT; and
//! every way the application can fail says what it did.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::sync::Arc;

use common::{AgentProcess, Pki};
use ferry_proto::v1 as pb;
use ferry_test_app::App;
use tonic::Code;

/// The test app on a free loopback port; returns the app and its port.
async fn serve_app(counter: u64) -> (Arc<App>, u16) {
    let app = Arc::new(App::new(1, 7));
    app.set_counter(counter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = ferry_test_app::router(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (app, port)
}

fn container(pod: &str) -> pb::ContainerRef {
    pb::ContainerRef {
        namespace: "default".into(),
        pod: pod.into(),
        pod_uid: "3f2a1b4c-0000-4000-8000-00000000000a".into(),
        container: "app".into(),
    }
}

fn state_api(port: u16, path: &str) -> pb::StateApi {
    pb::StateApi {
        scheme: "http".into(),
        port: port.into(),
        path: path.into(),
        timeout_millis: 1000,
        max_bytes: 1 << 20,
        address: "127.0.0.1".into(),
        content_type: String::new(),
    }
}

fn request(source: pb::StateApi, peers: Vec<pb::Peer>) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        policy: "default/counter".into(),
        container: Some(container("counter-0")),
        peers,
        timeout_seconds: 10,
        retention: Some(pb::Retention {
            keep: 3,
            ..Default::default()
        }),
        state_api: Some(source),
        content_hash: pb::ContentHash::Blake3.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_is_read_replicated_and_written_into_the_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let key = common::write_key(dir.path(), "b.key", 9);
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    // The standby keeps its copies encrypted at rest.
    let b = AgentProcess::start(
        &pki,
        "node-b",
        &dir.path().join("b"),
        0,
        &[&common::key_flag(&key)],
    )
    .await;
    let (_original, original_port) = serve_app(4242).await;

    let response = common::checkpoint_announced(
        &pki,
        &a,
        request(state_api(original_port, "/state"), vec![b.peer()]),
    )
    .await
    .unwrap()
    .into_inner();
    let archive = response.archive.unwrap();
    let call = response.state_api_call.unwrap();
    assert_eq!(call.http_status, 200);
    assert_eq!(call.bytes, archive.size_bytes);
    assert!(
        response.replicas.iter().all(|r| r.ok),
        "{:?}",
        response.replicas
    );
    assert_eq!(common::listed(&b), vec![archive.id.clone()]);

    // The replacement starts from zero; the standby writes the state in.
    let (replacement, replacement_port) = serve_app(0).await;
    let written = pki
        .controller(&b.endpoint)
        .await
        .restore_state(pb::RestoreStateRequest {
            archive_id: archive.id.clone(),
            container: Some(container("counter-1")),
            state_api: Some(state_api(replacement_port, "/state")),
        })
        .await
        .unwrap()
        .into_inner()
        .call
        .unwrap();
    assert_eq!(
        written.http_status, 204,
        "the test app answers PUT with No Content"
    );
    assert_eq!(written.bytes, archive.size_bytes);
    assert_eq!(replacement.counter(), 4242);

    // Never into another namespace.
    let status = pki
        .controller(&b.endpoint)
        .await
        .restore_state(pb::RestoreStateRequest {
            archive_id: archive.id.clone(),
            container: Some(pb::ContainerRef {
                namespace: "thief".into(),
                ..container("counter-1")
            }),
            state_api: Some(state_api(replacement_port, "/state")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("never crosses namespaces"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_an_application_fails_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let (_app, port) = serve_app(1).await;
    // A server that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let nothing_port = ferry_testenv::free_ports(1)[0];

    let mut too_small = state_api(port, "/state");
    too_small.max_bytes = 4;
    let cases = [
        (
            state_api(port, "/no-such-path"),
            "the application answered 404",
        ),
        (state_api(silent_port, "/state"), "no answer within 1s"),
        (too_small, "larger than the limit of 4 bytes"),
        (state_api(nothing_port, "/state"), "Connection refused"),
    ];
    let mut client = pki.controller(&a.endpoint).await;
    for (source, needle) in cases {
        let status = client
            .checkpoint(request(source, vec![]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
        assert!(status.message().contains(needle), "{needle}: {status}");
        assert!(status.message().contains("127.0.0.1"), "{status}");
    }
    assert!(
        common::listed(&a).is_empty(),
        "a failed read stored something"
    );

    // An application that refuses the PUT.
    let response =
        common::checkpoint_announced(&pki, &a, request(state_api(port, "/state"), vec![]))
            .await
            .unwrap()
            .into_inner();
    let status = client
        .restore_state(pb::RestoreStateRequest {
            archive_id: response.archive.unwrap().id,
            container: Some(container("counter-1")),
            state_api: Some(state_api(port, "/health")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(
        status.message().contains("PUT http://127.0.0.1"),
        "{status}"
    );
    assert!(status.message().contains("answered 405"), "{status}");
    drop(silent);
}
