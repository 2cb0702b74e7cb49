//! Peer heartbeats and self-fencing with real agent processes, a real
//! kube-apiserver, and (for fencing; needs root) real processes in real
//! cgroups.
//!
//! Each agent that a test cuts off from the API server talks to it through
//! an [`ApiProxy`] the test can cut (every connection reset, new ones
//! closed at once) and reopen.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{AgentProcess, Pki};
use ferry_api::agent::{
    FENCING_ANNOTATION, FencingInfo, KUBELET_ENDPOINT_ANNOTATION, PEER_OBSERVATIONS_ANNOTATION,
    PeerObservations,
};
use ferry_proto::v1 as pb;
use ferry_testenv::{ApiProxy, ControlPlane};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};

const HEARTBEAT: Duration = Duration::from_secs(1);
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);

async fn namespace(plane: &ControlPlane, name: &str) -> Api<Lease> {
    let client = plane.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = namespaces.create(&PostParams::default(), &namespace).await;
    Api::namespaced(client, name)
}

/// Polls `check` every 100 ms until it yields a value or `within` passes.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn observations(leases: &Api<Lease>, node: &str) -> Option<PeerObservations> {
    let lease = leases
        .get_opt(&format!("ferry-agent-{node}"))
        .await
        .ok()??;
    let json = lease
        .metadata
        .annotations?
        .remove(PEER_OBSERVATIONS_ANNOTATION)?;
    Some(serde_json::from_str(&json).unwrap())
}

/// Whether `observer` publishes `peer`'s agent as answering.
async fn sees_answering(leases: &Api<Lease>, observer: &str, peer: &str) -> bool {
    observations(leases, observer).await.is_some_and(|o| {
        o.peers
            .get(peer)
            .is_some_and(|p| p.agent.last_ok.is_some() && p.agent.failing_since.is_none())
    })
}

