//! Tier 3: the controller on a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok nodes) with real agent
//! processes. kwok simulates kubelets, so the agents run the `synthetic`
//! runtime (a named test double of the kubelet checkpoint API that writes
//! real archives); everything else — scheduling, owners recreating pods, the
//! webhook rewriting them, replication over mutual TLS — is real.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::apps::*;
use common::{Installation, Setup, create, eventually, install, install_with};
use ferry_api::{CheckpointPolicy, FailoverStage, FailureTrigger, Phase};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

/// Creates the `counter` Deployment and its policy in `apps` and waits
/// until a checkpoint of its pod is replicated: the pod, its UID, its node
/// and the standby.
async fn protected_counter(ferry: &Installation) -> (Pod, String, String, String) {
    create(&ferry.client, "apps", deployment("counter")).await;
    create(
        &ferry.client,
        "apps",
        policy("counter", "counter", serde_json::json!({})),
    )
    .await;
    let pod = running_pod(ferry, "apps", "counter").await;
    let uid = pod.uid().unwrap();
    let (node, standby) = protected(ferry, "apps", "counter", &uid).await;
    (pod, uid, node, standby)
}

/// Marks a lost node out of service, as an administrator (or a node
/// remediation system) does once its workloads are known to be stopped.
async fn declare_out_of_service(client: &kube::Client, node: &str) {
    use k8s_openapi::api::core::v1::Node;
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(node).await.unwrap();
    let mut taints = current.spec.and_then(|s| s.taints).unwrap_or_default();
    taints.push(serde_json::from_value(serde_json::json!({
        "key": ferry_api::names::OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}))
    .unwrap());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
        )
        .await
        .unwrap();
}

/// How many times an Event with `reason` was reported (the recorder folds
/// repeats into a series).
async fn events(client: &kube::Client, namespace: &str, reason: &str) -> i32 {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.and_then(|s| s.count).unwrap_or(1))
        .sum()
}

