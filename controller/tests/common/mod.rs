//! A small ferry installation for tests: a real control plane with kwok
//! nodes, one real agent process per node (mutual TLS; the `synthetic`
//! runtime, a named kubelet test double that writes real archives), the real
//! controller binary with its admission webhook.

#![allow(dead_code)] // each test binary uses a different part

pub mod apps;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use ferry_testenv::{ApiProxy, ControlPlane, Options, TestPki};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

pub const AGENT_NAMESPACE: &str = "ferry-system";

/// CA, agent and controller certificates (the controller's also serves the
/// webhook on 127.0.0.1): ferry's shared test PKI.
pub type Pki = TestPki;

/// A fresh [`Pki`] in `dir`.
pub fn pki(dir: &Path) -> Pki {
    TestPki::new(dir).unwrap()
}

pub fn free_port() -> u16 {
    ferry_testenv::free_ports(1)[0]
}

/// A binary of another workspace package, built next to this test binary by
/// `cargo test --workspace` (hack/test.sh); for a bench, by
/// `cargo build --release` (the bench profile builds into target/release).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` first (hack/test.sh builds the whole workspace; benches need `cargo build --release -p {name}`)",
        path.display()
    );
    path
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    command: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Process {
    pub fn spawn(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> Self {
        let mut process = Self {
            name: name.to_owned(),
            child: None,
            log: dir.join(format!("{name}.log")),
            command: std::iter::once(program.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        process.start();
        process
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGSTOP: frozen, like a process on a node cut off from everything;
    /// [`Process::resume`] thaws it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "signal {signal} to {}", self.name);
    }

    /// SIGKILL: no chance to clean up, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The running child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The command name (field 2) may hold spaces; utime and stime are the
        // 12th and 13th fields after it, in USER_HZ (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields[i].parse::<f64>().unwrap();
        (ticks(11) + ticks(12)) / 100.0
    }

    /// A `Vm…:` line of /proc/<pid>/status in KiB (`VmHWM`: peak resident
    /// memory, `VmRSS`: resident now).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A control plane with `nodes` kwok nodes, an agent on each, and the
/// controller with its webhook.
pub struct Installation {
    pub plane: ControlPlane,
    pub client: Client,
    pub pki: Pki,
    pub dir: PathBuf,
    pub agents: Vec<(String, Process, String)>,
    pub controller: Process,
    pub controller_http: String,
    /// The controller's way to the API server, when [`Setup::controller_proxy`].
    pub controller_proxy: Option<ApiProxy>,
}

/// What to install; [`install`] takes the defaults of the tests.
pub struct Setup<'a> {
    pub nodes: usize,
    /// Size of each archive the agents' synthetic runtime writes.
    pub archive_bytes: u64,
    /// Namespaces to create (the webhook acts on these).
    pub namespaces: &'a [&'a str],
    /// `--log-format` of the controller (`text` or `json`).
    pub controller_log_format: &'a str,
    pub controller_rust_log: &'a str,
    pub agent_rust_log: &'a str,
    /// Reach the API server through an [`ApiProxy`] the test can cut.
    pub controller_proxy: bool,
    /// Added to every agent's arguments.
    pub agent_args: &'a [&'a str],
}

impl<'a> Setup<'a> {
    pub fn new(nodes: usize, archive_bytes: u64, namespaces: &'a [&'a str]) -> Self {
        Self {
            nodes,
            archive_bytes,
            namespaces,
            controller_log_format: "text",
            controller_rust_log: "info,ferry_controller=debug",
            agent_rust_log: "info",
            controller_proxy: false,
            agent_args: &[],
        }
    }
}

pub async fn install(nodes: usize, archive_bytes: u64, namespaces: &[&str]) -> Installation {
    install_with(&Setup::new(nodes, archive_bytes, namespaces)).await
}

