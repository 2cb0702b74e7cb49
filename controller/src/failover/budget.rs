//! The failover budget: how many failovers run at once, per policy and
//! for the whole controller. When a rack or zone goes, the failed pods are
//! restored a few at a time instead of all at once, so neither the API
//! server nor the standbys are flooded; the rest wait in
//! `status.queuedFailovers` and start as slots free up.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ferry_api::{FailureTrigger, QueuedFailover};

use crate::detect::Failure;

/// Which detected failures may start now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admission {
    pub start: Vec<Failure>,
    pub queued: Vec<QueuedFailover>,
}

/// Splits `failures` into those that start now and those that wait.
/// `running`: failovers this policy has in progress; `policy_limit`: its
/// `spec.failover.maxConcurrent`; `free_overall`: slots left in the
/// controller's budget. Node loss goes first (its pods are down for sure),
/// then in the order given, which is stable (by pod UID).
pub fn admit(
    mut failures: Vec<Failure>,
    running: usize,
    policy_limit: usize,
    free_overall: usize,
) -> Admission {
    failures.sort_by_key(|f| f.reason != FailureTrigger::NodeLoss);
    let slots = policy_limit.saturating_sub(running).min(free_overall);
    let mut admission = Admission::default();
    for (i, failure) in failures.into_iter().enumerate() {
        if i < slots {
            admission.start.push(failure);
            continue;
        }
        let which = if policy_limit.saturating_sub(running) <= free_overall {
            format!(
                "this policy's limit of {policy_limit} concurrent failovers (spec.failover.maxConcurrent)"
            )
        } else {
            "the controller's limit on concurrent failovers (--max-concurrent-failovers)".to_owned()
        };
        admission.queued.push(QueuedFailover {
            pod: failure.pod,
            pod_uid: failure.pod_uid,
            reason: failure.reason,
            message: format!("{}; waiting for a slot: {which}", failure.detail),
        });
    }
    admission
}

/// The controller-wide count of running failovers, per policy, shared by
/// all reconciliations. Taking slots and recording the new count happen
/// under one lock, so two policies reconciled at once cannot both take the
/// last slot.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    running: Mutex<BTreeMap<String, usize>>,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            running: Mutex::default(),
        }
    }

    /// Admits failures of `policy`, which has `running` failovers now.
    /// `known`: running failovers of every policy as their statuses say,
    /// for policies this process has not counted yet (a new leader).
    pub fn admit(
        &self,
        policy: &str,
        failures: Vec<Failure>,
        running: usize,
        policy_limit: usize,
        known: impl Fn() -> BTreeMap<String, usize>,
    ) -> Admission {
        let mut counts = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.is_empty() {
            *counts = known();
        }
        counts.insert(policy.to_owned(), running);
        let total: usize = counts.values().sum();
        let admission = admit(
            failures,
            running,
            policy_limit,
            self.limit.saturating_sub(total),
        );
        counts.insert(policy.to_owned(), running + admission.start.len());
        admission
    }

    /// Drops a deleted policy's count.
    pub fn forget(&self, policy: &str) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(policy);
    }

    /// Failovers running across all policies, as last counted.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(pod: &str, reason: FailureTrigger) -> Failure {
        Failure {
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            node: "a".into(),
            owner: "ReplicaSet/rs".into(),
            reason,
            detail: format!("{pod} failed"),
            evidence: Vec::new(),
            last_contact: None,
            failed_at: None,
        }
    }

    fn many(n: usize) -> Vec<Failure> {
        (0..n)
            .map(|i| failure(&format!("p{i:02}"), FailureTrigger::NodeLoss))
            .collect()
    }

    #[test]
    fn the_policy_limit_paces_a_zone_loss() {
        let admission = admit(many(10), 0, 3, 100);
        assert_eq!(admission.start.len(), 3);
        assert_eq!(admission.queued.len(), 7);
        assert!(admission.queued[0].message.contains("maxConcurrent"));
        // Two still running: one more slot.
        assert_eq!(admit(many(10), 2, 3, 100).start.len(), 1);
        assert!(admit(many(10), 3, 3, 100).start.is_empty());
    }

    #[test]
    fn node_loss_goes_first() {
        let failures = vec![
            failure("a", FailureTrigger::ContainerFailure),
            failure("b", FailureTrigger::NodeLoss),
        ];
        let admission = admit(failures, 0, 1, 10);
        assert_eq!(admission.start[0].pod, "b");
        assert_eq!(admission.queued[0].pod, "a");
    }

    #[test]
    fn the_overall_budget_is_shared_between_policies() {
        let budget = Budget::new(4);
        let first = budget.admit("ns/one", many(3), 0, 5, BTreeMap::new);
        assert_eq!(first.start.len(), 3);
        let second = budget.admit("ns/two", many(3), 0, 5, BTreeMap::new);
        assert_eq!(second.start.len(), 1, "4 overall, 3 taken");
        assert!(
            second.queued[0]
                .message
                .contains("--max-concurrent-failovers")
        );
        // The first policy finished its failovers.
        let again = budget.admit("ns/one", Vec::new(), 0, 5, BTreeMap::new);
        assert!(again.start.is_empty());
        assert_eq!(budget.running(), 1);
        assert_eq!(
            budget
                .admit("ns/two", many(3), 1, 5, BTreeMap::new)
                .start
                .len(),
            3
        );
    }

    #[test]
    fn a_new_leader_counts_what_statuses_say_is_running() {
        let budget = Budget::new(4);
        let known = || BTreeMap::from([("ns/other".to_owned(), 4)]);
        assert!(
            budget
                .admit("ns/one", many(2), 0, 5, known)
                .start
                .is_empty()
        );
    }
}