/// A value of the agent's /metrics (the first series whose name and labels
/// start with `series`); 0 when absent.
async fn metric(agent: &AgentProcess, series: &str) -> f64 {
    common::install_crypto_provider();
    let text = reqwest::get(format!("http://{}/metrics", agent.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn start_agent(
    pki: &Pki,
    dir: &Path,
    node: &str,
    namespace: &str,
    kubeconfig: &Path,
) -> AgentProcess {
    AgentProcess::start_with_env(
        pki,
        node,
        &dir.join(node),
        4096,
        &[
            &format!("--lease-namespace={namespace}"),
            &format!("--heartbeat-interval={}ms", HEARTBEAT.as_millis()),
            &format!("--fence-timeout={}ms", FENCE_TIMEOUT.as_millis()),
            // This API server has no CheckpointPolicy CRD: fencing is under
            // test here, the checkpoint scope in the controller's tier 3.
            "--skip-checkpoint-scope",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )
    .await
}

/// A TLS server standing in for a kubelet: it completes handshakes and
/// nothing else.
async fn fake_kubelet() -> (String, tokio::task::JoinHandle<()>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kubelet".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (endpoint, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_publish_each_other_and_a_killed_peer_within_two_heartbeats() {
    let plane = ControlPlane::shared().await.unwrap();
    let leases = namespace(plane, "peers").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let kubeconfig = plane.kubeconfig_path();
    let mut b = start_agent(&pki, dir.path(), "node-b", "peers", kubeconfig).await;
    let a = start_agent(&pki, dir.path(), "node-a", "peers", kubeconfig).await;

    // A third "node" whose Lease the test writes: no agent, but a kubelet
    // (the synthetic runtime advertises none of its own).
    let (kubelet, kubelet_server) = fake_kubelet().await;
    let fake = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "ferry-agent-node-k",
            "labels": {"app.kubernetes.io/component": "ferry-agent", "ferry.dev/node": "node-k"},
            "annotations": {
                "ferry.dev/grpc-endpoint": format!("127.0.0.1:{}", common::free_port()),
                KUBELET_ENDPOINT_ANNOTATION: kubelet,
            },
        },
        "spec": {"holderIdentity": "test", "leaseDurationSeconds": 15},
    });
    leases
        .patch(
            "ferry-agent-node-k",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&fake),
        )
        .await
        .unwrap();

    // (a) Both publish the other as answering.
    wait_for(
        "A and B to publish each other",
        Duration::from_secs(30),
        || async {
            (sees_answering(&leases, "node-a", "node-b").await
                && sees_answering(&leases, "node-b", "node-a").await)
                .then_some(())
        },
    )
    .await;
    let lease = leases.get("ferry-agent-node-a").await.unwrap();
    let annotations = lease.metadata.annotations.unwrap();
    let fencing: FencingInfo = serde_json::from_str(&annotations[FENCING_ANNOTATION]).unwrap();
    assert_eq!(
        fencing,
        FencingInfo {
            timeout_millis: 3000,
            heartbeat_millis: 1000,
            // The watchdog fences on a timer, not on the next heartbeat.
            lag_millis: Some(0),
            ..FencingInfo::default()
        }
    );
    assert!(
        !annotations.contains_key(KUBELET_ENDPOINT_ANNOTATION),
        "the synthetic runtime has no kubelet to advertise"
    );

    // The kubelet handshake: answering, then failing once it is gone; the
    // agent-less node's agent fails all along.
    let seen = wait_for(
        "A to reach node-k's kubelet",
        Duration::from_secs(30),
        || async {
            let o = observations(&leases, "node-a").await?;
            let k = o.peers.get("node-k")?;
            (k.kubelet.last_ok.is_some() && k.agent.failing_since.is_some()).then(|| k.clone())
        },
    )
    .await;
    assert!(seen.kubelet.failing_since.is_none(), "{seen:?}");
    kubelet_server.abort();
    let _ = kubelet_server.await;
    let failed = wait_for(
        "A to publish node-k's kubelet failing",
        Duration::from_secs(10),
        || async {
            let o = observations(&leases, "node-a").await?;
            let k = o.peers.get("node-k")?;
            k.kubelet.failing_since.is_some().then(|| k.kubelet.clone())
        },
    )
    .await;
    assert!(failed.error.contains("connect"), "{failed:?}");

    // The Lease write rate (one per heartbeat) over a window of ten, the
    // probes' latency, and what one write carries.
    let writes = metric(&a, "ferry_agent_lease_writes_total{result=\"ok\"}").await;
    let since = Instant::now();
    tokio::time::sleep(10 * HEARTBEAT).await;
    let rate = (metric(&a, "ferry_agent_lease_writes_total{result=\"ok\"}").await - writes)
        / since.elapsed().as_secs_f64();
    let mut mean_ms = Vec::new();
    for target in ["agent", "kubelet"] {
        let series = |part: &str| {
            format!("ferry_agent_peer_probe_duration_seconds_{part}{{target=\"{target}\"}}")
        };
        let sum = metric(&a, &series("sum")).await;
        let count = metric(&a, &series("count")).await;
        mean_ms.push(format!(
            "{target} {:.2} ms over {count}",
            1000.0 * sum / count
        ));
    }
    let lease = leases.get("ferry-agent-node-a").await.unwrap();
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    eprintln!(
        "lease writes per second: {rate:.2}; mean successful probe: {}; Lease {} bytes, peer observations {} bytes",
        mean_ms.join(", "),
        serde_json::to_vec(&lease).unwrap().len(),
        annotations[PEER_OBSERVATIONS_ANNOTATION].len()
    );
    assert!(
        (0.5..=1.5).contains(&rate),
        "one Lease write per heartbeat, got {rate:.2}/s"
    );

    // (b) B dies: A publishes it failing within two heartbeats of its death.
    let killed_at = jiff::Timestamp::now();
    b.kill();
    let failing = wait_for(
        "A to publish B failing",
        Duration::from_secs(10),
        || async {
            let o = observations(&leases, "node-a").await?;
            o.peers.get("node-b")?.agent.failing_since.clone()
        },
    )
    .await;
    let published = jiff::Timestamp::now();
    let detected = failing.0.duration_since(killed_at);
    eprintln!(
        "B killed: failingSince {} ms after the kill, seen in the Lease after {} ms",
        detected.as_millis(),
        published.duration_since(killed_at).as_millis()
    );
    assert!(
        detected <= jiff::SignedDuration::try_from(2 * HEARTBEAT).unwrap(),
        "detected {detected:?} after the kill; log:\n{}",
        a.log_text()
    );
    let o = observations(&leases, "node-a").await.unwrap();
    assert!(!o.peers["node-b"].agent.error.is_empty());
    assert!(o.peers["node-b"].agent.last_ok.is_some());
}