#[tokio::test]
async fn deployment_fails_over_on_pod_deletion_container_failure_and_node_loss() {
    let ferry = install(3, 1 << 20, &["apps"]).await;
    let client = &ferry.client;
    create(client, "apps", deployment("counter")).await;
    create(
        client,
        "apps",
        policy("counter", "counter", serde_json::json!({})),
    )
    .await;

    let pod = running_pod(&ferry, "apps", "counter").await;
    let uid = pod.uid().unwrap();
    let (node, standby) = protected(&ferry, "apps", "counter", &uid).await;
    assert_ne!(node, standby);
    // Checkpoints keep coming at the interval, and both nodes hold them.
    let first = get_policy(client, "apps", "counter")
        .await
        .status
        .unwrap()
        .checkpoints[0]
        .clone();
    eventually(
        "a newer checkpoint",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            (status.checkpoints.first()?.taken_at.0 > first.taken_at.0).then_some(())
        },
    )
    .await;
    let source_archives = ferry.archives(&node, "apps/counter").await;
    let standby_archives = ferry.archives(&standby, "apps/counter").await;
    assert!(source_archives.len() >= 2, "{source_archives:?}");
    assert!(!standby_archives.is_empty());
    // The newest archive, as the status names it, is on both nodes.
    let newest = get_policy(client, "apps", "counter")
        .await
        .status
        .unwrap()
        .checkpoints[0]
        .archive
        .clone();
    let source_now = ferry.archives(&node, "apps/counter").await;
    let standby_now = ferry.archives(&standby, "apps/counter").await;
    assert!(
        source_now.contains(&newest),
        "{newest} on {node}: {source_now:?}"
    );
    assert!(
        standby_now.contains(&newest),
        "{newest} on {standby}: {standby_now:?}"
    );
    let table = ferry
        .plane
        .kubectl()
        .args(["get", "checkpointpolicies", "-n", "apps"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("app=counter") && table.contains(&standby) && table.contains("Protected"),
        "{table}"
    );
    println!("{table}");

    // 1. Pod loss: an eviction.
    evict(client, "apps", &pod.name_any()).await;
    let (record, pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::PodLoss,
    )
    .await;
    println!("pod deletion: {record:?}");

    // 2. Container failure: the kubelet (kwok here) reports a restart.
    let uid = pod.uid().unwrap();
    let (node, standby) = protected(&ferry, "apps", "counter", &uid).await;
    let mut statuses = pod.status.clone().unwrap().container_statuses.unwrap();
    statuses[0].restart_count = 1;
    Api::<Pod>::namespaced(client.clone(), "apps")
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"containerStatuses": statuses}})),
        )
        .await
        .unwrap();
    let (record, pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::ContainerFailure,
    )
    .await;
    assert_eq!(record.from_node, node);
    println!("container failure: {record:?}");

    // 3. Node loss: the pod's node turns NotReady and stays so (its kubelet
    // is lost), while its agent stays in contact: the agent never fences by
    // itself then, so the controller asks it to stop the pod (FencePod),
    // and takes the pod listed as fenced in the agent's Lease as the fence.
    let uid = pod.uid().unwrap();
    let (node, standby) = protected(&ferry, "apps", "counter", &uid).await;
    common::lose_node(client, &node).await;
    let tainted = eventually(
        "the lost node tainted NoSchedule",
        WAIT,
        || ferry.logs(),
        || async {
            use k8s_openapi::api::core::v1::Node;
            let n = Api::<Node>::all(client.clone()).get(&node).await.ok()?;
            n.spec?
                .taints?
                .iter()
                .any(|t| t.key == ferry_api::names::FAILED_NODE_TAINT)
                .then_some(())
        },
    )
    .await;
    let () = tainted;
    let (record, _pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::NodeLoss,
    )
    .await;
    assert!(
        record.evidence.iter().any(|e| e.contains("Ready=Unknown")),
        "{record:?}"
    );
    assert!(
        record.fence.contains("reports it stopped"),
        "fenced by the agent on request: {record:?}"
    );
    assert!(
        ferry
            .agent(&node)
            .1
            .log_text()
            .contains("fenced a pod on the controller's request"),
        "{}",
        ferry.logs()
    );
    assert_eq!(record.from_node, node);
    println!("node loss: {record:?}");
    let started = events(client, "apps", "FailoverStarted").await;
    let completed = events(client, "apps", "FailoverCompleted").await;
    assert_eq!(started, 3, "one FailoverStarted per failure");
    assert_eq!(completed, 3, "one FailoverCompleted per failure");
}

#[tokio::test]
async fn statefulset_pod_deletion_restores_under_the_same_name() {
    let ferry = install(3, 256 << 10, &["db"]).await;
    let client = &ferry.client;
    create(
        client,
        "db",
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "store"},
            "spec": {
                "replicas": 1,
                "serviceName": "store",
                "selector": {"matchLabels": {"app": "store"}},
                "template": {
                    "metadata": {"labels": {"app": "store"}},
                    "spec": {
                        "containers": [{"name": "app", "image": "registry.invalid/store:1"}],
                        "tolerations": [{"operator": "Exists"}],
                    },
                },
            },
        }),
    )
    .await;
    create(
        client,
        "db",
        policy("store", "store", serde_json::json!({})),
    )
    .await;
    let pod = running_pod(&ferry, "db", "store").await;
    let uid = pod.uid().unwrap();
    let (_node, standby) = protected(&ferry, "db", "store", &uid).await;
    evict(client, "db", "store-0").await;
    let (record, pod) = failed_over(
        &ferry,
        "db",
        "store",
        "store",
        &uid,
        &standby,
        FailureTrigger::PodLoss,
    )
    .await;
    assert_eq!(pod.name_any(), "store-0");
    println!("statefulset: {record:?}");
}

