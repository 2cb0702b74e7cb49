//! The Helm chart in `charts/ferry`, checked with a real Helm binary
//! (`hack/helm.sh`) and a real API server (`ferry_testenv::ControlPlane`):
//! it lints, renders, is accepted by the API server (server-side dry run),
//! refuses values its schema does not allow, grants no more RBAC than the
//! design allows, and generates mutual-TLS material that verifies (openssl)
//! and completes a mutual handshake under rustls, the TLS stack of the
//! controller and the agents.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use base64::Engine as _;
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

/// Applies the generated CRD and waits until it is Established.
async fn install_crd(cp: &ControlPlane) -> TestResult {
    let crd = repo_root().join(CRD_FILE);
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
    Ok(())
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
        "secret/ferry-ca",
        "configmap/ferry-ca",
        "clusterrole.rbac.authorization.k8s.io/ferry-controller",
        "clusterrole.rbac.authorization.k8s.io/ferry-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/ferry-controller",
        "clusterrolebinding.rbac.authorization.k8s.io/ferry-agent",
        "role.rbac.authorization.k8s.io/ferry-controller",
        "role.rbac.authorization.k8s.io/ferry-agent",
        "rolebinding.rbac.authorization.k8s.io/ferry-controller",
        "rolebinding.rbac.authorization.k8s.io/ferry-agent",
        "service/ferry-webhook",
        "secret/ferry-webhook-tls",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/ferry-failover",
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
    install_crd(cp).await?;

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
        (&["--set", "agent.kubelet.port=-1"], "agent.kubelet.port"),
        (&["--set", "agent.kubelet.port=70000"], "agent.kubelet.port"),
        (
            &["--set", "agent.kubelet.caFile=ca.crt"],
            "agent.kubelet.caFile",
        ),
        (
            &["--set", "agent.kubelet.ca=/ca.crt"],
            "Additional property ca is not allowed",
        ),
        (
            &["--set", "agent.replication.maxConcurrentTransfers=0"],
            "agent.replication.maxConcurrentTransfers",
        ),
        (
            &["--set", "agent.replication.zstd=maybe"],
            "agent.replication.zstd",
        ),
        (&["--set", "tls.generate=yes"], "tls.generate"),
        (
            &["--set", "tls.certificateValidity=soon"],
            "tls.certificateValidity",
        ),
        (&["--set", "tls.secretName=Not_A_Name"], "tls.secretName"),
        (&["--set", "tls.generat=false"], "generat"),
        (
            &["--set", "agent.encryption.enabled=yes"],
            "agent.encryption.enabled",
        ),
        (
            &["--set", "agent.encryption.existingSecret=Not_A_Name"],
            "agent.encryption.existingSecret",
        ),
        (
            &["--set", "agent.hostPathMounts={relative}"],
            "agent.hostPathMounts",
        ),
        (
            &["--set", "agent.hostPathMounts={/var/lib/$(NODE_NAME)}"],
            "agent.hostPathMounts",
        ),
        (
            &["--set", "agent.hostPathMounts={/srv/,/var/lib}"],
            "agent.hostPathMounts",
        ),
        (
            &["--set", "agent.restore.backend=crio"],
            "agent.restore.backend",
        ),
        (
            &["--set", "agent.restore.containerdAddress=run/c.sock"],
            "agent.restore.containerdAddress",
        ),
        (
            &["--set", "agent.restore.containerdNamespace=k8s/io"],
            "agent.restore.containerdNamespace",
        ),
        (
            &["--set", "agent.restore.socket=/run/c.sock"],
            "Additional property socket is not allowed",
        ),
        (&["--set", "agent.dnsPolicy=None"], "agent.dnsPolicy"),
        (
            &["--set", "agent.heartbeatInterval=1 second"],
            "agent.heartbeatInterval",
        ),
        (
            &["--set", "agent.fencing.timeout=3"],
            "agent.fencing.timeout",
        ),
        (
            &["--set", "agent.fencing.enabled=sometimes"],
            "agent.fencing.enabled",
        ),
        (
            &["--set", "controller.dnsPolicy=Cluster"],
            "controller.dnsPolicy",
        ),
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
async fn history_is_off_by_default_and_reads_its_url_from_a_secret() -> TestResult {
    let controller_container = |docs: &[Value]| -> Result<Value, String> {
        let deployment =
            find(docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
        Ok(deployment["spec"]["template"]["spec"].clone())
    };
    let pod = controller_container(&documents(&render(&[]).await?)?)?;
    let container = &pod["containers"][0];
    assert!(env(container, "FERRY_HISTORY_DATABASE_URL").is_none());
    assert!(
        !strings(&container["args"])
            .iter()
            .any(|a| a.starts_with("--history"))
    );

    // On, it needs the Secret's name, and says so.
    let out = helm_template(&["--set", "history.enabled=true"]).await?;
    assert!(!out.status.success());
    assert!(
        describe(&out).contains("history.urlSecret.name is required"),
        "{}",
        describe(&out)
    );

    let docs = documents(
        &render(&[
            "--set",
            "history.enabled=true",
            "--set",
            "history.urlSecret.name=ferry-history",
            "--set",
            "history.caConfigMap.name=db-ca",
            "--set",
            "history.bufferRows=500",
        ])
        .await?,
    )?;
    let pod = controller_container(&docs)?;
    let container = &pod["containers"][0];
    let url = env(container, "FERRY_HISTORY_DATABASE_URL").ok_or("no URL env")?;
    assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "ferry-history");
    assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "url");
    assert!(
        url.get("value").is_none(),
        "the URL is in the pod spec: {url}"
    );
    assert_eq!(
        env(container, "FERRY_HISTORY_CA_FILE").ok_or("no CA env")?["value"],
        "/etc/ferry/history-ca/ca.crt"
    );
    assert_eq!(
        volume(&pod, "history-ca").ok_or("no history-ca volume")?["configMap"]["name"],
        "db-ca"
    );
    assert!(strings(&container["args"]).contains(&"--history-buffer-rows=500"));
    Ok(())
}

#[tokio::test]
async fn agent_fencing_values_reach_flags_and_its_privileges_follow() -> TestResult {
    let docs = documents(
        &render(&[
            "--set",
            "agent.heartbeatInterval=500ms",
            "--set",
            "agent.fencing.timeout=5s",
        ])
        .await?,
    )?;
    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let pod = &agent["spec"]["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    for expected in ["--heartbeat-interval=500ms", "--fence-timeout=5s"] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    assert_eq!(pod["hostPID"], true, "fencing needs the host PIDs: {pod}");

    // Without fencing: no host PID namespace, no KILL capability.
    let docs = documents(&render(&["--set", "agent.fencing.enabled=false"]).await?)?;
    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let pod = &agent["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert!(args.contains(&"--fence-timeout=0"), "agent args: {args:?}");
    assert!(pod["hostPID"].is_null(), "agent pod: {pod}");
    let mut added = strings(&c["securityContext"]["capabilities"]["add"]);
    added.sort_unstable();
    assert_eq!(added, ["CHOWN", "DAC_OVERRIDE", "FOWNER"], "agent: {c}");

    // The agent lists its peers' Leases, in the release namespace only.
    let role = find(&docs, "Role", "ferry-agent").ok_or("no Role ferry-agent")?;
    assert_eq!(
        role["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["list", "create", "patch"],
        }]),
        "agent Role"
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

    // Cluster-wide, the agent may ask the kubelet for checkpoints, read the
    // one pod and policy a checkpoint request names, and ask for its own
    // certificate; nothing else (no list or watch of other tenants' pods).
    let agent = find(&docs, "ClusterRole", "ferry-agent").ok_or("no ClusterRole ferry-agent")?;
    let expected = serde_json::json!([
        {"apiGroups": [""], "resources": ["nodes/checkpoint"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": ["ferry.dev"], "resources": ["checkpointpolicies"], "verbs": ["get"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
            "verbs": ["create", "get"]},
    ]);
    assert_eq!(
        agent["rules"], expected,
        "agent ClusterRole must grant exactly these rules"
    );

    // The controller approves and signs for ferry's own signer name only,
    // and writes no Lease but its election Lease.
    let controller =
        find(&docs, "ClusterRole", "ferry-controller").ok_or("no ClusterRole ferry-controller")?;
    let signers = controller["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| strings(&r["resources"]).contains(&"signers"))
        .ok_or("the controller may not sign")?;
    assert_eq!(
        signers["resourceNames"],
        serde_json::json!(["ferry.dev/agent-ferry-system"]),
        "{signers}"
    );
    let role = find(&docs, "Role", "ferry-controller").ok_or("no Role ferry-controller")?;
    for rule in role["rules"].as_array().into_iter().flatten() {
        if strings(&rule["verbs"]).contains(&"update") {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!(["ferry-controller"]),
                "the controller may update Leases other than its own: {rule}"
            );
        }
    }

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
    // KILL: self-fencing stops protected containers of any user.
    assert_eq!(
        added,
        ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL"],
        "agent capabilities: {sc}"
    );
    // The host PID namespace, for self-fencing only (it finds protected
    // containers' processes in /proc); never the host network or IPC.
    assert!(
        pod["hostNetwork"] != true && pod["hostPID"] == true && pod["hostIPC"].is_null(),
        "agent pod host namespaces: {pod}"
    );
    let args = strings(&c["args"]);
    for expected in [
        "--grpc-addr=0.0.0.0:50051",
        "--http-addr=0.0.0.0:8081",
        "--data-dir=/var/lib/ferry",
        "--node-name=$(NODE_NAME)",
        "--heartbeat-interval=1s",
        "--fence-timeout=2500ms",
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
        [
            "/var/lib/ferry",
            "/var/lib/kubelet/checkpoints",
            "/var/lib/ferry/grants",
            "/opt/ferry/bin"
        ],
        "agent hostPath volumes: {pod}"
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "agent must tolerate every taint by default"
    );
    Ok(())
}

/// The env var `name` of a container.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
}

/// The volume `name` of a pod spec.
fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
}