pub async fn install_with(setup: &Setup<'_>) -> Installation {
    let (nodes, archive_bytes, namespaces) = (setup.nodes, setup.archive_bytes, setup.namespaces);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start(Options::full(nodes))
        .await
        .expect("control plane");
    let client = plane.client().await.unwrap();
    let dir = plane.dir().join("ferry");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki(&dir);
    for namespace in std::iter::once(AGENT_NAMESPACE).chain(namespaces.iter().copied()) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"ferry-test": "yes"}},
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let crd: serde_json::Value = serde_yaml::from_str(&ferry_api::crd_yaml().unwrap()).unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        ferry_api::CRD_NAME,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();

    let agent_bin = workspace_binary("ferry-agent");
    let ports = ferry_testenv::free_ports(nodes + 2);
    let mut agents = Vec::new();
    for (index, &grpc) in ports.iter().enumerate().take(nodes) {
        let node = format!("kwok-node-{index}");

        let mut args = vec![
            format!("--node-name={node}"),
            format!("--grpc-addr=127.0.0.1:{grpc}"),
            // Nobody scrapes the agents here: any free port.
            "--http-addr=127.0.0.1:0".into(),
            format!("--data-dir={}", dir.join(&node).display()),
            format!("--tls-ca={}", pki.ca.display()),
            format!("--tls-cert={}", pki.agent(&node).0.display()),
            format!("--tls-key={}", pki.agent(&node).1.display()),
            "--runtime=synthetic".into(),
            format!("--synthetic-archive-bytes={archive_bytes}"),
            format!("--lease-namespace={AGENT_NAMESPACE}"),
            format!("--advertise-endpoint=127.0.0.1:{grpc}"),
            format!("--pod-name=ferry-agent-{index}"),
            "--log-format=text".into(),
        ];
        args.extend(setup.agent_args.iter().map(|a| (*a).to_owned()));
        let process = Process::spawn(
            &format!("agent-{node}"),
            &dir,
            &agent_bin,
            &args,
            &[
                ("KUBECONFIG", plane.kubeconfig_path().display().to_string()),
                ("RUST_LOG", setup.agent_rust_log.into()),
            ],
        );
        agents.push((node, process, format!("127.0.0.1:{grpc}")));
    }
    let http_port = ports[nodes];
    let webhook_port = ports[nodes + 1];
    let controller_proxy = if setup.controller_proxy {
        Some(ApiProxy::start(&plane).await)
    } else {
        None
    };
    let controller_kubeconfig = controller_proxy.as_ref().map_or_else(
        || plane.kubeconfig_path().to_path_buf(),
        |proxy| proxy.kubeconfig(&plane, &dir),
    );
    let controller = Process::spawn(
        "controller",
        &dir,
        &workspace_binary("ferry-controller"),
        &controller_args(&pki, http_port, webhook_port, setup.controller_log_format),
        &[
            ("KUBECONFIG", controller_kubeconfig.display().to_string()),
            ("RUST_LOG", setup.controller_rust_log.into()),
            ("POD_NAMESPACE", AGENT_NAMESPACE.into()),
            ("POD_NAME", "ferry-controller-test".into()),
        ],
    );
    register_webhook(&client, &pki, webhook_port).await;
    let installation = Installation {
        plane,
        client,
        pki,
        dir,
        agents,
        controller,
        controller_http: format!("http://127.0.0.1:{http_port}"),
        controller_proxy,
    };
    installation.wait_ready().await;
    installation
}

fn controller_args(pki: &Pki, http_port: u16, webhook_port: u16, log_format: &str) -> Vec<String> {
    vec![
        format!("--http-addr=127.0.0.1:{http_port}"),
        format!("--log-format={log_format}"),
        format!("--tls-ca={}", pki.ca.display()),
        format!("--tls-cert={}", pki.controller_cert.display()),
        format!("--tls-key={}", pki.controller_key.display()),
        format!("--webhook-addr=127.0.0.1:{webhook_port}"),
        format!("--webhook-cert={}", pki.controller_cert.display()),
        format!("--webhook-key={}", pki.controller_key.display()),
        "--leader-election".into(),
        // Not the 3 s default: these tests run several control planes at
        // once on two cores, and a leader that loses its Lease exits with
        // nobody to restart it. The default is run in tier 5.
        "--leader-lease-duration=8s".into(),
        "--leader-renew-interval=2s".into(),
        "--leader-retry-interval=1s".into(),
    ]
}

