//! `ferry::transfer` over a real pinned QUIC connection on loopback, one side played by this test
//! with raw frames:
//!
//! - file streams across protocol versions (API.md §4): a node sends version-2 streams (a CRC32C
//!   per chunk) only on a `ferry/2` connection, and version-1 streams (a SHA-256 per chunk) to a
//!   node of an earlier release, whose only ALPN ids are `ferry/1+anchored` and `ferry/1`;
//! - a sender that offers a file and then sends nothing: the receiver resets the stream with
//!   `Stalled` and gives back the space it reserved.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use ferry::identity::{Fingerprint, Identity};
use ferry::peer::{Peer, Peers};
use ferry::transfer::CHUNK;
use ferry::wire::{self, Answer, Code, FileDone, FileOffer, FilePart, FileResume, Opening, Protocol};

mod support;
use support::files::bytes;

/// A client with ferry's TLS configuration connected to a server that offers only `alpns`.
async fn connect(alpns: &[&[u8]]) -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let (server_id, client_id) = (Identity::generate("server").unwrap(), Identity::generate("client").unwrap());
    let peers = Peers::default();
    peers.insert(Peer::new("client", ["127.0.0.1:9"], [client_id.cert.clone()]));
    let mut server_tls = ferry::tls::server_config(&server_id, peers).unwrap();
    server_tls.alpn_protocols = alpns.iter().map(|id| id.to_vec()).collect();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client_tls = ferry::tls::client_config(&client_id, Fingerprint::of(&server_id.cert)).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
    )));
    let addr = server.local_addr().unwrap();
    let accepting = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let dialled = client.connect(addr, ferry::tls::SERVER_NAME).unwrap().await.unwrap();
    let accepted = accepting.await.unwrap();
    (client, server, dialled, accepted)
}

/// Receives one file stream as a node of any release would, checking each chunk by the check its
/// header carries; the offer's version and the kinds of chunk headers seen (1: SHA-256, 2: CRC32C).
async fn receive_raw(connection: quinn::Connection, expected: Vec<u8>) -> (u16, Vec<u16>) {
    let (mut tx, mut rx) = connection.accept_bi().await.unwrap();
    let Opening::FileOffer(offer) = wire::read(&mut rx).await.unwrap() else { panic!("not a file offer") };
    assert_eq!(offer.size, expected.len() as u64);
    wire::write(&mut tx, &Answer::FileResume(FileResume { have: 0 })).await.unwrap();
    let (mut got, mut kinds) = (Vec::new(), Vec::new());
    loop {
        // The chunk's offset and length, and its check: a SHA-256 (version 1) or a CRC32C (2).
        let (offset, len, check) = match wire::read(&mut rx).await.unwrap() {
            FilePart::FileChunk(c) => (c.offset, c.len, Err(c.sha256)),
            FilePart::FileChunkCrc(c) => (c.offset, c.len, Ok(c.crc32c)),
            FilePart::FileEnd(end) => {
                assert_eq!(got, expected, "the bytes sent are the file's");
                assert_eq!(end.sha256, <[u8; 32]>::from(Sha256::digest(&got)), "FileEnd names the whole file");
                wire::write(&mut tx, &Answer::FileDone(FileDone { sha256: end.sha256 })).await.unwrap();
                tx.finish().unwrap();
                let _ = tx.stopped().await;
                return (offer.version, kinds);
            }
        };
        assert_eq!(offset, got.len() as u64);
        let mut chunk = vec![0u8; len as usize];
        rx.read_exact(&mut chunk).await.unwrap();
        let (kind, holds) = match check {
            Err(sha256) => (1, <[u8; 32]>::from(Sha256::digest(&chunk)) == sha256),
            Ok(crc) => (2, crc32c::crc32c(&chunk) == crc),
        };
        assert!(holds, "chunk at {offset} holds its check");
        kinds.push(kind);
        got.extend_from_slice(&chunk);
    }
}

/// Sends a file of 2½ chunks from ferry to a server offering `alpns`; what the server saw.
async fn send_to(alpns: &[&[u8]]) -> (Protocol, u16, Vec<u16>) {
    let data = bytes(2 * CHUNK + CHUNK / 2, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    std::fs::write(&path, &data).unwrap();
    let (_client, _server, dialled, accepted) = connect(alpns).await;
    let protocol = Protocol::of(&dialled);
    let receiver = tokio::spawn(receive_raw(accepted, data.clone()));
    let file = std::fs::File::open(&path).unwrap();
    let (size, sha256) = ferry::transfer::send(&dialled, "0199-v/1", file, &path, "a.bin", |_| {}).await.unwrap();
    assert_eq!((size, sha256), (data.len() as u64, <[u8; 32]>::from(Sha256::digest(&data))));
    let (version, kinds) = receiver.await.unwrap();
    (protocol, version, kinds)
}

#[tokio::test]
async fn a_node_of_an_earlier_release_gets_version_1_streams_and_a_ferry_2_node_version_2() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (protocol, version, kinds) = send_to(&[wire::ALPN_ANCHORED, wire::ALPN]).await;
        assert_eq!((protocol, version, kinds), (Protocol::Anchored, 1, vec![1, 1, 1]));
        let (protocol, version, kinds) = send_to(&[wire::ALPN]).await;
        assert_eq!((protocol, version, kinds), (Protocol::First, 1, vec![1, 1, 1]));
        let (protocol, version, kinds) = send_to(&wire::ALPNS).await;
        assert_eq!((protocol, version, kinds), (Protocol::Second, wire::FILE_VERSION, vec![2, 2, 2]));
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test]
async fn a_sender_that_goes_quiet_mid_file_is_reset_stalled_and_its_reservation_given_back() {
    use std::os::unix::fs::MetadataExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let folders = ferry::transfer::Folders {
            stall: Duration::from_millis(300),
            ..ferry::transfer::Folders::new(dir.path(), u64::MAX)
        };
        let (_client, _server, dialled, accepted) = connect(&wire::ALPNS).await;
        let receiver = tokio::spawn(async move {
            let (mut tx, mut rx) = accepted.accept_bi().await.unwrap();
            let Opening::FileOffer(offer) = wire::read(&mut rx).await.unwrap() else { panic!("not a file offer") };
            match ferry::transfer::receive(&folders, "quiet", offer, &mut tx, &mut rx, |_, _| {}).await {
                Err(ferry::transfer::ReceiveError::Reset(code, why)) => (code, why),
                other => panic!("expected a reset, got {other:?}"),
            }
        });
        let size = 256 * CHUNK as u64;
        let (mut tx, mut rx) = dialled.open_bi().await.unwrap();
        let offer = FileOffer { version: wire::FILE_VERSION, key: "0199-quiet".into(), name: "q.bin".into(), size };
        wire::write(&mut tx, &Opening::FileOffer(offer)).await.unwrap();
        assert_eq!(wire::read::<_, Answer>(&mut rx).await.unwrap(), Answer::FileResume(FileResume { have: 0 }));
        let part = dir.path().join("partial/quiet/0199-quiet.part");
        let held = || std::fs::metadata(&part).map(|m| m.blocks() * 512).unwrap_or(0);
        assert!(held() >= size, "the offer reserved {} bytes of {size}", held());
        // Nothing more is sent.
        let (code, why) = receiver.await.unwrap();
        assert_eq!(code, Code::Stalled, "{why}");
        assert!(held() < CHUNK as u64, "the reservation was given back: {} bytes held", held());
    })
    .await
    .expect("the test ends in time");
}