#[tokio::test]
async fn a_controller_killed_mid_failover_finishes_it_once_after_restart() {
    let mut ferry = install(3, 256 << 10, &["apps"]).await;
    let client = ferry.client.clone();
    let (pod, uid, _node, standby) = protected_counter(&ferry).await;

    // The standby's agent is down (its Lease still current), so the
    // failover stops after being recorded, before any replacement exists.
    ferry.agent_mut(&standby).kill();
    evict(&client, "apps", &pod.name_any()).await;
    let recorded = eventually(
        "the failover recorded",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(&client, "apps", "counter").await.status?;
            status.failovers.iter().find(|f| f.pod_uid == uid).cloned()
        },
    )
    .await;
    assert_eq!(recorded.stage, FailoverStage::Detected);
    ferry.controller.kill();
    let restored: BTreeSet<String> = pods(&client, "apps", "counter")
        .await
        .iter()
        .filter(|p| {
            p.annotations()
                .contains_key(ferry_api::names::FAILOVER_ANNOTATION)
        })
        .map(|p| p.name_any())
        .collect();
    assert!(
        restored.is_empty(),
        "no replacement before the restart: {restored:?}"
    );

    ferry.agent_mut(&standby).start();
    ferry.controller.start();
    let (record, _pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::PodLoss,
    )
    .await;
    // The failover that finished is the one recorded before the kill, not
    // a second detection (the kill may have come before its Event was sent).
    assert_eq!(record.started_at, recorded.started_at, "{record:?}");
    let started = events(&client, "apps", "FailoverStarted").await;
    assert!(started <= 1, "recorded once, not detected again: {started}");
}

#[tokio::test]
async fn an_unreachable_agent_degrades_the_policy_and_deletion_removes_archives_everywhere() {
    let mut ferry = install(3, 256 << 10, &["apps"]).await;
    let client = ferry.client.clone();
    create(&client, "apps", deployment("counter")).await;
    // No automatic failover: this test is about reporting.
    create(
        &client,
        "apps",
        policy(
            "counter",
            "counter",
            serde_json::json!({"failover": {"triggers": []}}),
        ),
    )
    .await;
    let pod = running_pod(&ferry, "apps", "counter").await;
    let (node, standby) = protected(&ferry, "apps", "counter", &pod.uid().unwrap()).await;

    ferry.agent_mut(&node).kill();
    let condition = eventually(
        "Degraded with AgentUnreachable",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(&client, "apps", "counter").await.status?;
            let protected = status.conditions.iter().find(|c| c.type_ == "Protected")?;
            (status.phase == Some(Phase::Degraded) && protected.reason == "AgentUnreachable")
                .then(|| protected.clone())
        },
    )
    .await;
    assert!(condition.message.contains(&node), "{}", condition.message);
    // Still Degraded after retries, not only in the reconciliation that saw
    // the failure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = get_policy(&client, "apps", "counter").await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Degraded), "{status:?}");
    ferry.agent_mut(&node).start();
    eventually(
        "Protected again",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(&client, "apps", "counter").await.status?;
            (status.phase == Some(Phase::Protected)).then_some(())
        },
    )
    .await;
    assert!(!ferry.archives(&node, "apps/counter").await.is_empty());
    assert!(!ferry.archives(&standby, "apps/counter").await.is_empty());

    Api::<CheckpointPolicy>::namespaced(client.clone(), "apps")
        .delete("counter", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the policy gone",
        WAIT,
        || ferry.logs(),
        || async {
            Api::<CheckpointPolicy>::namespaced(client.clone(), "apps")
                .get_opt("counter")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    for (name, _, _) in &ferry.agents {
        assert!(
            ferry.archives(name, "apps/counter").await.is_empty(),
            "archives left on {name}"
        );
    }
}

/// Deliberate removals are no failures: scaling 1 → 3 → 1, a rollout to a
/// new template and a `kubectl delete` of a pod restore nothing, and the
/// removed pods' records are released.
#[tokio::test]
async fn scale_down_rollout_and_deletion_are_not_failures() {
    let ferry = install(3, 256 << 10, &["apps"]).await;
    let client = &ferry.client;
    create(client, "apps", deployment("counter")).await;
    create(
        client,
        "apps",
        policy("counter", "counter", serde_json::json!({})),
    )
    .await;
    let pod = running_pod(&ferry, "apps", "counter").await;
    protected(&ferry, "apps", "counter", &pod.uid().unwrap()).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "apps");
    let scale = |replicas: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    "counter",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
                )
                .await
                .unwrap();
        }
    };
    scale(3).await;
    eventually(
        "three pods checkpointed",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            let pods: BTreeSet<&str> = status.checkpoints.iter().map(|r| r.pod.as_str()).collect();
            (pods.len() == 3).then_some(())
        },
    )
    .await;
    scale(1).await;
    // A rollout: every pod replaced by one of a new template.
    deployments
        .patch(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}})),
        )
        .await
        .unwrap();
    let pod = eventually(
        "the rolled-out pod checkpointed",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            let all = pods(client, "apps", "counter").await;
            let live: Vec<&Pod> = all
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let [pod] = live.as_slice() else { return None };
            (pod.annotations().get("rollout").is_some()
                && status.checkpoints.len() == 1
                && status.checkpoints[0].pod_uid == pod.uid()?)
            .then(|| (*pod).clone())
        },
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), "apps")
        .delete(&pod.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    running_pod(&ferry, "apps", "counter").await;
    // Give a wrong decision time to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        events(client, "apps", "FailoverStarted").await,
        0,
        "{}",
        ferry.logs()
    );
    assert!(events(client, "apps", "CheckpointsReleased").await >= 3);
    let status = get_policy(client, "apps", "counter").await.status.unwrap();
    assert!(
        status.failovers.is_empty() && status.last_failover.is_none(),
        "{status:?}"
    );
}

