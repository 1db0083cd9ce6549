//! Wiring: a node from its config, already-bound sockets and a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::deliver::{self, Deliverer};
use crate::exchange::Exchange;
use crate::host_file::HostFiles;
use crate::identity::IdentityError;
use crate::link::{self, Link, LinkError, Transport};
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::rollover::{KeyFiles, Keys, SharedKeys};
use crate::service::Services;
use crate::stamping::Stamper;
use crate::store::{Store, StoreError};
use crate::systemd::Notifier;
use crate::{callbacks, inbox, throughput};

/// The node's two sockets, bound before it starts so that callers (and tests) may bind port 0.
#[derive(Debug)]
pub struct Sockets {
    /// The local REST API.
    pub api: std::net::TcpListener,
    /// QUIC for peers.
    pub link: std::net::UdpSocket,
}

impl Sockets {
    /// Binds `node.api` and `node.listen`.
    pub fn bind(config: &Config) -> Result<Sockets, NodeError> {
        let bind_err = |what: &'static str, addr: SocketAddr| move |source| NodeError::Bind { what, addr, source };
        let api = std::net::TcpListener::bind(config.node.api).map_err(bind_err("API (node.api)", config.node.api))?;
        let link = std::net::UdpSocket::bind(config.node.listen)
            .map_err(bind_err("link (node.listen)", config.node.listen))?;
        Ok(Sockets { api, link })
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A socket could not be bound.
    #[error("cannot bind the {what} on {addr}: {source}; is another node running there?")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node's or a peer's certificate could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The TSA's certificate (`evidence.tsa_cert`) cannot be used.
    #[error("{0}")]
    Tsa(String),
    /// Serving the API failed.
    #[error("the API server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's own files, which are never sent whatever path names them: its key, its config and
/// its store.
fn own_files(config: &Config) -> Vec<std::path::PathBuf> {
    let db = config.node.data_dir.join("ferry.db");
    let mut files = vec![config.key_path(), config.path.clone(), db.clone()];
    files.extend(["-wal", "-shm"].map(|end| db.with_file_name(format!("ferry.db{end}"))));
    files
}

/// Says every [`crate::store::SAY_EVERY`] that this member is alive, taking over the work of
/// members of a shared store that stopped saying so.
async fn say_alive(store: Store, address: String, stop: CancellationToken) {
    let mut every = tokio::time::interval(crate::store::SAY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = store.say_alive(&address, false).await {
            tracing::warn!(error = %e, "cannot tell the store this member is alive");
        }
    }
}

/// How long a stopping node waits for work under way.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping node waits for the TSA to stamp its last head.
const STAMP_AT_STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a reload's outcome goes: what changed, or why the file was refused.
pub type ReloadAnswer = tokio::sync::oneshot::Sender<Result<String, String>>;

/// What `ferry run` adds to a node: systemd notifications and reloads on SIGHUP. Tests and the
/// demo run nodes without them (`POST /v1/reload` reloads any node).
#[derive(Debug, Default)]
pub struct Controls {
    /// Each message asks for the config file to be read again (SIGHUP).
    pub reload: Option<tokio::sync::mpsc::Receiver<()>>,
    /// systemd's notification socket, when started with `Type=notify`.
    pub notifier: Option<Notifier>,
}

/// Runs a node until `shutdown` resolves, then lets in-flight API calls finish and closes the link.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_with(config, sockets, shutdown, Controls::default()).await
}

/// [`run`], reloading peers, services and tokens when `controls.reload` says so, and telling
/// systemd how the node is doing through `controls.notifier`.
pub async fn run_with(
    config: Config,
    sockets: Sockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
    controls: Controls,
) -> Result<(), NodeError> {
    let keys = Keys::load(&KeyFiles::of(&config))?;
    let peers = Peers::load(&config.peers)?;
    pins_none_of_ours(&peers, &keys)?;
    peers.set_own(keys.fingerprints());
    let keys = keys.shared();
    let services = Services::new(config.services.clone());
    let store = Store::open_at(&config.store_location(), &config.node.data_dir, config.evidence.log)?;
    peers.restore(&store.rollovers().await?);
    // Before its leases are given up: a member of the same name alive elsewhere is refused.
    let member_address = sockets.link.local_addr()?.to_string();
    store.say_alive(&member_address, true).await?;
    let interrupted = store.recover().await?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "failed requests whose service call the last stop interrupted");
    }
    // The inbox's folders exist once the node is up, for operators and scripts to drop files in.
    let inbox_dir = config.node.data_dir.join("inbox");
    let inbox_made = inbox::create(&inbox_dir);
    // The link reads files below the send roots (requests and replies) and the inbox (replies).
    let sendable = [config.files.send_roots.clone(), vec![inbox_dir.clone()]].concat();
    let metrics = Arc::new(Metrics::default());
    let pending = crate::pending::Pending::default();
    let context = link::Context {
        pending: pending.clone(),
        peers: peers.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        files: HostFiles::new(&sendable, own_files(&config)),
    };
    let link = Link::new(sockets.link, keys.clone(), Transport::default(), config.evidence.receipts, context)?;
    let folders = crate::transfer::Folders {
        direct_io: config.files.direct_io,
        ..crate::transfer::Folders::new(&config.node.data_dir, config.files.max_size)
    };
    let deliverer = Deliverer::new(services.clone());
    tokio::spawn(link.clone().serve(services.clone(), Arc::new(deliverer.clone()), folders));
    let stop = CancellationToken::new();
    let inbox = match inbox_made {
        Ok(()) if !config.files.inbox => {
            tracing::info!(dir = %inbox_dir.display(), "files.inbox is false: another member watches the inbox");
            tokio::spawn(async {})
        }
        Ok(()) => {
            let files = HostFiles::new(std::slice::from_ref(&inbox_dir), own_files(&config));
            tokio::spawn(inbox::work(store.clone(), inbox_dir, files, stop.clone()))
        }
        Err(e) => {
            tracing::error!(dir = %inbox_dir.display(), error = %e, "cannot create the inbox; it is off");
            tokio::spawn(async {})
        }
    };
    let tsa_cert = match &config.evidence.tsa {
        Some(tsa) => Some(Arc::new(tsa.certificate().map_err(NodeError::Tsa)?)),
        None => None,
    };
    let stamper = match (&config.evidence.tsa, &tsa_cert, store.keeps_evidence()) {
        (Some(tsa), Some(cert), true) => Some(Stamper::new(store.clone(), tsa.clone(), cert.clone(), metrics.clone())),
        (Some(_), _, false) => {
            tracing::warn!("evidence.tsa_url is set but evidence.log is off: nothing is time-stamped");
            None
        }
        _ => None,
    };
    let stamping = match &stamper {
        Some(s) => tokio::spawn(s.clone().work(stop.clone())),
        None => tokio::spawn(async {}),
    };
    let workers = [
        tokio::spawn(link.clone().forward(stop.clone())),
        tokio::spawn(deliver::work(deliverer, store.clone(), metrics.clone(), stop.clone())),
        tokio::spawn(callbacks::work(store.clone(), metrics.clone(), stop.clone())),
        inbox,
        stamping,
        tokio::spawn(link.clone().send_checkpoints(config.evidence.checkpoint_every, stop.clone())),
        tokio::spawn(link.clone().announce_rollover(stop.clone())),
        tokio::spawn(say_alive(store.clone(), member_address, stop.clone())),
        match config.files.keep_received {
            Some(keep) => {
                let received = config.node.data_dir.join("received");
                tokio::spawn(crate::housekeeping::work(store.clone(), keep, received, stop.clone()))
            }
            None => tokio::spawn(async {}),
        },
    ];
    link.greet_peers();

    let tokens = Arc::new(arc_swap::ArcSwap::from_pointee(config.api.tokens.clone()));
    let (reload, reloads_asked) = tokio::sync::mpsc::channel(4);
    let serving = stop.child_token();
    let state = ApiState {
        pending,
        reload,
        stopping: serving.clone(),
        exchange: Exchange::new(Arc::new(link.clone()), store.clone(), metrics.clone()),
        metrics,
        store: store.clone(),
        peers: peers.clone(),
        name: config.node.name.clone(),
        keys: keys.clone(),
        tokens: tokens.clone(),
        callback_base: config.node.callback_base.clone(),
        callback_hosts: Arc::new(config.api.callback_hosts.clone()),
        heartbeat: config.api.heartbeat,
        send_roots: Arc::new(HostFiles::new(&config.files.send_roots, own_files(&config))),
        max_size: config.files.max_size,
        timestamps: stamper.as_ref().map(Stamper::status),
        tsa_cert,
        config_file: Arc::new(api::ConfigFile::new(config.path.clone())),
        services: services.clone(),
        throughput: throughput::History::default(),
    };
    let sampling =
        state.throughput.clone().sample(state.metrics.clone(), store.clone(), throughput::EVERY, serving.clone());
    tokio::spawn(sampling);
    sockets.api.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(sockets.api)?;
    tracing::info!(
        node = %config.node.name,
        api = %listener.local_addr()?,
        link = %link.local_addr(),
        fingerprint = %keys.load().current.fingerprint,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "serving"
    );
    let Controls { reload: sighup, notifier } = controls;
    let reloader = Reloader {
        config: config.clone(),
        keys,
        store: store.clone(),
        peers: peers.clone(),
        services,
        tokens,
        link: link.clone(),
        notifier: notifier.clone(),
    };
    tokio::spawn(reloader.listen(sighup, reloads_asked, serving.clone()));
    if let Some(n) = &notifier {
        // The listener is bound and the link serves: the API answers from the first accept on.
        let line = crate::systemd::summary(&config.node.name, &store, &peers)
            .await
            .unwrap_or_else(|e| format!("{}: serving (no figures: {e})", config.node.name));
        n.ready(&line);
        tokio::spawn(n.clone().watch(config.node.name.clone(), store.clone(), peers.clone(), serving.clone()));
    }
    let stopping = {
        let (notifier, serving) = (notifier.clone(), serving.clone());
        async move {
            shutdown.await;
            serving.cancel();
            if let Some(n) = notifier {
                n.stopping();
            }
        }
    };
    let limits =
        api::serve::Limits { max_connections: config.api.max_connections, header_timeout: config.api.header_timeout };
    api::serve::serve(listener, api::router(state), limits, stopping).await;
    // Stop taking new work, let what is under way finish (bounded), then close the link.
    stop.cancel();
    if tokio::time::timeout(DRAIN_WITHIN, futures::future::join_all(workers)).await.is_err() {
        tracing::warn!("work still under way after {DRAIN_WITHIN:?}; the store resumes it at the next start");
    }
    if let Some(stamper) = &stamper {
        // The last head gets its trusted time before the store's last commit.
        if tokio::time::timeout(STAMP_AT_STOP_WITHIN, stamper.stamp_head()).await.is_err() {
            tracing::warn!("the TSA did not stamp the last head within {STAMP_AT_STOP_WITHIN:?}");
        }
    }
    link.close().await;
    if let Err(e) = store.flush().await {
        tracing::error!(error = %e, "the store could not commit its last records");
    }
    tracing::info!(node = %config.node.name, "stopped");
    Ok(())
}

