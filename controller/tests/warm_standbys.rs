//! Tier 3: warm standby pods on a real control plane (kwok nodes, real
//! agents with the `synthetic` runtime, as in `failover.rs`). They follow
//! the replicas from node to node, are never protected themselves even by a
//! selector that matches them, and go with the policy.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::apps::*;
use common::{create, eventually, install};
use ferry_api::FailureTrigger;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

/// The warm standby pods of namespace `apps`, as (node, pod), skipping any
/// already being deleted.
async fn warm_pods(client: &kube::Client) -> Vec<(String, Pod)> {
    Api::<Pod>::namespaced(client.clone(), "apps")
        .list(&ListParams::default().labels("ferry.dev/warm-standby=true"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.spec.as_ref().unwrap().node_name.clone().unwrap(), p))
        .collect()
}

fn referenced(pod: &Pod) -> Vec<String> {
    let mut names: Vec<String> = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.config_map
                .as_ref()
                .map(|c| c.name.clone())
                .or_else(|| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn warm_standby_pods_follow_the_replicas_and_go_with_the_policy() {
    let ferry = install(3, 1 << 20, &["apps"]).await;
    let client = &ferry.client;
    let mut app = deployment("counter");
    app["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        serde_json::json!([{"configMapRef": {"name": "settings", "optional": true}}]);
    app["spec"]["template"]["spec"]["containers"][0]["env"] = serde_json::json!([{
        "name": "TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "token", "key": "t", "optional": true}},
    }]);
    create(client, "apps", app).await;
    // NotIn also selects every pod without the label: the warm pods too.
    let mut greedy = policy("counter", "counter", serde_json::json!({}));
    greedy["spec"]["selector"] = serde_json::json!({
        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["other"]}],
    });
    create(client, "apps", greedy).await;
    let pod = running_pod(&ferry, "apps", "counter").await;
    let uid = pod.uid().unwrap();
    let (node, standby) = protected(&ferry, "apps", "counter", &uid).await;

    // One warm pod, on the standby, referencing what the app references.
    let warm = eventually(
        "a warm standby pod on the standby",
        WAIT,
        || ferry.logs(),
        || async {
            let pods = warm_pods(client).await;
            (pods.len() == 1 && pods[0].0 == standby).then(|| pods[0].1.clone())
        },
    )
    .await;
    let names = referenced(&warm);
    assert!(
        names.contains(&"settings".to_owned()) && names.contains(&"token".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        warm.owner_references()[0].kind,
        "CheckpointPolicy",
        "{warm:?}"
    );
    // A few checkpoints later, still only the app is protected.
    eventually(
        "three checkpoints",
        WAIT,
        || ferry.logs(),
        || async {
            let status = get_policy(client, "apps", "counter").await.status?;
            let taken = ferry.archives(&node, "apps/counter").await.len();
            assert!(
                status.checkpoints.iter().all(|r| r.pod_uid == uid),
                "a warm pod was protected: {:?}",
                status.checkpoints
            );
            (taken >= 3).then_some(())
        },
    )
    .await;

    // After a failover the app runs on the old standby: its warm pod goes,
    // and the new standby gets one.
    evict(client, "apps", &pod.name_any()).await;
    let (_, replacement) = failed_over(
        &ferry,
        "apps",
        "counter",
        "counter",
        &uid,
        &standby,
        FailureTrigger::PodLoss,
    )
    .await;
    let new_uid = replacement.uid().unwrap();
    let (now_on, new_standby) = protected(&ferry, "apps", "counter", &new_uid).await;
    assert_eq!(now_on, standby);
    eventually(
        "the warm pod to move to the new standby",
        WAIT,
        || ferry.logs(),
        || async {
            let pods = warm_pods(client).await;
            (pods.len() == 1 && pods[0].0 == new_standby).then_some(())
        },
    )
    .await;

    // Switched off: none; switched on again: back.
    let policies: Api<ferry_api::CheckpointPolicy> = Api::namespaced(client.clone(), "apps");
    for (warm_standbys, count) in [(false, 0), (true, 1)] {
        policies
            .patch(
                "counter",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "spec": {"placement": {"warmStandbys": warm_standbys}},
                })),
            )
            .await
            .unwrap();
        eventually(
            &format!("{count} warm pods with warmStandbys {warm_standbys}"),
            WAIT,
            || ferry.logs(),
            || async { (warm_pods(client).await.len() == count).then_some(()) },
        )
        .await;
    }

    // Deleting the policy takes them along (their owner is the policy).
    policies
        .delete("counter", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "no warm pods once the policy is gone",
        WAIT,
        || ferry.logs(),
        || async { warm_pods(client).await.is_empty().then_some(()) },
    )
    .await;
}
