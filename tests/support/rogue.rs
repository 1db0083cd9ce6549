//! A pinned peer that speaks raw frames to a node, for the tests of what a hostile or broken peer
//! can do.

use std::sync::Arc;

use ferry::identity::Identity;
use ferry::wire::{self, Answer, Code};

use super::{Node, Recorder};

/// A pinned peer that speaks raw frames to a node.
pub struct Rogue {
    pub connection: quinn::Connection,
    pub identity: Identity,
    _endpoint: quinn::Endpoint,
}

/// A peer "rogue" pinned by org-b and allowed to call service 1 (a recorder), speaking raw frames.
pub async fn rogue_and_node() -> (Rogue, Node, Recorder, tempfile::TempDir) {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let identity = Identity::generate("rogue").unwrap();
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let dir = root.path().join("rogue");
    let at = super::NodeDir {
        name: "rogue".into(),
        config: dir.join("config/ferry.toml"),
        dir,
        link: nowhere,
        api: nowhere,
    };
    std::fs::create_dir_all(at.dir.join("certs")).unwrap();
    identity.save(&at.cert(), &at.dir.join("certs/node.key")).unwrap();
    let mut b = Node::create(root.path(), "org-b");
    b.setup().pin_at(&at, nowhere);
    b.add_service("1", &service.base_url(), &["rogue"]);
    b.start().await;

    let b_cert = ferry::identity::load_cert(&b.cert()).unwrap();
    let tls = ferry::tls::client_config(&identity, ferry::identity::Fingerprint::of(&b_cert)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(ferry::link::Transport::default().config());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint.connect_with(config, b.link, ferry::tls::SERVER_NAME).unwrap().await.unwrap();
    (Rogue { connection, identity, _endpoint: endpoint }, b, service, root)
}

impl Rogue {
    /// Sends `bytes` on a new stream and returns the answer, or the code the stream was reset with.
    pub async fn send(&self, bytes: &[u8]) -> Result<Answer, Option<Code>> {
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
