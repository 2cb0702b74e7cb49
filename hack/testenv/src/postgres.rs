//! A real PostgreSQL server for tests, from Debian's server package
//! (`postgresql`): initdb into a fresh temporary directory and a server on a
//! free loopback port, run as an unprivileged user when the tests run as
//! root (PostgreSQL refuses root), killed with the test process like etcd.
//! Password authentication over TCP, optionally TLS with a test CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

use crate::Error;
use crate::process::{Component, free_port, fresh_dir};

/// The role ferry writes as, and its database.
pub const USER: &str = "ferry";
pub const PASSWORD: &str = "ferry-test-password";
pub const DATABASE: &str = "ferry_history";
const SUPERUSER_PASSWORD: &str = "superuser-test-password";

/// The unprivileged account PostgreSQL runs as under root.
const NOBODY: (u32, u32) = (65534, 65534);

/// One PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    tls: bool,
    server: Option<Component>,
    /// The CA of the server's certificate (PEM file), with TLS on.
    pub ca: Option<PathBuf>,
}

/// Where Debian puts the server's binaries (`/usr/lib/postgresql/<major>/bin`),
/// the newest major version first; `FERRY_POSTGRES_BIN` overrides.
fn binaries() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("FERRY_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Error::Assets(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: apt-get install postgresql \
             (hack/test.sh does), or set FERRY_POSTGRES_BIN"
                .into(),
        )
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

impl Postgres {
    /// A fresh server with the `ferry` role and its database; TLS on if
    /// `tls` (then `sslmode=require` URLs verify against [`Postgres::ca`]).
    pub async fn start(tls: bool) -> Result<Self, Error> {
        let bin = binaries()?;
        let dir = fresh_dir()?.join("postgres");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let user = running_as_root().then_some(NOBODY);
        let password_file = dir.join("superuser-password");
        std::fs::write(&password_file, SUPERUSER_PASSWORD)
            .map_err(io("writing", &password_file))?;
        if let Some((uid, gid)) = user {
            for path in [&dir, &password_file] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown", path))?;
            }
        }
        let data = dir.join("data");
        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb.args([
            "--pgdata",
            &data.to_string_lossy(),
            "--username=postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            &format!("--pwfile={}", password_file.display()),
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(io("running initdb in", &data))?;
        if !out.status.success() {
            return Err(Error::Postgres(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let ca = if tls {
            Some(server_certificate(&dir, &data, user)?)
        } else {
            None
        };
        let mut postgres = Self {
            bin,
            dir,
            port: free_port()?,
            tls,
            server: None,
            ca,
        };
        postgres.run().await?;
        let (client, connection) =
            tokio_postgres::connect(&postgres.superuser_url("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|e| {
                    Error::Postgres(format!("connecting as the superuser: {}", db_error(&e)))
                })?;
        tokio::spawn(connection);
        // One statement each: CREATE DATABASE refuses to run in the
        // implicit transaction of a multi-statement batch.
        for statement in [
            format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
            format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        ] {
            client
                .batch_execute(&statement)
                .await
                .map_err(|e| Error::Postgres(format!("{statement}: {}", db_error(&e))))?;
        }
        Ok(postgres)
    }

    /// Starts the server on the same data and port (after [`Postgres::kill`]).
    pub async fn run(&mut self) -> Result<(), Error> {
        let data = self.dir.join("data");
        let mut args = vec![
            "-D".to_owned(),
            data.to_string_lossy().into_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-k".to_owned(),
            self.dir.to_string_lossy().into_owned(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
            "-c".to_owned(),
            "fsync=off".to_owned(),
        ];
        if self.tls {
            for setting in [
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
            ] {
                args.extend(["-c".to_owned(), setting.to_owned()]);
            }
        }
        let user = running_as_root().then_some(NOBODY);
        let mut server = Component::spawn_as(
            "postgres",
            &self.bin.join("postgres"),
            &args,
            &self.dir,
            user,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            server.ensure_running()?;
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && tokio_postgres::connect(&self.superuser_url("postgres"), tokio_postgres::NoTls)
                    .await
                    .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "PostgreSQL".into(),
                    waited: Duration::from_secs(30),
                    dir: self.dir.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.server = Some(server);
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
        // The postmaster's children (backends) go with it once it is
        // gone; wait for the port to be free for `run`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A killed postmaster leaves its pid file; the next start checks it.
        let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
    }

    /// SIGSTOP to the server and its backends: it accepts connections but
    /// answers nothing, as an overloaded server would. [`Postgres::resume`]
    /// ends it.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    fn signal_all(&self, signal: libc::c_int) {
        let Some(server) = &self.server else { return };
        let postmaster = server.pid();
        let mut pids = vec![postmaster];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                let parent = stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if parent == Some(postmaster) {
                    pids.push(pid);
                }
            }
        }
        for pid in pids {
            // SAFETY: kill only sends a signal.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL ferry is configured with: the `ferry` role on its database,
    /// `sslmode=require` with TLS on, `disable` without.
    pub fn url(&self) -> String {
        self.url_as(USER, PASSWORD, DATABASE)
    }

    /// A URL for any role and database.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        let mode = if self.tls { "require" } else { "disable" };
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{database}?sslmode={mode}",
            self.port
        )
    }

    /// The superuser's URL, without TLS (the harness's own connections).
    fn superuser_url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// A superuser connection, to look at what ferry wrote.
    pub async fn superuser(&self) -> Result<tokio_postgres::Client, Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.superuser_url(DATABASE), tokio_postgres::NoTls)
                .await
                .map_err(|e| {
                    Error::Postgres(format!("connecting as the superuser: {}", db_error(&e)))
                })?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// The server's own message when there is one ("db error" says nothing).
fn db_error(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |db| db.message().to_owned())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost in the data
/// directory (where `ssl_cert_file` finds it); returns the CA's PEM file.
fn server_certificate(dir: &Path, data: &Path, user: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferry test PostgreSQL CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &issuer)?;
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca_cert.pem()).map_err(io("writing", &ca_path))?;
    for (name, text) in [
        ("server.crt", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text).map_err(io("writing", &path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &path))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io("chown", &path))?;
        }
    }
    Ok(ca_path)
}
