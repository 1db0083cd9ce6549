//! The boundary between a peer and this node's services, end to end: a path stays below the
//! service's base path, the form cannot forge the fields the node adds, headers the nodes set
//! cannot be given, and credentials reach a service only where its `pass_headers` lists them.
//! Each case refused at the sender is answered 400 naming the field, and the service is never
//! reached.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use support::{Node, Recorder};

const WITHIN: Duration = Duration::from_secs(10);

/// org-a and org-b; org-b offers the recorder below `/api/v1` as service "1", and as service "2"
/// with `pass_headers = ["Authorization"]`.
struct Boundary {
    _root: tempfile::TempDir,
    a: Node,
    b: Node,
    service: Recorder,
}

async fn boundary() -> Boundary {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    a.add_peer(&b);
    b.add_peer(&a);
    let base = format!("{}/api/v1", service.base_url());
    b.add_service("1", &base, &["org-a"]);
    b.add_service("2", &base, &["org-a"]);
    let mut config: toml_edit::DocumentMut = std::fs::read_to_string(&b.config_path).unwrap().parse().unwrap();
    let services = config["service"].as_array_of_tables_mut().unwrap();
    services.get_mut(1).unwrap()["pass_headers"] = toml_edit::value(toml_edit::Array::from_iter(["Authorization"]));
    std::fs::write(&b.config_path, config.to_string()).unwrap();
    a.start().await;
    b.start().await;
    Boundary { _root: root, a, b, service }
}

