//! Restore backend for containerd 2.2 and 2.3: the checkpoint image a
//! restore needs is imported into the node's containerd (namespace `k8s.io`,
//! where the CRI plugin looks) and unpacked for its snapshotter. The kubelet
//! refuses a file path as an image, so the replacement pod names this image
//! with `imagePullPolicy: Never` and containerd's CRI restores the container
//! from it (`enable_experimental_restore_via_create`).
//!
//! The import runs containerd's own `ctr` client against the node's socket:
//! it speaks containerd's content and image APIs, and the agent image ships
//! it next to the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::Error;

/// Where and how to reach the node's containerd.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// The `ctr` binary.
    pub ctr: PathBuf,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd namespace the kubelet's images live in.
    pub namespace: String,
    /// Longest an import may take (the image holds the whole archive).
    pub timeout: Duration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            ctr: "ctr".into(),
            address: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Imports checkpoint images into one containerd.
#[derive(Clone, Debug)]
pub struct ContainerdImporter {
    config: ContainerdConfig,
}

impl ContainerdImporter {
    pub fn new(config: ContainerdConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// Imports the OCI archive `archive` (whose index names `reference`) and
    /// checks that containerd lists `reference` afterwards. Importing the
    /// same archive again is harmless.
    pub async fn import(&self, archive: &Path, reference: &str) -> Result<Duration, Error> {
        let started = Instant::now();
        let archive_arg = archive.display().to_string();
        self.ctr(&["images", "import", "--local", &archive_arg])
            .await?;
        let filter = format!("name=={reference}");
        let listed = self.ctr(&["images", "list", "--quiet", &filter]).await?;
        if !listed.lines().any(|line| line.trim() == reference) {
            return Err(Error::Runtime {
                what: "importing a checkpoint image into containerd",
                message: format!(
                    "{} imported {archive_arg} but does not list {reference} in namespace {} (got {:?})",
                    self.config.address.display(),
                    self.config.namespace,
                    listed.trim()
                ),
            });
        }
        let took = started.elapsed();
        tracing::info!(image = reference, containerd = %self.config.address.display(),
            millis = took.as_millis() as u64, "checkpoint image imported into containerd");
        Ok(took)
    }

    /// Removes the image `reference` and waits for containerd's garbage
    /// collection, so its content (plaintext process memory) leaves the
    /// content store too. An image that is not there is no error; returns
    /// whether it was there.
    pub async fn remove(&self, reference: &str) -> Result<bool, Error> {
        let filter = format!("name=={reference}");
        let listed = self.ctr(&["images", "list", "--quiet", &filter]).await?;
        if !listed.lines().any(|line| line.trim() == reference) {
            return Ok(false);
        }
        self.ctr(&["images", "rm", "--sync", reference]).await?;
        tracing::info!(image = reference, containerd = %self.config.address.display(),
            "checkpoint image removed from containerd");
        Ok(true)
    }

    /// Runs `ctr --address … --namespace … <args>`; returns its stdout.
    async fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        let config = &self.config;
        let mut command = Command::new(&config.ctr);
        command
            .arg("--address")
            .arg(&config.address)
            .arg("--namespace")
            .arg(&config.namespace)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!(
            "{} --address {} --namespace {} {}",
            config.ctr.display(),
            config.address.display(),
            config.namespace,
            args.join(" ")
        );
        let output = match tokio::time::timeout(config.timeout, command.output()).await {
            Err(_) => {
                return Err(Error::Runtime {
                    what: "importing a checkpoint image into containerd",
                    message: format!("`{shown}` did not finish in {:?}", config.timeout),
                });
            }
            Ok(Err(err)) => {
                return Err(Error::Runtime {
                    what: "importing a checkpoint image into containerd",
                    message: format!("cannot run `{shown}`: {err}"),
                });
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            // ctr warns about cgroup v1 on every call; the error is its last line.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(Error::Runtime {
                what: "importing a checkpoint image into containerd",
                message: format!(
                    "`{shown}` failed ({}): {}",
                    output.status,
                    said.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn import_error(config: ContainerdConfig) -> String {
        ContainerdImporter::new(config)
            .import(Path::new("/tmp/x.tar"), "localhost/x:1")
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn a_missing_ctr_is_named_in_the_error() {
        let err = import_error(ContainerdConfig {
            ctr: "/nonexistent/ctr".into(),
            ..ContainerdConfig::default()
        })
        .await;
        assert!(err.contains("/nonexistent/ctr"), "{err}");
        assert!(err.contains("cannot run"), "{err}");
    }

    #[tokio::test]
    async fn ctr_failures_quote_its_last_words() {
        // A stand-in for ctr that fails like it does on a missing socket.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("ctr");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'level=warning msg=\"cgroup v1\"' >&2\necho 'ctr: failed to dial \"/run/x.sock\": no such file' >&2\nexit 1\n",
        )
        .unwrap();
        let mut permissions = std::fs::metadata(&fake).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&fake, permissions).unwrap();
        let err = import_error(ContainerdConfig {
            ctr: fake,
            address: "/run/x.sock".into(),
            ..ContainerdConfig::default()
        })
        .await;
        assert!(err.contains("failed to dial"), "{err}");
        assert!(err.contains("--address /run/x.sock"), "{err}");
    }
}
