//! The one place requests pass between the API and the link.
//!
//! Producers (the API) hand a request to the [`Store`] and wait for its outcome; the link drains
//! what is due from [`Due`] and reports each outcome back. A synchronous request lives only in
//! memory: its caller is waiting on an open HTTP connection, and if the node dies the caller sees
//! that connection fail. Durable state (asynchronous requests, replies, the evidence log) joins
//! this module behind the same handle, so the API and the link keep meeting here and nowhere else.

use tokio::sync::{mpsc, oneshot};

use crate::wire;

/// How many requests may wait for the link before producers are slowed down.
const DUE_CAPACITY: usize = 4096;

/// A request on its way to a peer, with the channel its outcome goes to.
#[derive(Debug)]
pub struct Outgoing {
    /// The peer's node name.
    pub peer: String,
    /// The request as it goes on the wire.
    pub request: wire::Request,
    /// Where the outcome goes; closed when the caller gave up.
    pub outcome: oneshot::Sender<Outcome>,
}

/// The result of one exchange with a peer.
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

/// The cheap, cloneable handle producers use.
#[derive(Debug, Clone)]
pub struct Store {
    due: mpsc::Sender<Outgoing>,
}

/// The link's end: requests due to be sent.
#[derive(Debug)]
pub struct Due(mpsc::Receiver<Outgoing>);

impl Due {
    /// The next request to send; `None` once every [`Store`] handle is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        self.0.recv().await
    }
}

impl Store {
    /// A store and the queue the link drains.
    pub fn new() -> (Store, Due) {
        let (tx, rx) = mpsc::channel(DUE_CAPACITY);
        (Store { due: tx }, Due(rx))
    }

    /// Hands a synchronous request to the link and waits for its outcome.
    ///
    /// Dropping the returned future tells the link the caller has gone.
    pub async fn request(&self, peer: &str, request: wire::Request) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let outgoing = Outgoing {
            peer: peer.to_owned(),
            request,
            outcome: tx,
        };
        if self.due.send(outgoing).await.is_err() {
            return Err(Failure::PeerUnreachable("the node is shutting down".into()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Failure::Broken(
                "the node stopped before the exchange ended".into(),
            ))
        })
    }
}
