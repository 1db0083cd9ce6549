//! Synchronous exchanges: a host's request goes from its API handler's own task straight onto a
//! QUIC stream to the peer, and the answer comes back on the same open HTTP connection.
//!
//! Everything else a host asks for is queued in the [`store`](crate::store) and carried by the
//! link's workers; a synchronous request is the one exception, because its caller is waiting.
//! [`Exchange`] is wired by [`crate::node`]: the API calls it, it calls the [`Carrier`] (the
//! link), and it hands the records of what was exchanged to the store for the evidence log.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::metrics::{Metrics, PeerLabel};
use crate::store::{OutgoingFile, Store};
use crate::wire;

/// Carries one synchronous request to a peer and brings back its answer: the link.
pub trait Carrier: Send + Sync {
    /// One request–answer exchange with `peer`, the file (if any) sent first: what was sent, and
    /// the outcome.
    fn exchange(
        &self,
        peer: String,
        request: wire::Request,
        file: Option<OutgoingFile>,
    ) -> BoxFuture<'static, (Sent, Outcome)>;
}

/// A synchronous request as it went to the peer.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The request as it went on the wire (with its file reference).
    pub request: wire::Request,
    /// Its [`wire::payload_sha256`], once it was encoded to be sent.
    pub payload: Option<[u8; 32]>,
    /// The member of the peer it went to, for a peer whose members have a key each
    /// ([`crate::peer::Peer::member_of`]).
    pub member: Option<String>,
}

impl Sent {
    /// `request`, not (yet) sent.
    pub fn unsent(request: wire::Request) -> Sent {
        Sent { request, payload: None, member: None }
    }
}

/// The result of one synchronous exchange with a peer.
pub type Outcome = Result<wire::Response, Failure>;

/// Why an exchange did not produce the service's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection to the peer could be made in time.
    PeerUnreachable(String),
    /// The peer's node refused the request or could not complete it.
    Refused(wire::Refusal),
    /// The connection failed during the exchange; the service may or may not have been called.
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::PeerUnreachable(why) | Failure::Broken(why) => f.write_str(why),
            Failure::Refused(refusal) => f.write_str(&refusal.message),
        }
    }
}

/// A carrier for a node without a link (API tests): every peer is unreachable.
#[derive(Debug, Clone, Copy)]
pub struct NoLink;

impl Carrier for NoLink {
    fn exchange(
        &self,
        _peer: String,
        request: wire::Request,
        _file: Option<OutgoingFile>,
    ) -> BoxFuture<'static, (Sent, Outcome)> {
        let unreachable = Failure::PeerUnreachable("the node's link is not running".into());
        Box::pin(async move { (Sent::unsent(request), Err(unreachable)) })
    }
}

/// Sends synchronous requests, counts them, logs them and has them recorded as evidence.
#[derive(Clone)]
pub struct Exchange {
    carrier: Arc<dyn Carrier>,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Exchange {
    /// An exchange over `carrier` whose records go to `store`.
    pub fn new(carrier: Arc<dyn Carrier>, store: Store, metrics: Arc<Metrics>) -> Exchange {
        Exchange { carrier, store, metrics }
    }

    /// Sends a synchronous request, with its file if any, and waits for its outcome. An exchange
    /// that reached the peer is recorded in the evidence log with the store's next commit.
    ///
    /// Dropping the returned future abandons the exchange (the caller has gone).
    pub async fn request(&self, peer: &str, request: wire::Request, file: Option<OutgoingFile>) -> Outcome {
        let started = Instant::now();
        let (Sent { request: sent, payload, member }, outcome) =
            self.carrier.exchange(peer.to_owned(), request, file).await;
        let elapsed = started.elapsed();
        let label = PeerLabel { peer: peer.to_owned() };
        self.metrics.sync_duration.get_or_create(&label).observe(elapsed.as_secs_f64());
        let result = match &outcome {
            Ok(r) if r.is_success() => "success",
            Ok(_) => "failed",
            Err(Failure::Refused(_)) => "refused",
            Err(_) => "unreachable",
        };
        self.metrics.sync_request(peer, "outgoing", result);
        // Where every outgoing sync exchange ends: one line for it.
        let (id, path, ms) = (&sent.id, &sent.path, format!("{:.1}", elapsed.as_secs_f64() * 1000.0));
        match &outcome {
            Ok(r) => tracing::info!(%id, %peer, %path, status = r.status, duration_ms = %ms, "exchange"),
            Err(f) => {
                let status = match f {
                    Failure::Refused(refusal) => refusal.kind.http_status(),
                    Failure::PeerUnreachable(_) | Failure::Broken(_) => 502,
                };
                tracing::info!(%id, %peer, %path, status, duration_ms = %ms, error = %f, "exchange")
            }
        }
        // This node's records join a commit of the store's soon after, without holding up the
        // host's answer. Only an answer, or a refusal, from the peer's node is evidence.
        let answered = match &outcome {
            Ok(response) => Some(Ok(response)),
            Err(Failure::Refused(refusal)) => Some(Err(refusal.message.as_str())),
            Err(_) => None,
        };
        if let Some(answer) = answered {
            self.store.sync_exchanged(peer, member.as_deref(), &sent, payload, answer);
        }
        outcome
    }
}
