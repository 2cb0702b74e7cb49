//! What the agent's benchmarks share: settings from the environment,
//! medians, and a disk brought to the same state before each timed step.

/// `name` from the environment as a number, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is no number"))
        })
        .unwrap_or(default)
}

/// `name` from the environment as comma-separated MiB, or `default` (the
/// same form): the sizes a bench measures.
pub fn env_mib_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: MiB, comma-separated, not {v:?}"))
        })
        .collect()
}

/// The archive sizes in bytes the store and replication benches measure:
/// `FERRY_BENCH_SIZES` (MiB), 64 MiB, 256 MiB and 1 GiB unless set.
pub fn bench_sizes() -> Vec<u64> {
    env_mib_list("FERRY_BENCH_SIZES", "64,256,1024")
        .into_iter()
        .map(|mib| mib << 20)
        .collect()
}

pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Waits until the disk has written back what the step before wrote
/// (`size` bytes at most). This machine's virtual disk takes about a GiB at
/// once, then writes back at ~250 MB/s: a step right after another would
/// pay for the other's writes.
pub fn settle(size: u64) {
    let status = std::process::Command::new("sync").status().unwrap();
    assert!(status.success(), "sync: {status}");
    std::thread::sleep(std::time::Duration::from_secs_f64(
        size as f64 / (200.0 * (1u64 << 20) as f64),
    ));
}
