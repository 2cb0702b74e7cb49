//! Checkpoint images: OCI images that CRI-O and containerd restore from.
//!
//! A container checkpoint archive, as the kubelet's checkpoint API leaves it
//! under `/var/lib/kubelet/checkpoints/`, is an uncompressed tar holding
//! `checkpoint/` (CRIU's image files), `config.dump` (JSON: `id`, `name`,
//! `rootfsImage`, `rootfsImageRef`, `rootfsImageName`, `runtime`,
//! `createdTime`, `checkpointedTime`, `restoredTime`, `restored`),
//! `spec.dump` (the container's OCI runtime spec, whose `annotations` name
//! the container and pod), usually `stats-dump` (CRIU's dump statistics,
//! protobuf) and `dump.log` (CRIU's log), and depending on the runtime
//! `rootfs-diff.tar`, `deleted.files`, `network.status`, `bind.mounts`,
//! `io.kubernetes.cri-o.LogPath` (CRI-O) or `status.dump`, `status`,
//! `container.log` (containerd).
//!
//! [`build_checkpoint_image`] turns such an archive into a *checkpoint
//! image*: an OCI image with a single layer whose content is the archive's
//! content at the root of the file system, the layout `buildah add <archive>
//! /` and `podman container checkpoint --create-image` produce. Restoring
//! runtimes mount that image and read `config.dump`, `spec.dump` and
//! `checkpoint/` from its root.
//!
//! # What the runtimes read
//!
//! A runtime treats an image as a checkpoint only if the *image manifest*
//! carries its marker annotation; both markers are always set, to the
//! container's name. All annotations are also on `index.json` itself, for an
//! image imported with `ctr images import --index-name`, which targets the
//! index (containerd `client/import.go`).
//!
//! | annotation | read by | where (verified in the runtime's source) |
//! |---|---|---|
//! | `io.kubernetes.cri-o.annotations.checkpoint.name` | CRI-O | `server/container_restore.go` `checkIfCheckpointOCIImage` looks the key (`internal/annotations/checkpoint.go`) up in the image status annotations, which `internal/storage/image.go` fills from the OCI manifest's `annotations` |
//! | `org.criu.checkpoint.container.name` | containerd 2.x CRI | `internal/cri/server/container_checkpoint_linux.go` `checkIfCheckpointOCIImage` reads the blob the image's target points at and looks the key (checkpointctl `lib/annotations.go` `CheckpointAnnotationName`) up in its `annotations`; after `ctr images import` the target is the manifest listed in `index.json` |
//! | `io.containerd.image.name`, `org.opencontainers.image.ref.name` (on the `index.json` entry) | `ctr images import` / containerd's transfer service, skopeo `oci:`/`oci-archive:` | containerd `core/transfer/image/imagestore.go` `imageName` names the imported image from the first, else the second; skopeo selects `oci:<dir>:<tag>` by the second |
//!
//! The other annotations are informational (`checkpointctl`, humans, ferry's
//! controller); no runtime needs them to restore. They follow checkpointctl's
//! `org.criu.checkpoint.*` vocabulary (`lib/annotations.go`, the same values
//! `checkpointctl build` derives from `config.dump`/`spec.dump`) plus CRI-O's
//! own `io.kubernetes.cri-o.annotations.checkpoint.*` names:
//!
//! | annotation | value |
//! |---|---|
//! | `org.criu.checkpoint.engine.name` | the engine that took the checkpoint (`CRI-O`, `containerd`, `Podman`), as checkpointctl sets it |
//! | `org.criu.checkpoint.pod.name`, `.pod.namespace`, `.pod.id` | from `spec.dump` annotations |
//! | `org.criu.checkpoint.rootfsImageName`, `.rootfsImageUserRequested`, `.rootfsImageID` | `config.dump` `rootfsImageName`, `rootfsImage`, `rootfsImageRef` |
//! | `io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName`, `.rootfsImageID` | the same, under CRI-O's names |
//! | `org.criu.checkpoint.runtime.name` | `config.dump` `runtime` |
//! | `org.criu.checkpoint.criu.version`, `io.kubernetes.cri-o.annotations.checkpoint.criu.version`, `org.criu.checkpoint.host.kernel`, `org.criu.checkpoint.host.arch` | CRIU's own `Version:` and `Running on` lines at the top of `dump.log`, when it is in the archive |
//! | `org.opencontainers.image.created` | `config.dump` `checkpointedTime` |
//! | `dev.ferry.archive.digest`, `dev.ferry.image.builder` | the archive's id as a digest (`blake3:<hex>`, or `sha256:<hex>` for an archive named by sha256) and `ferry-agent/<version>` |
//!
//! # Layer format
//!
//! The layer is the archive itself, byte for byte, as an *uncompressed* tar
//! (`application/vnd.oci.image.layer.v1.tar`). Both runtimes unpack exactly
//! these archives with their own tar appliers when restoring from a file,
//! and containerd's import, containerd's snapshotters and containers/image
//! (CRI-O, skopeo) all accept uncompressed OCI layers. No compression means
//! no CPU spent on gigabytes of memory pages while a failover waits, the
//! image never leaves the node, the layer digest and its `diff_id` are
//! one and the same sha256 (computed in the pass that verifies the
//! archive against its id; for an archive named by sha256 it is the id),
//! and copying into
//! containers-storage keeps the manifest (and its digest) unchanged. When
//! the archive file is already private (mode 0600) and on the same file
//! system, the layer blob is a hard link to it: no copy at all.
//!
//! # Output
//!
//! `out_dir/layout/` is an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`); with `also_archive`, `out_dir/image.tar` is the same
//! layout as a tar (`oci-archive:`, `ctr images import`). Everything is
//! built in a hidden sibling directory, fsynced and renamed into place, so
//! `out_dir` is either absent, the previous complete image, or the new
//! complete image. Files are 0600 and directories 0700. The build is
//! deterministic: the same archive and reference give the same digests.
//! Memory stays bounded (one 1 MiB copy buffer; the tar scan seeks over
//! member contents and reads at most 4 MiB of metadata per member).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::content_hash::{ContentHash, Hasher};

