//! A host's file is read where it was checked: files swapped, relinked or rewritten after they
//! were accepted, links and hard links to the node's own key, and FIFOs are never sent, for
//! requests, replies and the inbox alike.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{pair, Pair, Recorder};

const WITHIN: Duration = Duration::from_secs(20);

fn outbox(node: &support::Node) -> PathBuf {
    node.dir.join("outbox")
}

fn key(node: &support::Node) -> PathBuf {
    node.dir.join("certs/node.key")
}

/// Every file below `dir`, read whole.
fn contents_below(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .flat_map(
            |e| if e.path().is_dir() { contents_below(&e.path()) } else { vec![std::fs::read(e.path()).unwrap()] },
        )
        .collect()
}

/// Asserts that no file below `node`'s received folder, and nothing `service` was sent, holds
/// `secret`.
fn never_arrived(node: &support::Node, service: &Recorder, secret: &Path) {
    let secret = std::fs::read(secret).unwrap();
    assert!(!contents_below(&node.dir.join("data/received")).contains(&secret), "the secret was received");
    let text = String::from_utf8_lossy(&secret);
    assert!(service.seen().iter().all(|s| !s.body.contains(text.trim())), "the secret reached a service");
}

/// An async request with `file` to org-b, accepted while org-b is down; its id.
async fn queued_while_away(p: &mut Pair, file: &Path) -> String {
    p.b.stop().await;
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": file});
    let (status, env) = p.a.request(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    env["data"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_queued_file_swapped_for_a_link_to_the_key_is_never_sent() {
    let mut p = pair().await;
    let file = outbox(&p.a).join("swap.txt");
    std::fs::write(&file, "harmless").unwrap();
    let id = queued_while_away(&mut p, &file).await;
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(key(&p.a), &file).unwrap();
    p.b.start().await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["error"].as_str().unwrap().contains("symbolic link"), "{status}");
    never_arrived(&p.b, &p.service, &key(&p.a));
    assert!(p.service.seen().is_empty(), "the service was never called");
}

#[tokio::test]
async fn a_queued_file_replaced_or_rewritten_is_refused_as_changed() {
    let mut p = pair().await;
    let (replaced, rewritten) = (outbox(&p.a).join("replaced.txt"), outbox(&p.a).join("rewritten.txt"));
    std::fs::write(&replaced, "accepted").unwrap();
    std::fs::write(&rewritten, "accepted").unwrap();
    let first = queued_while_away(&mut p, &replaced).await;
    p.b.start().await;
    p.a.wait_state(&first, "success", WITHIN).await;
    // Queued while org-b is away, then changed: a new file under the name, and the same file
    // written to in place.
    let second = queued_while_away(&mut p, &replaced).await;
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": rewritten});
    let third = p.a.request(body).await.1["data"]["id"].as_str().unwrap().to_owned();
    std::fs::remove_file(&replaced).unwrap();
    std::fs::write(&replaced, "swapped in").unwrap();
    std::fs::write(&rewritten, "rewritten in place, longer").unwrap();
    p.b.start().await;
    for id in [second, third] {
        let status = p.a.wait_state(&id, "failed", WITHIN).await;
        assert!(status["error"].as_str().unwrap().contains("changed after it was accepted"), "{status}");
    }
    assert_eq!(p.service.seen().len(), 1, "only the unchanged file reached the service");
}

#[tokio::test]
async fn links_hard_links_fifos_and_parent_paths_are_refused_at_once() {
    let p = pair().await;
    let send = |file: PathBuf| {
        let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "file": file});
        let a = &p.a;
        async move { a.request(body).await }
    };
    let dir = outbox(&p.a);
    std::os::unix::fs::symlink(key(&p.a), dir.join("link")).unwrap();
    std::fs::hard_link(key(&p.a), dir.join("hard")).unwrap();
    std::fs::hard_link(&p.a.config_path, dir.join("config")).unwrap();
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());

    let (status, env) = send(dir.join("link")).await;
    assert_eq!((status, env["data"]["field"].clone()), (StatusCode::FORBIDDEN, json!("file")), "{env}");
    assert!(env["msg"].as_str().unwrap().contains("symbolic link"), "{env}");
    for own in ["hard", "config"] {
        let (status, env) = send(dir.join(own)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{env}");
        assert!(env["msg"].as_str().unwrap().contains("never sent"), "{env}");
    }
    let (status, env) = tokio::time::timeout(WITHIN, send(fifo)).await.expect("a FIFO does not block the node");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{env}");
    let (status, env) = send(dir.join("../certs/node.key")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{env}");
    assert!(p.service.seen().is_empty());
}

/// A reply-mode request from org-a whose service got a callback id; its id and the callback id.
async fn awaiting_reply(p: &Pair) -> (String, String) {
    let body = json!({"peer": "org-b", "service": "1", "path": "/download", "mode": "async", "reply": true});
    let (_, env) = p.a.request(body).await;
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let seen = p.service.wait_for(1, WITHIN).await;
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[0].body).unwrap();
    (id, form["callbackId"].clone())
}

