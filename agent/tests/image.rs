//! Checkpoint image builder: realistic CRI-O and containerd checkpoint
//! archives, generated here, become OCI layouts and archives that Debian's
//! `skopeo` (a required test tool: `apt-get install -y skopeo`) reads;
//! digests are re-hashed, the layer is the checkpoint, hostile archives are
//! refused, and a 200 MiB archive builds in bounded memory.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_agent::Error;
use ferry_agent::content_hash::ContentHash;
use ferry_agent::image::{
    self, ARCHIVE_FILE, CheckpointImage, LAYOUT_DIR, build_checkpoint_image, keys,
    read_checkpoint_metadata,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const REFERENCE: &str = "localhost/ferry/counter-app:ckpt-1";
const TAG: &str = "ckpt-1";

// ---------------------------------------------------------------------------
// Archive fixtures

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    CriO,
    Containerd,
}

fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap();
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// CRIU's `stats-dump`: image magics, size, protobuf `StatsEntry { dump }`.
fn stats_dump() -> Vec<u8> {
    let mut dump = Vec::new();
    for (field, value) in [
        (1u64, 1200u64),
        (2, 35_000),
        (3, 8_000),
        (4, 21_000),
        (5, 4096),
        (6, 0),
        (7, 3000),
    ] {
        varint(&mut dump, field << 3);
        varint(&mut dump, value);
    }
    varint(&mut dump, 9 << 3); // pages_lazy (varint): a field the reader skips
    varint(&mut dump, 0);
    let mut entry = Vec::new();
    varint(&mut entry, (1 << 3) | 2);
    varint(&mut entry, dump.len() as u64);
    entry.extend_from_slice(&dump);
    let mut out = Vec::new();
    out.extend_from_slice(&0x5510_5940u32.to_le_bytes());
    out.extend_from_slice(&0x5709_3306u32.to_le_bytes());
    out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry);
    out
}

fn config_dump(flavor: Flavor) -> Value {
    json!({
        "id": "7f3c0e5d9a1b4c2d8e6f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d",
        "name": if flavor == Flavor::CriO { "k8s_app_counter-7d9c-x2k1_default_0b7c_0" } else { "app" },
        "rootfsImage": "localhost/ferry/counter:1.0",
        "rootfsImageRef": "sha256:5e1d3c0a9b8f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d",
        "rootfsImageName": "localhost/ferry/counter:1.0",
        "runtime": if flavor == Flavor::CriO { "runc" } else { "io.containerd.runc.v2" },
        "createdTime": "2026-05-01T10:00:00.123456789+02:00",
        "checkpointedTime": "2026-05-01T10:05:00.5Z",
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": false,
    })
}

fn spec_dump(flavor: Flavor) -> Value {
    let annotations = match flavor {
        Flavor::CriO => json!({
            "io.container.manager": "cri-o",
            "io.kubernetes.cri-o.Metadata": "{\"name\":\"app\",\"attempt\":0}",
            "io.kubernetes.cri-o.ContainerName": "k8s_app_counter-7d9c-x2k1_default_0b7c_0",
            "io.kubernetes.container.name": "app",
            "io.kubernetes.pod.name": "counter-7d9c-x2k1",
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.uid": "0b7c1f2e-3d4c-4b5a-9e8d-7c6b5a493827",
        }),
        Flavor::Containerd => json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-id": "9a8b7c6d",
            "io.kubernetes.cri.sandbox-name": "counter-7d9c-x2k1",
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-uid": "0b7c1f2e-3d4c-4b5a-9e8d-7c6b5a493827",
            "io.kubernetes.cri.image-name": "localhost/ferry/counter:1.0",
        }),
    };
    json!({
        "ociVersion": "1.2.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/counter"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "counter-7d9c-x2k1",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": annotations,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
    })
}

const DUMP_LOG: &str = "(00.000000) Version: 4.2.1 (gitid 0)\n\
(00.000011) Running on node-a Linux 6.18.0-1-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.18.3-1 (2026-01-10) x86_64\n\
(00.000020) Loaded kdat cache from /run/criu.kdat\n";

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_777_000_000);
    h
}

fn add_file(tar: &mut tar::Builder<File>, name: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o600, data.len() as u64);
    tar.append_data(&mut h, name, data).unwrap();
}