mod layout;
mod scan;

use layout::*;
use scan::*;
pub use scan::{CheckpointMetadata, CriuDumpStats};

/// Annotation keys, see the module documentation for who reads which.
pub mod keys {
    /// CRI-O's checkpoint marker; value: the container's name.
    pub const CRIO_CHECKPOINT_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
    /// CRI-O's name for the image the container ran.
    pub const CRIO_ROOTFS_IMAGE_NAME: &str =
        "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName";
    /// CRI-O's name for the id of the image the container ran.
    pub const CRIO_ROOTFS_IMAGE_ID: &str =
        "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID";
    /// CRI-O's name for the CRIU version that took the checkpoint.
    pub const CRIO_CRIU_VERSION: &str = "io.kubernetes.cri-o.annotations.checkpoint.criu.version";
    /// containerd's (and checkpointctl's) checkpoint marker; value: the container's name.
    pub const CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
    pub const ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
    pub const POD_NAME: &str = "org.criu.checkpoint.pod.name";
    pub const POD_ID: &str = "org.criu.checkpoint.pod.id";
    pub const POD_NAMESPACE: &str = "org.criu.checkpoint.pod.namespace";
    pub const ROOTFS_IMAGE_NAME: &str = "org.criu.checkpoint.rootfsImageName";
    pub const ROOTFS_IMAGE_USER_REQUESTED: &str = "org.criu.checkpoint.rootfsImageUserRequested";
    pub const ROOTFS_IMAGE_ID: &str = "org.criu.checkpoint.rootfsImageID";
    pub const RUNTIME_NAME: &str = "org.criu.checkpoint.runtime.name";
    pub const CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
    pub const HOST_ARCH: &str = "org.criu.checkpoint.host.arch";
    pub const HOST_KERNEL: &str = "org.criu.checkpoint.host.kernel";
    /// OCI: when the image was created (here: when the checkpoint was taken).
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// OCI image layout: the tag of an `index.json` entry.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// containerd: the full image name of an `index.json` entry.
    pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
    /// ferry: the archive id as a digest, `blake3:<hex>` or `sha256:<hex>`.
    pub const FERRY_ARCHIVE_DIGEST: &str = "dev.ferry.archive.digest";
    /// ferry: `ferry-agent/<version>` that built the image.
    pub const FERRY_BUILDER: &str = "dev.ferry.image.builder";
}

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Directory name of the OCI layout inside `out_dir`.
pub const LAYOUT_DIR: &str = "layout";
/// File name of the OCI archive inside `out_dir`.
pub const ARCHIVE_FILE: &str = "image.tar";

