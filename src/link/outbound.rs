//! Sending one request to a peer and bringing back its answer.

use tokio::time::Instant;

use super::{Link, CONNECT_WITHIN};
use futures::future::BoxFuture;

use crate::exchange::{Carrier, Failure, Outcome};
use crate::store::OutgoingFile;
use crate::transfer::TransferError;
use crate::wire::{self, Code, FrameError, Message};

impl Carrier for Link {
    fn exchange(
        &self,
        peer: String,
        request: wire::Request,
        file: Option<OutgoingFile>,
    ) -> BoxFuture<'static, (wire::Request, Option<[u8; 32]>, Outcome)> {
        let link = self.clone();
        Box::pin(async move {
            let (mut request, mut payload) = (request, None);
            let outcome = exchange(&link, &peer, &mut request, &mut payload, file).await;
            (request, payload, outcome)
        })
    }
}

/// One request–answer round trip on a fresh stream of the peer's connection.
///
/// A failure mid-exchange is reported as [`Failure::Broken`] and never sent again: the peer may
/// have called its service before it failed (even a connection it resets after a restart may
/// have carried the request to the service of its previous run). Stale connections to a
/// restarted peer are found before requests use them: see [`super::inbound`].
///
/// `payload` is set to the request's [`wire::payload_sha256`] once it is encoded to be sent.
async fn exchange(
    link: &Link,
    peer_name: &str,
    request: &mut wire::Request,
    payload: &mut Option<[u8; 32]>,
    file: Option<OutgoingFile>,
) -> Outcome {
    let peer = link.inner.peers.get(peer_name).ok_or_else(|| {
        Failure::PeerUnreachable(format!("`{peer_name}` is not a configured peer (add it with `ferry peer add`)"))
    })?;
    if let Some(file) = &file {
        let connection =
            link.connection(&peer, Instant::now() + CONNECT_WITHIN).await.map_err(Failure::PeerUnreachable)?;
        let sent = link.upload(&connection, peer_name, &request.id, file, false).await;
        request.file = Some(sent.map_err(|e| match e {
            TransferError::Refused(refusal) => Failure::Refused(refusal),
            e @ TransferError::Source { .. } => {
                Failure::Refused(wire::Refusal::new(wire::RefusalKind::BadRequest, e.to_string()))
            }
            other => Failure::Broken(other.to_string()),
        })?);
    }
    let (frame, sha256) = wire::encode_request(request).map_err(|e| Failure::Broken(e.to_string()))?;
    *payload = Some(sha256);
    let connection = link.connection(&peer, Instant::now() + CONNECT_WITHIN).await.map_err(Failure::PeerUnreachable)?;
    match round_trip(&connection, &frame).await {
        Ok(answer) => {
            peer.seen();
            answer
        }
        Err(e) => Err(Failure::Broken(format!(
            "the link to {} failed during the exchange ({e}); the service may or may not have been called",
            peer.name
        ))),
    }
}

async fn round_trip(connection: &quinn::Connection, frame: &[u8]) -> Result<Outcome, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match wire::read(&mut recv).await {
        Ok(Message::Response(response)) => Ok(Ok(response)),
        Ok(Message::Refused(refusal)) => Ok(Err(Failure::Refused(refusal))),
        Ok(_) => {
            let _ = recv.stop(Code::ProtocolViolation.varint());
            Err("the peer answered with an unexpected message".into())
        }
        Err(FrameError::Io(e)) => Err(match reset_code(&e) {
            Some(Code::VersionMismatch) => "the peer speaks another protocol version; upgrade the older node".into(),
            Some(code) => format!("the peer reset the stream: {code:?}"),
            None => e.to_string(),
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// The code a peer reset the stream with, if that is why reading failed.
fn reset_code(e: &std::io::Error) -> Option<Code> {
    match e.get_ref()?.downcast_ref::<quinn::ReadError>()? {
        quinn::ReadError::Reset(code) => Code::from_varint(*code),
        _ => None,
    }
}