/// A cgroup v1 hierarchy of its own (named, no controllers) the test puts
/// processes into, so their `/proc/<pid>/cgroup` names the paths it likes.
struct TestCgroups {
    root: tempfile::TempDir,
    children: Vec<Child>,
}

impl TestCgroups {
    fn mount(name: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "cgroup", "-o", &format!("none,name={name}"), "cgroup"])
            .arg(root.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a named cgroup v1 hierarchy needs root and cgroup v1"
        );
        Self {
            root,
            children: Vec::new(),
        }
    }

    /// Starts `sleep` in the cgroup at `path` below the root; returns its
    /// index.
    fn spawn_in(&mut self, path: &str) -> usize {
        let dir = self.root.path().join(path);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(cgroup.contains(&format!(":/{path}\n")), "{cgroup}");
        self.children.push(child);
        self.children.len() - 1
    }

    /// The signal that ended child `index`, once it has ended.
    fn ended_by(&mut self, index: usize) -> Option<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        self.children[index]
            .try_wait()
            .unwrap()
            .map(|status| status.signal())
    }

    /// Waits up to 20 s for process `index` to end; returns the signal
    /// that ended it.
    async fn wait_ended(&mut self, index: usize, what: &str) -> Option<i32> {
        wait_for(what, Duration::from_secs(20), || {
            let ended = self.ended_by(index);
            async move { ended }
        })
        .await
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deepest first.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.root.path().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                    dirs.push(entry.path());
                }
            }
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = Command::new("umount").arg(self.root.path()).status();
    }
}

/// Two agents that see each other, each behind its own proxy to the API
/// server, with one container checkpointed on A (its id read from A's
/// protected list).
struct Fixture {
    leases: Api<Lease>,
    _dir: tempfile::TempDir,
    proxy: ApiProxy,
    b_proxy: ApiProxy,
    a: AgentProcess,
    b: AgentProcess,
    container_id: String,
    /// Each test's own: tests run in parallel on one host, and a fencing
    /// agent kills every process of its pod it finds there.
    pod_uid: String,
    pki: Pki,
}

/// A pod UID unique to the test (its namespace).
fn pod_uid_of(namespace_name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    namespace_name.hash(&mut hasher);
    format!(
        "3f2a1b4c-0000-4000-8000-{:012x}",
        hasher.finish() & 0xffff_ffff_ffff
    )
}