/// Largest `config.dump`, `spec.dump`, `status.dump` or `stats-dump` read.
const METADATA_LIMIT: u64 = 4 << 20;
/// How much of `dump.log` is read (CRIU prints its version first).
const LOG_HEAD: u64 = 64 << 10;
const COPY_BUFFER: usize = 1 << 20;

/// A built checkpoint image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointImage {
    /// Full, normalized image reference (`registry/repo:tag`), as the
    /// runtime lists the image after import.
    pub reference: String,
    /// The tag alone: `org.opencontainers.image.ref.name` in `index.json`,
    /// what `skopeo … oci:<layout_dir>:<tag>` selects.
    pub tag: String,
    /// The OCI image layout directory (`out_dir/layout`).
    pub layout_dir: PathBuf,
    /// The OCI archive (`out_dir/image.tar`), when asked for.
    pub archive_path: Option<PathBuf>,
    /// `sha256:<hex>` of the image manifest: the image's digest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the image config: containerd's and CRI-O's image id.
    pub config_digest: String,
    /// `sha256:<hex>` of the single layer, the archive's bytes.
    pub layer_digest: String,
    pub layer_size: u64,
    /// The image manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// What the archive says about the checkpoint.
    pub metadata: CheckpointMetadata,
}

pub fn read_checkpoint_metadata(archive: &Path) -> Result<CheckpointMetadata, Error> {
    scan_archive(archive, &archive.display().to_string())
}

/// Builds a checkpoint image from the archive at `archive` whose content
/// hash (the store's archive id, [`crate::content_hash`]) is
/// `archive_id`, tagged `reference` (`registry/repo[:tag]`, tag defaults to
/// `latest`), into `out_dir` (see the module documentation for its layout;
/// an existing `out_dir` is replaced). The archive's bytes are verified
/// against `archive_id` on the way. Blocking: call from `spawn_blocking`.
pub fn build_checkpoint_image(
    archive: &Path,
    archive_id: &str,
    reference: &str,
    out_dir: &Path,
    also_archive: bool,
) -> Result<CheckpointImage, Error> {
    crate::names::archive_id("archive id", archive_id)?;
    let archive_hash = ContentHash::of_id(archive_id).unwrap_or(ContentHash::Sha256);
    let (reference, tag) = parse_reference(reference)?;
    let source_meta = scan_archive(archive, archive_id)?;

    let staging = Staging::create(out_dir)?;
    let layout = staging.path.join(LAYOUT_DIR);
    let blobs = layout.join("blobs").join("sha256");
    for dir in [&layout, &layout.join("blobs"), &blobs] {
        make_dir(dir)?;
    }

    // The layer: the archive itself, placed under a name of its own until
    // its sha256 is known.
    let placed = blobs.join(".layer");
    let (hashes, linked) = place_layer(archive, &placed, archive_hash)?;
    if hashes.archive_id != archive_id {
        return Err(Error::HashMismatch {
            id: archive_id.to_string(),
            actual: hashes.archive_id,
        });
    }
    let layer_hex = hashes.sha256_hex;
    let layer_size = hashes.size;
    let layer_path = blobs.join(&layer_hex);
    fs::rename(&placed, &layer_path).map_err(|e| Error::io("renaming into", &layer_path, e))?;
    // A copy is what gets published: read the metadata from it (cheap).
    let metadata = if linked {
        source_meta
    } else {
        scan_archive(&layer_path, archive_id)?
    };
    let layer_digest = format!("sha256:{layer_hex}");

    let architecture = metadata
        .host_machine
        .as_deref()
        .and_then(oci_arch_of_machine)
        .unwrap_or_else(host_oci_arch);
    let created = metadata
        .checkpointed_at
        .or(metadata.created_at)
        .unwrap_or_else(|| {
            // No timestamp in the archive: its modification time keeps the build deterministic.
            fs::metadata(archive)
                .ok()
                .and_then(|m| jiff::Timestamp::from_second(m.mtime()).ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        });
    let created_text = created.to_string();

    let config = json!({
        "created": created_text,
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{
            "created": created_text,
            "created_by": format!("ferry-agent {} checkpoint image", env!("CARGO_PKG_VERSION")),
            "comment": format!("checkpoint archive {archive_id}"),
        }],
    });
    let (config_digest, config_size) = write_json_blob(&blobs, &config)?;

    let annotations = checkpoint_annotations(&metadata, archive_id);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MEDIA_TYPE_LAYER_TAR, "digest": layer_digest, "size": layer_size}],
        "annotations": annotations,
    });
    let (manifest_digest, manifest_size) = write_json_blob(&blobs, &manifest)?;

    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        // For `ctr images import --index-name`, whose image targets the index itself.
        "annotations": annotations,
        "manifests": [{
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": architecture, "os": "linux"},
            "annotations": {
                keys::CONTAINERD_IMAGE_NAME: reference,
                keys::REF_NAME: tag,
            },
        }],
    });
    write_private(&layout.join("index.json"), &to_json(&index)?)?;
    write_private(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for dir in [&blobs, &layout.join("blobs"), &layout] {
        sync_dir(dir)?;
    }

    let blob_names = [
        config_digest.as_str(),
        layer_digest.as_str(),
        manifest_digest.as_str(),
    ];
    if also_archive {
        write_oci_archive(
            &layout,
            &blob_names,
            &staging.path.join(ARCHIVE_FILE),
            created.as_second(),
        )?;
    }
    sync_dir(&staging.path)?;
    staging.publish(out_dir)?;

    Ok(CheckpointImage {
        reference,
        tag,
        layout_dir: out_dir.join(LAYOUT_DIR),
        archive_path: also_archive.then(|| out_dir.join(ARCHIVE_FILE)),
        manifest_digest,
        config_digest,
        layer_digest,
        layer_size,
        annotations,
        metadata,
    })
}