/// Refuses peers that pin one of this node's own certificates.
fn pins_none_of_ours(peers: &Peers, keys: &Keys) -> Result<(), IdentityError> {
    match keys.fingerprints().iter().filter_map(|ours| peers.by_fingerprint(ours)).next() {
        Some(peer) => Err(IdentityError::PinnedOwn(peer.name.clone())),
        None => Ok(()),
    }
}

/// What a reload may change in place: the node's keys (after `ferry cert rotate`), peers,
/// services and API tokens.
struct Reloader {
    /// The config in force.
    config: Config,
    keys: SharedKeys,
    store: Store,
    peers: Peers,
    services: Services,
    tokens: Arc<arc_swap::ArcSwap<Vec<String>>>,
    link: Link,
    notifier: Option<Notifier>,
}

impl Reloader {
    /// Reloads at each SIGHUP and each `POST /v1/reload` (which is told the outcome), until `stop`.
    async fn listen(
        mut self,
        mut sighup: Option<tokio::sync::mpsc::Receiver<()>>,
        mut asked: tokio::sync::mpsc::Receiver<ReloadAnswer>,
        stop: CancellationToken,
    ) {
        loop {
            let answer = tokio::select! {
                Some(()) = async { sighup.as_mut()?.recv().await } => None,
                Some(answer) = asked.recv() => Some(answer),
                () = stop.cancelled() => return,
            };
            if let Some(n) = &self.notifier {
                n.reloading();
            }
            let outcome = self.reload().await;
            match &outcome {
                Ok(summary) => tracing::info!(config = %self.config.path.display(), "reloaded: {summary}"),
                Err(e) => tracing::error!(
                    config = %self.config.path.display(),
                    "reload refused, the running config stays in force; fix the file and reload again: {e}"
                ),
            }
            if let Some(n) = &self.notifier {
                let line = match &outcome {
                    Ok(summary) => format!("{}: reloaded: {summary}", self.config.node.name),
                    Err(e) => format!(
                        "{}: reload refused ({}), old config in force",
                        self.config.node.name,
                        e.lines().next().unwrap_or("")
                    ),
                };
                n.ready(&line);
            }
            if let Some(answer) = answer {
                let _ = answer.send(outcome);
            }
        }
    }

