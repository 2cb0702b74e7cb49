//! The archive store: content-addressed checkpoint archives in a data
//! directory.
//!
//! ```text
//! <root>/archives/<sha256>.tar    archive bytes (0600)
//! <root>/archives/<sha256>.json   metadata; its presence makes the archive visible
//! <root>/incoming/<sha256>.part   replica being received (kept across restarts to resume)
//! <root>/incoming/<sha256>.json   what that replica will be
//! <root>/tmp/                     imports in progress (emptied at start-up)
//! ```
//!
//! Bytes are written to a temporary file, fsynced and renamed; the metadata
//! is written the same way only afterwards. A crash at any point leaves
//! either nothing visible or a complete, verified archive.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, names};

/// Size of the buffer archives are copied and hashed through; bounds memory.
const COPY_BUFFER: usize = 1 << 20;

/// Written bytes are handed to the kernel's writeback in steps this large,
/// so the final fsync does not have to flush a whole archive at once.
const WRITEBACK_STEP: u64 = 32 << 20;

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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveMeta {
    /// sha256 of the bytes, 64 lowercase hex digits.
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
    fn retention_group(&self) -> (&str, &str, &str, &str) {
        (&self.policy, &self.namespace, &self.pod, &self.container)
    }
}

/// Retention rules for one container's archives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Newest archives kept; at least 1.
    pub keep: usize,
    /// Upper bound on the bytes kept; `None` for no bound.
    pub max_bytes: Option<u64>,
    /// Archives older than this go; `None` for no bound.
    pub max_age: Option<Duration>,
}

