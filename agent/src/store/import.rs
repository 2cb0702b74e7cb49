//! Importing an archive a runtime wrote (or a state an application gave)
//! into the store. Its bytes are read once: hashed, handed to the live
//! replication, and either copied into the store (sealed when a key is
//! configured) or, when the store keeps plaintext and the runtime's file
//! lies on the store's mount, adopted: hard-linked into the store and
//! synced there, so they are not written a second time.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// Where an import's bytes end up.
enum Destination {
    /// A copy in the store's tmp/, encrypted when `sealer` is set.
    Copy {
        temp: tempfile::NamedTempFile,
        sealer: Option<Sealer>,
        writeback: Writeback,
    },
    /// The runtime's file itself, hard-linked into tmp/: read, not written.
    Adopted {
        link: tempfile::TempPath,
        writeback: Writeback,
    },
}

impl Store {
    /// Stores `source`, hashing it on the way with `hash`, and records
    /// `meta` (whose `id` and `size_bytes` are filled in here). `source`
    /// may be adopted (see the module documentation): whoever wrote it
    /// must not change it afterwards, and may remove its own name for it.
    pub fn import_file(
        &self,
        source: &Path,
        meta: ArchiveMeta,
        hash: ContentHash,
    ) -> Result<ArchiveMeta, Error> {
        self.import_file_with(source, meta, hash, &mut |_| {})
    }

    /// [`Store::import_file`], handing each chunk read to `tee` as well
    /// (the live replication of the archive), so it is read once.
    pub fn import_file_with(
        &self,
        source: &Path,
        mut meta: ArchiveMeta,
        hash: ContentHash,
        tee: &mut dyn FnMut(&Bytes),
    ) -> Result<ArchiveMeta, Error> {
        meta.validate_owner()?;
        let mut input = File::open(source).map_err(|e| Error::io("opening", source, e))?;
        let opened = input
            .metadata()
            .map_err(|e| Error::io("inspecting", source, e))?;
        let source_bytes = opened.len();
        // Sized to the file (plus one byte to see its end in one read):
        // zeroing 1 MiB for a small archive costs more than copying it.
        let buffer_bytes = usize::try_from(source_bytes)
            .map_or(COPY_BUFFER, |len| len.saturating_add(1).min(COPY_BUFFER));
        let mut destination = match self.adopt(source, &opened)? {
            Some(link) => Destination::Adopted {
                link,
                writeback: Writeback::from(0),
            },
            None => self.copy_destination()?,
        };
        let mut hashing = hashing::Hashing::new(hash, source_bytes);
        let mut size = 0u64;
        loop {
            let mut chunk = vec![0u8; buffer_bytes];
            let read = input
                .read(&mut chunk)
                .map_err(|e| Error::io("reading", source, e))?;
            if read == 0 {
                break;
            }
            chunk.truncate(read);
            let chunk = Bytes::from(chunk);
            size += read as u64;
            if size > self.max_archive_bytes {
                return Err(Error::TooLarge {
                    what: source.display().to_string(),
                    size,
                    max: self.max_archive_bytes,
                });
            }
            match &mut destination {
                Destination::Copy {
                    temp,
                    sealer,
                    writeback,
                } => {
                    let written = match sealer {
                        Some(sealer) => sealer.write(&chunk, temp.as_file_mut()),
                        None => temp.write_all(&chunk).map(|()| read as u64),
                    }
                    .map_err(|e| Error::io("writing", temp.path(), e))?;
                    writeback.wrote(temp.as_file(), written);
                }
                // The runtime's writes, still in the page cache, go to
                // the disk while the rest is read and hashed.
                Destination::Adopted { writeback, .. } => writeback.wrote(&input, read as u64),
            }
            tee(&chunk);
            hashing
                .update(chunk)
                .map_err(|e| Error::io("hashing", source, e))?;
        }
        let adopted = matches!(destination, Destination::Adopted { .. });
        let syncing = std::time::Instant::now();
        let (stored, encrypted) = match destination {
            Destination::Copy {
                mut temp, sealer, ..
            } => {
                if let Some(mut sealer) = sealer {
                    sealer
                        .finish(temp.as_file_mut())
                        .map_err(|e| Error::io("writing", temp.path(), e))?;
                }
                temp.as_file()
                    .sync_all()
                    .map_err(|e| Error::io("syncing", temp.path(), e))?;
                let encrypted = self.key.is_some();
                (temp.into_temp_path(), encrypted)
            }
            Destination::Adopted { link, .. } => {
                input
                    .sync_all()
                    .map_err(|e| Error::io("syncing", &*link, e))?;
                (link, false)
            }
        };
        let sync_ms = syncing.elapsed().as_millis() as u64;
        meta.id = hashing
            .finish()
            .map_err(|e| Error::io("hashing", source, e))?;
        meta.size_bytes = size;
        meta.encrypted = encrypted;
        if let Ok(mut existing) = self.get(&meta.id) {
            // Identical bytes are stored once. A newer checkpoint of the same
            // container that found nothing changed is still a checkpoint of
            // now: without moving its time on, an idle application's newest
            // checkpoint would age past maxCheckpointAge and its failover
            // would start cold.
            if existing.retention_group() == meta.retention_group()
                && existing.pod_uid == meta.pod_uid
                && existing.taken_at_millis < meta.taken_at_millis
            {
                existing.taken_at_millis = meta.taken_at_millis;
                self.write_metadata(&existing)?;
            }
            return Ok(existing);
        }
        let content = self.content_path(&meta.id);
        stored
            .persist(&content)
            .map_err(|e| Error::io("renaming into", &content, e.error))?;
        self.write_metadata(&meta)?;
        // What the final sync waited for: the disk's part of storing.
        tracing::info!(
            archive = %meta.id, bytes = size, sync_ms, adopted,
            "archive imported"
        );
        Ok(meta)
    }

