//! "Nodes" on one host for tier-4 tests, the local demo and the
//! checkpoint/restore benchmark: a network namespace each, with an agent
//! running the `runc` runtime whose containers join that namespace.
//! Needs root; hack/criu.sh and hack/test-app-bundle.sh provide CRIU, runc
//! and the static test-app (cached after their first run).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;

use super::{AgentProcess, Pki};

/// The repository, found at run time: the test binary may have been built
/// in another checkout sharing the build cache.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// Runs a hack/ script; returns the last line it printed.
pub fn script(name: &str, args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(repo().join("hack").join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running hack/{name}: {e}"));
    assert!(
        output.status.success(),
        "hack/{name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The criu binary hack/criu.sh provides.
pub fn criu() -> PathBuf {
    PathBuf::from(script("criu.sh", &[]))
}

/// Writes the test-app bundle `bundles/<name>` with `ballast_mib` of ballast.
pub fn test_app_bundle(bundles: &Path, name: &str, ballast_mib: u64) {
    script(
        "test-app-bundle.sh",
        &[
            "--ballast-mib",
            &ballast_mib.to_string(),
            "--id",
            name,
            bundles.join(name).to_str().unwrap(),
        ],
    );
}

/// A network namespace standing in for a node; removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "delete", name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let netns = Self { name: name.into() };
        assert!(
            netns
                .run(&["ip", "link", "set", "lo", "up"])
                .status
                .success()
        );
        netns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `nsenter --net=` rather than `ip netns exec`, which remounts /sys.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .unwrap()
    }

    /// GET from the test-app in this namespace (port 8080), as JSON.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        self.request("GET", path, None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:8080{path}");
        let mut args = vec!["curl", "-sf", "--max-time", "5", "-X", method, &url];
        if let Some(body) = body {
            args.extend(["-H", "content-type: application/json", "--data", body]);
        }
        let output = self.run(&args);
        if !output.status.success() {
            return None;
        }
        if output.stdout.is_empty() {
            return Some(serde_json::Value::Null);
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits until the test-app answers; returns its state.
    pub fn wait_serving(&self, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(state) = self.get("/state") {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "test-app in {} does not answer",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn nft_tables(&self) -> String {
        String::from_utf8_lossy(&self.run(&["nft", "list", "tables"]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

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
        let netns = Netns::new(&format!("ferry-{name}-{}", std::process::id()));
        let data = dir.join(name);
        let agent = AgentProcess::start(
            pki,
            name,
            &data,
            0,
            &[
                "--runtime=runc",
                &format!("--criu-dir={}", criu.parent().unwrap().display()),
                &format!("--runc-bundles={}", bundles.display()),
                &format!("--runc-netns={}", netns.path()),
            ],
        )
        .await;
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
