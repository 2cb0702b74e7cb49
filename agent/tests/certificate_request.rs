//! The agent binary obtaining its certificate from a real API server
//! (`--identity kubernetes-csr`): while it waits for a signature it is alive
//! (`/healthz`) but not ready, and serves no gRPC; once the request is
//! signed it serves with that certificate. The test approves and signs the
//! request itself, standing in for the controller's signer, whose checks
//! controller/tests/identity.rs attacks.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Pki;
use ferry_proto::tls::Identity;
use ferry_testenv::ControlPlane;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, ListParams, Patch, PatchParams};

const SIGNER: &str = "ferry.dev/agent-certificate-request-test";

/// Status code and body of a GET on the agent's HTTP endpoints; `None`
/// while nothing listens.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waiting_for_its_certificate_is_alive_not_ready_then_serves_with_it() {
    let cp = ControlPlane::shared().await.unwrap();
    let admin = cp.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let [grpc_port, http_port] = ferry_testenv::free_ports(2)[..] else {
        unreachable!()
    };
    let http = format!("127.0.0.1:{http_port}");
    let endpoint = format!("127.0.0.1:{grpc_port}");
    let node = "node-waiting";
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = Command::new(common::agent_binary())
        .args([
            &format!("--node-name={node}"),
            &format!("--grpc-addr={endpoint}"),
            &format!("--http-addr={http}"),
            &format!("--data-dir={}", dir.path().join("data").display()),
            &format!("--tls-ca={}", pki.ca.display()),
            "--identity=kubernetes-csr",
            &format!("--csr-signer-name={SIGNER}"),
            "--certificate-validity=1h",
            "--runtime=synthetic",
            "--log-format=text",
        ])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Nobody signs yet: alive, not ready, no gRPC.
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let request = {
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while found.is_none() {
            assert!(
                Instant::now() < deadline,
                "no CertificateSigningRequest\n{}",
                log_text()
            );
            found = csrs
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|c| c.spec.signer_name == SIGNER);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.unwrap()
    };
    let (code, _) = wait_for("/healthz answers", Duration::from_secs(10), || {
        get(&http, "/healthz")
    });
    assert_eq!(code, 200, "{}", log_text());
    let (code, body) = get(&http, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("waiting for this agent's certificate"),
        "{body}"
    );
    assert!(get(&http, "/metrics").is_some_and(|(code, _)| code == 200));
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "gRPC is served without a certificate"
    );
    assert!(agent.try_wait().unwrap().is_none(), "{}", log_text());

    // Approved and signed: the agent serves with that certificate.
    let name = request.metadata.name.clone().unwrap();
    let approval = serde_json::json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "Test", "message": "the test signs"}]}});
    csrs.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
        .await
        .unwrap();
    let request_pem = String::from_utf8(request.spec.request.0.clone()).unwrap();
    let cert = pki
        .sign_request(&Identity::agent(node), &request_pem)
        .unwrap();
    let signed = serde_json::json!({"status": {"certificate":
        k8s_openapi::ByteString(cert.into_bytes())}});
    csrs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&signed))
        .await
        .unwrap();
    wait_for("ready", Duration::from_secs(20), || {
        get(&http, "/readyz").filter(|(code, _)| *code == 200)
    });
    let mut controller = pki.controller(&endpoint).await;
    controller
        .delete_archives(ferry_proto::v1::DeleteArchivesRequest::default())
        .await
        .unwrap();
    assert!(log_text().contains("certificate issued"), "{}", log_text());
    let _ = agent.kill();
    let _ = agent.wait();
}
