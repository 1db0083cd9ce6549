//! Callback URLs a host may give: loopback, the host of `node.callback_base` and the hosts of
//! `api.callback_hosts` only; no credentials, no other schemes; and credentials stored before
//! they were refused never shown.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{pair, Node, Recorder};

const WITHIN: Duration = Duration::from_secs(15);

fn with_callback(url: &str) -> Value {
    json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "async", "callback": {"url": url}})
}

#[tokio::test]
async fn credentials_other_schemes_and_other_hosts_are_refused_naming_the_field() {
    let p = pair().await;
    for url in [
        "http://admin:s3cret-pass@127.0.0.1:8080/cb",
        "http://s3cret-pass@localhost/cb",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.5/cb",
        "https://app.example/cb",
        "file:///etc/passwd",
        "ftp://127.0.0.1/cb",
        "gopher://127.0.0.1:25/",
    ] {
        let (status, env) = p.a.request(with_callback(url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {env}");
        assert_eq!(env["data"]["error"], "bad_request", "{url}: {env}");
        assert_eq!(env["data"]["field"], "callback.url", "{url}: {env}");
        assert!(!env.to_string().contains("s3cret-pass"), "credentials echoed: {env}");
    }
    let (_, env) = p.a.get("/v1/requests?direction=outgoing").await;
    assert_eq!(env["data"]["items"], json!([]), "nothing was stored");

    // Loopback in all its spellings is served.
    let host = Recorder::start().await;
    let port = host.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://127.1.2.3:{port}/cb"),
        format!("http://localhost:{port}/cb"),
        format!("http://[::1]:{port}/cb"),
    ] {
        let (status, env) = p.a.request(with_callback(&url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{url}: {env}");
    }
}

/// A node whose config adds `node_extra` to `[node]` and `api_extra` to `[api]`, started, with
/// org-b as its peer.
async fn node_with(root: &std::path::Path, node_extra: &str, api_extra: &str) -> Node {
    let mut a = Node::create(root, "org-a");
    let b = Node::create(root, "org-b");
    a.add_peer(&b);
    let text = std::fs::read_to_string(&a.config_path).unwrap();
    let text = text.replacen("[node]\n", &format!("[node]\n{node_extra}\n"), 1);
    std::fs::write(&a.config_path, text.replacen("[api]\n", &format!("[api]\n{api_extra}\n"), 1)).unwrap();
    a.start().await;
    a
}

#[tokio::test]
async fn hosts_in_api_callback_hosts_and_the_callback_base_host_are_accepted() {
    let root = tempfile::tempdir().unwrap();
    let a = node_with(
        root.path(),
        r#"callback_base = "http://192.0.2.10:8080/hooks""#,
        r#"callback_hosts = ["app.internal", "10.0.0.5", "fd00::5"]"#,
    )
    .await;
    for url in [
        "http://app.internal/cb",
        "https://APP.internal:8443/cb",
        "http://10.0.0.5:9000/cb",
        "http://[fd00::5]/cb",
        "/cb",
        "http://192.0.2.10:9999/other",
    ] {
        let (status, env) = a.request(with_callback(url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{url}: {env}");
    }
    for url in ["http://app.internal.evil.example/cb", "http://10.0.0.6/cb", "http://192.0.2.11:8080/hooks/cb"] {
        let (status, env) = a.request(with_callback(url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {env}");
        assert_eq!(env["data"]["field"], "callback.url", "{url}: {env}");
    }
}

#[tokio::test]
async fn a_bad_callback_host_in_the_config_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let a = Node::create(root.path(), "org-a");
    let text = std::fs::read_to_string(&a.config_path).unwrap();
    let hosts = r#"callback_hosts = ["http://app.internal/", "app.internal:8080", ""]"#;
    let config = text.replacen("[api]\n", &format!("[api]\n{hosts}\n"), 1);
    let err = ferry::config::Config::parse(&a.config_path, &config).unwrap_err();
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(err.problems.iter().all(|p| p.starts_with("api.callback_hosts: ")), "{err}");
}

/// Callbacks stored before credentials were refused keep working, but neither the URL nor the
/// delivery error shows the credentials.
#[tokio::test]
async fn credentials_stored_earlier_are_masked_in_the_status() {
    if support::sqlite_only("credentials_stored_earlier_are_masked_in_the_status") {
        return;
    }
    let mut p = pair().await;
    let host = Recorder::start().await;
    let (status, env) = p.a.request(with_callback(&format!("{}/status/500", host.base_url()))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    p.a.stop().await;
    let legacy = format!("http://admin:s3cret-pass@{}/status/500", host.addr);
    let db = rusqlite::Connection::open(p.a.dir.join("data/ferry.db")).unwrap();
    assert_eq!(db.execute("UPDATE requests SET callback_url = ?1 WHERE id = ?2", [&legacy, &id]).unwrap(), 1);
    drop(db);
    p.a.start().await;

    // The delivery is tried (and fails: the receiver answers 500), so there is an error to show.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let view = loop {
        let (_, env) = p.a.get(&format!("/v1/requests/{id}")).await;
        if env["data"]["callback"]["last_error"].is_string() || tokio::time::Instant::now() > deadline {
            break env["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["callback"]["url"], format!("http://***@{}/status/500", host.addr), "{view}");
    assert!(view["callback"]["last_error"].as_str().unwrap().contains("***@"), "{view}");
    assert!(!view.to_string().contains("s3cret-pass"), "{view}");
    let (_, list) = p.a.get("/v1/requests").await;
    assert!(!list.to_string().contains("s3cret-pass"), "{list}");
}