/// Sum of the samples of a metric family in a /metrics text.
fn metric_sum(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A controller whose watches break (its connections to the API server
/// reset, as in an API server restart) decides nothing until they ran a
/// Lease period without an error, and its caches follow the cluster again
/// afterwards: a pod evicted just after the outage is failed over warm.
#[tokio::test]
async fn a_broken_watch_closes_the_view_and_the_caches_follow_again() {
    let mut setup = Setup::new(3, 256 << 10, &["apps"]);
    setup.controller_proxy = true;
    let mut ferry = install_with(&setup).await;
    let client = ferry.client.clone();
    let (pod, uid, _node, standby) = protected_counter(&ferry).await;
    let proxy = ferry.controller_proxy.as_mut().unwrap();
    proxy.cut();
    // Shorter than the leader's renew deadline (5.3 s with the tests' 8 s
    // Lease): it stays the leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.open().await;
    evict(&client, "apps", &pod.name_any()).await;
    failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::PodLoss,
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", ferry.controller_http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_sum(&metrics, "ferry_controller_watch_errors_total") > 0.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "ferry_controller_failover_decisions_deferred_total{reason=\"watch_interrupted\"}"
        ) > 0.0,
        "{metrics}"
    );
    let log = ferry.controller.log_text();
    assert!(!log.contains("lost leadership"), "{log}");
    assert!(log.contains("watch failed; retrying"), "{log}");
}

/// A replica standing by fills its caches and watches the agents but acts
/// on nothing. When the leader dies (no Lease release) and then the pod's
/// node, it takes over and decides with the view it already has: no
/// decision is deferred for a view younger than a Lease period.
#[tokio::test]
async fn a_warm_standby_takes_over_and_decides_without_waiting() {
    let mut ferry = install(3, 256 << 10, &["apps"]).await;
    let client = ferry.client.clone();
    let (standby_controller, standby_http, standby_webhook) = ferry.standby_controller();
    let (_pod, uid, node, standby) = protected_counter(&ferry).await;
    let logs = |ferry: &Installation| {
        format!(
            "{}\n--- standby controller\n{}",
            ferry.logs(),
            standby_controller.log_text()
        )
    };
    eventually(
        "the standby's caches synced",
        WAIT,
        || logs(&ferry),
        || async {
            standby_controller
                .log_text()
                .contains("caches of pods, nodes and agent Leases synced")
                .then_some(())
        },
    )
    .await;
    // One agent Lease period (5 s) of watching, and some.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let metrics = |url: String| async move {
        reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics(standby_http.clone()).await;
    assert_eq!(
        metric_sum(&before, "ferry_controller_reconciliations_total"),
        0.0,
        "a standby reconciles nothing:\n{before}"
    );
    assert!(!standby_controller.log_text().contains("became the leader"));
    // Its view is complete, and its metrics say so without a reconcile.
    assert_eq!(
        metric_sum(&before, "ferry_controller_view_complete"),
        1.0,
        "{before}"
    );

    ferry.controller.kill();
    // As the webhook Service's endpoints would once the leader's pod is gone.
    common::register_webhook(&client, &ferry.pki, standby_webhook).await;
    common::lose_node(&client, &node).await;
    eventually(
        "the standby leading and recording the failover",
        WAIT,
        || logs(&ferry),
        || async {
            let status = get_policy(&client, "apps", "counter").await.status?;
            status
                .failovers
                .iter()
                .find(|f| f.pod_uid == uid)
                .map(|_| ())
        },
    )
    .await;
    assert!(
        standby_controller.log_text().contains("became the leader"),
        "{}",
        logs(&ferry)
    );
    // The node's kubelet is lost, its agent is not: the new leader has
    // the agent stop the pod (FencePod).
    let (record, _pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::NodeLoss,
    )
    .await;
    assert_eq!(record.from_node, node);
    assert!(record.fence.contains("reports it stopped"), "{record:?}");
    let after = metrics(standby_http).await;
    assert_eq!(
        metric_sum(
            &after,
            "ferry_controller_failover_decisions_deferred_total{reason=\"agent_view_too_young\"}"
        ),
        0.0,
        "the new leader's view was complete when it took over:\n{after}"
    );
    assert!(metric_sum(&after, "ferry_controller_reconciliations_total") > 0.0);
}

/// An agent kept away from a Ready node (crash loop, bad rollout) for twice
/// the grace period is an agent outage, never a node loss: no failover,
/// and the policy says why it is Degraded.
#[tokio::test]
async fn an_agent_outage_on_a_ready_node_fails_nothing_over() {
    let mut ferry = install(3, 256 << 10, &["apps"]).await;
    let client = ferry.client.clone();
    let (_pod, uid, node, _standby) = protected_counter(&ferry).await;
    ferry.agent_mut(&node).kill();
    let message = eventually(
        "Degraded naming the agent outage",
        Duration::from_secs(120),
        || ferry.logs(),
        || async {
            let status = get_policy(&client, "apps", "counter").await.status?;
            let protected = status.conditions.iter().find(|c| c.type_ == "Protected")?;
            (status.phase == Some(Phase::Degraded)
                && protected
                    .message
                    .contains(&format!("agent of node {node} has not renewed its Lease")))
            .then(|| protected.message.clone())
        },
    )
    .await;
    println!("{message}");
    // Twice the 3 s grace period past the Lease's expiry, and more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        events(&client, "apps", "FailoverStarted").await,
        0,
        "{}",
        ferry.logs()
    );
    assert!(
        pods(&client, "apps", "counter")
            .await
            .iter()
            .any(|p| p.uid().as_deref() == Some(uid.as_str()))
    );
    ferry.agent_mut(&node).start();
}

