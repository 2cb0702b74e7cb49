//! What each runc command becomes. Only `create` and `start` are looked
//! at; everything else is runc's.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use serde::Deserialize;

use crate::args::{Create, Invocation};
use crate::grant::{self, Decision, Refusal};
use crate::{Config, Error, diff};

/// Left in the bundle of a restored container: its `start` has nothing to
/// do (the restore left it running).
pub const RESTORED_MARKER: &str = ".ferry-restored";

/// The parts of an OCI config.json this reads.
#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    process: Option<Process>,
    #[serde(default)]
    root: Option<Root>,
}

#[derive(Debug, Default, Deserialize)]
struct Process {
    #[serde(default)]
    terminal: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Root {
    path: String,
}

/// `runc state`'s answer, in part.
#[derive(Debug, Deserialize)]
struct State {
    status: String,
    bundle: String,
}

/// Runs one invocation; returns only when runc was not exec'd.
pub fn run(config: &Config, argv: &[String], call: &Invocation) -> ExitCode {
    let outcome = if let Some(create) = call.create() {
        self::create(config, argv, call, &create)
    } else if let Some(id) = call.start() {
        start(config, argv, call, id)
    } else {
        Err(exec_runc(config, argv))
    };
    match outcome {
        Ok(code) => code,
        Err(err) => fail(call, &err),
    }
}

/// Replaces this process with runc, arguments unchanged. Returns only if
/// that failed.
fn exec_runc(config: &Config, argv: &[String]) -> Error {
    let source = Command::new(&config.runc).args(argv).exec();
    Error::Io {
        what: format!("exec {}", config.runc.display()),
        source,
    }
}

/// Tells the runtime why: runc's log is where the shim looks (it quotes
/// the last error line), stderr is where conmon does.
fn fail(call: &Invocation, err: &Error) -> ExitCode {
    let message = format!("ferry-runc: {err}");
    if let Some(log) = call.log_file()
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
    {
        let line = serde_json::json!({"level": "error", "msg": message});
        let _ = writeln!(file, "{line}");
    }
    eprintln!("{message}");
    ExitCode::FAILURE
}

fn read_spec(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })
}

fn create(
    config: &Config,
    argv: &[String],
    call: &Invocation,
    create: &Create,
) -> Result<ExitCode, Error> {
    let spec = read_spec(&create.bundle)?;
    let (name, identity) = match grant::decide(&spec.annotations)? {
        Decision::StartFresh => return Err(exec_runc(config, argv)),
        Decision::Restore { grant, identity } => (grant, identity),
    };
    if spec.process.as_ref().is_some_and(|p| p.terminal) {
        return Err(Refusal::Terminal(identity.container).into());
    }
    let claimed = grant::claim(&config.grants, &name, &create.id)?;
    if let Err(refusal) = grant::check(&name, &claimed.grant, &identity) {
        // Not this container's: it stays for the one it was prepared for.
        claimed.give_back()?;
        return Err(refusal.into());
    }
    let restored = restore(config, call, create, &spec, &claimed);
    // A copy of a process's memory: gone whatever happened.
    let removed = claimed.remove();
    let code = restored?;
    removed?;
    Ok(code)
}

/// `runc restore --detach` in place of `runc create`, with the flags the
/// runc shim's own restore uses.
fn restore(
    config: &Config,
    call: &Invocation,
    create: &Create,
    spec: &Spec,
    claimed: &grant::Claimed,
) -> Result<ExitCode, Error> {
    let rootfs = spec.root.as_ref().map_or("rootfs", |r| r.path.as_str());
    diff::apply(&create.bundle.join(rootfs), &claimed.rootfs_diff())?;
    let marker = create.bundle.join(RESTORED_MARKER);
    std::fs::write(&marker, claimed.grant.archive.as_bytes()).map_err(|source| Error::Io {
        what: format!("write {}", marker.display()),
        source,
    })?;
    let mut command = Command::new(&config.runc);
    command
        .args(&call.globals)
        .arg("restore")
        .arg("--image-path")
        .arg(claimed.checkpoint())
        .arg("--work-path")
        .arg(claimed.work())
        .arg("--detach")
        .arg("--no-subreaper")
        .arg("--bundle")
        .arg(&create.bundle);
    if let Some(pid_file) = &create.pid_file {
        command.arg("--pid-file").arg(pid_file);
    }
    if let Some(socket) = &create.console_socket {
        command.arg("--console-socket").arg(socket);
    }
    if create.no_pivot {
        command.arg("--no-pivot");
    }
    command.arg(&create.id);
    let status = command.status().map_err(|source| Error::Io {
        what: format!("run {} restore", config.runc.display()),
        source,
    })?;
    if status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    let _ = std::fs::remove_file(&marker);
    // The grant, CRIU's log with it, is removed next: quote the log's end.
    let log = std::fs::read_to_string(claimed.work().join("restore.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();
    Err(Error::Invalid(format!(
        "runc restore of container {} from grant {} (archive {}) failed ({status}); CRIU: {}",
        create.id,
        claimed.name,
        claimed.grant.archive,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )))
}

/// A restored container is already running: its `start` succeeds at once.
fn start(config: &Config, argv: &[String], call: &Invocation, id: &str) -> Result<ExitCode, Error> {
    let state = Command::new(&config.runc)
        .args(&call.globals)
        .arg("state")
        .arg(id)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<State>(&out.stdout).ok());
    match state {
        Some(state)
            if state.status == "running"
                && Path::new(&state.bundle).join(RESTORED_MARKER).exists() =>
        {
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(exec_runc(config, argv)),
    }
}
