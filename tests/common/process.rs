//! Nodes run as real `ferry run` child processes, as an admin runs them, for the tests that kill
//! them (SIGKILL), stop them (SIGTERM) and restart them from the same directory on the same ports;
//! a recording HTTP service that also serves as the host's callback receiver; file helpers.
//!
//! Every child process is killed when its [`Node`] is dropped, also when a test fails, and the
//! node's log (stderr of every run) is printed then. Every wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// The bound on every single wait of [`until`].
pub const WITHIN: Duration = Duration::from_secs(30);
/// How long to keep watching for a late duplicate once everything looks done.
pub const SETTLE: Duration = Duration::from_millis(700);
/// The error a receiving node records for a request whose service call a crash interrupted.
pub const INTERRUPTED: &str = "stopped while its service was being called";

// ---------------------------------------------------------------------------------------------
// A recording HTTP service (also used as the callback receiver)
// ---------------------------------------------------------------------------------------------

/// One call the [`Recorder`] saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Call {
    /// The `X-Ferry-Request-Id` header (service calls).
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("x-ferry-request-id").map(String::as_str)
    }

    /// The text fields: the query string for GET, the urlencoded body otherwise.
    pub fn fields(&self) -> HashMap<String, String> {
        let text = if self.method == "GET" { self.query.clone().unwrap_or_default() } else { self.body.clone() };
        serde_urlencoded::from_str(&text).unwrap_or_default()
    }
}