/// Agents that do not fence themselves: while such an agent is frozen
/// with its node NotReady, nothing but out-of-service can fence the node.
const NO_SELF_FENCING: &[&str] = &["--fence-timeout=0"];

/// A node that flaps (NotReady, Ready, NotReady) never restores twice: the
/// first failover is cancelled when the node comes back before it was
/// fenced (the original pod keeps running), and only the second, fenced by
/// the out-of-service taint, restores. While NotReady the node is cut off
/// whole: its agent is frozen (and does not fence itself), so neither it
/// nor the controller's FencePod can stop the pod.
#[tokio::test]
async fn a_flapping_node_never_restores_twice() {
    let mut setup = Setup::new(3, 256 << 10, &["apps"]);
    setup.agent_args = NO_SELF_FENCING;
    let ferry = install_with(&setup).await;
    let client = &ferry.client;
    let (_pod, uid, node, standby) = protected_counter(&ferry).await;
    let switch = common::NodeSwitch::take(client, &node).await;
    let agent = &ferry.agent(&node).1;

    agent.pause();
    switch.set(client, &node, false).await;
    eventually(
        "the first failover waiting for the fence",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            status
                .failovers
                .iter()
                .any(|f| f.pod_uid == uid && f.stage == FailoverStage::Prepared)
                .then_some(())
        },
    )
    .await;
    switch.set(client, &node, true).await;
    agent.resume();
    eventually(
        "the first failover cancelled",
        WAIT,
        || ferry.logs(),
        || async { (events(client, "apps", "FailoverCancelled").await == 1).then_some(()) },
    )
    .await;
    let status = get_policy(client, "apps", "counter").await.status.unwrap();
    assert!(
        status.failovers.is_empty() && status.last_failover.is_none(),
        "{status:?}"
    );
    assert!(
        pods(client, "apps", "counter")
            .await
            .iter()
            .any(|p| p.uid().as_deref() == Some(uid.as_str())),
        "the original keeps running"
    );

    agent.pause();
    switch.set(client, &node, false).await;
    declare_out_of_service(client, &node).await;
    let (record, _pod) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::NodeLoss,
    )
    .await;
    assert!(record.fence.contains("out-of-service"), "{record:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events(client, "apps", "FailoverStarted").await, 2);
    assert_eq!(
        events(client, "apps", "FailoverCompleted").await,
        1,
        "restored once"
    );
    agent.resume();
}

