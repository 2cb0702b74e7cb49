//! Which archives go: the retention rules of a policy, applied to the
//! archives of one container on every node that holds a copy, and the
//! archives of pods that no longer exist. Pure functions over metadata; the
//! store deletes what they name.

use std::collections::{BTreeMap, HashSet};

use ferry_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::store::ArchiveMeta;

/// Retention rules for one container's archives, as the policy stated them
/// when the checkpoint was taken. Stored with each archive, so a standby
/// applies them without asking anyone.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Newest archives kept; at least 1.
    pub keep: u32,
    /// Upper bound on the bytes kept; `None` for no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Archives older than this go; `None` for no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
}

impl Retention {
    /// The rules a request states; zero means "no bound", and at least the
    /// newest archive is always kept.
    pub fn from_proto(rules: &pb::Retention) -> Self {
        Self {
            keep: rules.keep.max(1),
            max_bytes: (rules.max_bytes > 0).then_some(rules.max_bytes),
            max_age_seconds: (rules.max_age_seconds > 0).then_some(rules.max_age_seconds),
        }
    }

    pub fn to_proto(self) -> pb::Retention {
        pb::Retention {
            keep: self.keep,
            max_bytes: self.max_bytes.unwrap_or(0),
            max_age_seconds: self.max_age_seconds.unwrap_or(0),
        }
    }
}

/// Which archives of one retention group to delete. The newest archive is
/// always kept: it is the one a failover needs.
pub fn victims(group: &[ArchiveMeta], rules: Retention, now_millis: i64) -> Vec<String> {
    let mut newest_first: Vec<&ArchiveMeta> = group.iter().collect();
    newest_first.sort_by(|a, b| {
        b.taken_at_millis
            .cmp(&a.taken_at_millis)
            .then_with(|| a.id.cmp(&b.id))
    });
    let keep = usize::try_from(rules.keep.max(1)).unwrap_or(usize::MAX);
    let max_age_millis = rules
        .max_age_seconds
        .map(|secs| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX));
    let mut kept_bytes = 0u64;
    let mut victims = Vec::new();
    for (index, archive) in newest_first.iter().enumerate() {
        if index == 0 {
            kept_bytes = archive.size_bytes;
            continue;
        }
        let too_many = index >= keep;
        let too_big = rules
            .max_bytes
            .is_some_and(|max| kept_bytes.saturating_add(archive.size_bytes) > max);
        let too_old = max_age_millis
            .is_some_and(|age| now_millis.saturating_sub(archive.taken_at_millis) > age);
        if too_many || too_big || too_old {
            victims.push(archive.id.clone());
        } else {
            kept_bytes += archive.size_bytes;
        }
    }
    victims
}

/// What a periodic sweep deletes: in every container's group, what the
/// rules of its newest archive reject (a group without rules is left
/// alone). Catches what no new checkpoint triggers: a `maxAge` running out,
/// and groups whose replicas arrived before the rules travelled with them.
pub fn sweep_victims(archives: &[ArchiveMeta], now_millis: i64) -> Vec<String> {
    let mut groups: BTreeMap<_, Vec<ArchiveMeta>> = BTreeMap::new();
    for archive in archives {
        groups
            .entry(archive.retention_group())
            .or_default()
            .push(archive.clone());
    }
    groups
        .values()
        .flat_map(|group| {
            let newest = group
                .iter()
                .max_by(|a, b| {
                    a.taken_at_millis
                        .cmp(&b.taken_at_millis)
                        .then_with(|| b.id.cmp(&a.id))
                })
                .and_then(|a| a.retention);
            newest.map_or_else(Vec::new, |rules| victims(group, rules, now_millis))
        })
        .collect()
}