/// The read-only mount at /etc/ferry/ca of the pod's first container, and
/// its volume.
fn ca_volume<'a>(what: &str, pod: &'a Value) -> &'a Value {
    let c = &pod["containers"][0];
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/etc/ferry/ca")
        .unwrap_or_else(|| panic!("{what} mounts nothing at /etc/ferry/ca: {c}"));
    assert_eq!(mount["readOnly"], true, "{what} CA mount: {mount}");
    let vol_name = mount["name"].as_str().unwrap_or_default();
    volume(pod, vol_name).unwrap_or_else(|| panic!("{what} has no volume {vol_name}: {pod}"))
}

/// The keys a volume projects.
fn volume_keys(vol: &Value, source: &str) -> Vec<String> {
    let mut keys: Vec<String> = vol[source]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["key"].as_str().map(str::to_owned))
        .collect();
    keys.sort_unstable();
    keys
}

/// The controller mounts the CA Secret `secret`, key included, readable
/// by its group only.
fn assert_controller_mounts_the_ca(pod: &Value, secret: &str) {
    let vol = ca_volume("controller", pod);
    assert_eq!(
        vol["secret"]["secretName"], secret,
        "controller CA volume: {vol}"
    );
    assert_eq!(volume_keys(vol, "secret"), ["ca.crt", "ca.key"], "{vol}");
    let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    assert_eq!(
        mode & 0o077 & !0o040,
        0,
        "controller: CA files mode {mode:o}"
    );
}

/// The agent mounts the CA certificate alone, from the ConfigMap, and no
/// Secret with a certificate or key.
fn assert_agent_mounts_only_the_ca_certificate(pod: &Value) {
    let vol = ca_volume("agent", pod);
    assert_eq!(
        vol["configMap"]["name"], "ferry-ca",
        "agent CA volume: {vol}"
    );
    assert_eq!(volume_keys(vol, "configMap"), ["ca.crt"], "{vol}");
    let secrets: Vec<&Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            v["secret"]["secretName"]
                .as_str()
                .is_some_and(|name| name != "ferry-encryption-key")
        })
        .collect();
    assert!(
        secrets.is_empty(),
        "the agent mounts key material: {secrets:?}"
    );
}

#[tokio::test]
async fn agent_runs_the_kubelet_runtime_with_mutual_tls() -> TestResult {
    let docs = documents(&render(&[]).await?)?;
    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let pod = &agent["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    for expected in [
        "--runtime=kubelet",
        "--kubelet-address=$(HOST_IP)",
        "--kubelet-port=10250",
        "--kubelet-ca=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "--kubelet-checkpoint-dir=/var/lib/kubelet/checkpoints",
        "--max-concurrent-transfers=2",
        "--identity=kubernetes-csr",
        "--csr-signer-name=ferry.dev/agent-ferry-system",
        "--tls-ca=/etc/ferry/ca/ca.crt",
        "--certificate-validity=4h",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    for absent in ["--zstd", "--kubelet-server-name"] {
        assert!(
            !args.iter().any(|a| a.starts_with(absent)),
            "agent args carry {absent} by default: {args:?}"
        );
    }
    for (var, path) in [
        ("NODE_NAME", "spec.nodeName"),
        ("HOST_IP", "status.hostIP"),
        ("POD_IP", "status.podIP"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let e = env(c, var).ok_or_else(|| format!("agent has no {var} env: {c}"))?;
        assert_eq!(
            e["valueFrom"]["fieldRef"]["fieldPath"], path,
            "agent env {var}: {e}"
        );
    }
    assert_eq!(
        pod["hostNetwork"], false,
        "the agent advertises its pod IP: {pod}"
    );
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "the agent presents its token to the kubelet: {pod}"
    );
    assert_agent_mounts_only_the_ca_certificate(pod);

    // The controller alone holds the CA key: it signs.
    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let cpod = &controller["spec"]["template"]["spec"];
    assert_controller_mounts_the_ca(cpod, "ferry-ca");
    let cargs = strings(&cpod["containers"][0]["args"]);
    for expected in [
        "--tls-ca=/etc/ferry/ca/ca.crt",
        "--ca-key=/etc/ferry/ca/ca.key",
        "--csr-signer-name=ferry.dev/agent-ferry-system",
        "--agent-service-account=ferry-agent",
    ] {
        assert!(
            cargs.contains(&expected),
            "controller args lack {expected}: {cargs:?}"
        );
    }
    // Non-root: it reads the key through the group.
    assert_eq!(
        cpod["securityContext"]["fsGroup"], 65532,
        "controller pod: {cpod}"
    );

    // Values reach the flags.
    let docs = documents(
        &render(&[
            "--set",
            "agent.kubelet.port=11250",
            "--set",
            "agent.kubelet.serverName=$(NODE_NAME)",
            "--set",
            "agent.kubelet.caFile=/etc/kubelet-ca/ca.crt",
            "--set",
            "agent.kubeletCheckpointDir=/srv/kubelet/checkpoints",
            "--set",
            "agent.replication.maxConcurrentTransfers=4",
            "--set",
            "agent.replication.zstd=true",
            "--set",
            "agent.extraVolumes[0].name=kubelet-ca",
            "--set",
            "agent.extraVolumes[0].hostPath.path=/var/lib/kubelet/pki",
            "--set",
            "agent.extraVolumeMounts[0].name=kubelet-ca",
            "--set",
            "agent.extraVolumeMounts[0].mountPath=/etc/kubelet-ca",
        ])
        .await?,
    )?;
    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let pod = &agent["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    for expected in [
        "--kubelet-port=11250",
        "--kubelet-server-name=$(NODE_NAME)",
        "--kubelet-ca=/etc/kubelet-ca/ca.crt",
        "--kubelet-checkpoint-dir=/srv/kubelet/checkpoints",
        "--max-concurrent-transfers=4",
        "--zstd",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    assert_eq!(
        volume(pod, "kubelet-ca").map(|v| &v["hostPath"]["path"]),
        Some(&Value::from("/var/lib/kubelet/pki")),
        "agent volumes: {pod}"
    );
    assert!(
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "kubelet-ca" && m["mountPath"] == "/etc/kubelet-ca"),
        "agent volume mounts: {c}"
    );

    // An empty caFile leaves the agent's own default.
    let docs = documents(&render(&["--set", "agent.kubelet.caFile="]).await?)?;
    let agent = find(&docs, "DaemonSet", "ferry-agent").ok_or("no DaemonSet ferry-agent")?;
    let args = strings(&agent["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--kubelet-ca")),
        "agent args: {args:?}"
    );
    Ok(())
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ferry-chart-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The decoded value of `key` in a rendered Secret's `data`.
fn secret_data(secret: &Value, key: &str) -> Result<Vec<u8>, String> {
    let encoded = secret["data"][key]
        .as_str()
        .ok_or_else(|| format!("Secret {} has no data key {key}", name(secret)))?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("Secret {} key {key} is not base64: {e}", name(secret)))
}

