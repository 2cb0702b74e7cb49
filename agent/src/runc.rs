//! The `runc` runtime: CRIU through runc on a host that is not a Kubernetes
//! node (the local demo, tier-4 tests, benchmarks). The agent runs the
//! containers itself, checkpoints them into an archive with the layout the
//! kubelet produces (`checkpoint/` CRIU images, `config.dump`, `spec.dump`,
//! `stats-dump`, `rootfs-diff.tar`), and restores archives received from
//! other agents.
//!
//! A "node" is a network namespace: every container of this agent joins
//! `netns`, and a restore puts the process into this agent's namespace, not
//! the one it was dumped in. Container stdio are pipes (CRIU cannot restore
//! a container whose stdio are host files); the agent copies them into a
//! log file per container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Error;
use crate::runtime::TakenCheckpoint;

/// How runc is run.
#[derive(Clone, Debug)]
pub struct RuncConfig {
    /// The runc binary.
    pub runc: PathBuf,
    /// Directory holding the `criu` binary runc must use; `None`: runc finds
    /// criu on the agent's PATH.
    pub criu_dir: Option<PathBuf>,
    /// Bundles (`<name>/config.json`, `<name>/rootfs/`) containers are run from.
    pub bundles: PathBuf,
    /// Network namespace (a path such as /run/netns/node-a) every container
    /// of this node joins.
    pub netns: Option<PathBuf>,
    /// The agent's own working directory for runc state, container
    /// bundles, dumps and restores.
    pub work: PathBuf,
    /// Bound on one runc call (checkpoint, restore); past it runc and CRIU
    /// are killed.
    pub timeout: Duration,
}

