//! Store-and-forward: carries asynchronous requests and replies to peers until each is
//! acknowledged, in the order they were stored, retrying with backoff while a peer is away.

use std::time::Duration;

use futures::StreamExt;

use super::{Link, CONNECT_WITHIN};
use crate::backoff;
use crate::peer::Peer;
use crate::store::{now_ms, OutboundWork};
use crate::transfer::TransferError;
use crate::wire::{self, Message};
use crate::worker::Worker;
use tokio_util::sync::CancellationToken;

/// How many messages are in flight at once, over all peers.
const IN_FLIGHT: usize = 1024;
/// How many messages one claim takes at most.
const MAX_CLAIM: usize = 512;
/// How many streams one peer's batch uses at once.
const STREAMS_PER_PEER: usize = 128;

impl Link {
    /// Claims due work from the store and carries it, until `stop`; then waits, briefly, for
    /// messages in flight.
    pub async fn carry(self, stop: CancellationToken) {
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
                    let link = self.clone();
                    async move { link.carry_to(&peer, batch).await }
                },
            )
            .await;
    }

    /// Sends one peer's batch over its connection; on no connection, defers it with backoff.
    async fn carry_to(&self, peer_name: &str, batch: Vec<OutboundWork>) {
        let store = &self.inner.store;
        let Some(peer) = self.inner.peers.get(peer_name) else {
            tracing::warn!(peer = peer_name, "work for a peer that is no longer configured; held back");
            let _ = store.retry_outbound(batch, now_ms() + 60_000).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        let connection = match self.connection(&peer, deadline).await {
            Ok(c) => c,
            Err(e) => {
                let at = now_ms() + peer_backoff(&peer);
                tracing::debug!(peer = peer_name, error = %e, waiting = batch.len(), "peer away; retrying later");
                let _ = store.retry_outbound(batch, at).await;
                return;
            }
        };
        futures::stream::iter(batch)
            .for_each_concurrent(STREAMS_PER_PEER, |work| {
                let connection = connection.clone();
                let peer = peer.clone();
                async move {
                    let mut work = work;
                    let attached = self.attach_file(&connection, &peer.name, &mut work).await;
                    // A refusal that comes from this node, not from the peer.
                    let ours = matches!(attached, Err(TransferError::Source { .. }));
                    let result = match attached {
                        Ok(()) => send(&connection, &work).await,
                        Err(TransferError::Interrupted(why)) => Err(why),
                        Err(TransferError::Refused(refusal)) => Ok(Message::Refused(refusal)),
                        // This node's own file cannot be read (no retry helps). A reply's peer learns
                        // only that, not this node's paths; the log has the details.
                        Err(e @ TransferError::Source { .. }) => {
                            let why = match &work {
                                OutboundWork::Request { .. } => e.to_string(),
                                OutboundWork::Reply { .. } => {
                                    tracing::warn!(peer = %peer.name, error = %e, "a reply's file cannot be sent");
                                    "its file changed or went after it was accepted".to_owned()
                                }
                            };
                            Ok(Message::Refused(wire::Refusal::new(wire::RefusalKind::BadRequest, why)))
                        }
                    };
                    let store = &self.inner.store;
                    let recorded = match result {
                        Ok(Message::Ack(ack)) => store.acknowledged(&peer.name, ack, &work).await,
                        Ok(Message::Refused(refusal)) => match &work {
                            OutboundWork::Request { message, .. } => {
                                let why = match ours {
                                    true => refusal.message,
                                    false => format!("{}: {}", peer.name, refusal.message),
                                };
                                store.refused(&peer.name, &message.request.id, why).await
                            }
                            // The peer's store failed: it may take the reply later.
                            OutboundWork::Reply { .. } if refusal.kind == wire::RefusalKind::Internal => {
                                store.resend_later(vec![work]).await
                            }
                            // Anything else no retry changes: the request fails, and says why; if
                            // the peer refuses even that, the reply is not sent again.
                            OutboundWork::Reply { message, file, .. } => {
                                let (id, seq) = (&message.id, message.seq);
                                if file.is_none() && message.error.is_some() {
                                    tracing::error!(peer = %peer.name, %id, seq, error = %refusal.message, "the peer refused an error reply; it is not sent again");
                                    store.reply_abandoned(&peer.name, id, seq).await
                                } else {
                                    let why = format!("the reply cannot be delivered: {}", refusal.message);
                                    tracing::warn!(peer = %peer.name, %id, seq, error = %why, "reply failed");
                                    store.reply_refused(&peer.name, id, seq, why).await
                                }
                            }
                        },
                        Ok(_) | Err(_) => {
                            if let Err(e) = &result {
                                tracing::debug!(peer = %peer.name, error = %e, "not acknowledged; resending later");
                            }
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
}

impl Link {
    /// Sends the file of `work`, if it has one and it is not yet through, and refers to it in the
    /// message. Only one upload per key runs at a time, even if a long one outlives its lease.
    async fn attach_file(
        &self,
        connection: &quinn::Connection,
        peer: &str,
        work: &mut OutboundWork,
    ) -> Result<(), TransferError> {
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
            return Err(TransferError::Interrupted(format!("the file for {key} is still being sent")));
        }
        let sent = self.upload(connection, peer, &key, &file, stored).await;
        self.inner.uploading.lock().unwrap().remove(&claim);
        *slot = Some(sent?);
        Ok(())
    }
}

/// Sends one message on a new stream and reads the peer's answer.
async fn send(connection: &quinn::Connection, work: &OutboundWork) -> Result<Message, String> {
    let message = match work {
        OutboundWork::Request { message, .. } => Message::AsyncRequest(message.clone()),
        OutboundWork::Reply { message, .. } => Message::Reply(message.clone()),
    };
    let frame = wire::encode(&message).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    wire::read(&mut recv).await.map_err(|e| e.to_string())
}

/// The pause, in milliseconds, before trying a peer again ([`backoff::PEER_AWAY`]).
fn peer_backoff(peer: &Peer) -> i64 {
    backoff::PEER_AWAY.after(peer.failures()).as_millis() as i64
}
