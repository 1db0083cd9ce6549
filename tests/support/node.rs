//! Nodes running in this process on loopback sockets (`ferry::node::run` as tokio tasks), on the
//! test's runtime or on one given; [`Pair`] is the usual org-a/org-b set-up with a [`Recorder`]
//! as org-b's service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use ferry::config::Config;
use ferry::node::{self, NodeError, Sockets};

use super::{client, pin_pair, NodeDir, Recorder};

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
    pub fn create(root: &Path, name: &str) -> Node {
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Node::create_on(root, name, api, link)
    }

    /// Creates (but does not start) a node in `root/name` with `ferry init` on these sockets (a
    /// link socket may be bound in another network namespace).
    pub fn create_on(root: &Path, name: &str, api: std::net::TcpListener, link: std::net::UdpSocket) -> Node {
        let (api_addr, link_addr) = (api.local_addr().unwrap(), link.local_addr().unwrap());
        let at = NodeDir::init(root, name, link_addr, api_addr);
        Node {
            name: at.name,
            config_path: at.config,
            dir: at.dir,
            api: api_addr,
            link: link_addr,
            sockets: Some(Sockets { api, link }),
            stop: None,
            task: None,
        }
    }

    /// The node's directory, as set up.
    pub fn setup(&self) -> NodeDir {
        NodeDir {
            name: self.name.clone(),
            dir: self.dir.clone(),
            config: self.config_path.clone(),
            link: self.link,
            api: self.api,
        }
    }

    /// Runs `ferry audit ARGS --config` on this node's config (bounded): the exit code, stdout
    /// and stderr.
    pub fn audit(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = super::cli::ferry_cmd();
        cmd.arg("audit").args(args).arg("--config").arg(&self.config_path);
        let out = super::cli::run_bounded(&mut cmd, Duration::from_secs(60));
        (out.status.code().unwrap_or(-1), super::cli::stdout(&out), super::cli::stderr(&out))
    }

    /// The node's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("certs/node.pem")
    }

    /// Pins `other` as a peer of this node.
    pub fn add_peer(&self, other: &Node) {
        self.add_peer_at(other, other.link);
    }

    /// Pins `other` as a peer reached at `addr` (a relay in front of it, another namespace).
    pub fn add_peer_at(&self, other: &Node, addr: SocketAddr) {
        self.setup().pin_at(&other.setup(), addr);
    }

    /// Declares service `id` at `base_url` for `allow`.
    pub fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        self.setup().add_service(id, base_url, allow);
    }

    /// The node's data directory, from its config.
    pub fn data_dir(&self) -> PathBuf {
        Config::load(&self.config_path).unwrap().node.data_dir
    }

    /// Starts the node from its config (rebinding its ports after a stop) and waits until it serves.
    pub async fn start(&mut self) {
        // `RUST_LOG=ferry=debug cargo test ...` shows the nodes' logs with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        if self.sockets.is_none() {
            self.sockets = Some(rebind(self.api, self.link).await);
        }
        self.spawn_on(&tokio::runtime::Handle::current());
        if let Err(e) = self.serving(Duration::from_secs(5)).await {
            panic!("{e}");
        }
    }

    /// Starts the node from its config on `runtime` (on the sockets it was created with), without
    /// waiting for it: [`Node::serving`] waits.
    pub fn spawn_on(&mut self, runtime: &tokio::runtime::Handle) {
        let config = Config::load(&self.config_path).unwrap();
        let sockets = self.sockets.take().unwrap_or_else(|| panic!("{}: its sockets are in use", self.name));
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        self.task = Some(runtime.spawn(node::run(config, sockets, shutdown)));
        self.stop = Some(tx);
    }

    /// Waits (at most `within`) until the started node answers on its API; why not otherwise.
    pub async fn serving(&mut self, within: Duration) -> Result<(), String> {
        let client = client();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if super::serving(&client, self.api).await {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().unwrap().await;
                return Err(format!("node {} stopped at start: {result:?}", self.name));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("node {} did not start serving within {within:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Err(e) = self.stop_within(Duration::from_secs(10)).await {
            panic!("{e}");
        }
    }

    /// Stops the node gracefully and waits for it, at most `within`; how it failed otherwise.
    pub async fn stop_within(&mut self, within: Duration) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let Some(task) = self.task.take() else { return Ok(()) };
        match tokio::time::timeout(within, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("node {} stopped with an error: {e}", self.name)),
            Ok(Err(e)) => Err(format!("the task of node {} failed: {e}", self.name)),
            Err(_) => Err(format!("node {} did not stop within {within:?}", self.name)),
        }
    }

    /// The URL of `path` on the node's API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `POST /v1/requests` with `body`; the HTTP status and the envelope.
    pub async fn request(&self, body: Value) -> (StatusCode, Value) {
        self.post("/v1/requests", body).await
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

/// org-a and org-b in `root` on loopback, pinned both ways; org-b offers service "1" at
/// `service_url` to org-a. Not started.
pub fn two_nodes(root: &Path, service_url: &str) -> (Node, Node) {
    let (a, b) = (Node::create(root, "org-a"), Node::create(root, "org-b"));
    pin_pair(&a.setup(), &b.setup(), service_url);
    (a, b)
}

/// Two started nodes: org-a pins org-b and vice versa; org-b offers service "1" (the recording
/// service) to org-a.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub service: Recorder,
}

/// A started [`Pair`].
pub async fn pair() -> Pair {
    let mut p = unstarted_pair().await;
    p.start().await;
    p
}

/// A [`pair`] created and pinned but not started, for a test to change its configs first.
pub async fn unstarted_pair() -> Pair {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(root.path(), &service.base_url());
    Pair { root, a, b, service }
}

impl Pair {
    /// Starts both nodes.
    pub async fn start(&mut self) {
        self.a.start().await;
        self.b.start().await;
    }
}