/// A container this agent started.
#[derive(Debug)]
struct Running {
    bundle: PathBuf,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RuncRuntime {
    config: RuncConfig,
    containers: Mutex<HashMap<String, Running>>,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Restored {
    pub container_id: String,
    pub pid: u32,
    pub criu: Duration,
}

impl RuncRuntime {
    pub fn new(config: RuncConfig) -> Result<Self, Error> {
        for dir in ["state", "containers", "dumps", "restores", "logs"] {
            let path = config.work.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
        }
        Ok(Self {
            config,
            containers: Mutex::default(),
        })
    }

    /// runc's id for a container: unique per namespace, pod and container,
    /// and only characters runc accepts.
    pub fn container_id(namespace: &str, pod: &str, container: &str) -> String {
        format!("{namespace}.{pod}.{container}")
    }

    fn runc(&self) -> Command {
        let mut command = Command::new(&self.config.runc);
        // runc and the CRIU it starts share a process group, so a timeout
        // kills both.
        command.process_group(0);
        command.arg("--root").arg(self.config.work.join("state"));
        if let Some(dir) = &self.config.criu_dir {
            command.arg("--criu").arg(dir.join("criu"));
        }
        command
    }

    /// Runs `command` to completion; a failure quotes runc's and CRIU's
    /// own words (the last lines of the CRIU log in `criu_log`).
    async fn run_runc(
        &self,
        what: &'static str,
        mut command: Command,
        criu_log: Option<&Path>,
    ) -> Result<String, Error> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io("running", &self.config.runc, e))?;
        let pid = child.id();
        let output = match tokio::time::timeout(self.config.timeout, child.wait_with_output()).await
        {
            Ok(output) => output.map_err(|e| Error::io("running", &self.config.runc, e))?,
            Err(_elapsed) => return Err(self.timed_out(what, what, pid, criu_log).await),
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(Error::Runtime {
            what,
            message: format!(
                "runc {what} failed ({}): {message}{}",
                output.status,
                criu_says(criu_log)
            ),
        })
    }

    /// Writes the bundle a container runs from: the named bundle's
    /// config.json pointed at its rootfs and at this node's network
    /// namespace.
    fn prepare_bundle(&self, id: &str, bundle_name: &str) -> Result<PathBuf, Error> {
        crate::names::dns_label("bundle", bundle_name)?;
        let source = self.config.bundles.join(bundle_name);
        let config_path = source.join("config.json");
        let text =
            std::fs::read(&config_path).map_err(|e| Error::io("reading", &config_path, e))?;
        let mut spec: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::Runtime {
                what: "bundle",
                message: format!("{}: not an OCI runtime spec: {e}", config_path.display()),
            })?;
        let rootfs = spec["root"]["path"].as_str().unwrap_or("rootfs").to_owned();
        let rootfs = if Path::new(&rootfs).is_absolute() {
            PathBuf::from(rootfs)
        } else {
            source.join(rootfs)
        };
        spec["root"]["path"] = rootfs.display().to_string().into();
        spec["process"]["terminal"] = false.into();
        if let Some(netns) = &self.config.netns {
            let namespaces = spec["linux"]["namespaces"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut namespaces: Vec<serde_json::Value> = namespaces
                .into_iter()
                .filter(|ns| ns["type"] != "network")
                .collect();
            namespaces.push(serde_json::json!({"type": "network", "path": netns}));
            spec["linux"]["namespaces"] = namespaces.into();
        }
        // A cgroup of its own per container, so two agents on one host never share one.
        spec["linux"]["cgroupsPath"] = format!("/ferry/{id}").into();
        let dir = self.config.work.join("containers").join(id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        // runc has no flag for CRIU's network lock; CRIU reads it from the
        // config file this annotation names. nftables freezes the container
        // ~70 ms shorter than the iptables default (docs/checkpoint-restore.md)
        // and leaves no rules behind in other processes' way.
        let criu_conf = dir.join("criu.conf");
        std::fs::write(&criu_conf, "network-lock nftables\n")
            .map_err(|e| Error::io("writing", &criu_conf, e))?;
        spec["annotations"]["org.criu.config"] = criu_conf.display().to_string().into();
        let target = dir.join("config.json");
        let bytes = serde_json::to_vec_pretty(&spec).unwrap_or_default();
        std::fs::write(&target, bytes).map_err(|e| Error::io("writing", &target, e))?;
        Ok(dir)
    }

    /// Starts `runc run -d`/`runc restore -d` with stdio pipes whose output
    /// goes to the container's log.
    async fn start_detached(
        &self,
        what: &'static str,
        mut command: Command,
        id: &str,
        criu_log: Option<&Path>,
    ) -> Result<(), Error> {
        let log_path = self.config.work.join("logs").join(format!("{id}.log"));
        // stdin too is a pipe (closed at once): CRIU restores pipes, not
        // host files such as /dev/null.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("running", &self.config.runc, e))?;
        drop(child.stdin.take());
        // runc -d hands these pipes to the container and exits; they stay
        // open as long as the container writes to them.
        let mut sinks = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let log_path = log_path.clone();
            sinks.push(tokio::spawn(async move {
                let mut stream = stream;
                if let Ok(mut file) = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .await
                {
                    let _ = tokio::io::copy(&mut stream, &mut file).await;
                    let _ = file.flush().await;
                }
            }));
        }
        let pid = child.id();
        let status = match tokio::time::timeout(self.config.timeout, child.wait()).await {
            Ok(status) => status.map_err(|e| Error::io("waiting for", &self.config.runc, e))?,
            Err(_elapsed) => {
                return Err(self
                    .timed_out(what, &format!("{what} of {id}"), pid, criu_log)
                    .await);
            }
        };
        if status.success() {
            return Ok(());
        }
        // runc wrote its error to the pipes; the copies end with it.
        for sink in sinks {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink).await;
        }
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last: Vec<&str> = said.lines().rev().take(3).collect();
        let message = last.into_iter().rev().collect::<Vec<_>>().join(" | ");
        Err(Error::Runtime {
            what,
            message: format!(
                "runc {what} of {id} failed ({status}): {message}{}",
                criu_says(criu_log)
            ),
        })
    }