fn add_dir(tar: &mut tar::Builder<File>, name: &str) {
    let mut h = header(tar::EntryType::Directory, 0o700, 0);
    tar.append_data(&mut h, name, io::empty()).unwrap();
}

/// A member with a raw name the tar crate's safe setters would refuse.
fn add_raw(
    tar: &mut tar::Builder<File>,
    name: &[u8],
    kind: tar::EntryType,
    link: Option<&[u8]>,
    data: &[u8],
) {
    let mut h = header(kind, 0o600, data.len() as u64);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

fn pages(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

fn rootfs_diff() -> Vec<u8> {
    let mut inner = tar::Builder::new(Vec::new());
    let data = b"counter=41\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    inner
        .append_data(&mut h, "data/counter.txt", &data[..])
        .unwrap();
    inner.into_inner().unwrap()
}

/// Which members to leave out or add, for the hostile cases.
#[derive(Default)]
struct Shape {
    without: Vec<&'static str>,
    extra: Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>)>,
}

/// Writes a checkpoint archive the way the runtimes lay it out; returns its sha256.
fn write_archive(path: &Path, flavor: Flavor, shape: &Shape) -> String {
    let mut tar = tar::Builder::new(File::create(path).unwrap());
    let keep = |name: &str| !shape.without.contains(&name);
    if keep("checkpoint/") {
        add_dir(&mut tar, "checkpoint/");
        add_file(
            &mut tar,
            "checkpoint/inventory.img",
            b"\x40\x59\x10\x55\x0c\x3e\x5d\x58inventory",
        );
        add_file(&mut tar, "checkpoint/core-1.img", &pages(2048));
        add_file(&mut tar, "checkpoint/pagemap-1.img", &pages(512));
        add_file(&mut tar, "checkpoint/pages-1.img", &pages(64 << 10));
    }
    if keep("config.dump") {
        add_file(
            &mut tar,
            "config.dump",
            &serde_json::to_vec(&config_dump(flavor)).unwrap(),
        );
    }
    if keep("spec.dump") {
        add_file(
            &mut tar,
            "spec.dump",
            &serde_json::to_vec(&spec_dump(flavor)).unwrap(),
        );
    }
    add_file(&mut tar, "stats-dump", &stats_dump());
    add_file(&mut tar, "dump.log", DUMP_LOG.as_bytes());
    add_file(&mut tar, "rootfs-diff.tar", &rootfs_diff());
    add_file(&mut tar, "deleted.files", b"[\"/tmp/gone\"]");
    match flavor {
        Flavor::CriO => {
            add_file(&mut tar, "network.status", b"[]");
            add_file(
                &mut tar,
                "bind.mounts",
                br#"[{"destination":"/etc/hostname","type":"file","permissions":420}]"#,
            );
            add_file(
                &mut tar,
                "io.kubernetes.cri-o.LogPath",
                b"2026-05-01T10:04:59Z stdout F count 41\n",
            );
        }
        Flavor::Containerd => {
            let status = json!({
                "id": "7f3c0e5d",
                "metadata": {"name": "app", "attempt": 0},
                "labels": {"io.kubernetes.pod.name": "counter-7d9c-x2k1", "io.kubernetes.pod.namespace": "default"},
            });
            add_file(
                &mut tar,
                "status.dump",
                &serde_json::to_vec(&status).unwrap(),
            );
            add_file(&mut tar, "container.log", b"count 41\n");
        }
    }
    for (name, kind, link) in &shape.extra {
        add_raw(&mut tar, name, *kind, link.as_deref(), b"");
    }
    tar.into_inner().unwrap().sync_all().unwrap();
    sha256_file(path)
}

struct Fixture {
    dir: tempfile::TempDir,
    archive: PathBuf,
    id: String,
}

fn fixture(flavor: Flavor, mode: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir
        .path()
        .join("checkpoint-counter-7d9c-x2k1_default-app-2026-05-01T10:05:00Z.tar");
    let id = write_archive(&archive, flavor, &Shape::default());
    fs::set_permissions(&archive, fs::Permissions::from_mode(mode)).unwrap();
    Fixture { dir, archive, id }
}

fn build(fx: &Fixture, also_archive: bool) -> CheckpointImage {
    let out = fx.dir.path().join("images").join(&fx.id);
    build_checkpoint_image(&fx.archive, &fx.id, REFERENCE, &out, also_archive).unwrap()
}

// ---------------------------------------------------------------------------
// skopeo

fn skopeo(args: &[&str]) -> Vec<u8> {
    let output = match Command::new("skopeo").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "skopeo is not installed; these tests check images with it. \
             Install the Debian package: apt-get install -y skopeo"
        ),
        Err(e) => panic!("running skopeo {args:?}: {e}"),
    };
    assert!(
        output.status.success(),
        "skopeo {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_slice(&skopeo(args)).unwrap()
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn manifest_annotations(img: &CheckpointImage) -> Value {
    serde_json::to_value(&img.annotations).unwrap()
}

fn assert_checkpoint_annotations(manifest: &Value, id: &str) {
    let annotations = &manifest["annotations"];
    let expect = [
        (keys::CRIO_CHECKPOINT_NAME, "app"),
        (keys::CONTAINER_NAME, "app"),
        (keys::POD_NAME, "counter-7d9c-x2k1"),
        (keys::POD_NAMESPACE, "default"),
        (keys::POD_ID, "0b7c1f2e-3d4c-4b5a-9e8d-7c6b5a493827"),
        (keys::ENGINE_NAME, "CRI-O"),
        (keys::RUNTIME_NAME, "runc"),
        (keys::ROOTFS_IMAGE_NAME, "localhost/ferry/counter:1.0"),
        (
            keys::ROOTFS_IMAGE_USER_REQUESTED,
            "localhost/ferry/counter:1.0",
        ),
        (
            keys::ROOTFS_IMAGE_ID,
            "sha256:5e1d3c0a9b8f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d",
        ),
        (keys::CRIO_ROOTFS_IMAGE_NAME, "localhost/ferry/counter:1.0"),
        (keys::CRIU_VERSION, "4.2.1"),
        (keys::CRIO_CRIU_VERSION, "4.2.1"),
        (keys::HOST_KERNEL, "6.18.0-1-amd64"),
        (keys::HOST_ARCH, "x86_64"),
        (keys::CREATED, "2026-05-01T10:05:00.5Z"),
    ];
    for (key, value) in expect {
        assert_eq!(
            annotations[key], value,
            "annotation {key} in {annotations:#}"
        );
    }
    assert_eq!(
        annotations[keys::FERRY_ARCHIVE_DIGEST],
        format!("sha256:{id}")
    );
    assert!(
        annotations[keys::FERRY_BUILDER]
            .as_str()
            .unwrap()
            .starts_with("ferry-agent/")
    );
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn skopeo_reads_the_layout_and_the_archive() {
    let fx = fixture(Flavor::CriO, 0o600);
    let img = build(&fx, true);
    assert_eq!(img.reference, REFERENCE);
    assert_eq!(img.tag, TAG);
    assert_eq!(img.layer_digest, format!("sha256:{}", fx.id));
    let layout = format!("oci:{}:{TAG}", img.layout_dir.display());
    let archive_path = img.archive_path.clone().unwrap();
    let archive = format!("oci-archive:{}", archive_path.display());
    let archive_tagged = format!("{archive}:{TAG}");

    for source in [&layout, &archive, &archive_tagged] {
        // The manifest, byte for byte: annotations, one uncompressed layer, the digest.
        let raw = skopeo(&["inspect", "--raw", source]);
        assert_eq!(digest_of(&raw), img.manifest_digest, "{source}");
        let manifest: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(manifest["mediaType"], image::MEDIA_TYPE_MANIFEST);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{source}: {manifest:#}");
        assert_eq!(layers[0]["digest"], img.layer_digest);
        assert_eq!(layers[0]["mediaType"], image::MEDIA_TYPE_LAYER_TAR);
        assert_eq!(layers[0]["size"], fs::metadata(&fx.archive).unwrap().len());
        assert_eq!(manifest["config"]["digest"], img.config_digest);
        assert_checkpoint_annotations(&manifest, &fx.id);
        assert_eq!(
            serde_json::to_value(&img.annotations).unwrap(),
            manifest["annotations"]
        );

        // skopeo's own view of the image.
        let seen = skopeo_json(&["inspect", source]);
        assert_eq!(seen["Digest"], img.manifest_digest, "{source}");
        assert_eq!(seen["Layers"], json!([img.layer_digest]));
        assert_eq!(seen["Architecture"], "amd64");
        assert_eq!(seen["Os"], "linux");
        assert_eq!(seen["Created"], "2026-05-01T10:05:00.5Z");

        let config = skopeo_json(&["inspect", "--config", "--raw", source]);
        assert_eq!(config["rootfs"]["diff_ids"], json!([img.layer_digest]));
        assert_eq!(config["rootfs"]["type"], "layers");
    }

    // A full copy makes containers/image verify every blob against its digest.
    let copied = fx.dir.path().join("copied");
    skopeo(&[
        "copy",
        "--quiet",
        "--insecure-policy",
        &layout,
        &format!("dir:{}", copied.display()),
    ]);
    assert_eq!(sha256_file(&copied.join(&fx.id)), fx.id);
    skopeo(&[
        "copy",
        "--quiet",
        "--insecure-policy",
        &archive,
        &format!("oci:{}:copy", fx.dir.path().join("relayout").display()),
    ]);
}

#[test]
fn every_blob_matches_its_digest_and_files_are_private() {
    let fx = fixture(Flavor::CriO, 0o600);
    let img = build(&fx, true);
    let out = img.layout_dir.parent().unwrap().to_path_buf();

    let blobs = img.layout_dir.join("blobs/sha256");
    let mut names = Vec::new();
    for entry in fs::read_dir(&blobs).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(
            sha256_file(&entry.path()),
            name,
            "blob {name} does not hash to its name"
        );
        names.push(format!("sha256:{name}"));
    }
    names.sort();
    let mut expected = vec![
        img.manifest_digest.clone(),
        img.config_digest.clone(),
        img.layer_digest.clone(),
    ];
    expected.sort();
    assert_eq!(names, expected);

    // index.json -> manifest -> config and layer, sizes included.
    let index: Value =
        serde_json::from_slice(&fs::read(img.layout_dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["digest"], img.manifest_digest);
    assert_eq!(entry["annotations"][keys::REF_NAME], TAG);
    assert_eq!(entry["annotations"][keys::CONTAINERD_IMAGE_NAME], REFERENCE);
    assert_eq!(index["annotations"], manifest_annotations(&img));
    let blob = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    assert_eq!(
        entry["size"],
        fs::metadata(blob(&img.manifest_digest)).unwrap().len()
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(blob(&img.manifest_digest)).unwrap()).unwrap();
    assert_eq!(
        manifest["config"]["size"],
        fs::metadata(blob(&img.config_digest)).unwrap().len()
    );
    assert_eq!(
        fs::read_to_string(img.layout_dir.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );

    // The archive holds the same files.
    let mut archived = Vec::new();
    let mut tar = tar::Archive::new(File::open(img.archive_path.as_ref().unwrap()).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_file() {
            let mut hasher = Sha256::new();
            io::copy(&mut entry, &mut hasher).unwrap();
            let local = img.layout_dir.join(&name);
            assert_eq!(
                hex::encode(hasher.finalize()),
                sha256_file(&local),
                "{name}"
            );
        }
        archived.push(name);
    }
    for name in ["oci-layout", "index.json"] {
        assert!(
            archived.iter().any(|n| n == name),
            "{name} missing from {archived:?}"
        );
    }

    // 0600 files, 0700 directories, all the way down.
    fn walk(path: &Path) {
        let meta = fs::symlink_metadata(path).unwrap();
        let mode = meta.mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for entry in fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path());
            }
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    walk(&out);

    // Nothing half-built is left next to it.
    let siblings: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, vec![out.file_name().unwrap().to_owned()]);
}

#[test]
fn the_layer_is_the_checkpoint() {
    let fx = fixture(Flavor::CriO, 0o644);
    let img = build(&fx, false);
    assert_eq!(img.archive_path, None);
    assert!(!img.layout_dir.parent().unwrap().join(ARCHIVE_FILE).exists());
    let layer = img
        .layout_dir
        .join("blobs/sha256")
        .join(img.layer_digest.trim_start_matches("sha256:"));
    let mut tar = tar::Archive::new(File::open(&layer).unwrap());
    let mut members = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "checkpoint/pages-1.img" {
            let mut pages_read = Vec::new();
            entry.read_to_end(&mut pages_read).unwrap();
            assert_eq!(pages_read, pages(64 << 10));
        }
        members.push(name);
    }
    for expected in [
        "checkpoint/",
        "checkpoint/inventory.img",
        "checkpoint/pages-1.img",
        "checkpoint/pagemap-1.img",
        "config.dump",
        "spec.dump",
        "stats-dump",
        "rootfs-diff.tar",
        "deleted.files",
        "bind.mounts",
        "io.kubernetes.cri-o.LogPath",
    ] {
        assert!(
            members.iter().any(|m| m == expected),
            "{expected} not in layer: {members:?}"
        );
    }
}

#[test]
fn private_archives_are_linked_others_copied() {
    let private = fixture(Flavor::CriO, 0o600);
    let img = build(&private, false);
    let layer = |img: &CheckpointImage| {
        img.layout_dir
            .join("blobs/sha256")
            .join(img.layer_digest.trim_start_matches("sha256:"))
    };
    assert_eq!(
        fs::metadata(layer(&img)).unwrap().ino(),
        fs::metadata(&private.archive).unwrap().ino(),
        "a private archive on the same file system should be hard-linked, not copied"
    );

    let shared = fixture(Flavor::CriO, 0o644);
    let img = build(&shared, false);
    let meta = fs::metadata(layer(&img)).unwrap();
    assert_ne!(meta.ino(), fs::metadata(&shared.archive).unwrap().ino());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&shared.archive).unwrap().mode() & 0o777,
        0o644,
        "source untouched"
    );
}

