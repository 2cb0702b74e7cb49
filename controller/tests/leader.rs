//! Leader election against a real kube-apiserver: the Lease semantics
//! (resourceVersion conflicts, timestamps) are the API server's, so a mock
//! would only test our assumptions about it.
//!
//! Timing assertions are orderings with generous bounds: "not before the
//! Lease can have expired" and "well within a bound", never exact times.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::time::Duration;

use ferry_controller::leader::{LeaderElection, LeaderElectionConfig, Leadership, Lost};
use ferry_testenv::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const NAMESPACE: &str = "ferry-leader-tests";
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(250);

async fn client() -> Client {
    let plane = ControlPlane::shared().await.expect("control plane");
    let client = plane.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(err) => panic!("creating namespace {NAMESPACE}: {err}"),
    }
    client
}

fn candidate(client: &Client, lease: &str, identity: &str) -> LeaderElection {
    LeaderElection::new(
        client.clone(),
        LeaderElectionConfig {
            lease_duration: LEASE,
            renew_interval: RENEW,
            retry_interval: RETRY,
            ..LeaderElectionConfig::new(NAMESPACE, lease, identity)
        },
    )
    .expect("valid config")
}

async fn acquire_now(election: &LeaderElection) -> Leadership {
    timeout(Duration::from_secs(10), election.acquire())
        .await
        .expect("a free Lease is acquired at once")
        .expect("acquire")
}

/// Starts waiting for the Lease in a task of its own.
fn wait_for_leadership(election: LeaderElection) -> JoinHandle<Leadership> {
    tokio::spawn(async move { election.acquire().await.expect("acquire") })
}

async fn lease(client: &Client, name: &str) -> Lease {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    leases.get(name).await.expect("read Lease")
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

#[tokio::test]
async fn second_candidate_waits_while_the_first_renews() {
    let client = client().await;
    let name = "waits-while-renewed";
    let first = acquire_now(&candidate(&client, name, "first")).await;
    let stored = lease(&client, name).await;
    assert_eq!(holder(&stored), Some("first"));
    assert_eq!(
        stored.spec.as_ref().unwrap().lease_duration_seconds,
        Some(3)
    );
    let renewed_at_start = stored.spec.as_ref().unwrap().renew_time.clone();

    let second = wait_for_leadership(candidate(&client, name, "second"));
    // Twice the lease duration: had the first stopped renewing, the second
    // would have taken over by now.
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        !second.is_finished(),
        "the second candidate took a Lease the first kept renewing"
    );
    assert!(first.is_leader());
    let stored = lease(&client, name).await;
    assert_eq!(holder(&stored), Some("first"));
    assert!(
        stored.spec.as_ref().unwrap().renew_time > renewed_at_start,
        "the leader renews"
    );
    assert_eq!(transitions(&stored), 0);

    second.abort();
    first.release().await.expect("release");
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let client = client().await;
    let name = "release-hands-over";
    let first = acquire_now(&candidate(&client, name, "first")).await;
    let before = transitions(&lease(&client, name).await);
    let second = wait_for_leadership(candidate(&client, name, "second"));
    tokio::time::sleep(RETRY * 4).await;
    assert!(!second.is_finished());

    let released = Instant::now();
    first.release().await.expect("release");
    let second = timeout(Duration::from_secs(10), second)
        .await
        .expect("the second takes over after the release")
        .expect("task");
    // Well before the Lease could have expired: the release did it.
    assert!(
        released.elapsed() < LEASE,
        "took {:?} after the release",
        released.elapsed()
    );
    let stored = lease(&client, name).await;
    assert_eq!(holder(&stored), Some("second"));
    assert!(transitions(&stored) > before);
    assert!(second.is_leader());
    second.release().await.expect("release");
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_expires() {
    let client = client().await;
    let name = "crashed-leader";
    let first = acquire_now(&candidate(&client, name, "first")).await;
    let before = lease(&client, name).await;
    let second = wait_for_leadership(candidate(&client, name, "second"));
    tokio::time::sleep(RETRY * 4).await;

    // Dropping stops the renewals without releasing: a crash, as far as the
    // Lease can tell.
    let crashed = Instant::now();
    drop(first);
    let second = timeout(LEASE * 5, second)
        .await
        .expect("the second takes over once the Lease expires")
        .expect("task");
    // The last renewal was at most one renew interval before the crash, and
    // the Lease stays valid for its whole duration after it.
    assert!(
        crashed.elapsed() >= LEASE - RENEW,
        "took over {:?} after the crash, before the Lease could expire",
        crashed.elapsed()
    );
    let stored = lease(&client, name).await;
    assert_eq!(holder(&stored), Some("second"));
    assert_eq!(transitions(&stored), transitions(&before) + 1);
    let spec = stored.spec.as_ref().unwrap();
    assert!(spec.acquire_time > before.spec.as_ref().unwrap().acquire_time);
    second.release().await.expect("release");
}

#[tokio::test]
async fn leadership_is_lost_when_someone_else_takes_the_lease() {
    let client = client().await;
    let name = "taken-over";
    let first = acquire_now(&candidate(&client, name, "first")).await;
    let mut lost_signal = first.subscribe();
    assert!(lost_signal.borrow().is_none());

    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    leases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "intruder"}})),
        )
        .await
        .expect("overwrite the holder");

    let lost = timeout(RENEW * 5, first.lost())
        .await
        .expect("lost() fires within a few renewals");
    assert_eq!(
        lost,
        Lost::TakenOver {
            holder: Some("intruder".into())
        }
    );
    assert!(!first.is_leader());
    assert!(lost_signal.borrow_and_update().is_some());
    // The loser must not write: the intruder keeps the Lease.
    tokio::time::sleep(RENEW * 2).await;
    assert_eq!(holder(&lease(&client, name).await), Some("intruder"));
    // Nothing to release any more, and releasing must not clear the
    // intruder's hold.
    first.release().await.expect("release is a no-op");
    assert_eq!(holder(&lease(&client, name).await), Some("intruder"));
}

#[tokio::test]
async fn racing_candidates_elect_exactly_one() {
    let client = client().await;
    let name = "race";
    let candidates: Vec<_> = (0..4)
        .map(|i| wait_for_leadership(candidate(&client, name, &format!("racer-{i}"))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while candidates.iter().all(|c| !c.is_finished()) {
        assert!(Instant::now() < deadline, "nobody acquired a free Lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the Lease: a second leader would have shown up by now.
    tokio::time::sleep(LEASE + RENEW).await;
    let (done, waiting): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|c| c.is_finished());
    assert_eq!(done.len(), 1, "exactly one leader");
    for c in waiting {
        c.abort();
    }
    let leader = done.into_iter().next().unwrap().await.expect("task");
    assert_eq!(holder(&lease(&client, name).await), Some(leader.identity()));
    assert_eq!(transitions(&lease(&client, name).await), 0);
    leader.release().await.expect("release");
}

#[tokio::test]
async fn bad_timing_is_refused_naming_the_lease() {
    let client = client().await;
    let err = LeaderElection::new(
        client,
        LeaderElectionConfig {
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_secs(3),
            ..LeaderElectionConfig::new(NAMESPACE, "bad", "me")
        },
    )
    .expect_err("renewing as slowly as the Lease expires is refused");
    let message = err.to_string();
    assert!(message.contains("ferry-leader-tests/bad"), "{message}");
    assert!(message.contains("renew_interval"), "{message}");
}