async fn fixture(namespace_name: &str) -> Fixture {
    let pod_uid = pod_uid_of(namespace_name);
    let plane = ControlPlane::shared().await.unwrap();
    let leases = namespace(plane, namespace_name).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let proxy = ApiProxy::start(plane).await;
    let a = start_agent(
        &pki,
        dir.path(),
        "node-a",
        namespace_name,
        &proxy.kubeconfig(plane, dir.path()),
    )
    .await;
    let b_proxy = ApiProxy::start(plane).await;
    let b = start_agent(
        &pki,
        dir.path(),
        "node-b",
        namespace_name,
        &b_proxy.kubeconfig(plane, dir.path()),
    )
    .await;
    common::checkpoint_announced(
        &pki,
        &a,
        pb::CheckpointRequest {
            policy: "default/counter".into(),
            container: Some(pb::ContainerRef {
                namespace: "default".into(),
                pod: "counter-0".into(),
                pod_uid: pod_uid.clone(),
                container: "app".into(),
            }),
            peers: vec![b.peer()],
            timeout_seconds: 30,
            retention: None,
            state_api: None,
            content_hash: pb::ContentHash::Blake3.into(),
        },
    )
    .await
    .unwrap();
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.data_dir.join(ferry_agent::fencing::PROTECTED_FILE)).unwrap(),
    )
    .unwrap();
    let container_id = list["containers"][0]["id"].as_str().unwrap().to_owned();
    assert!(container_id.starts_with("synthetic-"), "{list}");
    wait_for(
        "A and B to see each other",
        Duration::from_secs(30),
        || async {
            (sees_answering(&leases, "node-a", "node-b").await
                && sees_answering(&leases, "node-b", "node-a").await)
                .then_some(())
        },
    )
    .await;
    Fixture {
        leases,
        _dir: dir,
        proxy,
        b_proxy,
        a,
        b,
        container_id,
        pod_uid,
        pki,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_api_and_peers_kills_its_protected_containers() {
    let mut f = fixture("fence-cut").await;
    let mut cgroups = TestCgroups::mount("ferry-fence-cut");
    let by_id = cgroups.spawn_in(&format!(
        "kubepods/besteffort/pod{}/{}",
        f.pod_uid, f.container_id
    ));
    // The kubelet restarted the container: new id, same pod.
    let restarted = cgroups.spawn_in(&format!("kubepods/besteffort/pod{}/restarted0", f.pod_uid));
    let bystander =
        cgroups.spawn_in("kubepods/besteffort/pod11111111-2222-4333-8444-555555555555/other00");

    let cut_at = Instant::now();
    f.proxy.cut();
    f.b.kill();
    wait_for("A to fence", Duration::from_secs(20), || {
        let done = cgroups.ended_by(by_id).is_some() && cgroups.ended_by(restarted).is_some();
        async move { done.then_some(()) }
    })
    .await;
    eprintln!(
        "fenced {} ms after losing API server and peer",
        cut_at.elapsed().as_millis()
    );
    // The last contact came up to a heartbeat before the cut.
    assert!(
        cut_at.elapsed() > FENCE_TIMEOUT - HEARTBEAT,
        "fenced before the timeout; log:\n{}",
        f.a.log_text()
    );
    assert_eq!(cgroups.ended_by(by_id), Some(Some(libc::SIGKILL)));
    assert_eq!(cgroups.ended_by(restarted), Some(Some(libc::SIGKILL)));
    assert_eq!(
        cgroups.ended_by(bystander),
        None,
        "another pod's process survives"
    );
    assert!(metric(&f.a, "ferry_agent_fence_actions_total").await >= 1.0);
    assert!(metric(&f.a, "ferry_agent_fenced_processes_total").await >= 2.0);

    // Contact returns: the Lease names the fenced pod, which stays stopped
    // (the kubelet restarting it would run it cold while its failover goes
    // on); other pods run.
    f.proxy.open().await;
    let fenced_at = wait_for(
        "A's Lease to name the fenced pod",
        Duration::from_secs(20),
        || async {
            let lease = f.leases.get("ferry-agent-node-a").await.ok()?;
            let annotations = lease.metadata.annotations?;
            let fencing: FencingInfo =
                serde_json::from_str(annotations.get(FENCING_ANNOTATION)?).ok()?;
            fencing.fenced_pods.get(&f.pod_uid).cloned()
        },
    )
    .await;
    assert!(fenced_at.0 <= jiff::Timestamp::now());
    let again = cgroups.spawn_in(&format!("kubepods/besteffort/pod{}/restarted1", f.pod_uid));
    let other =
        cgroups.spawn_in("kubepods/besteffort/pod11111111-2222-4333-8444-555555555555/other01");
    let signal = cgroups
        .wait_ended(again, "the fenced pod's restarted container stopped again")
        .await;
    assert_eq!(signal, Some(libc::SIGKILL));
    let later = jiff::Timestamp::now() + 3 * HEARTBEAT;
    wait_for("three more renewals", Duration::from_secs(20), || async {
        let o = observations(&f.leases, "node-a").await?;
        (o.observed_at?.0 > later).then_some(())
    })
    .await;
    assert_eq!(
        cgroups.ended_by(other),
        None,
        "only fenced pods stay stopped"
    );
    assert_eq!(cgroups.ended_by(bystander), None);

    // A restarted agent still holds the pod: it is on disk.
    f.a.restart(&f.pki).await;
    let after_restart =
        cgroups.spawn_in(&format!("kubepods/besteffort/pod{}/restarted2", f.pod_uid));
    cgroups
        .wait_ended(
            after_restart,
            "the fenced pod stopped again after the agent restarted",
        )
        .await;
    let restarted_at = jiff::Timestamp::now();
    let listed = wait_for(
        "the restarted agent's Lease to name the fenced pod",
        Duration::from_secs(20),
        || async {
            let lease = f.leases.get("ferry-agent-node-a").await.ok()?;
            let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
            let annotations = lease.metadata.annotations?;
            let fencing: FencingInfo =
                serde_json::from_str(annotations.get(FENCING_ANNOTATION)?).ok()?;
            (renewed > restarted_at).then(|| fencing.fenced_pods.get(&f.pod_uid).cloned())?
        },
    )
    .await;
    assert_eq!(listed, fenced_at, "the first fence time is kept");
    assert_eq!(cgroups.ended_by(other), None);
}

/// Two nodes cut off from the API server together that still reach each
/// other, while a third node's agent is live for the controller: A and B
/// are lost for it, so each must fence. Contact with a peer counts only
/// when that peer published it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cut_off_together_fence_although_they_reach_each_other() {
    let f = fixture("fence-island").await;
    // Node C: live (renewed just now, for a minute), unreachable from A and
    // B, as if on the other side of the partition with the API server.
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "ferry-agent-node-c",
            "labels": {"app.kubernetes.io/component": "ferry-agent", "ferry.dev/node": "node-c"},
            "annotations": {"ferry.dev/grpc-endpoint": format!("127.0.0.1:{}", common::free_port())},
        },
        "spec": {"holderIdentity": "test", "leaseDurationSeconds": 60,
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    f.leases
        .patch(
            "ferry-agent-node-c",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&lease),
        )
        .await
        .unwrap();
    wait_for("A to know node C", Duration::from_secs(30), || async {
        observations(&f.leases, "node-a")
            .await?
            .peers
            .contains_key("node-c")
            .then_some(())
    })
    .await;
    let mut cgroups = TestCgroups::mount("ferry-fence-island");
    let protected = cgroups.spawn_in(&format!(
        "kubepods/besteffort/pod{}/{}",
        f.pod_uid, f.container_id
    ));
    let cut_at = Instant::now();
    f.proxy.cut();
    f.b_proxy.cut();
    cgroups.wait_ended(protected, "A to fence").await;
    assert!(
        cut_at.elapsed() > FENCE_TIMEOUT - HEARTBEAT,
        "fenced before the timeout; log:\n{}",
        f.a.log_text()
    );
    assert_eq!(cgroups.ended_by(protected), Some(Some(libc::SIGKILL)));
}

