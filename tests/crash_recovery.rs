//! Crash recovery (API.md §3, DESIGN.md "Tests"): nodes run as real `ferry run` processes, are
//! killed with SIGKILL at awkward moments and restarted from the same directory on the same ports.
//! An asynchronous request is on disk before its 202, so it is carried on after a crash; each
//! request id reaches the service at most once; results reach the host's callback.
//!
//! The recording service and the recording callback receiver run in the test process. The
//! harness (nodes as child processes, the recorder) is `tests/support/process.rs`: every child
//! process is killed when its `Node` is dropped, also when a test fails, and its log (stderr of
//! every run) is printed then.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use support::process::{free_tcp, outgoing, two_nodes, until, Node, Recorder, INTERRUPTED, SETTLE};
use tokio::time::Instant;

/// An asynchronous request to `peer`'s service "1" with a POST callback to `callbacks`.
fn async_request(peer: &str, path: &str, callbacks: &Recorder, reply: bool) -> Value {
    json!({
        "peer": peer, "service": "1", "path": path, "method": "POST", "form": {"q": "x"},
        "mode": "async", "reply": reply, "callback": {"url": format!("{}/cb", callbacks.base_url())},
    })
}

/// Waits for `n` callback deliveries for `id`, lets late duplicates show, and returns them all.
async fn callbacks_of(callbacks: &Recorder, id: &str, n: usize) -> Vec<HashMap<String, String>> {
    until(&format!("{n} callback(s) for {id}"), async || {
        let got = callbacks.callbacks_for(id);
        if got.len() >= n {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    callbacks.callbacks_for(id)
}

/// Waits until the requesting node reports every callback result of `id` delivered.
async fn wait_callback_recorded(node: &Node, id: &str) -> Value {
    node.wait_status(id, "with its callback delivered", |s| s["callback"]["delivered"] == true).await
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

/// 1. The sending node dies right after its 202 while the peer is down; after both are up the
///    request completes: the service is called once, the callback gets the result once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_the_sender_being_killed_right_after_its_202() {
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());

    a.start().await; // org-b is down: the request surely still waits
    let id = a.accepted(async_request("org-b", "/orders", &callbacks, false)).await;
    a.kill();

    a.start().await;
    let status = a.status(&id).await.unwrap();
    assert_eq!(status["state"], "waiting", "the request is still there after SIGKILL: {status}");
    assert_eq!(status["direction"], "outgoing", "{status}");
    assert_eq!(status["path"], "/orders", "{status}");
    b.start().await;

    let status = a.wait_state(&id, "success").await;
    assert_eq!(status["response"]["status"], 200, "{status}");
    assert_eq!(status["response"]["body"]["path"], "/orders", "{status}");

    let delivered = callbacks_of(&callbacks, &id, 1).await;
    assert_eq!(delivered.len(), 1, "one result, delivered once: {delivered:?}");
    assert_eq!(delivered[0]["seq"], "1");
    assert_eq!(delivered[0]["end"], "true");
    assert_eq!(delivered[0]["status"], "200");
    let data: Value = serde_json::from_str(&delivered[0]["data"]).unwrap();
    assert_eq!(data["path"], "/orders");
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");
    assert_eq!(calls[0].headers["x-ferry-peer"], "org-a");
    assert_eq!(service.seen().len(), 1, "no other call: {:?}", service.seen());

    let status = wait_callback_recorded(&a, &id).await;
    assert_eq!(status["state"], "success", "{status}");
    assert_eq!(status["replies"].as_array().unwrap().len(), 1, "{status}");
    let incoming = b.wait_state(&id, "success").await;
    assert_eq!(incoming["direction"], "incoming", "{incoming}");
}

/// 2. The receiving node dies after acknowledging a request and before calling its service (its
///    service is not listening yet, so the call is held back and retried); after the restart the
///    service is called exactly once and the result reaches org-a's callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_the_receiver_being_killed_before_calling_its_service() {
    let root = tempfile::tempdir().unwrap();
    let callbacks = Recorder::start().await;
    let service_addr = free_tcp(); // nothing listens there yet: connection refused
    let (mut a, mut b) = two_nodes(root.path(), &format!("http://{service_addr}"));
    a.start().await;
    b.start().await;

    let id = a.accepted(async_request("org-b", "/orders", &callbacks, false)).await;
    a.wait_state(&id, "doing").await;
    let incoming = b
        .wait_status(&id, "waiting after a refused service call", |s| {
            s["state"] == "waiting" && s["attempts"].as_u64().unwrap_or(0) >= 1 && s["error"].is_string()
        })
        .await;
    assert_eq!(incoming["direction"], "incoming", "{incoming}");
    b.kill();

    let service = Recorder::start_on(service_addr).await;
    assert_eq!(a.status(&id).await.unwrap()["state"], "doing");
    b.start().await;

    let calls = until("the service to be called", async || {
        let calls = service.calls_for(&id);
        if calls.is_empty() {
            Err(format!("{:?}", service.seen()))
        } else {
            Ok(calls)
        }
    })
    .await;
    assert_eq!(calls[0].path, "/orders");
    let status = a.wait_state(&id, "success").await;
    assert_eq!(status["response"]["status"], 200, "{status}");
    let delivered = callbacks_of(&callbacks, &id, 1).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["seq"], "1");
    assert_eq!(delivered[0]["end"], "true");
    assert_eq!(delivered[0]["status"], "200");
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");
    assert_eq!(service.seen().len(), 1);

    wait_callback_recorded(&a, &id).await;
    let incoming = b.wait_state(&id, "success").await;
    assert!(incoming["attempts"].as_u64().unwrap() >= 2, "a refused try, then the call: {incoming}");
}

