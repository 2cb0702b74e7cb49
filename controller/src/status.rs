//! The status a CheckpointPolicy should have: pure functions of the object
//! and the clock, so every rule is unit-testable without an API server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::Selector;

use crate::schedule::Target;

use ferry_api::{
    CheckpointPolicy, CheckpointPolicySpec, CheckpointPolicyStatus, ConditionStatus, Phase,
    parse_duration, set_condition,
};

/// Condition type that says whether the controller accepted the spec and acts on it.
pub const READY: &str = "Ready";

/// Condition: every protected container has a recent, replicated checkpoint.
pub const PROTECTED: &str = "Protected";

/// Condition: some selected pods are also selected by another policy.
pub const OVERLAP: &str = "Overlapping";
/// Condition: some nodes the placement allows cannot restore, because their
/// container runtime lacks ferry's runtime handler.
pub const RUNTIME_HANDLER_MISSING: &str = "RuntimeHandlerMissing";
/// Whether the history database (optional) receives what happens.
pub const HISTORY: &str = "HistoryRecorded";
/// Condition: a warm standby pod (`warm`) could not be created or removed.
pub const WARM_STANDBY_FAILING: &str = "WarmStandbyFailing";

/// A spec that passed the checks the API server's schema cannot make.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// The selector in `kubectl` syntax.
    pub target: String,
    pub interval: std::time::Duration,
    pub node_loss_grace_period: std::time::Duration,
    pub unreachable_grace_period: std::time::Duration,
    pub max_checkpoint_age: std::time::Duration,
    pub max_concurrent_failovers: usize,
    /// Strategy StateApi: how agents reach the application's state (the
    /// address, the pod's IP, is filled in per pod).
    pub state_api: Option<ferry_proto::v1::StateApi>,
}

impl ValidSpec {
    /// The node-loss thresholds of this policy.
    pub fn thresholds(&self) -> crate::evidence::Thresholds {
        crate::evidence::Thresholds {
            not_ready: self.node_loss_grace_period,
            unreachable: self.unreachable_grace_period,
        }
    }
}

/// Checks what the schema cannot (or what an object written before the
/// schema existed may lack), collecting every problem with its field path.
pub fn validate(spec: &CheckpointPolicySpec) -> Result<ValidSpec, Vec<String>> {
    let mut problems = Vec::new();
    let mut duration = |field: &'static str, value: &str| match parse_duration(field, value) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            problems.push(err.to_string());
            None
        }
    };
    let interval = duration("spec.interval", &spec.interval);
    let grace = duration(
        "spec.failover.nodeLossGracePeriod",
        &spec.failover.node_loss_grace_period,
    );
    let unreachable = duration(
        "spec.failover.unreachableGracePeriod",
        &spec.failover.unreachable_grace_period,
    );
    let max_age = duration(
        "spec.failover.maxCheckpointAge",
        &spec.failover.max_checkpoint_age,
    );
    if let Some(max_age) = &spec.retention.max_age {
        duration("spec.retention.maxAge", max_age);
    }
    let state_timeout = spec
        .state_api
        .as_ref()
        .filter(|_| spec.strategy == ferry_api::Strategy::StateApi)
        .and_then(|settings| duration("spec.stateApi.timeout", &settings.timeout));
    let target = match selector_string(&spec.selector) {
        Ok(target) if target.is_empty() => {
            problems.push(
                "spec.selector: must not be empty; it would select every pod in the namespace"
                    .into(),
            );
            None
        }
        Ok(target) => Some(target),
        Err(err) => {
            problems.push(format!("spec.selector: {err}"));
            None
        }
    };
    let mut state_api = None;
    if spec.strategy == ferry_api::Strategy::StateApi {
        match &spec.state_api {
            None => problems.push("spec.stateApi: required when strategy is StateApi".into()),
            Some(settings) => {
                let timeout = state_timeout;
                let max_bytes = quantity_bytes(&settings.max_size.0).filter(|b| *b > 0);
                if max_bytes.is_none() {
                    problems.push(format!(
                        "spec.stateApi.maxSize: {:?} is not a byte quantity above zero",
                        settings.max_size.0
                    ));
                }
                if let (Some(timeout), Some(max_bytes)) = (timeout, max_bytes) {
                    state_api = Some(ferry_proto::v1::StateApi {
                        scheme: match settings.scheme {
                            ferry_api::StateApiScheme::Http => "http".into(),
                            ferry_api::StateApiScheme::Https => "https".into(),
                        },
                        port: u32::try_from(settings.port).unwrap_or(0),
                        path: settings.path.clone(),
                        timeout_millis: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                        max_bytes,
                        address: String::new(),
                        content_type: settings.content_type.clone(),
                    });
                }
            }
        }
    }
    problems.extend(ferry_api::toleration_problems(
        "spec.placement.tolerations",
        &spec.placement.tolerations,
    ));
    if spec.failover.max_concurrent < 1 {
        problems.push("spec.failover.maxConcurrent: must be at least 1".into());
    }
    match (target, interval, grace, unreachable, max_age) {
        (
            Some(target),
            Some(interval),
            Some(node_loss_grace_period),
            Some(unreachable_grace_period),
            Some(max_checkpoint_age),
        ) if problems.is_empty() => Ok(ValidSpec {
            target,
            interval,
            node_loss_grace_period,
            unreachable_grace_period,
            max_checkpoint_age,
            max_concurrent_failovers: usize::try_from(spec.failover.max_concurrent).unwrap_or(1),
            state_api,
        }),
        _ => Err(problems),
    }
}