/// `openssl <args>`, failing unless it exits 0; returns its stdout.
async fn openssl(args: &[&str], dir: &Path) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let out = run(cmd, None).await.map_err(|e| {
        format!("{e} (the chart tests need the openssl CLI: apt-get install openssl)")
    })?;
    if !out.status.success() {
        return Err(format!("openssl {args:?} failed:\n{}", describe(&out)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A mutual-TLS handshake in memory between a rustls server that requires a
/// client certificate signed by `ca` and a rustls client that dials
/// `server_name`, both presenting `cert`/`key` (as the agents and the
/// controller do, through tonic).
fn mutual_handshake(ca: &[u8], cert: &[u8], key: &[u8], server_name: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(der.map_err(|e| format!("ca.crt: {e}"))?)
            .map_err(|e| format!("ca.crt: {e}"))?;
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("server config: {e}"))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client config: {e}"))?;

    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let mut c = rustls::ClientConnection::new(Arc::new(client), name)
        .map_err(|e| format!("client: {e}"))?;
    let mut s =
        rustls::ServerConnection::new(Arc::new(server)).map_err(|e| format!("server: {e}"))?;
    for _ in 0..16 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).map_err(|e| e.to_string())?;
        }
        let mut input = wire.as_slice();
        while !input.is_empty() {
            s.read_tls(&mut input).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server refused the client: {e}"))?;
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).map_err(|e| e.to_string())?;
        }
        let mut input = wire.as_slice();
        while !input.is_empty() {
            c.read_tls(&mut input).map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client refused the server: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return if s.peer_certificates().is_some_and(|p| !p.is_empty()) {
                Ok(())
            } else {
                Err("the server saw no client certificate".into())
            };
        }
    }
    Err("the handshake made no progress".into())
}

#[tokio::test]
async fn generated_ca_signs_and_only_its_certificate_is_public() -> TestResult {
    let docs = documents(&render(&[]).await?)?;
    let secret = find(&docs, "Secret", "ferry-ca").ok_or("no Secret ferry-ca")?;
    assert_eq!(
        secret["metadata"]["namespace"], NAMESPACE,
        "Secret: {secret}"
    );
    let ca = secret_data(secret, "ca.crt")?;
    let ca_key = secret_data(secret, "ca.key")?;
    let bundle = find(&docs, "ConfigMap", "ferry-ca").ok_or("no ConfigMap ferry-ca")?;
    let public = bundle["data"]["ca.crt"].as_str().unwrap_or_default();
    assert_eq!(
        public.trim(),
        String::from_utf8_lossy(&ca).trim(),
        "the ConfigMap holds another CA"
    );
    assert!(!public.contains("PRIVATE KEY"), "the ConfigMap holds a key");
    // No certificate or key for any component is rendered: each gets its
    // own at run time.
    for doc in &docs {
        if kind(doc) == "Secret" && name(doc) != "ferry-ca" && name(doc) != "ferry-webhook-tls" {
            panic!("the chart renders key material in Secret {}", name(doc));
        }
    }

    let dir = TempDir::new("ca")?;
    std::fs::write(dir.0.join("ca.crt"), &ca)?;
    std::fs::write(dir.0.join("ca.key"), &ca_key)?;
    let ca_text = openssl(&["x509", "-in", "ca.crt", "-noout", "-text"], &dir.0).await?;
    assert!(ca_text.contains("CA:TRUE"), "ca.crt is no CA:\n{ca_text}");
    let cert_pub = openssl(&["x509", "-in", "ca.crt", "-noout", "-pubkey"], &dir.0).await?;
    let key_pub = openssl(&["pkey", "-in", "ca.key", "-pubout"], &dir.0).await?;
    assert_eq!(cert_pub, key_pub, "ca.key does not match ca.crt");

    // What the controller's signer issues from it is accepted by rustls
    // (the agents' and the controller's TLS stack) both ways, and the name
    // is still checked.
    // helm's genCA key is PKCS#1 RSA; the controller reads it the same way.
    let pkcs8 = ferry_proto::tls::pkcs8_key(&ca_key)?;
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice())?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&String::from_utf8_lossy(&ca), key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = ferry_proto::tls::Identity::agent("node-a")
        .certificate_params(std::time::Duration::from_secs(3600))?
        .signed_by(&leaf_key, &issuer)?;
    let (cert, key) = (
        leaf.pem().into_bytes(),
        leaf_key.serialize_pem().into_bytes(),
    );
    mutual_handshake(&ca, &cert, &key, "ferry-agent").map_err(|e| format!("mutual TLS: {e}"))?;
    assert!(
        mutual_handshake(&ca, &cert, &key, "ferry-intruder").is_err(),
        "a server name the certificate does not carry was accepted"
    );

    // Every render generates a new CA (no cluster to reuse it from).
    let again = documents(&render(&[]).await?)?;
    let again = find(&again, "Secret", "ferry-ca").ok_or("no Secret ferry-ca")?;
    assert_ne!(
        secret_data(again, "ca.crt")?,
        ca,
        "two renders produced the same CA"
    );
    Ok(())
}

#[tokio::test]
async fn the_ca_can_be_provided_by_the_user() -> TestResult {
    let ca_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    let docs = documents(
        &render(&[
            "--set",
            "tls.generate=false",
            "--set",
            "tls.secretName=my-ferry-ca",
            "--set-string",
            &format!("tls.caCert={ca_pem}"),
        ])
        .await?,
    )?;
    // (The webhook's serving certificate has a switch of its own.)
    let secrets: Vec<&str> = docs
        .iter()
        .filter(|d| {
            kind(d) == "Secret"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] != "webhook"
        })
        .map(name)
        .collect();
    assert!(
        secrets.is_empty(),
        "tls.generate=false still renders {secrets:?}"
    );
    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    assert_controller_mounts_the_ca(&controller["spec"]["template"]["spec"], "my-ferry-ca");
    let bundle = find(&docs, "ConfigMap", "ferry-ca").ok_or("no ConfigMap ferry-ca")?;
    assert_eq!(
        bundle["data"]["ca.crt"].as_str().unwrap_or_default().trim(),
        ca_pem
    );
    assert_agent_mounts_only_the_ca_certificate(agent_pod(&docs)?);

    // Without the CA certificate (and no cluster to read it from) the
    // render fails, naming the value.
    let err = render(&["--set", "tls.generate=false"]).await.unwrap_err();
    assert!(err.contains("tls.caCert"), "{err}");

    // A generated Secret takes the configured name.
    let docs = documents(&render(&["--set", "tls.secretName=my-ferry-ca"]).await?)?;
    assert!(
        find(&docs, "Secret", "my-ferry-ca").is_some(),
        "no Secret my-ferry-ca"
    );
    Ok(())
}

#[tokio::test]
async fn generated_ca_is_kept_across_upgrades() -> TestResult {
    // Its own namespace, so the other tests' dry runs are unaffected.
    const NS: &str = "ferry-ca-reuse";
    let cp = ControlPlane::shared().await?;
    ensure_namespace(cp, NS).await?;

    // What `helm upgrade` renders, with lookup answered by the cluster.
    let render_against_cluster = || async {
        let mut cmd = Command::new(helm().await?);
        cmd.args(["template", RELEASE])
            .arg(chart_dir())
            .args(["--namespace", NS, "--dry-run=server"])
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path());
        let out = run(cmd, None).await?;
        if !out.status.success() {
            return Err(format!(
                "helm template --dry-run=server failed:\n{}",
                describe(&out)
            ));
        }
        let docs = documents(&String::from_utf8_lossy(&out.stdout))?;
        let secret = find(&docs, "Secret", "ferry-ca")
            .cloned()
            .ok_or_else(|| "no Secret ferry-ca".to_owned())?;
        let bundle = find(&docs, "ConfigMap", "ferry-ca")
            .cloned()
            .ok_or_else(|| "no ConfigMap ferry-ca".to_owned())?;
        Ok::<_, String>((secret, bundle))
    };

    // First install: nothing to reuse; store what it generated.
    let (first, _) = render_against_cluster().await?;
    let mut apply = cp.kubectl();
    apply.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=ferry-chart-test",
        "-f",
        "-",
    ]);
    let out = run(apply, Some(serde_json::to_vec(&first)?)).await?;
    assert!(
        out.status.success(),
        "creating the Secret failed:\n{}",
        describe(&out)
    );

    // Upgrade: the same CA comes back, and the ConfigMap publishes it.
    let (second, bundle) = render_against_cluster().await?;
    for key in ["ca.crt", "ca.key"] {
        assert_eq!(
            secret_data(&second, key)?,
            secret_data(&first, key)?,
            "{key} changed on upgrade although the Secret exists"
        );
    }
    assert_eq!(
        bundle["data"]["ca.crt"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .as_bytes(),
        String::from_utf8_lossy(&secret_data(&first, "ca.crt")?)
            .trim()
            .as_bytes()
    );
    Ok(())
}