    /// Stores `bytes` (a StateApi state) like an imported file.
    pub fn import_bytes(
        &self,
        bytes: &[u8],
        meta: ArchiveMeta,
        hash: ContentHash,
    ) -> Result<ArchiveMeta, Error> {
        let mut staged = self.temp_file()?;
        staged
            .write_all(bytes)
            .and_then(|()| staged.flush())
            .map_err(|e| Error::io("writing", staged.path(), e))?;
        self.import_file(staged.path(), meta, hash)
    }

    /// A temp file to copy an archive into, its encryption header written
    /// when the store encrypts.
    fn copy_destination(&self) -> Result<Destination, Error> {
        let mut temp = self.temp_file()?;
        let sealer = self.key.as_ref().map(Sealer::new).transpose()?;
        if let Some(sealer) = &sealer {
            temp.write_all(sealer.header())
                .map_err(|e| Error::io("writing", temp.path(), e))?;
        }
        let writeback = Writeback::from(temp.as_file().stream_position().unwrap_or(0));
        Ok(Destination::Copy {
            temp,
            sealer,
            writeback,
        })
    }

    /// The runtime's file at `source` (opened, with metadata `opened`)
    /// hard-linked into tmp/ and made private, when the store keeps
    /// plaintext and the file lies on its mount; `None` when it must be
    /// copied. Only a file with no other name is adopted (making it
    /// private must not change a file someone linked there), and only the
    /// file being read, never a name swapped since it was opened.
    fn adopt(
        &self,
        source: &Path,
        opened: &fs::Metadata,
    ) -> Result<Option<tempfile::TempPath>, Error> {
        if self.key.is_some() || !opened.is_file() || opened.nlink() != 1 {
            return Ok(None);
        }
        let link = match tempfile::Builder::new()
            .prefix("adopt-")
            .make_in(&self.tmp, |path| fs::hard_link(source, path))
        {
            Ok(link) => link.into_temp_path(),
            Err(err) => {
                // Another mount (EXDEV), as when the kubelet's checkpoint
                // directory and the store are separate hostPath volumes.
                tracing::debug!(source = %source.display(), error = %err,
                    "the runtime's archive cannot be linked into the store; copying it");
                return Ok(None);
            }
        };
        let linked = fs::symlink_metadata(&link).map_err(|e| Error::io("inspecting", &*link, e))?;
        if (linked.dev(), linked.ino()) != (opened.dev(), opened.ino()) {
            tracing::warn!(source = %source.display(),
                "the runtime's archive changed its name while it was imported; copying the file opened");
            return Ok(None);
        }
        fs::set_permissions(&link, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("making private", &*link, e))?;
        Ok(Some(link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::meta;

    fn inode(path: &Path) -> (u64, u64) {
        let m = fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    /// A runtime's archive at `dir/name`, world-readable as runtimes leave them.
    fn runtime_archive(dir: &Path, name: &str, seed: u32) -> (PathBuf, Vec<u8>) {
        let bytes: Vec<u8> = (0..(3u32 << 20) + 7)
            .map(|i| ((i + seed) % 253) as u8)
            .collect();
        let path = dir.join(name);
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        (path, bytes)
    }

    #[test]
    fn a_plaintext_store_adopts_the_runtimes_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), u64::MAX).unwrap();
        let (source, bytes) = runtime_archive(dir.path(), "checkpoint.tar", 0);
        let stored = store
            .import_file(&source, meta(0, 1, 0), ContentHash::Blake3)
            .unwrap();
        let content = store.content_path(&stored.id);
        assert_eq!(inode(&content), inode(&source), "linked, not copied");
        assert_eq!(
            fs::metadata(&content).unwrap().mode() & 0o777,
            0o600,
            "private"
        );
        // The runtime removes its name; the store keeps the bytes.
        fs::remove_file(&source).unwrap();
        assert_eq!(
            store.verify(&stored.id).unwrap().size_bytes,
            bytes.len() as u64
        );
        assert_eq!(fs::read(&content).unwrap(), bytes);
        assert_eq!(
            read_dir(&store.tmp).unwrap().len(),
            0,
            "no link left behind"
        );
    }

    #[test]
    fn encrypted_stores_symlinks_and_other_mounts_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (source, bytes) = runtime_archive(dir.path(), "checkpoint.tar", 0);
        let key = crate::encryption::ArchiveKey::from_bytes(&[9; 32]);
        let encrypted = Store::open_with(&dir.path().join("sealed"), u64::MAX, Some(key)).unwrap();
        let stored = encrypted
            .import_file(&source, meta(0, 1, 0), ContentHash::Blake3)
            .unwrap();
        assert!(stored.encrypted);
        assert_ne!(inode(&encrypted.content_path(&stored.id)), inode(&source));

        let plain = Store::open(&dir.path().join("plain"), u64::MAX).unwrap();
        let link = dir.path().join("link.tar");
        std::os::unix::fs::symlink(&source, &link).unwrap();
        let stored = plain
            .import_file(&link, meta(0, 1, 0), ContentHash::Blake3)
            .unwrap();
        assert_ne!(
            inode(&plain.content_path(&stored.id)),
            inode(&source),
            "a symlink is followed and copied, never linked"
        );
        assert_eq!(plain.read_small(&stored.id, u64::MAX).unwrap().1, bytes);

        // A file with another name (the store's, now) is copied, its mode
        // left alone.
        let (shared, _) = runtime_archive(dir.path(), "shared.tar", 1);
        let other_name = dir.path().join("elsewhere.tar");
        fs::hard_link(&shared, &other_name).unwrap();
        let stored = plain
            .import_file(&shared, meta(0, 3, 0), ContentHash::Sha256)
            .unwrap();
        assert_ne!(inode(&plain.content_path(&stored.id)), inode(&shared));
        assert_eq!(fs::metadata(&other_name).unwrap().mode() & 0o777, 0o644);

        // tmpfs here: another file system, so linking fails and it is copied.
        let Ok(elsewhere) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        if fs::metadata(elsewhere.path()).unwrap().dev() == fs::metadata(dir.path()).unwrap().dev()
        {
            return;
        }
        let (other, bytes) = runtime_archive(elsewhere.path(), "other.tar", 2);
        let stored = plain
            .import_file(&other, meta(0, 2, 0), ContentHash::Sha256)
            .unwrap();
        assert_ne!(inode(&plain.content_path(&stored.id)), inode(&other));
        assert_eq!(plain.read_small(&stored.id, u64::MAX).unwrap().1, bytes);
        assert_eq!(read_dir(&plain.tmp).unwrap().len(), 0);
    }
}