    /// Reads the config file and the node's keys again and applies keys, peers, services and
    /// tokens; on any error changes nothing and says why.
    async fn reload(&mut self) -> Result<String, String> {
        let new = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        let keys = Keys::load(&KeyFiles::of(&self.config)).map_err(|e| e.to_string())?;
        let kept = self.store.rollovers().await.map_err(|e| e.to_string())?;
        let old = &self.config;
        let mut restart = Vec::new();
        if new.node.name != old.node.name {
            restart.push("node.name");
        }
        if new.node.listen != old.node.listen {
            restart.push("node.listen");
        }
        if new.node.api != old.node.api {
            restart.push("node.api");
        }
        if new.node.data_dir != old.node.data_dir {
            restart.push("node.data_dir");
        }
        if new.node.certs_dir != old.node.certs_dir {
            restart.push("node.certs_dir");
        }
        if new.node.threads != old.node.threads {
            restart.push("node.threads");
        }
        if new.evidence != old.evidence {
            // Including evidence.tsa_url, tsa_cert and tsa_every: the stamping task starts with the node.
            restart.push("[evidence]");
        }
        if new.node.callback_base != old.node.callback_base
            || new.api.callback_hosts != old.api.callback_hosts
            || new.files.send_roots != old.files.send_roots
            || new.files.max_size != old.files.max_size
            || new.files.keep_received != old.files.keep_received
            || new.api.heartbeat != old.api.heartbeat
            || new.api.max_connections != old.api.max_connections
            || new.api.header_timeout != old.api.header_timeout
        {
            restart.push(
                "node.callback_base, api.callback_hosts, [files], api.heartbeat, api.max_connections or api.header_timeout",
            );
        }
        let candidate = Peers::load(&new.peers).map_err(|e| e.to_string())?;
        candidate.set_own(keys.fingerprints());
        candidate.restore(&kept);
        pins_none_of_ours(&candidate, &keys).map_err(|e| e.to_string())?;
        let changes = self.peers.reload(&new.peers).map_err(|e| e.to_string())?;
        self.peers.set_own(keys.fingerprints());
        self.peers.restore(&kept);
        let rotated = keys.current.fingerprint != self.keys.load().current.fingerprint;
        if rotated {
            tracing::info!(fingerprint = %keys.current.fingerprint, "this node's new certificate is in force");
        }
        self.keys.store(std::sync::Arc::new(keys));
        self.link.announce_now();
        self.services.replace(new.services.clone());
        self.tokens.store(Arc::new(new.api.tokens.clone()));
        if !changes.added.is_empty() || !changes.changed.is_empty() {
            // Peers holding work for this node learn at once that it knows them now.
            self.link.greet_peers();
        }
        let mut summary = format!("{} peer(s), {} service(s)", new.peers.len(), new.services.len());
        if rotated {
            summary.push_str("; a new certificate of this node's");
        }
        for (what, names) in [("added", &changes.added), ("changed", &changes.changed), ("removed", &changes.removed)] {
            if !names.is_empty() {
                summary.push_str(&format!("; {what} {}", names.join(", ")));
            }
        }
        if !restart.is_empty() {
            tracing::warn!("changes to {} take effect only at the next start", restart.join(", "));
        }
        // Settings that need a restart stay as they are, so that the next reload warns again.
        self.config.peers = new.peers;
        self.config.services = new.services;
        self.config.api.tokens = new.api.tokens;
        Ok(summary)
    }
}
