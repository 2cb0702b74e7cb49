//! Tolerations checked as the API server checks a Pod's: restored pods and
//! replicas carry the policy's tolerations, so a malformed one would only
//! show up as a failed replacement in the middle of a failover. The CRD's
//! CEL rules refuse most of these at apply time; this also covers the key
//! syntax (too costly for CEL) and clusters whose CRD is older.

use k8s_openapi::api::core::v1::Toleration;

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Every problem of `tolerations`, each naming `field[index]`.
pub fn toleration_problems(field: &str, tolerations: &[Toleration]) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, toleration) in tolerations.iter().enumerate() {
        let at = format!("{field}[{index}]");
        let key = toleration.key.as_deref().unwrap_or_default();
        let operator = toleration.operator.as_deref().unwrap_or("Equal");
        let value = toleration.value.as_deref().unwrap_or_default();
        let effect = toleration.effect.as_deref().unwrap_or_default();
        if !matches!(operator, "Exists" | "Equal") {
            problems.push(format!(
                "{at}.operator: {operator:?} must be Exists or Equal"
            ));
        }
        if operator == "Exists" && !value.is_empty() {
            problems.push(format!("{at}.value: must be empty when operator is Exists"));
        }
        if key.is_empty() && operator != "Exists" {
            problems.push(format!("{at}.key: may be empty only with operator Exists"));
        }
        if !key.is_empty() && !qualified_name(key) {
            problems.push(format!(
                "{at}.key: {key:?} is not a qualified name like a label key"
            ));
        }
        if !effect.is_empty() && !EFFECTS.contains(&effect) {
            problems.push(format!(
                "{at}.effect: {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute (or empty for all)"
            ));
        }
        if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
            problems.push(format!("{at}.tolerationSeconds: needs effect NoExecute"));
        }
    }
    problems
}

/// `[prefix/]name`: a DNS subdomain prefix and a name of 1 to 63
/// characters, alphanumeric at both ends, `-`, `_` and `.` inside.
fn qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name_ok = (1..=63).contains(&name.len())
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|prefix| {
        (1..=253).contains(&prefix.len())
            && prefix.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && alnum_ends(label)
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toleration(json: serde_json::Value) -> Toleration {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn well_formed_tolerations_pass() {
        let ok = [
            toleration(
                serde_json::json!({"key": "ferry.dev/standby", "operator": "Exists", "effect": "NoSchedule"}),
            ),
            toleration(serde_json::json!({"key": "dedicated", "value": "db"})),
            toleration(serde_json::json!({"operator": "Exists"})),
            toleration(
                serde_json::json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 30}),
            ),
        ];
        assert_eq!(toleration_problems("t", &ok), Vec::<String>::new());
    }

    #[test]
    fn each_malformed_toleration_is_named() {
        let bad = [
            toleration(serde_json::json!({"key": "k", "operator": "Sometimes"})),
            toleration(serde_json::json!({"key": "k", "operator": "Exists", "value": "v"})),
            toleration(serde_json::json!({"value": "v"})),
            toleration(serde_json::json!({"key": "not a key!", "operator": "Exists"})),
            toleration(serde_json::json!({"key": "k", "operator": "Exists", "effect": "Never"})),
            toleration(
                serde_json::json!({"key": "k", "operator": "Exists", "tolerationSeconds": 5}),
            ),
        ];
        let problems = toleration_problems("spec.placement.tolerations", &bad);
        let expected = [
            "[0].operator",
            "[1].value",
            "[2].key",
            "[3].key",
            "[4].effect",
            "[5].tolerationSeconds",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:?}");
        for (problem, what) in problems.iter().zip(expected) {
            assert!(
                problem.starts_with(&format!("spec.placement.tolerations{what}")),
                "{problem}"
            );
        }
    }
}
