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
//! | `dev.ferry.archive.digest`, `dev.ferry.image.builder` | the archive's sha256 and `ferry-agent/<version>` |
//!
//! # Layer format
//!
//! The layer is the archive itself, byte for byte, as an *uncompressed* tar
//! (`application/vnd.oci.image.layer.v1.tar`). Both runtimes unpack exactly
//! these archives with their own tar appliers when restoring from a file,
//! and containerd's import, containerd's snapshotters and containers/image
//! (CRI-O, skopeo) all accept uncompressed OCI layers. No compression means
//! no CPU spent on gigabytes of memory pages while a failover waits, the
//! image never leaves the node, the layer digest, its `diff_id` and the
//! archive id are one and the same sha256, and copying into
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
    /// ferry: `sha256:<hex>` of the archive (equal to the layer digest).
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
    /// `sha256:<hex>` of the single layer; equals the archive's content hash.
    pub layer_digest: String,
    pub layer_size: u64,
    /// The image manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// What the archive says about the checkpoint.
    pub metadata: CheckpointMetadata,
}

/// What a checkpoint archive says about the checkpointed container.
/// Everything but the container name is optional: runtimes and versions
/// differ in what they record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointMetadata {
    /// The container's name in its pod (`app`), not the runtime's internal name.
    pub container_name: String,
    /// The runtime's container id (`config.dump` `id`).
    pub container_id: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// Engine that took the checkpoint: `CRI-O`, `containerd` or `Podman`.
    pub engine: Option<String>,
    /// OCI runtime (`config.dump` `runtime`, e.g. `runc`, `crun`, `io.containerd.runc.v2`).
    pub runtime: Option<String>,
    /// Image the user asked for (`config.dump` `rootfsImage`).
    pub rootfs_image: Option<String>,
    /// Image id or `name@digest` (`config.dump` `rootfsImageRef`).
    pub rootfs_image_ref: Option<String>,
    /// Image name (`config.dump` `rootfsImageName`).
    pub rootfs_image_name: Option<String>,
    pub created_at: Option<jiff::Timestamp>,
    pub checkpointed_at: Option<jiff::Timestamp>,
    /// From `dump.log`, when present.
    pub criu_version: Option<String>,
    /// Kernel release of the checkpointed host (`dump.log`).
    pub host_kernel: Option<String>,
    /// Machine of the checkpointed host as `uname -m` says it (`x86_64`).
    pub host_machine: Option<String>,
    /// CRIU's dump statistics (`stats-dump`), when present and readable.
    pub dump_stats: Option<CriuDumpStats>,
    /// Bytes of regular files under `checkpoint/`.
    pub checkpoint_bytes: u64,
    /// Size of `rootfs-diff.tar`, when present.
    pub rootfs_diff_bytes: Option<u64>,
    /// Size of the archive file.
    pub archive_bytes: u64,
}

/// CRIU's dump statistics (`stats-dump`, `StatsEntry.dump`). Times in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CriuDumpStats {
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
}

/// Reads the metadata of a checkpoint archive and checks its shape: members
/// `checkpoint/`, `config.dump` and `spec.dump` are present, no member path
/// is absolute or climbs out with `..`, no devices. Only the small metadata
/// members are read; contents of everything else are skipped with seeks.
pub fn read_checkpoint_metadata(archive: &Path) -> Result<CheckpointMetadata, Error> {
    scan_archive(archive, &archive.display().to_string())
}

