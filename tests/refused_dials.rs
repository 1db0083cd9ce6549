//! Dials that the other node refuses (issue 19): the dialer backs off as from any unreachable
//! peer, and the refusing node says who knocked, with the address and the certificate, once a
//! minute rather than at every attempt.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::Node;

/// How long the dials are counted.
const WINDOW: Duration = Duration::from_secs(5);

/// The log lines of this test's nodes (the test runs on one thread, and so do its nodes).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures every `ferry` line at debug level on this thread until the guard is dropped.
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("ferry=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured.clone(), tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    /// Waits (at most 10 s) until a line holds `needle`.
    async fn wait_for(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.lines(needle).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {needle:?} in:\n{}",
                self.lines("").join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The handshakes a node's link saw fail (one debug line each, on the side that was dialed).
const FAILED_HANDSHAKE: &str = "ferry::link::inbound: handshake failed";

/// Counts the failed handshakes during [`WINDOW`], once the dialing is under way.
async fn failed_handshakes_in_window(logs: &Captured) -> usize {
    logs.wait_for(FAILED_HANDSHAKE).await;
    let before = logs.lines(FAILED_HANDSHAKE).len();
    // A measurement over a fixed time, not a wait for something to happen.
    tokio::time::sleep(WINDOW).await;
    logs.lines(FAILED_HANDSHAKE).len() - before
}

/// org-a pins org-b and holds a request for it; org-b has not pinned org-a.
#[tokio::test]
async fn a_node_that_is_not_pinned_backs_off_and_is_named_once() {
    let (logs, _guard) = Captured::start();
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    a.add_peer(&b);
    b.start().await;
    a.start().await;
    let (status, env) =
        a.request(json!({"peer": "org-b", "service": "1", "path": "/", "method": "POST", "mode": "async"})).await;
    assert_eq!(status, 202, "{env}");

    let attempts = failed_handshakes_in_window(&logs).await;
    // Backing off (1 s, 2 s, 4 s, then every 5 s) makes 3 or 4 attempts in 5 s; redialing at
    // once made hundreds.
    assert!(attempts <= 8, "{attempts} dials refused in {WINDOW:?}");

    let fingerprint = ferry::identity::Fingerprint::of(&ferry::identity::load_cert(&a.cert()).unwrap()).to_string();
    let named = logs.lines("not pinned here");
    assert_eq!(named.len(), 1, "{named:#?}");
    assert!(named[0].contains(&a.link.to_string()) && named[0].contains(&fingerprint), "{}", named[0]);
    a.stop().await;
    b.stop().await;
}

/// org-a pins, for org-b's address, a certificate that org-b does not have.
#[tokio::test]
async fn a_peer_with_another_certificate_than_the_pinned_one_is_backed_off_from_and_named_once() {
    let (logs, _guard) = Captured::start();
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    let other = ferry::identity::Identity::generate("org-b").unwrap();
    let (other_cert, other_key) = (root.path().join("other.pem"), root.path().join("other.key"));
    other.save(&other_cert, &other_key).unwrap();
    ferry::cli::peer::add(&a.config_path, "org-b", &[b.link.to_string()], &[other_cert]).unwrap();
    b.add_peer(&a);
    b.start().await;
    a.start().await;
    let (status, env) =
        a.request(json!({"peer": "org-b", "service": "1", "path": "/", "method": "POST", "mode": "async"})).await;
    assert_eq!(status, 202, "{env}");

    let attempts = failed_handshakes_in_window(&logs).await;
    assert!(attempts <= 8, "{attempts} dials refused in {WINDOW:?}");

    let fingerprint = ferry::identity::Fingerprint::of(&ferry::identity::load_cert(&b.cert()).unwrap()).to_string();
    let named = logs.lines("not the one pinned");
    assert_eq!(named.len(), 1, "{named:#?}");
    assert!(named[0].contains(&b.link.to_string()) && named[0].contains(&fingerprint), "{}", named[0]);
    a.stop().await;
    b.stop().await;
}
