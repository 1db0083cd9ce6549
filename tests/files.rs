//! Files with requests and replies between two real nodes: sizes around the chunk boundary and a
//! few hundred MiB compared by hash, send-root checks, replies with files, the state and counts a
//! file under way shows (over a slow link), and resumption after a cut connection.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::files::sha_of;
use support::lossy::LossyLink;
use support::{pair, Node, Pair, Recorder};

const CHUNK: u64 = ferry::transfer::CHUNK as u64;
const WITHIN: Duration = Duration::from_secs(60);

/// Writes `size` bytes of a repeatable pattern to `dir/name` and returns the path and its SHA-256.
fn make_file(dir: &Path, name: &str, size: u64) -> (PathBuf, String) {
    let path = dir.join(name);
    let sha = support::files::make_file(&path, size);
    (path, sha)
}

/// Sets `node`'s `files.max_size` to `limit` (before it starts).
fn limit_files(node: &support::Node, limit: &str) {
    let config = std::fs::read_to_string(&node.config_path).unwrap().replace("20GiB", limit);
    std::fs::write(&node.config_path, config).unwrap();
}

fn outbox(node: &support::Node) -> PathBuf {
    node.dir.join("outbox")
}

/// Sends `path` from org-a to org-b asynchronously and waits until 8 chunks of it are on org-b's
/// disk; the request id and the partial file.
async fn send_until_partly_there(p: &Pair, path: &Path) -> (String, PathBuf) {
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": path});
    let (_, env) = p.a.request(body).await;
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let partial = p.b.dir.join(format!("data/partial/org-a/{id}.part"));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 8 * CHUNK {
        assert!(tokio::time::Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (id, partial)
}

/// The path of the received file the service saw in form field `field` of call `n`.
fn received_path(p: &Pair, field: &str) -> PathBuf {
    let seen = p.service.seen();
    let last = seen.last().expect("the service was called");
    let text = if last.method == "GET" { last.query.clone().unwrap_or_default() } else { last.body.clone() };
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&text).unwrap();
    PathBuf::from(&form[field])
}

#[tokio::test]
async fn files_around_the_chunk_boundary_arrive_whole() {
    let p = pair().await;
    for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
        let (path, sha) = make_file(&outbox(&p.a), &format!("f-{size}.bin"), size);
        let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "file": path, "file_field": "doc"});
        let (status, env) = p.a.request(body).await;
        assert_eq!(status, StatusCode::OK, "{size}: {env}");
        let got = received_path(&p, "doc");
        let id = env["data"]["id"].as_str().unwrap();
        assert_eq!(got, p.b.dir.join("data/received/org-a").join(id).join(format!("f-{size}.bin")));
        assert_eq!(std::fs::metadata(&got).unwrap().len(), size);
        assert_eq!(sha_of(&got), sha, "{size} bytes arrived intact");
    }
    assert!(std::fs::read_dir(p.b.dir.join("data/partial/org-a")).unwrap().next().is_none(), "no partial files left");
}

#[tokio::test]
async fn a_few_hundred_mib_go_async_with_progress_and_a_verified_hash() {
    let p = pair().await;
    let size = 256 * CHUNK + 12_345;
    let (path, sha) = make_file(&outbox(&p.a), "big.bin", size);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/events", p.a.api)).await.unwrap();
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": path});
    let (status, env) = p.a.request(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();

    let mut progress = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        ws.send(tokio_tungstenite::tungstenite::Message::text("OK")).await.unwrap();
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            continue;
        };
        let e: Value = serde_json::from_str(&t).unwrap();
        if e["type"] == "progress" {
            assert_eq!(e["bytes_total"], size);
            progress.push(e["bytes_done"].as_u64().unwrap());
        }
        if e["type"] == "state" && e["state"] == "success" {
            break;
        }
    }
    assert_eq!(progress.last(), Some(&size), "progress reaches the end: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {progress:?}");

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(status["transfer"]["bytes_done"], size, "{status}");
    assert_eq!(status["transfer"]["sha256"], sha.as_str());
    assert_eq!(status["transfer"]["name"], "big.bin");
    let got = received_path(&p, "file");
    assert_eq!(sha_of(&got), sha);
    let incoming = p.b.wait_state(&id, "success", WITHIN).await;
    assert_eq!(incoming["transfer"]["path"], got.to_str().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "the host's file is untouched");
}

