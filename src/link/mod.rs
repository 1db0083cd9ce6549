//! The link: this node's QUIC endpoint and its connections to peers.
//!
//! Outbound, synchronous requests come straight from [`crate::exchange`], whose
//! [`Carrier`](crate::exchange::Carrier) the link is (`outbound`), and [`Link::forward`] drains the
//! asynchronous ones the store says are due; each gets its own bidirectional stream over one kept
//! connection per peer (`connect`). Inbound, [`Link::serve`] accepts connections from pinned peers
//! only, names the peer by its certificate, and answers each stream (`inbound`), signing receipts
//! for what it accepted (`receipts`). A message that does not get through fails with a
//! [`LinkFailure`] that says what to do about it (`error`). The protocol itself is in
//! [`crate::wire`].

mod connect;
mod error;
mod forward;
mod inbound;
mod outbound;
mod receipts;
mod rollover;
mod runtime;
mod transport;
mod upload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub(crate) use connect::accepted;
pub use error::{LinkError, LinkFailure};
pub use transport::Transport;

use crate::host_file::HostFiles;
use crate::metrics::Metrics;
use crate::peer::{Peer, Peers};
use crate::rollover::{Presented, SharedKeys};
use crate::service::{Caller, Services};
use crate::store::Store;
use crate::wire::Code;

/// How long a sync request waits for a connection to its peer.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The endpoint and what it needs to dial and answer peers. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    /// The certificates this node presents (two during its own key rollover).
    keys: SharedKeys,
    peers: Peers,
    transport: Transport,
    store: Store,
    metrics: Arc<Metrics>,
    closing: AtomicBool,
    /// Files being uploaded now, as `peer\0key`.
    uploading: std::sync::Mutex<std::collections::HashSet<String>>,
    receipts: receipts::Receipts,
    /// Where the files of requests and replies may be read from.
    files: HostFiles,
    /// Makes the TLS configuration of each incoming connection.
    acceptor: crate::tls::Acceptor,
    /// Certificates of dialed peers that were not the pinned ones, logged once a minute each.
    refusals: crate::tls::RefusalLog,
    /// Woken when peers should hear of this node's rollover at once: a reload, a new connection.
    announce: tokio::sync::Notify,
}

/// What a link works with besides its socket, identity and settings.
pub struct Context {
    /// The pinned peers it serves and dials.
    pub peers: Peers,
    /// Where what it carries is stored.
    pub store: Store,
    /// The node's metrics, which it counts file bytes and service calls in.
    pub metrics: Arc<Metrics>,
    /// Where the files of requests and replies may be read from.
    pub files: HostFiles,
    /// Where the nodes it refuses for a certificate not pinned here are listed.
    pub pending: crate::pending::Pending,
}

