//! The numbers of the report, from plain rows: percentiles per policy and
//! size class, warm against cold. Pure.

use std::collections::BTreeMap;
use std::fmt;

/// Size classes, by the archive's size. The bounds sit between the
/// benchmarks' memory sizes (64 MiB, 256 MiB, 1 GiB): an archive is a
/// little larger than the memory it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SizeClass {
    UpTo128Mi,
    UpTo512Mi,
    UpTo2Gi,
    Over2Gi,
    /// No size known (a failed checkpoint, a cold start).
    Unknown,
}

impl SizeClass {
    pub fn of(bytes: Option<i64>) -> Self {
        const MI: i64 = 1 << 20;
        match bytes {
            None => Self::Unknown,
            Some(b) if b <= 128 * MI => Self::UpTo128Mi,
            Some(b) if b <= 512 * MI => Self::UpTo512Mi,
            Some(b) if b <= 2048 * MI => Self::UpTo2Gi,
            Some(_) => Self::Over2Gi,
        }
    }
}

impl fmt::Display for SizeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UpTo128Mi => "≤128Mi",
            Self::UpTo512Mi => "≤512Mi",
            Self::UpTo2Gi => "≤2Gi",
            Self::Over2Gi => ">2Gi",
            Self::Unknown => "-",
        })
    }
}

/// One checkpoint as the report needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub policy: String,
    pub size_bytes: Option<i64>,
    pub total_ms: i64,
    /// CRIU's frozen time: how long the application was paused.
    pub pause_ms: Option<i64>,
    /// The slowest replication of this archive.
    pub replication_ms: Option<i64>,
    pub ok: bool,
}

/// One failover as the report needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failover {
    pub policy: String,
    pub strategy: String,
    pub size_bytes: Option<i64>,
    pub downtime_ms: Option<i64>,
    pub warm: bool,
}

/// p50 and p95 of some milliseconds, and how many there were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

/// Nearest-rank percentiles.
pub fn percentiles(mut values: Vec<i64>) -> Percentiles {
    values.sort_unstable();
    let rank = |p: f64| {
        if values.is_empty() {
            return None;
        }
        let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        Some(values[index])
    };
    Percentiles {
        count: values.len(),
        p50: rank(0.50),
        p95: rank(0.95),
    }
}

/// A line of the checkpoint table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointLine {
    pub policy: String,
    pub size: SizeClass,
    pub failed: usize,
    pub checkpoint: Percentiles,
    pub pause: Percentiles,
    pub replication: Percentiles,
}

pub fn checkpoint_lines(checkpoints: &[Checkpoint]) -> Vec<CheckpointLine> {
    let mut groups: BTreeMap<(String, SizeClass), Vec<&Checkpoint>> = BTreeMap::new();
    for c in checkpoints {
        groups
            .entry((c.policy.clone(), SizeClass::of(c.size_bytes)))
            .or_default()
            .push(c);
    }
    groups
        .into_iter()
        .map(|((policy, size), group)| {
            let ok: Vec<&&Checkpoint> = group.iter().filter(|c| c.ok).collect();
            CheckpointLine {
                policy,
                size,
                failed: group.len() - ok.len(),
                checkpoint: percentiles(ok.iter().map(|c| c.total_ms).collect()),
                pause: percentiles(ok.iter().filter_map(|c| c.pause_ms).collect()),
                replication: percentiles(ok.iter().filter_map(|c| c.replication_ms).collect()),
            }
        })
        .collect()
}

/// How a failover restored: from a checkpoint, from an application's
/// state API, or from nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreKind {
    Checkpoint,
    StateApi,
    Cold,
}

impl fmt::Display for RestoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Checkpoint => "Checkpoint (warm)",
            Self::StateApi => "StateApi (warm)",
            Self::Cold => "cold start",
        })
    }
}

