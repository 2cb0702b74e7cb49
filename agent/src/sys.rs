//! Small facts from the operating system.

use std::path::Path;

/// Bytes available to unprivileged writers on the file system of `path`.
pub fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to
    // writable memory of the right type; statvfs only writes into it.
    #[allow(unsafe_code)]
    let stats = unsafe {
        if libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to
/// disk without waiting, so the final fsync of a large archive has little
/// left to do. Advisory: failures are ignored.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor stays open for the call (borrowed from `file`);
    // sync_file_range reads no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A pidfd for process `pid`: signals sent through it reach that process
/// or nobody, even if the pid is reused after it exits.
pub fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` is a descriptor the kernel just opened for us and nothing
    // else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL to the process behind `pidfd`.
pub fn pidfd_kill(pidfd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor stays open for the call (borrowed); a null
    // siginfo is allowed and no memory of ours is read or written.
    #[allow(unsafe_code)]
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL to `pid` (where pidfds are unavailable).
pub fn kill(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill takes two integers; `pid` is positive, so it names one
    // process, never a group or every process.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, libc::SIGKILL) };
    if sent != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps large buffers (replication chunks, gRPC message buffers: 1 MiB
/// and up) on malloc's heap instead of a fresh mmap each: every chunk would
/// otherwise fault in 256 new pages and unmap them again (a fifth of the
/// sending agent's CPU in a profile of the replication bench). Freed memory above
/// `TRIM` per arena goes back to the kernel, so memory stays bounded.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 8 << 20;
        const TRIM: libc::c_int = 16 << 20;
        // SAFETY: mallopt only sets glibc malloc parameters; called once at
        // start-up. Failure (returns 0) leaves the defaults: harmless.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM);
        }
    }
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Architecture in Kubernetes/Go spelling (`amd64`, `arm64`).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `criu --version`'s version, or empty when CRIU is not installed.
pub fn criu_version(dir: Option<&std::path::Path>) -> String {
    let criu = dir.map_or_else(|| std::path::PathBuf::from("criu"), |d| d.join("criu"));
    std::process::Command::new(criu)
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .find_map(|line| line.strip_prefix("Version:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default()
}
