//! The archive store: content-addressed checkpoint archives in a data
//! directory.
//!
//! ```text
//! <root>/archives/<id>.tar    archive bytes (0600), encrypted when a key is configured
//! <root>/archives/<id>.json   metadata; its presence makes the archive visible
//! <root>/incoming/<id>.part   replica being received (kept across restarts to resume)
//! <root>/incoming/<id>.json   what that replica will be
//! <root>/tmp/                     imports in progress (emptied at start-up)
//! ```
//!
//! An `<id>` is the archive's content hash ([`crate::content_hash`]):
//! BLAKE3 for new archives, sha256 for those stored before (and for new
//! ones while a standby's agent knows only sha256). Both kinds live side by
//! side; each is verified by the hash its id names.
//!
//! Bytes are written to a temporary file (or the runtime's own file is
//! linked in as one, see [`import`]), fsynced and renamed; the metadata is
//! written the same way only afterwards. A crash at any point leaves
//! either nothing visible or a complete, verified archive.
//!
//! With an [`ArchiveKey`] new archives and incoming replicas are encrypted
//! (format in [`crate::encryption`]); the id stays the hash of the
//! plaintext and `size_bytes` its length. Archives stored in plaintext
//! before the key was configured stay readable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::content_hash::ContentHash;
use crate::encryption::{
    self, ArchiveKey, Format, HEADER_LEN, Opener, SEALED_SEGMENT, SEGMENT, Sealer,
};
use crate::lock;
use crate::retention::{self, Retention};
use crate::{Error, names};

mod hashing;
mod import;
mod read;
mod receive;

pub use read::{ArchiveReader, PlaintextArchive};
pub use receive::Incoming;

/// Size of the buffer archives are copied and hashed through; bounds memory.
const COPY_BUFFER: usize = 1 << 20;

/// Written bytes are handed to the kernel's writeback in steps this large,
/// so the final fsync does not have to flush a whole archive at once.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Where a file being written stands with the kernel's writeback: every
/// [`WRITEBACK_STEP`] written bytes are handed to it without waiting, so
/// the disk works while the archive is still being hashed and written.
#[derive(Debug)]
pub(crate) struct Writeback {
    /// Bytes in the file.
    written: u64,
    /// Bytes of the file already handed to writeback.
    flushed: u64,
}

impl Writeback {
    /// For a file that already holds `written` bytes.
    pub(crate) fn from(written: u64) -> Self {
        Self {
            written,
            flushed: written,
        }
    }

    /// `bytes` more were written to `file`.
    pub(crate) fn wrote(&mut self, file: &File, bytes: u64) {
        self.written += bytes;
        if self.written - self.flushed >= WRITEBACK_STEP {
            crate::sys::start_writeback(file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
    }
}

/// Incoming replicas untouched for this long are abandoned at start-up.
const STALE_INCOMING: Duration = Duration::from_secs(3600);

/// Facts about the node a checkpoint was taken on, needed to judge whether
/// another node can restore it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    pub runtime: String,
    pub architecture: String,
    pub kernel_version: String,
    pub criu_version: String,
    pub container_runtime: String,
}

/// What the store knows about one archive.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveMeta {
    /// The content hash of the bytes ([`crate::content_hash`]).
    pub id: String,
    /// `namespace/name` of the CheckpointPolicy.
    pub policy: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub source_node: String,
    pub taken_at_millis: i64,
    pub size_bytes: u64,
    pub container_image: String,
    pub runtime: RuntimeInfo,
    /// The stored file is encrypted (this agent's own storage, not sent to
    /// peers). Absent in metadata written before encryption existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// The policy's retention when the checkpoint was taken; absent in
    /// metadata written before it travelled with the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

impl ArchiveMeta {
    /// Checks every name in the metadata (they become paths and labels).
    pub fn validate(&self) -> Result<(), Error> {
        names::archive_id("archive.id", &self.id)?;
        self.validate_owner()
    }

    fn validate_owner(&self) -> Result<(), Error> {
        names::policy_ref("archive.policy", &self.policy)?;
        names::dns_label("archive.container.namespace", &self.namespace)?;
        names::dns_subdomain("archive.container.pod", &self.pod)?;
        names::uid("archive.container.pod_uid", &self.pod_uid)?;
        names::dns_label("archive.container.container", &self.container)?;
        names::dns_subdomain("archive.source_node", &self.source_node)?;
        if self.container_image.len() > 4096 || self.container_image.contains('\0') {
            return Err(Error::InvalidName {
                field: "archive.container_image",
                reason: "longer than 4096 bytes or contains NUL".into(),
            });
        }
        Ok(())
    }