/// `app=counter,tier in (a,b)`.
pub fn selector_string(
    selector: &LabelSelector,
) -> Result<String, kube::core::ParseExpressionError> {
    Ok(Selector::try_from(selector.clone())?.to_string())
}

/// The status `policy` should have at `now`. Starts from the stored status so
/// fields owned by other parts of the controller (checkpoints, failovers) and
/// condition transition times survive.
pub fn desired_status(policy: &CheckpointPolicy, now: Time) -> CheckpointPolicyStatus {
    let generation = policy.metadata.generation;
    let mut status = policy.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    match validate(&policy.spec) {
        Err(problems) => {
            status.phase = Some(Phase::Degraded);
            status.target = selector_string(&policy.spec.selector)
                .ok()
                .filter(|t| !t.is_empty());
            set_condition(
                &mut status.conditions,
                READY,
                ConditionStatus::False,
                "InvalidSpec",
                problems.join("; "),
                generation,
                now,
            );
        }
        Ok(valid) => {
            status.target = Some(valid.target.clone());
            let (phase, reason, message) = if policy.spec.suspend {
                (
                    Phase::Suspended,
                    "Suspended",
                    "spec.suspend is set: no checkpoints or failovers; archives are kept"
                        .to_owned(),
                )
            } else if status.checkpoints.is_empty() {
                (
                    Phase::Pending,
                    "Accepted",
                    format!(
                        "selecting pods {} every {}; no checkpoint yet",
                        valid.target, policy.spec.interval
                    ),
                )
            } else {
                (
                    status
                        .phase
                        .filter(|p| *p != Phase::Suspended && *p != Phase::Pending)
                        .unwrap_or(Phase::Protected),
                    "Accepted",
                    format!(
                        "selecting pods {} every {}",
                        valid.target, policy.spec.interval
                    ),
                )
            };
            status.phase = Some(phase);
            set_condition(
                &mut status.conditions,
                READY,
                ConditionStatus::True,
                reason,
                message,
                generation,
                now,
            );
        }
    }
    status
}

/// Bytes of a Kubernetes quantity such as `2Gi`, `500M` or `1000`; `None`
/// for forms the CRD schema does not admit for byte counts.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let bytes = (value * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Sets condition `type_`, which is absent until its problem first
/// appears: True with `problem` (reason, message) while there is one, and
/// False with `cleared` (reason, message) once there was one and it went.
fn set_problem_condition(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    type_: &str,
    problem: Option<(&str, String)>,
    cleared: (&str, &str),
    now: jiff::Timestamp,
) {
    let (condition, (reason, message)) = match problem {
        Some(problem) => (ConditionStatus::True, problem),
        None if status.conditions.iter().any(|c| c.type_ == type_) => {
            (ConditionStatus::False, (cleared.0, cleared.1.to_owned()))
        }
        None => return,
    };
    set_condition(
        &mut status.conditions,
        type_,
        condition,
        reason,
        message,
        policy.metadata.generation,
        Time(now),
    );
}

/// The Overlapping condition: which pods another, older policy protects.
pub fn set_overlap_condition(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    overlapping: &[(String, String)],
    now: jiff::Timestamp,
) {
    let problem = (!overlapping.is_empty()).then(|| {
        let listed: Vec<String> = overlapping
            .iter()
            .take(5)
            .map(|(pod, other)| format!("{pod} (also {other})"))
            .collect();
        (
            "OverlappingPolicies",
            format!(
                "{} pods are selected by more than one policy; the oldest policy protects them: {}",
                overlapping.len(),
                listed.join(", ")
            ),
        )
    });
    let cleared = ("NoOverlap", "no other policy selects these pods");
    set_problem_condition(status, policy, OVERLAP, problem, cleared, now);
}

