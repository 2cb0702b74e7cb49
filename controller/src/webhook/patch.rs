//! The JSON patch that turns the owner's new pod into the replacement of
//! a failover: checkpoint images, pinned to the target node, ferry's
//! scheduling gate and annotations, the policy's tolerations.

use super::*;

/// The patch that turns `pod` into the replacement of `failover`: restore
/// images (never pulled), the failover annotations, pinned to the target
/// node, the policy's tolerations, and ferry's scheduling gate, which the
/// controller lifts once the failed instance is known to be stopped.
/// Used by the webhook for pods an owner creates and by the controller for
/// bare pods it recreates, so both get the same rewrite. With
/// `state_gate` (strategy StateApi) the pod also gets ferry's readiness
/// gate: it takes no traffic until its state was written into it.
pub fn restore_patch(
    pod: &Pod,
    failover: &FailoverRecord,
    tolerations: &[Toleration],
    state_gate: bool,
) -> Patch {
    // Parents are looked up in the pod's JSON form, which is what the patch
    // applies to; absent and null both need the parent to be added.
    let doc = serde_json::to_value(pod).unwrap_or(Value::Null);
    let node = failover.to_node.clone().unwrap_or_default();
    let mut ops = Vec::new();
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);

    for restore in &failover.containers {
        // An empty image: the runtime handler restores, the image stays.
        let (Some(index), Some(image)) = (
            spec.containers
                .iter()
                .position(|c| c.name == restore.container),
            restore.image.as_deref().filter(|image| !image.is_empty()),
        ) else {
            continue;
        };
        let index = index.to_string();
        let index = index.as_str();
        ops.push(add(&["spec", "containers", index, "image"], json!(image)));
        // The checkpoint image exists only in the target node's store.
        ops.push(add(
            &["spec", "containers", index, "imagePullPolicy"],
            json!("Never"),
        ));
    }

    add_entries(
        &doc,
        &mut ops,
        &["metadata", "annotations"],
        restore_annotations(failover),
    );

    if let Some(class) = &failover.runtime_class {
        ops.push(add(&["spec", "runtimeClassName"], json!(class)));
    }

    if !node.is_empty() {
        pin_to_node(&doc, &mut ops, &node);
    }

    let gate = json!({"name": RESTORE_GATE});
    if doc["spec"]["schedulingGates"].is_array() {
        ops.push(add(&["spec", "schedulingGates", "-"], gate));
    } else {
        ops.push(add(&["spec", "schedulingGates"], json!([gate])));
    }

    if state_gate {
        let gate = json!({"conditionType": STATE_RESTORED_CONDITION});
        if doc["spec"]["readinessGates"].is_array() {
            ops.push(add(&["spec", "readinessGates", "-"], gate));
        } else {
            ops.push(add(&["spec", "readinessGates"], json!([gate])));
        }
    }

    let wanted = tolerations;
    let existing = spec.tolerations.as_deref().unwrap_or_default();
    let mut missing: Vec<&Toleration> = Vec::new();
    for toleration in wanted {
        if !existing.contains(toleration) && !missing.contains(&toleration) {
            missing.push(toleration);
        }
    }
    if !missing.is_empty() {
        if doc["spec"]["tolerations"].is_array() {
            for toleration in missing {
                ops.push(add(&["spec", "tolerations", "-"], to_json(toleration)));
            }
        } else {
            ops.push(add_creating_parents(
                &doc,
                &["spec", "tolerations"],
                to_json(&missing),
            ));
        }
    }

    Patch(ops)
}

/// Requires `metadata.name In [node]` the way DaemonSet pods are pinned.
/// Required node selector terms are ORed, so the requirement is added to
/// every existing term: the pod keeps its own constraints and can only go
/// to `node`.
pub(super) fn pin_to_node(doc: &Value, ops: &mut Vec<PatchOperation>, node: &str) {
    let requirement = json!({"key": "metadata.name", "operator": "In", "values": [node]});
    const REQUIRED: [&str; 4] = [
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ];
    let terms = doc["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .filter(|t| !t.is_empty());
    match terms {
        Some(terms) => {
            for (i, term) in terms.iter().enumerate() {
                let i = i.to_string();
                let mut path: Vec<&str> = REQUIRED.to_vec();
                path.extend(["nodeSelectorTerms", i.as_str(), "matchFields"]);
                if term["matchFields"].is_array() {
                    path.push("-");
                    ops.push(add(&path, requirement.clone()));
                } else {
                    ops.push(add(&path, json!([requirement])));
                }
            }
        }
        None => {
            let mut path: Vec<&str> = REQUIRED.to_vec();
            path.push("nodeSelectorTerms");
            ops.push(add_creating_parents(
                doc,
                &path,
                json!([{"matchFields": [requirement]}]),
            ));
        }
    }
}

/// Adds each entry under the object at `parent`, or the whole object when
/// `parent` is absent (one add per key would each replace the last).
pub(super) fn add_entries(
    doc: &Value,
    ops: &mut Vec<PatchOperation>,
    parent: &[&str],
    entries: BTreeMap<String, String>,
) {
    let exists = parent
        .iter()
        .try_fold(doc, |v, token| v.get(token))
        .is_some_and(Value::is_object);
    if exists {
        for (key, value) in entries {
            let mut path = parent.to_vec();
            path.push(&key);
            ops.push(add(&path, json!(value)));
        }
    } else {
        ops.push(add_creating_parents(doc, parent, to_json(&entries)));
    }
}

/// An `add` of `value` at `path` (object keys only) that also works when
/// parents are missing or null: the add goes to the first absent level and
/// carries the nested objects down to `value`.
pub(super) fn add_creating_parents(doc: &Value, path: &[&str], value: Value) -> PatchOperation {
    let mut depth = 0;
    let mut current = doc;
    for token in path.iter().take(path.len().saturating_sub(1)) {
        match current.get(token) {
            Some(next) if next.is_object() => {
                current = next;
                depth += 1;
            }
            _ => break,
        }
    }
    let mut value = value;
    for token in path.iter().skip(depth + 1).rev() {
        value = json!({ *token: value });
    }
    add(&path[..(depth + 1).min(path.len())], value)
}

pub(super) fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    // Serializing k8s-openapi types and string maps cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}
