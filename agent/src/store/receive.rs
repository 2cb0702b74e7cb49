//! Receiving replicas: space reserved before a byte is written, partial
//! files that survive restarts so an interrupted transfer resumes, and the
//! sweep of partial replicas no sender came back for.

use super::hashing::Hashing;
use super::*;
use crate::content_hash::Hasher;
use bytes::Bytes;

impl Store {
    /// Removes partial replicas no transfer has touched for `max_idle` and
    /// none is writing now: a sender that died mid-transfer and never
    /// resumed would otherwise hold their space until the agent restarts.
    /// Returns how many transfers were removed.
    pub fn sweep_incoming(&self, max_idle: Duration) -> Result<usize, Error> {
        let mut removed = HashSet::new();
        for entry in read_dir(&self.incoming)? {
            let (stem, _) = split_name(&entry);
            if !untouched_for(&entry, max_idle) {
                continue;
            }
            // Held while removing, so a transfer cannot claim the id between
            // the check and the removal.
            let receiving = lock(&self.receiving);
            if receiving.contains_key(&stem) {
                continue;
            }
            remove_logged(&entry, "idle partial replica");
            drop(receiving);
            removed.insert(stem);
        }
        Ok(removed.len())
    }

    /// How much of an incoming replica is already here: `(offset, complete)`.
    /// The offset counts archive (plaintext) bytes a resumed transfer can
    /// build on: for an encrypted partial file its complete segments.
    pub fn incoming_offset(&self, id: &str) -> Result<(u64, bool), Error> {
        names::archive_id("archive_id", id)?;
        if let Ok(meta) = self.get(id) {
            return Ok((meta.size_bytes, true));
        }
        // Without its header a partial file cannot be resumed (`receive`
        // would refuse any offset but 0).
        let header = self.incoming.join(format!("{id}.json"));
        let Some(expected) = read_incoming_header(&header) else {
            return Ok((0, false));
        };
        let part = self.incoming.join(format!("{id}.part"));
        Ok((self.resumable_bytes(&part, expected.size_bytes)?, false))
    }

    /// Archive bytes of the partial file `part` (of an archive of `size`
    /// bytes) that a transfer can continue from; 0 when the file was written
    /// in another form than the store writes now (the key changed since).
    fn resumable_bytes(&self, part: &Path, size: u64) -> Result<u64, Error> {
        let mut file = match File::open(part) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(Error::io("opening", part, err)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("inspecting", part, e))?
            .len();
        let mut header = [0u8; HEADER_LEN];
        let got = read_up_to(&mut file, &mut header).map_err(|e| Error::io("reading", part, e))?;
        Ok(match (&self.key, encryption::format_of(&header[..got])) {
            (None, Format::Plain) => len,
            (Some(key), Format::Encrypted { key_id }) if key_id == key.id() => {
                // The last segment is sealed only by `finish`: never resume past it.
                let usable = encryption::complete_segments(len).min(encryption::segments(size) - 1);
                usable * SEGMENT as u64
            }
            _ => 0,
        })
    }