    /// Archives of the same container under the same policy compete for
    /// retention.
    pub(crate) fn retention_group(&self) -> (&str, &str, &str, &str) {
        (&self.policy, &self.namespace, &self.pod, &self.container)
    }
}

/// Bounds on what peers can make this store hold.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Incoming replicas at once.
    pub max_incoming: usize,
    /// Bytes of archives this node holds at most, replicas in flight
    /// included; `None`: the disk is the bound.
    pub quota_bytes: Option<u64>,
    /// Free disk space every incoming replica leaves, so checkpoints of
    /// this node's own pods still fit.
    pub reserve_free_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_incoming: 8,
            quota_bytes: None,
            reserve_free_bytes: 0,
        }
    }
}

/// The archive store of one agent.
#[derive(Debug)]
pub struct Store {
    archives: PathBuf,
    incoming: PathBuf,
    tmp: PathBuf,
    max_archive_bytes: u64,
    /// New archives are encrypted with this key; `None`: stored in plaintext.
    key: Option<ArchiveKey>,
    /// Ids with a replica transfer in progress (one writer per partial
    /// file), with the bytes each still has to write: reserved space.
    receiving: Arc<Mutex<HashMap<String, u64>>>,
    limits: StoreLimits,
    /// Parsed metadata of visible archives, so listing (for retention and
    /// gauges, after every checkpoint) reads the directory, not every file.
    /// Metadata is written once and never changed in place.
    listed: MetaCache,
}

type MetaCache = Arc<Mutex<HashMap<String, ArchiveMeta>>>;

impl Store {
    /// Opens (creating) the store under `root` and removes leftovers of
    /// interrupted writes. Archives larger than `max_archive_bytes` are
    /// refused.
    pub fn open(root: &Path, max_archive_bytes: u64) -> Result<Self, Error> {
        Self::open_with(root, max_archive_bytes, None)
    }

