//! Attacks on the agents' trust boundary, with real agent processes on
//! loopback and the test PKI standing in for ferry's signer:
//! - a stolen agent certificate asks another node's agent for checkpoints,
//!   restores, deletions and fencing, and pushes replicas it was not
//!   announced for;
//! - certificates of another CA, expired ones and none are turned away at
//!   the handshake;
//! - a client that meant one node's agent does not talk to another;
//! - a restore into another namespace than the archive's;
//! - a certificate rotates while checkpoints continue.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{AgentProcess, Pki};
use ferry_proto::tls::{CertificateFacts, Credentials, Identity, TlsFiles};
use ferry_proto::v1 as pb;
use tonic::Code;

fn container() -> pb::ContainerRef {
    pb::ContainerRef {
        namespace: "default".into(),
        pod: "counter-0".into(),
        pod_uid: "3f2a1b4c-0000-4000-8000-000000000001".into(),
        container: "app".into(),
    }
}

fn checkpoint_request(peers: Vec<pb::Peer>) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        policy: "default/counter".into(),
        container: Some(container()),
        peers,
        timeout_seconds: 30,
        retention: Some(pb::Retention {
            keep: 3,
            ..Default::default()
        }),
        state_api: None,
        content_hash: pb::ContentHash::Blake3.into(),
    }
}

