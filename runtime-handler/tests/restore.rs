//! Tier 4: ferry-runc with real runc and CRIU, called the way containerd's
//! runc shim calls its `BinaryName` (create, then start). A test-app is
//! checkpointed with `runc checkpoint`, its images become a restore grant,
//! and:
//! - the container the grant is for is restored (counter and ballast as
//!   they were) and the grant is gone;
//! - the same grant again, a forged grant, and the grant asked for from
//!   another namespace are refused: nothing runs, the shim's log says why,
//!   and the grant stays for its own container;
//! - a container that names no grant starts fresh, as with runc.
//!
//! Needs root. hack/criu.sh (CRIU, runc) and hack/test-app-bundle.sh run
//! from here; both are cached after their first run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_runc::grant::Grant;
use ferry_testenv::netns::{Netns, annotate_as_cri, criu, run_with_pipes, test_app_bundle_in};

const RUNC: &str = "/usr/sbin/runc";

struct Host {
    dir: tempfile::TempDir,
    netns: Netns,
    criu: PathBuf,
}

impl Host {
    fn root(&self) -> PathBuf {
        self.dir.path().join("runc-root")
    }

    fn grants(&self) -> PathBuf {
        self.dir.path().join("grants")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log.json")
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.criu.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// A bundle of the test-app in this host's namespace, annotated as
    /// containerd's CRI plugin would for container `app` of pod
    /// `namespace/pod`, with `grant` if given.
    fn bundle(&self, name: &str, namespace: &str, grant: Option<&str>) -> PathBuf {
        let bundles = self.dir.path().join("bundles");
        std::fs::create_dir_all(&bundles).unwrap();
        test_app_bundle_in(&bundles, name, 8, Some(&self.netns));
        let path = bundles.join(name);
        annotate_as_cri(&path, namespace, &format!("{name}-pod"), grant);
        path
    }

    fn runc(&self, args: &[&str]) -> Output {
        Command::new(RUNC)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// ferry-runc as the shim calls it, stdio pipes included.
    fn wrapper(&self, args: &[&str]) -> Output {
        let config = self.dir.path().join("ferry-runc.json");
        std::fs::write(
            &config,
            serde_json::json!({"runc": RUNC, "grants": self.grants()}).to_string(),
        )
        .unwrap();
        run_with_pipes(
            Command::new(env!("CARGO_BIN_EXE_ferry-runc"))
                .arg("--root")
                .arg(self.root())
                .arg("--log")
                .arg(self.log())
                .args(["--log-format", "json"])
                .args(args)
                .env("FERRY_RUNC_CONFIG", &config)
                .env("PATH", self.path_env()),
        )
    }

    /// create + start through ferry-runc.
    fn start(&self, bundle: &Path, id: &str) -> Result<(), String> {
        let pid_file = bundle.join("init.pid");
        let created = self.wrapper(&[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        if !created.status.success() {
            return Err(String::from_utf8_lossy(&created.stderr).into_owned());
        }
        assert!(pid_file.exists(), "the shim reads the pid file");
        let started = self.wrapper(&["start", id]);
        assert!(
            started.status.success(),
            "start of {id}: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        Ok(())
    }

    /// Checkpoints container `id` (which stops it) into a new grant for
    /// container `app` in `namespace`; returns the grant's name.
    fn grant_from(&self, id: &str, name: &str, namespace: &str) -> String {
        let dir = self.grants().join(name);
        let work = self.dir.path().join(format!("checkpoint-work-{name}"));
        let out = self.runc(&[
            "checkpoint",
            "--image-path",
            dir.join("checkpoint").to_str().unwrap(),
            "--work-path",
            work.to_str().unwrap(),
            id,
        ]);
        assert!(
            out.status.success(),
            "runc checkpoint: {out:?}\n{}",
            std::fs::read_to_string(work.join("dump.log")).unwrap_or_default()
        );
        let grant = Grant {
            namespace: namespace.into(),
            container: "app".into(),
            archive: format!("archive-of-{id}"),
            pod_uid: None,
        };
        std::fs::write(dir.join("grant.json"), serde_json::to_vec(&grant).unwrap()).unwrap();
        let _ = self.runc(&["delete", "--force", id]);
        name.to_owned()
    }

    fn last_log_line(&self) -> String {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    fn counter(&self) -> Option<u64> {
        self.netns.get("/state")?["counter"].as_u64()
    }

    fn exists(&self, id: &str) -> bool {
        self.runc(&["state", id]).status.success()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(list) = std::fs::read_dir(self.root()) {
            for entry in list.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                let _ = self.runc(&["delete", "--force", &id]);
            }
        }
    }
}

#[test]
fn only_the_granted_container_is_restored() {
    let host = Host {
        dir: tempfile::tempdir().unwrap(),
        netns: Netns::new(&format!("ferry-runc-{}", std::process::id())),
        criu: criu(),
    };
    std::fs::create_dir_all(host.grants()).unwrap();

    // A container that names no grant starts fresh through ferry-runc.
    let fresh = host.bundle("fresh", "shop", None);
    host.start(&fresh, "fresh")
        .expect("a plain container starts");
    host.netns.wait_serving(Duration::from_secs(30));
    host.netns
        .request("PUT", "/state", Some(r#"{"counter": 4242}"#))
        .expect("PUT /state");
    let grant = host.grant_from("fresh", "0123456789abcdef0123456789abcdef", "shop");
    assert!(host.counter().is_none(), "the checkpoint stopped it");

    // Another namespace naming the grant: refused, the grant stays.
    let intruder = host.bundle("intruder", "bank", Some(&grant));
    let refused = host.start(&intruder, "intruder").unwrap_err();
    assert!(
        refused.contains(
            "is for container app in namespace shop, not for container app of pod bank/intruder-pod"
        ),
        "{refused}"
    );
    assert!(
        host.last_log_line().contains("\"level\":\"error\""),
        "{}",
        host.last_log_line()
    );
    assert!(!host.exists("intruder"), "nothing runs");
    assert!(host.counter().is_none(), "nothing answers");
    assert!(
        host.grants().join(&grant).join("grant.json").exists(),
        "the grant stays"
    );

    // A forged grant: refused.
    let forged = host.bundle("forged", "shop", Some("ffffffffffffffffffffffffffffffff"));
    let refused = host.start(&forged, "forged").unwrap_err();
    assert!(refused.contains("unknown or was used already"), "{refused}");
    assert!(!host.exists("forged"));

    // The container it is for: restored, counter and ballast as they were.
    let own = host.bundle("own", "shop", Some(&grant));
    host.start(&own, "own")
        .expect("the granted container restores");
    let verified = host.netns.get("/verify").expect("the restored app answers");
    assert!(verified["counter"].as_u64().unwrap() >= 4242, "{verified}");
    assert_eq!(verified["ballast_ok"], true, "{verified}");
    let state: serde_json::Value =
        serde_json::from_slice(&host.runc(&["state", "own"]).stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    assert!(
        std::fs::read_dir(host.grants().join("claimed"))
            .unwrap()
            .next()
            .is_none()
            && !host.grants().join(&grant).exists(),
        "a used grant (a copy of a process's memory) is deleted"
    );

    // The same grant again (a restart, a copy of the pod): refused.
    let _ = host.runc(&["delete", "--force", "own"]);
    let again = host.bundle("again", "shop", Some(&grant));
    let refused = host.start(&again, "again").unwrap_err();
    assert!(refused.contains("unknown or was used already"), "{refused}");
    assert!(!host.exists("again"));
    assert!(host.counter().is_none());
}

/// What the checkpointed container changed in its rootfs comes back, its
/// deletions too, and a symlink in the rootfs cannot lead the unpacking
/// outside it (the tar is the tenant's).
#[test]
fn a_rootfs_diff_is_applied_inside_the_rootfs_only() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    std::fs::write(rootfs.join("data").join("gone"), "deleted by the app").unwrap();
    // An absolute symlink to a host directory, as a tenant could plant it.
    std::os::unix::fs::symlink(&outside, rootfs.join("escape")).unwrap();

    let apply = |name: &str, entries: &[(&str, &[u8])]| {
        let tar_path = dir.path().join(name);
        let mut tar = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        for (path, body) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, *body).unwrap();
        }
        tar.into_inner().unwrap();
        Command::new(env!("CARGO_BIN_EXE_ferry-runc"))
            .arg(ferry_runc::diff::CHILD_COMMAND)
            .arg(&rootfs)
            .arg(&tar_path)
            .output()
            .unwrap()
    };
    let out = apply(
        "rootfs-diff.tar",
        &[("data/written", b"by the app"), ("data/.wh.gone", b"")],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data").join("written")).unwrap(),
        "by the app"
    );
    assert!(
        !rootfs.join("data").join("gone").exists(),
        "the whiteout deletes"
    );

    // containerd's rootfs-diff.tar is gzip-compressed: applied the same.
    let gz_path = dir.path().join("gz.tar");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&gz_path).unwrap(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "data/zipped", &b"gzip"[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-runc"))
        .arg(ferry_runc::diff::CHILD_COMMAND)
        .arg(&rootfs)
        .arg(&gz_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/zipped")).unwrap(),
        "gzip"
    );

    // Through the symlink: inside the chroot it leads to a path the rootfs
    // does not have, so the diff is refused, naming the entry.
    let out = apply(
        "escape.tar",
        &[("escape/planted", b"must not reach the host")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unpack escape/planted"), "{stderr}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing was written outside the rootfs"
    );
}
