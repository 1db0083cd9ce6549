//! A peer at several addresses (its members): dialed in turn, the one that answers used, and
//! another one taken over when it stops answering.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{Node, Recorder};

fn req(path: &str) -> Value {
    json!({"peer": "org-b", "service": "1", "path": path, "method": "GET", "form": {}})
}

/// org-b's member `dir`: a node named org-b whose service "1" is `service`, allowed to org-a.
fn member(root: &std::path::Path, dir: &str, a: &Node, service: &Recorder) -> Node {
    let m = Node::create(&root.join(dir), "org-b");
    m.add_peer(a);
    m.add_service("1", &service.base_url(), &["org-a"]);
    m
}

/// Pins org-b on org-a at `addresses` with `cert`.
fn pin_members(a: &Node, addresses: &[String], cert: &std::path::Path) {
    ferry::cli::peer::add(&a.config_path, "org-b", addresses, cert).unwrap();
}

/// What org-a's `GET /v1/peers` says of org-b.
async fn org_b_on(a: &Node) -> Value {
    let (_, env) = a.get("/v1/peers").await;
    env["data"].as_array().unwrap().iter().find(|p| p["name"] == "org-b").cloned().unwrap()
}

/// An address that takes UDP datagrams and never answers: a member whose host is down.
fn silent_address() -> (std::net::UdpSocket, String) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap().to_string();
    (socket, address)
}

/// The first address does not answer: the dial goes on to the next after half a second, the
/// request is served, and the answering address is the one in use.
#[tokio::test]
async fn a_peer_is_reached_at_its_next_address_when_the_first_is_silent() {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = member(root.path(), "b1", &a, &service);
    let (_silent, silent) = silent_address();
    pin_members(&a, &[silent.clone(), b.link.to_string()], &b.cert());
    a.start().await;
    b.start().await;

    let started = std::time::Instant::now();
    let (status, env) = a.request(req("/first")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert!(started.elapsed() < Duration::from_secs(4), "the next address waited {:?}", started.elapsed());
    let peer = org_b_on(&a).await;
    assert_eq!(peer["address"], b.link.to_string(), "{peer}");
    assert_eq!(peer["addresses"], json!([silent, b.link.to_string()]), "{peer}");
    assert_eq!(service.seen().len(), 1);
    a.stop().await;
    b.stop().await;
}

/// org-b runs two members (one certificate, a data directory each): when the one in use stops,
/// org-a's requests, sync and async, go to the other; when it comes back, the link stays where it
/// is; every request is served once.
#[tokio::test]
async fn requests_fail_over_to_another_member_and_stay_there() {
    let (service_1, service_2) = (Recorder::start().await, Recorder::start().await);
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut m1 = member(root.path(), "b1", &a, &service_1);
    let mut m2 = member(root.path(), "b2", &a, &service_2);
    for file in ["certs/node.pem", "certs/node.key"] {
        std::fs::copy(m1.dir.join(file), m2.dir.join(file)).unwrap();
    }
    pin_members(&a, &[m1.link.to_string(), m2.link.to_string()], &m1.cert());
    a.start().await;
    m1.start().await;
    m2.start().await;

    let (status, env) = a.request(req("/to-member-1")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(org_b_on(&a).await["address"], m1.link.to_string());

    m1.stop().await;
    let (status, env) = a.request(req("/to-member-2")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    let mut body = req("/async-to-member-2");
    body["mode"] = "async".into();
    let (status, env) = a.request(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let done = a.wait_state(&id, "success", Duration::from_secs(20)).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(org_b_on(&a).await["address"], m2.link.to_string());

    m1.start().await;
    let (status, env) = a.request(req("/still-member-2")).await;
    assert_eq!(status, StatusCode::OK, "{env}");

    let paths = |r: &Recorder| r.seen().into_iter().map(|s| s.path).collect::<Vec<_>>();
    assert_eq!(paths(&service_1), ["/to-member-1"]);
    assert_eq!(paths(&service_2), ["/to-member-2", "/async-to-member-2", "/still-member-2"]);
    for node in [&mut a, &mut m1, &mut m2] {
        node.stop().await;
    }
}
