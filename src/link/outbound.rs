//! Sending one request to a peer and bringing back its answer; and [`ask`], the one stream
//! every message this node opens goes on.

use tokio::time::Instant;

use super::{Link, LinkFailure, CONNECT_WITHIN};
use futures::future::BoxFuture;

use crate::exchange::{Carrier, Failure, Outcome, Sent};
use crate::store::OutgoingFile;
use crate::wire::{self, Answer, Code, FrameError};

impl Carrier for Link {
    fn exchange(
        &self,
        peer: String,
        request: wire::Request,
        file: Option<OutgoingFile>,
    ) -> BoxFuture<'static, (Sent, Outcome)> {
        let link = self.clone();
        Box::pin(async move {
            let mut sent = Sent::unsent(request);
            let outcome = exchange(&link, &peer, &mut sent, file).await;
            (sent, outcome)
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
/// `sent` gets the request's file reference, its [`wire::payload_sha256`] once it is encoded to be
/// sent, and the member it goes to.
async fn exchange(link: &Link, peer_name: &str, sent: &mut Sent, file: Option<OutgoingFile>) -> Outcome {
    let request = &mut sent.request;
    let peer = link.inner.peers.get(peer_name).ok_or_else(|| {
        Failure::PeerUnreachable(format!("`{peer_name}` is not a configured peer (add it with `ferry peer add`)"))
    })?;
    let unreachable = |e: LinkFailure| Failure::PeerUnreachable(e.to_string());
    if let Some(file) = &file {
        let connection = link.connection(&peer, Instant::now() + CONNECT_WITHIN).await.map_err(unreachable)?;
        let sent = link.upload(&connection, peer_name, &request.id, file, false).await;
        request.file = Some(sent.map_err(|e| match e {
            LinkFailure::Refused(refusal) => Failure::Refused(refusal),
            // This node cannot read the host's file: the request cannot go as it is.
            LinkFailure::Local(why) => Failure::Refused(wire::Refusal::new(wire::RefusalKind::BadRequest, why)),
            other => Failure::Broken(other.to_string()),
        })?);
    }
    let (frame, sha256) = wire::encode_request(request).map_err(|e| Failure::Broken(e.to_string()))?;
    sent.payload = Some(sha256);
    let connection = link.connection(&peer, Instant::now() + CONNECT_WITHIN).await.map_err(unreachable)?;
    sent.member = peer.member_of(&connection);
    let answer = ask(&connection, &frame, |answer| match answer {
        Answer::Response(response) => Some(response),
        _ => None,
    })
    .await;
    match answer {
        Ok(response) => {
            peer.seen();
            Ok(response)
        }
        Err(LinkFailure::Refused(refusal)) => {
            peer.seen();
            Err(Failure::Refused(refusal))
        }
        Err(e) => Err(Failure::Broken(format!(
            "the link to {} failed during the exchange ({e}); the service may or may not have been called",
            peer.name
        ))),
    }
}

/// Opens a stream on `connection`, sends `frame` (a message that opens a stream) and reads the
/// peer's answer, which `expected` takes (`Some`) or not. A refusal is [`LinkFailure::Refused`];
/// an answer `expected` does not take, or a message that is no answer, is
/// [`LinkFailure::Noncompliant`], and the stream is stopped with [`Code::ProtocolViolation`].
pub(super) async fn ask<T>(
    connection: &quinn::Connection,
    frame: &[u8],
    expected: impl FnOnce(Answer) -> Option<T>,
) -> Result<T, LinkFailure> {
    let _open = super::runtime::OpenStream::new();
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(frame).await?;
    let _ = send.finish();
    let unexpected = match wire::read(&mut recv).await {
        Ok(Answer::Refused(refusal)) => {
            super::read_end(&mut recv);
            return Err(LinkFailure::Refused(refusal));
        }
        Ok(answer) => match expected(answer) {
            Some(answer) => {
                super::read_end(&mut recv);
                return Ok(answer);
            }
            None => LinkFailure::Noncompliant("the peer answered with an unexpected message".into()),
        },
        Err(e @ FrameError::Misplaced { .. }) => e.into(),
        Err(e) => return Err(e.into()),
    };
    let _ = recv.stop(Code::ProtocolViolation.varint());
    Err(unexpected)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::identity::{Fingerprint, Identity};
    use crate::peer::{Peer, Peers};

    /// A message and its answer each go on a stream read to its end on both sides, so neither
    /// side stops the other's half with a STOP_SENDING frame (a datagram of its own each way).
    #[tokio::test]
    async fn an_asked_stream_is_read_to_its_end_on_both_sides() {
        let (server_id, client_id) = (Identity::generate("server").unwrap(), Identity::generate("client").unwrap());
        let peers = Peers::default();
        peers.insert(Peer::new("client", ["127.0.0.1:9"], [client_id.cert.clone()]));
        let tls = crate::tls::server_config(&server_id, peers).unwrap();
        let tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server =
            quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(tls)), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        let tls = crate::tls::client_config(&client_id, Fingerprint::of(&server_id.cert)).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        )));
        let to = server.local_addr().unwrap();
        let dialing = client.connect(to, crate::tls::SERVER_NAME).unwrap();
        let accepting = async { server.accept().await.unwrap().await.unwrap() };
        let (connection, accepted) = tokio::join!(async { dialing.await.unwrap() }, accepting);
        let answering = tokio::spawn(async move {
            let (mut send, mut recv) = accepted.accept_bi().await.unwrap();
            let asked: Answer = wire::read(&mut recv).await.unwrap();
            super::super::read_end(&mut recv);
            wire::write(&mut send, &asked).await.unwrap();
            send.finish().unwrap();
            accepted
        });

        let ack = wire::Ack { id: "r1".into(), seq: 0 };
        let frame = wire::encode(&Answer::Ack(ack.clone())).unwrap();
        let answer = ask(&connection, &frame, |answer| match answer {
            Answer::Ack(ack) => Some(ack),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!((answer.id, answer.seq), (ack.id, ack.seq));
        let accepted = answering.await.unwrap();
        // Long enough for a STOP_SENDING queued by either side to go out and arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (asker, answerer) = (connection.stats(), accepted.stats());
        assert_eq!(asker.frame_tx.stop_sending, 0, "the asker stopped the answer's half");
        assert_eq!(answerer.frame_tx.stop_sending, 0, "the answerer stopped the message's half");
        assert_eq!(answerer.frame_rx.stream, 1, "the message and its end came as one frame");
    }
}
