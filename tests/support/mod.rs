//! The harness of the tests and the benches: real nodes on loopback in temporary directories,
//! set up as admins would (`init`, `peer add`, `service add`), and what is needed around them.
//!
//! A test includes it with `mod support;` (this folder is no test target of its own); a bench
//! with `#[path = "../tests/support/mod.rs"] mod support;`. Every part compiles in both, so
//! items one of them leaves unused are allowed.
//!
//! | module | what |
//! | --- | --- |
//! | this one | free ports, HTTP clients, bounded waits, the node directory a pair is made of |
//! | [`node`] | nodes running in this process (`ferry::node::run` as tasks): [`Node`], [`Pair`] |
//! | [`process`] | nodes as `ferry run` child processes, for killing, stopping and restarting them |
//! | [`cli`] | the binary driven through its command line, as an admin drives it |
//! | [`recorder`] | a recording HTTP service, as a node's service and as the callback receiver |
//! | [`rogue`] | a pinned peer that speaks raw frames |
//! | [`files`] | repeatable file contents and their SHA-256 |
//! | [`cpu`] | CPU time, memory and descriptors of processes and threads, from `/proc` |
//! | [`netns`] | two network namespaces joined by a veth pair, with netem |
//! | [`lossy`] | userspace UDP relays that drop or delay datagrams, where there is no netem |
//! | [`tamper`] | a stopped node's evidence log rewritten as an insider would, on a copy of its folder |
//! | [`tsa`] | an RFC 3161 time-stamping authority on loopback (`openssl ts -reply`) |
//! | [`postgres`] | a PostgreSQL server of the process's own, for `FERRY_TEST_STORE=postgres` |
//! | [`report`] | the benches' tables, statistics and evidence settings |
#![allow(dead_code)]

pub mod cli;
pub mod cpu;
pub mod files;
pub mod lossy;
pub mod netns;
pub mod node;
pub mod postgres;
pub mod process;
pub mod recorder;
pub mod report;
pub mod rogue;
pub mod tamper;
pub mod tsa;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

// Re-exported for the tests; each uses some.
#[allow(unused_imports)]
pub use node::{pair, unstarted_pair, Node, Pair};
#[allow(unused_imports)]
pub use recorder::{Recorder, Seen};
#[allow(unused_imports)]
pub use rogue::{rogue_and_node, Rogue};

