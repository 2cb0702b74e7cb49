//! Replication benchmark (issue 3): archives of 64 MiB, 256 MiB and 1 GiB
//! replicated between two real agent processes (mutual TLS, the BLAKE3 id
//! verified by the receiver) against a plain TCP copy of the same bytes
//! over loopback, in the same run;
//! and beside it an archive of the same size named by sha256, as agents
//! named archives before BLAKE3 (and still do beside agents that know only
//! sha256), so the gain of the hash shows within one run.
//!
//! `cargo bench -p ferry-agent --bench replication` prints a Markdown table
//! and whether the targets are met. It fails only when replication breaks,
//! never on speed. `FERRY_BENCH_SIZES` (MiB, comma-separated, default
//! 64,256,1024), `FERRY_BENCH_RUNS` (default 3) and `FERRY_BENCH_DIR` (default /var/tmp; must not be a tmpfs)
//! change the setup; `FERRY_BENCH_ENCRYPT=1` gives every agent its own
//! encryption key (archives encrypted at rest: the sender decrypts, the
//! receiver encrypts; the TCP copy copies the encrypted file). CPU seconds come from /proc/<pid>/stat (user + system):
//! the two agents' for a replication, this process's for the TCP copy.
//!
//! A third comparator, "TLS copy + blake3", does only the work the issue
//! requires and nothing of ferry's: the same bytes over a rustls (ring)
//! mutual-TLS connection with the agents' certificates, 1 MiB buffers, the
//! receiver hashing with BLAKE3, writing and fsyncing (one thread receives and
//! decrypts, another hashes and writes with early writeback, as ferry
//! does). Its gap to ferry is ferry's own overhead (gRPC/HTTP/2, copies,
//! the store); its gap to the TCP copy is the price of TLS and hashing. Its
//! CPU seconds are those of its threads (getrusage RUSAGE_THREAD); compare
//! CPU seconds too: on 2 cores the throughput also depends on how well the
//! threads share them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures, the table is the output

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{AgentProcess, ContentHash, Pki, import_archive_hashed, key_flag, listed, write_key};
use ferry_agent::encryption::{ArchiveKey, encrypted_len};
use ferry_agent::store::ArchiveMeta;
use ferry_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shared::{env_number, median, settle};

const MIB: u64 = 1 << 20;
/// Read and write buffer of the TCP copy, the size of ferry's chunks.
const BUFFER: usize = 1 << 20;
/// How often the TLS copy starts writeback, as the store does.
const WRITEBACK_STEP: u64 = 32 << 20;
const TARGET_RATIO: f64 = 0.8;
const TARGET_RSS_MIB: f64 = 64.0;

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

/// One timed transfer.
#[derive(Debug)]
struct Run {
    elapsed: Duration,
    /// CPU seconds used by the sending and by the receiving side.
    cpu: (f64, f64),
}

/// The runs of one method.
#[derive(Debug, Default)]
struct Samples {
    mib_per_s: Vec<f64>,
    cpu: Vec<(f64, f64)>,
}

