//! What the agent adds to a checkpoint after the runtime wrote it (issue 15,
//! item 4): storing the kubelet's archive file, against the raw work in the
//! same run.
//!
//! `cargo bench -p ferry-agent --bench store` prints a Markdown table per
//! size: a plain copy with one fsync (what `cp` and `sync` do), each hash
//! alone over the file in the page cache, and the store's import: adopted
//! (the runtime's fresh, unsynced file linked into the store on the same
//! mount: read, hash, fsync, metadata) and copied (another mount: read,
//! hash, write, fsync, metadata), named by BLAKE3 (what the agent does now)
//! and by sha256 (before, and beside agents that know only sha256),
//! plaintext and encrypted.
//! `FERRY_BENCH_SIZES` (MiB, default `64,256,1024`), `FERRY_BENCH_RUNS`
//! (default 3) and `FERRY_BENCH_DIR` (default /var/tmp; a real disk, not a
//! tmpfs) change the setup. Times are medians, MiB/s of the archive.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures, the table is the output

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_agent::content_hash::ContentHash;
use ferry_agent::encryption::ArchiveKey;
use ferry_agent::store::{ArchiveMeta, Store};
use sha2::{Digest, Sha256};
use shared::{env_number, median, settle};

const MIB: u64 = 1 << 20;
const BUFFER: usize = 1 << 20;

fn copy_and_fsync(source: &Path, target: &Path) {
    let mut input = File::open(source).unwrap();
    let mut output = File::create(target).unwrap();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = input.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        output.write_all(&buffer[..n]).unwrap();
    }
    output.sync_all().unwrap();
}

fn hash_with(source: &Path, mut update: impl FnMut(&[u8])) {
    let mut input = File::open(source).unwrap();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = input.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        update(&buffer[..n]);
    }
}

fn meta(seed: u64) -> ArchiveMeta {
    ArchiveMeta {
        policy: "default/counter".into(),
        namespace: "default".into(),
        pod: "counter-0".into(),
        pod_uid: format!("00000000-0000-4000-8000-{seed:012}"),
        container: "app".into(),
        source_node: "node-a".into(),
        taken_at_millis: 1_700_000_000_000 + seed as i64,
        ..ArchiveMeta::default()
    }
}

/// Imports `source` into a fresh store under `dir`; the store goes after.
fn import(
    dir: &Path,
    source: &Path,
    key: Option<ArchiveKey>,
    hash: ContentHash,
    seed: u64,
) -> Duration {
    let root = dir.join(format!("store-{seed}"));
    let store = Store::open_with(&root, u64::MAX, key).unwrap();
    let started = Instant::now();
    store.import_file(source, meta(seed), hash).unwrap();
    let elapsed = started.elapsed();
    std::fs::remove_dir_all(&root).unwrap();
    elapsed
}

fn timed(run: impl FnOnce()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
}

struct Row {
    what: &'static str,
    millis: Vec<f64>,
}

fn main() {
    let base =
        PathBuf::from(std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let dir = tempfile::tempdir_in(&base).unwrap();
    let runs = env_number("FERRY_BENCH_RUNS", 3).max(1);
    let key = ArchiveKey::from_bytes(&[7u8; 32]);
    println!(
        "# Storing a checkpoint archive\n\n`cargo bench -p ferry-agent --bench store`, {runs} runs per cell, medians; files on {} ({}). Before each step the bench syncs and waits for the disk to write back the step before: this machine's virtual disk takes about a GiB at once, then writes at ~250 MB/s, so at 1 GiB the copy and the import vary up to 2× from run to run; compare them within a table.\n",
        base.display(),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name\t: "))
            .unwrap_or("?")
    );
    for size in shared::bench_sizes() {
        let source = dir.path().join("checkpoint.tar");
        // As the kubelet leaves its checkpoint: on disk and in the page cache.
        common::write_pseudo_random(&source, size, size);
        File::open(&source).unwrap().sync_all().unwrap();
        // A second name keeps the store from adopting the source: it copies,
        // as it does from another mount.
        let alias = dir.path().join("checkpoint.alias");
        std::fs::hard_link(&source, &alias).unwrap();
        // Written afresh before each adoption, as the runtime leaves it:
        // in the page cache, not yet on disk.
        let fresh = dir.path().join("fresh.tar");
        let copy = dir.path().join("copy");
        let steps: [(&str, &dyn Fn(u64) -> Duration); 7] = [
            ("copy + fsync (baseline: cp; sync)", &|_| {
                let took = timed(|| copy_and_fsync(&source, &copy));
                std::fs::remove_file(&copy).unwrap();
                took
            }),
            ("sha256 alone (page cache)", &|_| {
                timed(|| {
                    let mut hasher = Sha256::new();
                    hash_with(&source, |b| hasher.update(b));
                    std::hint::black_box(hasher.finalize());
                })
            }),
            ("blake3 alone, one thread (page cache)", &|_| {
                timed(|| {
                    let mut hasher = blake3::Hasher::new();
                    hash_with(&source, |b| {
                        hasher.update(b);
                    });
                    std::hint::black_box(hasher.finalize());
                })
            }),
            (
                "ferry import, adopted (same mount; the runtime's file unsynced): read, blake3, fsync, metadata",
                &|round| {
                    common::write_pseudo_random(&fresh, size, size);
                    let took = import(dir.path(), &fresh, None, ContentHash::Blake3, round);
                    std::fs::remove_file(&fresh).unwrap();
                    took
                },
            ),
            (
                "ferry import, copied (another mount): read, blake3, write, fsync, metadata",
                &|round| import(dir.path(), &source, None, ContentHash::Blake3, round),
            ),
            (
                "ferry import, copied, named by sha256 (agents before BLAKE3)",
                &|round| import(dir.path(), &source, None, ContentHash::Sha256, round),
            ),
            (
                "ferry import, encrypted at rest (AES-256-GCM; always copied)",
                &|round| {
                    import(
                        dir.path(),
                        &source,
                        Some(key.clone()),
                        ContentHash::Blake3,
                        round,
                    )
                },
            ),
        ];
        let mut rows: Vec<Row> = steps
            .iter()
            .map(|(what, _)| Row {
                what,
                millis: vec![],
            })
            .collect();
        for round in 0..runs {
            for ((_, step), row) in steps.iter().zip(&mut rows) {
                settle(size);
                row.millis.push(step(round).as_secs_f64() * 1000.0);
            }
        }
        std::fs::remove_file(&source).unwrap();
        std::fs::remove_file(&alias).unwrap();
        let baseline = median(&rows[0].millis);
        println!("## {} MiB\n", size / MIB);
        println!("| step | ms | MiB/s | × the copy |\n|---|---|---|---|");
        for row in &rows {
            let ms = median(&row.millis);
            println!(
                "| {} | {ms:.0} | {:.0} | {:.2} |",
                row.what,
                size as f64 / MIB as f64 / (ms / 1000.0),
                ms / baseline
            );
        }
        println!();
    }
}