#[tokio::test]
async fn a_reply_file_swapped_for_the_key_fails_the_request_on_both_sides() {
    let mut p = pair().await;
    let (id, callback_id) = awaiting_reply(&p).await;
    p.a.stop().await;
    let file = outbox(&p.b).join("answer.txt");
    std::fs::write(&file, "the answer").unwrap();
    let (status, env) = p.b.post("/v1/replies", json!({"callback_id": callback_id, "file": file})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(key(&p.b), &file).unwrap();
    p.a.start().await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().contains("changed or went after it was accepted"), "{status}");
    assert_eq!(p.b.wait_state(&id, "failed", WITHIN).await["state"], "failed");
    never_arrived(&p.a, &p.service, &key(&p.b));
}

#[tokio::test]
async fn an_inbox_file_swapped_after_it_was_queued_is_never_sent() {
    let mut p = pair().await;
    let (id, callback_id) = awaiting_reply(&p).await;
    p.a.stop().await;
    let folder = p.b.dir.join("data/inbox").join(&callback_id);
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("report.txt");
    std::fs::write(&file, "the report").unwrap();
    // Queued as org-b's final reply (org-a is away, so it waits).
    let deadline = tokio::time::Instant::now() + WITHIN;
    while p.b.get(&format!("/v1/requests/{id}")).await.1["data"]["replies"].as_array().is_none_or(Vec::is_empty) {
        assert!(tokio::time::Instant::now() < deadline, "the inbox file was never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A hard link: a regular file, so only its device and inode give it away.
    std::fs::remove_file(&file).unwrap();
    std::fs::hard_link(key(&p.b), &file).unwrap();
    p.a.start().await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().contains("changed or went after it was accepted"), "{status}");
    never_arrived(&p.a, &p.service, &key(&p.b));
    // The operator finds the file set aside with why.
    let reason = p.b.dir.join("data/inbox/.failed/report.txt.reason");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !reason.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the failed reply's file was never set aside");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(std::fs::read_to_string(&reason).unwrap().contains("the reply carrying this file failed"));
}

#[tokio::test]
async fn inbox_links_to_the_key_are_set_aside_unread() {
    let mut p = pair().await;
    let (id, callback_id) = awaiting_reply(&p).await;
    // Made while org-b is down, so its inbox takes them at start.
    p.b.stop().await;
    let inbox = p.b.dir.join("data/inbox");
    std::os::unix::fs::symlink(key(&p.b), inbox.join(format!("{callback_id}.reject"))).unwrap();
    std::fs::create_dir(inbox.join(&callback_id)).unwrap();
    std::fs::hard_link(key(&p.b), inbox.join(&callback_id).join("key.pem")).unwrap();
    p.b.start().await;
    for moved in [format!("{callback_id}.reject"), "key.pem".to_owned()] {
        let moved = inbox.join(".failed").join(moved);
        let deadline = tokio::time::Instant::now() + WITHIN;
        while std::fs::symlink_metadata(&moved).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{} was never set aside", moved.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let status: Value = p.a.get(&format!("/v1/requests/{id}")).await.1["data"].clone();
    assert_eq!(status["state"], "doing", "the key was sent neither as a reason nor as a file: {status}");
    never_arrived(&p.a, &p.service, &key(&p.b));
}
