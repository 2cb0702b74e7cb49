//! Reading stored archives: verified plaintext files for restores, and
//! readers that decrypt and authenticate encrypted archives on the way.

use super::*;

impl Store {
    /// A verified plaintext file of a stored archive: the stored file itself,
    /// or for an encrypted archive a decrypted private (0600) copy in tmp/,
    /// hashed while written and removed when the result is dropped.
    pub fn plaintext_archive(&self, id: &str) -> Result<PlaintextArchive, Error> {
        let meta = self.get(id)?;
        if !meta.encrypted {
            let meta = self.verify(id)?;
            return Ok(PlaintextArchive {
                meta,
                path: self.content_path(id),
                _copy: None,
            });
        }
        let mut temp = private_temp_file(&self.tmp, "plaintext-")?;
        let meta = self.read_verified(id, |piece| {
            temp.write_all(piece)
                .map_err(|e| Error::io("writing", temp.path(), e))
        })?;
        temp.flush()
            .map_err(|e| Error::io("writing", temp.path(), e))?;
        let copy = temp.into_temp_path();
        Ok(PlaintextArchive {
            meta,
            path: copy.to_path_buf(),
            _copy: Some(copy),
        })
    }

    /// Opens a stored archive for reading from archive byte `offset`;
    /// encrypted archives are decrypted (and authenticated) on the way.
    pub fn open_archive(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<(ArchiveMeta, ArchiveReader), Error> {
        let meta = self.get(id)?;
        let path = self.content_path(id);
        let mut file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let actual = file
            .metadata()
            .map_err(|e| Error::io("inspecting", &path, e))?
            .len();
        if !meta.encrypted {
            if actual != meta.size_bytes {
                return Err(Error::SizeMismatch {
                    id: id.to_owned(),
                    expected: meta.size_bytes,
                    actual,
                });
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io("seeking in", &path, e))?;
            return Ok((meta, ArchiveReader(Reader::Plain(file))));
        }
        let expected = encryption::encrypted_len(meta.size_bytes);
        let mut header = [0u8; HEADER_LEN];
        if actual >= HEADER_LEN as u64 {
            file.read_exact(&mut header)
                .map_err(|e| Error::io("reading", &path, e))?;
            // The key first: a wrong key explains more than a length.
            encryption::check_header(&header, self.key.as_ref(), id, &path)?;
        }
        if actual != expected {
            return Err(Error::EncryptedSize {
                id: id.to_owned(),
                path,
                size: meta.size_bytes,
                expected,
                actual,
            });
        }
        let segments = encryption::segments(meta.size_bytes);
        let (next, skip) = if offset >= meta.size_bytes {
            (segments, 0)
        } else {
            (offset / SEGMENT as u64, (offset % SEGMENT as u64) as usize)
        };
        if next < segments {
            file.seek(SeekFrom::Start(HEADER_LEN as u64 + next * SEALED_SEGMENT))
                .map_err(|e| Error::io("seeking in", &path, e))?;
        }
        let key = encryption::check_header(&header, self.key.as_ref(), id, &path)?;
        let reader = SealedReader {
            file,
            path,
            opener: Opener::new(key, header, id),
            size: meta.size_bytes,
            segments,
            next,
            skip,
            buffer: Vec::new(),
            start: 0,
            end: 0,
        };
        Ok((meta, ArchiveReader(Reader::Sealed(Box::new(reader)))))
    }

    /// A whole archive in memory, verified, if it is at most `max` bytes
    /// (a StateApi state, small by its policy's limit).
    pub fn read_small(&self, id: &str, max: u64) -> Result<(ArchiveMeta, Vec<u8>), Error> {
        let meta = self.get(id)?;
        if meta.size_bytes > max {
            return Err(Error::TooLarge {
                what: format!("archive {id}"),
                size: meta.size_bytes,
                max,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.size_bytes).unwrap_or(0));
        let meta = self.read_verified(id, |piece| {
            bytes.extend_from_slice(piece);
            Ok(())
        })?;
        Ok((meta, bytes))
    }

    /// Re-reads an archive and checks its hash (before a restore trusts it).
    pub fn verify(&self, id: &str) -> Result<ArchiveMeta, Error> {
        self.read_verified(id, |_| Ok(()))
    }

    /// Reads archive `id` from its start, handing each piece to `each`,
    /// and checks that the whole hashes to its id.
    fn read_verified(
        &self,
        id: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<ArchiveMeta, Error> {
        let (meta, mut reader) = self.open_archive(id, 0)?;
        let mut hasher = ContentHash::of_id(id)
            .ok_or_else(|| Error::ArchiveNotFound { id: id.to_owned() })?
            .hasher();
        let mut buffer = vec![0u8; COPY_BUFFER];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| Error::from_read("reading", self.content_path(id), e))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            each(&buffer[..read])?;
        }
        let actual = hasher.finish_id();
        if actual != id {
            return Err(Error::HashMismatch {
                id: id.to_owned(),
                actual,
            });
        }
        Ok(meta)
    }
}

/// A stored archive as a plaintext file (see [`Store::plaintext_archive`]).
#[derive(Debug)]
pub struct PlaintextArchive {
    meta: ArchiveMeta,
    path: PathBuf,
    /// The decrypted copy, removed on drop.
    _copy: Option<tempfile::TempPath>,
}

impl PlaintextArchive {
    pub fn meta(&self) -> &ArchiveMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` is a temporary decrypted copy (gone on drop).
    pub fn is_copy(&self) -> bool {
        self._copy.is_some()
    }
}

/// Reads a stored archive's bytes, decrypting an encrypted one. A segment
/// that fails authentication ends the read with an error that
/// [`Error::from_read`] turns back into [`Error::SegmentCorrupt`].
#[derive(Debug)]
pub struct ArchiveReader(Reader);

#[derive(Debug)]
enum Reader {
    Plain(File),
    Sealed(Box<SealedReader>),
}

impl Read for ArchiveReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Reader::Plain(file) => file.read(out),
            Reader::Sealed(sealed) => sealed.read(out),
        }
    }
}

struct SealedReader {
    file: File,
    path: PathBuf,
    opener: Opener,
    size: u64,
    segments: u64,
    /// The segment to load next.
    next: u64,
    /// Bytes of the next loaded segment before the requested offset.
    skip: usize,
    /// The current segment, decrypted in `buffer[start..end]`.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for SealedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl SealedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        // A loop because an empty archive has one empty (but authenticated) segment.
        while self.start == self.end {
            if self.next >= self.segments {
                return Ok(0);
            }
            self.load()?;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }

    fn load(&mut self) -> std::io::Result<()> {
        let index = self.next;
        let last = index + 1 == self.segments;
        let plain = if last {
            self.size - index * SEGMENT as u64
        } else {
            SEGMENT as u64
        };
        let sealed = usize::try_from(plain).unwrap_or(SEGMENT) + encryption::TAG;
        self.buffer.resize(sealed, 0);
        self.file.read_exact(&mut self.buffer[..sealed])?;
        let len = self
            .opener
            .open(index, last, &mut self.buffer[..sealed])
            .map_err(std::io::Error::other)?;
        self.next += 1;
        self.start = self.skip.min(len);
        self.skip = 0;
        self.end = len;
        Ok(())
    }
}