/// The agent DaemonSet's pod spec in a render.
fn agent_pod(docs: &[Value]) -> Result<&Value, String> {
    find(docs, "DaemonSet", "ferry-agent")
        .map(|agent| &agent["spec"]["template"]["spec"])
        .ok_or_else(|| "no DaemonSet ferry-agent".to_owned())
}

#[tokio::test]
async fn agent_encrypts_archives_at_rest_only_when_enabled() -> TestResult {
    const FLAG: &str = "--encryption-key-file=/etc/ferry/encryption/key";

    // Off by default: no flag, no key, no mount.
    let docs = documents(&render(&[]).await?)?;
    let pod = agent_pod(&docs)?;
    let args = strings(&pod["containers"][0]["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--encryption-key-file")),
        "agent args: {args:?}"
    );
    assert!(volume(pod, "encryption-key").is_none(), "agent: {pod}");
    assert!(find(&docs, "Secret", "ferry-encryption-key").is_none());

    // On: a generated 32-byte key, mounted read-only where the flag points.
    let yaml = render(&["--set", "agent.encryption.enabled=true"]).await?;
    let docs = documents(&yaml)?;
    let secret =
        find(&docs, "Secret", "ferry-encryption-key").ok_or("no Secret ferry-encryption-key")?;
    assert_eq!(secret["type"], "Opaque", "{secret}");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "the key outlives the release like the archives do: {secret}"
    );
    let key = secret_data(secret, "key")?;
    assert_eq!(key.len(), 32, "the key is 32 random bytes");
    assert_ne!(key, vec![0u8; 32]);
    let pod = agent_pod(&docs)?;
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert!(args.contains(&FLAG), "agent args lack {FLAG}: {args:?}");
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "encryption-key")
        .ok_or_else(|| format!("agent mounts no encryption-key volume: {c}"))?;
    assert_eq!(mount["mountPath"], "/etc/ferry/encryption", "{mount}");
    assert_eq!(mount["readOnly"], true, "{mount}");
    let vol = volume(pod, "encryption-key").ok_or("agent has no encryption-key volume")?;
    assert_eq!(vol["secret"]["secretName"], "ferry-encryption-key", "{vol}");
    assert_eq!(
        vol["secret"]["items"],
        serde_json::json!([{"key": "key", "path": "key"}]),
        "{vol}"
    );
    assert_eq!(vol["secret"]["defaultMode"], 0o400, "{vol}");

    // The API server accepts it.
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
    let out = run(cmd, Some(yaml.into_bytes())).await?;
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("secret/ferry-encryption-key"),
        "server-side dry run with encryption enabled:\n{}",
        describe(&out)
    );

    // A Secret of the user's: mounted, none generated.
    let docs = documents(
        &render(&[
            "--set",
            "agent.encryption.enabled=true",
            "--set",
            "agent.encryption.existingSecret=my-ferry-key",
        ])
        .await?,
    )?;
    assert!(find(&docs, "Secret", "ferry-encryption-key").is_none());
    let pod = agent_pod(&docs)?;
    let vol = volume(pod, "encryption-key").ok_or("agent has no encryption-key volume")?;
    assert_eq!(vol["secret"]["secretName"], "my-ferry-key", "{vol}");
    assert!(strings(&pod["containers"][0]["args"]).contains(&FLAG));
    Ok(())
}

#[tokio::test]
async fn generated_encryption_key_is_kept_across_upgrades() -> TestResult {
    // Its own namespace, so the other tests' dry runs are unaffected.
    const NS: &str = "ferry-key-reuse";
    let cp = ControlPlane::shared().await?;
    ensure_namespace(cp, NS).await?;
    let render_against_cluster = || async {
        let mut cmd = Command::new(helm().await?);
        cmd.args(["template", RELEASE])
            .arg(chart_dir())
            .args(["--namespace", NS, "--dry-run=server"])
            .args(["--set", "agent.encryption.enabled=true"])
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path());
        let out = run(cmd, None).await?;
        if !out.status.success() {
            return Err(format!(
                "helm template --dry-run=server failed:\n{}",
                describe(&out)
            ));
        }
        let docs = documents(&String::from_utf8_lossy(&out.stdout))?;
        find(&docs, "Secret", "ferry-encryption-key")
            .cloned()
            .ok_or_else(|| "no Secret ferry-encryption-key".to_owned())
    };
    let first = render_against_cluster().await?;
    let mut apply = cp.kubectl();
    apply.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=ferry-chart-test",
        "-f",
        "-",
    ]);
    let out = run(apply, Some(serde_json::to_vec(&first)?)).await?;
    assert!(
        out.status.success(),
        "creating the Secret failed:\n{}",
        describe(&out)
    );
    let second = render_against_cluster().await?;
    assert_eq!(
        secret_data(&second, "key")?,
        secret_data(&first, "key")?,
        "the key changed on upgrade although the Secret exists: every archive would become unreadable"
    );
    Ok(())
}

/// `--set` arguments for `helm template`, with "--set" between them.
fn sets<'a>(values: &[&'a str]) -> Vec<&'a str> {
    values.iter().flat_map(|v| ["--set", *v]).collect()
}

