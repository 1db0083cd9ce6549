//! Nodes run as real `ferry run` child processes, as an admin runs them, for the tests that kill
//! them (SIGKILL), stop them (SIGTERM) and restart them from the same directory on the same ports,
//! and for the benches that measure a node as deployed.
//!
//! Every child process is killed when its [`Node`] is dropped, also when a test fails, and the
//! node's log (stderr of every run) is printed then. Every wait is bounded.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

// Re-exported for the tests of `ferry run` processes; each uses some.
#[allow(unused_imports)]
pub use super::{free_tcp, free_udp, http, try_until, until, Recorder, WITHIN};
use super::{pin_pair, NodeDir};

/// How each run's part of a node's log begins.
const RUN_HEADER: &str = "==== ";

/// How long to keep watching for a late duplicate once everything looks done.
pub const SETTLE: Duration = Duration::from_millis(700);
/// The error a receiving node records for a request whose service call a crash interrupted.
pub const INTERRUPTED: &str = "stopped while its service was being called";

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
    /// The `RUST_LOG` of its runs (`info,quinn=warn` unless set).
    pub rust_log: String,
    child: Option<Child>,
    runs: u32,
    /// Calls the node's API, with its token if one is set.
    pub client: reqwest::Client,
}

impl Node {
    /// A node directory made otherwise (by `ferry init` run as a command), its addresses read
    /// from its config.
    pub fn existing(dir: &Path, name: &str) -> Node {
        let config = dir.join("config/ferry.toml");
        let text = fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let addr = |key: &str| -> SocketAddr { table["node"][key].as_str().unwrap().parse().unwrap() };
        Node {
            name: name.to_owned(),
            link: addr("listen"),
            api: addr("api"),
            log: dir.join("run.log"),
            dir: dir.to_owned(),
            config,
            netns: None,
            rust_log: "info,quinn=warn".into(),
            child: None,
            runs: 0,
            client: http(None),
        }
    }

    /// `ferry init` in `root/name` on free loopback ports.
    pub fn create(root: &Path, name: &str) -> Node {
        Node::create_at(root, name, free_udp(), free_tcp(), None)
    }

    /// `ferry init` in `root/name` with the link on `link` and the API on `api`, to be run in
    /// network namespace `netns` if given.
    pub fn create_at(root: &Path, name: &str, link: SocketAddr, api: SocketAddr, netns: Option<&str>) -> Node {
        let at = NodeDir::init(root, name, link, api);
        Node {
            name: at.name,
            config: at.config,
            log: at.dir.join("run.log"),
            dir: at.dir,
            api,
            link,
            netns: netns.map(str::to_owned),
            rust_log: "info,quinn=warn".into(),
            child: None,
            runs: 0,
            client: http(None),
        }
    }

    /// The node's directory, as set up.
    pub fn setup(&self) -> NodeDir {
        NodeDir {
            name: self.name.clone(),
            dir: self.dir.clone(),
            config: self.config.clone(),
            link: self.link,
            api: self.api,
        }
    }

    /// The process id of the running `ferry run`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        self.setup().pin_at(&other.setup(), addr);
    }

    /// Declares service `id` at `base_url` for `allow` (`ferry service add`).
    pub fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        self.setup().add_service(id, base_url, allow);
    }

    /// Every run's stderr so far, each after a header line.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The stderr of the latest run alone.
    pub fn run_log(&self) -> String {
        let text = self.log_text();
        let start = text.rfind(RUN_HEADER).map_or(0, |i| text[i..].find('\n').map_or(text.len(), |n| i + n + 1));
        text[start..].to_owned()
    }

    /// Whether its `ferry run` runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `ferry run` on this directory (its ports are in the config, so a restart uses the
    /// same ones) and waits until its API answers.
    pub async fn start(&mut self) {
        self.spawn_with(&[]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.client.get(self.url("/v1/health")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("{} exited with {status} before serving", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not serve within 15 s", self.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts `ferry run` on this directory with `env` added to a clean environment (no
    /// `FERRY_CONFIG`, `FERRY_TOKEN`, `NOTIFY_SOCKET` or `JOURNAL_STREAM` of the caller's), without
    /// waiting for it.
    pub fn spawn_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.runs += 1;
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "{}{} run {} ====", RUN_HEADER, self.name, self.runs).unwrap();
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
            .env_remove("FERRY_TOKEN")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", &self.rust_log)
            .envs(env.iter().copied())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry run");
        self.child = Some(child);
    }

    /// The exit status, once the running process has ended on its own (it is then not running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (a name for `kill`, e.g. `TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name));
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// Sends `signal` and waits up to `limit` for the process to exit.
    pub fn terminate(&mut self, signal: &str, limit: Duration) -> Option<ExitStatus> {
        self.signal(signal);
        self.wait_for_exit(limit)
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
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                let mut child = self.child.take().unwrap();
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

    /// The URL of `path` on the node's API.
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

/// org-a and org-b in `root`, on loopback, pinned both ways; org-b offers service "1" at
/// `service_url` to org-a. Not started.
pub fn two_nodes(root: &Path, service_url: &str) -> (Node, Node) {
    let (a, b) = (Node::create(root, "org-a"), Node::create(root, "org-b"));
    pin_pair(&a.setup(), &b.setup(), service_url);
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
    let mut events = super::events(api).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if e["type"] == "progress" && e["id"] == id.as_str() {
                let done = e["bytes_done"].as_u64().unwrap();
                let total = e["bytes_total"].as_u64().unwrap();
                if tx.send((done, total)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