/// 3. The requesting node dies while a reply-mode request awaits its replies; org-b's service
///    replies meanwhile; org-b keeps the replies and carries them once org-a is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_survive_the_requester_being_killed_before_they_arrive() {
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());
    a.start().await;
    b.start().await;

    let id = a.accepted(async_request("org-b", "/report", &callbacks, true)).await;
    let call = until("the service to get the request", async || {
        service.calls_for(&id).pop().ok_or_else(|| format!("{:?}", service.seen()))
    })
    .await;
    let callback_id = call.fields().get("callbackId").cloned().unwrap_or_else(|| panic!("no callbackId: {call:?}"));
    a.wait_state(&id, "doing").await;
    a.kill();

    for (data, end, seq) in [(json!({"part": 1}), false, 1), (json!({"part": 2, "rows": [1, 2]}), true, 2)] {
        let (status, env) = b.post("/v1/replies", &json!({"callback_id": callback_id, "data": data, "end": end})).await;
        assert_eq!(status, 202, "{env}");
        assert_eq!(env["data"]["seq"], seq, "{env}");
    }
    let kept = b.status(&id).await.unwrap();
    assert_eq!(kept["state"], "success", "org-b's side is done: {kept}");
    assert_eq!(kept["replies"].as_array().unwrap().len(), 2, "{kept}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.status(&id).await.unwrap()["replies"][1]["delivered"], false, "org-a is down: nothing acknowledged");

    a.start().await;
    let status = a.wait_state(&id, "success").await;
    let replies = status["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2, "{status}");
    assert_eq!(replies[0]["data"], json!({"part": 1}), "{status}");
    assert_eq!(replies[1]["data"], json!({"part": 2, "rows": [1, 2]}), "{status}");
    assert_eq!(replies[1]["end"], true, "{status}");

    let delivered = callbacks_of(&callbacks, &id, 2).await;
    let seqs: Vec<&str> = delivered.iter().map(|f| f["seq"].as_str()).collect();
    assert_eq!(seqs, ["1", "2"], "each reply once, in order: {delivered:?}");
    assert_eq!(delivered[0]["end"], "false");
    assert_eq!(delivered[1]["end"], "true");
    assert_eq!(serde_json::from_str::<Value>(&delivered[1]["data"]).unwrap(), json!({"part": 2, "rows": [1, 2]}));
    let calls = service.calls_for(&id);
    assert_eq!(calls.len(), 1, "the service is called exactly once: {calls:?}");

    wait_callback_recorded(&a, &id).await;
    b.wait_status(&id, "with both replies acknowledged by org-a", |s| {
        s["replies"].as_array().is_some_and(|r| r.iter().all(|r| r["delivered"] == true))
    })
    .await;
}

/// Posts `bodies` to `node` 16 at a time; the ids in order.
async fn post_all(node: &Node, bodies: Vec<Value>) -> Vec<String> {
    futures::stream::iter(bodies).map(|body| node.accepted(body)).buffered(16).collect().await
}

/// 4. The sending node dies with 200 asynchronous requests in flight: half to org-b (sent,
///    acknowledged or on the wire, the slow service working on them) and half to org-c, which is
///    down (waiting). After the restart every request succeeds, every id was called exactly once
///    and every result reached the callback exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_the_sender_being_killed() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    let mut c = Node::create(root.path(), "org-c");
    for peer in [&b, &c] {
        a.pin(peer);
        peer.pin(&a);
        peer.add_service("1", &service.base_url(), &["org-a"]);
    }
    a.start().await;
    b.start().await; // org-c stays down

    // org-b's service takes 4 s, so no result is back before the kill.
    let bodies = (0..200)
        .map(|i| {
            let (peer, path) = if i % 2 == 0 { ("org-b", "/sleep/4000/slow") } else { ("org-c", "/sleep/100/fast") };
            let mut body = async_request(peer, path, &callbacks, false);
            body["form"] = json!({"n": i});
            body
        })
        .collect();
    let ids = post_all(&a, bodies).await;
    let mix = until("org-a to have requests both waiting and doing", async || {
        let counts = outgoing(&a).await?;
        let n = |s: &str| counts.get(s).copied().unwrap_or(0);
        if n("waiting") >= 100 && n("doing") >= 20 {
            Ok(counts)
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    a.kill();
    eprintln!("org-a killed with outgoing {mix:?}; the service had {} calls", service.seen().len());
    assert_eq!(mix.get("success").copied().unwrap_or(0), 0, "nothing finished before the kill: {mix:?}");
    assert!(callbacks.seen().is_empty(), "no result reached org-a before the kill: {:?}", callbacks.seen());

    a.start().await;
    c.start().await;
    until("every request to succeed", async || {
        let counts = outgoing(&a).await?;
        if counts.get("success") == Some(&200) {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    until("200 callbacks", async || {
        if callbacks.seen().len() >= 200 {
            Ok(())
        } else {
            Err(format!("{} callbacks", callbacks.seen().len()))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;

    let calls = service.calls_by_id();
    let deliveries = callbacks.callbacks_by_id_seq();
    for (i, id) in ids.iter().enumerate() {
        let status = a.status(id).await.unwrap();
        assert_eq!(status["state"], "success", "request {i}: {status}");
        assert_eq!(status["response"]["status"], 200, "request {i}: {status}");
        assert_eq!(calls.get(id), Some(&1), "request {i} ({id}) reaches the service exactly once");
        assert_eq!(deliveries.get(&(id.clone(), "1".to_owned())), Some(&1), "request {i}: one callback delivery");
    }
    assert_eq!(service.seen().len(), 200, "no call without a request: {calls:?}");
    assert_eq!(callbacks.seen().len(), 200, "no other delivery: {deliveries:?}");
    eprintln!("the backlog recovered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
}

/// 4b. The receiving node dies with 200 asynchronous requests on its hands: some answered, some in
///     its service's hands, most still queued. After the restart nothing is lost and nothing is
///     done twice: every request ends; one that succeeded was called exactly once; one that failed
///     was one whose call the crash interrupted (the service may have acted, so it is not called
///     again), and it was called at most once. Every result reaches the callback exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_survives_the_receiver_being_killed() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());
    a.start().await;
    b.start().await;

    let bodies = (0..200)
        .map(|i| {
            let mut body = async_request("org-b", "/sleep/400/work", &callbacks, false);
            body["form"] = json!({"n": i});
            body
        })
        .collect();
    let ids = post_all(&a, bodies).await;
    let mix = until("org-b to have called its service for some and queued others", async || {
        let stats = b.get("/v1/stats").await?;
        let n = |s: &str| stats["incoming"][s].as_u64().unwrap_or(0);
        if service.seen().len() >= 70 && n("waiting") >= 1 && n("doing") >= 1 {
            Ok(stats["incoming"].clone())
        } else {
            Err(format!("{stats} with {} calls", service.seen().len()))
        }
    })
    .await;
    b.kill();
    let called_before: HashMap<String, usize> = service.calls_by_id();
    eprintln!("org-b killed with incoming {mix}; the service had {} calls", called_before.len());

    b.start().await;
    let counts = until("every request to end", async || {
        let counts = outgoing(&a).await?;
        let n = |s: &str| counts.get(s).copied().unwrap_or(0);
        if n("success") + n("failed") == 200 {
            Ok(counts)
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    until("200 callbacks", async || {
        if callbacks.seen().len() >= 200 {
            Ok(())
        } else {
            Err(format!("{} callbacks", callbacks.seen().len()))
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    eprintln!("after the restart: outgoing {counts:?}");

    let calls = service.calls_by_id();
    let deliveries = callbacks.callbacks_by_id_seq();
    for (i, id) in ids.iter().enumerate() {
        let status = a.status(id).await.unwrap();
        let n = calls.get(id).copied().unwrap_or(0);
        assert!(n <= 1, "request {i} ({id}) reached the service {n} times");
        match status["state"].as_str() {
            Some("success") => {
                assert_eq!(n, 1, "request {i} succeeded, so its service was called once: {status}");
                assert_eq!(status["response"]["status"], 200, "request {i}: {status}");
            }
            Some("failed") => {
                let error = status["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains(INTERRUPTED),
                    "request {i} failed only because the crash interrupted it: {status}"
                );
                assert!(
                    called_before.contains_key(id) || n == 0,
                    "request {i} was interrupted, so it was not called after the restart: {status}"
                );
            }
            _ => panic!("request {i} did not end: {status}"),
        }
        if !called_before.contains_key(id) && n == 1 {
            assert_eq!(status["state"], "success", "request {i} was first called after the restart: {status}");
        }
        assert_eq!(deliveries.get(&(id.clone(), "1".to_owned())), Some(&1), "request {i}: one callback delivery");
    }
    assert_eq!(callbacks.seen().len(), 200, "no other delivery: {deliveries:?}");
    assert!(calls.values().all(|n| *n == 1), "no id called twice: {calls:?}");
    eprintln!("the backlog recovered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
}