#[tokio::test]
async fn webhook_is_registered_with_the_ca_that_signed_its_serving_certificate() -> TestResult {
    let docs = documents(&render(&[]).await?)?;
    let config = find(&docs, "MutatingWebhookConfiguration", "ferry-failover")
        .ok_or("no MutatingWebhookConfiguration ferry-failover")?;
    let hooks = config["webhooks"]
        .as_array()
        .ok_or("MutatingWebhookConfiguration without webhooks")?;
    assert_eq!(hooks.len(), 1, "{config}");
    let hook = &hooks[0];
    assert_eq!(hook["name"], "failover.ferry.dev");
    // A down controller must never block pod creation.
    assert_eq!(hook["failurePolicy"], "Ignore", "{hook}");
    assert_eq!(hook["sideEffects"], "None", "{hook}");
    assert_eq!(hook["timeoutSeconds"], 5, "{hook}");
    assert_eq!(hook["reinvocationPolicy"], "Never", "{hook}");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        hook["rules"],
        serde_json::json!([{
            "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"], "scope": "Namespaced"
        }])
    );
    assert_eq!(
        hook["namespaceSelector"],
        serde_json::json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", NAMESPACE]
        }]})
    );
    let service_ref = &hook["clientConfig"]["service"];
    assert_eq!(
        service_ref,
        &serde_json::json!({"name": "ferry-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443})
    );

    // The Service reaches the controller's webhook port.
    let service = find(&docs, "Service", "ferry-webhook").ok_or("no Service ferry-webhook")?;
    assert_eq!(
        service["spec"]["ports"],
        serde_json::json!([{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );
    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let pod = &controller["spec"]["template"]["spec"];
    assert_eq!(
        service["spec"]["selector"], controller["spec"]["selector"]["matchLabels"],
        "the webhook Service must select the controller pods"
    );
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    for expected in [
        "--webhook-addr=0.0.0.0:9443",
        "--webhook-cert=/etc/ferry/webhook-tls/tls.crt",
        "--webhook-key=/etc/ferry/webhook-tls/tls.key",
    ] {
        assert!(
            args.contains(&expected),
            "controller args lack {expected}: {args:?}"
        );
    }
    assert!(
        c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "webhook" && p["containerPort"] == 9443),
        "controller ports: {c}"
    );
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/etc/ferry/webhook-tls")
        .ok_or_else(|| format!("controller mounts nothing at /etc/ferry/webhook-tls: {c}"))?;
    assert_eq!(mount["readOnly"], true, "{mount}");
    let vol =
        volume(pod, mount["name"].as_str().unwrap_or_default()).ok_or("no webhook-tls volume")?;
    assert_eq!(vol["secret"]["secretName"], "ferry-webhook-tls", "{vol}");
    assert_eq!(vol["secret"]["defaultMode"], 0o440, "{vol}");

    // caBundle is the CA in the Secret, and that CA signed the serving
    // certificate for the Service's DNS names.
    let secret = find(&docs, "Secret", "ferry-webhook-tls").ok_or("no Secret ferry-webhook-tls")?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let ca = secret_data(secret, "ca.crt")?;
    let cert = secret_data(secret, "tls.crt")?;
    let key = secret_data(secret, "tls.key")?;
    let bundle = base64::engine::general_purpose::STANDARD.decode(
        hook["clientConfig"]["caBundle"]
            .as_str()
            .ok_or("no caBundle")?,
    )?;
    assert_eq!(bundle, ca, "caBundle is not the Secret's ca.crt");

    let dir = TempDir::new("webhook")?;
    for (file, pem) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(dir.0.join(file), pem)?;
    }
    let out = openssl(
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslserver",
            "tls.crt",
        ],
        &dir.0,
    )
    .await?;
    assert!(out.contains("tls.crt: OK"), "openssl verify: {out}");
    let text = openssl(&["x509", "-in", "tls.crt", "-noout", "-text"], &dir.0).await?;
    for expected in [
        "DNS:ferry-webhook.ferry-system.svc,",
        "DNS:ferry-webhook.ferry-system.svc.cluster.local",
        "TLS Web Server Authentication",
    ] {
        assert!(text.contains(expected), "tls.crt lacks {expected}:\n{text}");
    }
    let cert_pub = openssl(&["x509", "-in", "tls.crt", "-noout", "-pubkey"], &dir.0).await?;
    let key_pub = openssl(&["pkey", "-in", "tls.key", "-pubout"], &dir.0).await?;
    assert_eq!(cert_pub, key_pub, "tls.key does not match tls.crt");
    // rustls accepts it under the name the API server dials.
    mutual_handshake(&bundle, &cert, &key, "ferry-webhook.ferry-system.svc")
        .map_err(|e| format!("TLS as ferry-webhook.ferry-system.svc: {e}"))?;
    assert!(
        mutual_handshake(&bundle, &cert, &key, "ferry-controller.ferry-system.svc").is_err(),
        "a name the certificate does not carry was accepted"
    );
    Ok(())
}

#[tokio::test]
async fn webhook_values_reach_the_objects() -> TestResult {
    // Disabled: no webhook object, flag, port or mount.
    let yaml = render(&sets(&["webhook.enabled=false"])).await?;
    assert!(
        !yaml.contains("webhook"),
        "webhook.enabled=false still renders webhook parts:\n{yaml}"
    );

    let docs =
        documents(&render(&sets(&["webhook.port=10443", "webhook.timeoutSeconds=2"])).await?)?;
    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let c = &controller["spec"]["template"]["spec"]["containers"][0];
    assert!(
        strings(&c["args"]).contains(&"--webhook-addr=0.0.0.0:10443"),
        "controller args: {c}"
    );
    assert!(
        c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "webhook" && p["containerPort"] == 10443),
        "controller ports: {c}"
    );
    let config = find(&docs, "MutatingWebhookConfiguration", "ferry-failover")
        .ok_or("no MutatingWebhookConfiguration")?;
    assert_eq!(config["webhooks"][0]["timeoutSeconds"], 2);

    // A certificate from elsewhere: no Secret rendered, the given CA used.
    let out = helm_template(&sets(&["webhook.tls.generate=false"])).await?;
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("webhook.tls.caBundle"),
        "webhook.tls.generate=false without caBundle must fail naming it:\n{}",
        describe(&out)
    );
    let docs = documents(
        &render(&sets(&[
            "webhook.tls.generate=false",
            "webhook.tls.secretName=my-webhook-cert",
            "webhook.tls.caBundle=Q0E=",
        ]))
        .await?,
    )?;
    assert!(
        find(&docs, "Secret", "my-webhook-cert").is_none()
            && find(&docs, "Secret", "ferry-webhook-tls").is_none(),
        "webhook.tls.generate=false still renders a webhook Secret"
    );
    let config = find(&docs, "MutatingWebhookConfiguration", "ferry-failover")
        .ok_or("no MutatingWebhookConfiguration")?;
    assert_eq!(config["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let vol = volume(&controller["spec"]["template"]["spec"], "webhook-tls")
        .ok_or("no webhook-tls volume")?;
    assert_eq!(vol["secret"]["secretName"], "my-webhook-cert", "{vol}");

    // Schema.
    let cases: &[(&str, &str)] = &[
        ("webhook.enabled=yes", "webhook.enabled"),
        ("webhook.port=80", "webhook.port"),
        ("webhook.port=8080", "webhook.port"),
        ("webhook.port=70000", "webhook.port"),
        ("webhook.timeoutSeconds=0", "webhook.timeoutSeconds"),
        ("webhook.timeoutSeconds=31", "webhook.timeoutSeconds"),
        ("webhook.tls.caBundle=not base64!", "webhook.tls.caBundle"),
        (
            "webhook.tls.secretName=Not_A_Name",
            "webhook.tls.secretName",
        ),
        ("webhook.failurePolicy=Fail", "failurePolicy"),
    ];
    for (value, needle) in cases {
        let out = helm_template(&["--set", value]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("schema") && stderr.contains(needle),
            "helm template --set {value} must fail schema validation naming {needle:?}:\n{}",
            describe(&out)
        );
    }
    Ok(())
}

#[tokio::test]
async fn webhook_certificate_is_kept_across_upgrades_while_its_names_stay() -> TestResult {
    const NS: &str = "ferry-webhook-reuse";
    let cp = ControlPlane::shared().await?;
    ensure_namespace(cp, NS).await?;

    // What `helm upgrade` renders (lookup answered by the cluster): the
    // webhook Secret and the caBundle.
    let render_against_cluster = |extra: &'static [&'static str]| async move {
        let mut cmd = Command::new(helm().await?);
        cmd.args(["template", RELEASE])
            .arg(chart_dir())
            .args(["--namespace", NS, "--dry-run=server"])
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(extra);
        let out = run(cmd, None).await?;
        if !out.status.success() {
            return Err(format!(
                "helm template --dry-run=server failed:\n{}",
                describe(&out)
            ));
        }
        let docs = documents(&String::from_utf8_lossy(&out.stdout))?;
        let secret = docs
            .iter()
            .find(|d| {
                kind(d) == "Secret"
                    && d["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
            })
            .cloned()
            .ok_or_else(|| "no webhook Secret".to_owned())?;
        let bundle = docs
            .iter()
            .find(|d| kind(d) == "MutatingWebhookConfiguration")
            .and_then(|d| d["webhooks"][0]["clientConfig"]["caBundle"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| "no caBundle".to_owned())?;
        Ok::<_, String>((secret, bundle))
    };
    let fixed: &'static [&'static str] = &["--set", "webhook.tls.secretName=ferry-webhook-fixed"];

    let (first, first_bundle) = render_against_cluster(fixed).await?;
    let mut apply = cp.kubectl();
    apply.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=ferry-chart-test",
        "-f",
        "-",
    ]);
    let out = run(apply, Some(serde_json::to_vec(&first)?)).await?;
    assert!(
        out.status.success(),
        "creating the webhook Secret failed:\n{}",
        describe(&out)
    );

    // Upgrade: the same certificate, and caBundle still its CA.
    let (second, second_bundle) = render_against_cluster(fixed).await?;
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert_eq!(
            secret_data(&second, key)?,
            secret_data(&first, key)?,
            "{key} changed on upgrade although the Secret exists"
        );
    }
    assert_eq!(second_bundle, first_bundle, "caBundle changed on upgrade");
    assert_eq!(
        second["data"]["ca.crt"].as_str(),
        Some(second_bundle.as_str()),
        "caBundle is not the kept CA"
    );

    // Another Service name (renamed release): the kept certificate would
    // not match it, so a new one is issued, with a matching caBundle.
    let (renamed, renamed_bundle) = render_against_cluster(&[
        "--set",
        "webhook.tls.secretName=ferry-webhook-fixed",
        "--set",
        "fullnameOverride=other",
    ])
    .await?;
    assert_ne!(
        secret_data(&renamed, "tls.crt")?,
        secret_data(&first, "tls.crt")?,
        "a certificate for other DNS names was reused"
    );
    assert_eq!(
        renamed["data"]["ca.crt"].as_str(),
        Some(renamed_bundle.as_str())
    );
    Ok(())
}