/// Archives of `policy` whose pod is not among `live_pod_uids` and that
/// were taken before `taken_before_millis`: the pods are gone and their
/// archives would otherwise stay forever (retention counts per pod).
pub fn gone_pod_victims(
    archives: &[ArchiveMeta],
    policy: &str,
    live_pod_uids: &HashSet<&str>,
    taken_before_millis: i64,
) -> Vec<String> {
    archives
        .iter()
        .filter(|a| {
            a.policy == policy
                && !live_pod_uids.contains(a.pod_uid.as_str())
                && a.taken_at_millis < taken_before_millis
        })
        .map(|a| a.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id_seed: u8, taken_at_millis: i64, size_bytes: u64) -> ArchiveMeta {
        ArchiveMeta {
            id: hex::encode([id_seed; 32]),
            policy: "default/counter".into(),
            namespace: "default".into(),
            pod: "counter-0".into(),
            pod_uid: "uid-0".into(),
            container: "app".into(),
            taken_at_millis,
            size_bytes,
            ..ArchiveMeta::default()
        }
    }

    fn rules(keep: u32, max_bytes: Option<u64>, max_age_seconds: Option<u64>) -> Retention {
        Retention {
            keep,
            max_bytes,
            max_age_seconds,
        }
    }

    fn id(seed: u8) -> String {
        hex::encode([seed; 32])
    }

    #[test]
    fn retention_keeps_the_newest_n() {
        let archives = [meta(1, 1000, 10), meta(2, 3000, 10), meta(3, 2000, 10)];
        assert_eq!(victims(&archives, rules(2, None, None), 4000), vec![id(1)]);
    }

    #[test]
    fn retention_bounds_bytes_but_always_keeps_the_newest() {
        let archives = [meta(1, 1000, 60), meta(2, 2000, 60), meta(3, 3000, 200)];
        let mut victims = victims(&archives, rules(10, Some(100), None), 4000);
        victims.sort();
        assert_eq!(victims, vec![id(1), id(2)]);
    }

    #[test]
    fn retention_drops_old_archives_but_not_the_newest() {
        let archives = [meta(1, 0, 1), meta(2, 10_000, 1)];
        assert_eq!(
            victims(&archives, rules(10, None, Some(5)), 100_000),
            vec![id(1)]
        );
    }

    #[test]
    fn a_keep_of_zero_still_keeps_the_newest() {
        let archives = [meta(1, 1000, 1), meta(2, 2000, 1)];
        assert_eq!(victims(&archives, rules(0, None, None), 3000), vec![id(1)]);
    }

    #[test]
    fn a_sweep_applies_each_groups_newest_rules() {
        let with = |mut m: ArchiveMeta, keep| {
            m.retention = Some(rules(keep, None, None));
            m
        };
        let mut other_pod = meta(5, 1000, 1);
        other_pod.pod = "counter-1".into();
        let archives = [
            with(meta(1, 1000, 1), 5),
            with(meta(2, 2000, 1), 5),
            // The newest says keep 2: the oldest of three goes.
            with(meta(3, 3000, 1), 2),
            // A group without rules stays as it is.
            other_pod.clone(),
            {
                let mut m = other_pod;
                m.id = id(6);
                m.taken_at_millis = 500;
                m
            },
        ];
        assert_eq!(sweep_victims(&archives, 4000), vec![id(1)]);
    }

    #[test]
    fn a_sweep_lets_max_age_run_out_without_a_new_checkpoint() {
        let mut old = meta(1, 0, 1);
        let mut newest = meta(2, 10_000, 1);
        for m in [&mut old, &mut newest] {
            m.retention = Some(rules(10, None, Some(60)));
        }
        let archives = [old, newest];
        assert!(sweep_victims(&archives, 60_000).is_empty());
        assert_eq!(sweep_victims(&archives, 60_001), vec![id(1)]);
    }

    #[test]
    fn gone_pods_lose_their_archives_once_old_enough() {
        let mut gone = meta(1, 1000, 1);
        gone.pod_uid = "gone".into();
        let mut gone_recent = meta(2, 9000, 1);
        gone_recent.pod_uid = "gone".into();
        let live = meta(3, 1000, 1);
        let mut other_policy = meta(4, 1000, 1);
        other_policy.policy = "default/other".into();
        other_policy.pod_uid = "gone".into();
        let archives = [gone, gone_recent, live, other_policy];
        let live_uids = HashSet::from(["uid-0"]);
        assert_eq!(
            gone_pod_victims(&archives, "default/counter", &live_uids, 5000),
            vec![id(1)]
        );
    }
}