impl Samples {
    fn add(&mut self, bytes: u64, run: Run) {
        self.mib_per_s
            .push(bytes as f64 / MIB as f64 / run.elapsed.as_secs_f64());
        self.cpu.push(run.cpu);
    }
    fn median(&self) -> f64 {
        median(&self.mib_per_s)
    }
    fn last(&self) -> f64 {
        self.mib_per_s.last().copied().unwrap_or(0.0)
    }
    fn cell(&self) -> String {
        let min = self.mib_per_s.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.mib_per_s.iter().copied().fold(0.0, f64::max);
        format!("{:.0} ({min:.0}–{max:.0})", self.median())
    }
    /// Median CPU seconds per GiB: `sender + receiver`, or their sum.
    fn cpu_cell(&self, bytes: u64, split: bool) -> String {
        let per_gib = (1u64 << 30) as f64 / bytes as f64;
        let side = |pick: fn(&(f64, f64)) -> f64| {
            median(&self.cpu.iter().map(pick).collect::<Vec<_>>()) * per_gib
        };
        let (sender, receiver) = (side(|c| c.0), side(|c| c.1));
        if split {
            format!("{sender:.2} + {receiver:.2}")
        } else {
            format!("{:.2}", sender + receiver)
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; utime and stime are the
    // 12th and 13th fields after it, in USER_HZ (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The agents and files every size is measured with.
struct Bench {
    pki: Pki,
    a: AgentProcess,
    b: AgentProcess,
    b_zstd: AgentProcess,
    a_sends: ferry_agent::replication::Replicator,
    a_zstd_sends: ferry_agent::replication::Replicator,
    tls: TlsCopy,
    copy: PathBuf,
    tls_target: PathBuf,
    encrypt: bool,
    runs: u64,
}

/// One size's archives on A: named by BLAKE3, and by sha256.
struct Archives {
    size: u64,
    blake3: ArchiveMeta,
    sha256: ArchiveMeta,
}

/// One size's samples, by method.
#[derive(Default)]
struct Measured {
    tcp: Samples,
    secure: Samples,
    suite: String,
    ferry: Samples,
    ferry_sha256: Samples,
    ferry_zstd: Samples,
}

async fn run() {
    common::install_crypto_provider();
    let runs = env_number("FERRY_BENCH_RUNS", 3).max(1);
    let encrypt = std::env::var("FERRY_BENCH_ENCRYPT").is_ok_and(|v| v == "1");
    let base = PathBuf::from(std::env::var("FERRY_BENCH_DIR").unwrap_or("/var/tmp".into()));
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-")
        .tempdir_in(&base)
        .unwrap();
    let fs_type = filesystem_type(dir.path());
    assert_ne!(
        fs_type,
        "tmpfs",
        "{} is a tmpfs: set FERRY_BENCH_DIR to a directory on a disk",
        dir.path().display()
    );

    // The archives go into A's store before A starts; A sends each both
    // plainly and with `--zstd`.
    let started = Instant::now();
    let a_dir = dir.path().join("a");
    let key_files = encrypt.then(|| {
        [
            write_key(dir.path(), "a.key", 0xA1),
            write_key(dir.path(), "b.key", 0xB1),
            write_key(dir.path(), "b2.key", 0xB2),
        ]
    });
    let flags: [Vec<String>; 3] = match &key_files {
        Some(files) => files.clone().map(|f| vec![key_flag(&f)]),
        None => Default::default(),
    };
    let key_a = key_files
        .as_ref()
        .map(|files| ArchiveKey::load(&files[0]).unwrap());
    let archives: Vec<Archives> = shared::bench_sizes()
        .into_iter()
        .zip(0u64..)
        .map(|(size, i)| Archives {
            size,
            blake3: import_archive_hashed(
                &a_dir,
                size,
                42 + 2 * i,
                key_a.clone(),
                ContentHash::Blake3,
            ),
            sha256: import_archive_hashed(
                &a_dir,
                size,
                43 + 2 * i,
                key_a.clone(),
                ContentHash::Sha256,
            ),
        })
        .collect();
    eprintln!(
        "imported {} archives in {:.1} s",
        2 * archives.len(),
        started.elapsed().as_secs_f64()
    );

    let pki = Pki::new(dir.path());
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let a = AgentProcess::start(&pki, "node-a", &a_dir, 0, &refs(&flags[0])).await;
    let b = AgentProcess::start(&pki, "node-b", &dir.path().join("b"), 0, &refs(&flags[1])).await;
    let b_zstd =
        AgentProcess::start(&pki, "node-b2", &dir.path().join("b2"), 0, &refs(&flags[2])).await;
    // The sending side runs in this process (the agent's replicator on A's
    // store, with A's certificate and key): the agents expose no "send this
    // archive" call, since in a cluster only checkpoints are replicated.
    // Only the node that took an archive may send it, so the zstd sender is
    // A too, to a receiver of its own.
    let key_a_file = key_files.as_ref().map(|files| files[0].clone());
    let a_sends = common::sender(&pki, &a, key_a_file.as_deref(), false);
    let a_zstd_sends = common::sender(&pki, &a, key_a_file.as_deref(), true);
    let mut held = listed(&a);
    held.sort();
    let mut all: Vec<String> = archives
        .iter()
        .flat_map(|x| [x.blake3.id.clone(), x.sha256.id.clone()])
        .collect();
    all.sort();
    assert_eq!(held, all, "node-a serves every archive");

    let bench = Bench {
        tls: TlsCopy::new(&pki),
        pki,
        a,
        b,
        b_zstd,
        a_sends,
        a_zstd_sends,
        copy: dir.path().join("tcp-copy.bin"),
        tls_target: dir.path().join("tls-copy.bin"),
        encrypt,
        runs,
    };
    let mut measured = Vec::new();
    for archives in &archives {
        measured.push(measure(&bench, archives, &a_dir).await);
    }

    let rss = |agent: &AgentProcess| agent.peak_rss_kib() as f64 / 1024.0;
    println!();
    println!("{}", machine());
    println!(
        "Archives of pseudo-random bytes; {runs} runs per method, interleaved, each after \
         the disk wrote back the one before (sync, then a pause: this virtual disk takes a GiB \
         at once and then writes ~250 MB/s); \
         data under {} ({fs_type}); the source is in the page cache for every method; \
         encryption at rest {}.",
        dir.path().display(),
        if encrypt {
            "on (AES-256-GCM, a key per agent; the TCP copy moves the encrypted file)"
        } else {
            "off"
        }
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    for (archives, m) in archives.iter().zip(&measured) {
        let size = archives.size;
        let tcp_median = m.tcp.median();
        println!();
        println!("## {} MiB", size / MIB);
        println!();
        println!(
            "| method | throughput MiB/s: median (min–max) | ratio to TCP copy | CPU s per GiB: sender + receiver |"
        );
        println!("|---|---|---|---|");
        println!(
            "| plain TCP copy, loopback, 1 MiB buffers, receiver fsyncs | {} | 1.00 | {} (both threads) |",
            m.tcp.cell(),
            m.tcp.cpu_cell(size, false)
        );
        println!(
            "| TLS copy + blake3 (the required work, no gRPC): rustls/ring mutual TLS ({}), 1 MiB buffers; receiver: a TLS thread, a thread that hashes, writes (early writeback), fsyncs | {} | {:.2} | {} (threads) |",
            m.suite,
            m.secure.cell(),
            m.secure.median() / tcp_median,
            m.secure.cpu_cell(size, true)
        );
        for (method, samples) in [
            (
                "ferry replication A→B, mTLS, receiver verifies the BLAKE3 id, fsyncs and publishes",
                &m.ferry,
            ),
            (
                "the same, an archive named by sha256 (before BLAKE3)",
                &m.ferry_sha256,
            ),
            (
                "ferry replication A→B with `--zstd` (level 1; pseudo-random data does not compress)",
                &m.ferry_zstd,
            ),
        ] {
            println!(
                "| {method} | {} | {:.2} | {} |",
                samples.cell(),
                samples.median() / tcp_median,
                samples.cpu_cell(size, true),
            );
        }
        println!();
        let ratio = m.ferry.median() / tcp_median;
        println!(
            "- Target ratio >= {TARGET_RATIO} (mTLS and hashing on): {} ({ratio:.2})",
            met(ratio >= TARGET_RATIO)
        );
        println!(
            "- ferry to the TLS + blake3 floor: {:.2} (the rest is ferry's own overhead); the floor to the TCP copy: {:.2} (the price of TLS and hashing); BLAKE3 ids against sha256 ids: {:.2}×",
            m.ferry.median() / m.secure.median(),
            m.secure.median() / tcp_median,
            m.ferry.median() / m.ferry_sha256.median()
        );
    }
    println!();
    let agents = [&bench.a, &bench.b, &bench.b_zstd];
    let peak = agents.into_iter().map(rss).fold(0.0, f64::max);
    println!(
        "Peak RSS over every size: sender (node-a) {:.1} MiB, receivers {:.1} and {:.1} (`--zstd`) MiB.",
        rss(&bench.a),
        rss(&bench.b),
        rss(&bench.b_zstd)
    );
    println!(
        "- Target agent peak RSS <= {TARGET_RSS_MIB} MiB: {} (highest {peak:.1} MiB)",
        met(peak <= TARGET_RSS_MIB)
    );
}

/// Every method on one size's archives, in interleaved rounds, so drift on
/// a shared machine hits every method. Before each method the disk writes
/// back what the one before wrote.
async fn measure(bench: &Bench, archives: &Archives, a_dir: &Path) -> Measured {
    let size = archives.size;
    let stored_size = if bench.encrypt {
        encrypted_len(size)
    } else {
        size
    };
    let source = a_dir
        .join("archives")
        .join(format!("{}.tar", archives.blake3.id));
    assert_eq!(std::fs::metadata(&source).unwrap().len(), stored_size);
    let mut m = Measured::default();
    for round in 1..=bench.runs {
        settle(stored_size);
        let (from, to) = (source.clone(), bench.copy.clone());
        let own_cpu = cpu_seconds(std::process::id());
        let elapsed = tokio::task::spawn_blocking(move || tcp_copy(&from, &to, stored_size))
            .await
            .unwrap();
        let cpu = (cpu_seconds(std::process::id()) - own_cpu, 0.0);
        std::fs::remove_file(&bench.copy).unwrap();
        m.tcp.add(size, Run { elapsed, cpu });

        settle(stored_size);
        let (copier, from, to) = (bench.tls.clone(), source.clone(), bench.tls_target.clone());
        // The receiver hashes what it stores; with encryption at rest on, that
        // is the encrypted file, not the archive id.
        let expected = (!bench.encrypt).then(|| archives.blake3.id.clone());
        let (run, negotiated) = tokio::task::spawn_blocking(move || {
            copier.copy(&from, &to, stored_size, expected.as_deref())
        })
        .await
        .unwrap();
        std::fs::remove_file(&bench.tls_target).unwrap();
        m.secure.add(size, run);
        m.suite = negotiated;

        let (pki, a, b) = (&bench.pki, &bench.a, &bench.b);
        settle(stored_size);
        m.ferry.add(
            size,
            replicate(pki, &bench.a_sends, a, b, &archives.blake3).await,
        );
        settle(stored_size);
        m.ferry_sha256.add(
            size,
            replicate(pki, &bench.a_sends, a, b, &archives.sha256).await,
        );
        settle(stored_size);
        m.ferry_zstd.add(
            size,
            replicate(pki, &bench.a_zstd_sends, a, &bench.b_zstd, &archives.blake3).await,
        );
        eprintln!(
            "{} MiB, round {round}/{}: tcp {:.0}, tls+blake3 {:.0}, ferry {:.0}, ferry sha256-named {:.0}, ferry --zstd {:.0} MiB/s",
            size / MIB,
            bench.runs,
            m.tcp.last(),
            m.secure.last(),
            m.ferry.last(),
            m.ferry_sha256.last(),
            m.ferry_zstd.last()
        );
    }
    m
}

/// Reads `source` and sends it over a loopback TCP connection to a receiver
/// thread that writes it to `target` and fsyncs. Timed from the connect to
/// the receiver being done.
fn tcp_copy(source: &Path, target: &Path, size: u64) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let target = target.to_owned();
    let receiver = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut file = File::create(&target).unwrap();
        let mut buffer = vec![0u8; BUFFER];
        let mut total = 0u64;
        loop {
            let read = socket.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            file.write_all(&buffer[..read]).unwrap();
            total += read as u64;
        }
        file.sync_all().unwrap();
        total
    });
    let started = Instant::now();
    let mut socket = TcpStream::connect(address).unwrap();
    let mut file = File::open(source).unwrap();
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        socket.write_all(&buffer[..read]).unwrap();
    }
    socket.shutdown(Shutdown::Write).unwrap();
    let received = receiver.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received, size, "the TCP copy received every byte");
    elapsed
}