    /// Kills runc and the CRIU it started once `self.config.timeout` has
    /// passed: a CRIU that hangs (it loops on some broken images) must not
    /// hold the node, nor fill its disk with its log.
    async fn timed_out(
        &self,
        what: &'static str,
        subject: &str,
        pid: Option<u32>,
        criu_log: Option<&Path>,
    ) -> Error {
        kill_group(pid).await;
        Error::Runtime {
            what,
            message: format!(
                "runc {subject} did not finish within {}s and was killed{}",
                self.config.timeout.as_secs(),
                criu_says(criu_log)
            ),
        }
    }

    /// The pid of a running container's init process.
    async fn pid(&self, id: &str) -> Result<u32, Error> {
        let mut command = self.runc();
        command.arg("state").arg(id);
        let state = self.run_runc("state", command, None).await?;
        let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Runtime {
                what: "state",
                message: format!("container {id} has no running process: {state}"),
            })
    }

    /// Runs a container from a bundle.
    pub async fn run(&self, id: &str, bundle_name: &str) -> Result<u32, Error> {
        let bundle = self.prepare_bundle(id, bundle_name)?;
        let mut command = self.runc();
        command
            .arg("run")
            .arg("-d")
            .arg("--bundle")
            .arg(&bundle)
            .arg(id);
        self.start_detached("run", command, id, None).await?;
        self.containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), Running { bundle });
        self.pid(id).await
    }

    /// Checkpoints a running container (it keeps running) into an archive
    /// in the kubelet's layout.
    pub async fn checkpoint(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<TakenCheckpoint, Error> {
        let started = Instant::now();
        let id = Self::container_id(namespace, pod, container);
        let bundle = self
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .map(|c| c.bundle.clone())
            .unwrap_or_else(|| self.config.work.join("containers").join(&id));
        let stamp = jiff::Timestamp::now();
        let dump = self
            .config
            .work
            .join("dumps")
            .join(format!("{id}-{}", stamp.as_nanosecond()));
        let images = dump.join("checkpoint");
        let work = dump.join("work");
        for dir in [&images, &work] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        }
        let mut command = self.runc();
        command.args(checkpoint_args(&images, &work, &id));
        let dumped = self
            .run_runc("checkpoint", command, Some(&work.join("dump.log")))
            .await;
        let dump_elapsed = started.elapsed();
        // CRIU leaves its network-lock table behind in the namespace.
        self.remove_network_lock().await;
        if let Err(err) = dumped {
            let _ = std::fs::remove_dir_all(&dump);
            return Err(err);
        }
        let spec = std::fs::read(bundle.join("config.json")).unwrap_or_default();
        let config = serde_json::json!({
            "id": id,
            "name": container,
            "rootfsImage": "",
            "rootfsImageName": "",
            "runtime": "runc",
            "createdTime": stamp.to_string(),
            "checkpointedTime": jiff::Timestamp::now().to_string(),
        });
        let archive = self.config.work.join("dumps").join(format!(
            "checkpoint-{pod}_{namespace}-{container}-{}.tar",
            stamp.as_nanosecond()
        ));
        let target = archive.clone();
        let source = dump.clone();
        tokio::task::spawn_blocking(move || write_archive(&target, &source, &spec, &config))
            .await
            .map_err(|e| Error::io("writing", &archive, std::io::Error::other(e)))??;
        let _ = std::fs::remove_dir_all(&dump);
        let elapsed = started.elapsed();
        tracing::info!(
            container = %id, dump_ms = dump_elapsed.as_millis() as u64,
            archive_ms = (elapsed - dump_elapsed).as_millis() as u64,
            "runc checkpoint written"
        );
        Ok(TakenCheckpoint {
            path: archive,
            elapsed,
        })
    }

    /// See [`remove_criu_network_lock`]: in this node's namespace.
    async fn remove_network_lock(&self) {
        if let Some(netns) = &self.config.netns {
            remove_criu_network_lock(netns).await;
        }
    }

    /// Restores the archive at `archive` (plaintext, verified by the
    /// caller) as container `id` on this node.
    pub async fn restore(
        &self,
        archive: &Path,
        id: &str,
        bundle_name: &str,
    ) -> Result<Restored, Error> {
        let bundle = self.prepare_bundle(id, bundle_name)?;
        let unpacked = self
            .config
            .work
            .join("restores")
            .join(format!("{id}-{}", jiff::Timestamp::now().as_nanosecond()));
        let source = archive.to_owned();
        let target = unpacked.clone();
        tokio::task::spawn_blocking(move || unpack_checkpoint(&source, &target))
            .await
            .map_err(|e| Error::io("unpacking", archive, std::io::Error::other(e)))??;
        let work = unpacked.join("work");
        std::fs::create_dir_all(&work).map_err(|e| Error::io("creating", &work, e))?;
        let mut command = self.runc();
        command
            .arg("restore")
            .arg("-d")
            .arg("--tcp-established")
            .arg("--image-path")
            .arg(unpacked.join("checkpoint"))
            .arg("--work-path")
            .arg(&work)
            .arg("--bundle")
            .arg(&bundle)
            .arg(id);
        let criu_started = Instant::now();
        let result = self
            .start_detached("restore", command, id, Some(&work.join("restore.log")))
            .await;
        let criu = criu_started.elapsed();
        if result.is_err() {
            // Leave nothing half-restored: runc's state, CRIU's mounts.
            let mut delete = self.runc();
            delete.arg("delete").arg("--force").arg(id);
            let _ = self.run_runc("delete", delete, None).await;
            unmount_below(&unpacked).await;
            // A failed restore can leave CRIU's network lock in place, which
            // would cut off everything else in this node's namespace.
            self.remove_network_lock().await;
        }
        let _ = std::fs::remove_dir_all(&unpacked);
        result?;
        self.containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), Running { bundle });
        let pid = self.pid(id).await?;
        Ok(Restored {
            container_id: id.to_owned(),
            pid,
            criu,
        })
    }

    /// Kills and removes a container; a container that does not exist is
    /// not an error.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let mut command = self.runc();
        command.arg("delete").arg("--force").arg(id);
        match self.run_runc("delete", command, None).await {
            Ok(_) => {}
            Err(Error::Runtime { message, .. }) if message.contains("does not exist") => {}
            Err(err) => return Err(err),
        }
        self.containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        Ok(())
    }
}