#[test]
fn metadata_of_a_crio_checkpoint() {
    let fx = fixture(Flavor::CriO, 0o600);
    let meta = read_checkpoint_metadata(&fx.archive).unwrap();
    assert_eq!(meta.container_name, "app");
    assert_eq!(meta.pod_name.as_deref(), Some("counter-7d9c-x2k1"));
    assert_eq!(meta.pod_namespace.as_deref(), Some("default"));
    assert_eq!(
        meta.pod_uid.as_deref(),
        Some("0b7c1f2e-3d4c-4b5a-9e8d-7c6b5a493827")
    );
    assert_eq!(meta.engine.as_deref(), Some("CRI-O"));
    assert_eq!(meta.runtime.as_deref(), Some("runc"));
    assert_eq!(
        meta.container_id.as_deref(),
        Some("7f3c0e5d9a1b4c2d8e6f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d")
    );
    assert_eq!(
        meta.rootfs_image_name.as_deref(),
        Some("localhost/ferry/counter:1.0")
    );
    assert_eq!(
        meta.checkpointed_at.unwrap().to_string(),
        "2026-05-01T10:05:00.5Z"
    );
    assert_eq!(
        meta.created_at.unwrap().to_string(),
        "2026-05-01T08:00:00.123456789Z"
    );
    assert_eq!(meta.criu_version.as_deref(), Some("4.2.1"));
    assert_eq!(meta.host_kernel.as_deref(), Some("6.18.0-1-amd64"));
    assert_eq!(meta.host_machine.as_deref(), Some("x86_64"));
    let stats = meta.dump_stats.unwrap();
    assert_eq!(
        (
            stats.freezing_time_us,
            stats.frozen_time_us,
            stats.memdump_time_us,
            stats.memwrite_time_us
        ),
        (1200, 35_000, 8_000, 21_000)
    );
    assert_eq!(
        (
            stats.pages_scanned,
            stats.pages_skipped_parent,
            stats.pages_written
        ),
        (4096, 0, 3000)
    );
    assert_eq!(meta.checkpoint_bytes, 17 + 2048 + 512 + (64 << 10));
    assert_eq!(meta.rootfs_diff_bytes, Some(rootfs_diff().len() as u64));
    assert_eq!(meta.archive_bytes, fs::metadata(&fx.archive).unwrap().len());
}