/// `(name, mountPath)` of every volume mount of a container.
fn mounts(container: &Value) -> Vec<(&str, &str)> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default(),
                m["mountPath"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

/// `(volume name, path, type)` of every hostPath volume of a pod spec.
fn host_path_volumes(pod: &Value) -> Vec<(&str, &str, &str)> {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default(),
                v["hostPath"]["path"].as_str().unwrap_or_default(),
                v["hostPath"]["type"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

/// Asserts that every hostPath volume is mounted at its own host path (the
/// kubelet names archives by their host path; ctr dials the host's socket
/// path).
fn assert_host_paths_mounted_in_place(pod: &Value) {
    let c = &pod["containers"][0];
    let mounted = mounts(c);
    for (name, path, _) in host_path_volumes(pod) {
        assert!(
            mounted.contains(&(name, path)),
            "hostPath volume {name} ({path}) is not mounted at {path}: {mounted:?}"
        );
    }
}

/// The local cluster of hack/cluster.sh: per-node paths under two shared
/// parents, the kubelet port from the Node object, restores through ferry's
/// runtime handler, the API server's address from the values (no
/// kube-proxy), local images.
#[tokio::test]
async fn cluster_values_mount_the_parents_of_per_node_paths() -> TestResult {
    let values = repo_root().join("hack/cluster-values.yaml");
    let values = values.to_str().ok_or("non-UTF-8 repo path")?;
    let args = [
        "-f",
        values,
        "--set",
        "controller.extraEnv[0].value=192.0.2.2",
        "--set",
        "agent.extraEnv[0].value=192.0.2.2",
    ];
    let yaml = render(&args).await?;
    let docs = documents(&yaml)?;
    let pod = agent_pod(&docs)?;
    let c = &pod["containers"][0];
    let agent_args = strings(&c["args"]);
    for expected in [
        "--data-dir=/var/lib/ferry-cluster/nodes/$(NODE_NAME)/ferry",
        "--kubelet-checkpoint-dir=/var/lib/ferry-cluster/nodes/$(NODE_NAME)/kubelet/checkpoints",
        "--kubelet-port=0",
        "--restore-backend=runtime-handler",
        "--restore-grants-dir=/var/lib/ferry-cluster/nodes/$(NODE_NAME)/grants",
        "--runtime-handler-dir=/var/lib/ferry-cluster/nodes/$(NODE_NAME)/runtime-handler",
        "--host-runc=/usr/sbin/runc",
    ] {
        assert!(
            agent_args.contains(&expected),
            "agent args lack {expected}: {agent_args:?}"
        );
    }
    // Exactly the two parents, each at its own path; no per-node hostPath
    // (it could not be expanded), no separate socket mount (covered).
    assert_eq!(
        host_path_volumes(pod),
        [
            ("host-0", "/var/lib/ferry-cluster/nodes", "Directory"),
            ("host-1", "/run/ferry-cluster", "Directory"),
        ],
        "agent volumes: {pod}"
    );
    assert_host_paths_mounted_in_place(pod);
    assert_eq!(pod["dnsPolicy"], "Default", "agent pod: {pod}");
    let runtime_class = find(&docs, "RuntimeClass", "ferry").ok_or("no RuntimeClass ferry")?;
    assert_eq!(runtime_class["handler"], "ferry", "{runtime_class}");
    assert_eq!(c["image"], "localhost/ferry/agent:dev", "agent: {c}");
    assert_eq!(c["imagePullPolicy"], "Never", "agent: {c}");

    let controller =
        find(&docs, "Deployment", "ferry-controller").ok_or("no Deployment ferry-controller")?;
    let cpod = &controller["spec"]["template"]["spec"];
    let cc = &cpod["containers"][0];
    assert_eq!(cc["image"], "localhost/ferry/controller:dev", "{cc}");
    assert_eq!(cc["imagePullPolicy"], "Never", "{cc}");
    assert_eq!(cpod["dnsPolicy"], "Default", "controller pod: {cpod}");
    for (what, container) in [("agent", c), ("controller", cc)] {
        assert_eq!(
            env(container, "KUBERNETES_SERVICE_HOST").map(|e| &e["value"]),
            Some(&Value::from("192.0.2.2")),
            "{what} env: {container}"
        );
        assert_eq!(
            env(container, "KUBERNETES_SERVICE_PORT").map(|e| &e["value"]),
            Some(&Value::from("6443")),
            "{what} env: {container}"
        );
    }

    // Port 0 makes the agent read its Node: get on nodes, nothing more.
    let role = find(&docs, "ClusterRole", "ferry-agent").ok_or("no ClusterRole ferry-agent")?;
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["nodes/checkpoint"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": ["ferry.dev"], "resources": ["checkpointpolicies"], "verbs": ["get"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
                "verbs": ["create", "get"]},
        ]),
        "agent ClusterRole with kubelet.port 0"
    );

    // And the API server accepts the rendering.
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
    let out = run(cmd, Some(yaml.into_bytes())).await?;
    assert!(
        out.status.success(),
        "the API server rejects the chart rendered with hack/cluster-values.yaml:\n{}",
        describe(&out)
    );
    Ok(())
}

/// Paths the DaemonSet cannot mount make the chart refuse to render, with a
/// message naming the value.
#[tokio::test]
async fn unmountable_agent_paths_fail_with_a_clear_message() -> TestResult {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "agent.dataDir=/var/lib/nodes/$(NODE_NAME)/ferry"],
            &[
                "agent.dataDir",
                "cannot expand",
                "agent.hostPathMounts",
                "/var/lib/nodes",
            ],
        ),
        (
            &[
                "--set",
                "agent.kubeletCheckpointDir=/var/lib/nodes/$(NODE_NAME)/kubelet/checkpoints",
            ],
            &["agent.kubeletCheckpointDir", "cannot expand"],
        ),
        (
            &[
                "--set",
                "agent.restore.backend=containerd",
                "--set",
                "agent.restore.containerdAddress=/run/nodes/$(NODE_NAME)/containerd.sock",
            ],
            &["agent.restore.containerdAddress", "cannot expand"],
        ),
        (
            &["--set", "agent.hostPathMounts={/srv/ferry}"],
            &[
                "agent.dataDir",
                "/var/lib/ferry",
                "below none of agent.hostPathMounts",
            ],
        ),
        // Segment-wise: /var/lib/ferry-x is not below /var/lib/ferry.
        (
            &[
                "--set",
                "agent.hostPathMounts={/var/lib/ferry,/var/lib/kubelet}",
                "--set",
                "agent.dataDir=/var/lib/ferry-x",
            ],
            &["agent.dataDir", "/var/lib/ferry-x", "below none"],
        ),
        (
            &[
                "--set",
                "agent.hostPathMounts={/var/lib}",
                "--set",
                "agent.restore.backend=containerd",
                "--set",
                "agent.restore.containerdAddress=/run/nodes/$(NODE_NAME)/containerd.sock",
            ],
            &["agent.restore.containerdAddress", "cannot expand"],
        ),
    ];
    for (args, needles) in cases {
        let out = helm_template(args).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "helm template {args:?} should fail but succeeded:\n{}",
            describe(&out)
        );
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "helm template {args:?} failed without saying {needle:?}:\n{}",
                describe(&out)
            );
        }
    }

    // A per-node path disappears from the failures once a parent is mounted.
    let docs = documents(
        &render(&[
            "--set",
            "agent.restore.backend=containerd",
            "--set",
            "agent.hostPathMounts={/var/lib/nodes,/var/lib/kubelet}",
            "--set",
            "agent.dataDir=/var/lib/nodes/$(NODE_NAME)/ferry",
        ])
        .await?,
    )?;
    let pod = agent_pod(&docs)?;
    assert_eq!(
        host_path_volumes(pod),
        [
            ("host-0", "/var/lib/nodes", "Directory"),
            ("host-1", "/var/lib/kubelet", "Directory"),
            ("containerd", "/run/containerd", "Directory"),
        ],
        "agent volumes: {pod}"
    );
    assert_host_paths_mounted_in_place(pod);
    Ok(())
}