/// The manifest annotations for a checkpoint with this metadata whose
/// archive id is `archive_id` (see the module documentation).
pub fn checkpoint_annotations(
    meta: &CheckpointMetadata,
    archive_id: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(key.to_string(), value.to_string());
        }
    };
    put(keys::CRIO_CHECKPOINT_NAME, Some(&meta.container_name));
    put(keys::CONTAINER_NAME, Some(&meta.container_name));
    put(keys::ENGINE_NAME, meta.engine.as_deref());
    put(keys::POD_NAME, meta.pod_name.as_deref());
    put(keys::POD_NAMESPACE, meta.pod_namespace.as_deref());
    put(keys::POD_ID, meta.pod_uid.as_deref());
    put(keys::ROOTFS_IMAGE_NAME, meta.rootfs_image_name.as_deref());
    put(
        keys::CRIO_ROOTFS_IMAGE_NAME,
        meta.rootfs_image_name.as_deref(),
    );
    put(
        keys::ROOTFS_IMAGE_USER_REQUESTED,
        meta.rootfs_image.as_deref(),
    );
    put(keys::ROOTFS_IMAGE_ID, meta.rootfs_image_ref.as_deref());
    put(keys::CRIO_ROOTFS_IMAGE_ID, meta.rootfs_image_ref.as_deref());
    put(keys::RUNTIME_NAME, meta.runtime.as_deref());
    put(keys::CRIU_VERSION, meta.criu_version.as_deref());
    put(keys::CRIO_CRIU_VERSION, meta.criu_version.as_deref());
    put(keys::HOST_KERNEL, meta.host_kernel.as_deref());
    put(keys::HOST_ARCH, meta.host_machine.as_deref());
    put(
        keys::CREATED,
        meta.checkpointed_at.map(|t| t.to_string()).as_deref(),
    );
    put(
        keys::FERRY_ARCHIVE_DIGEST,
        ContentHash::digest_of_id(archive_id).as_deref(),
    );
    put(
        keys::FERRY_BUILDER,
        Some(concat!("ferry-agent/", env!("CARGO_PKG_VERSION"))),
    );
    out
}

