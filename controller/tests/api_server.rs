//! Tier 3: the CRD and the controller binary against a real kube-apiserver.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_api::{CheckpointPolicy, Phase};
use ferry_testenv::{ControlPlane, Options};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, CustomResourceExt, ResourceExt};
use tokio::sync::OnceCell;

/// The shared control plane with the CRD installed and Established.
async fn plane_with_crd() -> &'static ControlPlane {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let plane = ControlPlane::shared().await.expect("control plane");
    INSTALLED
        .get_or_init(|| async {
            let client = plane.client().await.expect("client");
            install_crd(&client).await;
        })
        .await;
    plane
}

async fn install_crd(client: &Client) {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
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
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(err) => panic!("creating namespace {name}: {err}"),
    }
}

fn policy_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ferry.dev", "v1alpha1", "CheckpointPolicy"),
        "checkpointpolicies",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn example_policy() -> serde_json::Value {
    let path = ferry_testenv::repo_root().join("charts/ferry/examples/counter-policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).expect("example parses")
}

#[tokio::test]
async fn crd_becomes_established_and_serves_the_printer_columns() {
    let plane = plane_with_crd().await;
    let client = plane.client().await.expect("client");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client);
    let crd = crds.get(ferry_api::CRD_NAME).await.expect("CRD");
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        columns,
        [
            "Target",
            "Interval",
            "Last Checkpoint",
            "Restore Target",
            "Phase",
            "Age"
        ]
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["cpp".to_owned()]));
}

/// Each case: what is wrong, a patch to the valid example's spec, and what
/// the API server's refusal must say (field path first).
fn invalid_cases() -> Vec<(&'static str, serde_json::Value, &'static [&'static str])> {
    use serde_json::json;
    vec![
        (
            "negative interval",
            json!({"interval": "-5s"}),
            &["spec.interval"],
        ),
        (
            "unparsable interval",
            json!({"interval": "ten seconds"}),
            &["spec.interval"],
        ),
        (
            "interval below 1s",
            json!({"interval": "500ms"}),
            &["spec.interval", "between 1s and 24h"],
        ),
        (
            "standbys below 0",
            json!({"standbys": -1}),
            &["spec.standbys", "greater than or equal to 0"],
        ),
        (
            "standbys above 10",
            json!({"standbys": 11}),
            &["spec.standbys", "less than or equal to 10"],
        ),
        (
            "empty selector",
            json!({"selector": {}}),
            &["spec.selector", "must have matchLabels or matchExpressions"],
        ),
        (
            "bad selector operator",
            json!({"selector": {"matchExpressions": [{"key": "app", "operator": "Like", "values": ["x"]}]}}),
            &["spec.selector", "operator must be one of"],
        ),
        (
            "unknown strategy",
            json!({"strategy": "Rsync"}),
            &["spec.strategy", "Unsupported value: \"Rsync\""],
        ),
        (
            "StateApi without settings",
            json!({"strategy": "StateApi"}),
            &["spec.stateApi", "required when strategy is StateApi"],
        ),
        (
            "StateApi port out of range",
            json!({"strategy": "StateApi", "stateApi": {"port": 70000}}),
            &["spec.stateApi.port"],
        ),
        (
            "unparsable retention bytes",
            json!({"retention": {"maxBytes": "2Gb"}}),
            &["spec.retention.maxBytes"],
        ),
        (
            "zero retention bytes",
            json!({"retention": {"maxBytes": "0"}}),
            &["spec.retention.maxBytes", "greater than zero"],
        ),
        (
            "negative retention bytes",
            json!({"retention": {"maxBytes": "-1Gi"}}),
            &["spec.retention.maxBytes"],
        ),
        (
            "retention keep 0",
            json!({"retention": {"keep": 0}}),
            &["spec.retention.keep"],
        ),
        (
            "unparsable retention age",
            json!({"retention": {"maxAge": "a week"}}),
            &["spec.retention.maxAge"],
        ),
        (
            "duplicate container names",
            json!({"containers": ["app", "app"]}),
            &["spec.containers[1]", "Duplicate value"],
        ),
        (
            "invalid container name",
            json!({"containers": ["App_1"]}),
            &["spec.containers[0]"],
        ),
        (
            "unknown trigger",
            json!({"failover": {"triggers": ["Meteor"]}}),
            &["spec.failover.triggers[0]", "Unsupported value"],
        ),
        (
            "maxCheckpointAge shorter than interval",
            json!({"interval": "1m", "failover": {"maxCheckpointAge": "30s"}}),
            &[
                "spec.failover.maxCheckpointAge",
                "must not be shorter than interval",
            ],
        ),
        (
            "bad topology key",
            json!({"placement": {"topologySpreadKey": "not a key!"}}),
            &["spec.placement.topologySpreadKey"],
        ),
        (
            "toleration operator Sometimes",
            json!({"placement": {"tolerations": [{"key": "k", "operator": "Sometimes"}]}}),
            &[
                "spec.placement.tolerations",
                "operator must be Exists or Equal",
            ],
        ),
        (
            "toleration effect unknown",
            json!({"placement": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "Never"}]}}),
            &["spec.placement.tolerations", "effect must be"],
        ),
        (
            "toleration value with Exists",
            json!({"placement": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}),
            &[
                "spec.placement.tolerations",
                "value must be empty when operator is Exists",
            ],
        ),
        (
            "toleration without key or Exists",
            json!({"placement": {"tolerations": [{"operator": "Equal", "value": "v"}]}}),
            &[
                "spec.placement.tolerations",
                "key may be empty only with operator Exists",
            ],
        ),
        (
            "tolerationSeconds without NoExecute",
            json!({"placement": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}}),
            &[
                "spec.placement.tolerations",
                "tolerationSeconds needs effect NoExecute",
            ],
        ),
    ]
}

fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_object()
                    && target.get(key).is_some_and(|v| v.is_object())
                    && key != "selector"
                {
                    merge(target.get_mut(key).expect("present"), value);
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[tokio::test]
async fn api_server_rejects_invalid_specs_naming_the_field() {
    let plane = plane_with_crd().await;
    let client = plane.client().await.expect("client");
    namespace(&client, "invalid-specs").await;
    let api = policy_api(&client, "invalid-specs");

    let cases = invalid_cases();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (index, (what, patch, expected)) in cases.iter().enumerate() {
        let mut object = example_policy();
        object["metadata"] =
            serde_json::json!({"name": format!("invalid-{index}"), "namespace": "invalid-specs"});
        merge(&mut object["spec"], patch);
        let object: DynamicObject = serde_json::from_value(object).expect("dynamic object");
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) => {
                if status.code != 422
                    || !expected
                        .iter()
                        .all(|needle| status.message.contains(needle))
                {
                    failures.push(format!(
                        "{what}: HTTP {} {:?}; wanted {expected:?}",
                        status.code, status.message
                    ));
                } else {
                    eprintln!("{what}: {}", status.message);
                }
            }
            Err(err) => failures.push(format!("{what}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "wrongly handled invalid specs:\n{}",
        failures.join("\n")
    );

    // The valid example itself is accepted, with defaults filled in.
    let mut object = example_policy();
    object["metadata"] = serde_json::json!({"name": "valid", "namespace": "invalid-specs"});
    object["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("retention");
    let object: DynamicObject = serde_json::from_value(object).expect("dynamic object");
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .expect("valid policy accepted");
    assert_eq!(
        created.data["spec"]["retention"]["keep"], 3,
        "defaults applied by the API server"
    );
}

/// Runs the real controller binary against the test API server.
struct ControllerProcess {
    child: Child,
    http: String,
}

impl ControllerProcess {
    fn start(plane: &ControlPlane) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-controller"))
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .arg("--log-format=text")
            // No agents in this test.
            .arg("--insecure-agents")
            .env("KUBECONFIG", plane.kubeconfig_path())
            .env("RUST_LOG", "info,ferry_controller=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts");
        Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.http)).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn controller_writes_status_once_per_change_and_serves_health_and_metrics() {
    let plane = plane_with_crd().await;
    let client = plane.client().await.expect("client");
    namespace(&client, "controller").await;
    let controller = ControllerProcess::start(plane);

    let health = eventually("/healthz", || controller.get("/healthz")).await;
    assert_eq!(health, (200, "ok".to_owned()));
    eventually("/readyz", || async {
        controller
            .get("/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;

    let policies: Api<CheckpointPolicy> = Api::namespaced(client.clone(), "controller");
    let mut object = example_policy();
    object["metadata"] = serde_json::json!({"name": "counter", "namespace": "controller"});
    let policy: CheckpointPolicy = serde_json::from_value(object).expect("typed policy");
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");

    let settled = eventually("status of generation 1", || async {
        let policy = policies.get("counter").await.ok()?;
        let status = policy.status.as_ref()?;
        (status.observed_generation == Some(1)).then_some(policy)
    })
    .await;
    let status = settled.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.target.as_deref(), Some("app=counter"));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Accepted")
    );

    // No status loop: the object stays untouched while nothing changes.
    let version = settled.resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = policies.get("counter").await.expect("policy");
    assert_eq!(
        later.resource_version(),
        version,
        "the controller rewrote an unchanged status"
    );

    // A spec change is observed once, keeping the condition's transition time.
    policies
        .patch(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend");
    let suspended = eventually("status of generation 2", || async {
        let policy = policies.get("counter").await.ok()?;
        let status = policy.status.clone()?;
        (status.observed_generation == Some(2)).then_some(status)
    })
    .await;
    assert_eq!(suspended.phase, Some(Phase::Suspended));

    // kubectl shows the printer columns with the controller's values.
    let output = plane
        .kubectl()
        .args(["get", "checkpointpolicies", "-n", "controller"])
        .output()
        .expect("kubectl");
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("{table}");
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "TARGET",
        "INTERVAL",
        "LAST CHECKPOINT",
        "RESTORE TARGET",
        "PHASE",
        "AGE",
    ] {
        assert!(
            header.contains(column),
            "kubectl header {header:?} lacks {column}"
        );
    }
    let row = table.lines().nth(1).unwrap_or_default();
    for value in ["counter", "app=counter", "10s", "Suspended"] {
        assert!(row.contains(value), "kubectl row {row:?} lacks {value}");
    }

    let (code, metrics) = controller.get("/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    for family in [
        "ferry_controller_reconciliations_total{result=\"ok\"}",
        "ferry_controller_reconcile_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }
    // Two writes for this policy (generations 1 and 2); other tests' policies
    // in the shared control plane may add theirs.
    let writes: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ferry_controller_status_writes_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("status_writes_total");
    assert!(writes >= 2, "status writes: {writes}");
}

#[tokio::test]
async fn controller_without_crd_exits_with_a_clear_message() {
    let plane = ControlPlane::start(Options::default())
        .await
        .expect("control plane");
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-controller"))
        .args([
            "--http-addr=127.0.0.1:0",
            "--log-format=text",
            "--insecure-agents",
        ])
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env("NO_COLOR", "1")
        .output()
        .expect("controller runs");
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(
        logs.contains("CustomResourceDefinition checkpointpolicies.ferry.dev is not installed"),
        "{logs}"
    );
}