#[tokio::test]
async fn agent_restore_backend_reaches_flags_and_mounts() -> TestResult {
    // Default: ferry's runtime handler, its directories mounted, no socket.
    let docs = documents(&render(&[]).await?)?;
    let pod = agent_pod(&docs)?;
    let args = strings(&pod["containers"][0]["args"]);
    for expected in [
        "--restore-backend=runtime-handler",
        "--restore-grants-dir=/var/lib/ferry/grants",
        "--runtime-handler-dir=/opt/ferry/bin",
        "--host-runc=/usr/sbin/runc",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--containerd-")),
        "agent args: {args:?}"
    );
    assert!(
        volume(pod, "containerd").is_none(),
        "backend runtimeHandler mounts the containerd socket: {pod}"
    );
    let runtime_class = find(&docs, "RuntimeClass", "ferry").ok_or("no RuntimeClass ferry")?;
    assert_eq!(runtime_class["handler"], "ferry", "{runtime_class}");
    assert_host_paths_mounted_in_place(pod);

    // Opt-in: containerd at its usual socket, whose directory is mounted,
    // and no RuntimeClass.
    let containerd = ["--set", "agent.restore.backend=containerd"];
    let docs = documents(&render(&containerd).await?)?;
    assert!(find(&docs, "RuntimeClass", "ferry").is_none());
    let pod = agent_pod(&docs)?;
    let args = strings(&pod["containers"][0]["args"]);
    for expected in [
        "--restore-backend=containerd",
        "--containerd-address=/run/containerd/containerd.sock",
        "--containerd-namespace=k8s.io",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    assert!(
        host_path_volumes(pod).contains(&("containerd", "/run/containerd", "Directory")),
        "agent volumes: {pod}"
    );
    assert_host_paths_mounted_in_place(pod);

    // Another socket and namespace.
    let docs = documents(
        &render(&[
            "--set",
            "agent.restore.backend=containerd",
            "--set",
            "agent.restore.containerdAddress=/run/k3s/containerd/containerd.sock",
            "--set",
            "agent.restore.containerdNamespace=k8s.io.test",
        ])
        .await?,
    )?;
    let pod = agent_pod(&docs)?;
    let args = strings(&pod["containers"][0]["args"]);
    for expected in [
        "--containerd-address=/run/k3s/containerd/containerd.sock",
        "--containerd-namespace=k8s.io.test",
    ] {
        assert!(
            args.contains(&expected),
            "agent args lack {expected}: {args:?}"
        );
    }
    assert!(
        host_path_volumes(pod).contains(&("containerd", "/run/k3s/containerd", "Directory")),
        "agent volumes: {pod}"
    );

    // A hostPathMounts entry covering the socket replaces its own mount.
    let docs = documents(
        &render(&[
            "--set",
            "agent.restore.backend=containerd",
            "--set",
            "agent.hostPathMounts={/var/lib,/run}",
        ])
        .await?,
    )?;
    let pod = agent_pod(&docs)?;
    assert_eq!(
        host_path_volumes(pod),
        [
            ("host-0", "/var/lib", "Directory"),
            ("host-1", "/run", "Directory"),
        ],
        "agent volumes: {pod}"
    );

    // none: no containerd flags, no socket.
    let docs = documents(&render(&["--set", "agent.restore.backend=none"]).await?)?;
    let pod = agent_pod(&docs)?;
    let args = strings(&pod["containers"][0]["args"]);
    assert!(
        args.contains(&"--restore-backend=none"),
        "agent args: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--containerd-")),
        "agent args: {args:?}"
    );
    assert!(
        volume(pod, "containerd").is_none(),
        "backend none mounts the containerd socket: {pod}"
    );
    Ok(())
}

/// Renders each of `templates` alone and applies it (server-side) to the
/// control plane.
async fn apply_templates(cp: &ControlPlane, templates: &[&str]) -> TestResult {
    for template in templates {
        let rendered = render(&["--show-only", template]).await?;
        let mut apply = cp.kubectl();
        apply.args([
            "apply",
            "--server-side",
            "--field-manager=ferry-chart-test",
            "-f",
            "-",
        ]);
        let out = run(apply, Some(rendered.clone().into_bytes())).await?;
        assert!(
            out.status.success(),
            "applying {template} failed:\n{}\n{rendered}",
            describe(&out)
        );
    }
    Ok(())
}

/// A pod of `owner` (a ReplicaSet name), optionally carrying ferry's
/// rewrite for the failed pod `claims`.
fn guarded_pod(owner: &str, claims: Option<&str>, gated: bool) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": format!("{owner}-"),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                "uid": "6f1c43e0-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "counter:1"}]},
    });
    if let Some(uid) = claims {
        pod["metadata"]["annotations"] = serde_json::json!({"ferry.dev/failover-of": uid});
    }
    if gated {
        pod["spec"]["schedulingGates"] = serde_json::json!([{"name": "ferry.dev/restore"}]);
    }
    serde_json::from_value(pod).expect("a pod")
}

/// Creates `pod` in `namespace` as a server-side dry run; the error text
/// when the API server refuses it.
async fn try_create(
    client: &kube::Client,
    namespace: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<(), String> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    api.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        pod,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The attack on the webhook boundary: the mutating webhook fails open
/// (here it is not even registered, as if every replica were dead), so the
/// owner's replacement reaches the API server without the restore. The
/// chart's failover guard, evaluated inside the API server, refuses it
/// while the failover is pending, and lets through only a pod carrying
/// ferry's rewrite for that failover; other owners, other namespaces and
/// finished failovers are untouched.
#[tokio::test]
async fn failover_guard_refuses_replacements_without_the_restore() -> TestResult {
    let cp = ControlPlane::shared().await?;
    install_crd(cp).await?;
    apply_templates(cp, &["templates/failover-guard.yaml"]).await?;

    let client = cp.client().await?;
    for ns in ["guarded", "unguarded"] {
        ensure_namespace(cp, ns).await?;
    }
    let policies: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "guarded",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("ferry.dev", "v1alpha1", "CheckpointPolicy"),
            "checkpointpolicies",
        ),
    );
    let policy: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointPolicy",
        "metadata": {"name": "web", "namespace": "guarded"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}},
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let failover = |stage: &str| {
        serde_json::json!({"status": {"failovers": [{
            "reason": "NodeLoss", "pod": "web-1", "podUid": "failed-uid",
            "owner": "ReplicaSet/web", "fromNode": "a", "toNode": "b", "stage": stage,
            "startedAt": "2026-12-05T10:00:00Z"}]}})
    };
    let set_status = |status: serde_json::Value| {
        let policies = policies.clone();
        async move {
            policies
                .patch_status(
                    "web",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(status),
                )
                .await
                .map(|_| ())
        }
    };
    set_status(failover("Prepared")).await?;

    // The API server loads the guard and its params asynchronously: wait
    // (bounded) until it refuses the plain replacement.
    let cold = guarded_pod("web", None, false);
    let refusal = refused_once_loaded(
        &client,
        "guarded",
        &cold,
        "the guard never refused a replacement without the restore",
    )
    .await?;
    assert!(
        refusal.contains("ReplicaSet/web is being failed over")
            && refusal.contains("web-1")
            && refusal.contains("CheckpointPolicy web"),
        "the refusal names the owner, the failed pod and the policy: {refusal}"
    );
    // Claiming the failover without the gate, or another failover: refused.
    assert!(
        try_create(
            &client,
            "guarded",
            &guarded_pod("web", Some("failed-uid"), false)
        )
        .await
        .is_err()
    );
    assert!(
        try_create(
            &client,
            "guarded",
            &guarded_pod("web", Some("other-uid"), true)
        )
        .await
        .is_err()
    );
    // The webhook's rewrite: admitted.
    try_create(
        &client,
        "guarded",
        &guarded_pod("web", Some("failed-uid"), true),
    )
    .await?;
    // Another owner, another namespace: admitted.
    try_create(&client, "guarded", &guarded_pod("api", None, false)).await?;
    try_create(&client, "unguarded", &cold).await?;
    // Detected is guarded too (the restore is not prepared yet).
    set_status(failover("Detected")).await?;
    // Once the failover is over, the owner's pods are its own again.
    set_status(serde_json::json!({"status": {"failovers": null}})).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = try_create(&client, "guarded", &cold).await {
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after the failover ended: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A pod of `owner` (a ReplicaSet name, or none for a bare pod) that runs
/// `image`, optionally carrying ferry's rewrite for the failed pod `claims`.
fn pod_running(
    owner: Option<&str>,
    image: &str,
    claims: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = guarded_pod(owner.unwrap_or("bare"), claims, claims.is_some());
    if owner.is_none() {
        pod.metadata.owner_references = None;
    }
    pod.spec.as_mut().expect("spec").containers[0].image = Some(image.to_owned());
    pod
}

/// Creates CheckpointPolicy `web` in `namespace` with `failover` pending in
/// its status, as the controller records it.
async fn web_policy_failing_over(
    client: &kube::Client,
    namespace: &str,
    failover: Value,
) -> TestResult {
    let policies: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("ferry.dev", "v1alpha1", "CheckpointPolicy"),
            "checkpointpolicies",
        ),
    );
    let policy: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointPolicy",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "web"}}},
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    policies
        .patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"failovers": [failover]}})),
        )
        .await?;
    Ok(())
}