/// Removes half-built images (hidden staging directories) that a crashed
/// build left in `parent`, the directory that holds `out_dir`s. Returns how
/// many were removed. Call it at start-up, before any build runs: it would
/// also remove the staging directory of a build in progress.
pub fn remove_partial_images(parent: &Path) -> Result<usize, Error> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list image directory", parent, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list image directory", parent, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && (name.contains(STAGING_MARK) || name.contains(RETIRED_MARK)) {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|e| Error::io("remove partial image", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------
// References and platforms

/// Splits `name[:tag]` (tag defaults to `latest`), checks it against the
/// image reference grammar and normalizes the name the way containerd
/// does (`counter` → `docker.io/library/counter`).
fn parse_reference(reference: &str) -> Result<(String, String), Error> {
    let invalid = |reason: String| Error::InvalidName {
        field: "image reference",
        reason: format!("{reference:?} {reason}"),
    };
    if reference.is_empty() || reference.len() > 255 {
        return Err(invalid("must be 1 to 255 bytes long".into()));
    }
    if reference.contains('@') {
        return Err(invalid(
            "must not carry a digest: the image does not exist yet".into(),
        ));
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            &reference[last_slash + i + 1..],
        ),
        None => (reference, "latest"),
    };
    let tag_ok = tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(invalid(format!("has an invalid tag {tag:?}")));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let has_domain = parts.len() > 1
        && parts.first().is_some_and(|d| {
            d.contains(['.', ':']) || *d == "localhost" || d.bytes().any(|b| b.is_ascii_uppercase())
        });
    let domain = if has_domain {
        Some(parts.remove(0))
    } else {
        None
    };
    if let Some(domain) = domain {
        let (host, port) = domain.split_once(':').unwrap_or((domain, ""));
        let host_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        let port_ok =
            port.is_empty() || (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
        if !(host_ok && port_ok) {
            return Err(invalid(format!("has an invalid registry {domain:?}")));
        }
    }
    for part in &parts {
        let ok = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && part
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(invalid(format!(
                "has an invalid path component {part:?} (lowercase letters, digits and inner . _ -)"
            )));
        }
    }
    let path = parts.join("/");
    let full = match domain {
        Some(domain) => format!("{domain}/{path}:{tag}"),
        None if parts.len() == 1 => format!("docker.io/library/{path}:{tag}"),
        None => format!("docker.io/{path}:{tag}"),
    };
    Ok((full, tag.to_string()))
}

/// OCI/Go architecture name of a `uname -m` machine.
fn oci_arch_of_machine(machine: &str) -> Option<&'static str> {
    Some(match machine {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" => "mips64",
        m if m.starts_with("armv") => "arm",
        _ => return None,
    })
}

/// The architecture this agent runs on, for archives without `dump.log`.
fn host_oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(
            member_name(b"./checkpoint/pages-1.img"),
            Ok("checkpoint/pages-1.img".into())
        );
        assert_eq!(member_name(b"./"), Ok(String::new()));
        assert!(member_name(b"/etc/passwd").is_err());
        assert!(member_name(b"checkpoint/../../x").is_err());
        assert!(member_name(b"..").is_err());
        assert!(check_symlink("checkpoint/a", b"b").is_ok());
        assert!(check_symlink("checkpoint/a", b"../config.dump").is_ok());
        assert!(check_symlink("checkpoint/a", b"../../x").is_err());
        assert!(check_symlink("a", b"/etc").is_err());
    }

    #[test]
    fn references() {
        let ok = |r: &str| parse_reference(r).map_err(|e| e.to_string());
        assert_eq!(
            ok("localhost/ferry/app:ckpt-1"),
            Ok(("localhost/ferry/app:ckpt-1".into(), "ckpt-1".into()))
        );
        assert_eq!(
            ok("registry.local:5000/a/b"),
            Ok(("registry.local:5000/a/b:latest".into(), "latest".into()))
        );
        assert_eq!(
            ok("counter:v1"),
            Ok(("docker.io/library/counter:v1".into(), "v1".into()))
        );
        assert_eq!(
            ok("ferry/counter"),
            Ok(("docker.io/ferry/counter:latest".into(), "latest".into()))
        );
        for bad in [
            "",
            "a@sha256:00",
            "a/Upper",
            "a/b:",
            "a/b:-x",
            "a//b",
            "a b",
            "a/../b",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dump_log() {
        let log = b"(00.000000) Version: 4.2 (gitid 0)\n\
                    (00.000010) Running on node-a Linux 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01) x86_64\n";
        assert_eq!(
            parse_dump_log(log),
            (
                Some("4.2".into()),
                Some("6.1.0-18-amd64".into()),
                Some("x86_64".into())
            )
        );
        assert_eq!(parse_dump_log(b"garbage"), (None, None, None));
    }

    #[test]
    fn a_real_stats_dump_decodes() {
        // From `criu dump` of a sleeping process (CRIU 4.2.1).
        let sample = include_bytes!("../../tests/fixtures/criu-stats-dump");
        let stats = parse_stats_dump(sample).unwrap();
        assert_eq!(stats.freezing_time_us, 136);
        assert!(stats.frozen_time_us > stats.memdump_time_us);
        assert_eq!((stats.pages_scanned, stats.pages_written), (58, 30));
    }

    #[test]
    fn stats_dump_rejects_garbage() {
        assert_eq!(parse_stats_dump(b""), None);
        assert_eq!(parse_stats_dump(&[0u8; 16]), None);
    }
}