#[tokio::test]
async fn only_readable_regular_files_below_a_send_root_may_leave() {
    let p = pair().await;
    let secret = p.root.path().join("secret.txt");
    std::fs::write(&secret, "not for peers").unwrap();
    let (inside, _) = make_file(&outbox(&p.a), "ok.txt", 10);
    std::os::unix::fs::symlink(&secret, outbox(&p.a).join("link.txt")).unwrap();
    std::fs::create_dir(outbox(&p.a).join("dir")).unwrap();
    let escape = format!("{}/../../secret.txt", outbox(&p.a).display());
    let cases = [
        (escape.clone(), StatusCode::FORBIDDEN, "forbidden"),
        (outbox(&p.a).join("link.txt").display().to_string(), StatusCode::FORBIDDEN, "forbidden"),
        (secret.display().to_string(), StatusCode::FORBIDDEN, "forbidden"),
        ("ok.txt".to_owned(), StatusCode::BAD_REQUEST, "bad_request"),
        (outbox(&p.a).join("missing.txt").display().to_string(), StatusCode::BAD_REQUEST, "bad_request"),
        (outbox(&p.a).join("dir").display().to_string(), StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (file, want, kind) in cases {
        let (status, env) = p.a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "file": file})).await;
        assert_eq!(status, want, "{file}: {env}");
        assert_eq!(env["data"]["error"], kind);
        assert_eq!(env["data"]["field"], "file");
    }
    assert!(p.service.seen().is_empty());
    let (status, env) = p.a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "file": inside})).await;
    assert_eq!(status, StatusCode::OK, "{env}");
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_refused() {
    let mut p = support::unstarted_pair().await;
    limit_files(&p.a, "2MiB");
    limit_files(&p.b, "1MiB");
    p.start().await;
    let Pair { a, service, .. } = &p;
    let (over_a, _) = make_file(&a.dir.join("outbox"), "3m.bin", 3 * CHUNK);
    let (status, env) = a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "file": over_a})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{env}");
    // Within org-a's limit but over org-b's: the receiver refuses it.
    let (over_b, _) = make_file(&a.dir.join("outbox"), "1.5m.bin", CHUNK + CHUNK / 2);
    let (status, env) = a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "file": over_b})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{env}");
    assert!(service.seen().is_empty());
}

/// A refusal no retry changes ends the request on both sides, once, with the reason.
#[tokio::test]
async fn a_reply_file_over_the_requesters_limit_fails_the_request_on_both_sides() {
    let host = Recorder::start().await;
    let mut p = support::unstarted_pair().await;
    limit_files(&p.a, "1MiB");
    p.start().await;
    let Pair { a, b, service, .. } = &p;
    let body = json!({"peer": "org-b", "service": "1", "path": "/export", "mode": "async", "reply": true,
                      "callback": {"url": format!("{}/cb", host.base_url())}});
    let id = a.request(body).await.1["data"]["id"].as_str().unwrap().to_owned();
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(&service.wait_for(1, WITHIN).await[0].body).unwrap();
    let (path, _) = make_file(&b.dir.join("outbox"), "big.bin", 2 * CHUNK);
    let (status, env) = b.post("/v1/replies", json!({"callback_id": form["callbackId"], "file": path})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");

    let status = a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().contains("files.max_size"), "{status}");
    assert_eq!(b.wait_state(&id, "failed", WITHIN).await["error"], status["error"]);
    let calls = host.wait_for(1, WITHIN).await;
    let fields: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&calls[0].body).unwrap();
    assert_eq!(fields["error"], status["error"].as_str().unwrap(), "the callback hears why");
    let (_, listed) = b.get("/v1/requests?direction=incoming").await;
    assert_eq!(listed["data"]["items"][0]["state"], "failed", "{listed}");
}

