//! Asynchronous requests between two real nodes: states, replies, callbacks, store-and-forward,
//! monitoring and events.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{client, pair, Node, Pair, Recorder};
use tokio_tungstenite::tungstenite::Message;

const WITHIN: Duration = Duration::from_secs(10);

fn async_req(path: &str, callback: &Recorder, reply: bool) -> Value {
    json!({
        "peer": "org-b", "service": "1", "path": path, "method": "POST", "form": {"q": "x"},
        "mode": "async", "reply": reply, "callback": {"url": format!("{}/cb", callback.base_url())},
    })
}

async fn accepted(node: &Node, body: Value) -> String {
    let (status, env) = node.request(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    assert_eq!(env["msg"], "Accepted");
    assert_eq!(env["data"]["state"], "waiting");
    env["data"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_async_request_is_answered_by_the_services_response_and_called_back() {
    let p = pair().await;
    let host = Recorder::start().await;
    let id = accepted(&p.a, async_req("/orders", &host, false)).await;

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(status["direction"], "outgoing");
    assert_eq!(status["mode"], "async");
    assert_eq!(status["response"]["status"], 200);
    assert_eq!(status["response"]["body"]["path"], "/orders");
    assert_eq!(status["replies"].as_array().unwrap().len(), 1);

    let calls = host.wait_for(1, WITHIN).await;
    assert_eq!(calls.len(), 1, "one result, one delivery");
    assert_eq!(calls[0].method, "POST");
    let f = calls[0].fields();
    assert_eq!(f["id"], id);
    assert_eq!(f["seq"], "1");
    assert_eq!(f["end"], "true");
    assert_eq!(f["status"], "200");
    let data: Value = serde_json::from_str(&f["data"]).unwrap();
    assert_eq!(data["path"], "/orders");
    assert!(!f.contains_key("error"));

    let seen = p.service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-ferry-request-id"], id);
    assert!(!seen[0].body.contains("callbackId"), "no callbackId outside reply mode: {}", seen[0].body);

    let incoming = p.b.wait_state(&id, "success", WITHIN).await;
    assert_eq!(incoming["direction"], "incoming");
    assert_eq!(incoming["peer"], "org-a");
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(status["callback"]["delivered"], true, "{status}");
}

/// `GET /v1/pending` on `node` once it lists `n` requests (or after [`WITHIN`]).
async fn pending_on(node: &Node, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (_, pending) = node.get("/v1/pending").await;
        if pending["data"].as_array().is_some_and(|d| d.len() >= n) || tokio::time::Instant::now() > deadline {
            return pending;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn callback_id_of(p: &Pair, n: usize) -> String {
    let seen = p.service.wait_for(n, WITHIN).await;
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&seen[n - 1].body).unwrap();
    form["callbackId"].clone()
}

#[tokio::test]
async fn replies_arrive_in_order_and_end_the_request() {
    let p = pair().await;
    let host = Recorder::start().await;
    let id = accepted(&p.a, async_req("/report", &host, true)).await;
    let callback_id = callback_id_of(&p, 1).await;
    assert_eq!(p.a.wait_state(&id, "doing", WITHIN).await["state"], "doing");

    // The service saw the call before its node recorded the answer: wait for the record.
    let pending = pending_on(&p.b, 1).await;
    assert_eq!(pending["data"][0]["callback_id"], callback_id.as_str());
    assert_eq!(pending["data"][0]["peer"], "org-a");
    assert_eq!(pending["data"][0]["form"]["q"], "x");

    let (status, env) =
        p.b.post("/v1/replies", json!({"callback_id": callback_id, "data": {"part": 1}, "end": false})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    assert_eq!(env["data"]["seq"], 1);
    let (_, env) = p.b.post("/v1/replies", json!({"callback_id": callback_id, "data": {"part": 2}})).await;
    assert_eq!(env["data"]["seq"], 2);

    let status = p.a.wait_state(&id, "success", WITHIN).await;
    let replies = status["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2, "{status}");
    assert_eq!(replies[0]["data"]["part"], 1);
    assert_eq!(replies[1]["end"], true);

    let calls = host.wait_for(2, WITHIN).await;
    let seqs: Vec<_> = calls.iter().map(|c| c.fields()["seq"].clone()).collect();
    assert_eq!(seqs, ["1", "2"]);
    assert_eq!(calls[0].fields()["end"], "false");
    assert_eq!(calls[1].fields()["data"], r#"{"part":2}"#);

    // The request is finished: more replies are refused, as are unknown ids.
    let (status, env) = p.b.post("/v1/replies", json!({"callback_id": callback_id, "data": 3})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{env}");
    let (status, _) = p.b.post("/v1/replies", json!({"callback_id": "nope", "data": 3})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, pending) = p.b.get("/v1/pending").await;
    assert_eq!(pending["data"], json!([]));
    assert_eq!(p.service.seen().len(), 1, "the service was called once");
}

#[tokio::test]
async fn an_error_reply_fails_the_request_with_its_reason() {
    let p = pair().await;
    let host = Recorder::start().await;
    let id = accepted(&p.a, async_req("/lookup", &host, true)).await;
    let callback_id = callback_id_of(&p, 1).await;
    // Under the name the service was given it: `callbackId`.
    let (status, _) = p.b.post("/v1/replies", json!({"callbackId": callback_id, "error": "no such user"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert_eq!(status["error"], "no such user", "{status}");
    let calls = host.wait_for(1, WITHIN).await;
    let f = calls[0].fields();
    assert_eq!(f["error"], "no such user");
    assert_eq!(f["end"], "true");
    assert_eq!(f["status"], "422", "a rejection never reaches the callback as a 2xx: {f:?}");
}

#[tokio::test]
async fn a_failing_service_or_a_refusing_peer_fails_the_request() {
    let p = pair().await;
    let host = Recorder::start().await;
    let id = accepted(&p.a, async_req("/status/500", &host, false)).await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().contains("500"), "{status}");
    assert_eq!(status["response"]["status"], 500);
    let f = host.wait_for(1, WITHIN).await[0].fields();
    assert_eq!(f["status"], "500");

    let mut body = async_req("/x", &host, false);
    body["service"] = "unknown".into();
    let id = accepted(&p.a, body).await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().contains("no service"), "{status}");
    let calls = host.wait_for(2, WITHIN).await;
    assert!(calls[1].fields()["error"].contains("no service"));
    assert_eq!(calls[1].fields()["status"], "404", "the refusal's status: {:?}", calls[1].fields());
}

#[tokio::test]
async fn a_callback_receiver_that_fails_is_retried() {
    let p = pair().await;
    let host = Recorder::start().await;
    let mut body = async_req("/x", &host, false);
    body["callback"] = json!({"url": format!("{}/flaky/2/cb", host.base_url()), "method": "GET"});
    let id = accepted(&p.a, body).await;
    let calls = host.wait_for(3, WITHIN).await;
    assert_eq!(calls.len(), 3, "two failures, then delivered");
    assert!(calls.iter().all(|c| c.method == "GET" && c.fields()["id"] == id));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = p.a.wait_state(&id, "success", WITHIN).await;
    assert_eq!(status["callback"]["delivered"], true, "{status}");
    assert_eq!(status["callback"]["attempts"], 3);
    assert_eq!(host.seen().len(), 3, "nothing delivered twice");
}

#[tokio::test]
async fn a_request_to_a_peer_that_is_down_waits_and_goes_when_it_returns() {
    let mut p = pair().await;
    let host = Recorder::start().await;
    p.b.stop().await;
    let ids = [
        accepted(&p.a, async_req("/first", &host, false)).await,
        accepted(&p.a, async_req("/second", &host, false)).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = p.a.wait_state(&ids[0], "waiting", WITHIN).await;
    assert_eq!(status["state"], "waiting");
    assert!(status["attempts"].as_u64().unwrap() >= 1, "{status}");
    let (_, stats) = p.a.get("/v1/stats").await;
    assert_eq!(stats["data"]["outgoing"]["waiting"], 2, "{stats}");

    p.b.start().await;
    for id in &ids {
        p.a.wait_state(id, "success", WITHIN).await;
    }
    let paths: Vec<_> = p.service.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths.len(), 2, "each called once: {paths:?}");
    assert!(paths.contains(&"/first".to_owned()) && paths.contains(&"/second".to_owned()));
}

#[tokio::test]
async fn a_request_past_its_ttl_expires_and_says_so() {
    let mut p = pair().await;
    let host = Recorder::start().await;
    p.b.stop().await;
    let mut body = async_req("/late", &host, false);
    body["ttl_s"] = 1.into();
    let id = accepted(&p.a, body).await;
    let status = p.a.wait_state(&id, "failed", WITHIN).await;
    assert!(status["error"].as_str().unwrap().starts_with("expired"), "{status}");
    let f = host.wait_for(1, WITHIN).await[0].fields();
    assert!(f["error"].starts_with("expired"));
    assert_eq!(f["status"], "504", "{f:?}");
}

#[tokio::test]
async fn requests_are_listed_filtered_and_paged() {
    let p = pair().await;
    let host = Recorder::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = async_req("/x", &host, false);
        body["conversation"] = (if i % 2 == 0 { "even" } else { "odd" }).into();
        ids.push(accepted(&p.a, body).await);
    }
    for id in &ids {
        p.a.wait_state(id, "success", WITHIN).await;
    }
    let (_, page) = p.a.get("/v1/requests?limit=2").await;
    let items = page["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[4].as_str(), "newest first");
    assert!(items[0].get("replies").is_none(), "lists leave replies out");
    let next = page["data"]["next"].as_str().unwrap();
    let (_, page2) = p.a.get(&format!("/v1/requests?limit=2&before={next}")).await;
    assert_eq!(page2["data"]["items"][0]["id"], ids[2].as_str());
    let (_, even) = p.a.get("/v1/requests?conversation=even&state=success&direction=outgoing&peer=org-b").await;
    assert_eq!(even["data"]["items"].as_array().unwrap().len(), 3);
    assert_eq!(even["data"]["next"], Value::Null);
    let (_, incoming) = p.b.get("/v1/requests?direction=incoming").await;
    assert_eq!(incoming["data"]["items"].as_array().unwrap().len(), 5);
    let (status, env) = p.a.get("/v1/requests?state=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{env}");
    let (status, _) = p.a.get("/v1/requests/does-not-exist").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, stats) = p.a.get("/v1/stats").await;
    assert_eq!(stats["data"]["outgoing"]["success"], 5, "{stats}");
    assert_eq!(stats["data"]["peers"][0]["name"], "org-b");
}

/// Connects to a node's events WebSocket.
async fn events(
    node: &Node,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/events{query}", node.api)).await.unwrap();
    ws
}

#[tokio::test]
async fn events_show_every_state_and_reply_of_a_request() {
    let p = pair().await;
    let host = Recorder::start().await;
    let mut ws = events(&p.a, "?peer=org-b").await;
    let mut other = events(&p.a, "?peer=org-z").await;
    let id = accepted(&p.a, async_req("/report", &host, true)).await;
    let callback_id = callback_id_of(&p, 1).await;
    p.b.post("/v1/replies", json!({"callback_id": callback_id, "data": {"rows": 2}})).await;

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !seen.contains(&"state:success".to_owned()) && tokio::time::Instant::now() < deadline {
        ws.send(Message::text("OK")).await.unwrap();
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await else {
            continue;
        };
        let e: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(e["id"], id.as_str());
        match e["type"].as_str().unwrap() {
            "state" => seen.push(format!("state:{}", e["state"].as_str().unwrap())),
            "reply" => {
                assert_eq!(e["data"]["rows"], 2);
                assert_eq!(e["end"], true);
                seen.push(format!("reply:{}", e["seq"]));
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(seen, ["state:waiting", "state:doing", "reply:1", "state:success"]);
    other.send(Message::text("OK")).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), other.next()).await;
    assert!(nothing.is_err(), "another peer's filter sees nothing: {nothing:?}");
}

#[tokio::test]
async fn a_silent_events_client_is_closed() {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let config =
        std::fs::read_to_string(&a.config_path).unwrap().replace("heartbeat = \"15s\"", "heartbeat = \"300ms\"");
    std::fs::write(&a.config_path, config).unwrap();
    a.start().await;
    let _ = service;
    let mut talking = events(&a, "").await;
    let mut silent = events(&a, "").await;
    let started = tokio::time::Instant::now();
    let closed = loop {
        talking.send(Message::text("OK")).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(100), silent.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(None) | Ok(Some(Err(_))) => break None,
            _ if started.elapsed() > Duration::from_secs(5) => panic!("the silent client was not closed"),
            _ => {}
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
    if let Some(frame) = closed {
        assert!(frame.reason.contains("heartbeat"), "{frame:?}");
    }
    talking.send(Message::text("OK")).await.expect("a client that says OK stays connected");
    let _ = client();
}