/// The RuntimeHandlerMissing condition: which nodes ferry neither replicates
/// to nor restores on because their runtime lacks the agent's handler.
/// Absent until a node lacks it, as Overlapping.
pub fn set_runtime_handler_condition(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    missing: &[(String, String)],
    now: jiff::Timestamp,
) {
    let problem = (!missing.is_empty()).then(|| {
        let listed: Vec<String> = missing
            .iter()
            .map(|(node, handler)| format!("{node} (no runtime handler {handler:?})"))
            .collect();
        (
            "NodesLackRuntimeHandler",
            format!(
                "not used as standbys or restore targets: {}; configure the handler in the node's \
                 container runtime (docs/runtime-handler.md)",
                listed.join(", ")
            ),
        )
    });
    let cleared = (
        "HandlersPresent",
        "every node the placement allows has the runtime handler its agent restores through",
    );
    set_problem_condition(
        status,
        policy,
        RUNTIME_HANDLER_MISSING,
        problem,
        cleared,
        now,
    );
}

/// The WarmStandbyFailing condition: what went wrong creating or removing
/// warm standby pods. Absent until something does, as Overlapping; restores
/// still work without them, only about a second slower at worst.
pub fn set_warm_standby_condition(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    failures: &[String],
    now: jiff::Timestamp,
) {
    let problem = (!failures.is_empty()).then(|| {
        (
            "WarmStandbyPodRefused",
            format!(
                "{}; restores on those nodes may wait about a second for the kubelet to fetch \
                 the pod's ConfigMaps and Secrets",
                failures.join("; ")
            ),
        )
    });
    let cleared = (
        "WarmStandbysInPlace",
        "every standby node has its warm standby pod, or none is wanted",
    );
    set_problem_condition(status, policy, WARM_STANDBY_FAILING, problem, cleared, now);
}

/// The HistoryRecorded condition, when a history database is configured:
/// whether rows reach it now, and how many were lost while it was away.
pub fn set_history_condition(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    history: Option<&ferry_history::Health>,
    now: jiff::Timestamp,
) {
    let Some(health) = history else {
        status.conditions.retain(|c| c.type_ != HISTORY);
        return;
    };
    let lost = match health.lost {
        0 => String::new(),
        n => format!(
            "; {n} rows were lost while it could not keep up (ferry_controller_history_rows_total)"
        ),
    };
    let (state, reason, message) = match (&health.error, health.connected) {
        (None, true) => (
            ConditionStatus::True,
            if health.lost == 0 {
                "Recording"
            } else {
                "RecordingWithLosses"
            },
            format!(
                "checkpoints and failovers are recorded in {}{lost}",
                health.database
            ),
        ),
        (Some(error), _) => (
            ConditionStatus::False,
            "DatabaseUnavailable",
            format!(
                "{}: {error}; rows wait in a bounded buffer{lost}",
                health.database
            ),
        ),
        (None, false) => (
            ConditionStatus::Unknown,
            "Connecting",
            format!("connecting to {}", health.database),
        ),
    };
    set_condition(
        &mut status.conditions,
        HISTORY,
        state,
        reason,
        message,
        policy.metadata.generation,
        Time(now),
    );
}

