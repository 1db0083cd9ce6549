//! Synchronous requests relayed between two real nodes over pinned mutual-TLS QUIC.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{client, pair, Node, Recorder};

fn req(path: &str, method: &str, form: Value) -> Value {
    json!({"peer": "org-b", "service": "1", "path": path, "method": method, "form": form})
}

#[tokio::test]
async fn a_get_reaches_the_service_with_its_query_and_headers() {
    let p = pair().await;
    let (status, env) = p.a.request(req("/user/list", "GET", json!({"pageSize": 1}))).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["code"], 0);
    assert_eq!(env["msg"], "ActionOK");
    let data = &env["data"];
    assert_eq!(data["status"], 200);
    assert_eq!(data["body"]["path"], "/user/list", "JSON bodies come back as JSON: {data}");
    assert_eq!(data["headers"]["content-type"], "application/json");

    let seen = p.service.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/user/list");
    assert_eq!(seen[0].query.as_deref(), Some("pageSize=1"));
    assert_eq!(seen[0].headers["x-ferry-peer"], "org-a");
    assert_eq!(seen[0].headers["x-ferry-request-id"], data["id"].as_str().unwrap());
    assert!(!seen[0].headers.contains_key("x-ferry-conversation"));
}

#[tokio::test]
async fn forms_go_urlencoded_or_as_json_with_the_conversation_header() {
    let p = pair().await;
    let mut body = req("/user/create", "POST", json!({"name": "Ada Lovelace", "n": 2, "ok": true, "x": 1.5}));
    body["conversation"] = "c-42".into();
    body["headers"] = json!({"X-Trace": "t1"});
    let (status, env) = p.a.request(body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    body["encoding"] = "json".into();
    let (status, env) = p.a.request(body).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    // DELETE puts the form in the query string, like GET.
    let (status, _) = p.a.request(req("/user/7", "delete", json!({"hard": true}))).await;
    assert_eq!(status, StatusCode::OK);

    let seen = p.service.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(seen[0].body, "name=Ada+Lovelace&n=2&ok=true&x=1.5");
    assert_eq!(seen[0].headers["x-ferry-conversation"], "c-42");
    assert_eq!(seen[0].headers["x-trace"], "t1");
    assert_eq!(seen[1].headers["content-type"], "application/json");
    let json: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(json, json!({"name": "Ada Lovelace", "n": 2, "ok": true, "x": 1.5}));
    assert_eq!(seen[2].method, "DELETE");
    assert_eq!(seen[2].query.as_deref(), Some("hard=true"));
    assert_eq!(seen[2].body, "");
}

#[tokio::test]
async fn the_services_own_status_and_body_come_back_as_they_are() {
    let p = pair().await;
    let (status, env) = p.a.request(req("/status/404", "GET", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "a backend's 404 is not a relay error: {env}");
    assert_eq!(env["data"]["status"], 404);
    assert_eq!(env["data"]["body"]["error"], "as asked");

    let (_, env) = p.a.request(req("/text", "GET", json!({}))).await;
    assert_eq!(env["data"]["body"], "plain words");
    assert!(env["data"].get("body_encoding").is_none());

    let (_, env) = p.a.request(req("/binary", "GET", json!({}))).await;
    assert_eq!(env["data"]["body_encoding"], "base64");
    assert_eq!(env["data"]["body"], "//4AAQ==");
}

/// Asserts an error envelope of `kind` with HTTP `status`, and returns it.
fn assert_error(got: (StatusCode, Value), status: StatusCode, kind: &str) -> Value {
    let (got_status, env) = got;
    assert_eq!(got_status, status, "{env}");
    assert_eq!(env["code"], status.as_u16(), "{env}");
    assert_eq!(env["data"]["error"], kind, "{env}");
    assert!(env["msg"].as_str().is_some_and(|m| m.len() > 10), "a message that says what to do: {env}");
    env
}

#[tokio::test]
async fn the_receiving_node_enforces_service_ids_allow_lists_and_state() {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    a.add_peer(&b);
    b.add_peer(&a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    b.add_service("closed", &service.base_url(), &[]);
    b.add_service("off", &service.base_url(), &["*"]);
    b.add_service("gone", "http://127.0.0.1:9", &["org-a"]);
    let config = std::fs::read_to_string(&b.config_path).unwrap();
    let config = config.replace("id = \"off\"", "id = \"off\"\nstate = \"disabled\"");
    std::fs::write(&b.config_path, config).unwrap();
    a.start().await;
    b.start().await;

    let to = |service: &str| json!({"peer": "org-b", "service": service, "path": "/x", "method": "GET"});
    assert_error(a.request(to("nope")).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(a.request(to("closed")).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(a.request(to("off")).await, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let env = assert_error(a.request(to("gone")).await, StatusCode::BAD_GATEWAY, "backend_unreachable");
    assert!(env["data"]["id"].is_string(), "the id is given for the log: {env}");
    assert!(service.seen().is_empty(), "the service was called: {:?}", service.seen());
    let (status, _) = a.request(to("1")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_service_times_out_without_hanging_the_caller() {
    let p = pair().await;
    let mut body = req("/sleep/3000", "GET", json!({}));
    body["timeout_ms"] = 300.into();
    let started = Instant::now();
    assert_error(p.a.request(body).await, StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_service_answer_over_the_frame_limit_is_refused_and_the_next_one_passes() {
    let p = pair().await;
    let over = ferry::deliver::MAX_BODY + 1;
    let env = assert_error(
        p.a.request(req(&format!("/bytes/{over}"), "GET", json!({}))).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert!(env["msg"].as_str().unwrap().contains("send large data as a file"), "{env}");
    let (status, env) = p.a.request(req(&format!("/bytes/{}", ferry::deliver::MAX_BODY), "GET", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["data"]["status"], 200, "{env}");
}

#[tokio::test]
async fn a_peer_that_is_down_is_unreachable_within_five_seconds() {
    let mut p = pair().await;
    p.b.stop().await;
    let started = Instant::now();
    let env = assert_error(p.a.request(req("/x", "GET", json!({}))).await, StatusCode::BAD_GATEWAY, "peer_unreachable");
    assert!(started.elapsed() < Duration::from_secs(7), "took {:?}", started.elapsed());
    assert!(env["msg"].as_str().unwrap().contains("org-b"), "{env}");
    let (_, peers) = p.a.get("/v1/peers").await;
    assert_eq!(peers["data"][0]["connected"], false, "{peers}");
    assert!(peers["data"][0]["last_error"].is_string(), "{peers}");
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field() {
    let p = pair().await;
    let url = p.a.url("/v1/requests");
    let post_raw = |body: &'static str| {
        let url = url.clone();
        async move {
            let r = client().post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    assert_error(post_raw("{not json").await, StatusCode::BAD_REQUEST, "bad_request");
    let env = assert_error(post_raw(r#"{"peer":"org-b","path":"/x"}"#).await, StatusCode::BAD_REQUEST, "bad_request");
    assert!(env["msg"].as_str().unwrap().contains("service"), "{env}");
    let env =
        assert_error(post_raw(r#"{"peer":5,"service":"1","path":"/x"}"#).await, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(env["data"]["field"], "peer");
    let env = assert_error(
        post_raw(r#"{"peer":"org-b","service":"1","path":"/x","colour":1}"#).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(env["msg"].as_str().unwrap().contains("colour"), "{env}");

    let cases = [
        (req("x", "GET", json!({})), "path"),
        (req("/x", "BREW", json!({})), "method"),
        (req("/x", "GET", json!({"nested": {"a": 1}})), "form.nested"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "headers": {"Connection": "close"}}), "headers"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "headers": {"X-Ferry-Peer": "me"}}), "headers"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "encoding": "xml"}), "encoding"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "timeout_ms": 0}), "timeout_ms"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "later"}), "mode"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "reply": true}), "reply"),
        (
            json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "async", "callback": {"url": "/cb"}}),
            "callback.url",
        ),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "file": "report.txt"}), "file"),
        (json!({"peer": "org-b", "service": "1", "path": "/x", "idempotency_key": "k".repeat(65)}), "idempotency_key"),
    ];
    for (body, field) in cases {
        let env = assert_error(p.a.request(body.clone()).await, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(env["data"]["field"], field, "{body} → {env}");
    }
    assert_error(
        p.a.request(json!({"peer": "org-z", "service": "1", "path": "/x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let huge = json!({"peer": "org-b", "service": "1", "path": "/x", "form": {"blob": "x".repeat(3 << 20)}});
    let r = client().post(p.a.url("/v1/requests")).json(&huge).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["error"], "too_large");

    assert_error(p.a.get("/v1/nothing").await, StatusCode::NOT_FOUND, "not_found");
    assert!(p.service.seen().is_empty(), "nothing bad reached the service");
}

#[tokio::test]
async fn many_concurrent_requests_share_one_connection() {
    let p = pair().await;
    let calls = (0..64).map(|i| p.a.request(req("/n", "GET", json!({"i": i}))));
    let answers = futures::future::join_all(calls).await;
    let mut ids = HashSet::new();
    for (status, env) in answers {
        assert_eq!(status, StatusCode::OK, "{env}");
        ids.insert(env["data"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 64);
    let seen = p.service.seen();
    assert_eq!(seen.len(), 64, "each request reached the service exactly once");
    let queries: HashSet<_> = seen.iter().filter_map(|s| s.query.clone()).collect();
    assert_eq!(queries.len(), 64);
    let (_, peers) = p.a.get("/v1/peers").await;
    let org_b = &peers["data"][0];
    assert_eq!(org_b["name"], "org-b");
    assert_eq!(org_b["connected"], true);
    assert!(org_b["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "{org_b}");
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again() {
    let mut p = pair().await;
    let (status, _) = p.a.request(req("/before", "GET", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    p.b.stop().await;
    p.b.start().await;
    let started = Instant::now();
    let (status, env) = p.a.request(req("/after", "GET", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let paths: Vec<_> = p.service.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/before", "/after"]);
}

#[tokio::test]
async fn a_client_whose_certificate_is_not_pinned_gets_nothing() {
    let p = pair().await;
    // org-c pins org-b, but org-b never pinned org-c.
    let mut c = Node::create(p.root.path(), "org-c");
    c.add_peer(&p.b);
    c.start().await;
    let env = assert_error(c.request(req("/x", "GET", json!({}))).await, StatusCode::BAD_GATEWAY, "peer_unreachable");
    assert!(env["msg"].as_str().unwrap().contains("org-b"), "{env}");
    assert!(p.service.seen().is_empty());
}

#[tokio::test]
async fn a_server_that_is_not_the_pinned_one_is_refused() {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut b = Node::create(root.path(), "org-b");
    let impostor = Node::create(root.path(), "impostor");
    // org-a pins the impostor's certificate under org-b's name and address.
    ferry::cli::peer::add(&a.config_path, "org-b", &[b.link.to_string()], &[impostor.cert()]).unwrap();
    b.add_peer(&a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    a.start().await;
    b.start().await;
    let env = assert_error(a.request(req("/x", "GET", json!({}))).await, StatusCode::BAD_GATEWAY, "peer_unreachable");
    assert!(env["msg"].as_str().unwrap().contains("org-b"), "{env}");
    assert!(service.seen().is_empty());
}

/// `GET /metrics` as (series, value) pairs; every line must parse.
async fn scrape(node: &support::Node) -> Vec<(String, f64)> {
    let text = support::client().get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF: {text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("unparsable line `{l}`"));
            (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("unparsable value in `{l}`")))
        })
        .collect()
}

fn value(metrics: &[(String, f64)], series: &str) -> f64 {
    metrics.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no {series} in {metrics:?}"))
}

#[tokio::test]
async fn metrics_count_exchanges_queues_and_peers() {
    let p = pair().await;
    for path in ["/a", "/b", "/status/500"] {
        let (status, _) = p.a.request(json!({"peer": "org-b", "service": "1", "path": path})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, queued) = p.a.request(json!({"peer": "org-b", "service": "1", "path": "/c", "mode": "async"})).await;
    p.a.wait_state(queued["data"]["id"].as_str().unwrap(), "success", Duration::from_secs(10)).await;

    let a = scrape(&p.a).await;
    let out = r#"ferry_sync_requests_total{peer="org-b",direction="outgoing",outcome="success"}"#;
    assert_eq!(value(&a, out), 2.0);
    assert_eq!(value(&a, &out.replace("success", "failed")), 1.0);
    assert_eq!(value(&a, r#"ferry_sync_request_duration_seconds_count{peer="org-b"}"#), 3.0);
    assert_eq!(value(&a, r#"ferry_requests{direction="outgoing",peer="org-b",state="success"}"#), 1.0);
    assert_eq!(value(&a, r#"ferry_async_request_duration_seconds_count{peer="org-b"}"#), 1.0);
    assert_eq!(value(&a, r#"ferry_peer_connected{peer="org-b"}"#), 1.0);
    assert!(value(&a, r#"ferry_peer_rtt_seconds{peer="org-b"}"#) > 0.0);

    let b = scrape(&p.b).await;
    assert_eq!(value(&b, r#"ferry_sync_requests_total{peer="org-a",direction="incoming",outcome="success"}"#), 2.0);
    assert_eq!(value(&b, r#"ferry_service_call_duration_seconds_count{service="1"}"#), 4.0);
    assert_eq!(value(&b, r#"ferry_requests{direction="incoming",peer="org-a",state="success"}"#), 1.0);
}
