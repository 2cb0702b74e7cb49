//! Runtimes: who actually takes a checkpoint on this node.
//!
//! - `kubelet` (production): the kubelet's checkpoint API (CRIU through the
//!   container runtime).
//! - `runc`: CRIU through runc on hosts that are not Kubernetes nodes (see
//!   [`crate::runc`]).
//! - `synthetic`: a **test double for the kubelet**, for tiers where no
//!   kubelet runs (API-server tests with kwok nodes, benchmarks). It writes
//!   a real archive of a configured size in the kubelet's layout
//!   (`checkpoint/`, `config.dump`, `spec.dump`) whose memory image is
//!   pseudo-random bytes; nothing is frozen or dumped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;
use crate::kubelet::KubeletClient;
use crate::runc::RuncRuntime;

/// An archive a runtime wrote, not yet imported into the store.
#[derive(Clone, Debug)]
pub struct TakenCheckpoint {
    pub path: PathBuf,
    pub elapsed: Duration,
}

/// The runtime this agent uses.
#[derive(Debug)]
pub enum Runtime {
    Kubelet(KubeletClient),
    Runc(RuncRuntime),
    Synthetic(SyntheticRuntime),
}

impl Runtime {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kubelet(_) => "kubelet",
            Self::Runc(_) => "runc",
            Self::Synthetic(_) => "synthetic",
        }
    }

    pub async fn checkpoint(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<TakenCheckpoint, Error> {
        match self {
            Self::Kubelet(kubelet) => {
                let taken = kubelet
                    .checkpoint(namespace, pod, container, timeout)
                    .await?;
                Ok(TakenCheckpoint {
                    path: taken.path,
                    elapsed: taken.elapsed,
                })
            }
            Self::Runc(runc) => runc.checkpoint(namespace, pod, container).await,
            Self::Synthetic(synthetic) => synthetic.checkpoint(namespace, pod, container).await,
        }
    }

    /// The runc runtime, for the requests only it serves.
    pub fn runc(&self) -> Option<&RuncRuntime> {
        match self {
            Self::Runc(runc) => Some(runc),
            _ => None,
        }
    }

    /// Removes the runtime's own copy once the store imported it.
    pub async fn discard(&self, taken: &TakenCheckpoint) -> Result<(), Error> {
        match self {
            Self::Kubelet(kubelet) => kubelet.remove_kubelet_copy(&taken.path).await,
            Self::Runc(_) | Self::Synthetic(_) => tokio::fs::remove_file(&taken.path)
                .await
                .map_err(|e| Error::io("removing", &taken.path, e)),
        }
    }
}

/// Test double for the kubelet: see the module documentation.
#[derive(Debug)]
pub struct SyntheticRuntime {
    dir: PathBuf,
    memory_bytes: u64,
    image: String,
}

impl SyntheticRuntime {
    /// Archives go to `dir`, each holding `memory_bytes` of page data.
    pub fn new(dir: &Path, memory_bytes: u64, image: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            memory_bytes,
            image: image.to_owned(),
        })
    }

    async fn checkpoint(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<TakenCheckpoint, Error> {
        crate::names::dns_label("namespace", namespace)?;
        crate::names::dns_subdomain("pod", pod)?;
        crate::names::dns_label("container", container)?;
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        let path = self.dir.join(format!(
            "checkpoint-{pod}_{namespace}-{container}-{}.tar",
            now.as_nanosecond()
        ));
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {
                "io.kubernetes.pod.name": pod,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.container.name": container,
            },
        });
        let config = serde_json::json!({
            "id": format!("synthetic-{}", now.as_nanosecond()),
            "rootfsImage": self.image,
            "rootfsImageName": self.image,
            "runtime": "synthetic",
            "createdTime": now.to_string(),
            "checkpointedTime": now.to_string(),
        });
        let memory_bytes = self.memory_bytes;
        let seed = u64::try_from(now.as_nanosecond() & i128::from(u64::MAX)).unwrap_or(1) | 1;
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            write_archive(&target, &spec, &config, memory_bytes, seed)
        })
        .await
        .map_err(|e| Error::io("writing", &path, std::io::Error::other(e)))??;
        Ok(TakenCheckpoint {
            path,
            elapsed: started.elapsed(),
        })
    }
}

fn write_archive(
    path: &Path,
    spec: &serde_json::Value,
    config: &serde_json::Value,
    memory_bytes: u64,
    seed: u64,
) -> Result<(), Error> {
    let io = |e| Error::io("writing", path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let buffer = usize::try_from(memory_bytes).map_or(1 << 20, |m| (m + (64 << 10)).min(1 << 20));
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(buffer, file));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    add("spec.dump", &serde_json::to_vec(spec).unwrap_or_default()).map_err(io)?;
    add(
        "config.dump",
        &serde_json::to_vec(config).unwrap_or_default(),
    )
    .map_err(io)?;
    add(
        "checkpoint/inventory.img",
        b"synthetic checkpoint: no process was dumped",
    )
    .map_err(io)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(memory_bytes);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(
        &mut header,
        "checkpoint/pages-1.img",
        PseudoRandom::new(seed, memory_bytes),
    )
    .map_err(io)?;
    let mut writer = tar.into_inner().map_err(io)?;
    writer.flush().map_err(io)?;
    writer.get_ref().sync_all().map_err(io)
}

/// Incompressible filler (xorshift64*) of a fixed length.
struct PseudoRandom {
    state: u64,
    remaining: u64,
}

impl PseudoRandom {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed,
            remaining: len,
        }
    }
}

impl std::io::Read for PseudoRandom {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX))
            & !7;
        let len = if len == 0 {
            buf.len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX))
        } else {
            len
        };
        for chunk in buf[..len].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let value = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
        self.remaining -= len as u64;
        Ok(len)
    }
}