/// Builds a checkpoint image from the archive at `archive` whose content
/// hash (sha256, 64 lowercase hex digits, the store's archive id) is
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
    let (reference, tag) = parse_reference(reference)?;
    let source_meta = scan_archive(archive, archive_id)?;

    let staging = Staging::create(out_dir)?;
    let layout = staging.path.join(LAYOUT_DIR);
    let blobs = layout.join("blobs").join("sha256");
    for dir in [&layout, &layout.join("blobs"), &blobs] {
        make_dir(dir)?;
    }

    // The layer: the archive itself.
    let layer_path = blobs.join(archive_id);
    let (layer_hex, layer_size, linked) = place_layer(archive, &layer_path)?;
    if layer_hex != archive_id {
        return Err(Error::HashMismatch {
            id: archive_id.to_string(),
            actual: layer_hex,
        });
    }
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

    let annotations = checkpoint_annotations(&metadata, &layer_hex);
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
/// archive hashes to `archive_hex` (see the module documentation).
pub fn checkpoint_annotations(
    meta: &CheckpointMetadata,
    archive_hex: &str,
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
        Some(&format!("sha256:{archive_hex}")),
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
// Reading the archive

fn bad(archive: &str, message: impl Into<String>) -> Error {
    Error::CheckpointImage {
        archive: archive.to_string(),
        message: message.into(),
    }
}

/// Printable, bounded form of a member name from the archive.
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut short: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        short.push('…');
    }
    format!("{short:?}")
}

/// Checks a member path and returns it without `.` components and slashes
/// at either end (`./checkpoint/` → `checkpoint`).
fn member_name(raw: &[u8]) -> Result<String, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("climbs out of the archive with `..`"),
            _ => parts.push(std::str::from_utf8(part).map_err(|_| "is not UTF-8")?),
        }
    }
    Ok(parts.join("/"))
}

/// A symbolic link may only point inside the archive.
fn check_symlink(name: &str, target: &[u8]) -> Result<(), &'static str> {
    if target.first() == Some(&b'/') {
        return Err("is a symbolic link to an absolute path");
    }
    let mut depth = name
        .split('/')
        .filter(|p| !p.is_empty())
        .count()
        .saturating_sub(1);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("is a symbolic link that points out of the archive")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[derive(Default)]
struct Found {
    checkpoint_dir: bool,
    config_dump: Option<Vec<u8>>,
    spec_dump: Option<Vec<u8>>,
    status_dump: Option<Vec<u8>>,
    stats_dump: Option<Vec<u8>>,
    dump_log: Option<Vec<u8>>,
    checkpoint_bytes: u64,
    rootfs_diff_bytes: Option<u64>,
}

