//! Whether a replacement's containers started: a pure reading of the pod's
//! status as its kubelet reports it.
//!
//! The pod's phase alone does not say: a pod whose only container could not
//! start and waits to be retried (CrashLoopBackOff after a StartError) is
//! `Running` too, and a restore that failed there must not count as done.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// How far a replacement's containers got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Not every container runs yet.
    Pending,
    /// The pod is Running and so is each container the kubelet reports.
    Running,
    /// A container could not be started (its runtime refused it or failed
    /// to create it): what the kubelet says, naming the container.
    Failed(String),
}

/// How far `pod`'s containers got.
pub fn start_of(pod: &Pod) -> Start {
    let Some(status) = pod.status.as_ref() else {
        return Start::Pending;
    };
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    if let Some(failure) = containers.iter().find_map(start_failure) {
        return Start::Failed(failure);
    }
    let running = status.phase.as_deref() == Some("Running")
        && containers
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if running {
        Start::Running
    } else {
        Start::Pending
    }
}

/// The kubelet's message when the container never got to run: its runtime
/// failed to start it (StartError, now or as its last state) or reports
/// RunContainerError while the kubelet retries.
fn start_failure(container: &ContainerStatus) -> Option<String> {
    let state = container.state.as_ref();
    let waiting = state
        .and_then(|s| s.waiting.as_ref())
        .filter(|w| w.reason.as_deref() == Some("RunContainerError"))
        .map(|w| w.message.clone());
    let terminated = [
        state.and_then(|s| s.terminated.as_ref()),
        container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref()),
    ]
    .into_iter()
    .flatten()
    .find(|t| t.reason.as_deref() == Some("StartError"))
    .map(|t| t.message.clone());
    let message = waiting.or(terminated)?;
    Some(format!(
        "container {} could not start: {}",
        container.name,
        message.unwrap_or_else(|| "no message from the kubelet".into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-2"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn running_needs_every_container_running_not_just_the_phase() {
        assert_eq!(start_of(&pod(serde_json::json!(null))), Start::Pending);
        assert_eq!(
            start_of(&pod(serde_json::json!({"phase": "Pending",
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}))),
            Start::Pending
        );
        assert_eq!(
            start_of(&pod(serde_json::json!({"phase": "Running",
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]}))),
            Start::Running
        );
        // Without container statuses (as some test kubelets report), the
        // phase decides.
        assert_eq!(
            start_of(&pod(serde_json::json!({"phase": "Running"}))),
            Start::Running
        );
    }

    #[test]
    fn a_container_its_runtime_refused_is_a_failed_start_though_the_pod_is_running() {
        let refused = "failed to create containerd task: OCI runtime create failed: \
            restore grant 0123 is unknown or was used already";
        // Backing off after the refusal: the phase says Running.
        let backing_off = pod(serde_json::json!({"phase": "Running",
            "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 128, "reason": "StartError",
                    "message": refused}}}]}));
        let Start::Failed(why) = start_of(&backing_off) else {
            panic!("{:?}", start_of(&backing_off))
        };
        assert!(why.contains("container app could not start"), "{why}");
        assert!(why.contains(refused), "{why}");
        let retrying = pod(serde_json::json!({"phase": "Pending",
            "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "RunContainerError", "message": refused}}}]}));
        assert!(matches!(start_of(&retrying), Start::Failed(_)));
        // A container that ran and crashed is no failed start.
        let crashed = pod(serde_json::json!({"phase": "Running",
            "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}));
        assert_eq!(start_of(&crashed), Start::Pending);
    }
}
