//! What a restore left on this node: the checkpoint image imported into
//! containerd and its build directory (OCI layout, import tarball, and with
//! encryption at rest the decrypted layer). A checkpoint is a copy of a
//! process's memory, so all of it goes as soon as the restore finished or
//! failed (the controller asks), when the archive is deleted, and in any
//! case once it is older than a TTL (a controller that never asked).
//!
//! ```text
//! <images>/<archive id>/        build directory of the image
//! <images>/<archive id>.refs    references imported into containerd, one a line
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::containerd::ContainerdImporter;
use crate::{Error, names};

/// What one release removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Images removed from containerd.
    pub images: Vec<String>,
    /// Bytes of the build directory removed.
    pub bytes: u64,
}

/// The prepared restores of this node.
#[derive(Debug)]
pub struct PreparedRestores {
    dir: PathBuf,
    importer: Option<ContainerdImporter>,
}

impl PreparedRestores {
    pub fn new(dir: PathBuf, importer: Option<ContainerdImporter>) -> Self {
        Self { dir, importer }
    }

    /// Where the image of `archive_id` is built.
    pub fn build_dir(&self, archive_id: &str) -> PathBuf {
        self.dir.join(archive_id)
    }

    fn refs_path(&self, archive_id: &str) -> PathBuf {
        self.dir.join(format!("{archive_id}.refs"))
    }

    /// Notes that `reference` was imported for `archive_id`, before the
    /// import, so a crash in between still leaves a trace to clean up.
    pub fn record(&self, archive_id: &str, reference: &str) -> Result<(), Error> {
        names::archive_id("archive_id", archive_id)?;
        let path = self.refs_path(archive_id);
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        writeln!(file, "{reference}").map_err(|e| Error::io("writing", &path, e))
    }

    /// Removes everything prepared for `archive_id`; nothing prepared is no
    /// error.
    pub async fn release(&self, archive_id: &str) -> Result<Released, Error> {
        names::archive_id("archive_id", archive_id)?;
        let refs_path = self.refs_path(archive_id);
        let refs = match fs::read_to_string(&refs_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("reading", &refs_path, e)),
        };
        let mut released = Released::default();
        if let Some(importer) = &self.importer {
            for reference in refs.lines().map(str::trim).filter(|r| !r.is_empty()) {
                if importer.remove(reference).await? {
                    released.images.push(reference.to_owned());
                }
            }
        }
        let build = self.build_dir(archive_id);
        released.bytes = tokio::task::spawn_blocking(move || remove_tree(&build))
            .await
            .map_err(|e| Error::io("removing", archive_id, std::io::Error::other(e)))??;
        match fs::remove_file(&refs_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &refs_path, e)),
        }
        Ok(released)
    }

    /// Archive ids with something prepared that was last touched more than
    /// `ttl` ago.
    pub fn older_than(&self, ttl: Duration) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > ttl)
            })
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".refs").unwrap_or(&name).to_owned();
                names::archive_id("file", &id).is_ok().then_some(id)
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Removes `path` and everything below it; returns the bytes it held.
fn remove_tree(path: &std::path::Path) -> Result<u64, Error> {
    fn size(path: &std::path::Path) -> u64 {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::read_dir(path)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| size(&e.path()))
                        .sum()
                })
                .unwrap_or(0),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        }
    }
    let bytes = size(path);
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_release_removes_the_build_and_its_record_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = PreparedRestores::new(dir.path().to_owned(), None);
        let id = "ab".repeat(32);
        let build = prepared.build_dir(&id);
        fs::create_dir_all(build.join("layout/blobs")).unwrap();
        fs::write(build.join("layout/blobs/layer"), vec![7u8; 4096]).unwrap();
        prepared
            .record(&id, "localhost/ferry/checkpoint/demo/counter/app:00")
            .unwrap();
        assert_eq!(prepared.older_than(Duration::ZERO), vec![id.clone()]);
        assert!(prepared.older_than(Duration::from_secs(3600)).is_empty());

        let released = prepared.release(&id).await.unwrap();
        assert_eq!(released.bytes, 4096);
        assert!(!build.exists());
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        assert_eq!(prepared.release(&id).await.unwrap(), Released::default());
        assert!(prepared.release("../etc").await.is_err());
    }
}
