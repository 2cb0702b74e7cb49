//! Tier 5's attack on an agent of the real cluster (hack/chaos.sh): with a
//! valid agent certificate of another node, as a stolen key would give, it
//! calls everything only the controller may call and pushes a replica
//! nobody announced; then it connects without a certificate, with one of
//! another CA and, given the CA key, with an expired one. Prints one line per
//! attempt and exits 1 unless every one was refused.

// A command-line tool: its report is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use ferry_proto::tls::Identity;
use ferry_proto::v1 as pb;
use ferry_testenv::attack::{self, Target};

#[derive(Parser, Debug)]
#[command(about = "Attacks one ferry agent with a stolen certificate of another node")]
struct Args {
    /// The victim agent's gRPC address, host:port.
    #[arg(long)]
    endpoint: String,
    /// CA certificate the agents trust (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Its key (PEM): with it, an expired certificate is tried too.
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// The stolen certificate (PEM), of the agent of --thief-node.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    thief_node: String,
    /// What to aim at: an archive id on the victim, and whose it is.
    #[arg(long, default_value = "")]
    archive: String,
    #[arg(long, default_value = "default/counter")]
    policy: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "counter")]
    pod: String,
    #[arg(long, default_value = "")]
    pod_uid: String,
    #[arg(long, default_value = "app")]
    container: String,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// A certificate that must not get in: what it is, its PEM and its key's.
type Outsider = (&'static str, Vec<u8>, Vec<u8>);

/// Another CA's certificate and, with the CA key, an expired one of the
/// real CA.
fn outsiders(args: &Args) -> Result<Vec<Outsider>, String> {
    let dir = tempfile_dir()?;
    let rogue = ferry_testenv::TestPki::new(&dir).map_err(|e| e.to_string())?;
    let mut outsiders = vec![(
        "a certificate of another CA",
        read(&rogue.rogue_cert)?,
        read(&rogue.rogue_key)?,
    )];
    if let Some(ca_key) = &args.ca_key {
        let ca_pem = String::from_utf8(read(&args.ca)?).map_err(|e| e.to_string())?;
        let key_pem = String::from_utf8(read(ca_key)?).map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (cert, key) = ferry_testenv::pki::issue_with(
            &ca_pem,
            &key_pem,
            &Identity::Controller,
            (now - 2 * hour, now - hour),
        )
        .map_err(|e| e.to_string())?;
        outsiders.push((
            "an expired controller certificate of the real CA",
            cert.into_bytes(),
            key.into_bytes(),
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(outsiders)
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("agent-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

async fn run(args: Args) -> Result<usize, String> {
    let ca = read(&args.ca)?;
    let stolen = (read(&args.cert)?, read(&args.key)?);
    let caller = Identity::agent(args.thief_node.clone()).to_string();
    let mut failures = 0;

    // The stolen certificate is valid: its own heartbeat is answered.
    let mut thief = attack::connect(&args.endpoint, &ca, Some(stolen))
        .await
        .map_err(|e| format!("connecting with the stolen certificate: {e}"))?;
    thief
        .heartbeat(pb::HeartbeatRequest {
            node: args.thief_node.clone(),
        })
        .await
        .map_err(|s| format!("the stolen certificate's own heartbeat was refused: {s}"))?;
    println!("the stolen certificate ({caller}) is valid: its own heartbeat is answered");

    let target = Target {
        archive_id: args.archive.clone(),
        policy: args.policy.clone(),
        container: pb::ContainerRef {
            namespace: args.namespace.clone(),
            pod: args.pod.clone(),
            pod_uid: args.pod_uid.clone(),
            container: args.container.clone(),
        },
    };
    for attempt in attack::privileged_calls(&mut thief, &args.thief_node, &target).await {
        match attempt.refused(&caller) {
            Ok(()) => println!("refused  {}", attempt.method),
            Err(err) => {
                println!("GOT IN   {err}");
                failures += 1;
            }
        }
    }

    let mut intruders = vec![("no certificate", None)];
    for (what, cert, key) in outsiders(&args)? {
        intruders.push((what, Some((cert, key))));
    }
    for (what, identity) in intruders {
        match attack::refused_at_handshake(&args.endpoint, &ca, identity).await {
            Ok(reason) => println!("refused  {what} at the handshake: {reason:.160}"),
            Err(err) => {
                println!("GOT IN   {what}: {err}");
                failures += 1;
            }
        }
    }
    Ok(failures)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Args::parse()).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!("agent-attack: {failures} attempts were not refused");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("agent-attack: {err}");
            ExitCode::from(2)
        }
    }
}
