//! Scale benchmark (issue 4): 200 CheckpointPolicies × 5 pods (200
//! Deployments of 5 replicas, one policy selecting each, `interval: 10s`,
//! one standby) on 50 kwok nodes with 50 real agent processes (mutual TLS,
//! the `synthetic` runtime writing 4 KiB archives) and the real controller,
//! on a real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok).
//!
//! The binaries it spawns must be release builds next to the bench
//! executable; build them first:
//!
//! ```sh
//! cargo build --release -p ferry-agent -p ferry-controller
//! cargo bench -p ferry-controller --bench scale
//! ```
//!
//! It measures three phases of the same installation, so the reader sees
//! what scale costs: every policy suspended (idle), one tenth of them
//! active, then all of them. For each it prints the controller's peak RSS
//! (VmHWM from /proc/<pid>/status, monotonic, so the phases run in rising
//! load), CPU seconds (utime + stime from /proc/<pid>/stat), checkpoints
//! taken, status writes and reconciliations (from /metrics), and the p50,
//! p99 and max lateness of checkpoints against their schedule (exact, from
//! the `lateness_ms` field of the controller's JSON "checkpoint taken" log;
//! the coarse `ferry_controller_checkpoint_lateness_seconds` histogram's p99
//! bucket is shown next to it), then whether the targets are met: peak RSS
//! <= 256 MiB and p99 lateness <= 1 s. It fails only when the setup breaks,
//! never on a number.
//!
//! `FERRY_BENCH_SECONDS` (default 300) is the full-load phase,
//! `FERRY_BENCH_BASELINE_SECONDS` (default a fifth of it, at least 10) each
//! of the two phases before; `FERRY_BENCH_POLICIES` (200),
//! `FERRY_BENCH_PODS` (5 per policy), `FERRY_BENCH_NODES` (50) and
//! `FERRY_BENCH_ARCHIVE_BYTES` (4096) scale the setup. `FERRY_TESTENV_KEEP=1`
//! keeps the logs (the controller's is `ferry/controller.log` in the
//! control plane's directory).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures, the table is the output

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use common::{Installation, Setup, eventually, install_with};
use ferry_api::{CheckpointPolicy, Phase};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

const NAMESPACE: &str = "bench";
const TARGET_RSS_MIB: f64 = 256.0;
const TARGET_P99_SECONDS: f64 = 1.0;
/// API calls the bench makes at once while setting up.
const PARALLEL_CALLS: usize = 16;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is no number"))
        })
        .unwrap_or(default)
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

/// What is read at the start and end of a phase.
struct Sample {
    at: Instant,
    cpu_seconds: f64,
    /// Busy and total jiffies of the whole machine.
    machine: (u64, u64),
    peak_rss_kib: u64,
    rss_kib: u64,
    log_offset: u64,
    status_writes: f64,
    reconciliations: f64,
    /// Cumulative (upper bound, count) of the lateness histogram.
    lateness_buckets: Vec<(f64, f64)>,
    /// CPU seconds of every running process, by command name.
    cpu_by_command: BTreeMap<String, f64>,
}

/// One line of the table.
struct Row {
    phase: String,
    containers: u64,
    seconds: f64,
    cpu_seconds: f64,
    machine_busy: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    taken: usize,
    failed: usize,
    warnings: usize,
    status_writes: f64,
    reconciliations: f64,
    /// Exact lateness of each checkpoint taken in the phase, sorted.
    lateness_ms: Vec<u64>,
    /// How long each of those checkpoints waited for a free slot (the
    /// overall and per-node limits), sorted; the rest of its lateness is
    /// the controller noticing it was due.
    queued_ms: Vec<u64>,
    /// Upper bound of the histogram bucket holding the p99, in seconds.
    histogram_p99: Option<f64>,
    /// CPU seconds used in the phase, by command name.
    cpu_by_command: BTreeMap<String, f64>,
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn lateness_buckets(text: &str) -> Vec<(f64, f64)> {
    let prefix = "ferry_controller_checkpoint_lateness_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, rest) = rest.split_once('"')?;
            let count = rest.rsplit_once(' ')?.1.parse().ok()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count))
        })
        .collect()
}