impl Link {
    /// An endpoint on `socket` that presents `keys`, serves `context`'s pinned peers and dials
    /// them on demand; with `receipts`, it signs receipts for what peers send. It sends only
    /// files `context.files` opens.
    pub fn new(
        socket: std::net::UdpSocket,
        keys: SharedKeys,
        transport: Transport,
        receipts: bool,
        context: Context,
    ) -> Result<Link, LinkError> {
        let Context { peers, store, metrics, files, pending } = context;
        let acceptor =
            crate::tls::Acceptor::new(keys.clone(), peers.clone(), crate::tls::RefusalLog::default(), pending);
        // Each connection is accepted with its own configuration (see `serve`); this one is
        // quinn's default, never used.
        let server = server_config(&acceptor, &transport, socket.local_addr()?)?;
        let (recv_buffer, send_buffer) = transport.tune_socket(&socket)?;
        tracing::debug!(recv_buffer, send_buffer, "link socket buffers");
        let endpoint = quinn::Endpoint::new(
            endpoint_config(keys.load().for_peer(false)),
            Some(Arc::unwrap_or_clone(server)),
            socket,
            Arc::new(runtime::Gathering),
        )?;
        Ok(Link {
            inner: Arc::new(Inner {
                endpoint,
                keys,
                peers,
                transport,
                store,
                metrics,
                closing: AtomicBool::new(false),
                uploading: Default::default(),
                receipts: receipts::Receipts::new(receipts),
                files,
                acceptor,
                refusals: Default::default(),
                announce: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().expect("a bound endpoint has an address")
    }

    /// Accepts peer connections and answers their requests until the endpoint closes: checked
    /// against `services`, synchronous ones called by `caller`, files received into `folders`.
    pub async fn serve(self, services: Services, caller: Arc<dyn Caller>, folders: crate::transfer::Folders) {
        let inbound = inbound::Inbound {
            link: self.clone(),
            services,
            caller,
            store: self.inner.store.clone(),
            folders,
            receiving: Default::default(),
        };
        while let Some(incoming) = self.inner.endpoint.accept().await {
            // A configuration per connection, so that a refused certificate is logged with the
            // address it came from.
            match server_config(&self.inner.acceptor, &self.inner.transport, incoming.remote_address()) {
                Ok(tls) => {
                    tokio::spawn(inbound::connection(self.inner.peers.clone(), inbound.clone(), incoming, tls));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TLS for an incoming connection; refused");
                    incoming.refuse();
                }
            }
        }
    }

    /// Dials every peer once in the background, so that peers holding work for this node learn
    /// at once that it is up.
    pub fn greet_peers(&self) {
        for peer in self.inner.peers.all() {
            let link = self.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
                if let Err(e) = link.connection(&peer, deadline).await {
                    tracing::info!(peer = %peer.name, error = %e, "peer not reachable yet");
                }
            });
        }
    }

    /// Closes every connection and waits, briefly, for peers to hear of it.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        self.inner.receipts.close();
        self.inner.endpoint.close(Code::Done.varint(), b"node stopping");
        // Peers hold their connections, and the endpoint's TLS verifier holds the peers: drop the
        // connections so that the endpoint, and its socket, can go.
        for peer in self.inner.peers.all() {
            peer.disconnect(Code::Done, "node stopping");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

/// Reads the end of a stream whose one message has been read, if the peer's FIN came with it.
///
/// A stream dropped before it is read to its end is stopped with a STOP_SENDING frame, which the
/// peer must acknowledge: a datagram of its own each way for every message, as lone requests
/// measured (2.05 `sendmsg` a request on the requesting node). This never waits: a FIN still on
/// its way, or bytes after the message (which nothing reads), leave the stream to be stopped.
fn read_end(recv: &mut quinn::RecvStream) {
    use futures::FutureExt;
    let _ = recv.read(&mut [0; 1]).now_or_never();
}

/// A connection's round-trip time in milliseconds, for log lines.
fn rtt_ms(connection: &quinn::Connection) -> String {
    format!("{:.2}", connection.rtt().as_secs_f64() * 1000.0)
}

impl Link {
    fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Relaxed)
    }

    /// The certificate and key to present to `peer`, and sign for it with: during this node's
    /// rollover, the new one only once the peer is known to pin it.
    fn presented_to(&self, peer: &Peer) -> Arc<Presented> {
        let keys = self.inner.keys.load();
        let current = keys.current.fingerprint;
        keys.for_peer(peer.is_known_to_pin(&current)).clone()
    }
}

/// The QUIC server configuration for a connection from `remote`.
fn server_config(
    acceptor: &crate::tls::Acceptor,
    transport: &Transport,
    remote: SocketAddr,
) -> Result<Arc<quinn::ServerConfig>, LinkError> {
    let tls = acceptor.config(remote).map_err(|e| LinkError::Tls(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport.config());
    Ok(Arc::new(server))
}

/// The endpoint configuration, with the stateless-reset key and the connection-id key derived
/// from the node key (the replaced one, during a rollover): after a restart, even a crash, the
/// node recognises connection ids of its previous run and resets those connections, so peers
/// notice at once instead of after the idle timeout.
fn endpoint_config(key: &Presented) -> quinn::EndpointConfig {
    let secret =
        Sha256::new_with_prefix(b"ferry stateless reset key\0").chain_update(key.identity.key.secret_der()).finalize();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_slice());
    let cid_key = u64::from_be_bytes(secret[..8].try_into().expect("a SHA-256 has 8 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}
