//! Writing an image: a staging directory renamed into place only when
//! complete, private files, content-addressed blobs and the OCI archive.

use super::*;

pub(super) const STAGING_MARK: &str = ".building-";
pub(super) const RETIRED_MARK: &str = ".retired-";

/// A hidden sibling of `out_dir` that holds the image until it is complete;
/// removed on drop unless published.
pub(super) struct Staging {
    pub(super) path: PathBuf,
    pub(super) published: bool,
}

pub(super) fn unique_sibling(out_dir: &Path, mark: &str) -> Result<PathBuf, Error> {
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
    pub(super) fn create(out_dir: &Path) -> Result<Self, Error> {
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
    pub(super) fn publish(mut self, out_dir: &Path) -> Result<(), Error> {
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

pub(super) fn make_dir(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("create directory", path, e))
}

pub(super) fn sync_dir(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", path, e))
}

pub(super) fn create_private(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create file", path, e))
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = create_private(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write file", path, e))
}

pub(super) fn to_json(value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Io {
        action: "serialize image JSON",
        path: PathBuf::new(),
        source: io::Error::other(e),
    })
}

/// Writes a JSON blob under its digest; returns `sha256:<hex>` and size.
pub(super) fn write_json_blob(blobs: &Path, value: &Value) -> Result<(String, u64), Error> {
    let bytes = to_json(value)?;
    let hex = hex::encode(Sha256::digest(&bytes));
    write_private(&blobs.join(&hex), &bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// What a layer's bytes hash to: the sha256 OCI names every blob by, and
/// the archive id the store names them by (the same digits when the
/// archive is named by its sha256).
pub(super) struct LayerHashes {
    pub(super) sha256_hex: String,
    pub(super) archive_id: String,
    pub(super) size: u64,
}

/// Both hashes of a layer in one pass over its bytes.
struct LayerHasher {
    sha256: Sha256,
    /// The archive's own hash when that is not sha256.
    archive: Option<Hasher>,
    size: u64,
}

impl LayerHasher {
    fn new(archive_hash: ContentHash) -> Self {
        Self {
            sha256: Sha256::new(),
            archive: (archive_hash != ContentHash::Sha256).then(|| archive_hash.hasher()),
            size: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(archive) = &mut self.archive {
            archive.update(bytes);
        }
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> LayerHashes {
        let sha256_hex = hex::encode(self.sha256.finalize());
        let archive_id = match self.archive {
            Some(archive) => archive.finish_id(),
            None => sha256_hex.clone(),
        };
        LayerHashes {
            sha256_hex,
            archive_id,
            size: self.size,
        }
    }
}

/// Puts the archive's bytes at `blob`: a hard link when the archive is
/// private already (0600) and on the same file system, a copy otherwise.
/// Returns what is at `blob` hashes to (its archive id by `archive_hash`),
/// and whether it is a link.
pub(super) fn place_layer(
    archive: &Path,
    blob: &Path,
    archive_hash: ContentHash,
) -> Result<(LayerHashes, bool), Error> {
    let source =
        fs::metadata(archive).map_err(|e| Error::io("stat checkpoint archive", archive, e))?;
    if source.mode() & 0o777 == 0o600 {
        match fs::hard_link(archive, blob) {
            Ok(()) => return Ok((hash_file(blob, archive_hash)?, true)),
            Err(e) => {
                tracing::debug!(archive = %archive.display(), error = %e, "cannot link layer, copying")
            }
        }
    }
    Ok((copy_hashing(archive, blob, archive_hash)?, false))
}

fn hash_file(path: &Path, archive_hash: ContentHash) -> Result<LayerHashes, Error> {
    let mut input = File::open(path).map_err(|e| Error::io("open layer blob", path, e))?;
    let mut hasher = LayerHasher::new(archive_hash);
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read layer blob", path, e)),
        }
    }
    Ok(hasher.finish())
}

fn copy_hashing(from: &Path, to: &Path, archive_hash: ContentHash) -> Result<LayerHashes, Error> {
    let mut input = File::open(from).map_err(|e| Error::io("open checkpoint archive", from, e))?;
    let mut output = create_private(to)?;
    let mut hasher = LayerHasher::new(archive_hash);
    let mut buffer = vec![0u8; COPY_BUFFER];
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
    }
    output
        .sync_all()
        .map_err(|e| Error::io("sync layer blob", to, e))?;
    Ok(hasher.finish())
}

/// Writes the layout as an OCI archive: a tar with `oci-layout`,
/// `index.json` and `blobs/sha256/*`, streamed from the layout's files.
pub(super) fn write_oci_archive(
    layout: &Path,
    blobs: &[&str],
    to: &Path,
    mtime: i64,
) -> Result<(), Error> {
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