/// CPU seconds (utime + stime) of every process, summed by command name;
/// processes that ended are not counted.
fn cpu_by_command() -> BTreeMap<String, f64> {
    let mut by_command = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return by_command;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some((head, rest)), true) = (stat.rsplit_once(')'), stat.contains('(')) else {
            continue;
        };
        let command = head.split_once('(').map_or("?", |(_, c)| c).to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            *by_command.entry(command).or_default() += (user + system) / 100.0;
        }
    }
    by_command
}

fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

async fn sample(ferry: &Installation) -> Sample {
    let metrics = match reqwest::get(format!("{}/metrics", ferry.controller_http)).await {
        Ok(response) => response.text().await.unwrap(),
        Err(err) => {
            let log = ferry.controller.log_text();
            let last_error = log
                .lines()
                .rev()
                .find(|l| l.contains("\"ERROR\""))
                .unwrap_or("none");
            panic!("the controller stopped answering ({err}); its last error: {last_error}");
        }
    };
    Sample {
        at: Instant::now(),
        cpu_seconds: ferry.controller.cpu_seconds(),
        machine: machine_jiffies(),
        peak_rss_kib: ferry.controller.memory_kib("VmHWM"),
        rss_kib: ferry.controller.memory_kib("VmRSS"),
        log_offset: std::fs::metadata(&ferry.controller.log).unwrap().len(),
        status_writes: sum_metric(&metrics, "ferry_controller_status_writes_total"),
        reconciliations: sum_metric(&metrics, "ferry_controller_reconciliations_total"),
        lateness_buckets: lateness_buckets(&metrics),
        cpu_by_command: cpu_by_command(),
    }
}

