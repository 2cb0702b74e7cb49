//! The Helm chart in `charts/ferry`, checked with a real Helm binary
//! (`hack/helm.sh`) and a real API server (`ferry_testenv::ControlPlane`):
//! it lints, renders, is accepted by the API server (server-side dry run),
//! refuses values its schema does not allow, and grants no more RBAC than the
//! design allows.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_testenv::{ControlPlane, repo_root};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

const RELEASE: &str = "ferry";
const NAMESPACE: &str = "ferry-system";
const CRD_FILE: &str = "charts/ferry/crds/checkpointpolicies.ferry.dev.yaml";

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn chart_dir() -> PathBuf {
    repo_root().join("charts/ferry")
}

/// Helm from `hack/helm.sh` (downloaded and cached on first use).
async fn helm() -> Result<&'static Path, String> {
    static HELM: OnceCell<PathBuf> = OnceCell::const_new();
    HELM.get_or_try_init(|| async {
        let script = repo_root().join("hack/helm.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        let out = run(cmd, None).await?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if path.is_empty() || !Path::new(&path).is_file() {
            return Err(format!(
                "{} printed {path:?}, not a file; stderr:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(path))
    })
    .await
    .map(PathBuf::as_path)
}

/// Runs a command (off the async runtime), feeding `stdin` if given, and
/// returns its output whatever the exit status.
async fn run(mut cmd: Command, stdin: Option<Vec<u8>>) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        // Write stdin from another thread so a child that fills its stdout
        // pipe before reading all input cannot deadlock us.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                Some(std::thread::spawn(move || pipe.write_all(&input)))
            }
            (Some(_), None) => return Err(format!("{what}: no stdin pipe")),
            (None, _) => None,
        };
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{what}: {e}"))?;
        if let Some(writer) = writer {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(format!("{what}: writing stdin: {e}\n{}", describe(&out)));
                }
                Err(_) => return Err(format!("{what}: stdin writer panicked")),
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("{e}"))?
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template ferry charts/ferry -n ferry-system --include-crds <extra>`.
async fn helm_template(extra: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(helm().await?);
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--include-crds"])
        .args(extra);
    run(cmd, None).await
}

/// Renders the chart (failing on a helm error) and returns the YAML.
async fn render(extra: &[&str]) -> Result<String, String> {
    let out = helm_template(extra).await?;
    if !out.status.success() {
        return Err(format!(
            "helm template {extra:?} failed:\n{}",
            describe(&out)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("helm template printed non-UTF-8: {e}"))
}

/// Every non-empty document of a multi-document YAML stream.
fn documents(yaml: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| format!("rendered YAML document {i} does not parse: {e}\n{yaml}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> Option<&'a Value> {
    docs.iter().find(|d| kind(d) == k && name(d) == n)
}

async fn ensure_namespace(cp: &ControlPlane, ns: &str) -> TestResult {
    let client = cp.client().await?;
    let api: Api<Namespace> = Api::all(client);
    let obj = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(format!("creating namespace {ns}: {e}").into()),
    }
}

#[tokio::test]
async fn chart_lints_strictly() -> TestResult {
    let mut cmd = Command::new(helm().await?);
    cmd.args(["lint", "--strict"]).arg(chart_dir());
    let out = run(cmd, None).await?;
    assert!(
        out.status.success(),
        "helm lint --strict charts/ferry failed:\n{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0 chart(s) failed"),
        "unexpected helm lint output:\n{}",
        describe(&out)
    );
    Ok(())
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_api_server() -> TestResult {
    let yaml = render(&[]).await?;
    let cp = ControlPlane::shared().await?;
    ensure_namespace(cp, NAMESPACE).await?;

    let mut cmd = cp.kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=ferry-chart-test",
        "-f",
        "-",
    ]);
    let out = run(cmd, Some(yaml.clone().into_bytes())).await?;
    assert!(
        out.status.success(),
        "kubectl apply --server-side --dry-run=server of the rendered chart failed:\n{}\n--- rendered ---\n{yaml}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "deployment.apps/ferry-controller",
        "daemonset.apps/ferry-agent",
        "service/ferry-controller",
        "serviceaccount/ferry-controller",
        "serviceaccount/ferry-agent",
        "clusterrole.rbac.authorization.k8s.io/ferry-controller",
        "clusterrole.rbac.authorization.k8s.io/ferry-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/ferry-controller",
        "clusterrolebinding.rbac.authorization.k8s.io/ferry-agent",
        "role.rbac.authorization.k8s.io/ferry-controller",
        "role.rbac.authorization.k8s.io/ferry-agent",
        "rolebinding.rbac.authorization.k8s.io/ferry-controller",
        "rolebinding.rbac.authorization.k8s.io/ferry-agent",
    ] {
        assert!(
            stdout.contains(expected),
            "kubectl apply output does not mention {expected}:\n{}",
            describe(&out)
        );
    }
    Ok(())
}

#[tokio::test]
async fn chart_ships_the_crd_and_its_examples_are_valid_policies() -> TestResult {
    let crd = repo_root().join(CRD_FILE);
    assert!(
        crd.is_file(),
        "{} is missing: generate it with the crdgen binary of ferry-api",
        crd.display()
    );
    let yaml = render(&[]).await?;
    let docs = documents(&yaml)?;
    let rendered = find(
        &docs,
        "CustomResourceDefinition",
        "checkpointpolicies.ferry.dev",
    );
    assert!(
        rendered.is_some(),
        "helm template --include-crds does not render the CheckpointPolicy CRD"
    );

    // Install the CRD for real (this test binary has its own control plane),
    // then let the API server validate the examples against its schema.
    let cp = ControlPlane::shared().await?;
    let mut apply = cp.kubectl();
    apply
        .args(["apply", "--server-side", "--force-conflicts"])
        .arg("--field-manager=ferry-chart-test")
        .arg("-f")
        .arg(&crd);
    let out = run(apply, None).await?;
    assert!(
        out.status.success(),
        "applying {} failed:\n{}",
        crd.display(),
        describe(&out)
    );
    let mut wait = cp.kubectl();
    wait.args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/checkpointpolicies.ferry.dev",
    ]);
    let out = run(wait, None).await?;
    assert!(
        out.status.success(),
        "CRD never became Established:\n{}",
        describe(&out)
    );

    for example in ["counter-policy.yaml", "counter-stateapi-policy.yaml"] {
        let path = chart_dir().join("examples").join(example);
        let mut cmd = cp.kubectl();
        cmd.args(["apply", "--server-side", "--dry-run=server"])
            .arg("--field-manager=ferry-chart-test")
            .arg("-f")
            .arg(&path);
        let out = run(cmd, None).await?;
        assert!(
            out.status.success(),
            "the API server rejects {}:\n{}",
            path.display(),
            describe(&out)
        );
    }
    Ok(())
}

#[tokio::test]
async fn schema_refuses_invalid_values() -> TestResult {
    // (arguments, text the error must contain to name the offending value)
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "controller.replicas=-1"], "controller.replicas"),
        (
            &["--set", "controller.replicas=many"],
            "controller.replicas",
        ),
        (&["--set", "controller.bogus=1"], "bogus"),
        (&["--set", "agent.enabeld=false"], "enabeld"),
        (
            &["--set", "agent.image.pullPolicy=Sometimes"],
            "agent.image.pullPolicy",
        ),
        (&["--set", "controller.resources.request.cpu=1"], "request"),
        (&["--set", "agent.dataDir=relative/path"], "agent.dataDir"),
        (&["--set", "typo=1"], "typo"),
    ];
    for (args, needle) in cases {
        let out = helm_template(args).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "helm template {args:?} should fail schema validation but succeeded:\n{}",
            describe(&out)
        );
        assert!(
            stderr.contains("schema") && stderr.contains(needle),
            "helm template {args:?} failed without naming {needle:?} in a schema error:\n{}",
            describe(&out)
        );
    }
    Ok(())
}

#[tokio::test]
async fn agent_can_be_disabled() -> TestResult {
    let docs = documents(&render(&["--set", "agent.enabled=false"]).await?)?;
    assert!(
        find(&docs, "Deployment", "ferry-controller").is_some(),
        "the controller must still be rendered with agent.enabled=false"
    );
    let agent_objects: Vec<String> = docs
        .iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "agent")
        .map(|d| format!("{}/{}", kind(d), name(d)))
        .collect();
    assert!(
        agent_objects.is_empty(),
        "agent.enabled=false still renders {agent_objects:?}"
    );
    Ok(())
}

#[tokio::test]
async fn rbac_is_least_privilege() -> TestResult {
    let yaml = render(&[]).await?;
    let docs = documents(&yaml)?;

    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
        .collect();
    assert!(
        roles.len() >= 4,
        "expected controller and agent Roles and ClusterRoles, got {}",
        roles.len()
    );
    for role in &roles {
        let id = format!("{} {}", kind(role), name(role));
        let rules = role["rules"]
            .as_array()
            .ok_or_else(|| format!("{id} has no rules array"))?;
        for rule in rules {
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            assert!(!groups.contains(&"*"), "{id} grants apiGroups '*': {rule}");
            assert!(
                !resources.contains(&"*"),
                "{id} grants resources '*': {rule}"
            );
            assert!(
                !resources.iter().any(|r| r.ends_with("/*")),
                "{id} grants all subresources: {rule}"
            );
            assert!(!verbs.contains(&"*"), "{id} grants verbs '*': {rule}");
            assert!(
                !resources.contains(&"nodes/proxy"),
                "{id} grants nodes/proxy: {rule}"
            );
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{id} grants nonResourceURLs: {rule}"
            );
            for escalating in ["escalate", "bind", "impersonate"] {
                assert!(
                    !verbs.contains(&escalating),
                    "{id} grants {escalating}: {rule}"
                );
            }
        }
    }

    // The agent may ask the kubelet for checkpoints and nothing else,
    // cluster-wide.
    let agent = find(&docs, "ClusterRole", "ferry-agent").ok_or("no ClusterRole ferry-agent")?;
    let expected = serde_json::json!([{
        "apiGroups": [""],
        "resources": ["nodes/checkpoint"],
        "verbs": ["create"],
    }]);
    assert_eq!(
        agent["rules"], expected,
        "agent ClusterRole must grant exactly nodes/checkpoint create"
    );

    // Secrets are never readable.
    for role in &roles {
        for rule in role["rules"].as_array().into_iter().flatten() {
            assert!(
                !strings(&rule["resources"]).contains(&"secrets"),
                "{} {} grants access to secrets: {rule}",
                kind(role),
                name(role)
            );
        }
    }

    // Leases are only ever granted in the release namespace.
    for role in &roles {
        let leases = role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| strings(&r["resources"]).contains(&"leases"));
        if leases {
            assert_eq!(
                kind(role),
                "Role",
                "{} grants leases cluster-wide",
                name(role)
            );
            assert_eq!(
                role["metadata"]["namespace"],
                NAMESPACE,
                "{} not in the release namespace",
                name(role)
            );
        }
    }

    // Every binding targets one of the chart's own ServiceAccounts.
    for binding in docs
        .iter()
        .filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding"))
    {
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert_eq!(
                subject["kind"],
                "ServiceAccount",
                "{} binds {subject}",
                name(binding)
            );
            assert_eq!(
                subject["namespace"],
                NAMESPACE,
                "{} binds {subject}",
                name(binding)
            );
            let sa = subject["name"].as_str().unwrap_or_default();
            assert!(
                find(&docs, "ServiceAccount", sa).is_some(),
                "{} binds {sa}, which the chart does not create",
                name(binding)
            );
        }
    }

    // Every rule in the RBAC templates carries a comment saying why.
    for template in ["controller-rbac.yaml", "agent-rbac.yaml"] {
        let path = chart_dir().join("templates").join(template);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                let previous = if i > 0 { lines[i - 1].trim_start() } else { "" };
                assert!(
                    previous.starts_with('#'),
                    "{}:{}: RBAC rule without a comment saying why it is needed",
                    path.display(),
                    i + 1
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn workloads_are_hardened() -> TestResult {
    let docs = documents(&render(&[]).await?)?;

    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let pod = &controller["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "controller securityContext: {sc}");
    assert_eq!(sc["runAsUser"], 65532, "controller securityContext: {sc}");
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "controller securityContext: {sc}"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "controller securityContext: {sc}"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "controller securityContext: {sc}"
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "controller adds capabilities: {sc}"
    );
    assert_eq!(
        sc["seccompProfile"]["type"], "RuntimeDefault",
        "controller securityContext: {sc}"
    );
    assert_eq!(
        c["image"], "ferry-controller:0.1.0",
        "controller container: {c}"
    );
    assert_eq!(
        pod["serviceAccountName"], "ferry-controller",
        "controller pod: {pod}"
    );
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--http-addr=0.0.0.0:8080"),
        "controller args: {args:?}"
    );
    assert!(
        args.contains(&"--log-format=json"),
        "controller args: {args:?}"
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"], "/healthz",
        "controller container: {c}"
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"], "/readyz",
        "controller container: {c}"
    );

    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let pod = &agent["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "agent must not be privileged: {sc}");
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "agent securityContext: {sc}"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "agent securityContext: {sc}"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "agent securityContext: {sc}"
    );
    let mut added = strings(&sc["capabilities"]["add"]);
    added.sort_unstable();
    assert_eq!(
        added,
        ["CHOWN", "DAC_OVERRIDE", "FOWNER"],
        "agent capabilities: {sc}"
    );
    assert!(
        pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
        "agent pod uses host namespaces: {pod}"
    );
    let args = strings(&c["args"]);
    for expected in [
        "--grpc-addr=0.0.0.0:50051",
        "--http-addr=0.0.0.0:8081",
        "--data-dir=/var/lib/ferry",
        "--node-name=$(NODE_NAME)",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    let node_name = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "NODE_NAME")
        .ok_or_else(|| format!("agent has no NODE_NAME env: {c}"))?;
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME: {node_name}"
    );
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        ["/var/lib/ferry", "/var/lib/kubelet/checkpoints"],
        "agent hostPath volumes: {pod}"
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "agent must tolerate every taint by default"
    );
    Ok(())
}