/// The webhook as the chart registers it, but reached by URL and limited
/// to the test's namespaces.
pub async fn register_webhook(client: &Client, pki: &Pki, port: u16) {
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "ferry-test"},
        "webhooks": [{
            "name": "restore.ferry.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/mutate"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"ferry-test": "yes"}},
        }],
    });
    let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    api.patch(
        "ferry-test",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&config),
    )
    .await
    .unwrap();
}

impl Installation {
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("{}/readyz", self.controller_http))
                .await
                .is_ok_and(|r| r.status().is_success());
            let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(self.client.clone(), AGENT_NAMESPACE);
            let lease_names: Vec<String> = leases
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|l| l.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<&(String, Process, String)> = self
                .agents
                .iter()
                .filter(|(node, _, _)| !lease_names.contains(&format!("ferry-agent-{node}")))
                .collect();
            if ready && missing.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let agent_logs: String = missing
                    .iter()
                    .map(|(node, process, _)| format!("--- agent {node}\n{}", process.log_text()))
                    .collect();
                panic!(
                    "installation not ready (controller ready: {ready}, agents without a lease: {}); controller log:\n{}\n{agent_logs}",
                    missing.len(),
                    self.controller.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn agent(&self, node: &str) -> &(String, Process, String) {
        self.agents.iter().find(|(n, _, _)| n == node).unwrap()
    }

    pub fn agent_mut(&mut self, node: &str) -> &mut Process {
        &mut self
            .agents
            .iter_mut()
            .find(|(n, _, _)| n == node)
            .unwrap()
            .1
    }

    /// Archive ids an agent holds for `policy` (`namespace/name`), newest
    /// first, read from its store's metadata files (they appear once an
    /// archive is verified).
    pub async fn archives(&self, node: &str, policy: &str) -> Vec<String> {
        let mut held: Vec<(i64, String)> = std::fs::read_dir(self.dir.join(node).join("archives"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
            .filter_map(|entry| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
                (meta["policy"] == policy).then(|| {
                    (
                        meta["takenAtMillis"].as_i64().unwrap_or_default(),
                        meta["id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
            })
            .collect();
        held.sort_by(|a, b| b.cmp(a));
        held.into_iter().map(|(_, id)| id).collect()
    }

    /// A second controller replica with its own identity and ports. It
    /// stands by while the installation's controller leads. Returns it, the
    /// base URL of its /metrics and its webhook port.
    pub fn standby_controller(&self) -> (Process, String, u16) {
        let ports = ferry_testenv::free_ports(2);
        let process = Process::spawn(
            "controller-standby",
            &self.dir,
            &workspace_binary("ferry-controller"),
            &controller_args(&self.pki, ports[0], ports[1], "text"),
            &[
                (
                    "KUBECONFIG",
                    self.plane.kubeconfig_path().display().to_string(),
                ),
                ("RUST_LOG", "info".into()),
                ("POD_NAMESPACE", AGENT_NAMESPACE.into()),
                ("POD_NAME", "ferry-controller-standby".into()),
            ],
        );
        (process, format!("http://127.0.0.1:{}", ports[0]), ports[1])
    }

    pub fn logs(&self) -> String {
        let mut text = format!("--- controller\n{}", self.controller.log_text());
        for (node, process, _) in &self.agents {
            let log = process.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text += &format!("\n--- agent {node} (last lines)\n");
            for line in tail.into_iter().rev() {
                text += line;
                text += "\n";
            }
        }
        text
    }
}

/// Creates any namespaced object given as JSON (its kind is looked up).
pub async fn create(client: &Client, namespace: &str, object: serde_json::Value) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let api_version = object["apiVersion"].as_str().unwrap().to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    // A CRD's group appears in discovery a moment after the CRD is
    // established (the API server's discovery controller catches up on its
    // own): retry a 404 for a while instead of failing on that race.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resource = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => break resource,
            Err(kube::Error::Api(status)) if status.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("discovering {api_version} {kind}: {err}"),
        }
    };
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// Polls `check` every 200 ms until it yields a value or `limit` passes.
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes a kwok node look lost: kwok stops managing its status and Ready
/// turns Unknown. A heartbeat kwok had already scheduled (up to ~22 s
/// ahead) can still set Ready=True after that, so a background task keeps
/// the node lost for the rest of the process, re-applying Unknown with the
/// same transition time whenever it reads Ready. Returns once the node was
/// seen NotReady.
pub async fn lose_node(client: &Client, node: &str) -> jiff::Timestamp {
    use k8s_openapi::api::core::v1::Node;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ferry_testenv::KWOK_STATUS_ANNOTATION: "custom"}}})),
        )
        .await
        .unwrap();
    let lost_at = jiff::Timestamp::now();
    // Returns whether the node read NotReady (after patching it if not).
    let keep_lost = {
        let nodes = nodes.clone();
        let node = node.to_owned();
        move || {
            let (nodes, node) = (nodes.clone(), node.clone());
            async move {
                let Ok(current) = nodes.get(&node).await else {
                    return false;
                };
                if !ferry_testenv::node_is_ready(&current) {
                    return true;
                }
                let now = jiff::Timestamp::now().to_string();
                let _ = nodes
                    .patch_status(
                        &node,
                        &PatchParams::default(),
                        &Patch::Strategic(serde_json::json!({"status": {"conditions": [
                            {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                             "message": "kubelet stopped posting node status", "lastHeartbeatTime": now, "lastTransitionTime": lost_at.to_string()}
                        ]}})),
                    )
                    .await;
                false
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !keep_lost().await {
        assert!(
            Instant::now() < deadline,
            "node {node} does not turn NotReady"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::spawn(async move {
        loop {
            keep_lost().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    lost_at
}

/// A kwok node whose Ready condition the test sets: kwok stops managing it,
/// and a background task re-applies the wanted state (kwok may still send
/// a heartbeat it had scheduled) until the process ends. `set` switches it.
#[derive(Clone, Debug)]
pub struct NodeSwitch {
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    since: std::sync::Arc<std::sync::Mutex<jiff::Timestamp>>,
}

impl NodeSwitch {
    pub async fn take(client: &Client, node: &str) -> Self {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {ferry_testenv::KWOK_STATUS_ANNOTATION: "custom"}}})),
            )
            .await
            .unwrap();
        let switch = Self {
            ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            since: std::sync::Arc::new(std::sync::Mutex::new(jiff::Timestamp::now())),
        };
        let (state, node) = (switch.clone(), node.to_owned());
        tokio::spawn(async move {
            loop {
                state.apply(&nodes, &node).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        switch
    }

    async fn apply(&self, nodes: &Api<k8s_openapi::api::core::v1::Node>, node: &str) {
        let ready = self.ready.load(std::sync::atomic::Ordering::SeqCst);
        let since = *self.since.lock().unwrap();
        let Ok(current) = nodes.get(node).await else {
            return;
        };
        if ferry_testenv::node_is_ready(&current) == ready {
            return;
        }
        let (status, reason) = if ready {
            ("True", "KubeletReady")
        } else {
            ("Unknown", "NodeStatusUnknown")
        };
        let _ = nodes
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Strategic(serde_json::json!({"status": {"conditions": [
                    {"type": "Ready", "status": status, "reason": reason,
                     "message": "set by the test", "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
                     "lastTransitionTime": since.to_string()}
                ]}})),
            )
            .await;
    }

    /// Switches the node Ready or not, and waits until it reads so.
    pub async fn set(&self, client: &Client, node: &str, ready: bool) {
        *self.since.lock().unwrap() = jiff::Timestamp::now();
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.apply(&nodes, node).await;
            if let Ok(current) = nodes.get(node).await
                && ferry_testenv::node_is_ready(&current) == ready
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} does not turn ready={ready}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