#[tokio::test]
async fn a_reply_carries_a_file_back_to_the_callback() {
    let p = pair().await;
    let host = Recorder::start().await;
    let body = json!({"peer": "org-b", "service": "1", "path": "/export", "mode": "async", "reply": true,
                      "callback": {"url": format!("{}/cb", host.base_url())}});
    let (_, env) = p.a.request(body).await;
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let seen = p.service.wait_for(1, WITHIN).await;
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[0].body).unwrap();
    let (path, sha) = make_file(&outbox(&p.b), "export.csv", 2 * CHUNK + 3);
    let (status, env) =
        p.b.post(
            "/v1/replies",
            json!({"callback_id": form["callbackId"], "data": {"rows": 3}, "file": path, "file_field": "report"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    let file = status["replies"][0]["file"].as_str().expect("the reply names its file");
    assert!(file.starts_with(p.a.dir.join("data/received/org-b").join(&id).to_str().unwrap()), "{file}");
    assert_eq!(sha_of(Path::new(file)), sha);
    let calls = host.wait_for(1, WITHIN).await;
    let fields: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&calls[0].body).unwrap();
    assert_eq!(fields["report"], file, "the callback gets the local path in file_field");
    assert_eq!(fields["data"], r#"{"rows":3}"#);
}

/// While a file moves (over a slow link, so that it is seen mid-way), its request is `doing` on
/// the sending node, in its status, its events and `ferry status` (sizes, rate, time left), and
/// `/v1/stats` counts the file on both nodes; once the request is done neither counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_under_way_is_doing_and_counted_on_both_nodes() {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::create(root.path(), "org-a"), Node::create(root.path(), "org-b"));
    // 16 MiB/s each way: 64 MiB take about 4 s.
    let link = LossyLink::slow(a.link, b.link, 16 << 20, Duration::from_millis(2));
    a.add_peer_at(&b, link.to_b);
    b.add_peer_at(&a, link.to_a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    a.start().await;
    b.start().await;
    let p = Pair { root, a, b, service };
    let size = 64 * CHUNK;
    let (path, sha) = make_file(&outbox(&p.a), "slow.bin", size);
    let mut events = support::events(p.a.api).await;
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": path});
    let (status, env) = p.a.request(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();

    // Watched every 50 ms until it is done: the status, both nodes' counts, and once
    // `ferry status`.
    let (mut doing, mut rate, mut shown) = (None, None, None);
    let (mut counted_a, mut counted_b) = (0, 0);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "not done within {WITHIN:?}");
        let view = p.a.get(&format!("/v1/requests/{id}")).await.1["data"].clone();
        let (stats_a, stats_b) =
            (p.a.get("/v1/stats").await.1["data"].clone(), p.b.get("/v1/stats").await.1["data"].clone());
        if view["state"] == "success" {
            break;
        }
        let held = view["transfer"]["bytes_done"].as_u64().unwrap();
        assert!(view["state"] != "waiting" || held == 0, "part of the file is at the peer, yet waiting: {view}");
        if view["state"] == "doing" && held < size && view["transfer"]["moving"] == true {
            doing.get_or_insert(held);
            assert!(stats_a["outgoing"]["doing"].as_u64() >= Some(1), "{stats_a}");
            if let Some(r) = view["transfer"]["bytes_per_s"].as_u64() {
                rate.get_or_insert(r);
                if shown.is_none() {
                    let config = p.a.config_path.clone();
                    let args = ["status".into(), id.clone(), "--config".into(), config.display().to_string()];
                    let out = tokio::task::spawn_blocking(move || support::cli::ferry(args)).await.unwrap();
                    let text = support::cli::stdout(&out);
                    shown = text.contains(" left").then_some(text);
                }
            }
        }
        counted_a = counted_a.max(stats_a["transfers_active"].as_u64().unwrap());
        counted_b = counted_b.max(stats_b["transfers_active"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let doing = doing.expect("the request was seen doing while its file moved");
    let rate = rate.expect("its rate was measured while it moved");
    assert!(doing < size);
    // The link passes 16 MiB/s; the rate measured is of that order (reports come in steps).
    assert!((2 << 20..=64 << 20).contains(&rate), "{rate} B/s");
    assert_eq!((counted_a, counted_b), (1, 1), "the file counted on both nodes while it moved");
    let shown = shown.expect("`ferry status` showed the file under way");
    for want in ["doing", "slow.bin  ", " / 64.0 MiB (", "/s  ", " left"] {
        assert!(shown.contains(want), "no {want:?} in:\n{shown}");
    }
    for node in [&p.a, &p.b] {
        let (_, stats) = node.get("/v1/stats").await;
        assert_eq!(stats["data"]["transfers_active"], 0, "{}: nothing moves once it is done: {stats}", node.name);
    }
    let done = p.a.get(&format!("/v1/requests/{id}")).await.1["data"].clone();
    assert_eq!(
        (done["transfer"]["moving"].clone(), done["transfer"]["bytes_per_s"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(sha_of(&received_path(&p, "file")), sha);

    // The events agree: waiting, then doing just before the first progress that shows bytes at
    // the peer, progress under way, then success.
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        if e["id"] == id.as_str() {
            let last = e["state"] == "success";
            seen.push(e);
            if last {
                break;
            }
        }
    }
    let states: Vec<&Value> = seen.iter().filter(|e| e["type"] == "state").map(|e| &e["state"]).collect();
    assert_eq!(states, ["waiting", "doing", "success"], "{seen:?}");
    let at_doing = seen.iter().position(|e| e["state"] == "doing").unwrap();
    let bytes = |e: &Value| e["bytes_done"].as_u64();
    assert!(seen[..at_doing].iter().filter_map(bytes).all(|d| d == 0), "bytes moved before doing: {seen:?}");
    assert!(
        seen.get(at_doing + 1).and_then(bytes).is_some_and(|d| d > 0),
        "doing comes with the first bytes: {seen:?}"
    );
    assert!(seen[at_doing..].iter().filter_map(bytes).any(|d| d > 0 && d < size), "{seen:?}");
}

/// A file cut midway (the receiving node stops) sends its request back to `waiting`, no longer
/// moving nor counted, while the retry waits; started again, it resumes from the last verified
/// chunk, and the request completes.
#[tokio::test]
async fn a_transfer_cut_midway_resumes_from_the_last_verified_chunk() {
    let mut p = pair().await;
    let size = 192 * CHUNK;
    let (path, sha) = make_file(&outbox(&p.a), "resume.bin", size);
    // Once part of the file is on org-b's disk, stop org-b (the connection drops).
    let (id, partial) = send_until_partly_there(&p, &path).await;
    p.b.stop().await;
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 8 * CHUNK && kept < size, "kept {kept}");
    let cut = support::until("the cut request to wait", async || {
        let view = p.a.get(&format!("/v1/requests/{id}")).await.1["data"].clone();
        let active = p.a.get("/v1/stats").await.1["data"]["transfers_active"].clone();
        match (&view["state"], &view["transfer"]["moving"], active.as_u64()) {
            (state, moving, Some(0)) if state == "waiting" && moving == false => Ok(view),
            _ => Err(format!("{view} with {active} transfers active")),
        }
    })
    .await;
    assert!(cut["transfer"]["bytes_done"].as_u64() < Some(size), "{cut}");

    p.b.start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/events", p.b.api)).await.unwrap();
    let first = loop {
        ws.send(tokio_tungstenite::tungstenite::Message::text("OK")).await.unwrap();
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await
        else {
            panic!("no progress after the restart");
        };
        let e: Value = serde_json::from_str(&t).unwrap();
        if e["type"] == "progress" {
            break e["bytes_done"].as_u64().unwrap();
        }
    };
    assert!(first >= kept / CHUNK * CHUNK && first > 0, "resumed from {first}, not from zero (kept {kept})");
    assert_eq!(p.a.wait_state(&id, "success", WITHIN).await["state"], "success");
    assert_eq!(sha_of(&received_path(&p, "file")), sha);
    assert_eq!(p.service.seen().len(), 1);
}

/// A host that truncates its file while ferry sends it: the sender resets the file stream with
/// `SourceChanged`, the request fails saying the file changed (not that the peer is unreachable),
/// the receiver discards the part it held, and the service is never called.
#[tokio::test]
async fn a_file_truncated_while_it_is_sent_fails_its_request_and_the_receivers_part_is_discarded() {
    let p = pair().await;
    let size = 256 * CHUNK;
    let (path, _) = make_file(&outbox(&p.a), "shrinking.bin", size);
    let (id, partial) = send_until_partly_there(&p, &path).await;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(size / 2).unwrap();

    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].to_string();
    assert!(error.contains("changed while it was being sent"), "{status}");
    assert!(!error.contains("unreachable"), "{status}");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while partial.exists() {
        assert!(tokio::time::Instant::now() < deadline, "org-b kept the part of a file that changed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.service.seen().is_empty(), "the service is not called with a file that changed");
}