/// The arguments of the `runc checkpoint` that dumps container `id` into
/// `images` (CRIU's work files in `work`), leaving it running.
pub fn checkpoint_args(images: &Path, work: &Path, id: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["checkpoint".into(), "--leave-running".into()];
    // Clients connected at dump time keep their connections.
    args.push("--tcp-established".into());
    args.extend([
        "--image-path".into(),
        images.into(),
        "--work-path".into(),
        work.into(),
        id.into(),
    ]);
    args
}

/// Removes what CRIU's network lock left in the network namespace `netns`:
/// the `inet CRIU-*` nftables tables of a dump and the iptables `CRIU`
/// chain of a failed restore. Both drop traffic of every other process in
/// the namespace, and a later dump would fail on them.
pub async fn remove_criu_network_lock(netns: &Path) {
    let net = format!("--net={}", netns.display());
    for tool in ["iptables", "ip6tables"] {
        for rule in [
            &["-D", "INPUT", "-j", "CRIU"][..],
            &["-D", "OUTPUT", "-j", "CRIU"],
            &["-F", "CRIU"],
            &["-X", "CRIU"],
        ] {
            let _ = Command::new("nsenter")
                .arg(&net)
                .arg(tool)
                .args(rule)
                .stderr(Stdio::null())
                .output()
                .await;
        }
    }
    let Ok(output) = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "list", "tables"])
        .output()
        .await
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut words = line.split_whitespace();
        if let (Some("table"), Some(family), Some(name)) =
            (words.next(), words.next(), words.next())
            && name.starts_with("CRIU")
        {
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["nft", "delete", "table", family, name])
                .output()
                .await;
        }
    }
}