/// An HTTP server that records every call and answers 200 with a JSON echo
/// `{"path", "fields"}`; `/sleep/{ms}/…` waits that long first.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start() -> Recorder {
        Recorder::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the recorder on `addr` (a port reserved earlier, or an address of a test network).
    pub async fn start_on(addr: SocketAddr) -> Recorder {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = calls.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let call = Call {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    query: uri.query().map(str::to_owned),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                record.lock().unwrap().push(call.clone());
                if let Some(ms) = call.path.strip_prefix("/sleep/").and_then(|rest| rest.split('/').next()) {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
                }
                axum::Json(json!({"path": call.path, "fields": call.fields()}))
            }
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot bind the recorder on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, calls }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Service calls carrying `X-Ferry-Request-Id: id`.
    pub fn calls_for(&self, id: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.request_id() == Some(id)).collect()
    }

    /// Callback deliveries for request `id` (field `id`), as their fields.
    pub fn callbacks_for(&self, id: &str) -> Vec<HashMap<String, String>> {
        self.calls().iter().map(Call::fields).filter(|f| f.get("id").map(String::as_str) == Some(id)).collect()
    }

    /// Service calls counted by request id.
    pub fn calls_by_id(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for c in self.calls() {
            *counts.entry(c.request_id().unwrap_or("<no request id>").to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// Callback deliveries counted by (request id, seq).
    pub fn callbacks_by_id_seq(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for f in self.calls().iter().map(Call::fields) {
            let key = (f.get("id").cloned().unwrap_or_default(), f.get("seq").cloned().unwrap_or_default());
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes as `ferry run` child processes
// ---------------------------------------------------------------------------------------------

/// A free TCP port on loopback (for an API or a recorder started later).
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A free UDP port on loopback (for a node's QUIC link).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An HTTP client for a node's API, sending `token` as a bearer token when given. It keeps no
/// pooled connections: a killed node leaves dead ones behind.
pub fn http(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A node directory made by `ferry init`, and its `ferry run` process when running. Dropping it
/// kills the process; if the test is failing, every run's stderr is printed.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub api: SocketAddr,
    pub link: SocketAddr,
    pub log: PathBuf,
    /// A network namespace to run in (`ip netns exec`), or the test's own.
    pub netns: Option<String>,
    child: Option<Child>,
    runs: u32,
    /// Calls the node's API, with its token if one is set.
    pub client: reqwest::Client,
}

impl Node {
    /// `ferry init` in `root/name` on free loopback ports.
    pub fn create(root: &Path, name: &str) -> Node {
        Node::create_at(root, name, free_udp(), free_tcp(), None)
    }

    /// `ferry init` in `root/name` with the link on `link` and the API on `api`, to be run in
    /// network namespace `netns` if given.
    pub fn create_at(root: &Path, name: &str, link: SocketAddr, api: SocketAddr, netns: Option<&str>) -> Node {
        let dir = root.join(name);
        ferry::cli::init::init(&dir, name, link, api).unwrap();
        Node {
            name: name.to_owned(),
            config: dir.join("config/ferry.toml"),
            log: dir.join("run.log"),
            dir,
            api,
            link,
            netns: netns.map(str::to_owned),
            child: None,
            runs: 0,
            client: http(None),
        }
    }

    /// Sets `api.tokens = [token]` in the config (needed for callers that are not on loopback)
    /// and sends it with every call from now on.
    pub fn set_token(&mut self, token: &str) {
        let text = fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("tokens = []"), "the config of {} has no empty token list", self.name);
        fs::write(&self.config, text.replacen("tokens = []", &format!("tokens = [\"{token}\"]"), 1)).unwrap();
        self.client = http(Some(token));
    }

    /// Pins `other` as a peer (`ferry peer add`).
    pub fn pin(&self, other: &Node) {
        self.pin_at(other, other.link);
    }

    /// Pins `other` as a peer reached at `addr` (a relay in front of it).
    pub fn pin_at(&self, other: &Node, addr: SocketAddr) {
        let cert = other.dir.join("certs/node.pem");
        ferry::cli::peer::add(&self.config, &other.name, &addr.to_string(), &cert).unwrap();
    }

    /// Declares service `id` at `base_url` for `allow` (`ferry service add`).
    pub fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        ferry::cli::service::add(&self.config, id, base_url, &allow).unwrap();
    }

    /// Every run's stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `ferry run` on this directory (its ports are in the config, so a restart uses the
    /// same ones) and waits until its API answers.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.runs += 1;
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "==== {} run {} ====", self.name, self.runs).unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_ferry"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ferry")),
        };
        let child = command
            .env_remove("FERRY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info,quinn=warn")
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.client.get(self.url("/v1/health")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("{} exited with {status} before serving", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not serve within 15 s", self.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: no drain, no graceful close of anything. Checks that the node did not end on its own.
    pub fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap the killed node");
        assert_eq!(status.signal(), Some(9), "{} ended by SIGKILL, not on its own: {status}", self.name);
    }

    /// SIGTERM, the graceful stop, and waits (at most 20 s) for a clean exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 20 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert!(status.success(), "{} stopped gracefully with {status}", self.name);
    }

    /// `ferry audit verify` of this node's evidence log (the node may be running): its output,
    /// or why it failed.
    pub fn audit_verify(&self) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .env_remove("FERRY_CONFIG")
            .args(["audit", "verify", "--config"])
            .arg(&self.config)
            .output()
            .expect("run ferry audit verify");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text.trim().to_owned())
        } else {
            Err(format!("{}: ferry audit verify exited with {}: {}", self.name, out.status, text.trim()))
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `POST path` with a JSON body: the HTTP status and the envelope. Panics if the node does
    /// not answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.try_post(path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `POST path` with a JSON body: the HTTP status and the envelope, or why there is none.
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let r = self.client.post(self.url(path)).json(body).send().await.map_err(|e| format!("POST {path}: {e}"))?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.map_err(|e| format!("POST {path}: {e}"))?))
    }

    /// `POST /v1/requests` of an asynchronous request: its id, after checking the 202.
    pub async fn accepted(&self, body: Value) -> String {
        let (status, env) = self.post("/v1/requests", &body).await;
        assert_eq!(status, 202, "{env}");
        assert_eq!(env["data"]["state"], "waiting", "{env}");
        env["data"]["id"].as_str().unwrap().to_owned()
    }

    /// `GET path`'s `data`, or why there is none.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self.client.get(self.url(path)).send().await.map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status().as_u16();
        let env: Value = r.json().await.map_err(|e| format!("GET {path}: {e}"))?;
        if status == 200 {
            Ok(env["data"].clone())
        } else {
            Err(format!("GET {path}: {status} {env}"))
        }
    }

    /// `GET /v1/requests/{id}`.
    pub async fn status(&self, id: &str) -> Result<Value, String> {
        self.get(&format!("/v1/requests/{id}")).await
    }

    /// Polls the request until `accept` holds for its status; the status.
    pub async fn wait_status(&self, id: &str, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        until(&format!("{}: request {id} {what}", self.name), async || {
            let status = self.status(id).await?;
            if accept(&status) {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        })
        .await
    }

    /// Polls the request until it is in `state`; the status.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_status(id, &format!("in state {state}"), |s| s["state"] == state).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of `ferry run` for {} ({} runs) ----\n{}", self.name, self.runs, self.log_text());
        }
    }
}