/// Which archives of one retention group to delete. The newest archive is
/// always kept: it is the one a failover needs.
pub fn retention_victims(
    archives: &[ArchiveMeta],
    rules: Retention,
    now_millis: i64,
) -> Vec<String> {
    let mut newest_first: Vec<&ArchiveMeta> = archives.iter().collect();
    newest_first.sort_by(|a, b| {
        b.taken_at_millis
            .cmp(&a.taken_at_millis)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut kept_bytes = 0u64;
    let mut victims = Vec::new();
    for (index, archive) in newest_first.iter().enumerate() {
        if index == 0 {
            kept_bytes = archive.size_bytes;
            continue;
        }
        let too_many = index >= rules.keep.max(1);
        let too_big = rules
            .max_bytes
            .is_some_and(|max| kept_bytes.saturating_add(archive.size_bytes) > max);
        let too_old = rules.max_age.is_some_and(|age| {
            let age_millis = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            now_millis.saturating_sub(archive.taken_at_millis) > age_millis
        });
        if too_many || too_big || too_old {
            victims.push(archive.id.clone());
        } else {
            kept_bytes += archive.size_bytes;
        }
    }
    victims
}

/// The archive store of one agent.
#[derive(Debug)]
pub struct Store {
    archives: PathBuf,
    incoming: PathBuf,
    tmp: PathBuf,
    max_archive_bytes: u64,
    /// Ids with a replica transfer in progress: one writer per partial file.
    receiving: Arc<Mutex<HashSet<String>>>,
}

impl Store {
    /// Opens (creating) the store under `root` and removes leftovers of
    /// interrupted writes. Archives larger than `max_archive_bytes` are
    /// refused.
    pub fn open(root: &Path, max_archive_bytes: u64) -> Result<Self, Error> {
        let store = Self {
            archives: root.join("archives"),
            incoming: root.join("incoming"),
            tmp: root.join("tmp"),
            max_archive_bytes,
            receiving: Arc::default(),
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
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_INCOMING);
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

    /// Path of a stored archive's bytes, for runtimes that restore from a file.
    pub fn archive_path(&self, id: &str) -> Result<PathBuf, Error> {
        self.get(id)?;
        Ok(self.content_path(id))
    }

    /// Copies `source` into the store, hashing it on the way, and records
    /// `meta` (whose `id` and `size_bytes` are filled in here).
    pub fn import_file(&self, source: &Path, mut meta: ArchiveMeta) -> Result<ArchiveMeta, Error> {
        meta.validate_owner()?;
        let mut input = File::open(source).map_err(|e| Error::io("opening", source, e))?;
        let mut temp = self.temp_file()?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; COPY_BUFFER];
        let mut size = 0u64;
        loop {
            let read = input
                .read(&mut buffer)
                .map_err(|e| Error::io("reading", source, e))?;
            if read == 0 {
                break;
            }
            size += read as u64;
            if size > self.max_archive_bytes {
                return Err(Error::TooLarge {
                    what: source.display().to_string(),
                    size,
                    max: self.max_archive_bytes,
                });
            }
            hasher.update(&buffer[..read]);
            temp.write_all(&buffer[..read])
                .map_err(|e| Error::io("writing", temp.path(), e))?;
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| Error::io("syncing", temp.path(), e))?;
        meta.id = hex::encode(hasher.finalize());
        meta.size_bytes = size;
        if let Ok(existing) = self.get(&meta.id) {
            // Identical bytes are stored once.
            return Ok(existing);
        }
        let content = self.content_path(&meta.id);
        temp.persist(&content)
            .map_err(|e| Error::io("renaming into", &content, e.error))?;
        self.write_metadata(&meta)?;
        Ok(meta)
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
        sync_dir(&self.archives)
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
            match self.get(&stem) {
                Ok(meta) => archives.push(meta),
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

    /// Opens a stored archive for reading, positioned at `offset`.
    pub fn open_archive(&self, id: &str, offset: u64) -> Result<(ArchiveMeta, File), Error> {
        let meta = self.get(id)?;
        let path = self.content_path(id);
        let mut file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let actual = file
            .metadata()
            .map_err(|e| Error::io("inspecting", &path, e))?
            .len();
        if actual != meta.size_bytes {
            return Err(Error::SizeMismatch {
                id: id.to_owned(),
                expected: meta.size_bytes,
                actual,
            });
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seeking in", &path, e))?;
        Ok((meta, file))
    }

    /// Re-reads an archive and checks its hash (before a restore trusts it).
    pub fn verify(&self, id: &str) -> Result<ArchiveMeta, Error> {
        let (meta, mut file) = self.open_archive(id, 0)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; COPY_BUFFER];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|e| Error::io("reading", self.content_path(id), e))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != id {
            return Err(Error::HashMismatch {
                id: id.to_owned(),
                actual,
            });
        }
        Ok(meta)
    }

    /// Removes an archive (invisible first, then its bytes). Returns the bytes
    /// freed; a missing archive frees nothing and is not an error.
    pub fn delete(&self, id: &str) -> Result<u64, Error> {
        names::archive_id("archive_id", id)?;
        let size = self.get(id).map(|m| m.size_bytes).unwrap_or(0);
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
        let victims = retention_victims(&group, rules, now_millis);
        for id in &victims {
            self.delete(id)?;
        }
        Ok(victims)
    }

    /// Bytes held per policy, for metrics.
    pub fn bytes_by_policy(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut totals = BTreeMap::new();
        for archive in self.list()? {
            *totals.entry(archive.policy).or_default() += archive.size_bytes;
        }
        Ok(totals)
    }

    /// How much of an incoming replica is already here: `(offset, complete)`.
    pub fn incoming_offset(&self, id: &str) -> Result<(u64, bool), Error> {
        names::archive_id("archive_id", id)?;
        if let Ok(meta) = self.get(id) {
            return Ok((meta.size_bytes, true));
        }
        let part = self.incoming.join(format!("{id}.part"));
        match fs::metadata(&part) {
            Ok(meta) => Ok((meta.len(), false)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok((0, false)),
            Err(err) => Err(Error::io("inspecting", &part, err)),
        }
    }

    /// Starts (or resumes at `offset`) receiving the archive `meta`.
    /// `Ok(None)`: the archive is already stored and verified.
    pub fn receive(&self, meta: ArchiveMeta, offset: u64) -> Result<Option<Incoming>, Error> {
        meta.validate()?;
        if meta.size_bytes > self.max_archive_bytes {
            return Err(Error::TooLarge {
                what: format!("archive {}", meta.id),
                size: meta.size_bytes,
                max: self.max_archive_bytes,
            });
        }
        if self.get(&meta.id).is_ok() {
            return Ok(None);
        }
        let guard = ReceivingGuard::claim(&self.receiving, &meta.id)?;
        let part = self.incoming.join(format!("{}.part", meta.id));
        let header = self.incoming.join(format!("{}.json", meta.id));

        // A partial file only continues the transfer it was started for.
        let previous: Option<ArchiveMeta> = fs::read(&header)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let held = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let resumable = previous.as_ref() == Some(&meta);
        if offset > 0 && (!resumable || offset != held) {
            return Err(Error::OffsetMismatch {
                id: meta.id.clone(),
                requested: offset,
                held: if resumable { held } else { 0 },
            });
        }
        if offset > meta.size_bytes {
            return Err(Error::OffsetMismatch {
                id: meta.id.clone(),
                requested: offset,
                held,
            });
        }
        if offset == 0 {
            write_json_atomically(&self.tmp, &header, &meta)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(offset == 0)
            .mode(0o600)
            .open(&part)
            .map_err(|e| Error::io("opening", &part, e))?;
        // The hash covers the whole archive: re-read what an earlier attempt wrote.
        let mut hasher = Sha256::new();
        if offset > 0 {
            let mut buffer = vec![0u8; COPY_BUFFER];
            let mut remaining = offset;
            while remaining > 0 {
                let want =
                    usize::try_from(remaining.min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
                file.read_exact(&mut buffer[..want])
                    .map_err(|e| Error::io("re-reading", &part, e))?;
                hasher.update(&buffer[..want]);
                remaining -= want as u64;
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seeking in", &part, e))?;
        Ok(Some(Incoming {
            meta,
            file,
            part,
            header,
            hasher,
            received: offset,
            flushed: offset,
            archives: self.archives.clone(),
            tmp: self.tmp.clone(),
            _guard: guard,
        }))
    }
}

/// A replica being received. Bytes go to `incoming/<id>.part`; `finish`
/// checks size and hash and only then makes the archive visible.
#[derive(Debug)]
pub struct Incoming {
    meta: ArchiveMeta,
    file: File,
    part: PathBuf,
    header: PathBuf,
    hasher: Sha256,
    received: u64,
    /// Bytes already handed to writeback.
    flushed: u64,
    archives: PathBuf,
    tmp: PathBuf,
    _guard: ReceivingGuard,
}

impl Incoming {
    pub fn meta(&self) -> &ArchiveMeta {
        &self.meta
    }

    /// Bytes of the archive held so far (including an earlier attempt's).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends the next bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let total = self.received + data.len() as u64;
        if total > self.meta.size_bytes {
            return Err(Error::SizeMismatch {
                id: self.meta.id.clone(),
                expected: self.meta.size_bytes,
                actual: total,
            });
        }
        if let Err(err) = self.file.write_all(data) {
            let err = Error::io("writing", &self.part, err);
            if matches!(err, Error::StoreFull { .. }) {
                // It cannot finish here and holds the space others need.
                let _ = fs::remove_file(&self.part);
                let _ = fs::remove_file(&self.header);
            }
            return Err(err);
        }
        self.hasher.update(data);
        self.received = total;
        if self.received - self.flushed >= WRITEBACK_STEP {
            crate::sys::start_writeback(&self.file, self.flushed, self.received - self.flushed);
            self.flushed = self.received;
        }
        Ok(())
    }

    /// Verifies and publishes the archive. A hash mismatch deletes the
    /// partial file: its bytes cannot be trusted for a resume either.
    pub fn finish(self) -> Result<ArchiveMeta, Error> {
        if self.received != self.meta.size_bytes {
            return Err(Error::SizeMismatch {
                id: self.meta.id.clone(),
                expected: self.meta.size_bytes,
                actual: self.received,
            });
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.meta.id {
            let _ = fs::remove_file(&self.part);
            let _ = fs::remove_file(&self.header);
            return Err(Error::HashMismatch {
                id: self.meta.id.clone(),
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing", &self.part, e))?;
        let content = self.archives.join(format!("{}.tar", self.meta.id));
        fs::rename(&self.part, &content).map_err(|e| Error::io("renaming into", &content, e))?;
        let metadata = self.archives.join(format!("{}.json", self.meta.id));
        write_json_atomically(&self.tmp, &metadata, &self.meta)?;
        sync_dir(&self.archives)?;
        let _ = fs::remove_file(&self.header);
        Ok(self.meta)
    }
}

/// Marks an id as being received; released on drop.
#[derive(Debug)]
struct ReceivingGuard {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl ReceivingGuard {
    fn claim(set: &Arc<Mutex<HashSet<String>>>, id: &str) -> Result<Self, Error> {
        let mut ids = set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !ids.insert(id.to_owned()) {
            return Err(Error::TransferInProgress { id: id.to_owned() });
        }
        Ok(Self {
            set: set.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn write_json_atomically(tmp_dir: &Path, path: &Path, value: &impl Serialize) -> Result<(), Error> {
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

fn sync_dir(dir: &Path) -> Result<(), Error> {
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

    fn meta(id_seed: u8, taken_at_millis: i64, size_bytes: u64) -> ArchiveMeta {
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
        }
    }

    fn rules(keep: usize, max_bytes: Option<u64>, max_age_secs: Option<u64>) -> Retention {
        Retention {
            keep,
            max_bytes,
            max_age: max_age_secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn retention_keeps_the_newest_n() {
        let archives = [meta(1, 1000, 10), meta(2, 3000, 10), meta(3, 2000, 10)];
        assert_eq!(
            retention_victims(&archives, rules(2, None, None), 4000),
            vec![hex::encode([1; 32])]
        );
    }

    #[test]
    fn retention_bounds_bytes_but_always_keeps_the_newest() {
        let archives = [meta(1, 1000, 60), meta(2, 2000, 60), meta(3, 3000, 200)];
        let mut victims = retention_victims(&archives, rules(10, Some(100), None), 4000);
        victims.sort();
        assert_eq!(victims, vec![hex::encode([1; 32]), hex::encode([2; 32])]);
    }

    #[test]
    fn retention_drops_old_archives_but_not_the_newest() {
        let archives = [meta(1, 0, 1), meta(2, 10_000, 1)];
        assert_eq!(
            retention_victims(&archives, rules(10, None, Some(5)), 100_000),
            vec![hex::encode([1; 32])]
        );
    }
}
