//! End-to-end tests of the `ferry` binary as a process (API.md §1 and §2): `init`, `cert
//! fingerprint`, `peer add`, `service add`, `check`, usage errors, the two-node walkthrough with
//! `ferry run`, and `ferry demo`.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `ferry` command with a clean environment: no `FERRY_CONFIG` inherited from the caller.
fn ferry_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env_remove("FERRY_CONFIG")
        .env_remove("FERRY_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs `ferry ARGS` to completion (bounded by a deadline) and returns its output.
fn ferry<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_bounded(ferry_cmd().args(args), Duration::from_secs(30))
}

/// Runs `cmd`, killing it if it has not finished within `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn ferry");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for ferry"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-empty lines of `s`.
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit code {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// A usage/file/config error: exit 2, at least one line on stderr, nothing on stdout.
#[track_caller]
fn assert_usage_error(o: &Output) {
    assert_code(o, 2);
    assert!(!stderr(o).trim().is_empty(), "a refusal must say why on stderr");
    assert!(stdout(o).trim().is_empty(), "a refusal printed on stdout:\n{}", stdout(o));
}

/// Extracts the one `sha256:<64 lowercase hex>` fingerprint in `text`.
#[track_caller]
fn fingerprint_in(text: &str) -> String {
    let found: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == '`' || c == ',')
        .filter(|w| w.starts_with("sha256:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(found.len(), 1, "expected one fingerprint in:\n{text}");
    let fp = found.into_iter().next().unwrap();
    assert_fingerprint_format(&fp);
    fp
}

#[track_caller]
fn assert_fingerprint_format(fp: &str) {
    let hex = fp.strip_prefix("sha256:").unwrap_or_else(|| panic!("{fp:?} does not start with sha256:"));
    assert_eq!(hex.len(), 64, "{fp:?}: not 64 hex digits");
    assert!(hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{fp:?}: not lowercase hex");
}

/// `sha256:` + hex of SHA-256 over the DER of the first certificate in the PEM file.
fn fingerprint_of_pem(path: &Path) -> String {
    let text = fs::read(path).unwrap();
    let pem = pem::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(pem.tag(), "CERTIFICATE", "{}", path.display());
    let digest = Sha256::digest(pem.contents());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A node directory made with `ferry init`.
struct NodeDir {
    dir: PathBuf,
    config: PathBuf,
    fingerprint: String,
}

impl NodeDir {
    fn cert(&self) -> PathBuf {
        self.dir.join("certs/node.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("certs/node.key")
    }

    fn config_arg(&self) -> String {
        self.config.to_str().unwrap().to_owned()
    }

    fn config_text(&self) -> Vec<u8> {
        fs::read(&self.config).unwrap()
    }

    fn toml(&self) -> toml::Table {
        toml::from_str(&fs::read_to_string(&self.config).unwrap()).unwrap()
    }
}

/// `ferry init --dir root/name --name name [--listen L --api A]`, asserted to succeed.
fn init(root: &Path, name: &str, addrs: Option<(SocketAddr, SocketAddr)>) -> NodeDir {
    let dir = root.join(name);
    let mut args = vec!["init".to_owned(), "--dir".into(), dir.to_str().unwrap().into(), "--name".into(), name.into()];
    if let Some((listen, api)) = addrs {
        args.extend(["--listen".into(), listen.to_string(), "--api".into(), api.to_string()]);
    }
    let out = ferry(&args);
    assert_code(&out, 0);
    let fingerprint = fingerprint_in(&stdout(&out));
    NodeDir { config: dir.join("config/ferry.toml"), dir, fingerprint }
}

fn peer_add(node: &NodeDir, name: &str, address: &str, cert: &Path) -> Output {
    ferry([
        "peer",
        "add",
        "--name",
        name,
        "--address",
        address,
        "--cert",
        cert.to_str().unwrap(),
        "--config",
        &node.config_arg(),
    ])
}

fn service_add(node: &NodeDir, id: &str, base_url: &str, allow: Option<&str>) -> Output {
    let config = node.config_arg();
    let mut args = vec!["service", "add", "--id", id, "--base-url", base_url, "--config", &config];
    if let Some(allow) = allow {
        args.extend(["--allow", allow]);
    }
    ferry(args)
}

fn check(node: &NodeDir) -> Output {
    ferry(["check", "--config", &node.config_arg()])
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A `ferry run` child process, killed when dropped (also when the test panics); its stderr goes
/// to a log file that is printed if the test fails.
struct RunningNode {
    name: String,
    child: Child,
    log: PathBuf,
}

impl RunningNode {
    fn start(node: &NodeDir, name: &str) -> RunningNode {
        RunningNode::start_with(node, name, &[])
    }

    /// Like [`RunningNode::start`], with extra environment variables.
    fn start_with(node: &NodeDir, name: &str, env: &[(&str, &str)]) -> RunningNode {
        let log = node.dir.join("run.log");
        let file = fs::File::create(&log).unwrap();
        let child = ferry_cmd()
            .env("RUST_LOG", "info,quinn=warn")
            .envs(env.iter().copied())
            .args(["run", "--config", &node.config_arg()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn ferry run");
        RunningNode { name: name.to_owned(), child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a name for `kill`, e.g. `TERM`).
    fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` and waits up to `limit` for the process to exit.
    fn terminate(&mut self, signal: &str, limit: Duration) -> Option<ExitStatus> {
        self.signal(signal);
        self.wait_for_exit(limit)
    }

    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of `ferry run` for {} ----\n{}", self.name, self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// ferry init, ferry cert fingerprint
// ---------------------------------------------------------------------------------------------

#[test]
fn init_creates_the_node_directory_and_prints_its_fingerprint() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);

    assert!(node.config.is_file(), "config/ferry.toml missing");
    assert!(node.cert().is_file(), "certs/node.pem missing");
    assert!(node.key().is_file(), "certs/node.key missing");
    for dir in ["certs/peers", "data", "outbox"] {
        assert!(node.dir.join(dir).is_dir(), "{dir}/ missing");
    }
    #[cfg(unix)]
    assert_eq!(mode(&node.key()), 0o600, "node.key must be mode 0600");

    // The key is a PEM private key, the certificate a PEM certificate.
    let key = pem::parse(fs::read(node.key()).unwrap()).expect("node.key is PEM");
    assert!(key.tag().contains("PRIVATE KEY"), "{}", key.tag());

    // The printed fingerprint is SHA-256 over the certificate's DER …
    assert_eq!(node.fingerprint, fingerprint_of_pem(&node.cert()));

    // … and what `ferry cert fingerprint` prints, alone on its line.
    let out = ferry(["cert", "fingerprint", "--config", &node.config_arg()]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim(), node.fingerprint);

    // The config names everything relatively, with the documented defaults.
    let conf = node.toml();
    let n = conf["node"].as_table().unwrap();
    assert_eq!(n["name"].as_str(), Some("org-a"));
    assert_eq!(n["listen"].as_str(), Some("0.0.0.0:7443"));
    assert_eq!(n["api"].as_str(), Some("127.0.0.1:8888"));
    assert_eq!(n.get("data_dir").and_then(|v| v.as_str()), Some("data"));
    assert_eq!(n.get("certs_dir").and_then(|v| v.as_str()), Some("certs"));
    let roots = conf["files"]["send_roots"].as_array().unwrap();
    assert_eq!(roots, &vec![toml::Value::String("outbox".into())]);

    // A fresh node passes `ferry check`.
    let out = check(&node);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ok"), "{}", stdout(&out));
}

#[cfg(unix)]
#[test]
fn init_writes_the_config_for_its_owner_only_and_edits_keep_it_so() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    // The config will hold api.tokens.
    assert_eq!(mode(&a.config), 0o600, "config/ferry.toml must be mode 0600");
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_eq!(mode(&a.config), 0o600, "an edit must not widen the config's mode");
    // An operator's choice (0640 for the node's group under systemd) survives edits too.
    set_mode(&a.config, 0o640);
    assert_code(&service_add(&a, "1", "http://127.0.0.1:9", Some("org-b")), 0);
    assert_eq!(mode(&a.config), 0o640);
}

#[test]
fn init_honours_listen_and_api() {
    let root = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.0.1:17443".parse().unwrap();
    let api: SocketAddr = "127.0.0.1:18888".parse().unwrap();
    let node = init(root.path(), "org-a", Some((listen, api)));
    let conf = node.toml();
    assert_eq!(conf["node"]["listen"].as_str(), Some("127.0.0.1:17443"));
    assert_eq!(conf["node"]["api"].as_str(), Some("127.0.0.1:18888"));
}

#[test]
fn init_refuses_to_overwrite_a_node() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    let key = fs::read(node.key()).unwrap();
    let cert = fs::read(node.cert()).unwrap();
    let config = node.config_text();

    let out = ferry(["init", "--dir", node.dir.to_str().unwrap(), "--name", "org-a"]);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "one line expected:\n{}", stderr(&out));
    assert_eq!(fs::read(node.key()).unwrap(), key, "the key was changed");
    assert_eq!(fs::read(node.cert()).unwrap(), cert, "the cert was changed");
    assert_eq!(node.config_text(), config, "the config was changed");

    // Also when only the key is left (config removed): the key is never overwritten.
    fs::remove_file(&node.config).unwrap();
    let out = ferry(["init", "--dir", node.dir.to_str().unwrap(), "--name", "org-a"]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("node.key"), "should name the key: {}", stderr(&out));
    assert_eq!(fs::read(node.key()).unwrap(), key, "the key was changed");
    assert!(!node.config.exists(), "a config was written after a refusal");
}

#[test]
fn init_rejects_an_invalid_name() {
    let root = tempfile::tempdir().unwrap();
    let long = "x".repeat(65);
    for name in ["org a", "", "../evil", "org/a", "ü", long.as_str()] {
        let dir = root.path().join("node");
        let out = ferry(["init", "--dir", dir.to_str().unwrap(), "--name", name]);
        assert_usage_error(&out);
        assert_eq!(lines(&stderr(&out)).len(), 1, "{name:?}: {}", stderr(&out));
        assert!(
            !dir.join("certs/node.key").exists() && !dir.join("config/ferry.toml").exists(),
            "{name:?}: files were written after a refusal"
        );
    }
}

#[test]
fn init_rejects_a_bad_listen_address() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let out = ferry(["init", "--dir", dir.to_str().unwrap(), "--name", "org-a", "--listen", "not-an-address"]);
    assert_code(&out, 2);
    assert!(!dir.join("certs/node.key").exists());
}

#[test]
fn config_defaults_to_the_ferry_config_variable() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);

    let out = run_bounded(
        ferry_cmd().env("FERRY_CONFIG", &node.config).args(["cert", "fingerprint"]),
        Duration::from_secs(30),
    );
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim(), node.fingerprint);

    let out = run_bounded(ferry_cmd().env("FERRY_CONFIG", &node.config).arg("check"), Duration::from_secs(30));
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ok"), "{}", stdout(&out));

    // A FERRY_CONFIG naming a missing file is an error that names the file.
    let missing = root.path().join("nowhere/ferry.toml");
    let out =
        run_bounded(ferry_cmd().env("FERRY_CONFIG", &missing).args(["cert", "fingerprint"]), Duration::from_secs(30));
    assert_usage_error(&out);
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));

    // An explicit --config wins over the variable.
    let out = run_bounded(
        ferry_cmd().env("FERRY_CONFIG", &missing).args(["cert", "fingerprint", "--config", &node.config_arg()]),
        Duration::from_secs(30),
    );
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim(), node.fingerprint);
}

#[test]
fn without_flag_or_variable_the_config_is_etc_ferry() {
    if Path::new("/etc/ferry/ferry.toml").exists() {
        // Under CI (`CI` set) a test that cannot run fails: a CI machine has no ferry installed.
        let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
        assert!(!in_ci, "/etc/ferry/ferry.toml exists on this CI machine: the default config path cannot be tested");
        eprintln!("skipped: /etc/ferry/ferry.toml exists on this machine");
        return;
    }
    let out = ferry(["cert", "fingerprint"]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("/etc/ferry/ferry.toml"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// ferry peer add, ferry service add
// ---------------------------------------------------------------------------------------------

#[test]
fn peer_add_pins_the_certificate_and_adds_a_peer_table() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);

    let out = peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), b.fingerprint);

    let pinned = a.dir.join("certs/peers/org-b.pem");
    assert_eq!(
        fs::read(&pinned).unwrap(),
        fs::read(b.cert()).unwrap(),
        "certs/peers/org-b.pem is not a copy of org-b's certificate"
    );

    let conf = a.toml();
    let peers = conf["peer"].as_array().expect("[[peer]] tables");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["name"].as_str(), Some("org-b"));
    assert_eq!(peers[0]["address"].as_str(), Some("127.0.0.1:7444"));
    let cert = peers[0]["cert"].as_str().unwrap();
    assert_eq!(a.dir.join("certs").join(cert), pinned, "cert is relative to certs_dir");

    // The edit keeps the rest of the file and the result still checks.
    let text = String::from_utf8(a.config_text()).unwrap();
    assert!(text.contains("send_roots"), "{text}");
    let out = check(&a);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ok"), "{}", stdout(&out));

    // A DNS name is a valid address.
    let c = init(root.path(), "org-c", None);
    let out = peer_add(&a, "org-c", "ferry.org-c.example:7443", &c.cert());
    assert_code(&out, 0);
    assert_eq!(a.toml()["peer"].as_array().unwrap().len(), 2);
}

#[test]
fn refused_peer_adds_leave_the_config_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    let c = init(root.path(), "org-c", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    let before = a.config_text();
    let pinned_b = fs::read(a.dir.join("certs/peers/org-b.pem")).unwrap();

    // The same peer twice, even with another certificate.
    for cert in [b.cert(), c.cert()] {
        let out = peer_add(&a, "org-b", "127.0.0.1:7444", &cert);
        assert_usage_error(&out);
        assert!(stderr(&out).contains("org-b"), "{}", stderr(&out));
        assert_eq!(a.config_text(), before, "config changed after a refusal");
        assert_eq!(
            fs::read(a.dir.join("certs/peers/org-b.pem")).unwrap(),
            pinned_b,
            "the pinned certificate was replaced"
        );
    }

    // This node's own certificate.
    let out = peer_add(&a, "org-self", "127.0.0.1:7445", &a.cert());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-self.pem").exists());

    // A missing certificate file: named in the message.
    let missing = root.path().join("no-such-cert.pem");
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &missing);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "should name {}: {}", missing.display(), stderr(&out));
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-c.pem").exists());

    // A file that is not a certificate (the private key).
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &c.key());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-c.pem").exists());

    // A bad address and a bad name: refused, and nothing half-written.
    for (name, address) in [("org-c", "no-port"), ("org-c", "host:0"), ("org c", "127.0.0.1:7446")] {
        let out = peer_add(&a, name, address, &c.cert());
        assert_usage_error(&out);
        assert_eq!(a.config_text(), before, "config changed after refusing {name:?} {address:?}");
        assert!(
            !a.dir.join("certs/peers/org-c.pem").exists(),
            "a pinned certificate was left after refusing {name:?} {address:?}"
        );
    }

    // This node's own name.
    let out = peer_add(&a, "org-a", "127.0.0.1:7446", &c.cert());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // After all that, org-c can still be added properly.
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &c.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), c.fingerprint);
}

#[test]
fn service_add_adds_a_service_table() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    let c = init(root.path(), "org-c", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&peer_add(&a, "org-c", "127.0.0.1:7445", &c.cert()), 0);

    let out = service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b"));
    assert_code(&out, 0);
    let out = service_add(&a, "2", "http://127.0.0.1:8081", Some("org-b,org-c"));
    assert_code(&out, 0);

    let conf = a.toml();
    let services = conf["service"].as_array().expect("[[service]] tables");
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["id"].as_str(), Some("1"));
    assert_eq!(services[0]["base_url"].as_str(), Some("http://127.0.0.1:8080"));
    let allow = |i: usize| -> Vec<&str> {
        services[i]["allow"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
    };
    assert_eq!(allow(0), ["org-b"]);
    assert_eq!(allow(1), ["org-b", "org-c"]);
    assert_code(&check(&a), 0);
}

#[test]
fn refused_service_adds_leave_the_config_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b")), 0);
    let before = a.config_text();

    // An unknown peer in --allow: named.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("org-z"));
    assert_usage_error(&out);
    assert!(stderr(&out).contains("org-z"), "{}", stderr(&out));
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // One unknown among known ones.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("org-b,org-z"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // The same id twice.
    let out = service_add(&a, "1", "http://127.0.0.1:9090", Some("org-b"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // Not an http(s) URL.
    let out = service_add(&a, "2", "ftp://127.0.0.1/", Some("org-b"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // `*` allows every configured peer.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("*"));
    assert_code(&out, 0);
}

// ---------------------------------------------------------------------------------------------
// ferry check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_names_every_problem_one_per_line() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    fs::write(
        &node.config,
        r#"
[node]
name = "org-a"
listen = "nowhere"
api = "127.0.0.1:8888"
colour = "blue"

[api]
heartbeat = "15 parsecs"
"#,
    )
    .unwrap();

    let out = check(&node);
    assert_usage_error(&out);
    let err = stderr(&out);
    let err_lines = lines(&err);
    assert_eq!(err_lines.len(), 3, "one line per problem expected:\n{err}");
    for (needle, what) in
        [("colour", "the unknown key"), ("heartbeat", "the bad duration"), ("listen", "the bad address")]
    {
        let matching: Vec<_> = err_lines.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(matching.len(), 1, "{what} ({needle}) not named on one line:\n{err}");
    }
    assert!(err_lines.iter().all(|l| l.contains(node.config.to_str().unwrap())), "every line should say where:\n{err}");
}

#[cfg(unix)]
#[test]
fn check_warns_when_a_config_holding_tokens_is_readable_by_others() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    let warned = |out: &Output| lines(&stdout(out)).iter().filter(|l| l.starts_with("warning:")).count();

    // Readable by everyone, but nothing secret in it yet.
    set_mode(&node.config, 0o644);
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 0, "{}", stdout(&out));

    let mut doc: toml_edit::DocumentMut = fs::read_to_string(&node.config).unwrap().parse().unwrap();
    doc["api"]["tokens"] = toml_edit::value(toml_edit::Array::from_iter(["0123456789abcdef-secret"]));
    fs::write(&node.config, doc.to_string()).unwrap();
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("api.tokens") && text.contains("0644") && text.contains("chmod 600"), "{text}");
    assert!(!text.contains("0123456789abcdef-secret"), "the warning must not show the token: {text}");

    // Readable by the owner and the node's group only: no warning.
    set_mode(&node.config, 0o640);
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 0, "{}", stdout(&out));
}

#[test]
fn check_names_a_deleted_peer_certificate() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&check(&a), 0);

    let pinned = a.dir.join("certs/peers/org-b.pem");
    fs::remove_file(&pinned).unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    let err = stderr(&out);
    assert_eq!(lines(&err).len(), 1, "{err}");
    assert!(err.contains("org-b.pem"), "should name the file: {err}");
    assert!(err.contains("org-b"), "should name the peer: {err}");
}

#[test]
fn check_refuses_a_key_that_does_not_match_the_certificate() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    fs::remove_file(a.key()).unwrap();
    fs::copy(b.key(), a.key()).unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));

    fs::write(a.key(), "garbage\n").unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));
}

#[test]
fn check_on_a_missing_or_malformed_config() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("config/ferry.toml");
    let out = ferry(["check", "--config", missing.to_str().unwrap()]);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));

    let node = init(root.path(), "org-a", None);
    fs::write(&node.config, "[node\nname = ").unwrap();
    let out = check(&node);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(node.config.to_str().unwrap()), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// Usage errors
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("n");
    let d = dir.to_str().unwrap();
    for args in [
        vec!["frobnicate"],
        vec!["init", "--dir", d, "--name", "org-a", "--bogus"],
        vec!["init", "--dir", d],
        vec!["check", "--verbose-please"],
        vec!["peer", "remove", "--name", "x"],
        vec!["cert", "sign"],
        vec![],
    ] {
        let out = ferry(&args);
        assert_code(&out, 2);
        assert!(!stderr(&out).trim().is_empty(), "{args:?}: nothing on stderr");
    }
    assert!(!dir.exists(), "a refused command created files");

    // --help and --version are not errors.
    let out = ferry(["--help"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("init"), "{}", stdout(&out));
    let out = ferry(["--version"]);
    assert_code(&out, 0);
}

#[test]
fn run_refuses_a_missing_config_or_an_unreadable_key() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("config/ferry.toml");
    let out = ferry(["run", "--config", missing.to_str().unwrap()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));

    let node = init(root.path(), "org-a", Some((free_udp(), free_tcp())));
    fs::write(node.key(), "not a key\n").unwrap();
    let mut running = RunningNode::start(&node, "org-a");
    let status =
        running.wait_for_exit(Duration::from_secs(10)).expect("`ferry run` with an unreadable key should exit");
    assert_eq!(status.code(), Some(2), "log:\n{}", running.log());
    assert!(running.log().contains("node.key"), "log:\n{}", running.log());
}

// ---------------------------------------------------------------------------------------------
// The walkthrough: two nodes as two admins would set them up, run as processes
// ---------------------------------------------------------------------------------------------

/// What the recording service saw: method, path and query, headers.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HashMap<String, String>,
}

/// Starts an HTTP service on 127.0.0.1 that records every request and answers JSON.
async fn recording_service() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    use axum::http::{HeaderMap, Method, Uri};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let record = record.clone();
        async move {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let uri = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            record.lock().unwrap().push(Seen { method: method.to_string(), uri: uri.clone(), headers });
            axum::Json(json!({"users": ["Ada"], "uri": uri}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Polls GET /v1/health until it answers 200, or fails after `limit`.
async fn wait_healthy(client: &reqwest::Client, node: &RunningNode, api: SocketAddr, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let url = format!("http://{api}/v1/health");
    loop {
        if let Ok(resp) = client.get(&url).send().await {
            if resp.status() == 200 {
                return resp.json().await.expect("health is JSON");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: GET /v1/health did not answer 200 within {limit:?}\nlog:\n{}",
            node.name,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_two_nodes_as_processes() {
    let root = tempfile::tempdir().unwrap();
    let (service, seen) = recording_service().await;

    let (a_link, a_api) = (free_udp(), free_tcp());
    let (b_link, b_api) = (free_udp(), free_tcp());
    let a = init(root.path(), "org-a", Some((a_link, a_api)));
    let b = init(root.path(), "org-b", Some((b_link, b_api)));

    let out = peer_add(&a, "org-b", &b_link.to_string(), &b.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), b.fingerprint);
    let out = peer_add(&b, "org-a", &a_link.to_string(), &a.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), a.fingerprint);
    let out = service_add(&b, "1", &format!("http://{service}"), Some("org-a"));
    assert_code(&out, 0);
    assert_code(&check(&a), 0);
    assert_code(&check(&b), 0);

    let mut node_a = RunningNode::start(&a, "org-a");
    let mut node_b = RunningNode::start(&b, "org-b");

    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
    let health_a = wait_healthy(&client, &node_a, a_api, Duration::from_secs(15)).await;
    let health_b = wait_healthy(&client, &node_b, b_api, Duration::from_secs(15)).await;
    assert_eq!(health_a["data"]["name"], "org-a", "{health_a}");
    assert_eq!(health_a["data"]["fingerprint"], a.fingerprint.as_str(), "{health_a}");
    assert_eq!(health_b["data"]["name"], "org-b", "{health_b}");
    assert_eq!(health_b["data"]["fingerprint"], b.fingerprint.as_str(), "{health_b}");

    let resp = client
        .post(format!("http://{a_api}/v1/requests"))
        .json(&json!({
            "peer": "org-b", "service": "1", "path": "/user/list",
            "method": "GET", "form": {"pageSize": 1}
        }))
        .send()
        .await
        .expect("POST /v1/requests");
    let status = resp.status();
    let answer: Value = resp.json().await.expect("a JSON envelope");
    assert_eq!(status, 200, "{answer}\nlog a:\n{}\nlog b:\n{}", node_a.log(), node_b.log());
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["status"], 200, "{answer}");
    assert_eq!(answer["data"]["body"]["users"], json!(["Ada"]), "{answer}");
    let id = answer["data"]["id"].as_str().unwrap_or_else(|| panic!("data.id missing: {answer}")).to_owned();
    assert!(!id.is_empty());

    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "the service was called {calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, "GET");
    assert_eq!(call.uri, "/user/list?pageSize=1");
    assert_eq!(call.headers.get("x-ferry-peer").map(String::as_str), Some("org-a"), "{call:?}");
    assert_eq!(call.headers.get("x-ferry-request-id").map(String::as_str), Some(id.as_str()), "{call:?}");

    // SIGTERM: a graceful stop with exit status 0.
    let status = node_b
        .terminate("TERM", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("org-b did not stop within 10 s of SIGTERM\nlog:\n{}", node_b.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", node_b.log());
    // SIGINT stops as gracefully.
    let status = node_a
        .terminate("INT", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("org-a did not stop within 10 s of SIGINT\nlog:\n{}", node_a.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", node_a.log());
}

// ---------------------------------------------------------------------------------------------
// ferry demo
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_runs_without_set_up() {
    let out = run_bounded(ferry_cmd().arg("demo"), Duration::from_secs(60));
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("demo complete"), "{text}");
    // Both requests' answers: the GET's user list and the POST's echo of what was created.
    assert!(text.contains("/user/list"), "{text}");
    assert!(text.contains("/user/create"), "{text}");
    assert!(text.contains("Ada"), "{text}");
    assert!(text.matches("\"status\": 200").count() >= 2, "two answers with status 200 expected:\n{text}");
}

/// A node directory set up and started as a `ferry run` process on free loopback ports.
struct Started {
    dir: NodeDir,
    api: SocketAddr,
    link: SocketAddr,
}

/// `ferry init` on free loopback ports.
fn init_on_loopback(root: &Path, name: &str) -> Started {
    let (link, api) = (free_udp(), free_tcp());
    Started { dir: init(root, name, Some((link, api))), api, link }
}

/// Pins each node's certificate on the other.
fn pin_both_ways(x: &Started, x_name: &str, y: &Started, y_name: &str) {
    assert_code(&peer_add(&x.dir, y_name, &y.link.to_string(), &y.dir.cert()), 0);
    assert_code(&peer_add(&y.dir, x_name, &x.link.to_string(), &x.dir.cert()), 0);
}

/// Two `ferry run` processes on loopback, pinned both ways, org-b offering service 1 (a recording
/// service) to org-a, both serving.
struct RunningPair {
    a: Started,
    b: Started,
    node_a: RunningNode,
    node_b: RunningNode,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RunningPair {
    async fn start(root: &Path) -> RunningPair {
        let (service, seen) = recording_service().await;
        let a = init_on_loopback(root, "org-a");
        let b = init_on_loopback(root, "org-b");
        pin_both_ways(&a, "org-a", &b, "org-b");
        assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
        let node_a = RunningNode::start(&a.dir, "org-a");
        let node_b = RunningNode::start(&b.dir, "org-b");
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
        wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
        RunningPair { a, b, node_a, node_b, client, seen }
    }
}

/// POSTs a sync GET request to `from`'s API; returns the HTTP status and the envelope.
async fn send_request(client: &reqwest::Client, from: SocketAddr, peer: &str, service: &str) -> (u16, Value) {
    let resp = client
        .post(format!("http://{from}/v1/requests"))
        .json(&json!({
            "peer": peer, "service": service, "path": "/user/list",
            "method": "GET", "form": {"pageSize": 1}
        }))
        .send()
        .await
        .expect("POST /v1/requests");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON envelope"))
}

/// Sends the request until it answers 200 with `data.status` 200, or fails after `limit`.
async fn request_until_ok(
    client: &reqwest::Client,
    from: SocketAddr,
    peer: &str,
    service: &str,
    limit: Duration,
    logs: &[&RunningNode],
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, answer) = send_request(client, from, peer, service).await;
        if status == 200 && answer["code"] == 0 && answer["data"]["status"] == 200 {
            return answer;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = logs.iter().map(|n| format!("log of {}:\n{}", n.name, n.log())).collect();
            panic!("no successful answer within {limit:?}; last: {status} {answer}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_peers_and_services() {
    let root = tempfile::tempdir().unwrap();
    let (service, seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    pin_both_ways(&a, "org-a", &b, "org-b");

    let mut node_a = RunningNode::start(&a.dir, "org-a");
    let mut node_b = RunningNode::start(&b.dir, "org-b");
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;

    // org-b offers no service yet.
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_ne!(status, 200, "{answer}");
    assert!(seen.lock().unwrap().is_empty());

    // The admin adds one while the node runs, and sends SIGHUP.
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    node_b.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = node_b.child.try_wait().unwrap() {
        panic!("SIGHUP stopped the node ({status})\nlog:\n{}", node_b.log());
    }
    let answer = request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
    {
        let calls = seen.lock().unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].headers.get("x-ferry-request-id").map(String::as_str), answer["data"]["id"].as_str());
    }

    // A new peer, pinned while org-b runs, is known after SIGHUP.
    let c = init_on_loopback(root.path(), "org-c");
    pin_both_ways(&b, "org-b", &c, "org-c");
    assert_code(&service_add(&b.dir, "2", &format!("http://{service}"), Some("org-c")), 0);
    node_b.signal("HUP");
    let mut node_c = RunningNode::start(&c.dir, "org-c");
    wait_healthy(&client, &node_c, c.api, Duration::from_secs(15)).await;
    request_until_ok(&client, c.api, "org-b", "2", Duration::from_secs(10), &[&node_b, &node_c]).await;
    {
        let calls = seen.lock().unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].headers.get("x-ferry-peer").map(String::as_str), Some("org-c"));
    }

    for node in [&mut node_a, &mut node_b, &mut node_c] {
        let status = node.terminate("TERM", Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{} log:\n{}", node.name, node.log());
    }
}

#[cfg(unix)]
#[test]
fn run_speaks_sd_notify() {
    use std::os::unix::net::UnixDatagram;

    let root = tempfile::tempdir().unwrap();
    let a = init_on_loopback(root.path(), "org-a");
    let socket_path = root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();

    let notify = socket_path.to_str().unwrap();
    let mut node = RunningNode::start_with(&a.dir, "org-a", &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")]);

    let mut messages = Vec::new();
    let receive_until = |want: &str, limit: Duration, messages: &mut Vec<String>| {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == want);
                messages.push(text);
                if found {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        receive_until("READY=1", Duration::from_secs(15), &mut messages),
        "no READY=1; got {messages:?}\nlog:\n{}",
        node.log()
    );
    assert!(
        receive_until("WATCHDOG=1", Duration::from_secs(3), &mut messages),
        "no WATCHDOG=1 with WATCHDOG_USEC=400000; got {messages:?}"
    );
    let ready = messages.iter().find(|m| m.lines().any(|l| l == "READY=1")).unwrap();
    assert!(ready.lines().any(|l| l.starts_with("STATUS=org-a: 0/0 peers connected")), "{ready:?}");
    // Watchdog pings keep coming, about every 200 ms.
    let started = Instant::now();
    for _ in 0..3 {
        assert!(receive_until("WATCHDOG=1", Duration::from_secs(2), &mut messages), "{messages:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "3 pings took {:?}", started.elapsed());
    // A reload is announced, then READY again.
    node.signal("HUP");
    assert!(receive_until("RELOADING=1", Duration::from_secs(5), &mut messages), "{messages:?}");
    assert!(receive_until("READY=1", Duration::from_secs(5), &mut messages), "{messages:?}");
    node.signal("TERM");
    assert!(
        receive_until("STOPPING=1", Duration::from_secs(10), &mut messages),
        "no STOPPING=1 after SIGTERM; got {messages:?}"
    );
    let status = node.wait_for_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "log:\n{}", node.log());
}

#[test]
fn demo_runs_async_reply_callback_and_file_transfer() {
    let out = run_bounded(ferry_cmd().arg("demo"), Duration::from_secs(60));
    assert_code(&out, 0);
    let text = stdout(&out).to_lowercase();
    for word in ["async", "reply", "callback", "file", "sha256"] {
        assert!(text.contains(word), "demo output never mentions {word:?}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Running as a service: SIGTERM with work under way, reloads, service lifecycle, operator CLI,
// check --connect
// ---------------------------------------------------------------------------------------------

/// Sets (or, with `None`, removes) `key` of the `[[service]]` table `id` in the node's config.
fn set_service_key(node: &NodeDir, id: &str, key: &str, value: Option<&str>) {
    let mut doc: toml_edit::DocumentMut = fs::read_to_string(&node.config).unwrap().parse().unwrap();
    let services = doc["service"].as_array_of_tables_mut().expect("[[service]] tables");
    let table = services.iter_mut().find(|t| t["id"].as_str() == Some(id)).expect("the service");
    match value {
        Some(v) => table[key] = toml_edit::value(v),
        None => {
            table.remove(key);
        }
    }
    fs::write(&node.config, doc.to_string()).unwrap();
}

/// POSTs `body` to the API at `api`; the HTTP status, the `Deprecation` header and the envelope.
async fn post_request(client: &reqwest::Client, api: SocketAddr, body: Value) -> (u16, Option<String>, Value) {
    let resp = client.post(format!("http://{api}/v1/requests")).json(&body).send().await.expect("POST /v1/requests");
    let status = resp.status().as_u16();
    let deprecation = resp.headers().get("deprecation").map(|v| v.to_str().unwrap().to_owned());
    (status, deprecation, resp.json().await.expect("a JSON envelope"))
}

/// GET /v1/requests/{id} until its state is final (success or failed), or `limit` passes.
async fn wait_final(client: &reqwest::Client, api: SocketAddr, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let view: Value =
            client.get(format!("http://{api}/v1/requests/{id}")).send().await.unwrap().json().await.unwrap();
        let state = view["data"]["state"].as_str().unwrap_or_default().to_owned();
        if state == "success" || state == "failed" || Instant::now() >= deadline {
            return view["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service whose `/slow` path takes 1.5 s; it records each call's request id when it arrives
/// and again when it has answered.
async fn slow_service() -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, Uri};
    let (arrived, answered) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (a, b) = (arrived.clone(), answered.clone());
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let (arrived, answered) = (a.clone(), b.clone());
        async move {
            let id = headers.get("x-ferry-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            arrived.lock().unwrap().push(id.clone());
            if uri.path().starts_with("/slow") {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            answered.lock().unwrap().push(id);
            axum::Json(json!({"done": true}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, arrived, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_keeps_async_work_under_way() {
    let root = tempfile::tempdir().unwrap();
    let (service, arrived, answered) = slow_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    pin_both_ways(&a, "org-a", &b, "org-b");
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    let mut node_a = RunningNode::start(&a.dir, "org-a");
    let mut node_b = RunningNode::start(&b.dir, "org-b");
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    let async_to =
        |path: &str| json!({"peer": "org-b", "service": "1", "path": path, "method": "POST", "mode": "async"});

    // org-b is in the middle of a slow service call when it is told to stop.
    let (status, _, answer) = post_request(&client, a.api, async_to("/slow")).await;
    assert_eq!(status, 202, "{answer}");
    let slow = answer["data"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the service was never called\n{}", node_b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = node_b.terminate("TERM", Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "org-b log:\n{}", node_b.log());
    assert_eq!(*answered.lock().unwrap(), vec![slow.clone()], "the call under way was let finish before the exit");

    // org-a holds requests for the stopped peer when it is told to stop.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (status, _, answer) = post_request(&client, a.api, async_to(&format!("/quick/{i}"))).await;
        assert_eq!(status, 202, "{answer}");
        waiting.push(answer["data"]["id"].as_str().unwrap().to_owned());
    }
    let status = node_a.terminate("TERM", Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "org-a log:\n{}", node_a.log());
    assert!(node_a.log().contains("stopped"), "{}", node_a.log());

    // Both back: every request completes, and the interrupted one is not called again.
    let node_a = RunningNode::start(&a.dir, "org-a");
    let node_b = RunningNode::start(&b.dir, "org-b");
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    for id in waiting.iter().chain([&slow]) {
        let view = wait_final(&client, a.api, id, Duration::from_secs(20)).await;
        assert_eq!(view["state"], "success", "{view}\nlog a:\n{}\nlog b:\n{}", node_a.log(), node_b.log());
    }
    let calls = arrived.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|id| **id == slow).count(), 1, "{calls:?}");
    assert_eq!(calls.len(), 4, "each request called the service once: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_config_and_a_removed_peer_is_disconnected() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;

    // A broken file: an unknown key, and the service's allow list emptied.
    let good = fs::read_to_string(&b.dir.config).unwrap();
    let broken = good.replace("allow = [\"org-a\"]", "allow = []\nbogus_key = 1");
    assert_ne!(broken, good);
    fs::write(&b.dir.config, &broken).unwrap();
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_b.log().contains("reload refused") {
        assert!(Instant::now() < deadline, "no `reload refused` line:\n{}", node_b.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node_b.log().contains("bogus_key"), "the log names the problem:\n{}", node_b.log());
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!((status, &answer["data"]["status"]), (200, &json!(200)), "the old config still serves: {answer}");
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A good file without org-a: its connection is closed, and it cannot come back.
    let mut doc: toml_edit::DocumentMut = good.parse().unwrap();
    doc.remove("peer");
    doc["service"][0]["allow"] = toml_edit::value(toml_edit::Array::new());
    fs::write(&b.dir.config, doc.to_string()).unwrap();
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_b.log().contains("removed org-a") {
        assert!(Instant::now() < deadline, "no reload line naming the removed peer:\n{}", node_b.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
        if status == 502 {
            assert_eq!(answer["data"]["error"], "peer_unreachable", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "org-b still answers org-a: {status} {answer}\n{}", node_b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peers: Value = client.get(format!("http://{}/v1/peers", a.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(peers["data"][0]["connected"], false, "{peers}");
    assert_eq!(seen.lock().unwrap().len(), 2, "no call reached the service after the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_and_disabled_services_take_effect_on_sighup() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    let sync = json!({"peer": "org-b", "service": "1", "path": "/x", "method": "GET"});

    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
    let (status, deprecation, answer) = post_request(&client, a.api, sync.clone()).await;
    assert_eq!((status, deprecation), (200, None), "an active service: {answer}");

    set_service_key(&b.dir, "1", "state", Some("deprecated"));
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, deprecation, answer) = post_request(&client, a.api, sync.clone()).await;
        assert_eq!(status, 200, "a deprecated service is still served: {answer}");
        if let Some(value) = deprecation {
            assert_eq!(value, "true");
            assert_eq!(answer["data"]["headers"]["deprecation"], "true", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "no Deprecation header after the reload\n{}", node_b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    set_service_key(&b.dir, "1", "state", Some("disabled"));
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, answer) = post_request(&client, a.api, sync.clone()).await;
        if status == 503 {
            assert_eq!(answer["data"]["error"], "unavailable", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "a disabled service is still served: {answer}\n{}", node_b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls_before = seen.lock().unwrap().len();
    let mut body = sync.clone();
    body["mode"] = "async".into();
    let (status, _, answer) = post_request(&client, a.api, body).await;
    assert_eq!(status, 202, "{answer}");
    let view = wait_final(&client, a.api, answer["data"]["id"].as_str().unwrap(), Duration::from_secs(15)).await;
    assert_eq!(view["state"], "failed", "{view}");
    assert!(view["error"].as_str().unwrap_or_default().contains("disabled"), "{view}");
    assert_eq!(seen.lock().unwrap().len(), calls_before, "a disabled service is never called");

    set_service_key(&b.dir, "1", "state", None);
    node_b.signal("HUP");
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
}

/// Runs `ferry ARGS` with `FERRY_TOKEN` set to `token` when given.
fn ferry_with_token(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = ferry_cmd();
    cmd.args(args);
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_running_pair() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    let (ca, cb) = (a.dir.config_arg(), b.dir.config_arg());

    // send, sync: the service's answer, as a table and as JSON.
    let send = ["send", "--peer", "org-b", "--service", "1", "--path", "/user/list", "--method", "GET"];
    let out = ferry(send.iter().copied().chain(["--form", "pageSize=1", "--config", &ca]));
    assert_code(&out, 0);
    assert!(stdout(&out).contains("org-b answered 200"), "{}", stdout(&out));
    assert!(stdout(&out).contains("Ada"), "{}", stdout(&out));
    assert_eq!(seen.lock().unwrap()[0].uri, "/user/list?pageSize=1");
    let out = ferry(send.iter().copied().chain(["--json", "--config", &ca]));
    assert_code(&out, 0);
    let answer: Value = serde_json::from_str(&stdout(&out)).expect("--json prints JSON");
    assert_eq!(answer["status"], 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(seen.lock().unwrap()[1].headers["x-ferry-request-id"], id);
    // One info line per exchange, on both nodes.
    for (node, peer) in [(&node_a, "org-b"), (&node_b, "org-a")] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = node.log();
            let line = log.lines().find(|l| l.contains(&format!("id={id}"))).map(str::to_owned);
            if let Some(line) = line {
                for want in
                    [" INFO ", "exchange", &format!("peer={peer}"), "path=/user/list", "status=200", "duration_ms="]
                {
                    assert!(line.contains(want), "no {want:?} in {line:?}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "no exchange line for {id} on {}:\n{log}", node.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // peers: the connection the requests used.
    let out = ferry(["peers", "--config", &ca]);
    assert_code(&out, 0);
    let row = lines(&stdout(&out)).into_iter().find(|l| l.starts_with("org-b")).map(str::to_owned);
    let row = row.unwrap_or_else(|| panic!("no org-b row:\n{}", stdout(&out)));
    assert!(row.contains(&b.link.to_string()) && row.contains("yes"), "{row}");
    let out = ferry(["peers", "--json", "--config", &ca]);
    let peers: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(peers[0]["fingerprint"], b.dir.fingerprint.as_str(), "{peers}");

    // send --file: the file arrives whole.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file = a.dir.dir.join("outbox/report.bin");
    fs::write(&file, &bytes).unwrap();
    let out = ferry([
        "send",
        "--peer",
        "org-b",
        "--service",
        "1",
        "--path",
        "/upload",
        "--file",
        file.to_str().unwrap(),
        "--json",
        "--config",
        &ca,
    ]);
    assert_code(&out, 0);
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let received = b.dir.dir.join("data/received/org-a").join(answer["id"].as_str().unwrap()).join("report.bin");
    assert_eq!(Sha256::digest(fs::read(&received).unwrap()), Sha256::digest(&bytes), "{}", received.display());

    // send --async --reply, pending, reply, status, requests.
    let out = ferry(send.iter().copied().chain(["--async", "--reply", "--json", "--config", &ca]));
    assert_code(&out, 0);
    let accepted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let callback_id = loop {
        let out = ferry(["pending", "--json", "--config", &cb]);
        assert_code(&out, 0);
        let pending: Value = serde_json::from_str(&stdout(&out)).unwrap();
        if let Some(cb) = pending[0]["callback_id"].as_str() {
            break cb.to_owned();
        }
        assert!(Instant::now() < deadline, "nothing pending on org-b\n{}", node_b.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = ferry(["pending", "--config", &cb]);
    assert!(stdout(&out).lines().next().unwrap().starts_with("CALLBACK_ID"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&callback_id) && stdout(&out).contains("GET /user/list"), "{}", stdout(&out));
    let out = ferry(["reply", &callback_id, "--data", r#"{"rows":[7]}"#, "--config", &cb]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("accepted"), "{}", stdout(&out));
    let out = ferry(["reply", "no-such-callback", "--reject", "no", "--config", &cb]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    let out = ferry(["reply", &callback_id, "--data", "{not json", "--config", &cb]);
    assert_usage_error(&out);

    let view = wait_final(&client, a.api, &id, Duration::from_secs(10)).await;
    assert_eq!(view["state"], "success", "{view}");
    let out = ferry(["status", &id, "--json", "--config", &ca]);
    assert_code(&out, 0);
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["replies"][0]["data"], json!({"rows": [7]}), "{status}");
    let out = ferry(["status", &id, "--config", &ca]);
    assert_code(&out, 0);
    for want in [id.as_str(), "success", "async, reply", r#"{"rows":[7]}"#] {
        assert!(stdout(&out).contains(want), "no {want:?} in:\n{}", stdout(&out));
    }
    let out = ferry(["status", "no-such-id", "--config", &ca]);
    assert_code(&out, 1);

    let out = ferry(["requests", "--state", "success", "--peer", "org-b", "--config", &ca]);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = ferry(["requests", "--state", "failed", "--json", "--config", &ca]);
    let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(page["items"], json!([]), "{page}");

    // Tokens, set while the node runs: the commands need one, from --token or FERRY_TOKEN.
    let token = "operator-token-0123456789";
    let config = fs::read_to_string(&a.dir.config).unwrap().replace("tokens = []", &format!("tokens = [\"{token}\"]"));
    fs::write(&a.dir.config, config).unwrap();
    node_a.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ferry(["peers", "--config", &ca]);
        if out.status.code() == Some(1) {
            assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
            break;
        }
        assert!(Instant::now() < deadline, "tokens not in force after SIGHUP\n{}", node_a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_code(&ferry(["peers", "--token", token, "--config", &ca]), 0);
    assert_code(&ferry_with_token(&["peers", "--config", &ca], Some(token)), 0);
    assert_code(&ferry_with_token(&["peers", "--config", &ca], Some("wrong-token-0123456789")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_names_each_unreachable_peer_and_service() {
    let root = tempfile::tempdir().unwrap();
    let (service, _seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    let c = init_on_loopback(root.path(), "org-c"); // pinned by org-b, never started
    let d = init_on_loopback(root.path(), "org-d"); // running, but does not pin org-b
    pin_both_ways(&a, "org-a", &b, "org-b");
    assert_code(&peer_add(&b.dir, "org-c", &c.link.to_string(), &c.dir.cert()), 0);
    assert_code(&peer_add(&b.dir, "org-d", &d.link.to_string(), &d.dir.cert()), 0);
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    let dead = free_tcp();
    assert_code(&service_add(&b.dir, "2", &format!("http://{dead}"), Some("org-a")), 0);
    let node_a = RunningNode::start(&a.dir, "org-a");
    let node_d = RunningNode::start(&d.dir, "org-d");
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_d, d.api, Duration::from_secs(15)).await;

    // Without --connect nothing is dialed: the files are fine.
    assert_code(&check(&b.dir), 0);
    let started = Instant::now();
    let out = ferry(["check", "--connect", "--config", &b.dir.config_arg()]);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_code(&out, 1);
    let (ok, failed) = (stdout(&out), stderr(&out));
    assert!(ok.contains("ok: peer `org-a`"), "{ok}");
    assert!(ok.contains("ok: service `1`"), "{ok}");
    let line = |name: &str| failed.lines().find(|l| l.contains(name)).map(str::to_owned);
    let c_line = line("peer `org-c`").unwrap_or_else(|| panic!("org-c not named:\n{failed}"));
    assert!(c_line.contains("no answer"), "{c_line}");
    let d_line = line("peer `org-d`").unwrap_or_else(|| panic!("org-d not named:\n{failed}"));
    assert!(d_line.contains("pinned"), "{d_line}");
    let s_line = line("service `2`").unwrap_or_else(|| panic!("service 2 not named:\n{failed}"));
    assert!(s_line.contains("unreachable") && s_line.contains(&dead.to_string()), "{s_line}");
    assert_eq!(failed.lines().count(), 3, "{failed}");
}

#[test]
fn under_journald_log_lines_carry_priorities_and_no_timestamps() {
    let root = tempfile::tempdir().unwrap();
    let a = init_on_loopback(root.path(), "org-a");
    let mut node = RunningNode::start_with(&a.dir, "org-a", &[("JOURNAL_STREAM", "8:12345")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.log().contains("serving") {
        assert!(Instant::now() < deadline, "no serving line:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = node.terminate("TERM", Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.log());
    let text = node.log();
    let lines = lines(&text);
    assert!(lines.iter().any(|l| l.starts_with("<6>serving node=org-a")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<6>") && l.contains("stopped")), "{text}");
    for line in &lines {
        assert!(line.starts_with('<') && line[1..].starts_with(char::is_numeric), "no priority: {line:?}");
        assert!(!line.contains("T0") && !line.contains("\x1b["), "a timestamp or colour: {line:?}");
    }
}