/// The agent's /metrics text.
fn metrics(agent: &AgentProcess) -> String {
    let mut stream = std::net::TcpStream::connect(&agent.http).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        agent.http
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of one counter line of /metrics (0 when absent).
fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

fn denied(status: &tonic::Status, method: &str, who: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{method}: {status}");
    assert!(status.message().contains(who), "{method}: {status}");
    assert!(status.message().contains(method), "{method}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_agent_certificate_cannot_ask_another_nodes_agent_for_anything() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 64 * 1024, &[]).await;
    // B holds an archive worth stealing.
    let taken = common::checkpoint_announced(&pki, &b, checkpoint_request(vec![]))
        .await
        .unwrap()
        .into_inner()
        .archive
        .unwrap();

    // Node A's certificate in the wrong hands, calling B.
    let mut thief = pki.as_agent(&b.endpoint, "node-a").await;
    let target = ferry_testenv::attack::Target {
        archive_id: taken.id.clone(),
        policy: "default/counter".into(),
        container: container(),
    };
    let attempts = ferry_testenv::attack::privileged_calls(&mut thief, "node-a", &target).await;
    for attempt in &attempts {
        attempt.refused("the agent of node node-a").unwrap();
    }

    // The archive is still there, and every refusal was counted.
    assert_eq!(common::listed(&b), vec![taken.id.clone()]);
    let text = metrics(&b);
    for method in attempts.iter().map(|a| a.method) {
        let line =
            format!("ferry_agent_rpc_refused_total{{method=\"{method}\",caller=\"agent/node-a\"}}");
        assert_eq!(counter(&text, &line), 1.0, "{line} in\n{text}");
    }
    // Even the controller cannot have an archive restored into another
    // namespace.
    let status = pki
        .controller(&b.endpoint)
        .await
        .prepare_restore(pb::PrepareRestoreRequest {
            archive_id: taken.id.clone(),
            failover: String::new(),
            namespace: "thief".into(),
        })
        .await
        .unwrap_err();
    denied(&status, "PrepareRestore", "the controller");
    assert!(
        status.message().contains("never crosses namespaces"),
        "{status}"
    );

    // Its own heartbeat is answered.
    thief
        .heartbeat(pb::HeartbeatRequest {
            node: "node-a".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_only_from_the_announced_source() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 64 * 1024, &[]).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &[]).await;

    // Without the controller's announcement, A's checkpoint reaches A only.
    let response = pki
        .controller(&a.endpoint)
        .await
        .checkpoint(checkpoint_request(vec![b.peer()]))
        .await
        .unwrap()
        .into_inner();
    let outcome = &response.replicas[0];
    assert!(!outcome.ok);
    assert!(
        outcome.error.contains("announced no replicas"),
        "{}",
        outcome.error
    );
    assert!(common::listed(&b).is_empty());

    // Announced: it arrives.
    let archive = common::checkpoint_announced(&pki, &a, checkpoint_request(vec![b.peer()]))
        .await
        .unwrap()
        .into_inner()
        .archive
        .unwrap();
    assert_eq!(common::listed(&b), vec![archive.id.clone()]);

    // Node C, holding a valid agent certificate, pushes an archive that
    // claims to come from A (announced for A, not for C), and then one that
    // names itself as source (announced for nobody). Both are refused
    // before a byte is stored.
    for source in ["node-a", "node-c"] {
        let push = ferry_testenv::attack::replica_push(pb::Archive {
            id: "ab".repeat(32),
            policy: "default/counter".into(),
            container: Some(container()),
            source_node: source.into(),
            size_bytes: 1024,
            ..Default::default()
        });
        let status = pki
            .as_agent(&b.endpoint, "node-c")
            .await
            .push_replica(tokio_stream::iter(push))
            .await
            .unwrap_err();
        denied(&status, "PushReplica", "the agent of node node-c");
    }
    // The controller's certificate cannot push replicas either: only agents
    // send archives.
    let status = pki
        .controller(&b.endpoint)
        .await
        .get_replica_offset(pb::GetReplicaOffsetRequest {
            archive_id: archive.id.clone(),
        })
        .await
        .unwrap_err();
    denied(&status, "GetReplicaOffset", "the controller");
    assert_eq!(common::listed(&b), vec![archive.id.clone()]);
    assert_eq!(
        std::fs::read_dir(b.data_dir.join("incoming"))
            .unwrap()
            .count(),
        0,
        "a refused replica leaves no partial file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_cas_expired_certificates_and_none_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    let expired = pki.expired("expired-controller", &Identity::Controller);
    let no_identity = {
        // Signed by the ferry CA, but with no ferry identity in it: a
        // certificate some other tool issued from the same CA.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["ferry-controller".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(&pki.ca_key).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&pki.ca_pem, ca_key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = dir.path().join("no-identity.crt");
        let key_path = dir.path().join("no-identity.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let before = counter(&metrics(&a), "ferry_agent_tls_refused_total");
    let attempts = [
        ("no client certificate", None),
        (
            "a certificate of another CA",
            Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path())),
        ),
        (
            "an expired certificate",
            Some((expired.0.as_path(), expired.1.as_path())),
        ),
        (
            "a certificate without a ferry identity",
            Some((no_identity.0.as_path(), no_identity.1.as_path())),
        ),
    ];
    for (what, identity) in attempts {
        let identity =
            identity.map(|(cert, key)| (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
        let refused = ferry_testenv::attack::refused_at_handshake(
            &a.endpoint,
            pki.ca_pem.as_bytes(),
            identity,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: refused: {refused}");
    }
    // Each was turned away and counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = counter(&metrics(&a), "ferry_agent_tls_refused_total") - before;
        if refused >= 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{refused} refusals counted\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = a.log_text();
    assert!(log.contains("refused a connection"), "{log}");
    assert!(log.contains("carries no ferry identity"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_meant_one_nodes_agent_does_not_talk_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 0, &[]).await;
    common::install_crypto_provider();
    let controller = Credentials::load(&TlsFiles {
        ca: pki.ca.clone(),
        cert: pki.controller_cert.clone(),
        key: pki.controller_key.clone(),
    })
    .unwrap();
    // A stale Lease (or a hijacked address) sends the controller to A's
    // endpoint while it means node B.
    let err = tonic::transport::Endpoint::from_shared(format!("http://{}", a.endpoint))
        .unwrap()
        .connect_with_connector(controller.connector(Identity::agent("node-b")))
        .await
        .unwrap_err();
    let chain = ferry_telemetry::error_chain(&err);
    assert!(
        chain.contains("is the agent of node node-a, not the agent of node node-b"),
        "{chain}"
    );
    // Meaning A, it is served.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.endpoint))
        .unwrap()
        .connect_with_connector(controller.connector(Identity::agent("node-a")))
        .await
        .unwrap();
    pb::agent_client::AgentClient::new(channel)
        .delete_archives(pb::DeleteArchivesRequest::default())
        .await
        .unwrap();
}

/// The serial of the certificate the agent at `endpoint` presents now.
async fn served_serial(pki: &Pki, endpoint: &str) -> String {
    let controller = Credentials::load(&TlsFiles {
        ca: pki.ca.clone(),
        cert: pki.controller_cert.clone(),
        key: pki.controller_key.clone(),
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("ferry-agent").unwrap();
    let tls = tokio_rustls::TlsConnector::from(controller.client_config())
        .connect(name, tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    CertificateFacts::read(&cert).unwrap().serial
}

/// Replaces a certificate file pair the way a Secret update does: each file
/// swapped in whole.
fn swap_in(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_while_checkpoints_continue() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let reload = ["--certificate-reload-interval=1s"];
    let a = AgentProcess::start(&pki, "node-a", &dir.path().join("a"), 256 * 1024, &reload).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &reload).await;
    common::install_crypto_provider();
    let first_a = served_serial(&pki, &a.endpoint).await;
    let first_b = served_serial(&pki, &b.endpoint).await;

    // Checkpoints every 200 ms, each replicated to B, for the whole test.
    let checkpoints = {
        let pki = pki.clone();
        let a_endpoint = a.endpoint.clone();
        let b_peer = b.peer();
        tokio::spawn(async move {
            let mut client = pki.controller(&a_endpoint).await;
            let mut taken = 0;
            let stop = Instant::now() + Duration::from_secs(8);
            while Instant::now() < stop {
                let expected = pb::Archive {
                    source_node: "node-a".into(),
                    policy: "default/counter".into(),
                    container: Some(container()),
                    ..Default::default()
                };
                common::announce(&pki, &expected, &b_peer).await;
                let response = client
                    .checkpoint(checkpoint_request(vec![b_peer.clone()]))
                    .await
                    .unwrap_or_else(|s| panic!("checkpoint {taken}: {s}"))
                    .into_inner();
                assert!(
                    response.replicas.iter().all(|r| r.ok),
                    "{:?}",
                    response.replicas
                );
                taken += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            taken
        })
    };

    // Both agents get new certificates mid-way, as a renewal would bring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in ["node-a", "node-b"] {
        let (cert_path, key_path) = pki.agent(node);
        let (cert, key) = pki
            .issue(&Identity::agent(node), ferry_testenv::validity_now())
            .unwrap();
        swap_in(&key_path, &key);
        swap_in(&cert_path, &cert);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(&pki, &a.endpoint).await == first_a
        || served_serial(&pki, &b.endpoint).await == first_b
    {
        assert!(
            Instant::now() < deadline,
            "the new certificates were never presented\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = checkpoints.await.unwrap();
    assert!(taken >= 10, "only {taken} checkpoints");
    assert!(a.log_text().contains("certificate file changed"));

    // A certificate of another node dropped into A's files is not taken up:
    // A keeps presenting its own.
    let current = served_serial(&pki, &a.endpoint).await;
    let (cert_path, key_path) = pki.agent("node-a");
    let (other_cert, other_key) = pki
        .issue(&Identity::agent("node-b"), ferry_testenv::validity_now())
        .unwrap();
    swap_in(&key_path, &other_key);
    swap_in(&cert_path, &other_cert);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_serial(&pki, &a.endpoint).await, current);
    assert!(
        a.log_text().contains("names the agent of node node-b"),
        "{}",
        a.log_text()
    );
}