fn scan_archive(path: &Path, label: &str) -> Result<CheckpointMetadata, Error> {
    let mut file = File::open(path).map_err(|e| Error::io("open checkpoint archive", path, e))?;
    let archive_bytes = file
        .metadata()
        .map_err(|e| Error::io("stat checkpoint archive", path, e))?
        .len();
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic)
        .map_err(|e| Error::io("read checkpoint archive", path, e))?;
    match &magic[..got] {
        [0x1f, 0x8b, ..] => {
            return Err(bad(
                label,
                "is gzip-compressed; expected an uncompressed tar",
            ));
        }
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(bad(
                label,
                "is zstd-compressed; expected an uncompressed tar",
            ));
        }
        _ if archive_bytes < 512 => {
            return Err(bad(
                label,
                format!("is {archive_bytes} bytes long: not a tar archive"),
            ));
        }
        _ => {}
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("read checkpoint archive", path, e))?;

    let mut tar = tar::Archive::new(BufReader::with_capacity(64 << 10, file));
    let entries = tar
        .entries_with_seek()
        .map_err(|e| bad(label, format!("is not a readable tar: {e}")))?;
    let mut found = Found::default();
    let mut members = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            bad(
                label,
                format!("is not a readable tar after {members} members: {e}"),
            )
        })?;
        members += 1;
        let raw = entry.path_bytes().into_owned();
        let name =
            member_name(&raw).map_err(|why| bad(label, format!("member {} {why}", shown(&raw))))?;
        let kind = entry.header().entry_type();
        let member = |why: &str| bad(label, format!("member {} {why}", shown(&raw)));

        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(member(
                "is a device or fifo; a checkpoint archive holds only files, directories and links",
            ));
        }
        if kind.is_gnu_sparse() {
            return Err(member("is a sparse file, which is not supported"));
        }
        if kind.is_hard_link() || kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .ok_or_else(|| member("is a link without a target"))?;
            if kind.is_hard_link() {
                member_name(&target)
                    .map_err(|why| member(&format!("is a hard link whose target {why}")))?;
            } else {
                check_symlink(&name, &target).map_err(member)?;
            }
        }
        if !(kind.is_file()
            || kind.is_contiguous()
            || kind.is_dir()
            || kind.is_hard_link()
            || kind.is_symlink())
        {
            return Err(member(&format!(
                "has unsupported tar entry type {:?}",
                kind.as_byte() as char
            )));
        }

        let regular = kind.is_file() || kind.is_contiguous();
        if name == "checkpoint" || name.starts_with("checkpoint/") {
            if name == "checkpoint" && !kind.is_dir() {
                return Err(member("must be a directory (CRIU's images)"));
            }
            found.checkpoint_dir = true;
            if regular {
                found.checkpoint_bytes += entry.size();
            }
            continue;
        }
        let slot = match name.as_str() {
            "config.dump" => &mut found.config_dump,
            "spec.dump" => &mut found.spec_dump,
            "status.dump" => &mut found.status_dump,
            "stats-dump" => &mut found.stats_dump,
            "dump.log" => &mut found.dump_log,
            "rootfs-diff.tar" => {
                if regular {
                    found.rootfs_diff_bytes = Some(entry.size());
                }
                continue;
            }
            _ => continue,
        };
        if !regular {
            return Err(member("must be a regular file"));
        }
        if slot.is_some() {
            return Err(member("appears twice"));
        }
        let limit = if name == "dump.log" {
            LOG_HEAD
        } else {
            METADATA_LIMIT
        };
        if name != "dump.log" && entry.size() > limit {
            return Err(member(&format!(
                "is {} bytes; metadata members are at most {limit}",
                entry.size()
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| member(&format!("cannot be read: {e}")))?;
        *slot = Some(bytes);
    }

    if members == 0 {
        return Err(bad(label, "is an empty tar: not a checkpoint archive"));
    }
    if !found.checkpoint_dir {
        return Err(bad(
            label,
            "has no member \"checkpoint/\" (CRIU's images): not a container checkpoint",
        ));
    }
    let config_dump = found.config_dump.as_deref().ok_or_else(|| {
        bad(
            label,
            "has no member \"config.dump\": not a container checkpoint",
        )
    })?;
    let spec_dump = found.spec_dump.as_deref().ok_or_else(|| {
        bad(
            label,
            "has no member \"spec.dump\": not a container checkpoint",
        )
    })?;
    let config: Value = serde_json::from_slice(config_dump).map_err(|e| {
        bad(
            label,
            format!("member \"config.dump\" is not valid JSON: {e}"),
        )
    })?;
    let spec: Value = serde_json::from_slice(spec_dump).map_err(|e| {
        bad(
            label,
            format!("member \"spec.dump\" is not valid JSON: {e}"),
        )
    })?;
    if !config.is_object() {
        return Err(bad(label, "member \"config.dump\" is not a JSON object"));
    }
    if !spec.is_object() {
        return Err(bad(label, "member \"spec.dump\" is not a JSON object"));
    }
    // containerd's CRI status; informative only, so a broken one is ignored.
    let status: Value = found
        .status_dump
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);

    let mut meta = describe(&config, &spec, &status);
    if meta.container_name.is_empty() {
        return Err(bad(
            label,
            "names no container: spec.dump has no io.kubernetes.container.name or \
             io.kubernetes.cri.container-name annotation and config.dump no name",
        ));
    }
    if let Some(log) = found.dump_log.as_deref() {
        let (version, kernel, machine) = parse_dump_log(log);
        meta.criu_version = version;
        meta.host_kernel = kernel;
        meta.host_machine = machine;
    }
    meta.dump_stats = found.stats_dump.as_deref().and_then(parse_stats_dump);
    meta.checkpoint_bytes = found.checkpoint_bytes;
    meta.rootfs_diff_bytes = found.rootfs_diff_bytes;
    meta.archive_bytes = archive_bytes;
    Ok(meta)
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Go's `time.Time` as JSON; its zero value (year 1) means unset.
fn go_time(value: &Value, key: &str) -> Option<jiff::Timestamp> {
    let parsed: jiff::Timestamp = text(value, key)?.parse().ok()?;
    (parsed.as_second() > 0).then_some(parsed)
}

fn describe(config: &Value, spec: &Value, status: &Value) -> CheckpointMetadata {
    let annotation = |key: &str| {
        spec.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let status_label = |key: &str| {
        status
            .get("labels")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    // CRI-O keeps the CRI container metadata as JSON in an annotation.
    let crio_metadata_name = annotation("io.kubernetes.cri-o.Metadata")
        .and_then(|m| serde_json::from_str::<Value>(&m).ok())
        .and_then(|m| text(&m, "/name").map(str::to_string));

    let container_name = annotation("io.kubernetes.container.name")
        .or_else(|| annotation("io.kubernetes.cri.container-name"))
        .or(crio_metadata_name)
        .or_else(|| text(status, "/metadata/name").map(str::to_string))
        .or_else(|| status_label("io.kubernetes.container.name"))
        .or_else(|| text(config, "/name").map(str::to_string))
        .unwrap_or_default();
    let engine = match annotation("io.container.manager").as_deref() {
        Some("cri-o") => Some("CRI-O".to_string()),
        Some("libpod") => Some("Podman".to_string()),
        Some(other) => Some(other.to_string()),
        None if annotation("io.kubernetes.cri.container-name").is_some()
            || annotation("io.kubernetes.cri.sandbox-id").is_some() =>
        {
            Some("containerd".to_string())
        }
        None => None,
    };
    CheckpointMetadata {
        container_name,
        container_id: text(config, "/id").map(str::to_string),
        pod_name: annotation("io.kubernetes.pod.name")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-name"))
            .or_else(|| status_label("io.kubernetes.pod.name")),
        pod_namespace: annotation("io.kubernetes.pod.namespace")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-namespace"))
            .or_else(|| status_label("io.kubernetes.pod.namespace")),
        pod_uid: annotation("io.kubernetes.pod.uid")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-uid"))
            .or_else(|| status_label("io.kubernetes.pod.uid")),
        engine,
        runtime: text(config, "/runtime").map(str::to_string),
        rootfs_image: text(config, "/rootfsImage").map(str::to_string),
        rootfs_image_ref: text(config, "/rootfsImageRef").map(str::to_string),
        rootfs_image_name: text(config, "/rootfsImageName").map(str::to_string),
        created_at: go_time(config, "/createdTime"),
        checkpointed_at: go_time(config, "/checkpointedTime"),
        ..CheckpointMetadata::default()
    }
}

/// CRIU starts every log with `Version: <v> (gitid <id>)` and
/// `Running on <node> <sysname> <release> <version…> <machine>`.
fn parse_dump_log(log: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(log);
    let (mut version, mut kernel, mut machine) = (None, None, None);
    for line in text.lines().take(200) {
        if version.is_none()
            && let Some((_, rest)) = line.split_once("Version: ")
        {
            let v = rest.split(" (gitid").next().unwrap_or(rest).trim();
            if !v.is_empty() {
                version = Some(v.to_string());
            }
        }
        if kernel.is_none()
            && let Some((_, rest)) = line.split_once("Running on ")
        {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.len() >= 4 {
                kernel = words.get(2).map(|s| s.to_string());
                machine = words.last().map(|s| s.to_string());
            }
        }
        if version.is_some() && kernel.is_some() {
            break;
        }
    }
    (version, kernel, machine)
}

/// `stats-dump`: u32 LE image magic 0x55105940, u32 LE stats magic
/// 0x57093306, u32 LE payload size, protobuf `StatsEntry` whose field 1 is
/// `DumpStatsEntry` (fields 1–7: freezing, frozen, memdump, memwrite time
/// in µs; pages scanned, skipped because in the parent, written).
fn parse_stats_dump(bytes: &[u8]) -> Option<CriuDumpStats> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != 0x5510_5940 || word(4)? != 0x5709_3306 {
        return None;
    }
    let size = usize::try_from(word(8)?).ok()?;
    let payload = bytes.get(12..12usize.checked_add(size)?)?;
    let dump = proto_fields(payload)?
        .into_iter()
        .find_map(|(field, value)| match (field, value) {
            (1, ProtoValue::Bytes(b)) => Some(b),
            _ => None,
        })?;
    let mut stats = CriuDumpStats::default();
    for (field, value) in proto_fields(dump)? {
        let ProtoValue::Varint(v) = value else {
            continue;
        };
        match field {
            1 => stats.freezing_time_us = v,
            2 => stats.frozen_time_us = v,
            3 => stats.memdump_time_us = v,
            4 => stats.memwrite_time_us = v,
            5 => stats.pages_scanned = v,
            6 => stats.pages_skipped_parent = v,
            7 => stats.pages_written = v,
            _ => {}
        }
    }
    Some(stats)
}

enum ProtoValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn proto_fields(bytes: &[u8]) -> Option<Vec<(u64, ProtoValue<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let value = match key & 7 {
            0 => ProtoValue::Varint(varint(bytes, &mut at)?),
            1 => {
                at = at.checked_add(8).filter(|&end| end <= bytes.len())?;
                ProtoValue::Fixed
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&end| end <= bytes.len())?;
                let value = ProtoValue::Bytes(&bytes[at..end]);
                at = end;
                value
            }
            5 => {
                at = at.checked_add(4).filter(|&end| end <= bytes.len())?;
                ProtoValue::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
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

// ---------------------------------------------------------------------------
// Writing

const STAGING_MARK: &str = ".building-";
const RETIRED_MARK: &str = ".retired-";

/// A hidden sibling of `out_dir` that holds the image until it is complete;
/// removed on drop unless published.
struct Staging {
    path: PathBuf,
    published: bool,
}

fn unique_sibling(out_dir: &Path, mark: &str) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = out_dir
        .file_name()
        .ok_or_else(|| Error::Io {
            action: "use image directory",
            path: out_dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "has no final path component"),
        })?
        .to_string_lossy();
    let parent = out_dir.parent().unwrap_or(Path::new("."));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent.join(format!(".{name}{mark}{}-{n}", std::process::id())))
}

impl Staging {
    fn create(out_dir: &Path) -> Result<Self, Error> {
        let parent = out_dir.parent().unwrap_or(Path::new("."));
        if !parent.as_os_str().is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io("create image directory", parent, e))?;
        }
        let path = unique_sibling(out_dir, STAGING_MARK)?;
        make_dir(&path)?;
        Ok(Self {
            path,
            published: false,
        })
    }

    /// Renames the staging directory to `out_dir`, replacing an existing
    /// image directory: at no moment is a partial image at `out_dir`.
    fn publish(mut self, out_dir: &Path) -> Result<(), Error> {
        let mut retired = None;
        match fs::symlink_metadata(out_dir) {
            Ok(m) if m.is_dir() => {
                let aside = unique_sibling(out_dir, RETIRED_MARK)?;
                fs::rename(out_dir, &aside)
                    .map_err(|e| Error::io("move old image aside", out_dir, e))?;
                retired = Some(aside);
            }
            Ok(_) => {
                return Err(Error::Io {
                    action: "replace image directory",
                    path: out_dir.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("inspect image directory", out_dir, e)),
        }
        fs::rename(&self.path, out_dir)
            .map_err(|e| Error::io("publish image directory", out_dir, e))?;
        self.published = true;
        if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        if let Some(old) = retired
            && let Err(e) = fs::remove_dir_all(&old)
        {
            tracing::warn!(path = %old.display(), error = %e, "could not remove replaced checkpoint image");
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published
            && let Err(e) = fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove unfinished checkpoint image");
        }
    }
}

fn make_dir(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", path, e))
}

fn create_private(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create file", path, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = create_private(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write file", path, e))
}

