//! Tier-4 building blocks on one host: hack/ scripts that provide CRIU,
//! runc and the static test-app bundle, and network namespaces standing in
//! for nodes. Needs root; the scripts cache their results.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository, found at run time: the test binary may have been built
/// in another checkout sharing the build cache.
pub fn repo() -> PathBuf {
    // A package directory of the workspace (the test's, at run time), or
    // this crate's (hack/testenv) at build time.
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
        |dir| PathBuf::from(dir).join(".."),
    )
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
/// Its container joins the namespace the runtime gives it (the agent's
/// runc runtime sets one).
pub fn test_app_bundle(bundles: &Path, name: &str, ballast_mib: u64) {
    test_app_bundle_in(bundles, name, ballast_mib, None);
}

/// [`test_app_bundle`] whose container joins `netns`.
pub fn test_app_bundle_in(bundles: &Path, name: &str, ballast_mib: u64, netns: Option<&Netns>) {
    let ballast = ballast_mib.to_string();
    let dir = bundles.join(name);
    let mut args = vec!["--ballast-mib", &ballast, "--id", name];
    let path = netns.map(Netns::path);
    if let Some(path) = &path {
        args.extend(["--netns", path]);
    }
    let dir = dir.to_string_lossy();
    args.push(&dir);
    script("test-app-bundle.sh", &args);
}

/// A network namespace standing in for a node; removed on drop.
#[derive(Debug)]
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
            .unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
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
            .unwrap_or_else(|e| panic!("nsenter --net={}: {e}", self.path()))
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

/// Runs `command` the way a runtime's shim runs runc: stdin, stdout and
/// stderr are pipes (CRIU dumps and restores pipes; a file of the host it
/// could not). A container it starts inherits them and keeps them open, so
/// threads drain them for as long as it lives, and stderr is what arrived
/// by the time `command` exited.
pub fn run_with_pipes(command: &mut Command) -> std::process::Output {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    drop(child.stdin.take());
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    if let Ok(mut sink) = sink.lock() {
                        sink.extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
        seen
    };
    drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"));
    // What it wrote just before it exited.
    std::thread::sleep(Duration::from_millis(100));
    let stderr = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// Annotates the bundle at `bundle` as containerd's CRI plugin does for
/// container `app` of pod `namespace/pod` (UID `uid-<pod>`), naming restore
/// grant `grant` if given (the pod annotation ferry's webhook adds).
pub fn annotate_as_cri(bundle: &Path, namespace: &str, pod: &str, grant: Option<&str>) {
    let config = bundle.join("config.json");
    let bytes =
        std::fs::read(&config).unwrap_or_else(|e| panic!("reading {}: {e}", config.display()));
    let mut spec: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", config.display()));
    let mut annotations = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-uid": format!("uid-{pod}"),
        "io.kubernetes.cri.container-name": "app",
    });
    if let Some(grant) = grant {
        annotations["ferry.dev/restore-grant"] = grant.into();
    }
    spec["annotations"] = annotations;
    std::fs::write(&config, spec.to_string())
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
}