/// Polls `probe` every 25 ms until it gives a value, for at most `within`; on timeout, the
/// last thing the probe saw.
pub async fn try_until<T>(within: Duration, mut probe: impl AsyncFnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `probe` every 25 ms until it gives a value, for at most [`WITHIN`]; on timeout fails
/// with `what` and the last thing the probe saw.
pub async fn until<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    try_until(WITHIN, probe).await.unwrap_or_else(|last| panic!("waited {WITHIN:?} for {what}; last seen: {last}"))
}

/// org-a and org-b in `root`, on loopback, pinned both ways; org-b offers service "1" at
/// `service_url` to org-a. Not started.
pub fn two_nodes(root: &Path, service_url: &str) -> (Node, Node) {
    let a = Node::create(root, "org-a");
    let b = Node::create(root, "org-b");
    a.pin(&b);
    b.pin(&a);
    b.add_service("1", service_url, &["org-a"]);
    (a, b)
}

/// Outgoing request counts by state from `GET /v1/stats`.
pub async fn outgoing(node: &Node) -> Result<BTreeMap<String, u64>, String> {
    let stats = node.get("/v1/stats").await?;
    let counts = stats["outgoing"].as_object().ok_or_else(|| stats.to_string())?;
    Ok(counts.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
}

/// Progress events `(bytes_done, bytes_total)` for request `id` from the node's `/v1/events`,
/// answering the heartbeat every 500 ms.
pub async fn progress_events(api: SocketAddr, id: String) -> tokio::sync::mpsc::UnboundedReceiver<(u64, u64)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{api}/v1/events")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if ws.send(tokio_tungstenite::tungstenite::Message::text("OK")).await.is_err() {
                        return;
                    }
                }
                next = ws.next() => match next {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                        let e: Value = serde_json::from_str(&t).unwrap();
                        if e["type"] == "progress" && e["id"] == id.as_str() {
                            let done = e["bytes_done"].as_u64().unwrap();
                            let total = e["bytes_total"].as_u64().unwrap();
                            if tx.send((done, total)).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// `size` repeatable pseudo-random bytes, different for each `seed`.
pub fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `size` bytes of a repeatable pattern to `path`; its SHA-256 in hex.
pub fn make_file(path: &Path, size: u64) -> String {
    make_file_seeded(path, size, 99)
}

/// Writes `size` bytes of a pattern given by `seed` to `path`; its SHA-256 in hex.
pub fn make_file_seeded(path: &Path, size: u64, seed: u64) -> String {
    let mut file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut block = bytes(1 << 20, seed);
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        block[..8].copy_from_slice(&n.to_le_bytes()); // no two blocks alike
        n += 1;
        file.write_all(&block[..take]).unwrap();
        hasher.update(&block[..take]);
        left -= take as u64;
    }
    file.flush().unwrap();
    hex::encode(hasher.finalize())
}

/// The SHA-256 in hex of the file at `path`.
pub fn sha_of(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}
