//! Store-and-forward: carries asynchronous requests and replies to peers until each is
//! acknowledged, in the order they were stored, retrying with backoff while a peer is away.

use std::time::Duration;

use futures::StreamExt;

use super::{Link, LinkFailure, CONNECT_WITHIN};
use crate::backoff;
use crate::peer::Peer;
use crate::store::{now_ms, OutboundWork, StoreError};
use crate::wire::{self, Answer, Opening};
use crate::worker::Worker;
use tokio_util::sync::CancellationToken;

/// How many messages are in flight at once, over all peers.
const IN_FLIGHT: usize = 1024;
/// How many messages one claim takes at most.
const MAX_CLAIM: usize = 512;
/// How many streams one peer's batch uses at once.
const STREAMS_PER_PEER: usize = 128;
/// How long a message sent before the node began to stop may still wait for its acknowledgement.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Link {
    /// Claims due work from the store and carries it, until `stop`; then waits, briefly, for
    /// messages in flight.
    pub async fn forward(self, stop: CancellationToken) {
        let store = self.inner.store.clone();
        let worker =
            Worker { what: "messages", slots: IN_FLIGHT, tick: Duration::from_millis(250), wake: &store.wake.outbound };
        let claim = |free: usize| store.claim_outbound(free.min(MAX_CLAIM));
        worker
            .by(
                &stop,
                claim,
                |work| work.peer().to_owned(),
                |peer, batch| {
                    let (link, stop) = (self.clone(), stop.clone());
                    async move { link.forward_to(&peer, batch, &stop).await }
                },
            )
            .await;
    }

    /// Sends one peer's batch over its connection; on no connection, defers it with backoff. A
    /// dial still waiting for its answer when the node stops is given up: the batch is due again
    /// at the next start.
    async fn forward_to(&self, peer_name: &str, batch: Vec<OutboundWork>, stop: &CancellationToken) {
        let store = &self.inner.store;
        let Some(peer) = self.inner.peers.get(peer_name) else {
            tracing::warn!(peer = peer_name, "work for a peer that is no longer configured; held back");
            let _ = store.retry_outbound(batch, now_ms() + 60_000).await;
            return;
        };
        // A peer that failed its last dial is not dialed again for each batch that falls due.
        if peer.away_for().is_some() {
            let _ = store.retry_outbound(batch, retry_at(&peer)).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        let dialed = tokio::select! {
            dialed = self.connection(&peer, deadline) => dialed,
            () = stop.cancelled() => {
                let _ = store.retry_outbound(batch, now_ms()).await;
                return;
            }
        };
        let connection = match dialed {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = peer_name, error = %e, waiting = batch.len(), "peer away; retrying later");
                let _ = store.retry_outbound(batch, retry_at(&peer)).await;
                return;
            }
        };
        futures::stream::iter(batch)
            .for_each_concurrent(STREAMS_PER_PEER, |work| {
                let connection = connection.clone();
                let peer = peer.clone();
                async move {
                    let mut work = work;
                    // A result goes to the member that sent its request, which alone knows it.
                    let connection = match work.member() {
                        Some(member) if peer.member_of(&connection).as_deref() != Some(member) => {
                            match self.member_connection(&peer, member, deadline).await {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::debug!(peer = %peer.name, %member, error = %e, "member away; retrying later");
                                    let _ = store.retry_outbound(vec![work], retry_at(&peer)).await;
                                    return;
                                }
                            }
                        }
                        _ => connection,
                    };
                    let stopping = async {
                        stop.cancelled().await;
                        tokio::time::sleep(STOP_GRACE).await;
                    };
                    let (answer, refuser) = match self.attach_file(&connection, &peer.name, &mut work).await {
                        Ok(()) => {
                            let answer = tokio::select! {
                                answer = send(&connection, &work) => answer,
                                // A peer that went silent holds no stop: the message is resent later.
                                () = stopping => Err(LinkFailure::Interrupted("the node is stopping".into())),
                            };
                            (answer, Refuser::Peer)
                        }
                        // This node's own file cannot be read (no retry helps): this node refuses
                        // the message itself.
                        Err(LinkFailure::Local(why)) => {
                            let refusal = wire::Refusal::new(wire::RefusalKind::BadRequest, why);
                            (Err(LinkFailure::Refused(refusal)), Refuser::ThisNode)
                        }
                        Err(e) => (Err(e), Refuser::Peer),
                    };
                    let store = &self.inner.store;
                    let recorded = match answer {
                        Ok(ack) => {
                            store.acknowledged(&peer.name, peer.member_of(&connection).as_deref(), ack, &work);
                            Ok(())
                        }
                        Err(LinkFailure::Refused(refusal)) => self.record_refusal(&peer, work, refusal, refuser).await,
                        // The connection went (the peer restarted, or the path broke): not this
                        // message's fault, so it waits as for a peer away, not with a backoff of
                        // its own, and a peer that dials back makes it due at once.
                        Err(e) if connection.close_reason().is_some() => {
                            tracing::debug!(peer = %peer.name, error = %e, "connection lost; resending on the next");
                            store.retry_outbound(vec![work], retry_at(&peer)).await
                        }
                        Err(e) => {
                            tracing::debug!(peer = %peer.name, error = %e, "not acknowledged; resending later");
                            store.resend_later(vec![work]).await
                        }
                    };
                    if let Err(e) = recorded {
                        tracing::error!(error = %e, "cannot record a peer's answer");
                    }
                    peer.seen();
                }
            })
            .await;
    }

    /// Records that `work` was refused, by the peer or by this node (whose host's file cannot be
    /// read): a request fails and says why; a reply is resent later if the peer's store failed,
    /// and otherwise fails its request, or, if the peer refuses even that, is not sent again.
    async fn record_refusal(
        &self,
        peer: &Peer,
        work: OutboundWork,
        refusal: wire::Refusal,
        by: Refuser,
    ) -> Result<(), StoreError> {
        let store = &self.inner.store;
        match &work {
            OutboundWork::Request { message, .. } => {
                let why = match by {
                    Refuser::ThisNode => refusal.message,
                    Refuser::Peer => format!("{}: {}", peer.name, refusal.message),
                };
                let (id, status) = (&message.request.id, refusal.kind.http_status());
                tracing::info!(%id, peer = %peer.name, state = "failed", status, error = %why, "exchange");
                store.refused(&peer.name, id, why, status).await
            }
            // The peer's store failed: it may take the reply later.
            OutboundWork::Reply { .. } if refusal.kind == wire::RefusalKind::Internal => {
                store.resend_later(vec![work]).await
            }
            // Anything else no retry changes: the request fails, and says why; if the peer refuses
            // even that, the reply is not sent again.
            OutboundWork::Reply { message, file, .. } => {
                let (id, seq) = (&message.id, message.seq);
                // A reply's peer learns only that its file cannot be sent, not this node's paths;
                // the log has the details.
                let refusal = match by {
                    Refuser::ThisNode => {
                        tracing::warn!(peer = %peer.name, error = %refusal.message, "a reply's file cannot be sent");
                        wire::Refusal::new(refusal.kind, "its file changed or went after it was accepted")
                    }
                    Refuser::Peer => refusal,
                };
                if file.is_none() && message.error.is_some() {
                    tracing::error!(peer = %peer.name, %id, seq, error = %refusal.message, "the peer refused an error reply; it is not sent again");
                    store.reply_abandoned(&peer.name, id, seq).await
                } else {
                    let why = format!("the reply cannot be delivered: {}", refusal.message);
                    tracing::warn!(peer = %peer.name, %id, seq, error = %why, "reply failed");
                    store.reply_refused(&peer.name, id, seq, why).await
                }
            }
        }
    }
}

