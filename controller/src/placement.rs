//! Which nodes hold the replicas of a container's archives: a pure function
//! of the nodes, the live agents and the previous choice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use ferry_api::Placement;

use crate::agents::AgentIndex;

/// Whether the node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node_ready_condition(node).is_some_and(|c| c.status == "True")
}

/// Whether the node's container runtime has runtime handler `name`, as its
/// kubelet reports (`status.runtimeHandlers`).
pub fn node_has_runtime_handler(node: &Node, name: &str) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.runtime_handlers.as_ref())
        .is_some_and(|handlers| handlers.iter().any(|h| h.name.as_deref() == Some(name)))
}

/// The runtime handler `node`'s live agent restores through, when the
/// node's container runtime does not report it; `None` when it does, when
/// the agent needs none, or when no agent is live there.
pub fn missing_restore_handler<'a>(
    node: &Node,
    agents: &'a AgentIndex,
    now: jiff::Timestamp,
) -> Option<&'a str> {
    let handler = agents.live(node_name(node), now)?.restore_handler.as_str();
    (!handler.is_empty() && !node_has_runtime_handler(node, handler)).then_some(handler)
}

/// Why [`unsuitable`] refuses a node whose runtime lacks the handler its
/// agent restores through.
pub const NO_RUNTIME_HANDLER: &str = "its container runtime lacks ferry's runtime handler";

/// The nodes `placement` would otherwise allow as standbys but whose
/// container runtime lacks the handler their agent restores through, each
/// with that handler's name.
pub fn nodes_without_restore_handler(
    nodes: &[&Node],
    placement: &Placement,
    agents: &AgentIndex,
    now: jiff::Timestamp,
) -> Vec<(String, String)> {
    nodes
        .iter()
        .filter(|n| unsuitable(n, placement, agents, now) == Some(NO_RUNTIME_HANDLER))
        .filter_map(|n| {
            let handler = missing_restore_handler(n, agents, now)?;
            Some((node_name(n).to_owned(), handler.to_owned()))
        })
        .collect()
}

pub fn node_ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Kubernetes' toleration rule: an empty key with `Exists` tolerates
/// everything; an empty effect matches every effect.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists
        || toleration.value.as_deref().unwrap_or_default()
            == taint.value.as_deref().unwrap_or_default()
}

/// Why a node cannot be a standby, or `None` when it can.
pub fn unsuitable(
    node: &Node,
    placement: &Placement,
    agents: &AgentIndex,
    now: jiff::Timestamp,
) -> Option<&'static str> {
    if !node_ready(node) {
        return Some("not Ready");
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Some("unschedulable");
    }
    if agents.live(node_name(node), now).is_none() {
        return Some("no live agent");
    }
    let labels_match = placement
        .node_selector
        .iter()
        .all(|(key, value)| label(node, key) == Some(value.as_str()));
    if !labels_match {
        return Some("nodeSelector does not match");
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = taints.iter().any(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !placement.tolerations.iter().any(|t| tolerates(t, taint))
    });
    if untolerated {
        return Some("has a taint the placement does not tolerate");
    }
    // A replica there could never be restored.
    if missing_restore_handler(node, agents, now).is_some() {
        return Some(NO_RUNTIME_HANDLER);
    }
    None
}

/// Up to `count` standby nodes for the container `key` (pod UID and
/// container name) running on `source`.
///
/// Nodes chosen before stay chosen while suitable, so replicas accumulate on
/// the same nodes from one checkpoint to the next. New ones are picked to
/// spread over `topologySpreadKey` values (the source's value last), then by
/// rendezvous hashing of `key` and the node name: deterministic for one
/// container, and spread evenly over the nodes across containers (choosing
/// by name sent every replica of a 1000-container benchmark to one node).
#[allow(clippy::too_many_arguments)] // plain data in, plain data out
pub fn choose_standbys(
    placement: &Placement,
    count: usize,
    source: &str,
    key: &str,
    nodes: &[&Node],
    agents: &AgentIndex,
    previous: &[String],
    now: jiff::Timestamp,
) -> Vec<String> {
    let suitable: BTreeMap<&str, &Node> = nodes
        .iter()
        .copied()
        .filter(|n| node_name(n) != source && unsuitable(n, placement, agents, now).is_none())
        .map(|n| (node_name(n), n))
        .collect();
    let zone_of = |name: &str| -> Option<&str> {
        let key = placement.topology_spread_key.as_deref()?;
        let node = nodes.iter().find(|n| node_name(n) == name)?;
        label(node, key)
    };
    let source_zone = zone_of(source);
    let mut chosen: Vec<String> = previous
        .iter()
        .filter(|name| suitable.contains_key(name.as_str()))
        .take(count)
        .cloned()
        .collect();
    while chosen.len() < count {
        let mut used: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        for name in &chosen {
            *used.entry(zone_of(name)).or_default() += 1;
        }
        let next = suitable
            .keys()
            .filter(|name| !chosen.iter().any(|c| c == *name))
            .min_by_key(|name| {
                let zone = zone_of(name);
                let in_source_zone = source_zone.is_some() && zone == source_zone;
                (
                    used.get(&zone).copied().unwrap_or(0),
                    in_source_zone,
                    std::cmp::Reverse(rendezvous(key, name)),
                    **name,
                )
            });
        match next {
            Some(name) => chosen.push((*name).to_owned()),
            None => break,
        }
    }
    chosen
}