fn request(extra: Value) -> Value {
    let mut body = json!({"peer": "org-b", "service": "1", "path": "/x", "method": "GET"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Asserts a 400 `bad_request` naming `field`.
async fn refused(node: &Node, body: Value, field: &str) {
    let (status, env) = node.request(body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {env}");
    assert_eq!(env["data"]["error"], "bad_request", "{env}");
    assert_eq!(env["data"]["field"], field, "{body} → {env}");
}

fn form_of(body: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(body).unwrap()
}

#[tokio::test]
async fn a_path_cannot_leave_the_services_base_path() {
    let p = boundary().await;
    for path in [
        "/../../admin",
        "/%2e%2e/%2e%2e/admin",
        "/%2e%2E/admin",
        "/./x",
        "/a/..%2f..%2fadmin",
        "/a\\..\\admin",
        "/a%5c..%5cadmin",
        "/a\0b",
        "/a%00b",
    ] {
        refused(&p.a, request(json!({"path": path})), "path").await;
    }
    let (status, env) = p.a.request(request(json!({"path": "/x/y.z?q=../a"}))).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    let seen = p.service.seen();
    assert_eq!(seen.len(), 1, "only the good request reached the service: {seen:?}");
    assert_eq!(seen[0].path, "/api/v1/x/y.z");
}

#[tokio::test]
async fn the_form_cannot_forge_the_fields_the_node_adds() {
    let p = boundary().await;
    let file = p.a.dir.join("outbox/report.txt");
    std::fs::write(&file, "rows").unwrap();
    let file = file.display().to_string();
    let async_reply = json!({"method": "POST", "mode": "async", "reply": true});
    for (body, field) in [
        (request(json!({"form": {"file": "/etc/passwd"}, "file": file})), "form.file"),
        (request(json!({"form": {"file": "/etc/passwd"}})), "form.file"),
        (request(json!({"form": {"doc": "/etc/passwd"}, "file": file, "file_field": "doc"})), "form.doc"),
        (request(json!({"form": {"callbackId": "forged"}})), "form.callbackId"),
        (request(json!({"file": file, "file_field": "callbackId"})), "file_field"),
    ] {
        refused(&p.a, body_with(&async_reply, &body), field).await;
        refused(&p.a, body, field).await;
    }
    assert!(p.service.seen().is_empty(), "nothing forged reached the service");

    // The node's own callbackId comes once, in the form and as a header.
    let (status, env) = p.a.request(body_with(&async_reply, &request(json!({"form": {"q": "x"}})))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let seen = p.service.wait_for(1, WITHIN).await;
    assert_eq!(seen.len(), 1);
    let ids: Vec<_> = form_of(&seen[0].body).into_iter().filter(|(k, _)| k == "callbackId").map(|(_, v)| v).collect();
    assert_eq!(ids.len(), 1, "{}", seen[0].body);
    assert_eq!(seen[0].headers.get("x-ferry-callback-id"), Some(&ids[0]), "{:?}", seen[0].headers);

    // A reply's file cannot take the name of a field the callback gets from the node.
    let reply_file = p.b.dir.join("outbox/answer.txt");
    std::fs::write(&reply_file, "answer").unwrap();
    for taken in ["id", "seq", "end", "data", "status", "error"] {
        let reply = json!({"callback_id": ids[0], "data": {}, "file": reply_file, "file_field": taken});
        let (status, env) = p.b.post("/v1/replies", reply).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{taken}: {env}");
        assert_eq!(env["data"]["field"], "file_field", "{env}");
    }
    let reply = json!({"callback_id": ids[0], "data": {}, "file": reply_file, "file_field": "answer"});
    assert_eq!(p.b.post("/v1/replies", reply).await.0, StatusCode::ACCEPTED);
}

/// `base` with the fields of `extra` over it.
fn body_with(base: &Value, extra: &Value) -> Value {
    let mut body = extra.clone();
    body.as_object_mut().unwrap().extend(base.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn headers_the_nodes_set_and_control_characters_are_refused_at_the_sender() {
    let p = boundary().await;
    for headers in [
        json!({"Content-Type": "text/plain"}),
        json!({"content-length": "0"}),
        json!({"Host": "admin.internal"}),
        json!({"X-Ferry-Peer": "org-z"}),
        json!({"x-ferry-callback-id": "forged"}),
        json!({"Transfer-Encoding": "chunked"}),
        json!({"X-Note": "a\r\nX-Ferry-Peer: org-z"}),
        json!({"X-Note": "a\0b"}),
    ] {
        refused(&p.a, request(json!({"method": "POST", "form": {"a": 1}, "headers": headers})), "headers").await;
    }
    for conversation in ["c\r\nX-Ferry-Peer: org-z", "c\nd", "c\0"] {
        refused(&p.a, request(json!({"conversation": conversation})), "conversation").await;
    }
    assert!(p.service.seen().is_empty(), "nothing refused reached the service");
}

#[tokio::test]
async fn credentials_reach_a_service_only_where_its_pass_headers_lists_them() {
    let p = boundary().await;
    let headers = json!({
        "Authorization": "Bearer host-token", "Cookie": "session=1", "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1", "X-Trace": "t1",
    });
    for service in ["1", "2"] {
        let (status, env) = p.a.request(request(json!({"service": service, "headers": headers}))).await;
        assert_eq!(status, StatusCode::OK, "{env}");
    }
    let seen = p.service.seen();
    assert_eq!(seen.len(), 2);
    let got = |n: usize, name: &str| seen[n].headers.get(name).cloned();
    let (one, two): (&HashMap<_, _>, &HashMap<_, _>) = (&seen[0].headers, &seen[1].headers);
    for name in ["authorization", "cookie", "x-forwarded-for", "forwarded"] {
        assert!(!one.contains_key(name), "service 1 lists no pass_headers, yet got {name}: {one:?}");
    }
    assert_eq!(got(0, "x-trace").as_deref(), Some("t1"), "other headers pass");
    assert_eq!(got(1, "authorization").as_deref(), Some("Bearer host-token"), "service 2 lists Authorization");
    for name in ["cookie", "x-forwarded-for", "forwarded"] {
        assert!(!two.contains_key(name), "service 2 does not list {name}: {two:?}");
    }
    assert_eq!(got(1, "x-ferry-peer").as_deref(), Some("org-a"));
}