#[test]
fn metadata_of_a_containerd_checkpoint() {
    let fx = fixture(Flavor::Containerd, 0o600);
    let meta = read_checkpoint_metadata(&fx.archive).unwrap();
    assert_eq!(meta.container_name, "app");
    assert_eq!(meta.engine.as_deref(), Some("containerd"));
    assert_eq!(meta.pod_name.as_deref(), Some("counter-7d9c-x2k1"));
    assert_eq!(meta.pod_namespace.as_deref(), Some("default"));
    assert_eq!(meta.runtime.as_deref(), Some("io.containerd.runc.v2"));

    let img = build(&fx, false);
    assert_eq!(img.annotations[keys::CONTAINER_NAME], "app");
    assert_eq!(img.annotations[keys::CRIO_CHECKPOINT_NAME], "app");
    assert_eq!(img.annotations[keys::ENGINE_NAME], "containerd");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:{TAG}", img.layout_dir.display()),
    ]);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["annotations"][keys::CONTAINER_NAME], "app");
}

fn refused(shape: Shape, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bad.tar");
    let id = write_archive(&archive, Flavor::CriO, &shape);
    let out = dir.path().join("images").join("bad");
    let err = build_checkpoint_image(&archive, &id, REFERENCE, &out, true).unwrap_err();
    match &err {
        Error::CheckpointImage { archive, message } => {
            assert_eq!(archive, &id, "the error names the archive");
            for word in expect {
                assert!(
                    message.contains(word),
                    "{message:?} should mention {word:?}"
                );
            }
        }
        other => panic!("expected a checkpoint image error, got {other:?}"),
    }
    assert!(err.to_string().contains(&id), "{err}");
    assert!(!out.exists(), "a refused archive must not leave an image");
    let leftovers: Vec<_> =
        fs::read_dir(dir.path().join("images")).map_or(Vec::new(), |d| d.collect());
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // The metadata reader refuses it the same way.
    assert!(read_checkpoint_metadata(&archive).is_err());
}

