//! Crash recovery (API.md §3, DESIGN.md "Tests"): nodes run as real `ferry run` processes, are
//! killed with SIGKILL at awkward moments and restarted from the same directory on the same ports.
//! An asynchronous request is on disk before its 202, so it is carried on after a crash; each
//! request id reaches the service at most once; results reach the host's callback.
//!
//! The recording service and the recording callback receiver run in the test process. Every child
//! process is killed when its [`Node`] is dropped, also when a test fails, and its log (stderr of
//! every run) is printed then.

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
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The bound on every single wait in these tests.
const WITHIN: Duration = Duration::from_secs(30);
/// How long to keep watching for a late duplicate once everything looks done.
const SETTLE: Duration = Duration::from_millis(700);
/// The error a receiving node records for a request whose service call a crash interrupted.
const INTERRUPTED: &str = "stopped while its service was being called";

// ---------------------------------------------------------------------------------------------
// A recording HTTP service (also used as the callback receiver)
// ---------------------------------------------------------------------------------------------

/// One call the recorder saw.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: Option<String>,
    headers: HashMap<String, String>,
    body: String,
}

impl Call {
    /// The `X-Ferry-Request-Id` header (service calls).
    fn request_id(&self) -> Option<&str> {
        self.headers.get("x-ferry-request-id").map(String::as_str)
    }

    /// The text fields: the query string for GET, the urlencoded body otherwise.
    fn fields(&self) -> HashMap<String, String> {
        let text = if self.method == "GET" { self.query.clone().unwrap_or_default() } else { self.body.clone() };
        serde_urlencoded::from_str(&text).unwrap_or_default()
    }
}

