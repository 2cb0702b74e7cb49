//! Checkpoint/restore benchmark (issue 5): the test-app with a ballast of
//! 16, 64, 256 and 1024 MiB in a runc container on node A (a network
//! namespace with its agent), checkpointed with CRIU, replicated over mutual
//! TLS to node B and restored there — side by side, in the same run, with
//! the two things a user could do instead on node B: a cold restart (the
//! state is lost: the counter starts again) and pulling the state through
//! the application's own API (GET /state on A, a fresh instance on B, PUT
//! /state into it).
//!
//! ```sh
//! cargo build --release -p ferry-agent
//! cargo bench -p ferry-agent --bench checkpoint_restore
//! ```
//!
//! Needs root (hack/criu.sh, runc, network namespaces). Prints a Markdown
//! table, writes it to docs/bench-cr.md and plots it to docs/bench-cr.png
//! (gnuplot from Debian, installed when missing). `FERRY_BENCH_BALLASTS`
//! (comma-separated MiB, default 16,64,256,1024) changes the sizes. It
//! fails only when checkpoint/restore breaks, never on a number.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures, the table is the output

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)] // this bench only settles the disk and reads its sizes
mod shared;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pki;
use common::nodes::{Node, container};
use ferry_proto::v1 as pb;
use ferry_testenv::netns::{criu, repo, test_app_bundle};

/// CRIU's statistics of the dump that made a stored archive.
fn archive_stats(data_dir: &Path, id: &str) -> Option<ferry_agent::image::CriuDumpStats> {
    let path = data_dir.join("archives").join(format!("{id}.tar"));
    ferry_agent::image::read_checkpoint_metadata(&path)
        .ok()?
        .dump_stats
}

/// The largest gap between two consecutive counter lines the app logged
/// between `from` and `to`: the pause as the application saw it.
fn largest_gap(log: &Path, from: jiff::Timestamp, to: jiff::Timestamp) -> Option<Duration> {
    let text = std::fs::read_to_string(log).ok()?;
    let times: Vec<jiff::Timestamp> = text
        .lines()
        .filter(|l| l.contains("counter="))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .and_then(|d| Duration::try_from(d).ok())
}

struct Row {
    ballast_mib: u64,
    archive_mib: f64,
    freezing_ms: f64,
    frozen_ms: f64,
    app_pause_ms: f64,
    checkpoint_ms: u64,
    replication_ms: u64,
    /// From the checkpoint request to the replica verified on B.
    to_verified_ms: u64,
    /// The baseline: `runc checkpoint` (a CRIU dump to disk) of the same
    /// container, after ferry's, once the disk wrote back what ferry wrote.
    raw_dump_ms: u64,
    /// The same dump and then its images synced to disk, as ferry syncs
    /// what it stores (on A and on B).
    raw_synced_ms: u64,
    /// Where ferry's checkpoint went, from A's log.
    steps: Steps,
    restore_ms: u64,
    criu_restore_ms: u64,
    restore_serving_ms: u64,
    counter_kept: bool,
    ballast_ok: bool,
    cold_serving_ms: u64,
    cold_counter: u64,
    pull_get_ms: u64,
    pull_put_ms: u64,
    pull_total_ms: u64,
}

/// Times a plain `runc checkpoint` of container `id` on node `a`, with the
/// agent's own arguments (CRIU dumping to a directory: no archive, no
/// store, no replication), then removes what CRIU's network lock left.
/// Returns the dump's time, and its time with the images synced to disk.
async fn raw_dump(a: &Node, criu: &Path, id: &str) -> (Duration, Duration) {
    let images = tempfile::tempdir_in(&a.agent.data_dir).unwrap();
    let started = Instant::now();
    let output = Command::new("runc")
        .arg("--root")
        .arg(a.agent.data_dir.join("runc").join("state"))
        .arg("--criu")
        .arg(criu)
        .args(ferry_agent::runc::checkpoint_args(
            &images.path().join("images"),
            &images.path().join("work"),
            id,
        ))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "runc checkpoint: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Nothing else is dirty after the settle: syncing the file system is
    // syncing the images.
    let synced = Command::new("sync")
        .arg("-f")
        .arg(images.path())
        .status()
        .unwrap();
    assert!(synced.success(), "sync -f: {synced}");
    let with_sync = started.elapsed();
    ferry_agent::runc::remove_criu_network_lock(Path::new(&a.netns.path())).await;
    (elapsed, with_sync)
}

