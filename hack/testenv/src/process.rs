//! Child processes that die with the test process.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

#[derive(Debug)]
pub(crate) struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    pub(crate) fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        Self::spawn_as(name, binary, args, log_dir, None)
    }

    /// Like `spawn`, as the user `(uid, gid)` if given (servers that refuse
    /// to run as root, such as PostgreSQL).
    pub(crate) fn spawn_as(
        name: &'static str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
        user: Option<(u32, u32)>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(log_dir).map_err(|source| Error::Io {
            action: "creating",
            path: log_dir.to_owned(),
            source,
        })?;
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).map_err(|source| Error::Io {
            action: "creating",
            path: log.clone(),
            source,
        })?;
        let stderr = file.try_clone().map_err(|source| Error::Io {
            action: "duplicating",
            path: log.clone(),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let child = spawn_with_parent_death_signal(command).map_err(|source| Error::Spawn {
            component: name,
            source,
        })?;
        Ok(Self { name, child, log })
    }

    pub(crate) fn ensure_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, 30),
            }),
            Err(source) => Err(Error::Spawn {
                component: self.name,
                source,
            }),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel delivers the parent-death signal when the *thread* that forked
/// the child exits. Test threads come and go, so every child is forked by one
/// thread that lives as long as the process: when the test binary exits or
/// aborts, etcd and friends get SIGKILL.
fn spawn_with_parent_death_signal(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    set_parent_death_signal(&mut command);
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this loop never ends and
                // the thread stays alive until the process exits.
            })
            .map(|_| ())
            .unwrap_or_else(|err| panic!("starting the testenv spawner thread: {err}"));
        sender
    });
    let (reply, response) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?;
    response
        .recv()
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; the closure allocates
    // nothing and touches no locks, as required between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        action: "binding",
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| Error::Io {
            action: "reading address of",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// A new directory `$TMPDIR/ferry-testenv/<pid>-<n>`; directories of
/// processes that no longer exist (a shared control plane is never dropped)
/// are removed first.
pub(crate) fn fresh_dir() -> Result<PathBuf, Error> {
    static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
    let root = std::env::temp_dir().join("ferry-testenv");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_string_lossy()
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn tail(path: &Path, lines: usize) -> String {
    // Give a dying process a moment to flush its last words.
    std::thread::sleep(Duration::from_millis(50));
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    // Components echo their flags at start; those lines say nothing about the failure.
    let all: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|line| !line.contains("FLAG: --"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
