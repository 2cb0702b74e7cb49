//! What the controller records in its history database (optional): rows
//! built from what a checkpoint job or a finished failover already holds.
//! Pure; the [`ferry_history::Recorder`] does the writing.

use std::time::{Duration, SystemTime};

use ferry_api::{FailoverRecord, FailoverStage};
use ferry_history::Row;
use ferry_history::rows::{
    CheckpointRow, CriuDumpStats, FailoverRow, ReplicationRow, StateApiOperation, StateApiRow,
    Subject,
};
use ferry_proto::v1 as pb;

use crate::checkpointer::{Done, Failure, Job};

fn system_time(at: jiff::Timestamp) -> SystemTime {
    SystemTime::from(at)
}

fn millis(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn criu(stats: &pb::CriuDumpStats) -> CriuDumpStats {
    CriuDumpStats {
        freezing: Duration::from_micros(stats.freezing_micros),
        frozen: Duration::from_micros(stats.frozen_micros),
        memdump: Duration::from_micros(stats.memdump_micros),
        memwrite: Duration::from_micros(stats.memwrite_micros),
        pages_scanned: stats.pages_scanned,
        pages_written: stats.pages_written,
    }
}

/// The checkpoint and, when it got that far, each replication. `took` is
/// the job's whole time, for a checkpoint that failed.
pub fn checkpoint_rows(
    job: &Job,
    strategy: &str,
    result: &Result<Done, Failure>,
    took: Duration,
    now: SystemTime,
) -> Vec<Row> {
    let subject = Subject {
        policy: job.policy.name.clone(),
        namespace: job.namespace.clone(),
        pod: job.target.pod.clone(),
    };
    let base = CheckpointRow {
        taken_at: now,
        subject,
        pod_uid: job.target.pod_uid.clone(),
        container: job.target.container.clone(),
        node: job.target.node.clone(),
        strategy: strategy.to_owned(),
        archive: None,
        size_bytes: None,
        total: took,
        criu: None,
        error: None,
    };
    let done = match result {
        Ok(done) => done,
        Err(Failure::AgentUnreachable(error) | Failure::CheckpointFailed(error)) => {
            let mut rows = vec![Row::Checkpoint(CheckpointRow {
                error: Some(error.clone()),
                ..base.clone()
            })];
            // The application's endpoint failed (the agent said how).
            if job.state_api.is_some() && matches!(result, Err(Failure::CheckpointFailed(_))) {
                rows.push(state_api_row(
                    (base.subject.clone(), &base.container, &base.node),
                    StateApiOperation::Read,
                    None,
                    took,
                    Some(error.clone()),
                ));
            }
            return rows;
        }
    };
    let record = &done.record;
    let mut rows = vec![Row::Checkpoint(CheckpointRow {
        taken_at: system_time(record.taken_at.0),
        archive: Some(record.archive.clone()),
        size_bytes: u64::try_from(record.size_bytes).ok(),
        total: Duration::from_millis(u64::try_from(record.duration_ms).unwrap_or(0)),
        criu: done.criu_stats.as_ref().map(criu),
        ..base.clone()
    })];
    if let Some(call) = &done.state_api_call {
        rows.push(state_api_row(
            (base.subject.clone(), &base.container, &base.node),
            StateApiOperation::Read,
            Some(call),
            Duration::ZERO,
            None,
        ));
    }
    for outcome in &done.replications {
        rows.push(Row::Replication(ReplicationRow {
            finished_at: now,
            policy: job.policy.name.clone(),
            namespace: job.namespace.clone(),
            archive: record.archive.clone(),
            source_node: job.target.node.clone(),
            target_node: outcome.node_name.clone(),
            size_bytes: outcome.ok.then_some(outcome.bytes_sent),
            duration: outcome.ok.then(|| millis(outcome.millis)),
            error: (!outcome.ok).then(|| outcome.error.clone()),
        }));
    }
    rows
}

/// One GET or PUT of an application's state. Its time is the agent's own
/// measure of the call when there was one.
fn state_api_row(
    (subject, container, node): (Subject, &str, &str),
    operation: StateApiOperation,
    call: Option<&pb::StateApiCall>,
    took: Duration,
    error: Option<String>,
) -> Row {
    Row::StateApi(StateApiRow {
        at: SystemTime::now(),
        subject,
        container: container.to_owned(),
        node: node.to_owned(),
        operation,
        size_bytes: call.map(|c| c.bytes),
        duration: call.map_or(took, |c| Duration::from_millis(c.millis)),
        http_status: call
            .and_then(|c| u16::try_from(c.http_status).ok())
            .filter(|s| *s > 0),
        error,
    })
}

/// A PUT of a state into a replacement pod (the agent on `node` wrote it).
pub fn state_write_row(
    (namespace, policy): (&str, &str),
    (pod, container, node): (&str, &str, &str),
    call: Option<&pb::StateApiCall>,
    took: Duration,
    error: Option<String>,
) -> Row {
    let subject = Subject {
        policy: policy.to_owned(),
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
    };
    state_api_row(
        (subject, container, node),
        StateApiOperation::Write,
        call,
        took,
        error,
    )
}

/// A failover that ended (Completed or Failed). Stage times count from the
/// failure: the failed pod's disruption when it was seen, else the
/// detection.
pub fn failover_row(policy: &str, namespace: &str, strategy: &str, record: &FailoverRecord) -> Row {
    let failed_at = record
        .failed_at
        .as_ref()
        .map_or(record.started_at.0, |t| t.0);
    let since_failure =
        |at: jiff::Timestamp| Duration::try_from(at.duration_since(failed_at)).unwrap_or_default();
    let restored = record.restored_at.as_ref().map(|t| since_failure(t.0));
    Row::Failover(FailoverRow {
        started_at: system_time(record.started_at.0),
        subject: Subject {
            policy: policy.to_owned(),
            namespace: namespace.to_owned(),
            pod: record.pod.clone(),
        },
        pod_uid: record.pod_uid.clone(),
        strategy: strategy.to_owned(),
        trigger: format!("{:?}", record.reason),
        evidence: record.evidence.clone(),
        from_node: record.from_node.clone(),
        to_node: record.to_node.clone(),
        replacement_pod: record.replacement_pod.clone(),
        archive: record.archive.clone().filter(|_| !record.cold_start),
        detected: since_failure(record.started_at.0),
        fenced: record.fenced_at.as_ref().map(|t| since_failure(t.0)),
        restored,
        downtime: restored.filter(|_| record.stage == FailoverStage::Completed),
        checkpoint_age: record
            .checkpoint_age
            .as_deref()
            .and_then(|age| ferry_api::parse_duration("checkpointAge", age).ok()),
        warm: record.stage == FailoverStage::Completed && !record.cold_start,
        outcome: format!("{:?}", record.stage),
        message: Some(record.message.clone()).filter(|m| !m.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{CheckpointRecord, FailureTrigger};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn job() -> Job {
        Job {
            policy: kube::runtime::reflector::ObjectRef::new("counter").within("demo"),
            target: crate::schedule::Target {
                pod: "counter-0".into(),
                pod_uid: "uid-0".into(),
                node: "ferry-a".into(),
                container: "app".into(),
                restart_count: 0,
                healthy: true,
                owner: String::new(),
            },
            namespace: "demo".into(),
            endpoint: "10.0.0.1:50051".into(),
            peers: vec![],
            retention: pb::Retention::default(),
            timeout: Duration::from_secs(60),
            due: at(0),
            interval: Duration::from_secs(10),
            state_api: None,
            content_hash: ferry_proto::v1::ContentHash::Blake3,
        }
    }

    #[test]
    fn a_checkpoint_and_each_replication_become_rows() {
        let done = Done {
            record: CheckpointRecord {
                pod: "counter-0".into(),
                container: "app".into(),
                pod_uid: "uid-0".into(),
                restart_count: 0,
                owner: String::new(),
                node: "ferry-a".into(),
                archive: "ab".repeat(32),
                size_bytes: 64 << 20,
                duration_ms: 2400,
                taken_at: Time(at(1)),
                replicas: vec!["ferry-b".into()],
            },
            replica_errors: vec![("ferry-c".into(), "unreachable".into())],
            replications: vec![
                pb::ReplicaOutcome {
                    node_name: "ferry-b".into(),
                    ok: true,
                    bytes_sent: 64 << 20,
                    millis: 300,
                    ..Default::default()
                },
                pb::ReplicaOutcome {
                    node_name: "ferry-c".into(),
                    ok: false,
                    error: "unreachable".into(),
                    ..Default::default()
                },
            ],
            criu_stats: Some(pb::CriuDumpStats {
                frozen_micros: 1_900_000,
                pages_written: 16_384,
                ..Default::default()
            }),
            state_api_call: None,
        };
        let rows = checkpoint_rows(
            &job(),
            "Checkpoint",
            &Ok(done),
            Duration::from_secs(3),
            SystemTime::now(),
        );
        let [
            Row::Checkpoint(checkpoint),
            Row::Replication(ok),
            Row::Replication(failed),
        ] = &rows[..]
        else {
            panic!("{rows:?}")
        };
        assert_eq!(checkpoint.total, Duration::from_millis(2400));
        assert_eq!(checkpoint.size_bytes, Some(64 << 20));
        assert_eq!(checkpoint.criu.unwrap().frozen, Duration::from_millis(1900));
        assert_eq!(checkpoint.subject.policy, "counter");
        assert_eq!(
            (ok.target_node.as_str(), ok.duration),
            ("ferry-b", Some(Duration::from_millis(300)))
        );
        assert_eq!(failed.error.as_deref(), Some("unreachable"));

        let rows = checkpoint_rows(
            &job(),
            "Checkpoint",
            &Err(Failure::CheckpointFailed("CRIU failed".into())),
            Duration::from_secs(3),
            SystemTime::now(),
        );
        let [Row::Checkpoint(failed)] = &rows[..] else {
            panic!("{rows:?}")
        };
        assert_eq!(failed.error.as_deref(), Some("CRIU failed"));
        assert_eq!(failed.total, Duration::from_secs(3));
    }

    #[test]
    fn a_failovers_stages_count_from_the_failure() {
        let record = FailoverRecord {
            reason: FailureTrigger::NodeLoss,
            pod: "counter-0".into(),
            pod_uid: "uid-0".into(),
            owner: "ReplicaSet/counter".into(),
            from_node: "ferry-a".into(),
            to_node: Some("ferry-b".into()),
            stage: FailoverStage::Completed,
            archive: None,
            containers: vec![],
            pod_annotations: Default::default(),
            runtime_class: None,
            replacement_pod: Some("counter-1".into()),
            checkpoint_age: Some("7s".into()),
            cold_start: false,
            started_at: Time(at(2)),
            failed_at: Some(Time(at(0))),
            evidence: vec!["peers lost ferry-a".into()],
            fenced_at: Some(Time(at(3))),
            fence: "self-fenced".into(),
            owner_nudged_at: None,
            fence_requested_at: None,
            restored_at: Some(Time(at(5))),
            message: String::new(),
        };
        let Row::Failover(row) = failover_row("counter", "demo", "Checkpoint", &record) else {
            unreachable!()
        };
        assert_eq!(row.detected, Duration::from_secs(2));
        assert_eq!(row.fenced, Some(Duration::from_secs(3)));
        assert_eq!(row.downtime, Some(Duration::from_secs(5)));
        assert_eq!(row.checkpoint_age, Some(Duration::from_secs(7)));
        assert!(row.warm);
        assert_eq!(
            (row.trigger.as_str(), row.outcome.as_str()),
            ("NodeLoss", "Completed")
        );
        assert_eq!(row.message, None);

        let cold = FailoverRecord {
            cold_start: true,
            ..record.clone()
        };
        let Row::Failover(row) = failover_row("counter", "demo", "Checkpoint", &cold) else {
            unreachable!()
        };
        assert!(!row.warm);
        let failed = FailoverRecord {
            stage: FailoverStage::Failed,
            restored_at: None,
            message: "no standby".into(),
            ..record
        };
        let Row::Failover(row) = failover_row("counter", "demo", "Checkpoint", &failed) else {
            unreachable!()
        };
        assert_eq!(
            (row.downtime, row.message.as_deref()),
            (None, Some("no standby"))
        );
    }
}