/// SIGKILL to a process group (runc and the CRIU it started).
async fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .output()
            .await;
    }
}

/// Lazily unmounts whatever a killed CRIU left mounted below `dir` (its
/// cgroup yard), deepest first, so the directory can be removed.
async fn unmount_below(dir: &Path) {
    let Ok(mounts) = tokio::fs::read_to_string("/proc/self/mounts").await else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in below {
        let _ = Command::new("umount").args(["-l", mount]).output().await;
    }
}

/// `; CRIU: <why>` from CRIU's log, or nothing when there is no log.
fn criu_says(log: Option<&Path>) -> String {
    log.and_then(criu_error)
        .map(|line| format!("; CRIU: {line}"))
        .unwrap_or_default()
}

/// The `Error` lines of a CRIU log that say why it failed: the last two
/// before its closing "Restoring FAILED." / "Dumping FAILED." (what follows
/// is clean-up noise), or its last line when it logged no error.
fn criu_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.contains("Restoring FAILED") || l.contains("Dumping FAILED"))
        .unwrap_or(lines.len());
    let errors: Vec<&str> = lines[..end]
        .iter()
        .filter(|l| l.contains("Error"))
        .map(|l| l.trim())
        .collect();
    if errors.is_empty() {
        return lines.last().map(|l| l.trim().to_owned());
    }
    Some(errors[errors.len().saturating_sub(2)..].join(" / "))
}

/// Tar of a dump directory in the kubelet's checkpoint-archive layout.
fn write_archive(
    path: &Path,
    dump: &Path,
    spec: &[u8],
    config: &serde_json::Value,
) -> Result<(), Error> {
    let io = |e| Error::io("writing", path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let add = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    add(&mut tar, "spec.dump", spec).map_err(io)?;
    add(
        &mut tar,
        "config.dump",
        &serde_json::to_vec(config).unwrap_or_default(),
    )
    .map_err(io)?;
    // The rootfs is read-only: nothing changed in it.
    let empty_tar = vec![0u8; 1024];
    add(&mut tar, "rootfs-diff.tar", &empty_tar).map_err(io)?;
    let stats = dump.join("work").join("stats-dump");
    if stats.exists() {
        tar.append_path_with_name(&stats, "stats-dump")
            .map_err(io)?;
    }
    tar.append_dir_all("checkpoint", dump.join("checkpoint"))
        .map_err(io)?;
    // Not synced: the store reads it at once and syncs its own copy, and
    // the file goes right after. Syncing it too wrote every checkpoint to
    // disk twice (and a crash loses it either way).
    let mut writer = tar.into_inner().map_err(io)?;
    std::io::Write::flush(&mut writer).map_err(io)
}

/// Unpacks `checkpoint/` and the dump files of an archive into `target`,
/// refusing entries that would land outside it.
pub(crate) fn unpack_checkpoint(archive: &Path, target: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(target).map_err(|e| Error::io("creating", target, e))?;
    let file = std::fs::File::open(archive).map_err(|e| Error::io("opening", archive, e))?;
    let mut tar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let entries = tar
        .entries()
        .map_err(|e| Error::io("reading", archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io("reading", archive, e))?;
        // unpack_in refuses absolute paths and `..`.
        let inside = entry
            .unpack_in(target)
            .map_err(|e| Error::io("unpacking", archive, e))?;
        if !inside {
            return Err(Error::Runtime {
                what: "restore",
                message: format!(
                    "archive {} holds an entry outside its directory: {}",
                    archive.display(),
                    entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            });
        }
    }
    if !target.join("checkpoint").is_dir() {
        return Err(Error::Runtime {
            what: "restore",
            message: format!("archive {} has no checkpoint/ directory", archive.display()),
        });
    }
    Ok(())
}
