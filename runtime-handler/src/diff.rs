//! What the checkpointed container had changed in its rootfs
//! (`rootfs-diff.tar`, an OCI layer with whiteouts; containerd's is
//! gzip-compressed whatever its name says), applied to the replacement's
//! rootfs before the restore. The tar comes from a tenant's
//! container, so a child process chrooted into that rootfs unpacks it: a
//! symlink in it can only lead somewhere inside.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The hidden command line of the chrooted child.
pub const CHILD_COMMAND: &str = "--ferry-apply-rootfs-diff";

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Applies `tar` (if there is one) to `rootfs`, in a chrooted child.
pub fn apply(rootfs: &Path, tar: &Path) -> Result<(), Error> {
    if !tar.exists() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(io("find the ferry-runc binary".into()))?;
    let output = Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(rootfs)
        .arg(tar)
        .output()
        .map_err(io(format!("run the child that applies {}", tar.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "applying {} to {}: {}",
        tar.display(),
        rootfs.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// Where a whiteout entry points, inside the chroot; `None` for an entry
/// that is not one.
fn whiteout_target(path: &Path) -> Option<(PathBuf, bool)> {
    let name = path.file_name()?.to_str()?;
    let hidden = name.strip_prefix(WHITEOUT)?;
    let parent: PathBuf = path
        .parent()
        .unwrap_or(Path::new(""))
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let parent = Path::new("/").join(parent);
    if name == OPAQUE {
        Some((parent, true))
    } else {
        Some((parent.join(hidden), false))
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// The child: opens the tar, chroots into the rootfs and unpacks it there.
pub fn child(args: &[String]) -> Result<(), Error> {
    let [rootfs, tar] = args else {
        return Err(Error::Invalid(format!(
            "usage: {CHILD_COMMAND} ROOTFS TAR (got {args:?})"
        )));
    };
    let mut file = std::fs::File::open(tar).map_err(io(format!("open {tar}")))?;
    let mut magic = [0u8; 2];
    let gzip = std::io::Read::read(&mut file, &mut magic).map_err(io(format!("read {tar}")))? == 2
        && magic == [0x1f, 0x8b];
    std::io::Seek::rewind(&mut file).map_err(io(format!("read {tar}")))?;
    std::os::unix::fs::chroot(rootfs).map_err(io(format!("chroot into {rootfs}")))?;
    std::env::set_current_dir("/").map_err(io(format!("enter {rootfs}")))?;
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io(format!("read {tar}")))?;
    for entry in entries {
        let mut entry = entry.map_err(io(format!("read {tar}")))?;
        let path = entry
            .path()
            .map_err(io(format!("read an entry of {tar}")))?
            .into_owned();
        match whiteout_target(&path) {
            Some((dir, true)) => {
                for child in
                    std::fs::read_dir(&dir).map_err(io(format!("list {}", dir.display())))?
                {
                    let child = child.map_err(io(format!("list {}", dir.display())))?;
                    remove(&child.path()).map_err(io(format!("clear {}", dir.display())))?;
                }
            }
            Some((target, false)) => {
                remove(&target).map_err(io(format!("remove {}", target.display())))?;
            }
            None => {
                entry
                    .unpack_in("/")
                    .map_err(io(format!("unpack {} from {tar}", path.display())))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_name_what_they_delete_inside_the_root() {
        assert_eq!(
            whiteout_target(Path::new("etc/.wh.passwd")),
            Some((PathBuf::from("/etc/passwd"), false))
        );
        assert_eq!(
            whiteout_target(Path::new("../../var/.wh..wh..opq")),
            Some((PathBuf::from("/var"), true))
        );
        assert_eq!(whiteout_target(Path::new("etc/passwd")), None);
    }
}
