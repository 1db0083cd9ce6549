//! The operator console (`GET /`): its token rules without a browser, and the page itself in a
//! real headless Chromium driven over the Chrome DevTools Protocol.
//!
//! `.ci/setup-browser` installs Debian's `chromium`; where no Chromium can be found the browser
//! test fails under CI (`CI` set, as `.ci/run` sets it) and elsewhere says so on stderr and passes
//! without running (set `CHROMIUM` to a binary to choose one).

mod support;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use support::{client, Node, Recorder};

const TOKEN: &str = "console-test-token-0123456789";
const FILE_SIZE: u64 = 400 << 20;

/// Two started nodes as in `support::pair`, but org-b requires `TOKEN` and a 2 s heartbeat.
async fn pair_with_token() -> (tempfile::TempDir, Node, Node, Recorder) {
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = support::node::two_nodes(root.path(), &service.base_url());
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    let text = text.replacen("tokens = []", &format!("tokens = [\"{TOKEN}\"]"), 1).replacen(
        "heartbeat = \"15s\"",
        "heartbeat = \"2s\"",
        1,
    );
    assert!(text.contains(TOKEN), "the config template changed; set the token another way");
    std::fs::write(&b.config_path, text).unwrap();
    a.start().await;
    b.start().await;
    (root, a, b, service)
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Opens `/v1/events` with the given subprotocols; the HTTP status of the handshake and the
/// subprotocol the node selected.
async fn events_handshake(node: &Node, protocols: &str) -> (u16, Option<String>) {
    let mut request = format!("ws://{}/v1/events", node.api).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => (
            response.status().as_u16(),
            response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (response.status().as_u16(), None),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

fn token_protocol(token: &str) -> String {
    format!("ferry, bearer.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token))
}

#[tokio::test]
async fn the_console_follows_the_api_token_rules() {
    let (_root, a, b, _service) = pair_with_token().await;
    std::fs::write(b.dir.join("outbox/report.csv"), b"a,b\n1,2\n").unwrap();

    // With tokens: the static page is served to anyone (it asks for the token) ...
    for path in ["/", "/console/app.js", "/console/app.css"] {
        let (status, body) = get(&b.url(path), &[]).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, page) = get(&b.url("/"), &[]).await;
    assert!(page.contains("content=\"2000\""), "the page carries the node's heartbeat");
    // ... but nothing the page calls answers without the token, or with a wrong one.
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/v1/health", "/v1/stats", "/v1/peers", "/v1/pending", "/v1/outbox", "/v1/audit", "/v1/audit/verify"] {
        let (status, body) = get(&b.url(path), &[]).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, _) = get(&b.url(path), &[("authorization", "Bearer console-test-token-012345678")]).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, body) = get(&b.url(path), &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let (status, _) = get(&b.url("/v1/outbox"), &[("sec-websocket-protocol", &token_protocol(TOKEN))]).await;
    assert_eq!(status, 401, "the subprotocol token counts only on /v1/events");

    // The events socket takes the token as a subprotocol, and selects `ferry`.
    assert_eq!(events_handshake(&b, "ferry").await, (401, None));
    assert_eq!(events_handshake(&b, &token_protocol("console-test-token-wrong-one")).await, (401, None));
    assert_eq!(events_handshake(&b, &token_protocol(TOKEN)).await, (101, Some("ferry".to_owned())));

    let (status, body) = get(&b.url("/v1/outbox"), &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let outbox: Value = serde_json::from_str(&body).unwrap();
    let files = outbox["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{outbox}");
    assert_eq!(files[0]["name"], "outbox/report.csv");
    assert_eq!(files[0]["size"], 8);
    let (_, body) = get(&b.url("/v1/audit/verify"), &[("authorization", &bearer)]).await;
    let verdict: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(verdict["data"]["intact"], true, "{verdict}");

    // Pages of other origins get nothing, token or not.
    let (status, body) =
        get(&b.url("/v1/stats"), &[("authorization", &bearer), ("origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    let own_origin = format!("http://{}", b.api);
    let (status, _) = get(&b.url("/v1/stats"), &[("authorization", &bearer), ("origin", &own_origin)]).await;
    assert_eq!(status, 200);

    // Without tokens (org-a): loopback callers only, and only by a loopback name, page included.
    let (status, _) = get(&a.url("/"), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = get(&a.url("/v1/outbox"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(events_handshake(&a, "ferry").await, (101, Some("ferry".to_owned())));
    for path in ["/", "/v1/outbox", "/v1/audit/verify"] {
        let (status, body) = get(&a.url(path), &[("host", &format!("rebound.example:{}", a.api.port()))]).await;
        assert_eq!(status, 403, "{path} by a rebound name: {body}");
    }
}

/// Any call to a node's API: the HTTP status and the envelope (`Null` when the body is not JSON).
async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, Value) {
    let mut r = client().request(method.parse().unwrap(), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(body) = body {
        r = r.header("content-type", "application/json").body(body.to_owned());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null))
}

/// A node `org-c` in `root` that pins `b` but is not pinned by it, started, dialing `b` until
/// `b` lists it as waiting: the started node and its fingerprint.
async fn knocking_node(root: &Path, b: &Node, bearer: &str) -> (Node, String) {
    let mut c = Node::create(root, "org-c");
    c.add_peer(b);
    c.start().await;
    let fingerprint = ferry::identity::Fingerprint::of(&ferry::identity::load_cert(&c.cert()).unwrap()).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, waiting) = call("GET", &b.url("/v1/peers/pending"), &[("authorization", bearer)], None).await;
        if waiting["data"].as_array().unwrap().iter().any(|k| k["fingerprint"] == fingerprint.as_str()) {
            return (c, fingerprint);
        }
        assert!(tokio::time::Instant::now() < deadline, "org-c never listed as waiting at org-b: {waiting}");
        // Dial again: a request to a peer that refuses the handshake.
        let _ = c.request(json!({"peer": "org-b", "service": "1", "path": "/x", "timeout_ms": 500})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The console's routes, without a browser: services viewed and changed through the config file,
/// a waiting node pinned, a request's evidence, filters and the throughput history; each with
/// hostile input (unknown ids, bad bodies, path tricks, another origin, no token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_routes_change_the_config_and_refuse_hostile_input() {
    let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (root, a, b, _service) = pair_with_token().await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let config = || std::fs::read_to_string(&b.config_path).unwrap();
    let patch = |path: &str, body: &str| {
        let (url, body) = (b.url(path), body.to_owned());
        let bearer = bearer.clone();
        async move { call("PATCH", &url, &[("authorization", &bearer)], Some(&body)).await }
    };
    let sync = || a.request(json!({"peer": "org-b", "service": "1", "path": "/ok", "timeout_ms": 10000}));

    // Services: the table in force, and who may call each.
    let (status, env) = call("GET", &b.url("/v1/services"), &auth, None).await;
    assert_eq!(status, 200, "{env}");
    let one = &env["data"][0];
    assert_eq!((&one["id"], &one["state"]), (&json!("1"), &json!("active")), "{env}");
    assert_eq!((&one["allow"], &one["callers"]), (&json!(["org-a"]), &json!(["org-a"])), "{env}");

    // Disabled through the API: written to the file, reloaded, refused to org-a as unavailable.
    let (status, env) = patch("/v1/services/1", r#"{"state": "disabled"}"#).await;
    assert_eq!(status, 200, "{env}");
    assert!(env["data"]["change"].as_str().unwrap().contains("state disabled (was active)"), "{env}");
    assert!(env["data"]["summary"].is_string(), "{env}");
    assert!(config().contains("state = \"disabled\""), "{}", config());
    let (_, env) = call("GET", &b.url("/v1/services"), &auth, None).await;
    assert_eq!(env["data"][0]["state"], "disabled");
    let (status, env) = sync().await;
    assert_eq!((status.as_u16(), &env["data"]["error"]), (503, &json!("unavailable")), "{env}");
    // `enabled` is taken for `active`, as by `ferry service set`.
    let (status, env) = patch("/v1/services/1", r#"{"state": "enabled"}"#).await;
    assert_eq!(status, 200, "{env}");
    let (status, env) = sync().await;
    assert_eq!(status.as_u16(), 200, "{env}");
    // The allow list: nobody, then every peer, then org-a again.
    let (status, env) = patch("/v1/services/1", r#"{"allow": []}"#).await;
    assert_eq!(status, 200, "{env}");
    let (_, env) = call("GET", &b.url("/v1/services"), &auth, None).await;
    assert_eq!(env["data"][0]["callers"], json!([]), "{env}");
    let (status, env) = sync().await;
    assert_eq!((status.as_u16(), &env["data"]["error"]), (403, &json!("forbidden")), "{env}");
    let (status, env) = patch("/v1/services/1", r#"{"allow": ["*"]}"#).await;
    assert_eq!(status, 200, "{env}");
    let (_, env) = call("GET", &b.url("/v1/services"), &auth, None).await;
    assert_eq!((&env["data"][0]["allow"], &env["data"][0]["callers"]), (&json!(["*"]), &json!(["org-a"])));
    let (status, env) = patch("/v1/services/1", r#"{"allow": ["org-a"], "state": "active"}"#).await;
    assert_eq!(status, 200, "{env}");
    let (status, env) = patch("/v1/services/1", r#"{"allow": ["org-a"]}"#).await;
    assert!(status == 200 && env["data"]["change"].as_str().unwrap().contains("nothing changed"), "{env}");

    // Refused edits leave the file as it was.
    let before = config();
    for (path, body, want, field) in [
        ("/v1/services/9", r#"{"state": "disabled"}"#, 404, None),
        ("/v1/services/..%2F..%2Fetc%2Fpasswd", r#"{"state": "disabled"}"#, 404, None),
        ("/v1/services/1%0A", r#"{"state": "disabled"}"#, 404, None),
        ("/v1/services/1", r#"{"state": "paused"}"#, 400, Some("state")),
        ("/v1/services/1", r#"{"allow": ["org-z"]}"#, 400, Some("allow")),
        ("/v1/services/1", r#"{"allow": "org-a"}"#, 400, Some("allow")),
        ("/v1/services/1", r#"{"base_url": "http://x\n[node]"}"#, 400, Some("base_url")),
        ("/v1/services/1", r#"{"base_url": "ftp://files.example/"}"#, 400, None),
        ("/v1/services/1", r#"{"colour": "red"}"#, 400, Some("colour")),
        ("/v1/services/1", r#"{}"#, 400, None),
        ("/v1/services/1", r#"state=disabled"#, 400, None),
        ("/v1/services/1", r#"["disabled"]"#, 400, None),
    ] {
        let (status, env) = patch(path, body).await;
        assert_eq!(status, want, "{path} {body}: {env}");
        if let Some(field) = field {
            assert_eq!(env["data"]["field"], field, "{path} {body}: {env}");
        }
        assert_eq!(config(), before, "{path} {body} changed the config");
    }
    let (_, env) = patch("/v1/services/9", r#"{"state": "disabled"}"#).await;
    assert!(env["msg"].as_str().unwrap().contains("the configured services: 1"), "{env}");
    // No token, another origin: refused, nothing written.
    let url = b.url("/v1/services/1");
    let (status, _) = call("PATCH", &url, &[], Some(r#"{"state": "disabled"}"#)).await;
    assert_eq!(status, 401);
    let evil = [("authorization", bearer.as_str()), ("origin", "http://evil.example")];
    let (status, _) = call("PATCH", &url, &evil, Some(r#"{"state": "disabled"}"#)).await;
    assert_eq!(status, 403);
    let (status, _) = call("GET", &b.url("/v1/services"), &[], None).await;
    assert_eq!(status, 401);
    assert_eq!(config(), before);

    // A config the node cannot write: 500, saying what to do, and nothing changed.
    let tmp = b.config_path.with_extension("toml.tmp");
    std::fs::create_dir(&tmp).unwrap(); // in the way of the new file
    let (status, env) = patch("/v1/services/1", r#"{"state": "disabled"}"#).await;
    assert_eq!(status, 500, "{env}");
    assert!(env["msg"].as_str().unwrap().contains("cannot write"), "{env}");
    std::fs::remove_dir(&tmp).unwrap();
    assert_eq!(config(), before);
    if !running_as_root() {
        let dir = b.config_path.parent().unwrap().to_owned();
        let mode = std::fs::metadata(&dir).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        let (status, env) = patch("/v1/services/1", r#"{"state": "disabled"}"#).await;
        std::fs::set_permissions(&dir, mode).unwrap();
        assert_eq!(status, 500, "{env}");
        let msg = env["msg"].as_str().unwrap();
        assert!(msg.contains("Permission denied") && msg.contains("ReadWritePaths"), "{env}");
        assert_eq!(config(), before);
    }

    // A waiting node, pinned from the API with the code of `ferry peer accept`.
    let (_c, fingerprint) = knocking_node(root.path(), &b, &bearer).await;
    let accept = |body: Value| {
        let (url, bearer) = (b.url("/v1/peers/pending/accept"), bearer.clone());
        async move { call("POST", &url, &[("authorization", &bearer)], Some(&body.to_string())).await }
    };
    let prefix = &fingerprint[..7 + 16];
    for (body, want, field) in [
        (json!({"name": "org-c", "fingerprint": "sha256:00000000"}), 404, Some("fingerprint")),
        (json!({"name": "org-c", "fingerprint": "ab"}), 400, Some("fingerprint")),
        (json!({"name": "org-c", "fingerprint": "not hex at all"}), 400, Some("fingerprint")),
        (json!({"name": "../../etc/x", "fingerprint": prefix}), 400, Some("name")),
        (json!({"name": "org-c\n[node]", "fingerprint": prefix}), 400, Some("name")),
        (json!({"name": "org-a", "fingerprint": prefix}), 400, Some("name")),
        (json!({"name": "org-c", "fingerprint": prefix, "address": "no port"}), 400, Some("address")),
        (json!({"fingerprint": prefix}), 400, None),
        (json!({"name": "org-c", "fingerprint": prefix, "trust": true}), 400, Some("trust")),
    ] {
        let (status, env) = accept(body.clone()).await;
        assert_eq!(status, want, "{body}: {env}");
        assert_eq!(env["data"]["field"].as_str(), field, "{body}: {env}");
        assert_eq!(config(), before, "{body} changed the config");
    }
    let accept_url = b.url("/v1/peers/pending/accept");
    let (status, _) =
        call("POST", &accept_url, &evil, Some(&json!({"name": "org-c", "fingerprint": prefix}).to_string())).await;
    assert_eq!(status, 403);
    let (status, _) =
        call("POST", &accept_url, &[], Some(&json!({"name": "org-c", "fingerprint": prefix}).to_string())).await;
    assert_eq!(status, 401);
    let (status, env) = accept(json!({"name": "org-c", "fingerprint": prefix})).await;
    assert_eq!(status, 200, "{env}");
    assert_eq!((&env["data"]["name"], &env["data"]["fingerprint"]), (&json!("org-c"), &json!(fingerprint)), "{env}");
    assert!(env["data"]["summary"].as_str().unwrap().contains("org-c"), "{env}");
    assert!(config().contains("name = \"org-c\""), "{}", config());
    assert!(b.dir.join("certs/peers/org-c.pem").is_file());
    let (_, peers) = call("GET", &b.url("/v1/peers"), &auth, None).await;
    assert!(peers["data"].as_array().unwrap().iter().any(|p| p["name"] == "org-c"), "{peers}");
    let (_, waiting) = call("GET", &b.url("/v1/peers/pending"), &auth, None).await;
    assert_eq!(waiting["data"], json!([]), "no longer waiting");
    let (status, _) = accept(json!({"name": "org-d", "fingerprint": prefix})).await;
    assert_eq!(status, 404, "pinned: no longer waiting");

    // Requests: filtered by service and by text in the id or idempotency key, past the first page.
    let mut ids = Vec::new();
    for key in ["key-alpha", "key-beta", "key-gamma"] {
        let (status, env) = a
            .request(json!({"peer": "org-b", "service": "1", "path": "/ok", "mode": "async", "idempotency_key": key}))
            .await;
        assert_eq!(status.as_u16(), 202, "{env}");
        ids.push(env["data"]["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(a.wait_state(id, "success", secs(30)).await["state"], "success");
    }
    let listed = |query: &str| {
        let url = a.url(&format!("/v1/requests?{query}"));
        let query = query.to_owned();
        async move {
            let (status, env) = call("GET", &url, &[], None).await;
            assert_eq!(status, 200, "{query}: {env}");
            let ids: Vec<String> =
                env["data"]["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
            (ids, env["data"]["next"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(listed("q=alpha").await.0, [ids[0].clone()]);
    assert_eq!(listed("q=key-").await.0.len(), 3);
    let tail = &ids[1][ids[1].len() - 12..];
    assert_eq!(listed(&format!("q={tail}")).await.0, [ids[1].clone()], "by a part of the id");
    assert_eq!(listed("service=1&peer=org-b&direction=outgoing&state=success").await.0.len(), 3);
    assert_eq!(listed("service=9").await.0.len(), 0);
    assert_eq!(listed("service=&q=&peer=").await.0.len(), 3, "empty values filter nothing");
    let (first, next) = listed("service=1&q=key-&limit=2").await;
    assert_eq!(first, [ids[2].clone(), ids[1].clone()]);
    let (second, next) = listed(&format!("service=1&q=key-&limit=2&before={}", next.unwrap())).await;
    assert_eq!((second, next), (vec![ids[0].clone()], None), "the next page keeps the filters");
    for query in [format!("q={}", "x".repeat(257)), "colour=red".into(), "direction=sideways".into()] {
        let (status, env) = call("GET", &a.url(&format!("/v1/requests?{query}")), &[], None).await;
        assert_eq!(status, 400, "{query}: {env}");
    }

    // A request's evidence: its records with seq, kind and hash; unknown ids are 404.
    let (status, env) = call("GET", &a.url(&format!("/v1/requests/{}/evidence", ids[0])), &[], None).await;
    assert_eq!(status, 200, "{env}");
    let records = env["data"]["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["event"] == "request" && r["id"] == ids[0].as_str()), "{env}");
    assert!(records.iter().all(|r| r["seq"].as_i64().unwrap() > 0 && r["hash"].as_str().unwrap().len() == 64));
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in log order: {seqs:?}");
    for path in
        ["/v1/requests/no-such-id/evidence", "/v1/requests/..%2F..%2Fferry.db/evidence", "/v1/requests/%00/evidence"]
    {
        let (status, env) = call("GET", &a.url(path), &[], None).await;
        assert_eq!((status, &env["data"]["error"]), (404, &json!("not_found")), "{path}: {env}");
    }
    let (status, _) = call("GET", &b.url(&format!("/v1/requests/{}/evidence", ids[0])), &[], None).await;
    assert_eq!(status, 401);

    // The throughput history: points only over intervals the node measured, both ends.
    let deadline = tokio::time::Instant::now() + secs(40);
    let points = loop {
        let (status, env) = call("GET", &a.url("/v1/stats/history"), &[], None).await;
        assert_eq!(status, 200, "{env}");
        assert_eq!((&env["data"]["every_s"], &env["data"]["kept_s"]), (&json!(10), &json!(86400)), "{env}");
        let points = env["data"]["points"].as_array().unwrap().clone();
        if points.iter().map(|p| p["requests"].as_u64().unwrap()).sum::<u64>() >= 3 {
            break points;
        }
        assert!(tokio::time::Instant::now() < deadline, "no point counted the requests: {env}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for p in &points {
        let begun = p["at_ms"].as_i64().unwrap() - (p["seconds"].as_f64().unwrap() * 1000.0) as i64;
        assert!(begun >= started_ms - 1000, "a point before the node ran: {p}");
        assert!(p["seconds"].as_f64().unwrap() > 0.0, "{p}");
    }
    let last = points.last().unwrap()["at_ms"].as_i64().unwrap();
    let (_, env) = call("GET", &a.url(&format!("/v1/stats/history?since={last}")), &[], None).await;
    assert_eq!(env["data"]["points"], json!([]), "nothing after the last point yet: {env}");
    for query in ["since=yesterday", "since=1&colour=red"] {
        let (status, _) = call("GET", &a.url(&format!("/v1/stats/history?{query}")), &[], None).await;
        assert_eq!(status, 400, "{query}");
    }
}

// ---- a small Chrome DevTools Protocol client ---------------------------------------------------

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page, driven over the DevTools Protocol; killed on drop.
struct Browser {
    child: std::process::Child,
    socket: Socket,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Whether the tests run under CI (`CI` set, as CI services and `.ci/run` set it), where a test
/// that cannot run fails instead of skipping.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl Browser {
    async fn launch(exe: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(exe);
        command.args([
            "--headless",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1400,2000",
        ]);
        command.arg(format!("--user-data-dir={}", profile.path().display()));
        if running_as_root() {
            command.arg("--no-sandbox");
        }
        command.arg("about:blank").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("Chromium prints its DevTools address within 30 s");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let mut browser = Browser { child, socket, next_id: 0, session: String::new(), _profile: profile };
        let target = browser.send("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached =
            browser.send("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1400, "height": 2000, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// A browser-level command.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.command(None, method, params).await
    }

    /// A command to the page.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(session), method, params).await
    }

    async fn command(&mut self, session: Option<String>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.socket.send(Message::Text(message.to_string().into())).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(frame) = self.socket.next().await {
                if let Message::Text(text) = frame.unwrap() {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                }
            }
            panic!("the browser closed its DevTools socket");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        if !answer["error"].is_null() {
            panic!("{method}: {}", answer["error"]);
        }
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expression}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; its value.
    async fn wait_for(&mut self, expression: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.eval(expression).await;
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("waited {within:?} for `{expression}`; the page shows:\n{}", text.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the middle of the element `selector` with the mouse, as a person would.
    async fn click(&mut self, selector: &str) {
        let expression = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             if (r.width === 0 || r.height === 0) return null; /* not shown (yet) */ \
             return [r.x + r.width / 2, r.y + r.height / 2, e.disabled === true]; }})()"
        );
        let at = self.wait_for(&expression, Duration::from_secs(10)).await;
        assert_eq!(at[2], false, "{selector} is disabled");
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
            )
            .await;
        }
    }

    /// Types `text` into the focused element.
    async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the page in a browser ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(exe) = find_chromium() else {
        let why = "no Chromium on PATH (run .ci/setup-browser, or set CHROMIUM to a Chromium binary)";
        assert!(!support::in_ci(), "the browser test cannot run under CI: {why}");
        // Written past the test harness's capture, so that the skip is seen.
        let _ = writeln!(std::io::stderr(), "SKIPPED the_console_in_a_real_browser: {why}");
        return;
    };
    tokio::time::timeout(Duration::from_secs(240), drive(&exe)).await.expect("the browser test ends within 4 minutes");
}

async fn drive(exe: &Path) {
    let (_root, a, b, service) = pair_with_token().await;
    let big = b.dir.join("outbox/export-2026-10.bin");
    std::fs::File::create(&big).unwrap().set_len(FILE_SIZE).unwrap();
    std::fs::write(b.dir.join("outbox/notes.txt"), b"nothing to see").unwrap();

    let mut browser = Browser::launch(exe).await;
    // From the first byte of every page: a shown console never has an empty table, and never says
    // "offline" unless it asks for a token.
    browser.call("Page.addScriptToEvaluateOnNewDocument", json!({"source": PAINT_WATCH})).await;
    browser.call("Page.navigate", json!({"url": b.url("/")})).await;

    // The node requires a token: the page asks for it, and shows nothing before.
    browser.wait_for("document.querySelector('#login') && !document.querySelector('#login').hidden", secs(15)).await;
    assert_eq!(browser.eval("document.querySelector('#console').hidden").await, true);
    browser.click("#token").await;
    browser.type_text(TOKEN).await;
    browser.click("#connect").await;
    browser.wait_for("document.querySelector('#live').textContent === 'live'", secs(15)).await;
    browser.wait_for("document.querySelector('#peers tr[data-peer=\"org-a\"]') !== null", secs(10)).await;
    browser.wait_for("document.querySelector('#verify').dataset.intact === 'true'", secs(10)).await;
    assert_eq!(browser.eval("window.paintProblems").await, json!([]), "the first paint");
    // The members panel shows on a shared store (this node, alive), and not on SQLite.
    match support::postgres::wanted() {
        true => {
            let alive = "document.querySelector('#members tr td .badge')?.textContent === 'alive'";
            browser.wait_for(alive, secs(10)).await;
            let member = browser.eval("document.querySelector('#members tr td').textContent").await;
            assert!(member.as_str().unwrap_or_default().ends_with("(this one)"), "{member}");
        }
        false => assert_eq!(browser.eval("document.querySelector('#members-section').hidden").await, true),
    }

    // Services: who may call them, and a state changed by clicking, written to the config file.
    let row = "#services tr[data-service=\"1\"]";
    let callers = browser.wait_for(&format!("document.querySelector('{row} td.callers')?.textContent"), secs(10)).await;
    assert_eq!(callers, "org-a");
    browser.click(&format!("{row} button.edit")).await;
    browser
        .eval(&format!(
            "(() => {{ const s = document.querySelector('{row} select.state'); s.value = 'disabled'; \
             s.dispatchEvent(new Event('change')); return true; }})()"
        ))
        .await;
    browser.click(&format!("{row} button.save")).await;
    browser.wait_for(&format!("document.querySelector('{row} .badge')?.textContent === 'disabled'"), secs(15)).await;
    let said = browser.eval(&format!("document.querySelector('{row} .status').textContent")).await;
    assert!(said.as_str().unwrap().contains("state disabled (was active)"), "{said}");
    let config = std::fs::read_to_string(&b.config_path).unwrap();
    assert!(config.contains("state = \"disabled\""), "{config}");
    let (status, refused) = a.request(json!({"peer": "org-b", "service": "1", "path": "/ok"})).await;
    assert_eq!(status.as_u16(), 503, "{refused}");
    browser.click(&format!("{row} button.edit")).await;
    browser
        .eval(&format!(
            "(() => {{ const s = document.querySelector('{row} select.state'); s.value = 'active'; return true; }})()"
        ))
        .await;
    browser.click(&format!("{row} button.save")).await;
    browser.wait_for(&format!("document.querySelector('{row} .badge')?.textContent === 'active'"), secs(15)).await;

    // A node that dials unpinned is listed; accepting it asks for a name and its fingerprint as
    // its admin reads it, and pins it only when they match.
    let bearer = format!("Bearer {TOKEN}");
    let (_c, fingerprint) = knocking_node(_root.path(), &b, &bearer).await;
    let knock = format!("#pending-peers tr[data-fingerprint=\"{fingerprint}\"]");
    browser.wait_for(&format!("document.querySelector('{knock}') !== null"), secs(20)).await;
    browser.click(&format!("{knock} button.accept")).await;
    browser.click(&format!("{knock} input.name")).await;
    browser.type_text("org-c").await;
    browser.click(&format!("{knock} input.confirm")).await;
    browser.type_text("sha256:00000000").await;
    assert_eq!(browser.eval(&format!("document.querySelector('{knock} button.pin').disabled")).await, true);
    browser
        .eval(&format!(
            "(() => {{ const i = document.querySelector('{knock} input.confirm'); i.value = ''; \
             i.dispatchEvent(new Event('input')); return true; }})()"
        ))
        .await;
    browser.click(&format!("{knock} input.confirm")).await;
    browser.type_text(&fingerprint[7..7 + 16]).await;
    browser.click(&format!("{knock} button.pin")).await;
    let pinned = browser
        .wait_for(
            "[...document.querySelectorAll('#pending-peers .status')].map(s => s.textContent).find(t => t.startsWith('pinned as'))",
            secs(15),
        )
        .await;
    assert!(pinned.as_str().unwrap().starts_with("pinned as org-c"), "{pinned}");
    assert!(std::fs::read_to_string(&b.config_path).unwrap().contains("name = \"org-c\""));
    browser.wait_for("document.querySelector('#peers tr[data-peer=\"org-c\"]') !== null", secs(15)).await;

    // A host at org-a asks for three downloads that wait for approval, and one call that fails
    // (its result goes to a callback that fails too).
    let ask = |path: &str| {
        json!({"peer": "org-b", "service": "1", "path": path, "mode": "async", "reply": true,
               "form": {"month": "2026-10"}})
    };
    let (status, export) = a.request(ask("/export")).await;
    assert_eq!(status, 202, "{export}");
    let export_id = export["data"]["id"].as_str().unwrap().to_owned();
    let (_, old) = a.request(ask("/export-old")).await;
    let old_id = old["data"]["id"].as_str().unwrap().to_owned();
    let (_, data) = a.request(ask("/export-data")).await;
    let data_id = data["data"]["id"].as_str().unwrap().to_owned();
    let callback = format!("{}/status/500", service.base_url());
    let (_, failing) = a
        .request(json!({"peer": "org-b", "service": "1", "path": "/status/500", "mode": "async",
                        "callback": {"url": callback}}))
        .await;
    let failing_id = failing["data"]["id"].as_str().unwrap().to_owned();
    service.wait_for(4, secs(15)).await;

    // Both show up as pending approvals, live.
    let row = |path: &str| {
        format!("[...document.querySelectorAll('#pending tr[data-callback]')].find(r => r.cells[2].innerText === 'POST {path}')")
    };
    let export_cb = browser.wait_for(&format!("({})?.dataset.callback", row("/export")), secs(15)).await;
    let old_cb = browser.wait_for(&format!("({})?.dataset.callback", row("/export-old")), secs(15)).await;
    let data_cb = browser.wait_for(&format!("({})?.dataset.callback", row("/export-data")), secs(15)).await;
    let (export_cb, old_cb) = (export_cb.as_str().unwrap().to_owned(), old_cb.as_str().unwrap().to_owned());

    // Reply to one with JSON data, typed and clicked.
    let data_row = format!("#pending tr[data-callback=\"{}\"]", data_cb.as_str().unwrap());
    browser.click(&format!("{data_row} input.data")).await;
    browser.type_text(r#"{"rows": [1, 2]}"#).await;
    browser.click(&format!("{data_row} button.reply-data")).await;
    let replied = a.wait_state(&data_id, "success", secs(30)).await;
    assert_eq!(replied["replies"][0]["data"], json!({"rows": [1, 2]}), "{replied}");

    // Watch every value the progress bars take, every state the in-flight rows show, and every
    // count of transfers active.
    browser
        .eval(
            "window.progressSeen = []; window.statesSeen = []; window.activeSeen = []; \
             const note = (list, v) => { if (!list.includes(v)) list.push(v); }; \
             new MutationObserver(() => { \
               for (const b of document.querySelectorAll('#inflight .bar')) note(window.progressSeen, Number(b.dataset.done)); \
               for (const b of document.querySelectorAll('#inflight .badge')) note(window.statesSeen, b.textContent); \
             }).observe(document.querySelector('#inflight'), {subtree: true, childList: true, attributes: true, characterData: true}); \
             new MutationObserver(() => { \
               const m = /transfers active: (\\d+)/.exec(document.querySelector('#queues-extra').textContent); \
               if (m) note(window.activeSeen, Number(m[1])); \
             }).observe(document.querySelector('#queues-extra'), {subtree: true, childList: true, characterData: true}); true",
        )
        .await;

    // Approve the export with the big file, by choosing it and clicking.
    let export_row = format!("#pending tr[data-callback=\"{export_cb}\"]");
    let chosen = browser
        .eval(&format!(
            "(() => {{ const s = document.querySelector('{export_row} select'); \
             const o = [...s.options].find(o => o.value.endsWith('/export-2026-10.bin')); if (!o) return null; \
             s.value = o.value; s.dispatchEvent(new Event('change')); return o.textContent; }})()"
        ))
        .await;
    assert_eq!(chosen, "outbox/export-2026-10.bin (400 MiB)", "the outbox lists the file");
    browser.click(&format!("{export_row} button.approve")).await;

    // The transfer's bar moves: values between 0 and the whole, then the whole.
    browser.wait_for(&format!("window.progressSeen.some(d => d > 0 && d < {FILE_SIZE})"), secs(60)).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_owned();
    browser.screenshot(&shots.join("console-transfer.png")).await;
    browser.wait_for(&format!("window.progressSeen.includes({FILE_SIZE})"), secs(120)).await;
    let seen = browser.eval("window.progressSeen").await;
    let moving = seen.as_array().unwrap().iter().filter(|d| d.as_u64().is_some_and(|d| d > 0 && d < FILE_SIZE));
    assert!(moving.count() >= 1, "the bar showed the transfer under way: {seen}");
    // The count comes from the node (`/v1/stats`): 1 while the reply's file moved, 0 after.
    browser.wait_for("window.activeSeen.includes(1)", secs(10)).await;
    browser
        .wait_for("document.querySelector('#queues-extra').textContent.endsWith('transfers active: 0')", secs(30))
        .await;

    // Reject the other one with a reason, typed and clicked.
    browser.click(&format!("#pending tr[data-callback=\"{old_cb}\"] input.reason")).await;
    browser.type_text("not this month").await;
    browser.click(&format!("#pending tr[data-callback=\"{old_cb}\"] button.reject")).await;

    // What the host at org-a sees: the file, verified, and the rejection.
    let done = a.wait_state(&export_id, "success", secs(120)).await;
    assert_eq!(done["state"], "success", "{done}");
    let file = done["replies"][0]["file"].as_str().expect("the reply carries the file");
    assert_eq!(std::fs::metadata(file).unwrap().len(), FILE_SIZE);
    let rejected = a.wait_state(&old_id, "failed", secs(30)).await;
    assert_eq!(rejected["error"], "not this month", "{rejected}");
    let failed = a.wait_state(&failing_id, "failed", secs(30)).await;
    assert_eq!(failed["state"], "failed");

    // The page follows: nothing pending, failures with their error, queues, the log verified.
    browser.wait_for("document.querySelectorAll('#pending tr[data-callback]').length === 0", secs(15)).await;
    browser.wait_for("document.querySelector('#failures').innerText.includes('not this month')", secs(15)).await;
    browser
        .wait_for(
            "Number(document.querySelector('#queues tr[data-direction=\"incoming\"] td[data-state=\"success\"]')\
             .textContent) >= 1",
            secs(15),
        )
        .await;
    browser
        .wait_for(
            "document.querySelector('#verify').dataset.intact === 'true' && \
             /receipts/.test(document.querySelector('#verify').textContent)",
            secs(15),
        )
        .await;
    browser.wait_for("document.querySelectorAll('#evidence tr[data-seq]').length > 3", secs(15)).await;
    // Times are whole: date, time to the second, and time zone.
    let time = browser.eval("document.querySelector('#evidence tr[data-seq]').cells[1].innerText").await;
    let time = time.as_str().unwrap_or_default().to_owned();
    let whole =
        time.len() >= 20 && time.as_bytes()[4] == b'-' && time.as_bytes()[10] == b' ' && time.as_bytes()[19] == b' ';
    assert!(whole && time[..4].parse::<u32>().is_ok(), "not a whole time with its zone: {time:?}");
    // Every state the in-flight rows showed is one of the API's names, the moving file's too.
    let states = browser.eval("window.statesSeen").await;
    let names = ["waiting", "doing", "success", "failed"];
    assert!(states.as_array().unwrap().iter().all(|s| names.contains(&s.as_str().unwrap())), "{states}");
    assert!(
        states.as_array().unwrap().iter().any(|s| s == "success"),
        "the approved request while its file moved: {states}"
    );
    browser.wait_for("document.querySelector('#live').textContent === 'live'", secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a chart tick after the transfer

    let shot = shots.join("console.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot at {}", shot.display());
    let _ = writeln!(std::io::stderr(), "console screenshot: {}", shot.display());
    // The chart draws what the node measured (every 10 s): the four requests and the file.
    let charted = format!(
        "Number(document.querySelector('#chart').dataset.requests) >= 4 && \
         Number(document.querySelector('#chart').dataset.bytes) >= {}",
        FILE_SIZE / 2
    );
    browser.wait_for(&charted, secs(45)).await;
    let before = browser.eval("document.querySelector('#chart').dataset.requests").await;

    // Requests, filtered by the node: by text in the id, by state; then one in detail.
    let tail = &export_id[export_id.len() - 10..];
    browser.click("#f-q").await;
    browser.type_text(tail).await;
    browser
        .wait_for(
            &format!(
                "document.querySelector('#requests').dataset.count === '1' && \
                 document.querySelector('#requests tr[data-id=\"{export_id}\"]') !== null"
            ),
            secs(10),
        )
        .await;
    browser
        .eval("(() => { const s = document.querySelector('#f-state'); s.value = 'failed'; s.dispatchEvent(new Event('change')); return true; })()")
        .await;
    browser.wait_for("document.querySelector('#requests').dataset.count === '0'", secs(10)).await;
    browser.click("#f-clear").await;
    browser
        .eval("(() => { const s = document.querySelector('#f-state'); s.value = 'failed'; s.dispatchEvent(new Event('change')); return true; })()")
        .await;
    browser.wait_for("document.querySelector('#requests').dataset.count === '2'", secs(10)).await;
    browser.click("#f-clear").await;
    browser
        .wait_for(&format!("document.querySelector('#requests tr[data-id=\"{export_id}\"] a.open')"), secs(10))
        .await;
    browser.click(&format!("#requests tr[data-id=\"{export_id}\"] a.open")).await;
    browser
        .wait_for(
            &format!("document.querySelector('#detail').dataset.id === '{export_id}' && document.querySelector('#detail').dataset.loaded"),
            secs(10),
        )
        .await;
    browser.wait_for("document.querySelector('#detail-replies tr[data-seq=\"1\"]') !== null", secs(10)).await;
    let file = browser.eval("document.querySelector('#detail-transfer').innerText").await;
    let file = file.as_str().unwrap_or_default();
    assert!(file.contains("export-2026-10.bin") && file.contains("400 MiB"), "{file}");
    let sha = browser.eval("document.querySelector('#detail-transfer code.sha256').textContent").await;
    assert!(sha.as_str().unwrap().len() == 64 && sha.as_str().unwrap().chars().all(|c| c.is_ascii_hexdigit()), "{sha}");
    let kinds = browser
        .wait_for(
            "(() => { const k = [...document.querySelectorAll('#detail-evidence tr[data-seq]')].map(r => r.cells[2].textContent); \
             return k.includes('request') && (k.includes('reply') || k.includes('file')) && k.includes('receipt') ? k : null; })()",
            secs(10),
        )
        .await;
    let hash = browser.eval("document.querySelector('#detail-evidence tr[data-seq] code.hash').title").await;
    assert_eq!(hash.as_str().unwrap().len(), 64, "{kinds}");

    // Opened again in the same tab: the token is kept for the tab, the page shows nothing empty or
    // "offline" before its data, and the chart shows at once what the node measured before.
    let (_, stats) = call("GET", &b.url("/v1/stats"), &[("authorization", &bearer)], None).await;
    assert!(stats["data"].is_object());
    browser.call("Page.reload", json!({})).await;
    browser.wait_for("document.readyState === 'complete'", secs(15)).await;
    browser.screenshot(&shots.join("console-load.png")).await;
    browser
        .wait_for("document.querySelector('#console') && !document.querySelector('#console').hidden", secs(15))
        .await;
    assert_eq!(browser.eval("document.querySelector('#login').hidden").await, true);
    let again = browser.eval("document.querySelector('#chart').dataset.requests").await;
    assert!(
        again.as_str().unwrap().parse::<u64>().unwrap() >= before.as_str().unwrap().parse::<u64>().unwrap(),
        "{again}"
    );
    browser.wait_for("document.querySelector('#live')?.textContent === 'live'", secs(15)).await;
    assert_eq!(browser.eval("window.paintProblems").await, json!([]), "after a reload");

    // org-a's console (no tokens there, loopback): the failing request's callback attempts, each
    // with its time, the status the host answered and the error.
    browser.call("Page.navigate", json!({"url": a.url("/")})).await;
    let link = format!("#requests tr[data-id=\"{failing_id}\"] a.open");
    // The panels fill before they show: click once they do.
    browser
        .wait_for("document.querySelector('#console') && !document.querySelector('#console').hidden", secs(15))
        .await;
    browser.wait_for(&format!("document.querySelector('{link}') !== null"), secs(15)).await;
    browser.click(&link).await;
    let attempt = browser
        .wait_for(
            "(() => { const r = document.querySelector('#detail-attempts tr[data-seq]'); \
             return r ? [r.cells[0].textContent, r.cells[2].textContent, r.cells[3].textContent] : null; })()",
            secs(20),
        )
        .await;
    assert_eq!(attempt[1], "500", "{attempt}");
    assert!(attempt[2].as_str().unwrap().contains("answered HTTP 500"), "{attempt}");
    assert!(attempt[0].as_str().unwrap().len() >= 20, "a whole time: {attempt}");
    let callback = browser.eval("document.querySelector('#detail-callback').textContent").await;
    assert!(callback.as_str().unwrap().contains("not delivered yet"), "{callback}");
    assert_eq!(browser.eval("window.paintProblems").await, json!([]), "org-a's console");
    browser.screenshot(&shots.join("console-detail.png")).await;
}

/// Notes, from a page's first byte, every moment its console shows an empty table or says
/// "offline" while it does not ask for a token (`window.paintProblems`).
const PAINT_WATCH: &str = "window.paintProblems = []; (() => { \
  const note = (p) => { if (!window.paintProblems.includes(p)) window.paintProblems.push(p); }; \
  const check = () => { \
    const live = document.getElementById('live'), main = document.getElementById('console'), \
      login = document.getElementById('login'); \
    if (!live || !main || !login) return; \
    if (login.hidden && live.textContent.trim() === 'offline') note('offline shown'); \
    if (main.hidden) return; \
    for (const id of ['peers', 'queues', 'services', 'pending-peers', 'requests', 'inflight', 'pending', 'failures', 'evidence']) { \
      const body = document.querySelector('#' + id + ' tbody'); \
      if (!body || body.children.length === 0) note('empty #' + id); \
    } \
  }; \
  new MutationObserver(check).observe(document, {subtree: true, childList: true, attributes: true, characterData: true}); \
})();";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