/// Every agent cut off from the API server (an API server restart, or the
/// API server down for everyone) while all still reach each other: no
/// agent is live for the controller, so nothing can be failed over, and
/// nothing is fenced.
/// Cuts A (and `also_b`: B too) off the API server, waits until A has been
/// without it for the fence timeout and two heartbeats, as A itself
/// measures it, and checks that A fenced nothing. Returns the fixture.
async fn cut_api_and_expect_no_fence(name: &str, also_b: bool) -> Fixture {
    let f = fixture(name).await;
    let mut cgroups = TestCgroups::mount(&format!("ferry-{name}"));
    let protected = cgroups.spawn_in(&format!(
        "kubepods/besteffort/pod{}/{}",
        f.pod_uid, f.container_id
    ));
    f.proxy.cut();
    if also_b {
        f.b_proxy.cut();
    }
    let limit = (FENCE_TIMEOUT + 2 * HEARTBEAT).as_secs_f64();
    wait_for(
        "A to be without the API server past the timeout",
        Duration::from_secs(30),
        || async { (metric(&f.a, "ferry_agent_api_silence_seconds").await > limit).then_some(()) },
    )
    .await;
    assert_eq!(metric(&f.a, "ferry_agent_fence_actions_total").await, 0.0);
    assert_eq!(
        cgroups.ended_by(protected),
        None,
        "log:\n{}",
        f.a.log_text()
    );
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_do_not_fence_when_the_api_server_is_down_for_everyone() {
    cut_api_and_expect_no_fence("fence-api-down", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_still_reaches_a_peer_does_not_fence() {
    let f = cut_api_and_expect_no_fence("fence-peer", false).await;
    assert!(metric(&f.a, "ferry_agent_peer_silence_seconds").await < FENCE_TIMEOUT.as_secs_f64());
    // B still publishes A as answering: only the API server is gone.
    assert!(sees_answering(&f.leases, "node-b", "node-a").await);
}
