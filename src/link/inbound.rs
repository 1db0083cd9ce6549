//! Connections and streams opened by peers: who they are, and the answer to each request.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::deliver::Services;
use crate::identity::Fingerprint;
use crate::peer::{Peer, Peers};
use crate::wire::{self, Code, Message};

/// How long a peer may take to send a request's first frame once it opened the stream.
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(10);

/// Completes the handshake, names the peer by its certificate, and serves its streams.
pub(super) async fn connection(peers: Peers, services: Services, incoming: quinn::Incoming) {
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
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(stream(peer.clone(), services.clone(), send, recv));
            }
            Err(e) => {
                return tracing::debug!(peer = %peer.name, reason = %e, "peer connection ended")
            }
        }
    }
}

/// The pinned peer that presented this connection's client certificate.
fn identify(peers: &Peers, connection: &quinn::Connection) -> Option<Arc<Peer>> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    peers.by_fingerprint(&Fingerprint::of(certs.first()?))
}

/// Answers one stream: reads the request, calls the service, writes the answer.
async fn stream(
    peer: Arc<Peer>,
    services: Services,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let reset = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: Code| {
        let _ = send.reset(code.varint());
        let _ = recv.stop(code.varint());
    };
    let request = match tokio::time::timeout(FIRST_FRAME_WITHIN, wire::read(&mut recv)).await {
        Err(_) => return reset(&mut send, &mut recv, Code::Stalled),
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer.name, error = %e, "bad frame from peer");
            return reset(&mut send, &mut recv, e.code());
        }
        Ok(Ok(Message::Request(r))) if r.version != wire::PROTOCOL_VERSION => {
            tracing::warn!(peer = %peer.name, version = r.version, "peer speaks another protocol version");
            return reset(&mut send, &mut recv, Code::VersionMismatch);
        }
        Ok(Ok(Message::Request(r))) => r,
        Ok(Ok(other)) => {
            tracing::warn!(peer = %peer.name, message = ?std::mem::discriminant(&other), "unsupported message");
            return reset(&mut send, &mut recv, Code::Unsupported);
        }
    };
    peer.seen();
    let started = std::time::Instant::now();
    let answer = match services.call(&peer.name, &request).await {
        Ok(response) => Message::Response(response),
        Err(refusal) => Message::Refused(refusal),
    };
    tracing::debug!(peer = %peer.name, id = %request.id, path = %request.path, elapsed = ?started.elapsed(), "answered");
    match wire::write(&mut send, &answer).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::debug!(peer = %peer.name, id = %request.id, error = %e, "could not send the answer")
        }
    }
}