#[test]
fn archives_without_metadata_or_images_are_refused() {
    refused(
        Shape {
            without: vec!["config.dump"],
            ..Shape::default()
        },
        &["config.dump"],
    );
    refused(
        Shape {
            without: vec!["spec.dump"],
            ..Shape::default()
        },
        &["spec.dump"],
    );
    refused(
        Shape {
            without: vec!["checkpoint/"],
            ..Shape::default()
        },
        &["checkpoint/"],
    );
}

#[test]
fn hostile_members_are_refused_by_name() {
    let extra = |name: &[u8], kind, link: Option<&[u8]>| Shape {
        extra: vec![(name.to_vec(), kind, link.map(<[u8]>::to_vec))],
        ..Shape::default()
    };
    refused(
        extra(b"../evil", tar::EntryType::Regular, None),
        &["\"../evil\"", ".."],
    );
    refused(
        extra(
            b"checkpoint/../../etc/cron.d/x",
            tar::EntryType::Regular,
            None,
        ),
        &["checkpoint/../../etc/cron.d/x"],
    );
    refused(
        extra(b"/etc/passwd", tar::EntryType::Regular, None),
        &["\"/etc/passwd\"", "absolute"],
    );
    refused(
        extra(
            b"checkpoint/link",
            tar::EntryType::Symlink,
            Some(b"../../../root"),
        ),
        &["checkpoint/link", "symbolic link"],
    );
    refused(
        extra(
            b"checkpoint/hard",
            tar::EntryType::Link,
            Some(b"/etc/shadow"),
        ),
        &["checkpoint/hard", "hard link"],
    );
    refused(
        extra(b"dev/sda", tar::EntryType::Block, None),
        &["dev/sda", "device"],
    );
    refused(
        extra(b"config.dump", tar::EntryType::Regular, None),
        &["config.dump", "twice"],
    );
}