/// The agents' mutual-TLS setup (same CA and agent certificate, ring) for a
/// bare rustls connection.
#[derive(Clone)]
struct TlsCopy {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl TlsCopy {
    fn new(pki: &Pki) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
            .unwrap();
        let roots = Arc::new(roots);
        let (agent_cert, agent_key) = pki.agent("tls-copy");
        let chain = || {
            CertificateDer::pem_file_iter(&agent_cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let key = || PrivateKeyDer::from_pem_file(&agent_key).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(), key())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain(), key())
            .unwrap();
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// Sends `source` from one thread to receiver threads over loopback
    /// mutual TLS; the receiver hashes (BLAKE3), writes `target` and fsyncs,
    /// then checks the hash against `expected`. Timed from the connect
    /// (handshake included) to the receiver being done; CPU per thread.
    /// Also returns the negotiated cipher suite (the agents, with the same
    /// provider on both sides, negotiate the same).
    fn copy(
        &self,
        source: &Path,
        target: &Path,
        size: u64,
        expected: Option<&str>,
    ) -> (Run, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (server, target) = (self.server.clone(), target.to_owned());
        let receiver = std::thread::spawn(move || {
            let cpu = thread_cpu_seconds();
            let (socket, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(server).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, socket);
            // Two threads, as two cores allow: this one receives and
            // decrypts, the other hashes, writes and fsyncs. Buffers go
            // round between them (QUEUED of them), nothing is allocated.
            const QUEUED: usize = 4;
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(QUEUED);
            let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUED);
            for _ in 0..QUEUED {
                empty_tx.send(vec![0u8; BUFFER]).unwrap();
            }
            let writer = std::thread::spawn(move || {
                let cpu = thread_cpu_seconds();
                let mut file = File::create(&target).unwrap();
                let mut hasher = ContentHash::Blake3.hasher();
                let (mut total, mut flushed) = (0u64, 0u64);
                for (buffer, filled) in full_rx {
                    hasher.update(&buffer[..filled]);
                    file.write_all(&buffer[..filled]).unwrap();
                    total += filled as u64;
                    // Early writeback, as the store does, so the fsync at the
                    // end does not wait for the whole file.
                    if total - flushed >= WRITEBACK_STEP {
                        ferry_agent::sys::start_writeback(&file, flushed, total - flushed);
                        flushed = total;
                    }
                    // The reader may be gone after the last buffer.
                    let _ = empty_tx.send(buffer);
                }
                file.sync_all().unwrap();
                (total, hasher.finish_id(), thread_cpu_seconds() - cpu)
            });
            loop {
                let mut buffer = empty_rx.recv().unwrap();
                // Fill the whole buffer: rustls hands out one record (16 KiB)
                // per read.
                let mut filled = 0;
                while filled < buffer.len() {
                    let read = tls.read(&mut buffer[filled..]).unwrap();
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                if filled == 0 {
                    break;
                }
                full_tx.send((buffer, filled)).unwrap();
            }
            drop(full_tx);
            let reader_cpu = thread_cpu_seconds() - cpu;
            let (total, hash, writer_cpu) = writer.join().unwrap();
            (total, hash, reader_cpu + writer_cpu)
        });
        let client = self.client.clone();
        let source = source.to_owned();
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            let cpu = thread_cpu_seconds();
            let socket = TcpStream::connect(address).unwrap();
            socket.set_nodelay(true).unwrap();
            let name = ServerName::try_from(ferry_agent::tls::AGENT_SERVER_NAME).unwrap();
            let connection = rustls::ClientConnection::new(client, name).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, socket);
            let mut file = File::open(source).unwrap();
            let mut buffer = vec![0u8; BUFFER];
            loop {
                let read = file.read(&mut buffer).unwrap();
                if read == 0 {
                    break;
                }
                tls.write_all(&buffer[..read]).unwrap();
            }
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            tls.sock.shutdown(Shutdown::Write).unwrap();
            // Read until the receiver closes: a socket closed with unread
            // bytes (the server's session tickets) resets the connection.
            std::io::copy(&mut tls.sock, &mut std::io::sink()).unwrap();
            let suite = tls.conn.negotiated_cipher_suite().unwrap().suite();
            (thread_cpu_seconds() - cpu, format!("{suite:?}"))
        });
        let (sender_cpu, suite) = sender.join().unwrap();
        let (received, hash, receiver_cpu) = receiver.join().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(received, size, "the TLS copy received every byte");
        if let Some(expected) = expected {
            assert_eq!(hash, expected, "the TLS copy hashed the archive");
        }
        let run = Run {
            elapsed,
            cpu: (sender_cpu, receiver_cpu),
        };
        (run, suite)
    }
}

