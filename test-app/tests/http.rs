//! The real binary: counting, state API, verification and /kill.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_test_app::{StateDoc, Verification};

#[tokio::test]
async fn counts_serves_state_verifies_and_dies_on_kill() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-test-app"))
        .args([
            format!("--listen=127.0.0.1:{port}"),
            "--ballast-mib=8".into(),
            "--period-ms=20".into(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // Workspace feature unification may give reqwest rustls without a
    // default provider; plain HTTP still needs the client to build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "test-app serves /health");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let state: StateDoc = http
        .get(format!("{base}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(state.counter > 0, "the counter runs");

    let response = http
        .put(format!("{base}/state"))
        .json(&StateDoc { counter: 1_000_000 })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let report: Verification = http
        .get(format!("{base}/verify"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(report.counter >= 1_000_000, "PUT /state sets the counter");
    assert!(report.ballast_ok);
    assert_eq!(report.ballast_bytes, 8 << 20);

    let response = http.post(format!("{base}/kill")).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "/kill exits non-zero");
}
