//! The API's connections (issue 19): a cap on how many are open, with a 503 past it; a deadline
//! for each request head; and a node that goes on exchanging with its peers while its API is full.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(10);

/// Sets `api.max_connections` and `api.header_timeout` in the node's config.
fn limit_api(node: &Node, max_connections: i64, header_timeout: &str) {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&node.config_path).unwrap().parse().unwrap();
    doc["api"]["max_connections"] = toml_edit::value(max_connections);
    doc["api"]["header_timeout"] = toml_edit::value(header_timeout);
    std::fs::write(&node.config_path, doc.to_string()).unwrap();
}

/// A connection that sent half a request head, and then nothing.
async fn half_sent(api: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(api).await.unwrap();
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    stream
}

/// `GET /v1/health` on a new connection: the status and the envelope.
async fn health(api: SocketAddr) -> (u16, Value) {
    let mut stream = TcpStream::connect(api).await.unwrap();
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut answer)).await.expect("an answer in time").unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Opens half-sent connections until a whole request is refused, and returns them and the
/// refusal. (A connection of the node's start may still hold a place for a moment: the loop
/// does not assume how many places are free.)
async fn fill(api: SocketAddr, cap: usize) -> (Vec<TcpStream>, Value) {
    let mut held = Vec::new();
    loop {
        held.push(half_sent(api).await);
        if held.len() >= cap {
            let (status, body) = health(api).await;
            if status == 503 {
                return (held, body);
            }
        }
        assert!(held.len() < cap + 5, "{} half-sent connections and the API still serves new ones", held.len());
    }
}

/// Waits until `stream` is closed by the other side; how long that took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WITHIN, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {WITHIN:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {} // an answer before closing is fine
        }
    }
}

#[tokio::test]
async fn past_the_cap_a_connection_gets_503_and_the_node_goes_on_with_its_peers() {
    let mut p = support::unstarted_pair().await;
    // The half-sent connections outlive the test: only the cap lets go of them.
    limit_api(&p.b, 4, "60s");
    p.start().await;
    let support::Pair { root: _root, mut a, mut b, service } = p;

    let (held, refusal) = fill(b.api, 4).await;
    assert_eq!(refusal["code"], 503, "{refusal}");
    assert_eq!(refusal["data"]["error"], "unavailable", "{refusal}");
    assert!(refusal["msg"].as_str().unwrap().contains("api.max_connections"), "{refusal}");

    // org-b's API is full; its link, store and service calls are not.
    let (status, env) = a
        .request(json!({"peer": "org-b", "service": "1", "path": "/while-full", "method": "POST", "mode": "async"}))
        .await;
    assert_eq!(status, 202, "{env}");
    let id = env["data"]["id"].as_str().unwrap();
    assert_eq!(a.wait_state(id, "success", WITHIN).await["state"], "success");
    assert_eq!(service.wait_for(1, WITHIN).await[0].path, "/while-full");
    assert_eq!(health(b.api).await.0, 503, "the half-sent connections still hold every place");

    // Their places come back when they close.
    drop(held);
    let deadline = Instant::now() + WITHIN;
    while health(b.api).await.0 != 200 {
        assert!(Instant::now() < deadline, "the API did not serve again after the connections closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_connection_that_does_not_finish_its_request_head_in_time_is_closed() {
    let root = tempfile::tempdir().unwrap();
    let mut node = Node::create(root.path(), "org-a");
    limit_api(&node, 4, "2s");
    node.start().await;

    let (mut held, _) = fill(node.api, 4).await;
    // One more that sends nothing at all, past the cap: it is closed too.
    held.push(TcpStream::connect(node.api).await.unwrap());
    for stream in &mut held {
        closed(stream).await;
    }
    let deadline = Instant::now() + WITHIN;
    loop {
        let (status, body) = health(node.api).await;
        if status == 200 {
            assert_eq!(body["data"]["name"], "org-a");
            break;
        }
        assert!(Instant::now() < deadline, "the API did not serve again: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}
