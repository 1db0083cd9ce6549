//! Wiring: a node from its config, already-bound sockets and a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::deliver::{self, Services};
use crate::identity::{Identity, IdentityError};
use crate::link::{Link, LinkError, Transport};
use crate::peer::Peers;
use crate::store::{Store, StoreError};
use crate::{callbacks, inbox};

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
    /// Serving the API failed.
    #[error("the API server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a stopping node waits for work under way.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a node until `shutdown` resolves, then lets in-flight API calls finish and closes the link.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let identity = Identity::load(&config.cert_path(), &config.key_path())?;
    let peers = Peers::load(&config.peers)?;
    let services = Services::new(config.services.clone());
    let store = Store::open_with(&config.node.data_dir, config.evidence.log)?;
    let interrupted = store.recover().await?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "failed requests whose service call the last stop interrupted");
    }
    let link = Link::new(
        sockets.link,
        identity.clone(),
        peers.clone(),
        Transport::default(),
        store.clone(),
        config.evidence.receipts,
    )?;
    let folders = crate::transfer::Folders::new(&config.node.data_dir, config.files.max_size);
    tokio::spawn(link.clone().serve(services.clone(), folders));
    let stop = CancellationToken::new();
    store.set_carrier(Some(Arc::new(link.clone())));
    let workers = [
        tokio::spawn(link.clone().carry(stop.clone())),
        tokio::spawn(deliver::work(services, store.clone(), stop.clone())),
        tokio::spawn(callbacks::work(store.clone(), stop.clone())),
        tokio::spawn(inbox::work(store.clone(), config.node.data_dir.join("inbox"), stop.clone())),
    ];
    link.greet_peers();

    let state = ApiState {
        store,
        peers,
        name: config.node.name.clone(),
        fingerprint: identity.fingerprint().to_string(),
        tokens: Arc::new(config.api.tokens.clone()),
        callback_base: config.node.callback_base.clone(),
        heartbeat: config.api.heartbeat,
        send_roots: Arc::new(api::files::canonical_roots(&config.files.send_roots)),
        max_size: config.files.max_size,
    };
    sockets.api.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(sockets.api)?;
    tracing::info!(
        node = %config.node.name,
        api = %listener.local_addr()?,
        link = %link.local_addr(),
        fingerprint = %identity.fingerprint(),
        "serving"
    );
    axum::serve(listener, api::router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    // Stop taking new work, let what is under way finish (bounded), then close the link.
    stop.cancel();
    if tokio::time::timeout(DRAIN_WITHIN, futures::future::join_all(workers)).await.is_err() {
        tracing::warn!("work still under way after {DRAIN_WITHIN:?}; the store resumes it at the next start");
    }
    link.close().await;
    tracing::info!(node = %config.node.name, "stopped");
    Ok(())
}
