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

/// Pins org-b on org-a at `addresses` with `certs`, one per member.
fn pin_members(a: &Node, addresses: &[String], certs: &[std::path::PathBuf]) {
    ferry::cli::peer::add(&a.config_path, "org-b", addresses, certs).unwrap();
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
    pin_members(&a, &[silent.clone(), b.link.to_string()], &[b.cert()]);
    a.start().await;
    b.start().await;

    // Served at all: a dial that waited for the silent address would have given up first.
    let (status, env) = a.request(req("/first")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    let peer = org_b_on(&a).await;
    assert_eq!(peer["address"], b.link.to_string(), "{peer}");
    assert_eq!(peer["addresses"], json!([silent, b.link.to_string()]), "{peer}");
    let dials = peer["dials"].as_array().unwrap();
    assert_eq!((&dials[0]["address"], &dials[0]["answered"]), (&json!(silent), &json!(false)), "{peer}");
    assert!(dials[0]["error"].as_str().unwrap().contains("no answer"), "{peer}");
    assert_eq!(dials[1]["answered"], true, "{peer}");
    assert_eq!(service.seen().len(), 1);
    a.stop().await;
    b.stop().await;
}

/// org-a, and org-b as two members with a key and a service each, pinned on org-a at both
/// addresses with both certificates; org-a offers service "9" to org-b. All started.
struct Members {
    root: tempfile::TempDir,
    a: Node,
    m1: Node,
    m2: Node,
    service_1: Recorder,
    service_2: Recorder,
    a_service: Recorder,
}

impl Members {
    async fn start() -> Members {
        let (service_1, service_2, a_service) =
            (Recorder::start().await, Recorder::start().await, Recorder::start().await);
        let root = tempfile::tempdir().unwrap();
        let mut a = Node::create(root.path(), "org-a");
        let mut m1 = member(root.path(), "b1", &a, &service_1);
        let mut m2 = member(root.path(), "b2", &a, &service_2);
        pin_members(&a, &[m1.link.to_string(), m2.link.to_string()], &[m1.cert(), m2.cert()]);
        a.add_service("9", &a_service.base_url(), &["org-b"]);
        for node in [&mut a, &mut m1, &mut m2] {
            node.start().await;
        }
        Members { root, a, m1, m2, service_1, service_2, a_service }
    }
}

/// org-b runs two members, each with its own key and data directory, both pinned by org-a:
/// when the one in use stops, org-a's requests, sync and async, go to the other; when it comes
/// back, the link stays where it is; every request is served once. Either member's requests
/// reach org-a as org-b's.
#[tokio::test]
async fn requests_fail_over_to_another_member_and_stay_there() {
    let Members { root: _root, mut a, mut m1, mut m2, service_1, service_2, a_service } = Members::start().await;

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

    // Inbound, either member is org-b.
    for (m, path) in [(&m1, "/from-member-1"), (&m2, "/from-member-2")] {
        let body = json!({"peer": "org-a", "service": "9", "path": path, "method": "GET", "form": {}});
        let (status, env) = m.request(body).await;
        assert_eq!(status, StatusCode::OK, "{env}");
    }
    let callers: Vec<_> = a_service.seen().into_iter().map(|s| (s.path, s.headers["x-ferry-peer"].clone())).collect();
    assert_eq!(callers, [("/from-member-1".into(), "org-b".into()), ("/from-member-2".into(), "org-b".into())]);

    let paths = |r: &Recorder| r.seen().into_iter().map(|s| s.path).collect::<Vec<_>>();
    assert_eq!(paths(&service_1), ["/to-member-1"]);
    assert_eq!(paths(&service_2), ["/to-member-2", "/async-to-member-2", "/still-member-2"]);
    for node in [&mut a, &mut m1, &mut m2] {
        node.stop().await;
    }
    // org-a's evidence holds receipts signed by both members' keys, each checked with its own.
    let (code, out, err) = a.audit(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // Each side's export cross-checks against the other's log, member by member: a member passes
    // over org-a's records of the other member.
    let export = |node: &Node| {
        let (code, out, err) = node.audit(&["export"]);
        assert_eq!(code, 0, "{err}");
        let file = node.dir.join("export.jsonl");
        std::fs::write(&file, out).unwrap();
        file.to_str().unwrap().to_owned()
    };
    let a_export = export(&a);
    for m in [&m1, &m2] {
        let (code, out, err) = m.audit(&["verify", "--peer-export", &a_export, "--peer", "org-a"]);
        assert_eq!(code, 0, "{} against org-a's export: {out}{err}", m.dir.display());
        assert!(out.contains("cross-checked with org-a's export"), "{out}");
        let (code, out, err) = a.audit(&["verify", "--peer-export", &export(m), "--peer", "org-b"]);
        assert_eq!(code, 0, "org-a against {}: {out}{err}", m.dir.display());
    }
    let records = std::fs::read_to_string(&a_export).unwrap();
    let m2_fp = support::cli::fingerprint_of_pem(&m2.cert());
    assert!(records.contains(&format!("\"member\":\"{m2_fp}\"")), "org-a's records name the member");

    // Some of them member 2 signed: with member 1's certificate alone, they do not verify.
    let config = std::fs::read_to_string(&a.config_path).unwrap();
    let both = r#"cert = ["peers/org-b.pem", "peers/org-b+2.pem"]"#;
    assert!(config.contains(both), "{config}");
    std::fs::write(&a.config_path, config.replace(both, r#"cert = "peers/org-b.pem""#)).unwrap();
    let (code, out, err) = a.audit(&["verify"]);
    assert_eq!(code, 1, "{out}{err}");
}

/// One member of org-b rotates its key (`ferry cert rotate`): org-a pins that member's new
/// certificate beside its old one and keeps the other member's as it was; the rotated member
/// then serves org-a with its new certificate.
#[tokio::test]
async fn one_member_rotates_alone() {
    let Members { root: _root, mut a, mut m1, mut m2, service_1: _service_1, service_2, a_service: _a_service } =
        Members::start().await;
    let fingerprint = |node: &Node| support::cli::fingerprint_of_pem(&node.cert());
    let (m1_fp, m2_old) = (fingerprint(&m1), fingerprint(&m2));

    // The command has the running node reload through its API: it runs beside this runtime.
    let config = m2.config_path.to_str().unwrap().to_owned();
    let rotated = tokio::task::spawn_blocking(move || {
        support::cli::ferry(["cert", "rotate", "--grace", "1h", "--config", &config])
    })
    .await
    .unwrap();
    support::cli::assert_code(&rotated, 0);
    let m2_new = fingerprint(&m2);
    // Member 2 talks to org-a, which gets the statement on that connection.
    let body = json!({"peer": "org-a", "service": "9", "path": "/from-member-2", "method": "GET", "form": {}});
    let (status, env) = m2.request(body).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let peer = loop {
        let peer = org_b_on(&a).await;
        if peer["fingerprints"].as_array().unwrap().iter().any(|f| f == m2_new.as_str())
            || tokio::time::Instant::now() > deadline
        {
            break peer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(peer["fingerprints"], json!([m2_new, m1_fp]), "{peer}");
    assert_eq!(peer["replaced"][0]["fingerprint"], m2_old.as_str(), "{peer}");

    // With member 1 gone, org-a reaches member 2, which presents its new certificate.
    m1.stop().await;
    let (status, env) = a.request(req("/to-member-2")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(service_2.seen().len(), 1);
    for node in [&mut a, &mut m2] {
        node.stop().await;
    }
}

/// A member's asynchronous request to org-a gets its result back although org-a's connection to
/// org-b is with the other member: results go to the member that sent the request, which alone
/// knows it, over a connection to that member.
#[tokio::test]
async fn results_go_back_to_the_member_that_asked() {
    let Members { root: _root, mut a, mut m1, mut m2, service_1: _s1, service_2: _s2, a_service } =
        Members::start().await;
    let (status, env) = a.request(req("/to-member-1")).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(org_b_on(&a).await["address"], m1.link.to_string(), "org-a's connection is with member 1");

    for (m, path) in [(&m2, "/async-from-member-2"), (&m1, "/async-from-member-1")] {
        let body = json!({"peer": "org-a", "service": "9", "path": path, "method": "GET", "form": {}, "mode": "async"});
        let (status, env) = m.request(body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        let id = env["data"]["id"].as_str().unwrap().to_owned();
        let done = m.wait_state(&id, "success", Duration::from_secs(20)).await;
        assert_eq!(done["state"], "success", "{path}: {done}");
        assert_eq!(done["response"]["body"]["path"], path, "{done}");
    }
    assert_eq!(a_service.seen().len(), 2);
    for node in [&mut a, &mut m1, &mut m2] {
        node.stop().await;
    }
}