#[test]
fn compressed_truncated_and_garbage_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let id = "0".repeat(64);
    for (name, bytes, word) in [
        ("gz.tar", vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0], "gzip"),
        ("zst.tar", vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3], "zstd"),
        ("short.tar", b"hello".to_vec(), "not a tar"),
        ("garbage.tar", vec![0x41; 4096], "tar"),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let err = build_checkpoint_image(&path, &id, REFERENCE, &dir.path().join("out"), false)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::CheckpointImage { .. }),
            "{name}: {err:?}"
        );
        assert!(text.contains(word), "{name}: {text}");
    }
}

#[test]
fn archives_named_by_blake3_become_images_whose_layer_is_named_by_sha256() {
    // OCI and the runtimes name blobs by sha256; the store names archives by
    // BLAKE3. The build verifies the one and computes the other in one pass.
    let fx = fixture(Flavor::CriO, 0o600);
    let blake3_id = ContentHash::Blake3.id_of_bytes(&fs::read(&fx.archive).unwrap());
    let out = fx.dir.path().join("blake3");
    let img = build_checkpoint_image(&fx.archive, &blake3_id, REFERENCE, &out, true).unwrap();
    assert_eq!(img.layer_digest, format!("sha256:{}", fx.id));
    assert_eq!(
        img.annotations[keys::FERRY_ARCHIVE_DIGEST],
        format!("blake3:{}", blake3_id.trim_start_matches("blake3-"))
    );
    let layer = img.layout_dir.join("blobs/sha256").join(&fx.id);
    assert_eq!(sha256_file(&layer), fx.id);
    let copied = fx.dir.path().join("blake3-copied");
    skopeo(&[
        "copy",
        "--quiet",
        "--insecure-policy",
        &format!("oci:{}:{TAG}", img.layout_dir.display()),
        &format!("dir:{}", copied.display()),
    ]);
    assert_eq!(sha256_file(&copied.join(&fx.id)), fx.id);

    // A BLAKE3 id of other bytes is refused, naming the bytes' own.
    let wrong = format!("blake3-{}", "e".repeat(64));
    let refused = fx.dir.path().join("refused");
    match build_checkpoint_image(&fx.archive, &wrong, REFERENCE, &refused, false) {
        Err(Error::HashMismatch { id, actual }) => {
            assert_eq!(id, wrong);
            assert_eq!(actual, blake3_id);
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(!refused.exists());
}

#[test]
fn wrong_archive_id_and_bad_references_are_refused() {
    let fx = fixture(Flavor::CriO, 0o600);
    let out = fx.dir.path().join("out");
    let wrong = "f".repeat(64);
    match build_checkpoint_image(&fx.archive, &wrong, REFERENCE, &out, false) {
        Err(Error::HashMismatch { id, actual }) => {
            assert_eq!(id, wrong);
            assert_eq!(actual, fx.id);
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(!out.exists());
    assert!(matches!(
        build_checkpoint_image(&fx.archive, "../x", REFERENCE, &out, false),
        Err(Error::InvalidName { .. })
    ));
    for reference in [
        "",
        "Localhost/UPPER:x",
        "a/b@sha256:abc",
        "a/b:bad tag",
        "a//b:x",
    ] {
        match build_checkpoint_image(&fx.archive, &fx.id, reference, &out, false) {
            Err(Error::InvalidName { field, .. }) => assert_eq!(field, "image reference"),
            other => panic!("{reference:?}: expected an invalid name, got {other:?}"),
        }
    }
    assert!(!out.exists());
}

#[test]
fn rebuilding_is_deterministic_and_replaces_the_image() {
    let fx = fixture(Flavor::CriO, 0o644);
    let out = fx.dir.path().join("images").join("counter");
    let first = build_checkpoint_image(&fx.archive, &fx.id, REFERENCE, &out, false).unwrap();
    let again = build_checkpoint_image(&fx.archive, &fx.id, REFERENCE, &out, true).unwrap();
    assert_eq!(
        first.manifest_digest, again.manifest_digest,
        "same archive, same image"
    );
    assert!(again.archive_path.as_ref().unwrap().exists());

    let other =
        build_checkpoint_image(&fx.archive, &fx.id, "localhost/ferry/other:v2", &out, false)
            .unwrap();
    assert_eq!(
        other.manifest_digest, first.manifest_digest,
        "the tag lives in index.json"
    );
    assert!(
        !out.join(ARCHIVE_FILE).exists(),
        "the previous image was replaced as a whole"
    );
    let index = fs::read_to_string(out.join(LAYOUT_DIR).join("index.json")).unwrap();
    assert!(index.contains("localhost/ferry/other:v2"), "{index}");
    skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:v2", other.layout_dir.display()),
    ]);

    // A crashed build's staging directory is found and removed.
    let parent = out.parent().unwrap();
    fs::create_dir(parent.join(".counter.building-99-0")).unwrap();
    assert_eq!(image::remove_partial_images(parent).unwrap(), 1);
    let names: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("counter")]);
}

