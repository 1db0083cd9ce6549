//! Trust: idempotency keys, duplicate windows, the evidence log and its receipts, masked fields.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Pair, Recorder};

const WITHIN: Duration = Duration::from_secs(15);

/// Every log line of the nodes in this test binary, at every level, for the masked-field checks.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace,quinn=info,quinn_proto=info,rustls=info,h2=info,hyper=info,reqwest=info")
            .with_writer(move || Sink(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pair whose org-b service "1" has the given extra settings (TOML key = value lines).
async fn pair_with(settings: &[(&str, &str)]) -> Pair {
    pair_set_up(settings, |_| {}).await
}

/// [`pair_with`], with `set_up` done to org-b before the nodes start.
async fn pair_set_up(settings: &[(&str, &str)], set_up: impl FnOnce(&support::Node)) -> Pair {
    logs();
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = support::Node::create(root.path(), "org-a");
    let mut b = support::Node::create(root.path(), "org-b");
    a.add_peer(&b);
    b.add_peer(&a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    let table = doc["service"].as_array_of_tables_mut().unwrap().get_mut(0).unwrap();
    for (key, value) in settings {
        table[*key] = toml_edit::value(value.parse::<toml_edit::Value>().unwrap());
    }
    std::fs::write(&b.config_path, doc.to_string()).unwrap();
    set_up(&b);
    a.start().await;
    b.start().await;
    Pair { root, a, b, service }
}

fn keyed(key: &str, path: &str) -> Value {
    json!({"peer": "org-b", "service": "1", "path": path, "form": {"n": 1}, "idempotency_key": key})
}

fn database(node: &support::Node) -> rusqlite::Connection {
    rusqlite::Connection::open(node.dir.join("data/ferry.db")).unwrap()
}

#[tokio::test]
async fn a_replayed_key_is_answered_from_the_store_within_its_ttl_and_called_again_after() {
    let p = pair_with(&[("idempotency_ttl", "\"2s\"")]).await;
    let (status, first) = p.a.request(keyed("k-1", "/echo")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = p.a.request(keyed("k-1", "/echo")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["data"]["id"], first["data"]["id"], "the first request's id");
    assert_eq!(again["data"]["body"], first["data"]["body"], "the first request's result");
    assert_eq!(again["data"]["replayed"], true);
    assert_eq!(p.service.seen().len(), 1, "the service is not called again");

    let (status, other_path) = p.a.request(keyed("k-1", "/other")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(other_path["data"]["id"], first["data"]["id"], "the scope includes the path");
    assert_eq!(p.service.seen().len(), 2);

    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (status, later) = p.a.request(keyed("k-1", "/echo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(later["data"]["id"], first["data"]["id"], "after the ttl the key is free again");
    assert_eq!(p.service.seen().len(), 3);
}

#[tokio::test]
async fn a_failure_does_not_use_up_the_key() {
    let p = pair_with(&[]).await;
    let (status, first) = p.a.request(keyed("k-2", "/status/500")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["data"]["status"], 500);
    let (_, second) = p.a.request(keyed("k-2", "/status/500")).await;
    assert_ne!(second["data"]["id"], first["data"]["id"]);
    assert_eq!(p.service.seen().len(), 2, "a failed request does not count");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_run_the_service_once() {
    let p = pair_with(&[]).await;
    let calls = (0..8).map(|_| p.a.request(keyed("k-3", "/sleep/300")));
    let answers = futures::future::join_all(calls).await;
    assert_eq!(p.service.seen().len(), 1, "the service ran once: {answers:?}");
    let ok: Vec<_> = answers.iter().filter(|(s, _)| *s == StatusCode::OK).collect();
    let running: Vec<_> = answers.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).collect();
    assert_eq!(ok.len(), 1, "{answers:?}");
    assert_eq!(running.len(), 7, "{answers:?}");
    for (_, body) in running {
        assert_eq!(body["data"]["error"], "in_progress");
        assert_eq!(body["data"]["id"], ok[0].1["data"]["id"], "names the running request");
    }
}

#[tokio::test]
async fn keys_survive_a_restart_of_the_receiving_node() {
    let mut p = pair_with(&[]).await;
    let (_, first) = p.a.request(keyed("k-4", "/echo")).await;
    p.b.stop().await;
    p.b.start().await;
    let (status, again) = p.a.request(keyed("k-4", "/echo")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["data"]["id"], first["data"]["id"]);
    assert_eq!(p.service.seen().len(), 1);
}

#[tokio::test]
async fn an_async_key_answers_with_the_running_request_then_with_its_result() {
    let p = pair_with(&[]).await;
    let mut body = keyed("k-5", "/sleep/500");
    body["mode"] = "async".into();
    let (status, first) = p.a.request(body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, second) = p.a.request(body.clone()).await;
    assert_eq!(second["data"]["id"], first["data"]["id"], "the running request stands for it");
    let id = first["data"]["id"].as_str().unwrap();
    p.a.wait_state(id, "success", WITHIN).await;

    let (_, third) = p.a.request(body).await;
    let replay = third["data"]["id"].as_str().unwrap();
    assert_ne!(replay, id, "a finished request no longer stands for the key on this node");
    let status = p.a.wait_state(replay, "success", WITHIN).await;
    assert_eq!(status["replies"][0]["data"], "slept", "the first request's result, from the store");
    assert_eq!(p.service.seen().len(), 1, "the service ran once");
}

#[tokio::test]
async fn a_key_over_64_characters_is_refused() {
    let p = pair_with(&[]).await;
    let (status, body) = p.a.request(keyed(&"x".repeat(65), "/echo")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["data"]["field"], "idempotency_key");
    assert!(p.service.seen().is_empty());
}

#[tokio::test]
async fn duplicates_inside_the_window_are_refused_with_the_earlier_id() {
    let p = pair_with(&[("dedupe_window", "\"1s\"")]).await;
    let request = json!({"peer": "org-b", "service": "1", "path": "/echo", "form": {"order": 7}});
    let (_, first) = p.a.request(request.clone()).await;
    let (status, dup) = p.a.request(request.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    assert_eq!(dup["data"]["error"], "duplicate");
    assert_eq!(dup["data"]["id"], first["data"]["id"]);

    let (status, _) =
        p.a.request(json!({"peer": "org-b", "service": "1", "path": "/echo", "form": {"order": 8}})).await;
    assert_eq!(status, StatusCode::OK, "another form is another request");

    let mut async_dup = request.clone();
    async_dup["mode"] = "async".into();
    let (_, queued) = p.a.request(async_dup).await;
    let failed = p.a.wait_state(queued["data"]["id"].as_str().unwrap(), "failed", WITHIN).await;
    assert!(failed["error"].as_str().unwrap().contains(first["data"]["id"].as_str().unwrap()), "{failed}");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _) = p.a.request(request).await;
    assert_eq!(status, StatusCode::OK, "outside the window it goes through");
    assert_eq!(p.service.seen().len(), 3);
}

/// Some traffic of every kind: sync, async, reply mode with a callback. Returns the async
/// request's id.
async fn exchanges(p: &Pair) -> String {
    let (status, _) = p.a.request(json!({"peer": "org-b", "service": "1", "path": "/echo", "form": {"a": 1}})).await;
    assert_eq!(status, StatusCode::OK);
    let host = Recorder::start().await;
    let (_, queued) =
        p.a.request(json!({"peer": "org-b", "service": "1", "path": "/echo", "mode": "async",
                        "callback": {"url": format!("{}/done", host.base_url())}}))
            .await;
    let id = queued["data"]["id"].as_str().unwrap().to_owned();
    p.a.wait_state(&id, "success", WITHIN).await;
    host.wait_for(1, WITHIN).await;
    id
}

/// `node`'s exported records of request `id`'s response, once there are any.
async fn responses(node: &support::Node, id: &str) -> Vec<Value> {
    for _ in 0..200 {
        let (_, exported, _) = node.audit(&["export"]);
        let found: Vec<Value> = exported
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["id"] == id && r["event"] == "response")
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no response record of {id} reached {}", node.name);
}

/// Waits until `node`'s log has a record of `event` (records of deliveries and receipts are
/// committed a moment after what they record).
async fn wait_for_record(node: &support::Node, event: &str) {
    let pattern = format!("\"event\":\"{event}\"");
    for _ in 0..200 {
        if support::evidence_log(&node.dir).iter().any(|(_, record)| record.contains(&pattern)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {event} record reached {}", node.name);
}

/// Rewrites the evidence log of `node` one record per row, as text, as an insider editing single
/// records would: the store keeps each commit's records in one row, as compressed JSON lines, and
/// a row of one line of text is a record as well. Returns the database and the records, (seq,
/// JSON), in order.
fn one_record_per_row(node: &support::Node) -> (rusqlite::Connection, Vec<(i64, String)>) {
    let records = support::evidence_log(&node.dir);
    let db = database(node);
    db.execute("DELETE FROM evidence", []).unwrap();
    for (seq, record) in &records {
        db.execute("INSERT INTO evidence (seq, records) VALUES (?1, ?2)", rusqlite::params![seq, record]).unwrap();
    }
    (db, records)
}

#[tokio::test]
async fn the_evidence_log_verifies_and_a_changed_deleted_or_moved_record_is_found() {
    if support::sqlite_only("the_evidence_log_verifies_and_a_changed_deleted_or_moved_record_is_found") {
        return;
    }
    let p = pair_with(&[]).await;
    let id = exchanges(&p).await;
    wait_for_record(&p.a, "receipt").await;
    wait_for_record(&p.a, "callback").await;

    // An async answer is recorded once on each node, as it went out and as it came in, under one
    // hash (that of the reply carrying it, which the requesting node's receipt signs).
    let (sent, received) = (responses(&p.b, &id).await, responses(&p.a, &id).await);
    assert_eq!((sent.len(), received.len()), (1, 1), "{sent:?} {received:?}");
    assert_eq!((&sent[0]["direction"], &received[0]["direction"]), (&json!("out"), &json!("in")));
    assert_eq!(sent[0]["reply_seq"], 1);
    assert_eq!(sent[0]["body_sha256"], received[0]["body_sha256"]);

    for node in [&p.a, &p.b] {
        let (code, out, err) = node.audit(&["verify"]);
        assert_eq!(code, 0, "{}: {out}{err}", node.name);
        assert!(out.starts_with("intact: "), "{out}");
    }
    let (_, out, _) = p.a.audit(&["verify"]);
    assert!(!out.contains(" 0 receipts"), "the sender holds receipts: {out}");
    let (code, out, _) = p.a.audit(&["verify", "--json"]);
    let verdict: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, &verdict["intact"]), (0, &true.into()), "{verdict}");
    assert!(verdict["receipts"].as_u64().unwrap() > 0 && verdict["records"].as_u64().unwrap() > 0, "{verdict}");

    let (code, exported, _) = p.a.audit(&["export"]);
    assert_eq!(code, 0);
    // A reader that went (`ferry audit export | head`) ends the export quietly.
    let mut export = support::cli::ferry_cmd()
        .args(["audit", "export", "--config"])
        .arg(&p.a.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(export.stdout.take());
    let closed = support::cli::run_bounded_child(export, std::time::Duration::from_secs(30));
    assert_eq!(closed.status.code(), Some(0), "{}", support::cli::stderr(&closed));
    assert_eq!(support::cli::stderr(&closed), "", "nothing said of the closed pipe");
    let records: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for event in ["request", "response", "callback", "receipt"] {
        assert!(records.iter().any(|r| r["event"] == event), "a {event} record in {exported}");
    }
    let api = support::client().get(p.a.url("/v1/audit?since=1&limit=2")).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::OK);
    let api = api.text().await.unwrap();
    let seqs: Vec<Value> = api.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].clone()).collect();
    assert_eq!(seqs, vec![json!(2), json!(3)], "GET /v1/audit pages by seq: {api}");
    assert_eq!(api.lines().next(), exported.lines().nth(1), "the API and the export agree");

    let (code, since) = {
        let (c, out, _) = p.a.audit(&["export", "--since", "2"]);
        (c, out)
    };
    assert_eq!(code, 0);
    assert_eq!(since.lines().next().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].clone()), Some(3.into()));

    // Changed: a record's path rewritten.
    let (db, _) = one_record_per_row(&p.b);
    db.execute("UPDATE evidence SET records = replace(records, '\"/echo\"', '\"/elsewhere\"') WHERE seq = 1", [])
        .unwrap();
    let (code, _, err) = p.b.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("seq 1"), "{err}");

    // Deleted: the chain breaks at the record after the gap.
    let (db, _) = one_record_per_row(&p.a);
    let n: i64 = db.query_row("SELECT COUNT(*) FROM evidence", [], |r| r.get(0)).unwrap();
    assert!(n >= 4, "{n} records");
    let saved: (i64, String) =
        db.query_row("SELECT seq, records FROM evidence WHERE seq = 2", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    db.execute("DELETE FROM evidence WHERE seq = 2", []).unwrap();
    let (code, _, err) = p.a.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("seq 2"), "{err}");

    // Moved: two records swapped.
    db.execute("INSERT INTO evidence (seq, records) VALUES (?1, ?2)", rusqlite::params![saved.0, saved.1]).unwrap();
    assert_eq!(p.a.audit(&["verify"]).0, 0, "restored");
    db.execute_batch(
        "UPDATE evidence SET seq = -3 WHERE seq = 3; UPDATE evidence SET seq = 3 WHERE seq = 4;
         UPDATE evidence SET seq = 4 WHERE seq = -3;",
    )
    .unwrap();
    let (code, _, err) = p.a.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(err.contains("seq 3"), "{err}");
}

#[tokio::test]
async fn a_forged_receipt_fails_verification_even_with_the_chain_rebuilt() {
    if support::sqlite_only("a_forged_receipt_fails_verification_even_with_the_chain_rebuilt") {
        return;
    }
    let p = pair_with(&[]).await;
    exchanges(&p).await;
    wait_for_record(&p.a, "receipt").await;
    // An insider rewrites a receipt and recomputes every hash after it: the chain holds, the
    // signature does not.
    let (db, rows) = one_record_per_row(&p.a);
    let mut prev = ferry::evidence::GENESIS.to_owned();
    let mut forged_at = None;
    for (seq, text) in rows {
        let mut record: ferry::evidence::Record = serde_json::from_str(&text).unwrap();
        if forged_at.is_none() && record.entry.event == "receipt" {
            let receipt = record.entry.receipt.as_mut().unwrap();
            receipt.leaves[0].at_ms += 1; // claims another time than the peer signed
            forged_at = Some(seq);
        }
        record.prev = prev;
        record.hash = record.chain_hash();
        prev = record.hash.clone();
        db.execute(
            "UPDATE evidence SET records = ?2 WHERE seq = ?1",
            rusqlite::params![seq, serde_json::to_string(&record).unwrap()],
        )
        .unwrap();
    }
    let (code, _, err) = p.a.audit(&["verify"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("seq {}", forged_at.unwrap())) && err.contains("receipt"), "{err}");
}

#[tokio::test]
async fn masked_fields_appear_only_as_their_hash() {
    let p = pair_with(&[("mask_fields", "[\"idCard\"]")]).await;
    let secret = "ID-4711-0815-SECRET";
    let hashed = ferry::evidence::sha256_hex(secret.as_bytes());
    let form = json!({"idCard": secret, "name": "Ada"});
    // `/text` answers without echoing the form: what a service answers is its own business.
    let (status, _) = p.a.request(json!({"peer": "org-b", "service": "1", "path": "/text", "form": form})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, queued) =
        p.a.request(
            json!({"peer": "org-b", "service": "1", "path": "/text", "form": form, "mode": "async", "reply": true}),
        )
        .await;
    let id = queued["data"]["id"].as_str().unwrap();
    p.a.wait_state(id, "doing", WITHIN).await;
    assert!(
        p.service
            .wait_for(2, WITHIN)
            .await
            .iter()
            .all(|s| s.body.contains(secret) || s.query.as_deref().unwrap_or("").contains(secret)),
        "the service itself gets the value"
    );

    // The service saw the call before its node recorded the answer: wait until the request is
    // pending (listed, and in the inbox's pending files), so that every view below shows it.
    let (mut pending, mut pending_files) = (Value::Null, String::new());
    for _ in 0..200 {
        if let Ok(inbox) = std::fs::read_dir(p.b.dir.join("data/inbox/.pending")) {
            pending_files = inbox.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
        }
        pending = p.b.get("/v1/pending").await.1;
        if !pending_files.is_empty() && pending["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pending["data"][0]["peer"], "org-a", "{pending}");
    let (_, export, _) = p.b.audit(&["export"]);
    let (_, status_view) = p.b.get(&format!("/v1/requests/{id}")).await;
    let logged = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(logged.len() > 1000, "the logs were captured");
    for (what, text) in [
        ("GET /v1/pending", pending.to_string()),
        ("the evidence export", export.clone()),
        ("the status view", status_view.to_string()),
        ("the inbox's pending files", pending_files.clone()),
        ("the logs", logged),
    ] {
        assert!(!text.contains(secret), "{what} shows the masked value: {text}");
    }
    assert!(pending.to_string().contains(&hashed), "{pending}");
    assert!(pending_files.contains(&hashed), "{pending_files}");
    assert!(export.contains(&format!("sha256:{hashed}")), "{export}");
    assert!(export.contains("Ada"), "fields not masked are kept: {export}");
}

/// `node`'s records (but receipts) of the request to `path`, once its request record is there.
async fn records_of(node: &support::Node, path: &str) -> Vec<Value> {
    for _ in 0..200 {
        let records: Vec<Value> =
            support::evidence_log(&node.dir).iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect();
        if let Some(request) = records.iter().find(|r| r["event"] == "request" && r["path"] == path) {
            let id = request["id"].clone();
            return records.into_iter().filter(|r| r["id"] == id && r["event"] != "receipt").collect();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no request record of {path} reached {}", node.name);
}

#[tokio::test]
async fn a_sync_exchange_is_one_record_per_node_carrying_its_answer() {
    // Service "1" answers; service "2" is down, so org-b refuses what is sent to it.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let p = pair_set_up(&[], |b| b.add_service("2", &format!("http://{down}"), &["org-a"])).await;
    let plain_words = ferry::evidence::sha256_hex(b"plain words");
    for (service, path, event, body_sha256) in [
        ("1", "/text", "response", Some(plain_words.as_str())),
        ("1", "/status/500", "response", None),
        ("2", "/anything", "refused", None),
    ] {
        let (status, body) =
            p.a.request(json!({"peer": "org-b", "service": service, "path": path, "form": {"n": 1}})).await;
        // A service's failure is its answer: the envelope carries its status.
        assert_eq!(status.is_success(), event == "response", "{path}: {status} {body}");
        let (sent, received) = (records_of(&p.a, path).await, records_of(&p.b, path).await);
        for (records, direction) in [(&sent, "out"), (&received, "in")] {
            assert_eq!(records.len(), 1, "{path}: one record on the {direction} side: {records:?}");
            let record = &records[0];
            assert_eq!((&record["event"], &record["direction"]), (&json!("request"), &json!(direction)), "{record}");
            assert_eq!(record["path"], path, "{record}");
            assert_eq!(record["answer"]["event"], event, "{path}: {record}");
        }
        assert_eq!(sent[0]["answer"], received[0]["answer"], "{path}: both nodes record the same answer");
        assert_eq!(sent[0]["body_sha256"], received[0]["body_sha256"], "{path}: the same request");
        if let Some(expected) = body_sha256 {
            assert_eq!(sent[0]["answer"]["body_sha256"], expected, "{path}: the response body's hash");
        }
    }
    for node in [&p.a, &p.b] {
        let (code, out, err) = node.audit(&["verify"]);
        assert_eq!(code, 0, "{}: {out}{err}", node.name);
    }
}
