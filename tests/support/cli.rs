//! The `ferry` binary driven through its command line, as an admin drives it: `ferry init`,
//! `peer add`, `service add`, `check` and `ferry run` child processes started by hand (for the
//! tests of signals, reloads and start-up refusals), with bounded waits and their logs printed
//! when a test fails. Used by the `tests/cli_*.rs` files, one per command.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[allow(unused_imports)]
pub use super::{free_tcp, free_udp};

/// A `ferry` command with a clean environment: no `FERRY_CONFIG` inherited from the caller.
pub fn ferry_cmd() -> Command {
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
pub fn ferry<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_bounded(ferry_cmd().args(args), Duration::from_secs(30))
}

/// Asserts that a config edit command said what changed in one line, then whether a running
/// node reloaded it (here none runs); returns the first line.
#[track_caller]
pub fn assert_edited(out: &Output) -> String {
    assert_code(out, 0);
    let text = stdout(out);
    assert_eq!(lines(&text).len(), 2, "{text}");
    assert!(lines(&text)[1].starts_with("no node answers at "), "{text}");
    format!("{}\n", lines(&text)[0])
}

/// Runs `cmd`, killing it if it has not finished within `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn ferry");
    run_bounded_child(child, limit)
}

/// Waits for `child` and collects what it wrote to the pipes it still has, killing it if it has
/// not finished within `limit`.
pub fn run_bounded_child(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for ferry"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("ferry (pid {pid}) did not finish within {limit:?}");
        }
    }
}

/// The output's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The output's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-empty lines of `s`.
pub fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
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
pub fn assert_usage_error(o: &Output) {
    assert_code(o, 2);
    assert!(!stderr(o).trim().is_empty(), "a refusal must say why on stderr");
    assert!(stdout(o).trim().is_empty(), "a refusal printed on stdout:\n{}", stdout(o));
}

/// Extracts the one `sha256:<64 lowercase hex>` fingerprint in `text`.
#[track_caller]
pub fn fingerprint_in(text: &str) -> String {
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
pub fn assert_fingerprint_format(fp: &str) {
    let hex = fp.strip_prefix("sha256:").unwrap_or_else(|| panic!("{fp:?} does not start with sha256:"));
    assert_eq!(hex.len(), 64, "{fp:?}: not 64 hex digits");
    assert!(hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{fp:?}: not lowercase hex");
}

/// `sha256:` + hex of SHA-256 over the DER of the first certificate in the PEM file.
pub fn fingerprint_of_pem(path: &Path) -> String {
    let text = fs::read(path).unwrap();
    let pem = pem::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(pem.tag(), "CERTIFICATE", "{}", path.display());
    let digest = Sha256::digest(pem.contents());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A node directory made with `ferry init`.
pub struct NodeDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub fingerprint: String,
}

impl NodeDir {
    /// The node's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("certs/node.pem")
    }

    /// The node's private key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("certs/node.key")
    }

    /// The config path as an argument.
    pub fn config_arg(&self) -> String {
        self.config.to_str().unwrap().to_owned()
    }

    /// The config file's bytes.
    pub fn config_text(&self) -> Vec<u8> {
        fs::read(&self.config).unwrap()
    }

    /// The config file parsed.
    pub fn toml(&self) -> toml::Table {
        toml::from_str(&fs::read_to_string(&self.config).unwrap()).unwrap()
    }
}