/// Generates `len` bytes of page-like data without holding them.
struct Pages {
    left: u64,
    state: u64,
}

impl Read for Pages {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn proc_status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_200_mib_archive_builds_in_bounded_memory() {
    const PAGES: u64 = 200 << 20;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("big.tar");
    {
        let mut tar = tar::Builder::new(File::create(&archive).unwrap());
        add_dir(&mut tar, "checkpoint/");
        add_file(&mut tar, "checkpoint/inventory.img", b"inventory");
        let mut h = header(tar::EntryType::Regular, 0o600, PAGES);
        tar.append_data(
            &mut h,
            "checkpoint/pages-1.img",
            Pages {
                left: PAGES,
                state: 0x9e37_79b9_7f4a_7c15,
            },
        )
        .unwrap();
        add_file(
            &mut tar,
            "config.dump",
            &serde_json::to_vec(&config_dump(Flavor::CriO)).unwrap(),
        );
        add_file(
            &mut tar,
            "spec.dump",
            &serde_json::to_vec(&spec_dump(Flavor::CriO)).unwrap(),
        );
        add_file(&mut tar, "stats-dump", &stats_dump());
        tar.into_inner().unwrap().sync_all().unwrap();
    }
    // 0644: the layer is copied, not linked, so the bytes really flow through.
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    let id = sha256_file(&archive);
    let size = fs::metadata(&archive).unwrap().len();