impl RestoreKind {
    pub fn of(failover: &Failover) -> Self {
        match (failover.warm, failover.strategy.as_str()) {
            (false, _) => Self::Cold,
            (true, "StateApi") => Self::StateApi,
            (true, _) => Self::Checkpoint,
        }
    }
}

/// A line of the failover table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverLine {
    pub policy: String,
    pub size: SizeClass,
    pub kind: RestoreKind,
    pub downtime: Percentiles,
}

pub fn failover_lines(failovers: &[Failover]) -> Vec<FailoverLine> {
    let mut groups: BTreeMap<(String, SizeClass, RestoreKind), Vec<i64>> = BTreeMap::new();
    for f in failovers {
        let group = groups
            .entry((
                f.policy.clone(),
                SizeClass::of(f.size_bytes),
                RestoreKind::of(f),
            ))
            .or_default();
        group.extend(f.downtime_ms);
    }
    groups
        .into_iter()
        .map(|((policy, size, kind), downtimes)| FailoverLine {
            policy,
            size,
            kind,
            downtime: percentiles(downtimes),
        })
        .collect()
}

/// Downtime percentiles by restore kind, over every policy.
pub fn downtime_by_kind(failovers: &[Failover]) -> BTreeMap<RestoreKind, Percentiles> {
    let mut by_kind: BTreeMap<RestoreKind, Vec<i64>> = BTreeMap::new();
    for f in failovers {
        by_kind
            .entry(RestoreKind::of(f))
            .or_default()
            .extend(f.downtime_ms);
    }
    by_kind
        .into_iter()
        .map(|(kind, values)| (kind, percentiles(values)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<i64> = (1..=100).collect();
        let p = percentiles(values);
        assert_eq!((p.count, p.p50, p.p95), (100, Some(50), Some(95)));
        let p = percentiles(vec![7]);
        assert_eq!((p.p50, p.p95), (Some(7), Some(7)));
        assert_eq!(percentiles(vec![]).p50, None);
        let p = percentiles(vec![30, 10, 20]);
        assert_eq!((p.p50, p.p95), (Some(20), Some(30)));
    }

    #[test]
    fn checkpoints_group_by_policy_and_size_and_failures_count_apart() {
        let c = |policy: &str, mib: i64, ms: i64, ok: bool| Checkpoint {
            policy: policy.into(),
            size_bytes: Some(mib << 20),
            total_ms: ms,
            pause_ms: Some(ms / 2),
            replication_ms: Some(ms / 4),
            ok,
        };
        let lines = checkpoint_lines(&[
            c("a", 64, 1000, true),
            c("a", 64, 3000, true),
            c("a", 64, 9000, false),
            c("a", 1024, 5000, true),
            c("b", 64, 100, true),
        ]);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            (lines[0].policy.as_str(), lines[0].size),
            ("a", SizeClass::UpTo128Mi)
        );
        assert_eq!(lines[0].failed, 1);
        assert_eq!(lines[0].checkpoint.p95, Some(3000));
        assert_eq!(lines[0].pause.p50, Some(500));
        assert_eq!(lines[1].size, SizeClass::UpTo2Gi);
    }

    #[test]
    fn failovers_split_warm_stateapi_and_cold() {
        let f = |strategy: &str, warm: bool, ms: i64| Failover {
            policy: "p".into(),
            strategy: strategy.into(),
            size_bytes: None,
            downtime_ms: Some(ms),
            warm,
        };
        let by_kind = downtime_by_kind(&[
            f("Checkpoint", true, 4000),
            f("Checkpoint", true, 6000),
            f("Checkpoint", false, 20000),
            f("StateApi", true, 9000),
        ]);
        assert_eq!(by_kind[&RestoreKind::Checkpoint].p95, Some(6000));
        assert_eq!(by_kind[&RestoreKind::Cold].p50, Some(20000));
        assert_eq!(by_kind[&RestoreKind::StateApi].count, 1);
    }
}
