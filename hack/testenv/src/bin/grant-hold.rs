//! Tier 5's way to hold a restore grant open on a node of the real cluster
//! (hack/chaos-grants.sh): a grant lives only from the moment the
//! controller prepares a failover until its replacement starts, so a test
//! that attacks a live grant cannot wait for one by chance. This tool plays
//! the controller, with a controller certificate issued from the CA key
//! (which only the cluster admin can read), and asks one agent to prepare a
//! restore of an archive it holds, or to release what it prepared.
//!
//!   grant-hold prepare ... --archive A --namespace NS --failover F
//!       prints the grant (the `ferry.dev/restore-grant` annotation)
//!   grant-hold release ... --archive A --failover F

// A command-line tool: its report is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, ValueEnum};
use ferry_proto::tls::Identity;
use ferry_proto::v1 as pb;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Action {
    Prepare,
    Release,
}

#[derive(Parser, Debug)]
#[command(about = "Prepares or releases a restore grant on one agent, as the controller")]
struct Args {
    action: Action,
    /// The agent's gRPC address, host:port.
    #[arg(long)]
    endpoint: String,
    /// CA certificate the agents trust, and its key (PEM).
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    ca_key: PathBuf,
    /// The archive to restore, which the agent must hold.
    #[arg(long)]
    archive: String,
    /// The namespace the archive belongs to.
    #[arg(long, default_value = "")]
    namespace: String,
    /// What the preparation is for; release removes only that.
    #[arg(long)]
    failover: String,
}

/// The pod annotation that names a grant (ferry-runc's GRANT_ANNOTATION).
const GRANT_ANNOTATION: &str = "ferry.dev/restore-grant";

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

async fn run(args: Args) -> Result<String, String> {
    let ca = read(&args.ca)?;
    let now = SystemTime::now();
    let (cert, key) = ferry_testenv::pki::issue_with(
        &ca,
        &read(&args.ca_key)?,
        &Identity::Controller,
        (
            now - Duration::from_secs(60),
            now + Duration::from_secs(600),
        ),
    )
    .map_err(|e| format!("issuing a controller certificate: {e}"))?;
    let mut agent = ferry_testenv::attack::connect(
        &args.endpoint,
        ca.as_bytes(),
        Some((cert.into_bytes(), key.into_bytes())),
    )
    .await
    .map_err(|e| format!("connecting to {}: {e}", args.endpoint))?;
    match args.action {
        Action::Prepare => {
            let prepared = agent
                .prepare_restore(pb::PrepareRestoreRequest {
                    archive_id: args.archive.clone(),
                    failover: args.failover.clone(),
                    namespace: args.namespace.clone(),
                })
                .await
                .map_err(|s| format!("preparing archive {}: {}", args.archive, s.message()))?
                .into_inner();
            prepared
                .pod_annotations
                .get(GRANT_ANNOTATION)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "the agent prepared no grant (runtime class {:?}, image {:?}): is its backend the runtime handler?",
                        prepared.runtime_class, prepared.image
                    )
                })
        }
        Action::Release => {
            agent
                .release_restore(pb::ReleaseRestoreRequest {
                    archive_id: args.archive.clone(),
                    failover: args.failover.clone(),
                })
                .await
                .map_err(|s| format!("releasing archive {}: {}", args.archive, s.message()))?;
            Ok(format!("released {} for {}", args.archive, args.failover))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Args::parse()).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("grant-hold: {err}");
            ExitCode::FAILURE
        }
    }
}
