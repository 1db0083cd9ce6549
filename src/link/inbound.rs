//! Connections and streams opened by peers: who they are, and the answer to each request.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::deliver::Services;
use crate::identity::Fingerprint;
use crate::peer::{Peer, Peers};
use crate::store::Store;
use crate::wire::{self, Code, Message};

/// How long a peer may take to send a request's first frame once it opened the stream.
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);

/// Completes the handshake, names the peer by its certificate, and serves its streams.
pub(super) async fn connection(peers: Peers, services: Services, store: Store, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => return tracing::debug!(%remote, error = %e, "handshake failed"),
    };
    let Some(peer) = identify(&peers, &connection) else {
        connection.close(Code::NotPinned.varint(), b"certificate not pinned");
        return tracing::warn!(%remote, "closed a connection whose certificate is no longer pinned");
    };
    tracing::debug!(peer = %peer.name, %remote, "peer connected");
    peer.seen();
    // The peer is up: whatever waits for it is due now.
    if let Err(e) = store.peer_is_back(&peer.name).await {
        tracing::error!(error = %e, "cannot reschedule work for a returning peer");
    }
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(stream(peer.clone(), services.clone(), store.clone(), send, recv));
            }
            Err(e) => return tracing::debug!(peer = %peer.name, reason = %e, "peer connection ended"),
        }
    }
}

/// The pinned peer that presented this connection's client certificate.
fn identify(peers: &Peers, connection: &quinn::Connection) -> Option<Arc<Peer>> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    peers.by_fingerprint(&Fingerprint::of(certs.first()?))
}

/// Answers one stream: reads its opening message and answers it.
async fn stream(
    peer: Arc<Peer>,
    services: Services,
    store: Store,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let reset = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: Code| {
        let _ = send.reset(code.varint());
        let _ = recv.stop(code.varint());
    };
    let message = match tokio::time::timeout(FIRST_FRAME_WITHIN, wire::read(&mut recv)).await {
        Err(_) => return reset(&mut send, &mut recv, Code::Stalled),
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.name, error = %e, "bad frame from peer");
            return reset(&mut send, &mut recv, e.code());
        }
        Ok(Ok(m)) => m,
    };
    let version = match &message {
        Message::Request(r) => Some(r.version),
        Message::AsyncRequest(a) => Some(a.request.version),
        _ => None,
    };
    if version.is_some_and(|v| v != wire::PROTOCOL_VERSION) {
        tracing::warn!(peer = %peer.name, version = ?version, "peer speaks another protocol version");
        return reset(&mut send, &mut recv, Code::VersionMismatch);
    }
    peer.seen();
    let answer = match message {
        Message::Request(request) => {
            let started = std::time::Instant::now();
            let answer = match services.call(&peer.name, &request).await {
                Ok(response) => Message::Response(response),
                Err(refusal) => Message::Refused(refusal),
            };
            tracing::debug!(peer = %peer.name, id = %request.id, path = %request.path, elapsed = ?started.elapsed(), "answered");
            answer
        }
        Message::AsyncRequest(message) => {
            let id = message.request.id.clone();
            if let Err(refusal) = services.check(&peer.name, &message.request.service) {
                Message::Refused(refusal)
            } else {
                match store.insert_incoming(&peer.name, message).await {
                    Ok(_) => Message::Ack(wire::Ack { id, seq: 0 }),
                    Err(e) => {
                        tracing::error!(peer = %peer.name, %id, error = %e, "cannot persist a request; the peer will resend it");
                        return reset(&mut send, &mut recv, Code::Done);
                    }
                }
            }
        }
        Message::Reply(reply) => {
            let ack = wire::Ack { id: reply.id.clone(), seq: reply.seq };
            match store.received_reply(&peer.name, reply).await {
                Ok(()) => Message::Ack(ack),
                Err(e) => {
                    tracing::error!(peer = %peer.name, id = %ack.id, error = %e, "cannot persist a reply; the peer will resend it");
                    return reset(&mut send, &mut recv, Code::Done);
                }
            }
        }
        other => {
            tracing::warn!(peer = %peer.name, message = ?std::mem::discriminant(&other), "unsupported message");
            return reset(&mut send, &mut recv, Code::Unsupported);
        }
    };
    match wire::write(&mut send, &answer).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!(peer = %peer.name, error = %e, "could not send the answer"),
    }
}