/// Creates `pod` until the API server refuses it (the guard's params load
/// asynchronously) and returns the refusal; fails after a minute.
async fn refused_once_loaded(
    client: &kube::Client,
    namespace: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
    what: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match try_create(client, namespace, pod).await {
            Err(e) => return Ok(e),
            Ok(()) => {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// The attack on the tenant boundary: a checkpoint image is a copy of a
/// process's memory. A pod in another namespace that names it, a pod of the
/// same namespace that ferry did not admit, and an update that swaps it
/// into an existing pod are all refused by the API server itself; only the
/// replacement of the pending failover runs it.
#[tokio::test]
async fn checkpoint_images_run_only_in_the_replacement_ferry_admitted() -> TestResult {
    let cp = ControlPlane::shared().await?;
    install_crd(cp).await?;
    apply_templates(
        cp,
        &[
            "templates/failover-guard.yaml",
            "templates/checkpoint-images.yaml",
        ],
    )
    .await?;
    let client = cp.client().await?;
    for ns in ["victim", "thief"] {
        ensure_namespace(cp, ns).await?;
    }
    let image = "localhost/ferry/checkpoint/victim/web/app:4f1b7c2e9a0d4c6b8e3f5a7d9c1b3e5f";
    web_policy_failing_over(
        &client,
        "victim",
        serde_json::json!({
        "reason": "NodeLoss", "pod": "web-1", "podUid": "failed-uid",
        "owner": "ReplicaSet/web", "fromNode": "a", "toNode": "b", "stage": "Fenced",
        "containers": [{"container": "app", "archive": "aa", "image": image}],
        "startedAt": "2026-12-05T10:00:00Z"}),
    )
    .await?;

    // The thief's pod, in its own namespace: refused once the API server
    // loaded the policy (asynchronously).
    let stolen = pod_running(None, image, None);
    let refusal = refused_once_loaded(
        &client,
        "thief",
        &stolen,
        "a pod of another namespace ran the checkpoint image",
    )
    .await?;
    assert!(
        refusal.contains("belongs to another namespace") && refusal.contains(image),
        "{refusal}"
    );
    // The same namespace: a bare pod, or a pod that claims another
    // failover, is refused once the guard's params are loaded.
    let refusal = refused_once_loaded(
        &client,
        "victim",
        &pod_running(None, image, None),
        "a pod ferry did not admit ran the checkpoint image",
    )
    .await?;
    assert!(
        refusal.contains("may run only in the replacement that ferry admitted"),
        "{refusal}"
    );
    assert!(
        try_create(
            &client,
            "victim",
            &pod_running(Some("web"), image, Some("other-uid"))
        )
        .await
        .is_err()
    );
    // The replacement ferry's webhook rewrote: admitted.
    try_create(
        &client,
        "victim",
        &pod_running(Some("web"), image, Some("failed-uid")),
    )
    .await?;

    // An existing pod cannot be switched to a checkpoint image.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "victim");
    let plain = pods
        .create(
            &PostParams::default(),
            &pod_running(None, "counter:1", None),
        )
        .await?;
    let name = plain.metadata.name.clone().unwrap_or_default();
    let swapped = pods
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(serde_json::json!({
                "spec": {"containers": [{"name": "app", "image": image}]}})),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let refusal = swapped.expect_err("swapping a checkpoint image into a pod");
    assert!(
        refusal.contains("cannot be set on an existing pod"),
        "{refusal}"
    );
    pods.delete(&name, &Default::default()).await?;
    Ok(())
}

/// The same boundary for ferry's runtime handler: its restore grant rides
/// in a pod annotation. A pod ferry did not admit that names the grant of a
/// pending failover is refused by the API server (ferry-runc, on the node,
/// refuses grants of other namespaces and used ones besides).
#[tokio::test]
async fn restore_grants_are_named_only_by_the_replacement_ferry_admitted() -> TestResult {
    let cp = ControlPlane::shared().await?;
    install_crd(cp).await?;
    apply_templates(cp, &["templates/failover-guard.yaml"]).await?;
    let client = cp.client().await?;
    ensure_namespace(cp, "granted").await?;
    let grant = "4f1b7c2e9a0d4c6b8e3f5a7d9c1b3e5f";
    web_policy_failing_over(
        &client,
        "granted",
        serde_json::json!({
        "reason": "NodeLoss", "pod": "web-1", "podUid": "failed-uid",
        "owner": "ReplicaSet/web", "fromNode": "a", "toNode": "b", "stage": "Fenced",
        "containers": [{"container": "app", "archive": "aa", "image": ""}],
        "podAnnotations": {"ferry.dev/restore-grant": grant},
        "runtimeClass": "ferry",
        "startedAt": "2026-12-05T10:00:00Z"}),
    )
    .await?;
    let with_grant = |owner: Option<&str>, claims: Option<&str>, grant: &str| {
        let mut pod = pod_running(owner, "counter:1", claims);
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("ferry.dev/restore-grant".into(), grant.into());
        pod
    };
    // A bare pod naming the grant: refused once the guard's params loaded.
    let refusal = refused_once_loaded(
        &client,
        "granted",
        &with_grant(None, None, grant),
        "a pod ferry did not admit named the restore grant",
    )
    .await?;
    assert!(
        refusal.contains("the restore grant of CheckpointPolicy web may be named only"),
        "{refusal}"
    );
    // Claiming another failover: refused too.
    assert!(
        try_create(
            &client,
            "granted",
            &with_grant(Some("web"), Some("other-uid"), grant)
        )
        .await
        .is_err()
    );
    // The replacement ferry's webhook rewrote: admitted.
    try_create(
        &client,
        "granted",
        &with_grant(Some("web"), Some("failed-uid"), grant),
    )
    .await?;
    Ok(())
}

/// Creates (dry run) the Lease `name` in `namespace` as the agents'
/// ServiceAccount, its token naming `node` (as a token bound to an agent pod
/// does) or no node; the API server's refusal when it refuses.
async fn create_lease_as_agent(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    node: Option<&str>,
) -> Result<(), String> {
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace}, "spec": {},
    }))
    .map_err(|e| e.to_string())?;
    let mut request = http::Request::post(format!(
        "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases?dryRun=All"
    ))
    .header("Content-Type", "application/json")
    .header(
        "Impersonate-User",
        format!("system:serviceaccount:{namespace}:ferry-agent"),
    )
    .header("Impersonate-Group", "system:serviceaccounts")
    .header("Impersonate-Group", "system:authenticated");
    if let Some(node) = node {
        request = request.header(
            "Impersonate-Extra-authentication.kubernetes.io%2fnode-name",
            node,
        );
    }
    let request = request.body(body).map_err(|e| e.to_string())?;
    client
        .request_text(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The attack on the node boundary through the API server: an agent's
/// token (stolen, or a compromised agent) writing another node's Lease, to
/// forge that node's contact evidence, or the controller's leader Lease.
/// RBAC lets the agents write Leases; the chart's admission policy lets
/// each write only its own node's.
#[tokio::test]
async fn an_agent_may_write_only_its_own_nodes_lease() -> TestResult {
    let cp = ControlPlane::shared().await?;
    let namespace = "ferry-system";
    ensure_namespace(cp, namespace).await?;
    apply_templates(
        cp,
        &["templates/agent-rbac.yaml", "templates/agent-leases.yaml"],
    )
    .await?;
    let client = cp.client().await?;
    // Its own Lease: allowed (once RBAC and the policy are loaded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) =
        create_lease_as_agent(&client, namespace, "ferry-agent-node-a", Some("node-a")).await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent of node-a may not write its own Lease: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Another node's Lease, and the leader Lease: refused once loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let refusal = loop {
        match create_lease_as_agent(&client, namespace, "ferry-agent-node-b", Some("node-a")).await
        {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the agent of node-a wrote node-b's Lease"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        refusal.contains("may write only its own Lease ferry-agent-node-a"),
        "{refusal}"
    );
    let refusal = create_lease_as_agent(&client, namespace, "ferry-controller", Some("node-a"))
        .await
        .expect_err("the agent wrote the leader Lease");
    assert!(refusal.contains("not ferry-controller"), "{refusal}");
    // A token not bound to a pod names no node: no Lease at all.
    let refusal = create_lease_as_agent(&client, namespace, "ferry-agent-node-a", None)
        .await
        .expect_err("a token without a node wrote a Lease");
    assert!(refusal.contains("names its node"), "{refusal}");
    Ok(())
}