    // Reset the peak (VmHWM) to the current RSS, then build.
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = proc_status_kib("VmRSS:");
    let out = dir.path().join("image");
    let img = build_checkpoint_image(&archive, &id, REFERENCE, &out, true).unwrap();
    let peak = proc_status_kib("VmHWM:");
    let grown_mib = peak.saturating_sub(before) / 1024;

    assert_eq!(img.layer_size, size);
    assert_eq!(img.layer_digest, format!("sha256:{id}"));
    assert!(img.archive_path.as_ref().unwrap().metadata().unwrap().len() > size);
    assert_eq!(img.metadata.checkpoint_bytes, PAGES + 9);
    eprintln!(
        "200 MiB archive: peak RSS grew {grown_mib} MiB during the build (RSS before {} MiB)",
        before / 1024
    );
    assert!(
        grown_mib < 32,
        "building a {} MiB archive grew peak RSS by {grown_mib} MiB; memory must not follow archive size",
        size >> 20
    );
}

#[test]
fn containers_storage_keeps_the_manifest_and_unpacks_the_checkpoint() {
    // What CRI-O sees: the image copied into a containers-storage store (here
    // a private vfs store in a temp dir), whose manifest annotations CRI-O's
    // image status reports and whose root file system it mounts to restore.
    let fx = fixture(Flavor::CriO, 0o600);
    let img = build(&fx, true);
    let store = fx.dir.path().join("storage");
    let dest = format!(
        "containers-storage:[vfs@{}+{}]{REFERENCE}",
        store.join("root").display(),
        store.join("run").display()
    );
    let archive = format!(
        "oci-archive:{}",
        img.archive_path.as_ref().unwrap().display()
    );
    skopeo(&["copy", "--quiet", "--insecure-policy", &archive, &dest]);
    let raw = skopeo(&["inspect", "--raw", &dest]);
    assert_eq!(
        digest_of(&raw),
        img.manifest_digest,
        "containers-storage rewrote the manifest"
    );
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["annotations"][keys::CRIO_CHECKPOINT_NAME], "app");
    let rootfs = store.join("root/vfs/dir").join(&fx.id);
    for member in [
        "config.dump",
        "spec.dump",
        "checkpoint/pages-1.img",
        "rootfs-diff.tar",
    ] {
        assert!(
            rootfs.join(member).is_file(),
            "{member} not at the image root {}",
            rootfs.display()
        );
    }
}