/// Runs one phase of `seconds` and measures it.
async fn measure(ferry: &Installation, phase: String, containers: u64, seconds: u64) -> Row {
    println!("phase: {phase} for {seconds}s");
    let start = sample(ferry).await;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let end = sample(ferry).await;

    let mut log = std::fs::File::open(&ferry.controller.log).unwrap();
    log.seek(SeekFrom::Start(start.log_offset)).unwrap();
    let mut bytes = Vec::new();
    log.take(end.log_offset - start.log_offset)
        .read_to_end(&mut bytes)
        .unwrap();
    let (mut lateness_ms, mut queued_ms, mut failed, mut warnings) = (Vec::new(), Vec::new(), 0, 0);
    for line in String::from_utf8_lossy(&bytes).lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        match fields["message"].as_str() {
            Some("checkpoint taken") => {
                let field = |name: &str| {
                    fields[name]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no {name} in {line}"))
                };
                lateness_ms.push(field("lateness_ms"));
                queued_ms.push(field("queued_ms"));
            }
            Some("checkpoint failed") => failed += 1,
            _ => {}
        }
        if matches!(entry["level"].as_str(), Some("WARN" | "ERROR")) {
            warnings += 1;
        }
    }
    lateness_ms.sort_unstable();
    queued_ms.sort_unstable();

    // The histogram's p99 over the phase: the first bucket whose count
    // reaches 99 % of the phase's observations.
    let deltas: Vec<(f64, f64)> = end
        .lateness_buckets
        .iter()
        .map(|&(le, count)| {
            let before = start
                .lateness_buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - before)
        })
        .collect();
    let observed = deltas.last().map_or(0.0, |(_, c)| *c);
    let histogram_p99 = (observed > 0.0)
        .then(|| deltas.iter().find(|(_, c)| *c >= observed * 0.99))
        .flatten()
        .map(|(le, _)| *le);

    let (busy, total) = (
        end.machine.0 - start.machine.0,
        end.machine.1 - start.machine.1,
    );
    Row {
        phase,
        containers,
        seconds: end.at.duration_since(start.at).as_secs_f64(),
        cpu_seconds: end.cpu_seconds - start.cpu_seconds,
        machine_busy: busy as f64 / total.max(1) as f64,
        peak_rss_kib: end.peak_rss_kib,
        rss_kib: end.rss_kib,
        taken: lateness_ms.len(),
        failed,
        warnings,
        status_writes: end.status_writes - start.status_writes,
        reconciliations: end.reconciliations - start.reconciliations,
        lateness_ms,
        queued_ms,
        histogram_p99,
        cpu_by_command: end
            .cpu_by_command
            .iter()
            .map(|(command, seconds)| {
                let before = start.cpu_by_command.get(command).copied().unwrap_or(0.0);
                (command.clone(), seconds - before)
            })
            .collect(),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(value: Option<u64>) -> String {
    value.map_or("–".into(), |v| format!("{v}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| phase | containers | s | controller CPU s (% of a core) | peak RSS MiB | RSS at end MiB | checkpoints taken (/s) | failed | status writes (/s) | reconciliations (/s) | lateness p50 / p99 / max ms | of which queued for a slot p50 / p99 ms | histogram p99 bucket | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let per_s = |v: f64| v / row.seconds;
        println!(
            "| {} | {} | {:.0} | {:.1} ({:.0} %) | {:.1} | {:.1} | {} ({:.1}) | {} | {:.0} ({:.1}) | {:.0} ({:.1}) | {} / {} / {} | {} / {} | {} | {:.0} % |",
            row.phase,
            row.containers,
            row.seconds,
            row.cpu_seconds,
            100.0 * row.cpu_seconds / row.seconds,
            mib(row.peak_rss_kib),
            mib(row.rss_kib),
            row.taken,
            per_s(row.taken as f64),
            row.failed,
            row.status_writes,
            per_s(row.status_writes),
            row.reconciliations,
            per_s(row.reconciliations),
            ms(percentile(&row.lateness_ms, 0.5)),
            ms(percentile(&row.lateness_ms, 0.99)),
            ms(row.lateness_ms.last().copied()),
            ms(percentile(&row.queued_ms, 0.5)),
            ms(percentile(&row.queued_ms, 0.99)),
            row.histogram_p99
                .map_or("–".into(), |le| format!("<= {:.0} ms", le * 1000.0)),
            100.0 * row.machine_busy,
        );
    }
    println!();
    println!("CPU by component, % of one core (each phase):");
    println!();
    let components = [
        ("ferry-controller", &["ferry-controlle"][..]),
        ("ferry-agent (all)", &["ferry-agent"][..]),
        ("kube-apiserver", &["kube-apiserver"][..]),
        ("etcd", &["etcd"][..]),
        ("kwok", &["kwok"][..]),
        (
            "kube-controller-manager + scheduler",
            &["kube-controller", "kube-scheduler"][..],
        ),
    ];
    let header: Vec<&str> = components.iter().map(|(name, _)| *name).collect();
    println!("| phase | {} | everything else |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(components.len()));
    for row in rows {
        let share = |seconds: f64| format!("{:.0}", 100.0 * seconds / row.seconds);
        let mut cells = Vec::new();
        let mut named = 0.0;
        for (_, commands) in &components {
            let seconds: f64 = commands
                .iter()
                .filter_map(|c| row.cpu_by_command.get(*c))
                .sum();
            named += seconds;
            cells.push(share(seconds));
        }
        let all: f64 = row.cpu_by_command.values().sum();
        println!(
            "| {} | {} | {} |",
            row.phase,
            cells.join(" | "),
            share((all - named).max(0.0))
        );
    }
}

fn deployment(app: &str, replicas: u64) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, "ferry-bench": "yes"}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.invalid/counter:1"}],
                    "tolerations": [{"operator": "Exists"}],
                },
            },
        },
    }))
    .unwrap()
}

fn policy(app: &str) -> CheckpointPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": app},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "interval": "10s",
            "standbys": 1,
            // Suspended until its phase starts.
            "suspend": true,
        },
    }))
    .unwrap()
}

async fn set_suspend(ferry: &Installation, names: &[String], suspend: bool) {
    let api: Api<CheckpointPolicy> = Api::namespaced(ferry.client.clone(), NAMESPACE);
    futures::stream::iter(names)
        .for_each_concurrent(PARALLEL_CALLS, |name| {
            let api = api.clone();
            async move {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"suspend": suspend}})),
                )
                .await
                .unwrap();
            }
        })
        .await;
}

