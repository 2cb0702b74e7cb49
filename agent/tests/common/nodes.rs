//! "Nodes" on one host for tier-4 tests, the local demo and the
//! checkpoint/restore benchmark: a network namespace each, with an agent
//! running the `runc` runtime whose containers join that namespace.
//! Needs root; hack/criu.sh and hack/test-app-bundle.sh provide CRIU, runc
//! and the static test-app (cached after their first run).

use std::path::Path;
use std::process::Command;

use ferry_proto::v1 as pb;
use ferry_testenv::netns::Netns;

use super::{AgentProcess, Pki};

/// A container reference in the `tier4` namespace.
pub fn container(pod: &str) -> pb::ContainerRef {
    pb::ContainerRef {
        namespace: "tier4".into(),
        pod: pod.into(),
        pod_uid: "00000000-0000-0000-0000-000000000004".into(),
        container: "app".into(),
    }
}

/// A node: its namespace and its agent. Containers outlive their agent,
/// so dropping a node deletes every container its agent started.
pub struct Node {
    pub netns: Netns,
    pub agent: AgentProcess,
}

impl Node {
    pub async fn start(pki: &Pki, dir: &Path, name: &str, criu: &Path, bundles: &Path) -> Self {
        Self::start_with(pki, dir, name, criu, bundles, &[]).await
    }

    /// Like `start`, with more agent flags.
    pub async fn start_with(
        pki: &Pki,
        dir: &Path,
        name: &str,
        criu: &Path,
        bundles: &Path,
        extra: &[&str],
    ) -> Self {
        let netns = Netns::new(&format!("ferry-{name}-{}", std::process::id()));
        let data = dir.join(name);
        let criu_dir = format!("--criu-dir={}", criu.parent().unwrap().display());
        let runc_bundles = format!("--runc-bundles={}", bundles.display());
        let runc_netns = format!("--runc-netns={}", netns.path());
        let mut args = vec!["--runtime=runc", &criu_dir, &runc_bundles, &runc_netns];
        args.extend_from_slice(extra);
        let agent = AgentProcess::start(pki, name, &data, 0, &args).await;
        Self { netns, agent }
    }

    /// Kills every container of this node's agent (a node failure).
    pub fn kill_containers(&self) {
        let state = self.agent.data_dir.join("runc").join("state");
        let Ok(entries) = std::fs::read_dir(&state) else {
            return;
        };
        for entry in entries.flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .output();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_containers();
    }
}