/// The rendezvous (highest random weight) score of `node` for `key`.
fn rendezvous(key: &str, node: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (key, node).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;

    fn node(name: &str, zone: &str, ready: bool, extra: serde_json::Value) -> Node {
        let mut node = serde_json::json!({
            "metadata": {"name": name, "labels": {"zone": zone, "disk": "ssd"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        if let Some(spec) = extra.get("spec") {
            node["spec"] = spec.clone();
        }
        serde_json::from_value(node).unwrap()
    }

    fn agents(nodes: &[&str]) -> AgentIndex {
        agents_restoring_with(nodes, "")
    }

    /// Agents whose restores need runtime handler `handler` ("": none).
    fn agents_restoring_with(nodes: &[&str], handler: &str) -> AgentIndex {
        let info = serde_json::json!({"restoreHandler": handler}).to_string();
        let leases: Vec<Lease> = nodes
            .iter()
            .map(|n| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("ferry-agent-{n}"),
                        "annotations": {"ferry.dev/grpc-endpoint": "127.0.0.1:1",
                            "ferry.dev/node-info": info}},
                    "spec": {"leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"},
                }))
                .unwrap()
            })
            .collect();
        AgentIndex::from_leases(&leases)
    }

    fn sorted(mut nodes: Vec<String>) -> Vec<String> {
        nodes.sort();
        nodes
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:05Z".parse().unwrap()
    }

    fn placement(json: serde_json::Value) -> Placement {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn never_the_source_and_only_ready_nodes_with_agents() {
        let nodes = [
            node("a", "z1", true, serde_json::json!({})),
            node("b", "z1", false, serde_json::json!({})),
            node("c", "z2", true, serde_json::json!({})),
            node("d", "z2", true, serde_json::json!({})),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let chosen = choose_standbys(
            &Placement::default(),
            3,
            "a",
            "uid/app",
            &refs,
            &agents(&["a", "b", "c"]),
            &[],
            now(),
        );
        assert_eq!(
            chosen,
            ["c"],
            "b is NotReady, d has no agent, a is the source"
        );
    }

    #[test]
    fn previous_choice_is_kept_and_new_ones_spread_over_zones() {
        let nodes = [
            node("a", "z1", true, serde_json::json!({})),
            node("b", "z1", true, serde_json::json!({})),
            node("c", "z2", true, serde_json::json!({})),
            node("d", "z3", true, serde_json::json!({})),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let all = agents(&["a", "b", "c", "d"]);
        let spread = placement(serde_json::json!({"topologySpreadKey": "zone"}));
        assert_eq!(
            sorted(choose_standbys(
                &spread,
                2,
                "a",
                "uid/app",
                &refs,
                &all,
                &[],
                now()
            )),
            ["c", "d"],
            "other zones than the source's first"
        );
        let kept = choose_standbys(
            &spread,
            2,
            "a",
            "uid/app",
            &refs,
            &all,
            &["b".into()],
            now(),
        );
        assert_eq!(kept[0], "b", "a suitable previous standby stays: {kept:?}");
        assert!(
            kept[1] == "c" || kept[1] == "d",
            "then another zone: {kept:?}"
        );
        let one = |key: &str| {
            choose_standbys(&Placement::default(), 1, "a", key, &refs, &all, &[], now())
        };
        assert_eq!(one("uid/app"), one("uid/app"), "stable for one container");
        let chosen: std::collections::BTreeSet<Vec<String>> =
            (0..60).map(|i| one(&format!("uid-{i}/app"))).collect();
        assert_eq!(
            chosen.len(),
            3,
            "containers spread over b, c and d: {chosen:?}"
        );
    }

    #[test]
    fn node_selector_taints_and_cordons_are_respected() {
        let nodes = [
            node("a", "z1", true, serde_json::json!({})),
            node(
                "b",
                "z1",
                true,
                serde_json::json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
            ),
            node(
                "c",
                "z1",
                true,
                serde_json::json!({"spec": {"unschedulable": true}}),
            ),
            node(
                "d",
                "z1",
                true,
                serde_json::json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}),
            ),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let all = agents(&["a", "b", "c", "d"]);
        assert_eq!(
            choose_standbys(
                &Placement::default(),
                3,
                "a",
                "uid/app",
                &refs,
                &all,
                &[],
                now()
            ),
            ["d"]
        );
        let tolerant = placement(serde_json::json!({
            "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}],
            "nodeSelector": {"disk": "ssd"},
        }));
        assert_eq!(
            sorted(choose_standbys(
                &tolerant,
                3,
                "a",
                "uid/app",
                &refs,
                &all,
                &[],
                now()
            )),
            ["b", "d"]
        );
        let picky = placement(serde_json::json!({"nodeSelector": {"disk": "hdd"}}));
        assert!(choose_standbys(&picky, 3, "a", "uid/app", &refs, &all, &[], now()).is_empty());
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let taint: Taint = serde_json::from_value(
            serde_json::json!({"key": "k", "value": "v", "effect": "NoExecute"}),
        )
        .unwrap();
        let t = |json| -> Toleration { serde_json::from_value(json).unwrap() };
        assert!(tolerates(
            &t(serde_json::json!({"operator": "Exists"})),
            &taint
        ));
        assert!(tolerates(
            &t(serde_json::json!({"key": "k", "operator": "Exists"})),
            &taint
        ));
        assert!(tolerates(
            &t(serde_json::json!({"key": "k", "value": "v"})),
            &taint
        ));
        assert!(!tolerates(
            &t(serde_json::json!({"key": "k", "value": "w"})),
            &taint
        ));
        assert!(!tolerates(
            &t(serde_json::json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            &taint
        ));
    }

    #[test]
    fn nodes_without_the_restore_handler_are_named_and_never_standbys() {
        let with_handler = |name: &str, handlers: serde_json::Value| -> Node {
            let mut n = node(name, "z1", true, serde_json::json!({}));
            n.status.as_mut().unwrap().runtime_handlers =
                Some(serde_json::from_value(handlers).unwrap());
            n
        };
        let nodes = [
            with_handler("a", serde_json::json!([{"name": "ferry"}])),
            with_handler("b", serde_json::json!([{"name": "runc"}])),
            node("c", "z1", true, serde_json::json!({})),
            with_handler("d", serde_json::json!([{"name": "ferry"}])),
            // Without the handler but unsuitable anyway: not reported.
            {
                let mut n = with_handler("e", serde_json::json!([]));
                n.spec.as_mut().unwrap().unschedulable = Some(true);
                n
            },
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        let restoring_with = |handler| agents_restoring_with(&["a", "b", "c", "d", "e"], handler);
        let handler_agents = restoring_with("ferry");
        let standbys = |agents: &AgentIndex| {
            sorted(choose_standbys(
                &Placement::default(),
                4,
                "a",
                "uid/app",
                &refs,
                agents,
                &["b".to_owned()],
                now(),
            ))
        };
        assert_eq!(
            standbys(&handler_agents),
            ["d"],
            "b and c lack the handler (b even when chosen before)"
        );
        assert_eq!(
            nodes_without_restore_handler(&refs, &Placement::default(), &handler_agents, now()),
            [
                ("b".to_owned(), "ferry".to_owned()),
                ("c".to_owned(), "ferry".to_owned())
            ]
        );
        // Agents that restore with images need no handler.
        let image_agents = restoring_with("");
        assert_eq!(standbys(&image_agents), ["b", "c", "d"]);
        assert!(
            nodes_without_restore_handler(&refs, &Placement::default(), &image_agents, now())
                .is_empty()
        );
        // A node the placement excludes anyway is not reported.
        let ssd_elsewhere = placement(serde_json::json!({"nodeSelector": {"disk": "hdd"}}));
        assert!(
            nodes_without_restore_handler(&refs, &ssd_elsewhere, &handler_agents, now()).is_empty()
        );
    }
}