/// Ferry's checkpoint on A step by step: the agent's log lines of it.
#[derive(Default)]
struct Steps {
    /// `runc checkpoint` (CRIU's dump into a directory).
    dump_ms: Option<u64>,
    /// The dump as an archive in the kubelet's layout (a tar).
    archive_ms: Option<u64>,
    /// The store's final sync of its copy.
    sync_ms: Option<u64>,
}

impl Steps {
    fn from_log(log: &str) -> Self {
        let last = |message: &str, field: &str| {
            log.lines()
                .rev()
                .find(|line| line.contains(message))
                .and_then(|line| {
                    let (_, rest) = line.split_once(&format!("{field}="))?;
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
        };
        Self {
            dump_ms: last("runc checkpoint written", "dump_ms"),
            archive_ms: last("runc checkpoint written", "archive_ms"),
            sync_ms: last("archive imported", "sync_ms"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[allow(clippy::too_many_lines)] // one scenario, step by step
async fn measure(pki: &Pki, a: &Node, b: &Node, criu: &Path, ballast_mib: u64) -> Row {
    let mut a_client = pki.controller(&a.agent.endpoint).await;
    let mut b_client = pki.controller(&b.agent.endpoint).await;
    let bundle = format!("b{ballast_mib}");
    let pod = format!("cr-{ballast_mib}");
    a_client
        .run_container(pb::RunContainerRequest {
            container: Some(container(&pod)),
            bundle: bundle.clone(),
        })
        .await
        .unwrap();
    a.netns.wait_serving(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Checkpoint on A, replicated to B, on a disk that wrote back what
    // came before (this virtual disk takes about a GiB at once).
    // The raw dump runs once before ferry's checkpoint and once after, each
    // on a settled disk; the faster is the baseline, so the order of the two
    // (this virtual disk is slower after a few GiB) cannot flatter ferry.
    let id = format!("tier4.{pod}.app");
    shared::settle(ballast_mib << 20);
    let raw_before = raw_dump(a, criu, &id).await;
    shared::settle(ballast_mib << 20);
    let before = jiff::Timestamp::now();
    let requested = Instant::now();
    let taken = common::checkpoint_announced(
        pki,
        &a.agent,
        pb::CheckpointRequest {
            policy: "tier4/bench".into(),
            container: Some(container(&pod)),
            peers: vec![b.agent.peer()],
            timeout_seconds: 300,
            retention: Some(pb::Retention {
                keep: 1,
                max_bytes: 0,
                max_age_seconds: 0,
            }),
            state_api: None,
            content_hash: pb::ContentHash::Blake3.into(),
        },
    )
    .await
    .unwrap()
    .into_inner();
    let to_verified = requested.elapsed();
    let steps = Steps::from_log(&a.agent.log_text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = jiff::Timestamp::now();
    let archive = taken.archive.unwrap();
    let replica = &taken.replicas[0];
    assert!(replica.ok, "replication: {}", replica.error);
    let log = a
        .agent
        .data_dir
        .join("runc")
        .join("logs")
        .join(format!("{id}.log"));
    // The line before the freeze is older than `before`: look back two
    // counter periods so the gap that spans the start is counted.
    let look_back = before
        .checked_sub(jiff::SignedDuration::from_millis(200))
        .unwrap_or(before);
    let app_pause = largest_gap(&log, look_back, after).unwrap_or_default();
    let stats = archive_stats(&a.agent.data_dir, &archive.id).unwrap_or_default();
    // Ferry wrote the archive on A and on B.
    shared::settle(2 * (ballast_mib << 20));
    let raw_after = raw_dump(a, criu, &id).await;
    let (raw, raw_synced) = if raw_before.0 <= raw_after.0 {
        raw_before
    } else {
        raw_after
    };
    eprintln!(
        "raw dump before ferry's checkpoint {:?} (synced {:?}), after {:?} ({:?})",
        raw_before.0, raw_before.1, raw_after.0, raw_after.1
    );

    // The pull-state baseline, step one: read the state from A.
    let started = Instant::now();
    let state = a.netns.get("/state").unwrap();
    let pull_get = started.elapsed();
    let at_failure = state["counter"].as_u64().unwrap();

    // Node A fails; B restores.
    a_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container(&pod)),
        })
        .await
        .unwrap();
    let failed = Instant::now();
    let restored = b_client
        .restore(pb::RestoreRequest {
            archive_id: archive.id.clone(),
            container: Some(container(&pod)),
            bundle: bundle.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let resumed = b.netns.wait_serving(Duration::from_secs(120));
    let restore_serving = failed.elapsed();
    let verified = b.netns.get("/verify").unwrap();
    let counter_kept = resumed["counter"].as_u64().unwrap() > 0
        && resumed["counter"].as_u64().unwrap() <= at_failure + 50;
    b_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container(&pod)),
        })
        .await
        .unwrap();

    // A cold restart on B: serving again, but from zero.
    let cold = format!("cold-{ballast_mib}");
    let started = Instant::now();
    b_client
        .run_container(pb::RunContainerRequest {
            container: Some(container(&cold)),
            bundle: bundle.clone(),
        })
        .await
        .unwrap();
    let fresh = b.netns.wait_serving(Duration::from_secs(120));
    let cold_serving = started.elapsed();
    let cold_counter = fresh["counter"].as_u64().unwrap();

    // Pull-state, step two: the fresh instance gets the state by PUT.
    let started = Instant::now();
    b.netns
        .request("PUT", "/state", Some(&state.to_string()))
        .expect("PUT /state");
    let pull_put = started.elapsed();
    b_client
        .delete_container(pb::DeleteContainerRequest {
            container: Some(container(&cold)),
        })
        .await
        .unwrap();
    // Both stores keep only what the next size needs.
    for client in [&mut a_client, &mut b_client] {
        client
            .delete_archives(pb::DeleteArchivesRequest {
                archive_ids: vec![],
                policy: "tier4/bench".into(),
                gone_pods: None,
            })
            .await
            .unwrap();
    }

    Row {
        ballast_mib,
        archive_mib: archive.size_bytes as f64 / f64::from(1 << 20),
        freezing_ms: stats.freezing_time_us as f64 / 1000.0,
        frozen_ms: stats.frozen_time_us as f64 / 1000.0,
        app_pause_ms: app_pause.as_secs_f64() * 1000.0,
        checkpoint_ms: taken.checkpoint_millis,
        replication_ms: replica.millis,
        to_verified_ms: millis(to_verified),
        raw_dump_ms: millis(raw),
        raw_synced_ms: millis(raw_synced),
        steps,
        restore_ms: restored.restore_millis,
        criu_restore_ms: restored.criu_millis,
        restore_serving_ms: millis(restore_serving),
        counter_kept,
        ballast_ok: verified["ballast_ok"] == true,
        cold_serving_ms: millis(cold_serving),
        cold_counter,
        pull_get_ms: millis(pull_get),
        pull_put_ms: millis(pull_put),
        pull_total_ms: millis(pull_get + cold_serving + pull_put),
    }
}

/// Where ferry's time from the request to the replica verified on B goes.
fn steps_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| ballast MiB | raw dump ms | raw dump synced ms | ferry: dump ms | tar ms | store: read, hash, write, metadata ms | store: final sync ms | replica verified on B after stored ms | requested → verified on B ms |\n|---|---|---|---|---|---|---|---|---|"
    );
    let shown = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    for r in rows {
        let s = &r.steps;
        let runtime = s.dump_ms.zip(s.archive_ms).map(|(d, a)| d + a);
        let store = runtime.map(|rt| {
            r.checkpoint_ms
                .saturating_sub(rt)
                .saturating_sub(s.sync_ms.unwrap_or(0))
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.ballast_mib,
            r.raw_dump_ms,
            r.raw_synced_ms,
            shown(s.dump_ms),
            shown(s.archive_ms),
            shown(store),
            shown(s.sync_ms),
            r.to_verified_ms.saturating_sub(r.checkpoint_ms),
            r.to_verified_ms,
        );
    }
    out
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| ballast MiB | archive MiB | CRIU freezing ms | CRIU frozen ms | app's largest gap between counter lines ms (period 100) | raw `runc checkpoint` ms (then synced) | checkpoint ms | replication A→B ms | checkpoint requested → verified on B ms (× raw; × raw synced) | restore on B ms (CRIU) | failure → serving on B ms | counter continues | ballast verified | cold restart: serving ms, counter | pull-state: GET + fresh start + PUT ms |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {} ({}) | {} | {} | {} ({:.2}×; {:.2}×) | {} ({}) | {} | {} | {} | {}, counter {} (state lost) | {} + {} + {} = {} (counter only; memory lost) |",
            r.ballast_mib,
            r.archive_mib,
            r.freezing_ms,
            r.frozen_ms,
            r.app_pause_ms,
            r.raw_dump_ms,
            r.raw_synced_ms,
            r.checkpoint_ms,
            r.replication_ms,
            r.to_verified_ms,
            r.to_verified_ms as f64 / r.raw_dump_ms.max(1) as f64,
            r.to_verified_ms as f64 / r.raw_synced_ms.max(1) as f64,
            r.restore_ms,
            r.criu_restore_ms,
            r.restore_serving_ms,
            if r.counter_kept { "yes" } else { "NO" },
            if r.ballast_ok { "yes" } else { "NO" },
            r.cold_serving_ms,
            r.cold_counter,
            r.pull_get_ms,
            r.cold_serving_ms,
            r.pull_put_ms,
            r.pull_total_ms,
        );
    }
    out
}

/// docs/bench-cr.png with gnuplot (installed from Debian when missing).
fn plot(rows: &[Row], docs: &Path) -> Result<(), String> {
    if Command::new("gnuplot").arg("--version").output().is_err() {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-q", "gnuplot-nox"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| e.to_string())?;
        if !installed.status.success() {
            return Err(String::from_utf8_lossy(&installed.stderr).into_owned());
        }
    }
    let data = docs.join("bench-cr.dat");
    let mut text = String::from(
        "# ballast_mib frozen_ms checkpoint_ms replication_ms restore_ms failure_to_serving_ms cold_ms pull_ms raw_dump_ms to_verified_ms\n",
    );
    for r in rows {
        let _ = writeln!(
            text,
            "{} {:.1} {} {} {} {} {} {} {} {}",
            r.ballast_mib,
            r.frozen_ms,
            r.checkpoint_ms,
            r.replication_ms,
            r.restore_ms,
            r.restore_serving_ms,
            r.cold_serving_ms,
            r.pull_total_ms,
            r.raw_dump_ms,
            r.to_verified_ms
        );
    }
    std::fs::write(&data, text).map_err(|e| e.to_string())?;
    let script = format!(
        "set terminal pngcairo size 1000,600\n\
         set output '{png}'\n\
         set title 'ferry checkpoint/restore of the test-app by memory ballast (runc + CRIU, two network-namespace nodes)'\n\
         set xlabel 'ballast (MiB)'\n set ylabel 'milliseconds'\n\
         set logscale x 2\n set logscale y 10\n set key left top\n set grid\n\
         plot '{dat}' using 1:2 with linespoints title 'CRIU frozen (app paused)', \
         '' using 1:3 with linespoints title 'checkpoint', \
         '' using 1:4 with linespoints title 'replication A->B', \
         '' using 1:5 with linespoints title 'restore on B', \
         '' using 1:6 with linespoints title 'failure -> serving on B (state kept)', \
         '' using 1:7 with linespoints title 'cold restart (state lost)', \
         '' using 1:8 with linespoints title 'pull-state GET+start+PUT (counter only)', \
         '' using 1:9 with linespoints title 'raw runc checkpoint (CRIU dump, baseline)', \
         '' using 1:10 with linespoints title 'checkpoint requested -> verified on B'\n",
        png = docs.join("bench-cr.png").display(),
        dat = data.display(),
    );
    let script_path = docs.join("bench-cr.gp");
    std::fs::write(&script_path, script).map_err(|e| e.to_string())?;
    let output = Command::new("gnuplot")
        .arg(&script_path)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let ballasts = shared::env_mib_list("FERRY_BENCH_BALLASTS", "16,64,256,1024");
    common::install_crypto_provider();
    let criu = criu();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let bundles = dir.path().join("bundles");
    for mib in &ballasts {
        test_app_bundle(&bundles, &format!("b{mib}"), *mib);
    }
    let pki = Pki::new(dir.path());
    let a = Node::start(&pki, dir.path(), "node-a", &criu, &bundles).await;
    let b = Node::start(&pki, dir.path(), "node-b", &criu, &bundles).await;
    let mut rows = Vec::new();
    for mib in &ballasts {
        println!("ballast {mib} MiB …");
        rows.push(measure(&pki, &a, &b, &criu, *mib).await);
    }
    let machine = format!(
        "Machine: {} vCPUs, {}, kernel {}; CRIU {}; runc from Debian; agents are release builds; archives on {} (ext4).",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l
                .strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
            .unwrap_or_default(),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim(),
        String::from_utf8_lossy(
            &Command::new(&criu)
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or_default(),
        dir.path().display()
    );
    let table = table(&rows);
    let steps = steps_table(&rows);
    println!("\n{machine}\n\n{table}\n{steps}");
    let docs = repo().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let doc = format!(
        "# Checkpoint/restore benchmark\n\n`cargo bench -p ferry-agent --bench checkpoint_restore` (after `cargo build --release -p ferry-agent`), {}.\n\n{machine}\n\n\
         Columns: CRIU freezing = the time CRIU took to freeze the container (with cgroup v1 it polls the freezer in 100 ms steps), CRIU frozen = the time it then kept it frozen (both from its stats-dump); app's largest gap = the largest gap between two counter lines the app logged (every 100 ms) around the checkpoint, so the pause the app saw is this minus up to one period; raw `runc checkpoint` = the baseline: a plain `runc checkpoint --leave-running` (CRIU dumping to a directory) of the same container, timed before and after ferry's checkpoint, each on a disk that wrote back what came before (ferry's checkpoint too starts on a settled disk), the faster of the two, and in brackets the same dump with its images then synced to disk (ferry syncs the archive it stores, on A and on B); checkpoint = the agent's time from the request to the archive stored (dump, archive, import); replication = mutual-TLS transfer to node B, verified there, which starts while the archive is being stored; checkpoint requested → verified on B = the whole Checkpoint call, and its ratio to the raw dump; restore = verify the archive, unpack, `runc restore` (CRIU's part in brackets); failure → serving = from deleting the container on A to the restored app answering on B (no failure detection in this setup). The alternatives: a cold restart on B serves quickly but from counter 0 with its memory rebuilt; pulling the state through the app's API (GET /state on A, a fresh instance on B, PUT /state) carries only what the API exposes.\n\n{table}\n![plot](bench-cr.png)\n\n## Where the time from request to verified replica goes\n\nFrom node A's agent log (`runc checkpoint written`: dump_ms, archive_ms; `archive imported`: sync_ms); the store's part is the rest of the checkpoint time; the last steps run on A and B at once (replication while storing), so B's part is what is left after A stored. Both nodes share one virtual disk and two cores here.\n\n{steps}",
        jiff::Timestamp::now()
    );
    std::fs::write(docs.join("bench-cr.md"), doc).unwrap();
    match plot(&rows, &docs) {
        Ok(()) => println!("wrote docs/bench-cr.md and docs/bench-cr.png"),
        Err(err) => println!("wrote docs/bench-cr.md; no plot: {err}"),
    }
    assert!(
        rows.iter().all(|r| r.counter_kept && r.ballast_ok),
        "a restore lost state"
    );
}