/// Who refused a message.
#[derive(Clone, Copy)]
enum Refuser {
    /// The peer's node.
    Peer,
    /// This node: the host's file cannot be read.
    ThisNode,
}

impl Link {
    /// Sends the file of `work`, if it has one and it is not yet through, and refers to it in the
    /// message. Only one upload per key runs at a time, even if a long one outlives its lease.
    async fn attach_file(
        &self,
        connection: &quinn::Connection,
        peer: &str,
        work: &mut OutboundWork,
    ) -> Result<(), LinkFailure> {
        let (key, file, slot, stored) = match work {
            OutboundWork::Request { message, file: Some(file), .. } => {
                (message.request.id.clone(), file.clone(), &mut message.request.file, true)
            }
            OutboundWork::Reply { message, file: Some(file), .. } => {
                (format!("{}/{}", message.id, message.seq), file.clone(), &mut message.file, false)
            }
            _ => return Ok(()),
        };
        let claim = format!("{peer}\0{key}");
        if !self.inner.uploading.lock().unwrap().insert(claim.clone()) {
            return Err(LinkFailure::Interrupted(format!("the file for {key} is still being sent")));
        }
        let sent = self.upload(connection, peer, &key, &file, stored).await;
        self.inner.uploading.lock().unwrap().remove(&claim);
        *slot = Some(sent?);
        Ok(())
    }
}

/// When stored work for `peer` is due again, in milliseconds since the epoch: at the end of its
/// away pause after a failed dial, else after [`backoff::PEER_AWAY`]'s first pause.
fn retry_at(peer: &Peer) -> i64 {
    now_ms() + peer.away_for().unwrap_or(backoff::PEER_AWAY.first).as_millis() as i64
}

/// Sends one message on a new stream; the peer's acknowledgement.
async fn send(connection: &quinn::Connection, work: &OutboundWork) -> Result<wire::Ack, LinkFailure> {
    let message = match work {
        OutboundWork::Request { message, .. } => Opening::AsyncRequest(message.clone()),
        OutboundWork::Reply { message, .. } => Opening::Reply(message.clone()),
    };
    let frame = wire::encode(&message).map_err(LinkFailure::encoding)?;
    super::outbound::ask(connection, &frame, |answer| match answer {
        Answer::Ack(ack) => Some(ack),
        _ => None,
    })
    .await
}
