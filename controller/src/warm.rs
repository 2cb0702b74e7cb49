//! Warm standby pods: which ones a policy should have, and what to create or
//! delete to get there. Pure functions of the policy, its pods, its
//! checkpoint records and the existing warm pods.
//!
//! Why they exist: when a restored pod lands on a node, its kubelet starts
//! a reflector (a list, then a watch) for every ConfigMap and Secret the
//! pod references, the moment it sees the binding. The API server's node
//! authorizer learns of the same binding through its own watch, and when
//! it is the slower of the two it refuses the list ("no relationship
//! found between node … and this object"); the reflector retries only
//! after a backoff of 0.8–1.6 s, and the pod's volumes, its sandbox and
//! the restore wait for it. A pod of the same namespace already on the node
//! that references the same objects keeps those reflectors running (and
//! gives the authorizer a path to the objects), so a restore there finds
//! them cached. So ferry keeps one pause pod per policy on each node that
//! holds replicas of its pods and runs none of them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use ferry_api::names::{WARM_STANDBY_LABEL, WARM_STANDBY_SPEC_ANNOTATION};
use ferry_api::{CheckpointPolicy, CheckpointPolicyStatus};

/// The image of warm standby pods by default: the sandbox image of
/// containerd 2.3, which every such node already holds.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10.2";

/// The user warm standby pods run as (the pause image's own).
const WARM_USER: i64 = 65535;

/// The ConfigMaps and Secrets a pod references, by name, the way the
/// kubelet's caches see them: volumes (projected ones included), the
/// environment of every container, and image pull secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

impl References {
    /// Adds what `pod` references.
    pub fn add(&mut self, pod: &Pod) {
        let Some(spec) = &pod.spec else {
            return;
        };
        for volume in spec.volumes.iter().flatten() {
            if let Some(name) = volume.config_map.as_ref().map(|c| &c.name) {
                self.config_maps.insert(name.clone());
            }
            if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
                self.secrets.insert(name.clone());
            }
            let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
            for source in sources.into_iter().flatten() {
                if let Some(config_map) = &source.config_map {
                    self.config_maps.insert(config_map.name.clone());
                }
                if let Some(secret) = &source.secret {
                    self.secrets.insert(secret.name.clone());
                }
            }
        }
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter());
        for container in containers {
            for from in container.env_from.iter().flatten() {
                if let Some(config_map) = &from.config_map_ref {
                    self.config_maps.insert(config_map.name.clone());
                }
                if let Some(secret) = &from.secret_ref {
                    self.secrets.insert(secret.name.clone());
                }
            }
            let values = container
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value_from.as_ref());
            for value in values {
                if let Some(key) = &value.config_map_key_ref {
                    self.config_maps.insert(key.name.clone());
                }
                if let Some(key) = &value.secret_key_ref {
                    self.secrets.insert(key.name.clone());
                }
            }
        }
        for pull in spec.image_pull_secrets.iter().flatten() {
            self.secrets.insert(pull.name.clone());
        }
        self.config_maps.retain(|name| !name.is_empty());
        self.secrets.retain(|name| !name.is_empty());
    }
}

/// Whether `pod` is a warm standby pod (of any policy).
pub fn is_warm_pod(pod: &Pod) -> bool {
    pod.labels().get(WARM_STANDBY_LABEL).map(String::as_str) == Some("true")
}