/// A zone lost at once is paced: with maxConcurrent 1, one failover runs and
/// the other failed pods wait in status.queuedFailovers, named with the
/// budget that holds them, until it finishes.
#[tokio::test]
async fn losing_a_zone_is_paced_by_the_budget() {
    // The zone is cut off whole: its agents are frozen and do not fence
    // themselves, so every failover waits for out-of-service, and the
    // queue can be seen before anything is fenced.
    let mut setup = Setup::new(6, 64 << 10, &["apps"]);
    setup.agent_args = NO_SELF_FENCING;
    let ferry = install_with(&setup).await;
    let client = &ferry.client;
    // Three pods on whichever nodes the scheduler picks: the "zone" is
    // every node that runs one, so the test does not depend on placement.
    let mut spread = deployment("counter");
    spread["spec"]["replicas"] = 3.into();
    create(client, "apps", spread).await;
    create(
        client,
        "apps",
        policy(
            "counter",
            "counter",
            serde_json::json!({"failover": {"nodeLossGracePeriod": "3s", "maxCheckpointAge": "1m", "maxConcurrent": 1}}),
        ),
    )
    .await;
    let nodes: BTreeSet<String> = eventually(
        "three pods checkpointed on three nodes",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            let nodes: BTreeSet<String> =
                status.checkpoints.iter().map(|r| r.node.clone()).collect();
            (status.checkpoints.len() == 3 && nodes.len() == 3).then_some(nodes)
        },
    )
    .await;
    let mut switches = Vec::new();
    for node in &nodes {
        ferry.agent(node).1.pause();
        let switch = common::NodeSwitch::take(client, node).await;
        switch.set(client, node, false).await;
        switches.push(switch);
    }
    let queued = eventually(
        "one failover running, two queued",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            (status.failovers.len() == 1 && status.queued_failovers.len() == 2)
                .then_some(status.queued_failovers)
        },
    )
    .await;
    assert!(queued[0].message.contains("maxConcurrent"), "{queued:?}");
    for node in &nodes {
        declare_out_of_service(client, node).await;
    }
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        let status = get_policy(client, "apps", "counter").await.status.unwrap();
        assert!(
            status.failovers.len() <= 1,
            "more than one failover at once: {status:?}"
        );
        if status.failovers.is_empty()
            && status.queued_failovers.is_empty()
            && events(client, "apps", "FailoverStarted").await == 3
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the zone was not failed over: {status:?}\n{}",
            ferry.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(switches);
    for node in &nodes {
        ferry.agent(node).1.resume();
    }
}