/// `ferry init --dir root/name --name name [--listen L --api A]`, asserted to succeed.
pub fn init(root: &Path, name: &str, addrs: Option<(SocketAddr, SocketAddr)>) -> NodeDir {
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

/// `ferry peer add` of `name` at `address` with `cert` to `node`'s config.
pub fn peer_add(node: &NodeDir, name: &str, address: &str, cert: &Path) -> Output {
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

/// `ferry service add` of service `id` at `base_url` (for `allow`) to `node`'s config.
pub fn service_add(node: &NodeDir, id: &str, base_url: &str, allow: Option<&str>) -> Output {
    let config = node.config_arg();
    let mut args = vec!["service", "add", "--id", id, "--base-url", base_url, "--config", &config];
    if let Some(allow) = allow {
        args.extend(["--allow", allow]);
    }
    ferry(args)
}

/// `ferry check` of `node`'s config.
pub fn check(node: &NodeDir) -> Output {
    ferry(["check", "--config", &node.config_arg()])
}

#[cfg(unix)]
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A `ferry run` child process of a node directory made with `ferry init`, killed when dropped
/// (also when the test panics, and then its log is printed).
pub type RunningNode = super::process::Node;

/// Starts `ferry run` on the node directory `node` (its `name`), without waiting for it.
pub fn run_node(node: &NodeDir, name: &str) -> RunningNode {
    run_node_with(node, name, &[])
}

/// Like [`run_node`], with extra environment variables.
pub fn run_node_with(node: &NodeDir, name: &str, env: &[(&str, &str)]) -> RunningNode {
    let mut running = RunningNode::existing(&node.dir, name);
    running.spawn_with(env);
    running
}

/// Starts a [`Recorder`](super::Recorder) on 127.0.0.1 as the walkthrough's service: its address,
/// and the recorder.
pub async fn recording_service() -> (SocketAddr, super::Recorder) {
    let recorder = super::Recorder::start().await;
    (recorder.addr, recorder)
}

/// A client for a node's API on loopback: no proxy, a 30 s timeout.
pub fn api_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Polls GET /v1/health until it answers 200, or fails after `limit`.
pub async fn wait_healthy(client: &reqwest::Client, node: &RunningNode, api: SocketAddr, limit: Duration) -> Value {
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
            node.run_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node directory set up and started as a `ferry run` process on free loopback ports.
pub struct Started {
    pub dir: NodeDir,
    pub api: SocketAddr,
    pub link: SocketAddr,
}

/// `ferry init` on free loopback ports.
pub fn init_on_loopback(root: &Path, name: &str) -> Started {
    let (link, api) = (free_udp(), free_tcp());
    Started { dir: init(root, name, Some((link, api))), api, link }
}

/// Pins each node's certificate on the other.
pub fn pin_both_ways(x: &Started, x_name: &str, y: &Started, y_name: &str) {
    assert_code(&peer_add(&x.dir, y_name, &y.link.to_string(), &y.dir.cert()), 0);
    assert_code(&peer_add(&y.dir, x_name, &x.link.to_string(), &x.dir.cert()), 0);
}

/// Two `ferry run` processes on loopback, pinned both ways, org-b offering service 1 (a recording
/// service) to org-a, both serving.
pub struct RunningPair {
    pub a: Started,
    pub b: Started,
    pub node_a: RunningNode,
    pub node_b: RunningNode,
    pub client: reqwest::Client,
    pub seen: super::Recorder,
}

impl RunningPair {
    /// Sets up and starts the pair in `root`, both serving.
    pub async fn start(root: &Path) -> RunningPair {
        let (service, seen) = recording_service().await;
        let a = init_on_loopback(root, "org-a");
        let b = init_on_loopback(root, "org-b");
        pin_both_ways(&a, "org-a", &b, "org-b");
        assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
        let node_a = run_node(&a.dir, "org-a");
        let node_b = run_node(&b.dir, "org-b");
        let client = api_client();
        wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
        wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
        RunningPair { a, b, node_a, node_b, client, seen }
    }
}

/// POSTs a sync GET request to `from`'s API; returns the HTTP status and the envelope.
pub async fn send_request(client: &reqwest::Client, from: SocketAddr, peer: &str, service: &str) -> (u16, Value) {
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
pub async fn request_until_ok(
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
            let logs: Vec<String> = logs.iter().map(|n| format!("log of {}:\n{}", n.name, n.run_log())).collect();
            panic!("no successful answer within {limit:?}; last: {status} {answer}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets (or, with `None`, removes) `key` of the `[[service]]` table `id` in the node's config.
pub fn set_service_key(node: &NodeDir, id: &str, key: &str, value: Option<&str>) {
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
pub async fn post_request(client: &reqwest::Client, api: SocketAddr, body: Value) -> (u16, Option<String>, Value) {
    let resp = client.post(format!("http://{api}/v1/requests")).json(&body).send().await.expect("POST /v1/requests");
    let status = resp.status().as_u16();
    let deprecation = resp.headers().get("deprecation").map(|v| v.to_str().unwrap().to_owned());
    (status, deprecation, resp.json().await.expect("a JSON envelope"))
}

/// GET /v1/requests/{id} until its state is final (success or failed), or `limit` passes.
pub async fn wait_final(client: &reqwest::Client, api: SocketAddr, id: &str, limit: Duration) -> Value {
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
pub async fn slow_service() -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>) {
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

/// Runs `ferry ARGS` with `FERRY_TOKEN` set to `token` when given.
pub fn ferry_with_token(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = ferry_cmd();
    cmd.args(args);
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    run_bounded(&mut cmd, Duration::from_secs(30))
}

/// Runs `ferry ARGS --config <node's config>` to completion.
pub fn ferry_at(node: &NodeDir, args: &[&str]) -> Output {
    let config = node.config_arg();
    ferry(args.iter().copied().chain(["--config", config.as_str()]))
}

/// Every file below `root` with its bytes: to show that a command touched nothing it should not.
pub fn files_below(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}