/// An HTTP server that records every call and answers 200 with a JSON echo; `/sleep/{ms}/…`
/// waits that long first.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        Recorder::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the recorder on `addr` (a port reserved earlier).
    async fn start_on(addr: SocketAddr) -> Recorder {
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

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Service calls carrying `X-Ferry-Request-Id: id`.
    fn calls_for(&self, id: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.request_id() == Some(id)).collect()
    }

    /// Callback deliveries for request `id` (field `id`), as their fields.
    fn callbacks_for(&self, id: &str) -> Vec<HashMap<String, String>> {
        self.calls().iter().map(Call::fields).filter(|f| f.get("id").map(String::as_str) == Some(id)).collect()
    }

    /// Service calls counted by request id.
    fn calls_by_id(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for c in self.calls() {
            *counts.entry(c.request_id().unwrap_or("<no request id>").to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// Callback deliveries counted by (request id, seq).
    fn callbacks_by_id_seq(&self) -> HashMap<(String, String), usize> {
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

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn http() -> reqwest::Client {
    // No pooled connections: a killed node leaves dead ones behind.
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap()
}

/// A node directory made by `ferry init` on fixed free loopback ports, and its `ferry run`
/// process when running. Dropping it kills the process; if the test is failing, every run's
/// stderr is printed.
struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    api: SocketAddr,
    link: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    runs: u32,
    client: reqwest::Client,
}

impl Node {
    fn create(root: &Path, name: &str) -> Node {
        let (api, link) = (free_tcp(), free_udp());
        let dir = root.join(name);
        ferry::cli::init::init(&dir, name, link, api).unwrap();
        Node {
            name: name.to_owned(),
            config: dir.join("config/ferry.toml"),
            log: dir.join("run.log"),
            dir,
            api,
            link,
            child: None,
            runs: 0,
            client: http(),
        }
    }

    /// Pins `other` as a peer (`ferry peer add`).
    fn pin(&self, other: &Node) {
        let cert = other.dir.join("certs/node.pem");
        ferry::cli::edit::add_peer(&self.config, &other.name, &other.link.to_string(), &cert).unwrap();
    }

    /// Declares service `id` at `base_url` for `allow` (`ferry service add`).
    fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        ferry::cli::edit::add_service(&self.config, id, base_url, &allow).unwrap();
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts `ferry run` on this directory and waits until its API answers.
    async fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.runs += 1;
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        writeln!(log, "==== {} run {} ====", self.name, self.runs).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
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
            if let Ok(r) = self.client.get(self.url("/v1/health")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status} before serving", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not serve within 15 s", self.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: no drain, no graceful close of anything.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap the killed node");
        assert_eq!(status.signal(), Some(9), "{} ended by SIGKILL, not on its own: {status}", self.name);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `POST path` with a JSON body: the HTTP status and the envelope.
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// `POST /v1/requests` of an asynchronous request: its id, after checking the 202.
    async fn accepted(&self, body: Value) -> String {
        let (status, env) = self.post("/v1/requests", &body).await;
        assert_eq!(status, 202, "{env}");
        assert_eq!(env["data"]["state"], "waiting", "{env}");
        env["data"]["id"].as_str().unwrap().to_owned()
    }

    /// `GET path`'s `data`, or why there is none.
    async fn get(&self, path: &str) -> Result<Value, String> {
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
    async fn status(&self, id: &str) -> Result<Value, String> {
        self.get(&format!("/v1/requests/{id}")).await
    }

    /// Polls the request until `accept` holds for its status; the status.
    async fn wait_status(&self, id: &str, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
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

    async fn wait_state(&self, id: &str, state: &str) -> Value {
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

/// Polls `probe` every 25 ms until it gives a value, for at most [`WITHIN`]; on timeout fails
/// with `what` and the last thing the probe saw.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WITHIN;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("waited {WITHIN:?} for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An asynchronous request to `peer`'s service "1" with a POST callback to `callbacks`.
fn async_request(peer: &str, path: &str, callbacks: &Recorder, reply: bool) -> Value {
    json!({
        "peer": peer, "service": "1", "path": path, "method": "POST", "form": {"q": "x"},
        "mode": "async", "reply": reply, "callback": {"url": format!("{}/cb", callbacks.base_url())},
    })
}

/// org-a and org-b pinned both ways; org-b offers service "1" at `service_url` to org-a. Not started.
fn two_nodes(root: &Path, service_url: &str) -> (Node, Node) {
    let a = Node::create(root, "org-a");
    let b = Node::create(root, "org-b");
    a.pin(&b);
    b.pin(&a);
    b.add_service("1", service_url, &["org-a"]);
    (a, b)
}

/// Waits for `n` callback deliveries for `id`, lets late duplicates show, and returns them all.
async fn callbacks_of(callbacks: &Recorder, id: &str, n: usize) -> Vec<HashMap<String, String>> {
    until(&format!("{n} callback(s) for {id}"), async || {
        let got = callbacks.callbacks_for(id);
        if got.len() >= n {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    callbacks.callbacks_for(id)
}

/// Waits until the requesting node reports every callback result of `id` delivered.
async fn wait_callback_recorded(node: &Node, id: &str) -> Value {
    node.wait_status(id, "with its callback delivered", |s| s["callback"]["delivered"] == true).await
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

/// 1. The sending node dies right after its 202 while the peer is down; after both are up the
///    request completes: the service is called once, the callback gets the result once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_the_sender_being_killed_right_after_its_202() {
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());

    a.start().await; // org-b is down: the request surely still waits
    let id = a.accepted(async_request("org-b", "/orders", &callbacks, false)).await;
    a.kill();

    a.start().await;
    let status = a.status(&id).await.unwrap();
    assert_eq!(status["state"], "waiting", "the request is still there after SIGKILL: {status}");
    assert_eq!(status["direction"], "outgoing", "{status}");
    assert_eq!(status["path"], "/orders", "{status}");
    b.start().await;

    let status = a.wait_state(&id, "success").await;
    assert_eq!(status["response"]["status"], 200, "{status}");
    assert_eq!(status["response"]["body"]["path"], "/orders", "{status}");

    let delivered = callbacks_of(&callbacks, &id, 1).await;
    assert_eq!(delivered.len(), 1, "one result, delivered once: {delivered:?}");
    assert_eq!(delivered[0]["seq"], "1");
    assert_eq!(delivered[0]["end"], "true");
    assert_eq!(delivered[0]["status"], "200");
    let data: Value = serde_json::from_str(&delivered[0]["data"]).unwrap();
    assert_eq!(data["path"], "/orders");
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");
    assert_eq!(calls[0].headers["x-ferry-peer"], "org-a");
    assert_eq!(service.calls().len(), 1, "no other call: {:?}", service.calls());

    let status = wait_callback_recorded(&a, &id).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["replies"].as_array().unwrap().len(), 1, "{status}");
    let incoming = b.wait_state(&id, "success").await;
    assert_eq!(incoming["direction"], "incoming", "{incoming}");
}

/// 2. The receiving node dies after acknowledging a request and before calling its service (its
///    service is not listening yet, so the call is held back and retried); after the restart the
///    service is called exactly once and the result reaches org-a's callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_the_receiver_being_killed_before_calling_its_service() {
    let root = tempfile::tempdir().unwrap();
    let callbacks = Recorder::start().await;
    let service_addr = free_tcp(); // nothing listens there yet: connection refused
    let (mut a, mut b) = two_nodes(root.path(), &format!("http://{service_addr}"));
    a.start().await;
    b.start().await;

    let id = a.accepted(async_request("org-b", "/orders", &callbacks, false)).await;
    a.wait_state(&id, "doing").await;
    let incoming = b
        .wait_status(&id, "waiting after a refused service call", |s| {
            s["state"] == "waiting" && s["attempts"].as_u64().unwrap_or(0) >= 1 && s["error"].is_string()
        })
        .await;
    assert_eq!(incoming["direction"], "incoming", "{incoming}");
    b.kill();

    let service = Recorder::start_on(service_addr).await;
    assert_eq!(a.status(&id).await.unwrap()["state"], "doing");
    b.start().await;

    let calls = until("the service to be called", async || {
        let calls = service.calls_for(&id);
        if calls.is_empty() {
            Err(format!("{:?}", service.calls()))
        } else {
            Ok(calls)
        }
    })
    .await;
    assert_eq!(calls[0].path, "/orders");
    let status = a.wait_state(&id, "success").await;
    assert_eq!(status["response"]["status"], 200, "{status}");
    let delivered = callbacks_of(&callbacks, &id, 1).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["seq"], "1");
    assert_eq!(delivered[0]["end"], "true");
    assert_eq!(delivered[0]["status"], "200");
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");
    assert_eq!(service.calls().len(), 1);

    wait_callback_recorded(&a, &id).await;
    let incoming = b.wait_state(&id, "success").await;
    assert!(incoming["attempts"].as_u64().unwrap() >= 2, "a refused try, then the call: {incoming}");
}

/// 3. The requesting node dies while a reply-mode request awaits its replies; org-b's service
///    replies meanwhile; org-b keeps the replies and carries them once org-a is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_survive_the_requester_being_killed_before_they_arrive() {
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());
    a.start().await;
    b.start().await;

    let id = a.accepted(async_request("org-b", "/report", &callbacks, true)).await;
    let call = until("the service to get the request", async || {
        service.calls_for(&id).pop().ok_or_else(|| format!("{:?}", service.calls()))
    })
    .await;
    let callback_id = call.fields().get("callbackId").cloned().unwrap_or_else(|| panic!("no callbackId: {call:?}"));
    a.wait_state(&id, "doing").await;
    a.kill();

    for (data, end, seq) in [(json!({"part": 1}), false, 1), (json!({"part": 2, "rows": [1, 2]}), true, 2)] {
        let (status, env) = b.post("/v1/replies", &json!({"callback_id": callback_id, "data": data, "end": end})).await;
        assert_eq!(status, 202, "{env}");
        assert_eq!(env["data"]["seq"], seq, "{env}");
    }
    let kept = b.status(&id).await.unwrap();
    assert_eq!(kept["state"], "success", "org-b's side is done: {kept}");
    assert_eq!(kept["replies"].as_array().unwrap().len(), 2, "{kept}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.status(&id).await.unwrap()["replies"][1]["delivered"], false, "org-a is down: nothing acknowledged");

    a.start().await;
    let status = a.wait_state(&id, "success").await;
    let replies = status["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2, "{status}");
    assert_eq!(replies[0]["data"], json!({"part": 1}), "{status}");
    assert_eq!(replies[1]["data"], json!({"part": 2, "rows": [1, 2]}), "{status}");
    assert_eq!(replies[1]["end"], true, "{status}");

    let delivered = callbacks_of(&callbacks, &id, 2).await;
    let seqs: Vec<&str> = delivered.iter().map(|f| f["seq"].as_str()).collect();
    assert_eq!(seqs, ["1", "2"], "each reply once, in order: {delivered:?}");
    assert_eq!(delivered[0]["end"], "false");
    assert_eq!(delivered[1]["end"], "true");
    assert_eq!(serde_json::from_str::<Value>(&delivered[1]["data"]).unwrap(), json!({"part": 2, "rows": [1, 2]}));
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");

    wait_callback_recorded(&a, &id).await;
    b.wait_status(&id, "with both replies acknowledged by org-a", |s| {
        s["replies"].as_array().is_some_and(|r| r.iter().all(|r| r["delivered"] == true))
    })
    .await;
}

/// Posts `bodies` to `node` 16 at a time; the ids in order.
async fn post_all(node: &Node, bodies: Vec<Value>) -> Vec<String> {
    futures::stream::iter(bodies).map(|body| node.accepted(body)).buffered(16).collect().await
}

/// Outgoing counts by state from `GET /v1/stats`.
async fn outgoing(node: &Node) -> Result<BTreeMap<String, u64>, String> {
    let stats = node.get("/v1/stats").await?;
    let counts = stats["outgoing"].as_object().ok_or_else(|| stats.to_string())?;
    Ok(counts.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
}

/// 4. The sending node dies with 200 asynchronous requests in flight: half to org-b (sent,
///    acknowledged or on the wire, the slow service working on them) and half to org-c, which is
///    down (waiting). After the restart every request succeeds, every id was called exactly once
///    and every result reached the callback exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_the_sender_being_killed() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    let mut c = Node::create(root.path(), "org-c");
    for peer in [&b, &c] {
        a.pin(peer);
        peer.pin(&a);
        peer.add_service("1", &service.base_url(), &["org-a"]);
    }
    a.start().await;
    b.start().await; // org-c stays down

    // org-b's service takes 4 s, so no result is back before the kill.
    let bodies = (0..200)
        .map(|i| {
            let (peer, path) = if i % 2 == 0 { ("org-b", "/sleep/4000/slow") } else { ("org-c", "/sleep/100/fast") };
            let mut body = async_request(peer, path, &callbacks, false);
            body["form"] = json!({"n": i});
            body
        })
        .collect();
    let ids = post_all(&a, bodies).await;
    let mix = until("org-a to have requests both waiting and doing", async || {
        let counts = outgoing(&a).await?;
        let n = |s: &str| counts.get(s).copied().unwrap_or(0);
        if n("waiting") >= 100 && n("doing") >= 20 {
            Ok(counts)
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    a.kill();
    eprintln!("org-a killed with outgoing {mix:?}; the service had {} calls", service.calls().len());
    assert_eq!(mix.get("success").copied().unwrap_or(0), 0, "nothing finished before the kill: {mix:?}");
    assert!(callbacks.calls().is_empty(), "no result reached org-a before the kill: {:?}", callbacks.calls());

    a.start().await;
    c.start().await;
    until("every request to succeed", async || {
        let counts = outgoing(&a).await?;
        if counts.get("success") == Some(&200) {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    until("200 callbacks", async || {
        if callbacks.calls().len() >= 200 {
            Ok(())
        } else {
            Err(format!("{} callbacks", callbacks.calls().len()))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;

    let calls = service.calls_by_id();
    let deliveries = callbacks.callbacks_by_id_seq();
    for (i, id) in ids.iter().enumerate() {
        let status = a.status(id).await.unwrap();
        assert_eq!(status["state"], "success", "request {i}: {status}");
        assert_eq!(status["response"]["status"], 200, "request {i}: {status}");
        assert_eq!(calls.get(id), Some(&1), "request {i} ({id}) reaches the service exactly once");
        assert_eq!(deliveries.get(&(id.clone(), "1".to_owned())), Some(&1), "request {i}: one callback delivery");
    }
    assert_eq!(service.calls().len(), 200, "no call without a request: {calls:?}");
    assert_eq!(callbacks.calls().len(), 200, "no other delivery: {deliveries:?}");
    eprintln!("the backlog recovered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
}

/// 4b. The receiving node dies with 200 asynchronous requests on its hands: some answered, some in
///     its service's hands, most still queued. After the restart nothing is lost and nothing is
///     done twice: every request ends; one that succeeded was called exactly once; one that failed
///     was one whose call the crash interrupted (the service may have acted, so it is not called
///     again), and it was called at most once. Every result reaches the callback exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_the_receiver_being_killed() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());
    a.start().await;
    b.start().await;

    let bodies = (0..200)
        .map(|i| {
            let mut body = async_request("org-b", "/sleep/400/work", &callbacks, false);
            body["form"] = json!({"n": i});
            body
        })
        .collect();
    let ids = post_all(&a, bodies).await;
    let mix = until("org-b to have called its service for some and queued others", async || {
        let stats = b.get("/v1/stats").await?;
        let n = |s: &str| stats["incoming"][s].as_u64().unwrap_or(0);
        if service.calls().len() >= 70 && n("waiting") >= 1 && n("doing") >= 1 {
            Ok(stats["incoming"].clone())
        } else {
            Err(format!("{stats} with {} calls", service.calls().len()))
        }
    })
    .await;
    b.kill();
    let called_before: HashMap<String, usize> = service.calls_by_id();
    eprintln!("org-b killed with incoming {mix}; the service had {} calls", called_before.len());

    b.start().await;
    let counts = until("every request to end", async || {
        let counts = outgoing(&a).await?;
        let n = |s: &str| counts.get(s).copied().unwrap_or(0);
        if n("success") + n("failed") == 200 {
            Ok(counts)
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    until("200 callbacks", async || {
        if callbacks.calls().len() >= 200 {
            Ok(())
        } else {
            Err(format!("{} callbacks", callbacks.calls().len()))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    eprintln!("after the restart: outgoing {counts:?}");

    let calls = service.calls_by_id();
    let deliveries = callbacks.callbacks_by_id_seq();
    for (i, id) in ids.iter().enumerate() {
        let status = a.status(id).await.unwrap();
        let n = calls.get(id).copied().unwrap_or(0);
        assert!(n <= 1, "request {i} ({id}) reached the service {n} times");
        match status["state"].as_str() {
            Some("success") => {
                assert_eq!(n, 1, "request {i} succeeded, so its service was called once: {status}");
                assert_eq!(status["response"]["status"], 200, "request {i}: {status}");
            }
            Some("failed") => {
                let error = status["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains(INTERRUPTED),
                    "request {i} failed only because the crash interrupted it: {status}"
                );
                assert!(
                    called_before.contains_key(id) || n == 0,
                    "request {i} was interrupted, so it was not called after the restart: {status}"
                );
            }
            _ => panic!("request {i} did not end: {status}"),
        }
        if !called_before.contains_key(id) && n == 1 {
            assert_eq!(status["state"], "success", "request {i} was first called after the restart: {status}");
        }
        assert_eq!(deliveries.get(&(id.clone(), "1".to_owned())), Some(&1), "request {i}: one callback delivery");
    }
    assert_eq!(callbacks.calls().len(), 200, "no other delivery: {deliveries:?}");
    assert!(calls.values().all(|n| *n == 1), "no id called twice: {calls:?}");
    eprintln!("the backlog recovered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
}
