//! A pinned peer that breaks the protocol has its streams reset with the right code, and the
//! connection keeps serving its well-formed requests.

mod common;

use common::{rogue_and_node, Rogue};
use ferry::wire::{self, Code, Encoding, Message, Request};

impl Rogue {
    /// Sends `bytes` on a new stream and returns the answer, or the code the stream was reset with.
    async fn send(&self, bytes: &[u8]) -> Result<Message, Option<Code>> {
        let (mut send, mut recv) = self.connection.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let _ = send.finish();
        match recv.read_to_end(wire::MAX_FRAME + 4).await {
            Ok(bytes) => Ok(wire::decode(&bytes[4..]).unwrap()),
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Err(Code::from_varint(code)),
            Err(e) => panic!("unexpected stream error: {e}"),
        }
    }
}

fn request(version: u16) -> Message {
    Message::Request(Request {
        version,
        id: "01a2-rogue".into(),
        service: "1".into(),
        method: "GET".into(),
        path: "/ok".into(),
        form: vec![],
        encoding: Encoding::Form,
        headers: vec![],
        conversation: None,
        timeout_ms: 5_000,
        file: None,
        idempotency_key: None,
    })
}

#[tokio::test]
async fn protocol_violations_reset_the_stream_and_spare_the_connection() {
    let (rogue, _b, service, _root) = rogue_and_node().await;

    let oversized = ((wire::MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(rogue.send(&oversized).await, Err(Some(Code::FrameTooLarge)));

    let mut garbage = 4u32.to_be_bytes().to_vec();
    garbage.extend([0xfe, 0xff, 0xff, 0xff]);
    assert_eq!(rogue.send(&garbage).await, Err(Some(Code::ProtocolViolation)));

    let wrong_version = wire::encode(&request(wire::PROTOCOL_VERSION + 1)).unwrap();
    assert_eq!(rogue.send(&wrong_version).await, Err(Some(Code::VersionMismatch)));

    let not_an_opener = wire::encode(&Message::Ack(wire::Ack { id: "x".into(), seq: 0 })).unwrap();
    assert_eq!(rogue.send(&not_an_opener).await, Err(Some(Code::Unsupported)));

    assert!(service.seen().is_empty(), "nothing malformed reached the service");

    let good = wire::encode(&request(wire::PROTOCOL_VERSION)).unwrap();
    match rogue.send(&good).await {
        Ok(Message::Response(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a response, got {other:?}"),
    }
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-ferry-peer"], "rogue", "the peer is named by its certificate");
}

#[tokio::test]
async fn a_hostile_path_cannot_reach_another_host() {
    let (rogue, _b, service, _root) = rogue_and_node().await;
    let Message::Request(mut r) = request(wire::PROTOCOL_VERSION) else { unreachable!() };
    r.path = "@198.51.100.1/steal".into();
    match rogue.send(&wire::encode(&Message::Request(r)).unwrap()).await {
        Ok(Message::Refused(refusal)) => assert_eq!(refusal.kind, wire::RefusalKind::BadRequest),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(service.seen().is_empty());
}

#[tokio::test]
async fn a_receipt_signed_by_another_key_closes_the_connection() {
    let (rogue, _b, _service, _root) = rogue_and_node().await;
    let leaves = vec![wire::Leaf { id: "r1".into(), seq: 0, payload_sha256: [1; 32], file_sha256: None, at_ms: 7 }];

    let own = ferry::receipt::Signer::new(&rogue.identity).unwrap().sign(&leaves);
    let receipt = wire::encode(&Message::Receipt(wire::Receipt { leaves: leaves.clone(), signature: own })).unwrap();
    assert!(matches!(rogue.send(&receipt).await, Ok(Message::Ack(_))), "a receipt signed with the pinned key is taken");

    let stranger = ferry::identity::Identity::generate("stranger").unwrap();
    let forged = ferry::receipt::Signer::new(&stranger).unwrap().sign(&leaves);
    let receipt = wire::encode(&Message::Receipt(wire::Receipt { leaves, signature: forged })).unwrap();
    let (mut send, mut recv) = rogue.connection.open_bi().await.unwrap();
    send.write_all(&receipt).await.unwrap();
    let _ = send.finish();
    let _ = recv.read_to_end(1024).await;
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), rogue.connection.closed()).await.unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(Code::from_varint(close.error_code), Some(Code::ProtocolViolation))
        }
        other => panic!("expected the node to close the connection, got {other}"),
    }
}