/// CPU seconds (user + system) the calling thread has used so far.
fn thread_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the memory we pass.
    #[allow(unsafe_code)]
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// One replication from `sender`'s store (through `sending`, the agent's
/// replicator in this process) to `receiver`, timed until the receiver has
/// verified and published. The sender's CPU is this process's. Deletes the
/// replica afterwards so the next run starts from nothing.
async fn replicate(
    pki: &Pki,
    sending: &ferry_agent::replication::Replicator,
    sender: &AgentProcess,
    receiver: &AgentProcess,
    archive: &ferry_agent::store::ArchiveMeta,
) -> Run {
    let id = archive.id.as_str();
    common::announce(
        pki,
        &ferry_agent::convert::archive_to_proto(archive),
        &receiver.peer(),
    )
    .await;
    let me = std::process::id();
    let cpu_before = (cpu_seconds(me), cpu_seconds(receiver.pid()));
    let started = Instant::now();
    let outcomes = sending
        .replicate(id, &[common::target(&receiver.peer())])
        .await;
    let elapsed = started.elapsed();
    let cpu = (
        cpu_seconds(me) - cpu_before.0,
        cpu_seconds(receiver.pid()) - cpu_before.1,
    );
    let outcome = ferry_agent::convert::outcomes_to_proto(outcomes).remove(0);
    assert!(
        outcome.ok,
        "replication {} → {} failed: {}\nsender log:\n{}\nreceiver log:\n{}",
        sender.name,
        receiver.name,
        outcome.error,
        sender.log_text(),
        receiver.log_text()
    );
    assert_eq!(outcome.resumed_from, 0, "every run starts from nothing");
    assert_eq!(listed(receiver), vec![id.to_owned()]);
    pki.controller(&receiver.endpoint)
        .await
        .delete_archives(pb::DeleteArchivesRequest {
            archive_ids: vec![id.to_owned()],
            policy: String::new(),
            gone_pods: None,
        })
        .await
        .unwrap();
    assert!(listed(receiver).is_empty());
    Run { elapsed, cpu }
}

/// The file system type of the mount holding `path`, from /proc/mounts.
fn filesystem_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fs_type.to_owned()))
        })
        .max()
        .map(|(_, fs_type)| fs_type)
        .unwrap_or_else(|| "unknown".into())
}

/// nproc, CPU model (with the flags that matter here) and kernel.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let present: Vec<&str> = ["sha_ni", "aes", "vaes", "avx2"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: nproc {cpus}, CPU {} (flags: {}), kernel {}",
        field("model name"),
        present.join(" "),
        kernel.trim()
    )
}