async fn run() {
    let policies = env_number("FERRY_BENCH_POLICIES", 200);
    let pods = env_number("FERRY_BENCH_PODS", 5);
    let nodes = env_number("FERRY_BENCH_NODES", 50);
    let seconds = env_number("FERRY_BENCH_SECONDS", 300);
    let baseline_seconds = env_number("FERRY_BENCH_BASELINE_SECONDS", (seconds / 5).max(10));
    let archive_bytes = env_number("FERRY_BENCH_ARCHIVE_BYTES", 4096);
    println!(
        "ferry scale bench: {policies} policies × {pods} pods on {nodes} kwok nodes with {nodes} agents, {archive_bytes} B archives, interval 10s, 1 standby"
    );

    let started = Instant::now();
    let ferry = install_with(&Setup {
        // JSON, so the bench can read each checkpoint's lateness_ms.
        controller_log_format: "json",
        controller_rust_log: "info",
        agent_rust_log: "warn",
        ..Setup::new(usize::try_from(nodes).unwrap(), archive_bytes, &[NAMESPACE])
    })
    .await;
    println!(
        "installation ready in {:.0}s (control plane {:.0}s)",
        started.elapsed().as_secs_f64(),
        ferry.plane.startup_time().as_secs_f64()
    );

    let names: Vec<String> = (0..policies).map(|i| format!("app-{i:04}")).collect();
    let deployments: Api<Deployment> = Api::namespaced(ferry.client.clone(), NAMESPACE);
    let policy_api: Api<CheckpointPolicy> = Api::namespaced(ferry.client.clone(), NAMESPACE);
    futures::stream::iter(&names)
        .for_each_concurrent(PARALLEL_CALLS, |name| {
            let (deployments, policy_api) = (deployments.clone(), policy_api.clone());
            async move {
                deployments
                    .create(&PostParams::default(), &deployment(name, pods))
                    .await
                    .unwrap();
                policy_api
                    .create(&PostParams::default(), &policy(name))
                    .await
                    .unwrap();
            }
        })
        .await;
    let pod_api: Api<Pod> = Api::namespaced(ferry.client.clone(), NAMESPACE);
    let want = policies * pods;
    let setup = Instant::now();
    eventually(
        &format!("{want} running pods"),
        Duration::from_secs(1200),
        || ferry.controller.log_text(),
        || async {
            let running = pod_api
                .list(&ListParams::default().labels("ferry-bench=yes"))
                .await
                .ok()?
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running as u64 >= want).then_some(())
        },
    )
    .await;
    eventually(
        "every policy Suspended in status",
        Duration::from_secs(300),
        || ferry.controller.log_text(),
        || async {
            let list = policy_api.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.phase == Some(Phase::Suspended)
                            && s.observed_generation == p.metadata.generation
                    })
                })
                .then_some(())
        },
    )
    .await;
    println!(
        "{want} pods running and {policies} policies suspended in {:.0}s",
        setup.elapsed().as_secs_f64()
    );
    // Let the pod and policy events of the set-up drain.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut rows = Vec::new();
    rows.push(
        measure(
            &ferry,
            format!("idle: {policies} policies suspended"),
            0,
            baseline_seconds,
        )
        .await,
    );
    // Each phase's row as soon as it is measured: under overload the
    // controller may exit (a lost leader Lease) before the last phase ends.
    print_table(&rows);
    let tenth = (policies / 10).max(1);
    set_suspend(&ferry, &names[..usize::try_from(tenth).unwrap()], false).await;
    rows.push(
        measure(
            &ferry,
            format!("1/10 load: {tenth} policies active"),
            tenth * pods,
            baseline_seconds,
        )
        .await,
    );
    print_table(&rows);
    set_suspend(&ferry, &names[usize::try_from(tenth).unwrap()..], false).await;
    rows.push(
        measure(
            &ferry,
            format!("full load: {policies} policies active"),
            want,
            seconds,
        )
        .await,
    );

    let full = rows.last().unwrap();
    assert!(
        full.taken > 0,
        "no checkpoint was taken under full load: the setup is broken\n{}",
        ferry.logs()
    );
    print_table(&rows);
    let peak_mib = mib(full.peak_rss_kib);
    let p99 = percentile(&full.lateness_ms, 0.99).unwrap_or(0) as f64 / 1000.0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "- controller peak RSS {peak_mib:.1} MiB <= {TARGET_RSS_MIB:.0} MiB: {}",
        verdict(peak_mib <= TARGET_RSS_MIB)
    );
    println!(
        "- p99 checkpoint lateness {p99:.3} s <= {TARGET_P99_SECONDS:.0} s: {}",
        verdict(p99 <= TARGET_P99_SECONDS)
    );
    println!(
        "- failed checkpoints under full load: {}; warnings and errors in the controller log: {}",
        full.failed, full.warnings
    );
}
