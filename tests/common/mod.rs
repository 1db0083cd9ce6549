//! Test harness: real nodes on 127.0.0.1 in temporary directories, set up as admins would
//! (`init`, `peer add`, `service add`), and a recording HTTP service. Nodes as `ferry run` child
//! processes, for the tests that kill and restart them, are in [`process`].
#![allow(dead_code)]

pub mod lossy;
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry::identity::Identity;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};

use ferry::cli::{init, peer, service};
use ferry::config::Config;
use ferry::node::{self, NodeError, Sockets};

/// One node running in this process on loopback sockets.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub api: SocketAddr,
    pub link: SocketAddr,
    sockets: Option<Sockets>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<Result<(), NodeError>>>,
}

impl Node {
    /// Creates (but does not start) a node in `root/name` with `ferry init` on free ports.
    pub fn create(root: &std::path::Path, name: &str) -> Node {
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (api_addr, link_addr) = (api.local_addr().unwrap(), link.local_addr().unwrap());
        let dir = root.join(name);
        init::init(&dir, name, link_addr, api_addr).unwrap();
        Node {
            name: name.to_owned(),
            config_path: dir.join("config/ferry.toml"),
            dir,
            api: api_addr,
            link: link_addr,
            sockets: Some(Sockets { api, link }),
            stop: None,
            task: None,
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("certs/node.pem")
    }

    /// Pins `other` as a peer of this node.
    pub fn add_peer(&self, other: &Node) {
        peer::add(&self.config_path, &other.name, &other.link.to_string(), &other.cert()).unwrap();
    }

    /// Declares service `id` at `base_url` for `allow`.
    pub fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        service::add(&self.config_path, id, base_url, &allow).unwrap();
    }

    /// Starts the node from its config (rebinding its ports after a stop) and waits until it serves.
    pub async fn start(&mut self) {
        // `RUST_LOG=ferry=debug cargo test ...` shows the nodes' logs with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = Config::load(&self.config_path).unwrap();
        let sockets = match self.sockets.take() {
            Some(s) => s,
            None => rebind(self.api, self.link).await,
        };
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        self.task = Some(tokio::spawn(node::run(config, sockets, shutdown)));
        self.stop = Some(tx);
        for _ in 0..100 {
            if client().get(self.url("/v1/health")).send().await.is_ok() {
                return;
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().unwrap().await.unwrap();
                panic!("node {} stopped at start: {result:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node {} did not start serving", self.name);
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("node stops in time").unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `POST /v1/requests` with `body`; the HTTP status and the envelope.
    pub async fn request(&self, body: Value) -> (StatusCode, Value) {
        let r = client().post(self.url("/v1/requests")).json(&body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// `POST path` with a JSON body; the HTTP status and the envelope.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = client().post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// Polls `GET /v1/requests/{id}` until its state is `state` (at most `within`); the last status.
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, env) = self.get(&format!("/v1/requests/{id}")).await;
            if env["data"]["state"] == state || tokio::time::Instant::now() > deadline {
                return env["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path`; the HTTP status and the envelope.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = client().get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }
}

/// Binds the same ports again after a stop; tasks of the stopped node may hold them a moment.
async fn rebind(api: SocketAddr, link: SocketAddr) -> Sockets {
    // On a loaded machine (load 12+ on 2 cores) a node stopped in the middle of receiving a file
    // was seen to hold its UDP port for 5 to 10 s after `node::run` returned (its closed
    // connections still draining): wait up to 20 s.
    let mut last = String::new();
    for _ in 0..1000 {
        match (std::net::TcpListener::bind(api), std::net::UdpSocket::bind(link)) {
            (Ok(api), Ok(link)) => return Sockets { api, link },
            (a, l) => last = format!("api: {:?}, link: {:?}", a.err(), l.err()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {api} and {link} again: {last}");
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Two started nodes: org-a pins org-b and vice versa; org-b offers service "1" (the recording
/// service) to org-a.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub service: Recorder,
}

pub async fn pair() -> Pair {
    let mut p = unstarted_pair().await;
    p.start().await;
    p
}

/// A [`pair`] created and pinned but not started, for a test to change its configs first.
pub async fn unstarted_pair() -> Pair {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let a = Node::create(root.path(), "org-a");
    let b = Node::create(root.path(), "org-b");
    a.add_peer(&b);
    b.add_peer(&a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    Pair { root, a, b, service }
}

impl Pair {
    /// Starts both nodes.
    pub async fn start(&mut self) {
        self.a.start().await;
        self.b.start().await;
    }
}

/// What the recording service saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A local HTTP service that records every call and answers by path:
/// `/status/{code}` answers that code, `/sleep/{ms}` waits first, `/binary` answers non-UTF-8
/// bytes, `/text` plain text, `/flaky/{n}/…` fails its first `n` calls; anything else echoes the
/// call as JSON.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/{*path}", axum::routing::any(record)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, seen }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` calls were seen (at most `within`), and returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = format!("/{path}");
    let entry = Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    seen.lock().unwrap().push(entry.clone());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code] => {
            let code = StatusCode::from_u16(code.parse().unwrap()).unwrap();
            (code, axum::Json(json!({"error": "as asked"}))).into_response()
        }
        ["sleep", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            "slept".into_response()
        }
        ["binary"] => ([("content-type", "application/octet-stream")], vec![0xffu8, 0xfe, 0x00, 0x01]).into_response(),
        ["text"] => "plain words".into_response(),
        ["flaky", n, ..] => {
            // Fails the first `n` calls to this path, then succeeds.
            let calls = seen.lock().unwrap().iter().filter(|s| s.path == path).count();
            if calls <= n.parse::<usize>().unwrap() {
                (StatusCode::SERVICE_UNAVAILABLE, "not yet").into_response()
            } else {
                "ok".into_response()
            }
        }
        _ => axum::Json(json!({
            "method": entry.method, "path": entry.path, "query": entry.query, "body": entry.body,
        }))
        .into_response(),
    }
}

/// A pinned peer that speaks raw frames to a node.
pub struct Rogue {
    pub connection: quinn::Connection,
    pub identity: Identity,
    _endpoint: quinn::Endpoint,
}

/// A peer "rogue" pinned by org-b and allowed to call service 1 (a recorder), speaking raw frames.
pub async fn rogue_and_node() -> (Rogue, Node, Recorder, tempfile::TempDir) {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let identity = Identity::generate("rogue").unwrap();
    let (cert, key) = (root.path().join("rogue.pem"), root.path().join("rogue.key"));
    identity.save(&cert, &key).unwrap();
    let mut b = Node::create(root.path(), "org-b");
    ferry::cli::peer::add(&b.config_path, "rogue", "127.0.0.1:9", &cert).unwrap();
    b.add_service("1", &service.base_url(), &["rogue"]);
    b.start().await;

    let b_cert = ferry::identity::load_cert(&b.cert()).unwrap();
    let tls = ferry::tls::client_config(&identity, ferry::identity::Fingerprint::of(&b_cert)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(ferry::link::Transport::default().config());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint.connect_with(config, b.link, ferry::tls::SERVER_NAME).unwrap().await.unwrap();
    (Rogue { connection, identity, _endpoint: endpoint }, b, service, root)
}

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or `false`): there a test
/// that cannot run for want of a tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