fn to_json(value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Io {
        action: "serialize image JSON",
        path: PathBuf::new(),
        source: io::Error::other(e),
    })
}

/// Writes a JSON blob under its digest; returns `sha256:<hex>` and size.
fn write_json_blob(blobs: &Path, value: &Value) -> Result<(String, u64), Error> {
    let bytes = to_json(value)?;
    let hex = hex::encode(Sha256::digest(&bytes));
    write_private(&blobs.join(&hex), &bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Puts the archive's bytes at `blob`: a hard link when the archive is
/// private already (0600) and on the same file system, a copy otherwise.
/// Returns the sha256 (hex) and size of what is at `blob`, and whether it
/// is a link.
fn place_layer(archive: &Path, blob: &Path) -> Result<(String, u64, bool), Error> {
    let source =
        fs::metadata(archive).map_err(|e| Error::io("stat checkpoint archive", archive, e))?;
    if source.mode() & 0o777 == 0o600 {
        match fs::hard_link(archive, blob) {
            Ok(()) => {
                let (hex, size) = hash_file(blob)?;
                return Ok((hex, size, true));
            }
            Err(e) => {
                tracing::debug!(archive = %archive.display(), error = %e, "cannot link layer, copying")
            }
        }
    }
    let (hex, size) = copy_hashing(archive, blob)?;
    Ok((hex, size, false))
}

fn hash_file(path: &Path) -> Result<(String, u64), Error> {
    let mut input = File::open(path).map_err(|e| Error::io("open layer blob", path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read layer blob", path, e)),
        }
    }
    Ok((hex::encode(hasher.finalize()), total))
}

fn copy_hashing(from: &Path, to: &Path) -> Result<(String, u64), Error> {
    let mut input = File::open(from).map_err(|e| Error::io("open checkpoint archive", from, e))?;
    let mut output = create_private(to)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read checkpoint archive", from, e)),
        };
        hasher.update(&buffer[..n]);
        output
            .write_all(&buffer[..n])
            .map_err(|e| Error::io("write layer blob", to, e))?;
        total += n as u64;
    }
    output
        .sync_all()
        .map_err(|e| Error::io("sync layer blob", to, e))?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Writes the layout as an OCI archive: a tar with `oci-layout`,
/// `index.json` and `blobs/sha256/*`, streamed from the layout's files.
fn write_oci_archive(layout: &Path, blobs: &[&str], to: &Path, mtime: i64) -> Result<(), Error> {
    let file = create_private(to)?;
    let fail = |e: io::Error| Error::io("write OCI archive", to, e);
    let mut tar = tar::Builder::new(file);
    let mtime = u64::try_from(mtime).unwrap_or(0);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h
    };
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o700, 0);
        tar.append_data(&mut h, dir, io::empty()).map_err(fail)?;
    }
    let mut files = vec!["oci-layout".to_string(), "index.json".to_string()];
    files.extend(
        blobs
            .iter()
            .map(|d| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))),
    );
    for name in files {
        let path = layout.join(&name);
        let input = File::open(&path).map_err(|e| Error::io("open layout file", &path, e))?;
        let size = input
            .metadata()
            .map_err(|e| Error::io("stat layout file", &path, e))?
            .len();
        let mut h = header(tar::EntryType::Regular, 0o600, size);
        tar.append_data(&mut h, &name, input).map_err(fail)?;
    }
    let file = tar.into_inner().map_err(fail)?;
    file.sync_all().map_err(fail)
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
    fn stats_dump_rejects_garbage() {
        assert_eq!(parse_stats_dump(b""), None);
        assert_eq!(parse_stats_dump(&[0u8; 16]), None);
    }
}