/// Whether `pod` is a warm standby pod of `policy` (its controlling owner).
pub fn is_warm_pod_of(pod: &Pod, policy: &CheckpointPolicy) -> bool {
    let Some(uid) = policy.meta().uid.as_deref() else {
        return false;
    };
    is_warm_pod(pod)
        && pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The nodes that should have a warm standby pod of the policy: those
/// holding a replica of a live or failing pod's archive, and those a
/// failover restores on, where none of the policy's pods runs already (its
/// own pods keep those caches warm) and which are still fit to receive a
/// restore. A failing pod counts although it is gone: its restore is what
/// the warm pod is for.
pub fn warm_nodes(
    pods: &[&Pod],
    status: &CheckpointPolicyStatus,
    suitable: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    let failing = status
        .failovers
        .iter()
        .map(|f| f.pod_uid.as_str())
        .chain(status.queued_failovers.iter().map(|q| q.pod_uid.as_str()));
    let wanted: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .chain(failing)
        .collect();
    // Only a running pod has registered what it references with its
    // kubelet; a replacement being started does not count yet.
    let running_on: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    let replica_nodes = status
        .checkpoints
        .iter()
        .filter(|r| wanted.contains(r.pod_uid.as_str()))
        .flat_map(|r| r.replicas.iter());
    let restore_targets = status.failovers.iter().filter_map(|f| f.to_node.as_ref());
    replica_nodes
        .chain(restore_targets)
        .filter(|node| !running_on.contains(node.as_str()) && suitable(node))
        .cloned()
        .collect()
}

/// The warm standby pods `policy` should have: one per node of `nodes`,
/// referencing everything in `references`, running `image`.
pub fn desired(
    policy: &CheckpointPolicy,
    image: &str,
    references: &References,
    nodes: &BTreeSet<String>,
) -> Vec<Pod> {
    if !policy.spec.placement.warm_standbys || policy.spec.suspend {
        return Vec::new();
    }
    nodes
        .iter()
        .filter_map(|node| warm_pod(policy, image, references, node))
        .collect()
}

/// The name of `policy`'s warm standby pod on `node`: readable while it
/// fits a pod name, hashed when it would not.
pub fn pod_name(policy: &str, node: &str) -> String {
    let readable = format!("ferry-warm-{policy}-{node}");
    if readable.len() <= 253 {
        readable
    } else {
        format!("ferry-warm-{:016x}", fnv1a(&format!("{policy}/{node}")))
    }
}

fn warm_pod(
    policy: &CheckpointPolicy,
    image: &str,
    references: &References,
    node: &str,
) -> Option<Pod> {
    let owner = policy.controller_owner_ref(&())?;
    let owner = OwnerReference {
        block_owner_deletion: None,
        ..owner
    };
    let mut volumes = Vec::new();
    for (index, name) in references.config_maps.iter().enumerate() {
        volumes.push(Volume {
            name: format!("configmap-{index}"),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    for (index, name) in references.secrets.iter().enumerate() {
        volumes.push(Volume {
            name: format!("secret-{index}"),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let tolerations = policy.spec.placement.tolerations.clone();
    let fingerprint = format!(
        "{:016x}",
        fnv1a(&format!(
            "{image}\n{node}\n{:?}\n{:?}\n{}",
            references.config_maps,
            references.secrets,
            serde_json::to_string(&tolerations).unwrap_or_default()
        ))
    );
    let quantity = |q: &str| Quantity(q.to_owned());
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&policy.name_any(), node)),
            namespace: policy.namespace(),
            labels: Some(BTreeMap::from([
                (WARM_STANDBY_LABEL.to_owned(), "true".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ferry".to_owned(),
                ),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "warm-standby".to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                WARM_STANDBY_SPEC_ANNOTATION.to_owned(),
                fingerprint,
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(0),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            // Passes the "restricted" Pod Security Standard.
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WARM_USER),
                run_as_group: Some(WARM_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "warm".to_owned(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("IfNotPresent".to_owned()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_owned(), quantity("1m")),
                        ("memory".to_owned(), quantity("4Mi")),
                    ])),
                    limits: Some(BTreeMap::from([
                        ("cpu".to_owned(), quantity("10m")),
                        ("memory".to_owned(), quantity("16Mi")),
                    ])),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_owned()]),
                        add: None,
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// What to do to get from the existing warm pods to the desired ones.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Pod>,
    /// Name and UID of each pod to delete.
    pub delete: Vec<(String, String)>,
}

/// Creates what is missing, deletes what is not desired, outdated (another
/// fingerprint) or finished (an evicted pod stays Failed); a pod already
/// being deleted is waited for.
pub fn plan(desired: Vec<Pod>, existing: &[&Pod]) -> Plan {
    let fingerprint = |pod: &Pod| {
        pod.annotations()
            .get(WARM_STANDBY_SPEC_ANNOTATION)
            .cloned()
            .unwrap_or_default()
    };
    let finished = |pod: &Pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Failed" | "Succeeded"))
    };
    let mut result = Plan::default();
    for pod in existing {
        let wanted = desired
            .iter()
            .find(|d| d.metadata.name == pod.metadata.name);
        let keep = wanted.is_some_and(|d| fingerprint(d) == fingerprint(pod)) && !finished(pod);
        if !keep
            && pod.metadata.deletion_timestamp.is_none()
            && let Some(uid) = pod.metadata.uid.clone()
        {
            result.delete.push((pod.name_any(), uid));
        }
    }
    for pod in desired {
        if !existing
            .iter()
            .any(|e| e.metadata.name == pod.metadata.name)
        {
            result.create.push(pod);
        }
    }
    result
}

/// FNV-1a, 64 bits: a stable fingerprint across builds and versions
/// (`std`'s hasher promises neither).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CheckpointRecord;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn policy(json: serde_json::Value) -> CheckpointPolicy {
        let mut object = serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": "counter", "namespace": "demo", "uid": "policy-uid"},
            "spec": {"selector": {"matchLabels": {"app": "counter"}}},
        });
        if let Some(spec) = json.as_object() {
            for (key, value) in spec {
                object["spec"][key] = value.clone();
            }
        }
        serde_json::from_value(object).unwrap()
    }

    fn app_pod(uid: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("counter-{uid}"), "namespace": "demo", "uid": uid},
            "status": {"phase": "Running"},
            "spec": {
                "nodeName": node,
                "imagePullSecrets": [{"name": "registry"}],
                "containers": [{
                    "name": "app",
                    "image": "localhost/ferry/test-app:dev",
                    "envFrom": [{"configMapRef": {"name": "settings"}}],
                    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "t"}}}],
                }],
                "volumes": [
                    {"name": "kube-api-access", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt"}},
                    ]}},
                    {"name": "tls", "secret": {"secretName": "app-tls"}},
                    {"name": "data", "emptyDir": {}},
                ],
            },
        }))
        .unwrap()
    }

    fn record(uid: &str, node: &str, replicas: &[&str]) -> CheckpointRecord {
        CheckpointRecord {
            pod: format!("counter-{uid}"),
            container: "app".into(),
            pod_uid: uid.into(),
            restart_count: 0,
            owner: String::new(),
            node: node.into(),
            archive: "a".repeat(64),
            size_bytes: 1,
            duration_ms: 1,
            taken_at: Time(jiff::Timestamp::UNIX_EPOCH),
            replicas: replicas.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn existing(pod: &Pod, uid: &str) -> Pod {
        let mut pod = pod.clone();
        pod.metadata.uid = Some(uid.into());
        pod
    }

    #[test]
    fn references_cover_volumes_projections_environment_and_pull_secrets() {
        let mut references = References::default();
        references.add(&app_pod("u1", "a"));
        assert_eq!(
            references.config_maps,
            BTreeSet::from(["kube-root-ca.crt".to_owned(), "settings".to_owned()])
        );
        assert_eq!(
            references.secrets,
            BTreeSet::from([
                "app-tls".to_owned(),
                "registry".to_owned(),
                "token".to_owned()
            ])
        );
    }

    fn status(
        records: Vec<CheckpointRecord>,
        failovers: serde_json::Value,
    ) -> CheckpointPolicyStatus {
        let mut status: CheckpointPolicyStatus =
            serde_json::from_value(serde_json::json!({"failovers": failovers})).unwrap();
        status.checkpoints = records;
        status
    }

    #[test]
    fn warm_nodes_are_replica_nodes_without_a_running_pod_of_the_policy() {
        let a = app_pod("u1", "a");
        let b = app_pod("u2", "b");
        let mut starting = app_pod("u3", "e");
        starting.status = None;
        let records = vec![
            record("u1", "a", &["b", "c"]),
            record("u2", "b", &["a", "d"]),
            // A pod being started does not warm its node yet.
            record("u3", "e", &["e"]),
            // A pod that is gone and not failing warms nothing.
            record("gone", "x", &["f"]),
        ];
        let nodes = warm_nodes(
            &[&a, &b, &starting],
            &status(records, serde_json::json!([])),
            |node| node != "d",
        );
        assert_eq!(nodes, BTreeSet::from(["c".to_owned(), "e".to_owned()]));
    }

    #[test]
    fn a_failing_pod_keeps_its_standby_warm_until_its_replacement_runs() {
        // The failed pod is gone from the cache; its failover restores on b.
        let failovers = serde_json::json!([{
            "reason": "NodeLoss", "pod": "counter-u1", "podUid": "u1", "fromNode": "a",
            "toNode": "b", "stage": "Fenced", "startedAt": "2026-12-07T05:00:19Z",
        }]);
        let records = vec![record("u1", "a", &["b"])];
        let nodes = warm_nodes(&[], &status(records.clone(), failovers.clone()), |_| true);
        assert_eq!(nodes, BTreeSet::from(["b".to_owned()]));
        // The replacement bound to b but not running yet: still warm.
        let mut replacement = app_pod("u9", "b");
        replacement.status = None;
        let nodes = warm_nodes(
            &[&replacement],
            &status(records.clone(), failovers.clone()),
            |_| true,
        );
        assert_eq!(nodes, BTreeSet::from(["b".to_owned()]));
        // Running: its own references keep b warm.
        let running = app_pod("u9", "b");
        assert!(warm_nodes(&[&running], &status(records, failovers), |_| true).is_empty());
    }

    #[test]
    fn warm_pods_reference_every_object_optionally_and_pass_restricted() {
        let policy = policy(serde_json::json!({}));
        let mut references = References::default();
        references.add(&app_pod("u1", "a"));
        let pods = desired(
            &policy,
            DEFAULT_IMAGE,
            &references,
            &BTreeSet::from(["b".to_owned()]),
        );
        let [pod] = pods.as_slice() else {
            panic!("one warm pod expected: {pods:?}");
        };
        assert_eq!(pod.name_any(), "ferry-warm-counter-b");
        assert!(is_warm_pod_of(pod, &policy));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("b"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 5);
        assert!(volumes.iter().all(|v| {
            v.config_map.as_ref().and_then(|c| c.optional) == Some(true)
                || v.secret.as_ref().and_then(|s| s.optional) == Some(true)
        }));
        let context = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(
            spec.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        // The owner does not block the policy's deletion, which would need
        // update rights on its finalizers.
        let owner = &pod.owner_references()[0];
        assert_eq!(owner.kind, "CheckpointPolicy");
        assert_eq!(owner.block_owner_deletion, None);
    }

    #[test]
    fn switched_off_or_suspended_policies_want_none() {
        let nodes = BTreeSet::from(["b".to_owned()]);
        let references = References::default();
        for spec in [
            serde_json::json!({"placement": {"warmStandbys": false}}),
            serde_json::json!({"suspend": true}),
        ] {
            assert!(desired(&policy(spec), DEFAULT_IMAGE, &references, &nodes).is_empty());
        }
        assert!(policy(serde_json::json!({})).spec.placement.warm_standbys);
    }

    #[test]
    fn plan_creates_missing_replaces_outdated_and_keeps_deleting_ones() {
        let policy = policy(serde_json::json!({}));
        let mut references = References::default();
        let nodes = BTreeSet::from(["b".to_owned(), "c".to_owned()]);
        let before = desired(&policy, DEFAULT_IMAGE, &references, &nodes);
        let on_b = existing(&before[0], "uid-b");
        let on_c = existing(&before[1], "uid-c");

        // Nothing to do when what exists is what is wanted.
        assert_eq!(plan(before.clone(), &[&on_b, &on_c]), Plan::default());

        // A new reference changes the fingerprint: both are replaced.
        references.add(&app_pod("u1", "a"));
        let after = desired(&policy, DEFAULT_IMAGE, &references, &nodes);
        let result = plan(after.clone(), &[&on_b, &on_c]);
        assert_eq!(
            result.delete,
            vec![
                ("ferry-warm-counter-b".to_owned(), "uid-b".to_owned()),
                ("ferry-warm-counter-c".to_owned(), "uid-c".to_owned())
            ]
        );
        // Recreated only once the old ones are gone (same names).
        assert!(result.create.is_empty());

        // A node no longer a standby loses its pod; one being deleted is
        // left alone; a new standby gets one.
        let mut leaving = existing(&after[0], "uid-b");
        leaving.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let only_d = desired(
            &policy,
            DEFAULT_IMAGE,
            &references,
            &BTreeSet::from(["d".to_owned()]),
        );
        let on_c = existing(&after[1], "uid-c");
        let result = plan(only_d, &[&leaving, &on_c]);
        assert_eq!(
            result.delete,
            vec![("ferry-warm-counter-c".to_owned(), "uid-c".to_owned())]
        );
        assert_eq!(result.create.len(), 1);
        assert_eq!(result.create[0].name_any(), "ferry-warm-counter-d");
    }

    #[test]
    fn an_evicted_warm_pod_is_replaced() {
        let policy = policy(serde_json::json!({}));
        let nodes = BTreeSet::from(["b".to_owned()]);
        let wanted = desired(&policy, DEFAULT_IMAGE, &References::default(), &nodes);
        let mut evicted = existing(&wanted[0], "uid-b");
        evicted.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        let result = plan(wanted, &[&evicted]);
        assert_eq!(result.delete.len(), 1);
    }

    #[test]
    fn long_names_are_hashed_into_a_valid_pod_name() {
        let name = pod_name(&"p".repeat(200), &"n".repeat(100));
        assert!(name.len() <= 253, "{name}");
        assert!(name.starts_with("ferry-warm-"));
        assert_ne!(name, pod_name(&"p".repeat(200), &"m".repeat(100)));
    }
}
