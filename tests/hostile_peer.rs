//! A pinned peer that breaks the protocol has its streams reset with the right code, and the
//! connection keeps serving its well-formed requests.

mod support;

use ferry::wire::{self, Answer, Code, Encoding, FormValue, Opening, Request};
use support::rogue_and_node;

fn request(version: u16) -> Opening {
    Opening::Request(Request {
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
    // File streams of versions 1 and 2 are spoken; 0 and 3 are not.
    for version in [0, wire::FILE_VERSION + 1] {
        let offer = wire::FileOffer { version, key: "0199-v".into(), name: "a.bin".into(), size: 1 };
        let offer = wire::encode(&wire::Opening::FileOffer(offer)).unwrap();
        assert_eq!(rogue.send(&offer).await, Err(Some(Code::VersionMismatch)), "file stream version {version}");
    }

    let not_an_opener = wire::encode(&Answer::Ack(wire::Ack { id: "x".into(), seq: 0 })).unwrap();
    assert_eq!(rogue.send(&not_an_opener).await, Err(Some(Code::Unsupported)));

    assert!(service.seen().is_empty(), "nothing malformed reached the service");

    let good = wire::encode(&request(wire::PROTOCOL_VERSION)).unwrap();
    match rogue.send(&good).await {
        Ok(Answer::Response(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a response, got {other:?}"),
    }
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-ferry-peer"], "rogue", "the peer is named by its certificate");
}

/// A node reads a well-formed message's stream to its end: it stops none of them, which would
/// cost a STOP_SENDING frame, and a datagram each way, for every message.
#[tokio::test]
async fn a_node_reads_each_message_to_its_end() {
    let (rogue, _b, _service, _root) = rogue_and_node().await;
    for _ in 0..3 {
        let good = wire::encode(&request(wire::PROTOCOL_VERSION)).unwrap();
        assert!(matches!(rogue.send(&good).await, Ok(Answer::Response(_))));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(rogue.connection.stats().frame_rx.stop_sending, 0);

    // Bytes after the message are not read as anything: the message is answered, and the rest of
    // the stream is stopped unread.
    let mut trailing = wire::encode(&request(wire::PROTOCOL_VERSION)).unwrap();
    trailing.extend([0xde, 0xad, 0xbe, 0xef]);
    assert!(matches!(rogue.send(&trailing).await, Ok(Answer::Response(_))));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(rogue.connection.stats().frame_rx.stop_sending, 1, "the unread rest is stopped");
}

#[tokio::test]
async fn a_hostile_path_cannot_reach_another_host() {
    let (rogue, _b, service, _root) = rogue_and_node().await;
    let Opening::Request(mut r) = request(wire::PROTOCOL_VERSION) else { unreachable!() };
    r.path = "@198.51.100.1/steal".into();
    match rogue.send(&wire::encode(&Opening::Request(r)).unwrap()).await {
        Ok(Answer::Refused(refusal)) => assert_eq!(refusal.kind, wire::RefusalKind::BadRequest),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(service.seen().is_empty());
}

#[tokio::test]
async fn a_receipt_signed_by_another_key_closes_the_connection() {
    let (rogue, _b, _service, _root) = rogue_and_node().await;
    let leaves = vec![wire::Leaf { id: "r1".into(), seq: 0, payload_sha256: [1; 32], file_sha256: None, at_ms: 7 }];

    let own = ferry::receipt::Signer::new(&rogue.identity).unwrap().sign(&leaves);
    let receipt = wire::encode(&Opening::Receipt(wire::Receipt { leaves: leaves.clone(), signature: own })).unwrap();
    assert!(matches!(rogue.send(&receipt).await, Ok(Answer::Ack(_))), "a receipt signed with the pinned key is taken");

    let stranger = ferry::identity::Identity::generate("stranger").unwrap();
    let forged = ferry::receipt::Signer::new(&stranger).unwrap().sign(&leaves);
    closes(&rogue, &wire::encode(&Opening::Receipt(wire::Receipt { leaves, signature: forged })).unwrap()).await;
}

/// The same for a countersignature and a checkpoint: signed with the pinned key they are taken
/// and kept; signed with another key, or over another head than they carry, the connection closes.
#[tokio::test]
async fn a_countersignature_or_checkpoint_signed_by_another_key_closes_the_connection() {
    let stranger = ferry::identity::Identity::generate("stranger").unwrap();
    let stranger = ferry::receipt::Signer::new(&stranger).unwrap();
    let leaves = vec![ferry::receipt::Binding { id: "r1", payload_sha256: [1; 32], ..Default::default() }.leaf(7)];
    let head = wire::Head { seq: 12, hash: [2; 32] };
    let countersign = |signature| {
        let leaves = leaves.clone();
        wire::encode(&Opening::Countersign(wire::Countersign { leaves, head, signature })).unwrap()
    };
    let checkpoint =
        |head, signature| wire::encode(&Opening::Checkpoint(wire::Checkpoint { head, at_ms: 9, signature })).unwrap();
    for forgery in 0..3 {
        let (rogue, b, _service, _root) = rogue_and_node().await;
        let own = ferry::receipt::Signer::new(&rogue.identity).unwrap();
        for genuine in [countersign(own.countersign(&leaves, &head)), checkpoint(head, own.checkpoint(&head, 9))] {
            assert!(
                matches!(rogue.send(&genuine).await, Ok(Answer::Ack(_))),
                "signed with the pinned key, it is taken"
            );
        }
        support::until("org-b to keep the countersignature and the checkpoint", async || {
            let kept = b.audit(&["export"]).1;
            match kept.contains("\"event\":\"checkpoint\"") && kept.contains("\"record_sha256\"") {
                true => Ok(()),
                false => Err(kept),
            }
        })
        .await;
        let forged = match forgery {
            0 => countersign(stranger.countersign(&leaves, &head)),
            1 => checkpoint(head, stranger.checkpoint(&head, 9)),
            _ => checkpoint(wire::Head { seq: 13, ..head }, own.checkpoint(&head, 9)),
        };
        closes(&rogue, &forged).await;
    }
}

/// Sends `frame` on a stream of its own and expects the node to close the connection as a
/// protocol violation.
async fn closes(rogue: &support::rogue::Rogue, frame: &[u8]) {
    let (mut send, mut recv) = rogue.connection.open_bi().await.unwrap();
    send.write_all(frame).await.unwrap();
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

/// A change that makes a well-formed request hostile.
type Change = fn(&mut Request);

fn header(name: &str, value: &str) -> Vec<(String, String)> {
    vec![(name.to_owned(), value.to_owned())]
}

/// A request as `request()` builds it, changed by `change`.
fn changed(id: String, change: impl FnOnce(&mut Request)) -> Request {
    let Opening::Request(mut r) = request(wire::PROTOCOL_VERSION) else { unreachable!() };
    r.id = id;
    change(&mut r);
    r
}

fn asynchronous(request: Request) -> Opening {
    let in_a_minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 60_000;
    Opening::AsyncRequest(wire::AsyncRequest { request, reply: true, expires_at_ms: in_a_minute as i64 })
}

/// The receiving node confines what a peer sends to its services whatever the peer checked:
/// paths that leave the base path, form fields and headers only the nodes set, control characters
/// in headers and the conversation are refused, sync or async, before anything is stored or
/// called; credentials the service's `pass_headers` does not list are dropped.
#[tokio::test]
async fn a_hostile_peer_cannot_bend_paths_forge_fields_or_pass_headers() {
    let (rogue, b, service, _root) = rogue_and_node().await;
    let hostile: Vec<(&str, Change)> = vec![
        ("path `", |r| r.path = "/../../admin".into()),
        ("path `", |r| r.path = "/%2e%2E/%2e%2e/admin".into()),
        ("path `", |r| r.path = "/ok/..%2f..%2fadmin".into()),
        ("path `", |r| r.path = "/a%5c..%5cadmin".into()),
        ("path `", |r| r.path = "/a%00b".into()),
        ("path `", |r| r.path = "/..".repeat(5_000)),
        ("path: its query's field `file`", |r| r.path = "/ok?file=%2Fetc%2Fpasswd&callbackId=forged".into()),
        ("path: its query's field `callbackId`", |r| r.path = "/ok?callback%49d=forged".into()),
        ("method: ", |r| r.method = "PROPFIND".into()),
        ("timeout_ms: ", |r| r.timeout_ms = u64::MAX),
        ("headers: `X-Original-URL`", |r| r.headers = header("X-Original-URL", "/admin")),
        ("form.callbackId", |r| r.form = vec![("callbackId".into(), FormValue::Text("forged".into()))]),
        ("form.file", |r| r.form = vec![("file".into(), FormValue::Text("/etc/passwd".into()))]),
        ("file_field: ", |r| {
            r.file = Some(wire::FileRef { field: "callbackId".into(), name: "f".into(), size: 1, sha256: [0; 32] })
        }),
        ("headers: `X-Ferry-Peer`", |r| r.headers = header("X-Ferry-Peer", "org-a")),
        ("headers: `Host`", |r| r.headers = header("Host", "admin.internal")),
        ("headers: `Content-Type`", |r| r.headers = header("Content-Type", "text/plain")),
        ("headers: the value of `X-Note`", |r| r.headers = header("X-Note", "a\r\nX-Ferry-Peer: org-a")),
        ("conversation", |r| r.conversation = Some("c\r\nX-Ferry-Peer: org-a".into())),
    ];
    for (i, (what, change)) in hostile.iter().enumerate() {
        let sync = Opening::Request(changed(format!("hostile-{i}"), change));
        let queued = asynchronous(changed(format!("hostile-async-{i}"), change));
        for message in [sync, queued] {
            match rogue.send(&wire::encode(&message).unwrap()).await {
                Ok(Answer::Refused(r)) => {
                    assert_eq!(r.kind, wire::RefusalKind::BadRequest, "{what}: {r:?}");
                    assert!(r.message.contains(what), "{what}: {}", r.message);
                    assert!(r.message.len() < 300, "a long value is cut: {}", r.message.len());
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
    }
    assert!(service.seen().is_empty(), "nothing hostile reached the service: {:?}", service.seen());
    let (_, listed) = b.get("/v1/requests?direction=incoming").await;
    assert_eq!(listed["data"]["items"], serde_json::json!([]), "nothing hostile was stored");

    // Credentials the service does not list in `pass_headers` are dropped, sync and async.
    let credentials = |r: &mut Request| {
        r.headers = vec![
            ("Authorization".into(), "Bearer stolen".into()),
            ("Cookie".into(), "session=stolen".into()),
            ("X-Forwarded-For".into(), "10.0.0.1".into()),
            ("X-Trace".into(), "t1".into()),
        ]
    };
    match rogue.send(&wire::encode(&Opening::Request(changed("creds".into(), credentials))).unwrap()).await {
        Ok(Answer::Response(r)) => assert_eq!(r.status, 200),
        other => panic!("expected a response, got {other:?}"),
    }
    let queued = asynchronous(changed("creds-async".into(), credentials));
    assert!(matches!(rogue.send(&wire::encode(&queued).unwrap()).await, Ok(Answer::Ack(_))));
    let seen = service.wait_for(2, std::time::Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for call in &seen {
        assert_eq!(call.path, "/ok");
        assert_eq!(call.headers["x-ferry-peer"], "rogue");
        assert_eq!(call.headers["x-trace"], "t1", "other headers pass");
        for name in ["authorization", "cookie", "x-forwarded-for"] {
            assert!(!call.headers.contains_key(name), "{name} was not listed in pass_headers: {:?}", call.headers);
        }
    }
    let query = seen[1].query.clone().unwrap_or_default();
    let header = seen[1].headers.get("x-ferry-callback-id").map(String::as_str);
    assert_eq!(query.strip_prefix("callbackId="), header, "one callbackId, the node's own: {:?}", seen[1]);
    assert!(header.is_some_and(|id| !id.is_empty()));
}