/// The bound on every single wait of [`until`].
pub const WITHIN: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (for an API or a recorder started later).
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A free UDP port on loopback (for a node's QUIC link).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An HTTP client that goes to loopback directly (no proxy from the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
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

/// Serves `router` on a free loopback port (with `nodelay`, TCP_NODELAY on every connection, as
/// a service tuned for small answers is); its address.
pub async fn serve(router: axum::Router, nodelay: bool) -> SocketAddr {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |tcp| {
        if nodelay {
            let _ = tcp.set_nodelay(true);
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Every event of the node API at `api` (`GET /v1/events`, no token), as it comes, answering
/// the heartbeat every 500 ms until the receiver is dropped or the node closes the socket.
pub async fn events(api: SocketAddr) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{api}/v1/events")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if ws.send(Message::text("OK")).await.is_err() {
                        return;
                    }
                }
                next = ws.next() => match next {
                    Some(Ok(Message::Text(t))) => {
                        if tx.send(serde_json::from_str(&t).unwrap()).is_err() {
                            return;
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

/// Whether the node API at `api` serves: answers `GET /v1/health` at all (with 401 where it
/// requires a token).
pub async fn serving(client: &reqwest::Client, api: SocketAddr) -> bool {
    client.get(format!("http://{api}/v1/health")).send().await.is_ok()
}

/// Polls `probe` every `every` until it gives a value, for at most `within`; on timeout, the
/// last thing the probe saw.
pub async fn try_until_every<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` every 25 ms until it gives a value, for at most `within`; on timeout, the
/// last thing the probe saw.
pub async fn try_until<T>(within: Duration, probe: impl AsyncFnMut() -> Result<T, String>) -> Result<T, String> {
    try_until_every(within, Duration::from_millis(25), probe).await
}

/// Polls `probe` every 25 ms until it gives a value, for at most [`WITHIN`]; on timeout fails
/// with `what` and the last thing the probe saw.
pub async fn until<T>(what: &str, probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    try_until(WITHIN, probe).await.unwrap_or_else(|last| panic!("waited {WITHIN:?} for {what}; last seen: {last}"))
}

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or `false`): there a test
/// that cannot run for want of a tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// A node directory made by `ferry init`: what both kinds of node are set up from.
#[derive(Clone, Debug)]
pub struct NodeDir {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub link: SocketAddr,
    pub api: SocketAddr,
}

impl NodeDir {
    /// `ferry init` in `root/name` with the link on `link` and the API on `api`.
    pub fn init(root: &Path, name: &str, link: SocketAddr, api: SocketAddr) -> NodeDir {
        let dir = root.join(name);
        ferry::cli::init::init(&dir, name, link, api).unwrap_or_else(|e| panic!("ferry init {name}: {e}"));
        let at = NodeDir { name: name.to_owned(), config: dir.join("config/ferry.toml"), dir, link, api };
        if postgres::wanted() {
            at.use_store(&postgres::database(), None);
        }
        at
    }

    /// Keeps the node's store in the PostgreSQL database at `url` (`[store] url`), over TLS, as
    /// `member` when given; replaces any `[store]` and keeps the rest of the config.
    pub fn use_store(&self, url: &str, member: Option<&str>) {
        let mut config: toml_edit::DocumentMut = std::fs::read_to_string(&self.config).unwrap().parse().unwrap();
        let mut store = toml_edit::Table::new();
        store["url"] = toml_edit::value(url);
        // Over TLS, the server's certificate checked: the node's connections to the store are
        // the ones an organization would run across its network.
        store["ca"] = toml_edit::value(postgres::ca_file().to_str().unwrap());
        if let Some(member) = member {
            store["member"] = toml_edit::value(member);
        }
        config["store"] = toml_edit::Item::Table(store);
        std::fs::write(&self.config, config.to_string()).unwrap();
    }

    /// The node's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("certs/node.pem")
    }

    /// Pins `other` as a peer reached at `addr` (`ferry peer add`).
    pub fn pin_at(&self, other: &NodeDir, addr: SocketAddr) {
        ferry::cli::peer::add(&self.config, &other.name, &[addr.to_string()], &[other.cert()]).unwrap();
    }

    /// Declares service `id` at `base_url` for `allow` (`ferry service add`).
    pub fn add_service(&self, id: &str, base_url: &str, allow: &[&str]) {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        ferry::cli::service::add(&self.config, id, base_url, &allow).unwrap();
    }
}

/// The evidence log of the node in `dir` (`ferry init`'s folder), as (seq, record JSON), read from
/// its store wherever its config keeps it (on a thread of its own: PostgreSQL's blocking client may
/// not run on the test's runtime).
pub fn evidence_log(dir: &Path) -> Vec<(i64, String)> {
    let location = ferry::config::Config::load(&dir.join("config/ferry.toml")).unwrap().store_location();
    std::thread::spawn(move || ferry::store::read_log(&location, 0).unwrap().collect::<Result<_, _>>().unwrap())
        .join()
        .unwrap()
}

/// Skips a test that edits SQLite's `ferry.db` by hand when the stores run on PostgreSQL
/// (`FERRY_TEST_STORE=postgres`): true, having said so, when it is to be skipped.
pub fn sqlite_only(test: &str) -> bool {
    let skip = postgres::wanted();
    if skip {
        eprintln!("{test}: SQLite only (it edits ferry.db by hand); skipped with FERRY_TEST_STORE=postgres");
    }
    skip
}

/// org-a and org-b as admins set them up: pinned both ways (each reached at its link address),
/// org-b offering service "1" at `service_url` to org-a.
pub fn pin_pair(a: &NodeDir, b: &NodeDir, service_url: &str) {
    a.pin_at(b, b.link);
    b.pin_at(a, a.link);
    b.add_service("1", service_url, &["org-a"]);
}
