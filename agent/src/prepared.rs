//! What a restore left on this node: the checkpoint image imported into
//! containerd and its build directory (OCI layout, import tarball, and with
//! encryption at rest the decrypted layer), or with the runtime-handler
//! backend its grant ([`crate::grants`]). A checkpoint is a copy of a
//! process's memory, so all of it goes as soon as the restore finished or
//! failed (the controller asks), when the archive is deleted, and in any
//! case once it is older than a TTL (a controller that never asked).
//!
//! ```text
//! <images>/<archive id>/        build directory of the image
//! <images>/<archive id>.refs    "<failover> <reference>" per image imported into containerd,
//!                               or "<failover> grant:<grant>" per grant
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::containerd::ContainerdImporter;
use crate::grants::{Grants, REFERENCE_PREFIX};
use crate::store::untouched_for;
use crate::{Error, names};

/// One line of a refs file: the failover it was prepared for, the image.
type Prepared<'a> = (&'a str, &'a str);

/// What one release removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Images removed from containerd.
    pub images: Vec<String>,
    /// Restore grants removed.
    pub grants: Vec<String>,
    /// Bytes of the build directory removed.
    pub bytes: u64,
}

/// The prepared restores of this node.
#[derive(Debug)]
pub struct PreparedRestores {
    dir: PathBuf,
    importer: Option<ContainerdImporter>,
    grants: Option<Grants>,
    busy: tokio::sync::Mutex<()>,
}

impl PreparedRestores {
    pub fn new(dir: PathBuf, importer: Option<ContainerdImporter>) -> Self {
        Self {
            dir,
            importer,
            grants: None,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Restores are prepared as grants for ferry's runtime handler.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = Some(grants);
        self
    }

    pub fn grants(&self) -> Option<&Grants> {
        self.grants.as_ref()
    }

    /// Where the image of `archive_id` is built.
    pub fn build_dir(&self, archive_id: &str) -> PathBuf {
        self.dir.join(archive_id)
    }

    fn refs_path(&self, archive_id: &str) -> PathBuf {
        self.dir.join(format!("{archive_id}.refs"))
    }

    /// Notes that `reference` is imported for `archive_id` on behalf of
    /// `failover` (empty: none named), before the import, so a crash in
    /// between still leaves a trace to clean up.
    pub fn record(&self, archive_id: &str, failover: &str, reference: &str) -> Result<(), Error> {
        names::archive_id("archive_id", archive_id)?;
        let failover = if failover.is_empty() { "-" } else { failover };
        if failover != "-" {
            names::uid("failover", failover)?;
        }
        let path = self.refs_path(archive_id);
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        writeln!(file, "{failover} {reference}").map_err(|e| Error::io("writing", &path, e))
    }

    /// Held while a restore is prepared or released, so a release that
    /// comes late (a cancelled failover) never removes what a newer
    /// preparation of the same archive is building or importing.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.busy.lock().await
    }

    /// Removes what was prepared for `archive_id` on behalf of `failover`
    /// (everything when empty), and the build directory once nothing of the
    /// archive is left; nothing prepared is no error.
    pub async fn release(&self, archive_id: &str, failover: &str) -> Result<Released, Error> {
        names::archive_id("archive_id", archive_id)?;
        let _busy = self.lock().await;
        let refs_path = self.refs_path(archive_id);
        let refs = match fs::read_to_string(&refs_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("reading", &refs_path, e)),
        };
        let (gone, kept): (Vec<Prepared<'_>>, Vec<Prepared<'_>>) = refs
            .lines()
            .filter_map(|line| line.trim().split_once(' '))
            .partition(|(owner, _)| failover.is_empty() || *owner == failover);
        let gone: Vec<&str> = gone.into_iter().map(|(_, reference)| reference).collect();
        let mut released = Released::default();
        for reference in &gone {
            if let Some(grant) = reference.strip_prefix(REFERENCE_PREFIX) {
                if let Some(grants) = &self.grants {
                    let grants = grants.clone();
                    let name = grant.to_owned();
                    released.bytes += tokio::task::spawn_blocking(move || grants.remove(&name))
                        .await
                        .map_err(|e| {
                            Error::io("removing grant", grant, std::io::Error::other(e))
                        })??;
                    released.grants.push(grant.to_owned());
                }
            } else if let Some(importer) = &self.importer
                && importer.remove(reference).await?
            {
                released.images.push((*reference).to_owned());
            }
        }
        if !kept.is_empty() {
            let rest: String = kept
                .iter()
                .map(|(owner, reference)| format!("{owner} {reference}\n"))
                .collect();
            fs::write(&refs_path, rest).map_err(|e| Error::io("writing", &refs_path, e))?;
            return Ok(released);
        }
        let build = self.build_dir(archive_id);
        released.bytes += tokio::task::spawn_blocking(move || remove_tree(&build))
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
            .filter(|entry| untouched_for(&entry.path(), ttl))
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
pub(crate) fn remove_tree(path: &std::path::Path) -> Result<u64, Error> {
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
        let failover = "3f2a1b4c-0000-4000-8000-000000000001";
        let newer = "3f2a1b4c-0000-4000-8000-000000000002";
        // A retry of the same preparation, then a newer failover's.
        for grant in ["00", "01"] {
            prepared
                .record(
                    &id,
                    failover,
                    &format!("localhost/ferry/checkpoint/demo/counter/app:{grant}"),
                )
                .unwrap();
        }
        assert_eq!(prepared.older_than(Duration::ZERO), vec![id.clone()]);
        assert!(prepared.older_than(Duration::from_secs(3600)).is_empty());

        prepared
            .record(&id, newer, "localhost/ferry/checkpoint/demo/counter/app:02")
            .unwrap();
        // Releasing the first failover keeps what the newer one still has.
        assert_eq!(prepared.release(&id, failover).await.unwrap().bytes, 0);
        assert!(build.exists());
        let refs = fs::read_to_string(dir.path().join(format!("{id}.refs"))).unwrap();
        assert_eq!(
            refs,
            format!("{newer} localhost/ferry/checkpoint/demo/counter/app:02\n")
        );

        let released = prepared.release(&id, newer).await.unwrap();
        assert_eq!(released.bytes, 4096);
        assert!(!build.exists());
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        assert_eq!(
            prepared.release(&id, "").await.unwrap(),
            Released::default()
        );
        assert!(prepared.release("../etc", "").await.is_err());
    }
}