    /// Claims the transfer of `meta` and reserves its declared size before a
    /// byte is written: a peer that declares more than fits (the disk, the
    /// node's quota) or opens more transfers than allowed is refused at
    /// once, and what is reserved for the others stays theirs.
    fn reserve(&self, meta: &ArchiveMeta) -> Result<ReceivingGuard, Error> {
        let mut receiving = lock(&self.receiving);
        if receiving.contains_key(&meta.id) {
            return Err(Error::TransferInProgress {
                id: meta.id.clone(),
            });
        }
        if receiving.len() >= self.limits.max_incoming {
            return Err(Error::TooManyTransfers {
                id: meta.id.clone(),
                max: self.limits.max_incoming,
            });
        }
        let reserved: u64 = receiving.values().sum();
        let free = self
            .free_bytes()
            .saturating_sub(self.limits.reserve_free_bytes)
            .saturating_sub(reserved);
        // Encryption adds a few bytes per segment; a margin covers them.
        let needed = meta.size_bytes.saturating_add(meta.size_bytes / 64);
        if needed > free {
            return Err(Error::NoRoom {
                id: meta.id.clone(),
                size: meta.size_bytes,
                limit: format!("the disk of {}", self.archives.display()),
                available: free,
                reserved,
            });
        }
        if let Some(quota) = self.limits.quota_bytes {
            let stored: u64 = self.list()?.iter().map(|a| a.size_bytes).sum();
            let left = quota.saturating_sub(stored).saturating_sub(reserved);
            if meta.size_bytes > left {
                return Err(Error::NoRoom {
                    id: meta.id.clone(),
                    size: meta.size_bytes,
                    limit: format!("the node's archive quota of {quota} bytes ({stored} stored)"),
                    available: left,
                    reserved,
                });
            }
        }
        receiving.insert(meta.id.clone(), meta.size_bytes);
        Ok(ReceivingGuard {
            set: self.receiving.clone(),
            id: meta.id.clone(),
        })
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
        let guard = self.reserve(&meta)?;
        let part = self.incoming.join(format!("{}.part", meta.id));
        let header = self.incoming.join(format!("{}.json", meta.id));

        // A partial file only continues the transfer it was started for.
        let resumable = read_incoming_header(&header).as_ref() == Some(&meta);
        let held = if resumable {
            self.resumable_bytes(&part, meta.size_bytes)?
        } else {
            0
        };
        if offset > 0 && offset != held {
            return Err(Error::OffsetMismatch {
                id: meta.id.clone(),
                requested: offset,
                held,
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
        // The hash covers the whole archive: re-read what an earlier attempt
        // wrote. The id (or transfer id) names the hash.
        let mut hasher = ContentHash::of_id(&meta.id)
            .ok_or_else(|| Error::InvalidName {
                field: "archive.id",
                reason: format!("{:?} names no content hash", meta.id),
            })?
            .hasher();
        let (sealer, written) = match &self.key {
            None => {
                rehash_plain(&mut file, &part, offset, &mut hasher)?;
                (None, offset)
            }
            Some(key) if offset == 0 => {
                let sealer = Sealer::new(key)?;
                if let Err(err) = file.write_all(sealer.header()) {
                    return Err(discard_on_full(
                        Error::io("writing", &part, err),
                        &part,
                        &header,
                    ));
                }
                (Some(sealer), HEADER_LEN as u64)
            }
            Some(key) => {
                let segments = offset / SEGMENT as u64;
                match rehash_sealed(&mut file, &part, key, &meta.id, segments, &mut hasher) {
                    Ok(sealer) => (Some(sealer), HEADER_LEN as u64 + segments * SEALED_SEGMENT),
                    Err(err @ Error::SegmentCorrupt { .. }) => {
                        // Not worth keeping: the sender's retry starts from 0.
                        tracing::warn!(archive = %meta.id, error = %err, "discarding a corrupt partial replica");
                        let _ = fs::remove_file(&part);
                        let _ = fs::remove_file(&header);
                        return Err(Error::OffsetMismatch {
                            id: meta.id.clone(),
                            requested: offset,
                            held: 0,
                        });
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        file.seek(SeekFrom::Start(written))
            .map_err(|e| Error::io("seeking in", &part, e))?;
        let hashing = Hashing::continuing(hasher, meta.size_bytes.saturating_sub(offset));
        Ok(Some(Incoming {
            meta,
            file,
            part,
            header,
            hashing,
            received: offset,
            writeback: Writeback::from(written),
            sealer,
            archives: self.archives.clone(),
            tmp: self.tmp.clone(),
            listed: self.listed.clone(),
            _guard: guard,
        }))
    }
}

/// The header of an incoming replica, if there is a readable one.
fn read_incoming_header(path: &Path) -> Option<ArchiveMeta> {
    fs::read(path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
}

/// Hashes the first `offset` bytes of a plaintext partial file.
fn rehash_plain(
    file: &mut File,
    part: &Path,
    offset: u64,
    hasher: &mut Hasher,
) -> Result<(), Error> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut remaining = offset;
    while remaining > 0 {
        let want = usize::try_from(remaining.min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
        file.read_exact(&mut buffer[..want])
            .map_err(|e| Error::io("re-reading", part, e))?;
        hasher.update(&buffer[..want]);
        remaining -= want as u64;
    }
    Ok(())
}

/// Drops a torn segment after the first `segments` of an encrypted partial
/// file, decrypts those into `hasher` and returns the sealer to go on with.
fn rehash_sealed(
    file: &mut File,
    part: &Path,
    key: &ArchiveKey,
    id: &str,
    segments: u64,
    hasher: &mut Hasher,
) -> Result<Sealer, Error> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)
        .map_err(|e| Error::io("re-reading", part, e))?;
    file.set_len(HEADER_LEN as u64 + segments * SEALED_SEGMENT)
        .map_err(|e| Error::io("truncating", part, e))?;
    let opener = Opener::new(key.clone(), header, id);
    let mut buffer = vec![0u8; SEALED_SEGMENT as usize];
    for index in 0..segments {
        file.read_exact(&mut buffer)
            .map_err(|e| Error::io("re-reading", part, e))?;
        let len = opener.open(index, false, &mut buffer)?;
        hasher.update(&buffer[..len]);
    }
    Ok(Sealer::resume(key, header, segments))
}

/// A full disk: the partial replica cannot finish here and holds the space
/// others need, so it goes.
fn discard_on_full(err: Error, part: &Path, header: &Path) -> Error {
    if matches!(err, Error::StoreFull { .. }) {
        let _ = fs::remove_file(part);
        let _ = fs::remove_file(header);
    }
    err
}

/// A replica being received. Bytes go to `incoming/<id>.part` (encrypted
/// segment by segment when the store has a key); `finish` checks size and
/// hash and only then makes the archive visible.
#[derive(Debug)]
pub struct Incoming {
    meta: ArchiveMeta,
    file: File,
    part: PathBuf,
    header: PathBuf,
    hashing: Hashing,
    /// Archive bytes received (including an earlier attempt's).
    received: u64,
    writeback: Writeback,
    /// Holds at most one segment not yet written.
    sealer: Option<Sealer>,
    archives: PathBuf,
    tmp: PathBuf,
    listed: MetaCache,
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
        self.append(data)?;
        let hashed = self.hashing.update_from(data);
        hashed.map_err(|e| Error::io("hashing", &self.part, e))
    }

    /// Appends the next bytes, which the hashing thread may keep.
    pub fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.append(&data)?;
        let hashed = self.hashing.update(data);
        hashed.map_err(|e| Error::io("hashing", &self.part, e))
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        let total = self.received + data.len() as u64;
        if total > self.meta.size_bytes {
            return Err(Error::SizeMismatch {
                id: self.meta.id.clone(),
                expected: self.meta.size_bytes,
                actual: total,
            });
        }
        let written = match &mut self.sealer {
            Some(sealer) => sealer.write(data, &mut self.file),
            None => self.file.write_all(data).map(|()| data.len() as u64),
        };
        match written {
            Ok(bytes) => self.writeback.wrote(&self.file, bytes),
            Err(err) => return Err(self.write_failed(err)),
        }
        self.received = total;
        Ok(())
    }

    fn write_failed(&self, err: std::io::Error) -> Error {
        discard_on_full(
            Error::io("writing", &self.part, err),
            &self.part,
            &self.header,
        )
    }

    /// Verifies and publishes the archive. A hash mismatch deletes the
    /// partial file: its bytes cannot be trusted for a resume either.
    /// `named`: the archive's id, when the transfer was received under a
    /// transfer id because the sender hashed while it sent; the bytes are
    /// verified against it and stored under it (or dropped when an archive
    /// with that id is stored already).
    pub fn finish(mut self, named: Option<String>) -> Result<ArchiveMeta, Error> {
        if self.received != self.meta.size_bytes {
            return Err(Error::SizeMismatch {
                id: self.meta.id.clone(),
                expected: self.meta.size_bytes,
                actual: self.received,
            });
        }
        let expected = match named {
            Some(id) => {
                crate::names::archive_id("trailer.archive_id", &id)?;
                id
            }
            None => self.meta.id.clone(),
        };
        let hashing = std::mem::replace(&mut self.hashing, Hashing::new(ContentHash::Sha256, 0));
        let actual = hashing
            .finish()
            .map_err(|e| Error::io("hashing", &self.part, e))?;
        if actual != expected {
            let _ = fs::remove_file(&self.part);
            let _ = fs::remove_file(&self.header);
            return Err(Error::HashMismatch {
                id: expected,
                actual,
            });
        }
        if expected != self.meta.id {
            let metadata = self.archives.join(format!("{expected}.json"));
            if let Some(stored) = fs::read(&metadata)
                .ok()
                .and_then(|t| serde_json::from_slice::<ArchiveMeta>(&t).ok())
            {
                // The same bytes are here already (an earlier attempt whose
                // answer was lost, or this node took them itself).
                let _ = fs::remove_file(&self.part);
                let _ = fs::remove_file(&self.header);
                return Ok(stored);
            }
            self.meta.id = expected;
        }
        if let Some(sealer) = &mut self.sealer
            && let Err(err) = sealer.finish(&mut self.file)
        {
            return Err(self.write_failed(err));
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing", &self.part, e))?;
        let content = self.archives.join(format!("{}.tar", self.meta.id));
        fs::rename(&self.part, &content).map_err(|e| Error::io("renaming into", &content, e))?;
        self.meta.encrypted = self.sealer.is_some();
        let metadata = self.archives.join(format!("{}.json", self.meta.id));
        write_json_atomically(&self.tmp, &metadata, &self.meta)?;
        sync_dir(&self.archives)?;
        let _ = fs::remove_file(&self.header);
        lock(&self.listed).insert(self.meta.id.clone(), self.meta.clone());
        Ok(self.meta)
    }
}

/// Marks an id as being received; released on drop.
#[derive(Debug)]
struct ReceivingGuard {
    set: Arc<Mutex<HashMap<String, u64>>>,
    id: String,
}

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, size_bytes: u64) -> ArchiveMeta {
        let mut meta = super::super::tests::meta(0, 1, size_bytes);
        meta.id = id.to_owned();
        meta
    }

    /// The random digits of the transfer id the tests receive under.
    const TRANSFER_DIGITS: &str =
        "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";

    /// Three and a bit encryption segments of bytes.
    fn archive() -> Vec<u8> {
        (0..3 * SEGMENT as u32 + 5)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    /// All of [`archive`] received under a transfer id of `hash`'s form,
    /// not finished yet.
    fn receive_under_transfer_id(store: &Store, hash: ContentHash) -> Incoming {
        let bytes = archive();
        let transfer = hash.id_of_hex(TRANSFER_DIGITS);
        let mut incoming = store
            .receive(meta(&transfer, bytes.len() as u64), 0)
            .unwrap()
            .unwrap();
        incoming.write(&bytes).unwrap();
        incoming
    }

    /// A store, the id of [`archive`], and its transfer received up to its end.
    fn streamed(
        key: Option<ArchiveKey>,
        hash: ContentHash,
    ) -> (tempfile::TempDir, Store, String, Incoming) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&dir.path().join("store"), u64::MAX, key).unwrap();
        let id = hash.id_of_bytes(&archive());
        let incoming = receive_under_transfer_id(&store, hash);
        (dir, store, id, incoming)
    }

    fn incoming_files(store: &Store) -> usize {
        read_dir(&store.incoming).unwrap().len()
    }

    #[test]
    fn a_transfer_named_last_is_stored_under_its_hash() {
        for hash in ContentHash::SUPPORTED {
            for key in [None, Some(ArchiveKey::from_bytes(&[3; 32]))] {
                let (_dir, store, id, incoming) = streamed(key, hash);
                let stored = incoming.finish(Some(id.clone())).unwrap();
                assert_eq!(stored.id, id);
                store.verify(&id).unwrap();
                assert!(
                    store.get(&hash.id_of_hex(TRANSFER_DIGITS)).is_err(),
                    "the transfer id names nothing"
                );
                assert_eq!(incoming_files(&store), 0);
            }
        }
    }

    #[test]
    fn a_trailer_naming_other_bytes_leaves_nothing() {
        for hash in ContentHash::SUPPORTED {
            let (_dir, store, id, incoming) = streamed(None, hash);
            let last = id.len() - 1;
            let wrong = format!(
                "{}{}",
                &id[..last],
                if id.ends_with('0') { "1" } else { "0" }
            );
            let err = incoming.finish(Some(wrong.clone())).unwrap_err();
            assert!(
                matches!(&err, Error::HashMismatch { id: named, .. } if *named == wrong),
                "{err}"
            );
            assert!(store.list().unwrap().is_empty());
            assert_eq!(incoming_files(&store), 0, "untrusted bytes are not kept");
        }
    }

    #[test]
    fn a_trailer_naming_the_bytes_by_another_hash_leaves_nothing() {
        // The right bytes, named by the hash the transfer id did not ask
        // for: the receiver computed the other one and cannot vouch for it.
        for (hash, other) in [
            (ContentHash::Blake3, ContentHash::Sha256),
            (ContentHash::Sha256, ContentHash::Blake3),
        ] {
            let (_dir, store, _id, incoming) = streamed(None, hash);
            let named = other.id_of_bytes(&archive());
            let err = incoming.finish(Some(named.clone())).unwrap_err();
            assert!(
                matches!(&err, Error::HashMismatch { id, .. } if *id == named),
                "{err}"
            );
            assert!(store.list().unwrap().is_empty());
            assert_eq!(incoming_files(&store), 0);
        }
    }

    #[test]
    fn a_trailer_naming_a_stored_archive_keeps_the_one_stored() {
        let hash = ContentHash::Blake3;
        let (_dir, store, id, incoming) = streamed(None, hash);
        let first = incoming.finish(Some(id.clone())).unwrap();
        // The same bytes again (a retry whose first answer was lost).
        let again = receive_under_transfer_id(&store, hash)
            .finish(Some(id.clone()))
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(incoming_files(&store), 0);
    }
}