    /// Like [`Store::open`]; with a key, new archives are encrypted at rest.
    pub fn open_with(
        root: &Path,
        max_archive_bytes: u64,
        key: Option<ArchiveKey>,
    ) -> Result<Self, Error> {
        let store = Self {
            archives: root.join("archives"),
            incoming: root.join("incoming"),
            tmp: root.join("tmp"),
            max_archive_bytes,
            key,
            receiving: Arc::default(),
            limits: StoreLimits::default(),
            listed: Arc::default(),
        };
        for dir in [root, &store.archives, &store.incoming, &store.tmp] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("creating", dir, e))?;
        }
        store.clean_leftovers()?;
        Ok(store)
    }

    /// The same store with `limits` on incoming replicas.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Temporary files from interrupted imports, archive bytes without
    /// metadata, metadata without bytes and stale or headless partial
    /// replicas: none of them is visible, all of them go.
    fn clean_leftovers(&self) -> Result<(), Error> {
        for entry in read_dir(&self.tmp)? {
            remove_logged(&entry, "interrupted import");
        }
        for entry in read_dir(&self.archives)? {
            let (stem, ext) = split_name(&entry);
            let sibling = |other: &str| self.archives.join(format!("{stem}.{other}"));
            let orphan = match ext.as_str() {
                "tar" => !sibling("json").exists(),
                "json" => !sibling("tar").exists(),
                _ => true,
            };
            if orphan || names::archive_id("file", &stem).is_err() {
                remove_logged(&entry, "incomplete archive");
            }
        }
        for entry in read_dir(&self.incoming)? {
            let (stem, ext) = split_name(&entry);
            let header = self.incoming.join(format!("{stem}.json"));
            let stale = untouched_for(&entry, STALE_INCOMING);
            let headless = ext == "part" && !header.exists();
            let complete = self.archives.join(format!("{stem}.json")).exists();
            if stale || headless || complete || !matches!(ext.as_str(), "part" | "json") {
                remove_logged(&entry, "abandoned partial replica");
            }
        }
        Ok(())
    }

    fn content_path(&self, id: &str) -> PathBuf {
        self.archives.join(format!("{id}.tar"))
    }

    fn metadata_path(&self, id: &str) -> PathBuf {
        self.archives.join(format!("{id}.json"))
    }

    /// Whether new archives are encrypted.
    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    /// Path of a stored archive's file: ciphertext when `meta.encrypted`
    /// (see [`Store::plaintext_archive`] for a file a runtime can read).
    pub fn archive_path(&self, id: &str) -> Result<PathBuf, Error> {
        self.get(id)?;
        Ok(self.content_path(id))
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile, Error> {
        private_temp_file(&self.tmp, "import-")
    }

    /// Bytes free for new archives on the store's file system; 0 when unknown.
    pub fn free_bytes(&self) -> u64 {
        crate::sys::available_bytes(&self.archives).unwrap_or(0)
    }

    /// Writes metadata with the temp-fsync-rename dance; this is the moment
    /// the archive becomes visible.
    fn write_metadata(&self, meta: &ArchiveMeta) -> Result<(), Error> {
        let path = self.metadata_path(&meta.id);
        write_json_atomically(&self.tmp, &path, meta)?;
        sync_dir(&self.archives)?;
        lock(&self.listed).insert(meta.id.clone(), meta.clone());
        Ok(())
    }

    /// One archive's metadata; an archive without readable metadata does not exist.
    pub fn get(&self, id: &str) -> Result<ArchiveMeta, Error> {
        names::archive_id("archive_id", id)?;
        let path = self.metadata_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ArchiveNotFound { id: id.to_owned() });
            }
            Err(err) => return Err(Error::io("reading", &path, err)),
        };
        let meta: ArchiveMeta = serde_json::from_slice(&text).map_err(|e| Error::Metadata {
            id: id.to_owned(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if meta.id != id {
            return Err(Error::Metadata {
                id: id.to_owned(),
                path,
                reason: format!("records id {}", meta.id),
            });
        }
        Ok(meta)
    }

    /// Every visible archive, newest first.
    pub fn list(&self) -> Result<Vec<ArchiveMeta>, Error> {
        let mut archives = Vec::new();
        for entry in read_dir(&self.archives)? {
            let (stem, ext) = split_name(&entry);
            if ext != "json" {
                continue;
            }
            if let Some(meta) = lock(&self.listed).get(&stem) {
                archives.push(meta.clone());
                continue;
            }
            match self.get(&stem) {
                Ok(meta) => {
                    lock(&self.listed).insert(stem, meta.clone());
                    archives.push(meta);
                }
                Err(err) => {
                    tracing::warn!(archive = %stem, error = %err, "skipping unreadable archive")
                }
            }
        }
        archives.sort_by(|a, b| {
            b.taken_at_millis
                .cmp(&a.taken_at_millis)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(archives)
    }

    /// Removes an archive (invisible first, then its bytes). Returns the bytes
    /// freed; a missing archive frees nothing and is not an error.
    pub fn delete(&self, id: &str) -> Result<u64, Error> {
        names::archive_id("archive_id", id)?;
        let size = self.get(id).map(|m| m.size_bytes).unwrap_or(0);
        lock(&self.listed).remove(id);
        for path in [self.metadata_path(id), self.content_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("removing", &path, err)),
            }
        }
        sync_dir(&self.archives)?;
        Ok(size)
    }

    /// Applies `rules` to the archives of the container `like` belongs to;
    /// returns the ids deleted.
    pub fn enforce_retention(
        &self,
        like: &ArchiveMeta,
        rules: Retention,
        now_millis: i64,
    ) -> Result<Vec<String>, Error> {
        let group: Vec<ArchiveMeta> = self
            .list()?
            .into_iter()
            .filter(|a| a.retention_group() == like.retention_group())
            .collect();
        Ok(self
            .delete_all(retention::victims(&group, rules, now_millis))?
            .0)
    }

    /// Applies every container's own retention to its archives (see
    /// [`retention::sweep_victims`]); returns the ids deleted.
    pub fn sweep_retention(&self, now_millis: i64) -> Result<Vec<String>, Error> {
        let archives = self.list()?;
        Ok(self
            .delete_all(retention::sweep_victims(&archives, now_millis))?
            .0)
    }

    /// Deletes `ids`; returns those that were here and the bytes freed.
    pub fn delete_all(&self, ids: Vec<String>) -> Result<(Vec<String>, u64), Error> {
        let mut deleted = Vec::new();
        let mut freed = 0;
        for id in ids {
            let bytes = self.delete(&id)?;
            if bytes > 0 {
                freed += bytes;
                deleted.push(id);
            }
        }
        Ok((deleted, freed))
    }

    /// Bytes held per policy, for metrics.
    pub fn bytes_by_policy(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut totals = BTreeMap::new();
        for archive in self.list()? {
            *totals.entry(archive.policy).or_default() += archive.size_bytes;
        }
        Ok(totals)
    }
}

/// Whether nothing modified `path` for longer than `age`.
pub(crate) fn untouched_for(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Reads until `buffer` is full or the end; returns the bytes read.
fn read_up_to(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buffer.len() {
        match file.read(&mut buffer[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

pub(crate) fn write_json_atomically(
    tmp_dir: &Path,
    path: &Path,
    value: &impl Serialize,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Metadata {
        id: String::new(),
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut temp = private_temp_file(tmp_dir, "meta-")?;
    temp.write_all(&bytes)
        .map_err(|e| Error::io("writing", temp.path(), e))?;
    temp.as_file()
        .sync_all()
        .map_err(|e| Error::io("syncing", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| Error::io("renaming into", path, e.error))?;
    Ok(())
}

/// A temporary file only the agent can read (0600) in `dir`; removed on
/// drop unless persisted.
fn private_temp_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a file in", dir, e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

fn split_name(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (stem, ext)
}

fn remove_logged(path: &Path, what: &str) {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => tracing::info!(path = %path.display(), "removed {what}"),
        Err(err) => tracing::warn!(path = %path.display(), error = %err, "could not remove {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn meta(id_seed: u8, taken_at_millis: i64, size_bytes: u64) -> ArchiveMeta {
        ArchiveMeta {
            id: hex::encode([id_seed; 32]),
            policy: "default/counter".into(),
            namespace: "default".into(),
            pod: "counter-0".into(),
            pod_uid: String::new(),
            container: "app".into(),
            source_node: "node-a".into(),
            taken_at_millis,
            size_bytes,
            container_image: "counter:1".into(),
            runtime: RuntimeInfo::default(),
            encrypted: false,
            retention: None,
        }
    }

    #[test]
    fn an_unchanged_state_stored_again_is_a_checkpoint_of_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&dir.path().join("store"), u64::MAX, None).unwrap();
        let state = br#"{"counter":777000}"#;
        let mut first = meta(0, 1_000, 0);
        first.pod_uid = "0b5e7d0e-0000-4000-8000-000000000001".into();
        let stored = store
            .import_bytes(state, first.clone(), ContentHash::Blake3)
            .unwrap();
        assert_eq!(stored.taken_at_millis, 1_000);
        // The same container, nothing changed: the same archive, its time moved on.
        let mut again = first.clone();
        again.taken_at_millis = 61_000;
        let stored_again = store
            .import_bytes(state, again, ContentHash::Blake3)
            .unwrap();
        assert_eq!(stored_again.id, stored.id);
        assert_eq!(stored_again.taken_at_millis, 61_000);
        assert_eq!(store.get(&stored.id).unwrap().taken_at_millis, 61_000);
        // Another pod with identical bytes does not take it over, nor age it.
        let mut other = first;
        other.pod_uid = "0b5e7d0e-0000-4000-8000-000000000002".into();
        other.taken_at_millis = 121_000;
        let foreign = store
            .import_bytes(state, other, ContentHash::Blake3)
            .unwrap();
        assert_eq!(
            (foreign.pod_uid.as_str(), foreign.taken_at_millis),
            ("0b5e7d0e-0000-4000-8000-000000000001", 61_000)
        );
    }

    #[test]
    fn archives_named_by_sha256_are_still_served_and_verified() {
        // A store an older agent wrote (sha256 ids) beside new archives.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open_with(&root, u64::MAX, None).unwrap();
        let old_bytes = b"checkpoint taken before BLAKE3".to_vec();
        let new_bytes = b"checkpoint taken after BLAKE3".to_vec();
        let old = store
            .import_bytes(&old_bytes, meta(0, 1, 0), ContentHash::Sha256)
            .unwrap();
        let new = store
            .import_bytes(&new_bytes, meta(0, 2, 0), ContentHash::Blake3)
            .unwrap();
        assert_eq!(old.id, ContentHash::Sha256.id_of_bytes(&old_bytes));
        assert_eq!(new.id, ContentHash::Blake3.id_of_bytes(&new_bytes));
        let reopened = Store::open_with(&root, u64::MAX, None).unwrap();
        let mut listed: Vec<String> = reopened.list().unwrap().into_iter().map(|m| m.id).collect();
        listed.sort();
        let mut expected = vec![old.id.clone(), new.id.clone()];
        expected.sort();
        assert_eq!(listed, expected);
        for (id, bytes) in [(&old.id, &old_bytes), (&new.id, &new_bytes)] {
            let (_, read) = reopened.read_small(id, 1 << 20).unwrap();
            assert_eq!(&read, bytes);
        }
        // Each is verified by the hash its id names: a changed byte shows.
        for id in [&old.id, &new.id] {
            let path = reopened.content_path(id);
            let mut bytes = fs::read(&path).unwrap();
            bytes[0] ^= 1;
            fs::write(&path, bytes).unwrap();
            let err = reopened.verify(id).unwrap_err();
            assert!(
                matches!(&err, Error::HashMismatch { id: named, .. } if named == id),
                "{err}"
            );
        }
    }

    // Encryption at rest, on real files.

    const SEG: u64 = SEGMENT as u64;
    const MARKER: &[u8] = b"ferry-plaintext-marker";

    fn key(seed: u8) -> ArchiveKey {
        ArchiveKey::from_bytes(&[seed; 32])
    }

    /// Deterministic archive bytes with a marker at the start of every MiB.
    fn archive_bytes(size: u64, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut bytes: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for start in (0..bytes.len()).step_by(SEGMENT) {
            let end = (start + MARKER.len()).min(bytes.len());
            bytes[start..end].copy_from_slice(&MARKER[..end - start]);
        }
        bytes
    }

    fn import(store: &Store, dir: &Path, bytes: &[u8]) -> ArchiveMeta {
        let source = dir.join("source");
        fs::write(&source, bytes).unwrap();
        let imported = store
            .import_file(&source, meta(0, 1, 0), ContentHash::Blake3)
            .unwrap();
        fs::remove_file(&source).unwrap();
        imported
    }

    fn read_from(store: &Store, id: &str, offset: u64) -> Result<Vec<u8>, Error> {
        let (_, mut reader) = store.open_archive(id, offset)?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| Error::from_read("reading", "test", e))?;
        Ok(out)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// An encrypted store under a fresh directory, with one archive.
    fn encrypted_archive(size: u64) -> (tempfile::TempDir, Store, ArchiveMeta, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&dir.path().join("store"), u64::MAX, Some(key(1))).unwrap();
        let bytes = archive_bytes(size, size + 7);
        let meta = import(&store, dir.path(), &bytes);
        (dir, store, meta, bytes)
    }

    #[test]
    fn encrypted_archives_round_trip_at_segment_edges() {
        for size in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 5] {
            let (_dir, store, meta, bytes) = encrypted_archive(size);
            assert!(meta.encrypted);
            assert_eq!(meta.size_bytes, size);
            assert_eq!(
                meta.id,
                ContentHash::Blake3.id_of_bytes(&bytes),
                "id = hash of the plaintext"
            );
            let path = store.content_path(&meta.id);
            let stored = fs::read(&path).unwrap();
            assert_eq!(
                stored.len() as u64,
                encryption::encrypted_len(size),
                "size {size}"
            );
            assert!(stored.starts_with(encryption::MAGIC));
            if size >= MARKER.len() as u64 {
                assert!(!contains(&stored, MARKER), "size {size}: plaintext on disk");
            }
            let mode = fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            assert_eq!(
                read_from(&store, &meta.id, 0).unwrap(),
                bytes,
                "size {size}"
            );
            assert_eq!(store.verify(&meta.id).unwrap(), meta);
            // The metadata records it, and a reopened store agrees.
            let json = fs::read_to_string(store.metadata_path(&meta.id)).unwrap();
            assert!(json.contains("\"encrypted\": true"), "{json}");
        }
    }

    #[test]
    fn encrypted_archives_read_from_any_offset() {
        let size = 3 * SEG + 5;
        let (_dir, store, meta, bytes) = encrypted_archive(size);
        for offset in [
            0,
            1,
            4095,
            SEG - 1,
            SEG,
            SEG + 1,
            2 * SEG + 7,
            3 * SEG,
            3 * SEG + 4,
            size,
            size + 10,
        ] {
            let expected = &bytes[(offset.min(size) as usize)..];
            assert_eq!(
                read_from(&store, &meta.id, offset).unwrap(),
                expected,
                "offset {offset}"
            );
        }
        // Small reads across segment boundaries.
        let (_, mut reader) = store.open_archive(&meta.id, SEG - 3).unwrap();
        let mut small = [0u8; 5];
        reader.read_exact(&mut small).unwrap();
        assert_eq!(small, bytes[(SEG - 3) as usize..(SEG + 2) as usize]);
    }

    fn corrupt_segment(err: Error) -> (String, u64) {
        match err {
            Error::SegmentCorrupt { id, segment } => (id, segment),
            other => panic!("expected a corrupt segment, got: {other}"),
        }
    }

    #[test]
    fn a_flipped_ciphertext_byte_names_its_segment() {
        let (_dir, store, meta, _) = encrypted_archive(3 * SEG + 5);
        let path = store.content_path(&meta.id);
        let mut stored = fs::read(&path).unwrap();
        stored[HEADER_LEN + 2 * SEALED_SEGMENT as usize + 1000] ^= 0x40;
        fs::write(&path, &stored).unwrap();
        let err = store.verify(&meta.id).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "archive {} is corrupt: segment 2 fails authentication",
                meta.id
            )
        );
        assert_eq!(corrupt_segment(err), (meta.id.clone(), 2));
        // Reading before the bad segment works; reading into it does not.
        assert_eq!(read_from(&store, &meta.id, 3 * SEG).unwrap().len(), 5);
        assert_eq!(
            corrupt_segment(read_from(&store, &meta.id, SEG + 9).unwrap_err()).1,
            2
        );
        // A flipped tag byte of the last segment, too.
        stored[HEADER_LEN + 2 * SEALED_SEGMENT as usize + 1000] ^= 0x40;
        let last = stored.len() - 1;
        stored[last] ^= 0x01;
        fs::write(&path, &stored).unwrap();
        assert_eq!(corrupt_segment(store.verify(&meta.id).unwrap_err()).1, 3);
        // And a flipped header byte (the nonce) breaks every segment.
        stored[last] ^= 0x01;
        stored[HEADER_LEN - 1] ^= 0x01;
        fs::write(&path, &stored).unwrap();
        assert_eq!(corrupt_segment(store.verify(&meta.id).unwrap_err()).1, 0);
    }

    #[test]
    fn a_file_cut_at_a_segment_boundary_is_refused() {
        let size = 3 * SEG;
        let (_dir, store, meta, _) = encrypted_archive(size);
        let path = store.content_path(&meta.id);
        let cut = HEADER_LEN as u64 + 2 * SEALED_SEGMENT;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        match store.verify(&meta.id).unwrap_err() {
            err @ Error::EncryptedSize { .. } => {
                let text = err.to_string();
                assert!(
                    text.contains("is corrupt") && text.contains("truncated"),
                    "{text}"
                );
            }
            other => panic!("expected a size error, got: {other}"),
        }
        // Even when the metadata is shortened to match, the segment that is
        // now last was not sealed as the last one.
        let mut shortened = meta.clone();
        shortened.size_bytes = 2 * SEG;
        write_json_atomically(&store.tmp, &store.metadata_path(&meta.id), &shortened).unwrap();
        assert_eq!(corrupt_segment(store.verify(&meta.id).unwrap_err()).1, 1);
        // Cut inside the header: still a corrupt archive, not a key problem.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();
        assert!(matches!(
            store.verify(&meta.id).unwrap_err(),
            Error::EncryptedSize { actual: 10, .. }
        ));
    }

    #[test]
    fn swapped_or_spliced_segments_are_refused() {
        let (dir, store, meta, _) = encrypted_archive(3 * SEG + 5);
        let path = store.content_path(&meta.id);
        let original = fs::read(&path).unwrap();
        let segment = |i: usize| {
            HEADER_LEN + i * SEALED_SEGMENT as usize..HEADER_LEN + (i + 1) * SEALED_SEGMENT as usize
        };
        let mut swapped = original.clone();
        swapped[segment(0)].copy_from_slice(&original[segment(1)]);
        swapped[segment(1)].copy_from_slice(&original[segment(0)]);
        fs::write(&path, &swapped).unwrap();
        assert_eq!(corrupt_segment(store.verify(&meta.id).unwrap_err()).1, 0);
        assert_eq!(
            corrupt_segment(read_from(&store, &meta.id, SEG).unwrap_err()).1,
            1
        );

        // Segment 1 of another archive under the same key.
        let other = import(&store, dir.path(), &archive_bytes(3 * SEG + 5, 99));
        let foreign = fs::read(store.content_path(&other.id)).unwrap();
        let mut spliced = original.clone();
        spliced[segment(1)].copy_from_slice(&foreign[segment(1)]);
        fs::write(&path, &spliced).unwrap();
        assert_eq!(corrupt_segment(store.verify(&meta.id).unwrap_err()).1, 1);
        fs::write(&path, &original).unwrap();
        store.verify(&meta.id).unwrap();
    }

    #[test]
    fn encrypted_archives_need_the_same_key() {
        let (dir, store, meta, _) = encrypted_archive(SEG + 1);
        drop(store);
        let root = dir.path().join("store");
        let other = Store::open_with(&root, u64::MAX, Some(key(2))).unwrap();
        match other.verify(&meta.id).unwrap_err() {
            err @ Error::SealedArchive { .. } => {
                let text = err.to_string();
                assert!(
                    text.contains(&meta.id) && text.contains("encrypted with another key"),
                    "{text}"
                );
                assert!(
                    text.contains(&key(1).id_hex()) && text.contains(&key(2).id_hex()),
                    "{text}"
                );
            }
            other => panic!("expected a wrong-key error, got: {other}"),
        }
        let keyless = Store::open(&root, u64::MAX).unwrap();
        match keyless.open_archive(&meta.id, 0).unwrap_err() {
            err @ Error::SealedArchive { .. } => {
                let text = err.to_string();
                assert!(text.contains("no encryption key"), "{text}");
            }
            other => panic!("expected a missing-key error, got: {other}"),
        }
        assert!(keyless.plaintext_archive(&meta.id).is_err());
        // Listing and metadata still work without the key.
        assert_eq!(keyless.list().unwrap(), vec![meta]);
    }

    #[test]
    fn plaintext_archives_stay_readable_with_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let bytes = archive_bytes(2 * SEG + 3, 5);
        let meta = import(&Store::open(&root, u64::MAX).unwrap(), dir.path(), &bytes);
        assert!(!meta.encrypted);
        let json =
            fs::read_to_string(root.join("archives").join(format!("{}.json", meta.id))).unwrap();
        assert!(
            !json.contains("encrypted"),
            "plaintext metadata stays as before: {json}"
        );
        let store = Store::open_with(&root, u64::MAX, Some(key(1))).unwrap();
        assert_eq!(store.verify(&meta.id).unwrap(), meta);
        assert_eq!(
            read_from(&store, &meta.id, SEG + 1).unwrap(),
            &bytes[SEGMENT + 1..]
        );
        // Its restore file is the archive itself, no copy.
        let plaintext = store.plaintext_archive(&meta.id).unwrap();
        assert!(!plaintext.is_copy());
        assert_eq!(plaintext.path(), store.content_path(&meta.id));
        // New archives of that store are encrypted.
        let new = import(&store, dir.path(), &archive_bytes(10, 6));
        assert!(new.encrypted);
    }

    #[test]
    fn restores_get_a_private_decrypted_copy_that_goes_away() {
        let (_dir, store, meta, bytes) = encrypted_archive(SEG + 77);
        let plaintext = store.plaintext_archive(&meta.id).unwrap();
        assert!(plaintext.is_copy());
        let path = plaintext.path().to_owned();
        assert!(path.starts_with(&store.tmp), "{}", path.display());
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);
        drop(plaintext);
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&store.tmp).unwrap().count(), 0);
    }

    fn receive_all(
        store: &Store,
        meta: &ArchiveMeta,
        bytes: &[u8],
        offset: u64,
        pieces: usize,
    ) -> ArchiveMeta {
        let mut incoming = store.receive(meta.clone(), offset).unwrap().unwrap();
        for piece in bytes[offset as usize..].chunks(pieces) {
            incoming.write(piece).unwrap();
        }
        incoming.finish(None).unwrap()
    }

    #[test]
    fn encrypted_replicas_are_received_in_any_piece_sizes() {
        for (size, piece) in [
            (0, 7),
            (5, 2),
            (SEG, SEGMENT),
            (2 * SEG + 1, 65_536),
            (3 * SEG + 5, 1_000_003),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_with(dir.path(), u64::MAX, Some(key(3))).unwrap();
            let bytes = archive_bytes(size, 11);
            let mut wire = meta(0, 5, size);
            wire.id = ContentHash::Sha256.id_of_bytes(&bytes);
            let stored = receive_all(&store, &wire, &bytes, 0, piece.max(1));
            assert!(stored.encrypted);
            assert_eq!(
                read_from(&store, &wire.id, 0).unwrap(),
                bytes,
                "size {size}"
            );
            assert_eq!(
                fs::metadata(store.content_path(&wire.id)).unwrap().len(),
                encryption::encrypted_len(size)
            );
            assert_eq!(store.incoming_offset(&wire.id).unwrap(), (size, true));
        }
    }

    #[test]
    fn an_interrupted_encrypted_replica_resumes_after_its_complete_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), u64::MAX, Some(key(4))).unwrap();
        let size = 4 * SEG + 123;
        let bytes = archive_bytes(size, 12);
        let mut wire = meta(0, 5, size);
        wire.id = ContentHash::Blake3.id_of_bytes(&bytes);
        let part = store.incoming.join(format!("{}.part", wire.id));

        // 2.5 segments arrive, then the transfer dies: the half segment was
        // only in memory.
        let mut incoming = store.receive(wire.clone(), 0).unwrap().unwrap();
        incoming.write(&bytes[..(5 * SEG / 2) as usize]).unwrap();
        drop(incoming);
        assert_eq!(
            fs::metadata(&part).unwrap().len(),
            HEADER_LEN as u64 + 2 * SEALED_SEGMENT
        );
        assert!(
            !contains(&fs::read(&part).unwrap(), MARKER),
            "plaintext in the partial file"
        );
        assert_eq!(store.incoming_offset(&wire.id).unwrap(), (2 * SEG, false));

        // A torn write of the third segment (a crash mid-write) is dropped.
        let mut file = OpenOptions::new().append(true).open(&part).unwrap();
        file.write_all(&[0xAB; 1000]).unwrap();
        drop(file);
        assert_eq!(store.incoming_offset(&wire.id).unwrap(), (2 * SEG, false));
        // Only the offset the store holds is accepted.
        assert!(matches!(
            store.receive(wire.clone(), 3 * SEG).unwrap_err(),
            Error::OffsetMismatch { held, .. } if held == 2 * SEG
        ));
        let stored = receive_all(&store, &wire, &bytes, 2 * SEG, 300_000);
        assert!(stored.encrypted);
        assert!(!part.exists());
        store.verify(&wire.id).unwrap();
        assert_eq!(read_from(&store, &wire.id, 0).unwrap(), bytes);
    }

    #[test]
    fn a_partial_replica_of_another_key_or_form_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * SEG;
        let bytes = archive_bytes(size, 13);
        let mut wire = meta(0, 5, size);
        wire.id = ContentHash::Blake3.id_of_bytes(&bytes);
        {
            let store = Store::open_with(dir.path(), u64::MAX, Some(key(5))).unwrap();
            let mut incoming = store.receive(wire.clone(), 0).unwrap().unwrap();
            incoming.write(&bytes[..(2 * SEG + 1) as usize]).unwrap();
            assert_eq!(store.incoming_offset(&wire.id).unwrap(), (2 * SEG, false));
        }
        // The key changed (or was removed): nothing to build on.
        let rekeyed = Store::open_with(dir.path(), u64::MAX, Some(key(6))).unwrap();
        assert_eq!(rekeyed.incoming_offset(&wire.id).unwrap(), (0, false));
        let keyless = Store::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(keyless.incoming_offset(&wire.id).unwrap(), (0, false));
        receive_all(&rekeyed, &wire, &bytes, 0, SEGMENT);
        rekeyed.verify(&wire.id).unwrap();
    }

    #[test]
    fn a_corrupt_partial_replica_is_discarded_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), u64::MAX, Some(key(7))).unwrap();
        let size = 3 * SEG;
        let bytes = archive_bytes(size, 14);
        let mut wire = meta(0, 5, size);
        wire.id = ContentHash::Sha256.id_of_bytes(&bytes);
        let part = store.incoming.join(format!("{}.part", wire.id));
        let mut incoming = store.receive(wire.clone(), 0).unwrap().unwrap();
        incoming.write(&bytes[..(2 * SEG + 1) as usize]).unwrap();
        drop(incoming);
        let mut held = fs::read(&part).unwrap();
        held[HEADER_LEN + 10] ^= 1;
        fs::write(&part, held).unwrap();
        // The sender's retry (the error is retryable) starts from 0.
        assert!(matches!(
            store.receive(wire.clone(), 2 * SEG).unwrap_err(),
            Error::OffsetMismatch { held: 0, .. }
        ));
        assert_eq!(store.incoming_offset(&wire.id).unwrap(), (0, false));
        receive_all(&store, &wire, &bytes, 0, SEGMENT);
        store.verify(&wire.id).unwrap();
    }
}
