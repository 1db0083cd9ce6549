//! Evidence against its own operator (issue 22): two real nodes exchange requests, replies and a
//! file, sign receipts and checkpoints of each other's chain heads, and stop; then copies of
//! org-a's data folder are tampered with as an insider would, and `ferry audit verify` (alone,
//! and with org-b's export) must find each change and name its seq.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Node, Recorder};

const WITHIN: Duration = Duration::from_secs(20);

/// The two stopped nodes of the exchange, and org-b's export of its log.
struct Scenario {
    a: Node,
    b: Node,
    /// org-b's `ferry audit export`.
    b_export: PathBuf,
}

/// Writes `[evidence] checkpoint_every = "1s"` into the config at `path`.
fn checkpoint_every_second(path: &Path) {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let section = doc.entry("evidence").or_insert(toml_edit::table()).as_table_mut().unwrap();
    section.insert("checkpoint_every", toml_edit::value("1s"));
    std::fs::write(path, doc.to_string()).unwrap();
}

/// The exported records of `node` (stopped or running).
fn exported(node: &Node) -> Vec<Value> {
    let (code, out, err) = node.audit(&["export"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits until `node`'s log has a record matching `found`.
async fn wait_for(node: &Node, what: &str, found: impl Fn(&Value) -> bool) {
    support::until(what, async || {
        let records: Vec<Value> = ferry::store::read_log(&node.dir.join("data"), 0)
            .map_err(|e| e.to_string())?
            .map(|r| serde_json::from_str(&r.unwrap().1).unwrap())
            .collect();
        records.iter().any(&found).then_some(()).ok_or_else(|| format!("no {what} in {}'s log", node.name))
    })
    .await
}

/// Runs the exchange once per test binary, in `CARGO_TARGET_TMPDIR`.
fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(exchange())
    })
}

async fn exchange() -> Scenario {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evidence_tamper");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let service = Recorder::start().await;
    let (mut a, mut b) = (Node::create(&root, "org-a"), Node::create(&root, "org-b"));
    a.add_peer(&b);
    b.add_peer(&a);
    b.add_service("1", &service.base_url(), &["org-a"]);
    // org-b masks `to` in its log: its record of the request holds the field's hash.
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&b.config_path).unwrap().parse().unwrap();
    doc["service"].as_array_of_tables_mut().unwrap().get_mut(0).unwrap()["mask_fields"] =
        toml_edit::value(toml_edit::Array::from_iter(["to"]));
    std::fs::write(&b.config_path, doc.to_string()).unwrap();
    for node in [&a, &b] {
        checkpoint_every_second(&node.config_path);
    }
    a.start().await;
    b.start().await;

    // Synchronous.
    let (status, env) =
        a.request(json!({"peer": "org-b", "service": "1", "path": "/pay", "form": {"amount": 12, "to": "bob"}})).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    // Asynchronous, answered by a reply.
    let (status, env) = a
        .request(json!({"peer": "org-b", "service": "1", "path": "/report", "mode": "async", "reply": true,
                        "form": {"q": "x"}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let seen = service.wait_for(2, WITHIN).await;
    let callback_id = seen[1].fields()["callbackId"].clone();
    support::until("the reply is taken", async || {
        let (status, env) = b.post("/v1/replies", json!({"callback_id": callback_id, "data": {"rows": 2}})).await;
        (status == StatusCode::ACCEPTED).then_some(()).ok_or_else(|| env.to_string())
    })
    .await;
    assert_eq!(a.wait_state(&id, "success", WITHIN).await["state"], "success");
    // A file.
    let file = a.dir.join("outbox/doc.bin");
    support::files::make_file(&file, 70_000);
    let (status, env) =
        a.request(json!({"peer": "org-b", "service": "1", "path": "/upload", "file": file, "form": {"n": 1}})).await;
    assert_eq!(status, StatusCode::OK, "{env}");

    // Receipts both ways, and checkpoints both ways, each node's kept by the other.
    for (node, other) in [(&a, "org-b"), (&b, "org-a")] {
        wait_for(node, &format!("a receipt from {other}"), |r| r["event"] == "receipt").await;
        for direction in ["in", "out"] {
            let what = format!("a checkpoint {direction}");
            wait_for(node, &what, |r| r["event"] == "checkpoint" && r["direction"] == direction).await;
        }
    }
    a.stop().await;
    b.stop().await;

    let (code, export, err) = b.audit(&["export"]);
    assert_eq!(code, 0, "{err}");
    let b_export = root.join("org-b.export.jsonl");
    std::fs::write(&b_export, export).unwrap();
    Scenario { a, b, b_export }
}

/// Both nodes' logs verify, and each holds what the other signed: receipts with the signer's
/// chain head, checkpoints kept (in) and acknowledged (out).
#[test]
fn checkpoints_and_countersignatures_flow_both_ways() {
    let s = scenario();
    for (node, other) in [(&s.a, "org-b"), (&s.b, "org-a")] {
        let records = exported(node);
        for line in &records {
            eprintln!("{}: {line}", node.name);
        }
        let (code, out, err) = node.audit(&["verify"]);
        assert_eq!(code, 0, "{}: {out}{err}", node.name);
        let receipts: Vec<&Value> = records.iter().filter(|r| r["event"] == "receipt").collect();
        assert!(!receipts.is_empty(), "{} holds receipts", node.name);
        for r in &receipts {
            assert_eq!(r["peer"], other);
            assert!(r["receipt"]["head"]["seq"].as_u64().unwrap() > 0, "a countersignature carries a head: {r}");
            assert!(r["receipt"]["leaves"][0]["record_sha256"].is_string(), "{r}");
        }
        let kept = records.iter().filter(|r| r["event"] == "checkpoint" && r["direction"] == "in").count();
        let acknowledged = records.iter().filter(|r| r["event"] == "checkpoint" && r["direction"] == "out").count();
        assert!(kept > 0 && acknowledged > 0, "{}: {kept} kept, {acknowledged} acknowledged", node.name);
    }
}
