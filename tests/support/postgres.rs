//! A PostgreSQL server of the test process's own, for the store's PostgreSQL backend: started on
//! first use in a temporary folder on a loopback port (as the `postgres` user when the tests run
//! as root, since the server refuses root), and stopped, its folder removed, when the process
//! exits. Each caller gets a database of its own ([`database`]).
//!
//! `FERRY_TEST_STORE=postgres` runs the tests' nodes on it ([`wanted`]); `.ci/setup-postgres`
//! installs Debian's server where it is missing. Shared by the store's unit tests and the
//! integration tests, so it uses only the standard library and crates ferry itself depends on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether the tests' stores are to run on PostgreSQL (`FERRY_TEST_STORE=postgres`).
pub fn wanted() -> bool {
    std::env::var("FERRY_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The URL of a new, empty database on this process's server, started on first use. Panics with
/// the reason when the server cannot be started. May be called on an async runtime's thread: the
/// blocking client runs on a thread of its own.
pub fn database() -> String {
    std::thread::spawn(create_database).join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn create_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let server = server();
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut admin = postgres::Client::connect(&server.url("postgres"), postgres::NoTls)
        .unwrap_or_else(|e| panic!("the test PostgreSQL server does not answer: {e}"));
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    server.url(&name)
}

/// A new database holding what the one at `url` holds (no one may be connected to it): its URL.
pub fn copy_database(url: &str) -> String {
    let url = url.to_owned();
    std::thread::spawn(move || {
        static COPIES: AtomicUsize = AtomicUsize::new(0);
        let (base, name) = url.rsplit_once('/').unwrap();
        let copy = format!("{name}_copy{}", COPIES.fetch_add(1, Ordering::Relaxed));
        let mut admin = postgres::Client::connect(&format!("{base}/postgres"), postgres::NoTls).unwrap();
        // A stopped node's connections may take a moment to close.
        let began = Instant::now();
        while let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {name}")) {
            assert!(began.elapsed() < Duration::from_secs(10), "cannot copy {name}: {e:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("{base}/{copy}")
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// How many of the other connections to the database at `url` are encrypted, and how many not.
pub fn connections_by_tls(url: &str) -> (i64, i64) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Ends every other connection to the database at `url`, as a restart or a failover of its
/// server would, and returns once their server processes are gone: how many were ended.
pub fn end_connections(url: &str) -> i64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let sql = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()";
        client.query_one(sql, &[]).unwrap().get(0)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A new database as [`database`] makes it, or `None` where no server can be started and the
/// tests do not run under CI (`CI` unset): the caller skips, saying so. Under CI it panics.
pub fn database_or_skip(test: &str) -> Option<String> {
    if std::env::var_os("CI").is_some() {
        return Some(database());
    }
    match std::thread::spawn(|| server_started().map(|_| ())).join().unwrap() {
        Ok(()) => Some(database()),
        Err(why) => {
            eprintln!("skipping {test}: no PostgreSQL server ({why}); run .ci/setup-postgres");
            None
        }
    }
}

/// The PEM file of the CA that signed the server's certificate (for `127.0.0.1`): `[store] ca`.
pub fn ca_file() -> PathBuf {
    server();
    server_dir().join("ca.pem")
}

/// The running server.
pub struct Server {
    port: u16,
}

impl Server {
    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://ferry@127.0.0.1:{}/{name}", self.port)
    }
}

fn server() -> &'static Server {
    match server_started() {
        Ok(server) => server,
        Err(why) => panic!("cannot start a PostgreSQL server for the tests: {why} (run .ci/setup-postgres)"),
    }
}

fn server_started() -> Result<&'static Server, String> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// The folder of the server's programs: `initdb` on PATH, else Debian's newest.
fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL's server is not installed (no /usr/lib/postgresql)".to_owned())?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    found.pop().ok_or_else(|| "no initdb under /usr/lib/postgresql".to_owned())
}

/// The uid and gid of the `postgres` user, which runs the server when the tests run as root.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// A command that runs as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Result<Command, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_user().ok_or("running as root, and there is no `postgres` user to run the server")?;
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The folder of this process's server.
fn server_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ferry-test-pg-{}", std::process::id()))
}

/// The server's process id, once started (0 before).
static SERVER_PID: AtomicI32 = AtomicI32::new(0);

/// Run by `exit`: stops the server (fast shutdown, killed after 10 s) and removes its folder,
/// which holds a few hundred MB of databases and WAL.
extern "C" fn stop_server() {
    let pid = SERVER_PID.load(Ordering::SeqCst);
    if pid == 0 {
        return;
    }
    // SAFETY: kill and waitpid on the server, a child of this process that nothing else waits on.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        let began = Instant::now();
        while libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == 0 {
            if began.elapsed() > Duration::from_secs(10) {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_dir_all(server_dir());
}

/// Writes a CA (`ca.pem`) and the server's certificate for `127.0.0.1`, signed by it, with its
/// key (readable by the server's user alone, as the server demands) into `dir`: their paths.
fn tls_files(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: rcgen::Error| e.to_string();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ferry tests' PostgreSQL CA");
    let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .and_then(|p| p.signed_by(&key, &ca))
        .map_err(fail)?;
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    let write = |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()));
    write(&dir.join("ca.pem"), &ca.pem())?;
    write(&cert_file, &cert.pem())?;
    write(&key_file, &key.serialize_pem())?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    if is_root() {
        let (uid, gid) = postgres_user().ok_or("running as root, and there is no `postgres` user")?;
        std::os::unix::fs::chown(&key_file, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    Ok((cert_file, key_file))
}

/// Removes the folders of earlier test processes' servers whose process is gone: killed, they
/// could not remove their own.
fn remove_stale_servers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("ferry-test-pg-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    remove_stale_servers();
    let dir = server_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if is_root() {
        let (uid, gid) = postgres_user().ok_or("running as root, and there is no `postgres` user")?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let init = as_server_user(&bin.join("initdb"))?
        .args(["-U", "ferry", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&init.stderr)));
    }
    let (cert, key) = tls_files(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = as_server_user(&bin.join("postgres"))?;
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        // Loopback only; the tests' speed, not durability: the tests do not cut the power.
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=400", "-c", "fsync=off"])
        .args(["-c", "full_page_writes=off", "-c", "shared_buffers=64MB"])
        // Each test's database is a copy of the template, written to the WAL: keep it small.
        .args(["-c", "min_wal_size=32MB", "-c", "max_wal_size=64MB"])
        // TLS for whoever asks ([`ca_file`]); plain connections are served too.
        .args(["-c", "ssl=on", "-c", &format!("ssl_cert_file={}", cert.display())])
        .args(["-c", &format!("ssl_key_file={}", key.display())])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?);
    // The server stops (fast shutdown) when this process exits ([`stop_server`]), or when the
    // thread that started it ends if the process is killed: the thread below never returns.
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = cmd.spawn().map_err(|e| format!("postgres: {e}"));
        if let Ok(child) = &started {
            SERVER_PID.store(child.id() as i32, Ordering::SeqCst);
            // SAFETY: registers a plain function, run once at exit.
            unsafe { libc::atexit(stop_server) };
        }
        let _ = tx.send(started.map(|_| ()));
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let server = Server { port };
    let began = Instant::now();
    loop {
        match postgres::Client::connect(&server.url("postgres"), postgres::NoTls) {
            Ok(_) => return Ok(server),
            Err(e) if began.elapsed() > Duration::from_secs(30) => {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(format!("the server did not answer within 30 s: {e}\n{log}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