/// The Protected condition, phase, restore target and last checkpoint time.
///
/// Returns the age of the oldest newest-checkpoint among `targets`, for
/// the metric that tracks it.
pub fn set_protection(
    status: &mut CheckpointPolicyStatus,
    policy: &CheckpointPolicy,
    valid: &ValidSpec,
    targets: &[Target],
    problems: &[(String, String)],
    now: jiff::Timestamp,
) -> Option<std::time::Duration> {
    let generation = policy.metadata.generation;
    let wanted = usize::try_from(policy.spec.standbys).unwrap_or(0);
    let mut reasons: Vec<(String, String)> = problems.to_vec();
    let mut oldest_age: Option<std::time::Duration> = None;
    for target in targets {
        let record = status
            .checkpoints
            .iter()
            .find(|r| r.pod_uid == target.pod_uid && r.container == target.container);
        match record {
            None => {}
            Some(r) => {
                let age: std::time::Duration = now
                    .duration_since(r.taken_at.0)
                    .try_into()
                    .unwrap_or_default();
                oldest_age = Some(oldest_age.map_or(age, |o| o.max(age)));
                if r.replicas.len() < wanted {
                    reasons.push((
                        "NoStandbyNode".into(),
                        format!(
                            "{}/{} has {} of {wanted} standby replicas",
                            r.pod,
                            r.container,
                            r.replicas.len()
                        ),
                    ));
                }
                if age > valid.max_checkpoint_age {
                    reasons.push((
                        "CheckpointTooOld".into(),
                        format!(
                            "newest checkpoint of {}/{} is {}s old",
                            r.pod,
                            r.container,
                            age.as_secs()
                        ),
                    ));
                }
            }
        }
    }
    let unprotected = targets.iter().filter(|t| {
        !status
            .checkpoints
            .iter()
            .any(|r| r.pod_uid == t.pod_uid && r.container == t.container)
    });
    let waiting = unprotected.count();
    status.last_checkpoint_time = status
        .checkpoints
        .iter()
        .map(|r| r.taken_at.clone())
        .max_by_key(|t| t.0);
    status.restore_target = status
        .checkpoints
        .iter()
        .max_by_key(|r| r.taken_at.0)
        .and_then(|r| r.replicas.first().cloned());
    reasons.sort();
    reasons.dedup();
    let (state, reason, message, phase) = if policy.spec.suspend {
        (
            ConditionStatus::False,
            "Suspended".to_owned(),
            "spec.suspend is set".to_owned(),
            Phase::Suspended,
        )
    } else if !status.failovers.is_empty() {
        let pods: Vec<&str> = status.failovers.iter().map(|f| f.pod.as_str()).collect();
        (
            ConditionStatus::False,
            "FailingOver".to_owned(),
            // What holds a failover back (a step that failed) says so.
            std::iter::once(format!("restoring {}", pods.join(", ")))
                .chain(reasons.iter().take(5).map(|(_, m)| m.clone()))
                .collect::<Vec<_>>()
                .join("; "),
            Phase::FailingOver,
        )
    } else if let Some((reason, _)) = reasons.first() {
        let message = reasons
            .iter()
            .take(5)
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (
            ConditionStatus::False,
            reason.clone(),
            message,
            Phase::Degraded,
        )
    } else if targets.is_empty() {
        (
            ConditionStatus::False,
            "NoPods".to_owned(),
            format!("no running pod matches {}", valid.target),
            Phase::Pending,
        )
    } else if waiting > 0 {
        (
            ConditionStatus::False,
            "WaitingForCheckpoint".to_owned(),
            format!("{waiting} containers have no checkpoint yet"),
            Phase::Pending,
        )
    } else {
        (
            ConditionStatus::True,
            "Protected".to_owned(),
            format!(
                "{} containers checkpointed every {} with {wanted} standby replicas",
                targets.len(),
                policy.spec.interval
            ),
            Phase::Protected,
        )
    };
    status.phase = Some(phase);
    set_condition(
        &mut status.conditions,
        PROTECTED,
        state,
        &reason,
        message,
        generation,
        Time(now),
    );
    oldest_age
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CheckpointPolicySpec;

    fn policy(spec: serde_json::Value) -> CheckpointPolicy {
        let spec: CheckpointPolicySpec = serde_json::from_value(spec).expect("spec");
        let mut policy = CheckpointPolicy::new("counter", spec);
        policy.metadata.namespace = Some("default".into());
        policy.metadata.generation = Some(3);
        policy
    }

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).expect("timestamp"))
    }

    fn ready(status: &CheckpointPolicyStatus) -> (&str, &str, &str) {
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready condition");
        (
            condition.status.as_str(),
            condition.reason.as_str(),
            condition.message.as_str(),
        )
    }

    #[test]
    fn byte_quantities_parse() {
        assert_eq!(quantity_bytes("2Gi"), Some(2 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("1000"), Some(1000));
        assert_eq!(quantity_bytes("1m"), None, "milli-bytes make no sense");
    }

    #[test]
    fn valid_policy_is_pending_until_first_checkpoint() {
        let status = desired_status(
            &policy(serde_json::json!({"selector": {"matchLabels": {"app": "counter"}}})),
            at(100),
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.target.as_deref(), Some("app=counter"));
        let (state, reason, message) = ready(&status);
        assert_eq!((state, reason), ("True", "Accepted"));
        assert!(message.contains("every 10s"), "{message}");
    }

    #[test]
    fn suspended_policy_says_so() {
        let status = desired_status(
            &policy(
                serde_json::json!({"selector": {"matchLabels": {"app": "counter"}}, "suspend": true}),
            ),
            at(100),
        );
        assert_eq!(status.phase, Some(Phase::Suspended));
        assert_eq!(ready(&status).1, "Suspended");
    }

    #[test]
    fn invalid_spec_names_every_bad_field() {
        let status = desired_status(
            &policy(serde_json::json!({
                "selector": {},
                "interval": "soon",
                "strategy": "StateApi",
                "placement": {"tolerations": [{"key": "k", "operator": "Sometimes"}]},
            })),
            at(100),
        );
        assert_eq!(status.phase, Some(Phase::Degraded));
        let (state, reason, message) = ready(&status);
        assert_eq!((state, reason), ("False", "InvalidSpec"));
        for field in [
            "spec.interval",
            "spec.selector",
            "spec.stateApi",
            "spec.placement.tolerations[0].operator",
        ] {
            assert!(message.contains(field), "{message} names {field}");
        }
    }

    #[test]
    fn matching_expressions_render_like_kubectl() {
        let status = desired_status(
            &policy(serde_json::json!({"selector": {
                "matchLabels": {"app": "counter"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
            }})),
            at(100),
        );
        assert_eq!(status.target.as_deref(), Some("app=counter,tier in (a,b)"));
    }

    #[test]
    fn reconciling_twice_changes_nothing() {
        let mut object =
            policy(serde_json::json!({"selector": {"matchLabels": {"app": "counter"}}}));
        let first = desired_status(&object, at(100));
        object.status = Some(first.clone());
        let second = desired_status(&object, at(200));
        assert_eq!(
            first, second,
            "a later clock alone must not produce a status write"
        );
    }

    #[test]
    fn new_generation_updates_observed_generation_but_keeps_transition_time() {
        let mut object =
            policy(serde_json::json!({"selector": {"matchLabels": {"app": "counter"}}}));
        object.status = Some(desired_status(&object, at(100)));
        object.metadata.generation = Some(4);
        object.spec.interval = "30s".into();
        let status = desired_status(&object, at(200));
        assert_eq!(status.observed_generation, Some(4));
        let condition = &status.conditions[0];
        assert_eq!(condition.last_transition_time, at(100));
        assert_eq!(condition.observed_generation, Some(4));
        assert!(condition.message.contains("every 30s"));
    }

    #[test]
    fn runtime_handler_condition_names_the_nodes_and_clears() {
        let p = policy(serde_json::json!({"selector": {"matchLabels": {"app": "x"}}}));
        let mut status = desired_status(&p, at(0));
        set_runtime_handler_condition(&mut status, &p, &[], at(0).0);
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.type_ != RUNTIME_HANDLER_MISSING),
            "absent while every node has it"
        );
        let missing = [("ferry-b".to_owned(), "ferry".to_owned())];
        set_runtime_handler_condition(&mut status, &p, &missing, at(1).0);
        let condition = |status: &CheckpointPolicyStatus| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == RUNTIME_HANDLER_MISSING)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                .unwrap()
        };
        let (state, reason, message) = condition(&status);
        assert_eq!(state, "True");
        assert_eq!(reason, "NodesLackRuntimeHandler");
        assert!(
            message.contains("ferry-b (no runtime handler \"ferry\")"),
            "{message}"
        );
        set_runtime_handler_condition(&mut status, &p, &[], at(2).0);
        assert_eq!(condition(&status).0, "False");
    }

    #[test]
    fn warm_standby_condition_appears_with_a_refusal_and_clears() {
        let p = policy(serde_json::json!({"selector": {"matchLabels": {"app": "x"}}}));
        let mut status = desired_status(&p, at(0));
        let warm = |status: &CheckpointPolicyStatus| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == WARM_STANDBY_FAILING)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        set_warm_standby_condition(&mut status, &p, &[], at(0).0);
        assert_eq!(warm(&status), None, "absent while nothing failed");
        let refused = ["creating warm standby pod demo/ferry-warm-x-b on node b: quota".to_owned()];
        set_warm_standby_condition(&mut status, &p, &refused, at(1).0);
        let (state, reason, message) = warm(&status).unwrap();
        assert_eq!(
            (state.as_str(), reason.as_str()),
            ("True", "WarmStandbyPodRefused")
        );
        assert!(message.starts_with(&refused[0]), "{message}");
        set_warm_standby_condition(&mut status, &p, &[], at(2).0);
        assert_eq!(warm(&status).unwrap().1, "WarmStandbysInPlace");
    }
}
