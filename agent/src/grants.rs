//! The runtime-handler restore backend: a prepared restore is a grant that
//! ferry's runtime handler (`ferry-runc`, installed on the node by
//! [`install_handler`]) restores from when the replacement container
//! starts. Nothing goes through the runtime's restore API, no image is
//! built or imported, and the pod keeps its image. The layout and the
//! rules of a grant are `ferry_runc::grant`'s; this side writes grants,
//! and removes them once their failover is over or they are too old.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_runc::grant::{CLAIMED, Grant};

use crate::store::ArchiveMeta;
use crate::{Error, names};

/// What a grant is recorded as among a failover's prepared restores.
pub const REFERENCE_PREFIX: &str = "grant:";

/// The runtime handler's name: the RuntimeClass's `handler`, the runtime
/// entry in containerd's (or CRI-O's) configuration.
pub const HANDLER: &str = "ferry";

/// The node's grants directory (the same path on the host and in the
/// agent's container: ferry-runc reads it on the host).
#[derive(Clone, Debug)]
pub struct Grants {
    dir: PathBuf,
}

impl Grants {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Unpacks the (verified, plaintext) archive at `archive` into grant
    /// `name` for `meta`'s container in `meta`'s namespace. The grant
    /// appears whole or not at all (written aside, then renamed).
    pub fn prepare(&self, archive: &Path, meta: &ArchiveMeta, name: &str) -> Result<(), Error> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        // Only root reads checkpoints: they hold a process's memory.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restricting", &self.dir, e))?;
        let staging = self.dir.join(format!(".staging-{name}"));
        let written = (|| {
            crate::runc::unpack_checkpoint(archive, &staging)?;
            let record = Grant {
                namespace: meta.namespace.clone(),
                container: meta.container.clone(),
                archive: meta.id.clone(),
                pod_uid: None,
            };
            let path = staging.join("grant.json");
            let mut file = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io("creating", &path, e))?;
            let json = serde_json::to_vec(&record).map_err(|e| Error::Runtime {
                what: "restore",
                message: format!("encoding grant {name}: {e}"),
            })?;
            file.write_all(&json)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("writing", &path, e))?;
            let target = self.dir.join(name);
            fs::rename(&staging, &target).map_err(|e| Error::io("publishing", &target, e))
        })();
        if written.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        written
    }

    /// Removes grant `name`, unused or claimed; returns the bytes it held.
    pub fn remove(&self, name: &str) -> Result<u64, Error> {
        names::grant("grant", name)?;
        let mut bytes = crate::prepared::remove_tree(&self.dir.join(name))?;
        bytes += crate::prepared::remove_tree(&self.dir.join(format!(".staging-{name}")))?;
        let claimed = self.dir.join(CLAIMED);
        if let Ok(entries) = fs::read_dir(&claimed) {
            for entry in entries.filter_map(Result::ok) {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}."))
                {
                    bytes += crate::prepared::remove_tree(&entry.path())?;
                }
            }
        }
        Ok(bytes)
    }
}

/// Installs ferry-runc on the node: the binary from the agent's image into
/// `dir` (a host directory; the runtime handler's `BinaryName` names
/// `dir/ferry-runc`), beside its configuration. Both are replaced by a
/// rename, so a runtime starting a container meanwhile runs a whole file.
pub fn install_handler(
    binary: &Path,
    dir: &Path,
    config: &ferry_runc::Config,
) -> Result<PathBuf, Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let target = dir.join("ferry-runc");
    let staging = dir.join(".ferry-runc.new");
    fs::copy(binary, &staging).map_err(|e| Error::io("copying ferry-runc to", &staging, e))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("making executable", &staging, e))?;
    fs::rename(&staging, &target).map_err(|e| Error::io("installing", &target, e))?;
    let json = serde_json::to_vec_pretty(config).map_err(|e| Error::Runtime {
        what: "runtime handler",
        message: format!("encoding ferry-runc's configuration: {e}"),
    })?;
    let config_path = dir.join(ferry_runc::config::FILE_NAME);
    let staging = dir.join(".ferry-runc.json.new");
    fs::write(&staging, json).map_err(|e| Error::io("writing", &staging, e))?;
    fs::rename(&staging, &config_path).map_err(|e| Error::io("installing", &config_path, e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_and_ferry_runc_name_the_grant_alike() {
        // The controller removes this annotation once a restore is done.
        assert_eq!(
            ferry_api::names::RESTORE_GRANT_ANNOTATION,
            ferry_runc::grant::GRANT_ANNOTATION
        );
    }

    #[test]
    fn the_handler_is_installed_whole_with_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("image-ferry-runc");
        fs::write(&binary, b"#!/bin/true\n").unwrap();
        let config = ferry_runc::Config {
            runc: "/usr/sbin/runc".into(),
            grants: "/var/lib/ferry/grants".into(),
        };
        let host = dir.path().join("opt/ferry/bin");
        let installed = install_handler(&binary, &host, &config).unwrap();
        assert_eq!(installed, host.join("ferry-runc"));
        let mode = fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            ferry_runc::Config::read(&host.join("ferry-runc.json")).unwrap(),
            config
        );
        // Again (an agent restart): replaced, nothing left over.
        install_handler(&binary, &host, &config).unwrap();
        let mut names: Vec<_> = fs::read_dir(&host)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ferry-runc", "ferry-runc.json"]);
    }

    #[test]
    fn removing_a_grant_takes_its_claimed_copies_too() {
        let dir = tempfile::tempdir().unwrap();
        let grants = Grants::new(dir.path().to_owned());
        let name = "0123456789abcdef0123456789abcdef";
        fs::create_dir_all(dir.path().join(name).join("checkpoint")).unwrap();
        fs::write(
            dir.path().join(name).join("checkpoint/pages-1.img"),
            [1u8; 100],
        )
        .unwrap();
        fs::create_dir_all(dir.path().join(CLAIMED).join(format!("{name}.c1"))).unwrap();
        fs::create_dir_all(
            dir.path()
                .join(CLAIMED)
                .join("ffffffffffffffffffffffffffffffff.c2"),
        )
        .unwrap();
        assert_eq!(grants.remove(name).unwrap(), 100);
        assert!(!dir.path().join(name).exists());
        let left: Vec<_> = fs::read_dir(dir.path().join(CLAIMED))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["ffffffffffffffffffffffffffffffff.c2"]);
        assert!(grants.remove("../../etc").is_err());
    }
}
