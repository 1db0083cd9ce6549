//! Evidence against its own operator (issue 22): two real nodes exchange requests, replies and a
//! file, sign receipts and checkpoints of each other's chain heads (org-a also has a local TSA
//! stamp its head, where `openssl` is), and stop; then copies of org-a's folder are tampered with
//! as an insider would (`support::tamper`), and `ferry audit verify` (alone, and with org-b's
//! export) must find each change and name its seq.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ferry::evidence::Record;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::tamper::{unanchored, Copy};
use support::tsa::{Behaviour, KeyKind};
use support::{Node, Recorder};

const WITHIN: Duration = Duration::from_secs(20);

/// The two stopped nodes of the exchange, and org-b's export of its log.
struct Scenario {
    a: Node,
    b: Node,
    /// org-b's `ferry audit export`.
    b_export: PathBuf,
    /// Whether org-a time-stamped its log (with `openssl`, always under `CI`).
    stamped: bool,
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
        let records: Vec<Value> =
            support::evidence_log(&node.dir).iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect();
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
    // org-a has a TSA stamp its head every second.
    let tsa = match support::tsa::have_openssl() {
        true => Some(support::tsa::start(KeyKind::EcdsaP256, "sha256", 3, Behaviour::Tsa).await),
        false => None,
    };
    if let Some(tsa) = &tsa {
        std::fs::write(a.dir.join("certs/tsa.pem"), &tsa.signer.cert_pem).unwrap();
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&a.config_path).unwrap().parse().unwrap();
        doc["evidence"]["tsa_url"] = toml_edit::value(tsa.url.as_str());
        doc["evidence"]["tsa_cert"] = toml_edit::value("tsa.pem");
        doc["evidence"]["tsa_every"] = toml_edit::value("1s");
        std::fs::write(&a.config_path, doc.to_string()).unwrap();
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
    if tsa.is_some() {
        // A time-stamp record of org-a, and a head after it that org-b holds.
        wait_for(&a, "a time-stamp", |r| r["event"] == "timestamp").await;
        let stamp = exported(&a).into_iter().find(|r| r["event"] == "timestamp").unwrap()["seq"].as_i64().unwrap();
        wait_for(&b, "a checkpoint of org-a after its time-stamp", |r| {
            r["event"] == "checkpoint"
                && r["direction"] == "in"
                && r["checkpoint"]["head"]["seq"].as_i64() >= Some(stamp)
        })
        .await;
    }
    a.stop().await;
    b.stop().await;

    let (code, export, err) = b.audit(&["export"]);
    assert_eq!(code, 0, "{err}");
    let b_export = root.join("org-b.export.jsonl");
    std::fs::write(&b_export, export).unwrap();
    Scenario { a, b, b_export, stamped: tsa.is_some() }
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

/// A copy of org-a's folder to tamper with, named `name`.
fn copy_of_a(name: &str) -> Copy {
    let s = scenario();
    Copy::of(&s.a.dir, &s.a.dir.parent().unwrap().join(format!("tampered-{name}")))
}

/// `--peer-export` with org-b's export.
fn with_export() -> [&'static str; 2] {
    ["--peer-export", scenario().b_export.to_str().unwrap()]
}

/// The newest head of org-a that org-b holds (its checkpoints from org-a, and the heads on org-a's
/// receipts).
fn newest_head_b_holds() -> i64 {
    let export = std::fs::read_to_string(&scenario().b_export).unwrap();
    let records: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let heads = records
        .iter()
        .filter(|r| r["peer"] == "org-a" && r["direction"] == "in")
        .filter_map(|r| r["checkpoint"]["head"]["seq"].as_i64().or_else(|| r["receipt"]["head"]["seq"].as_i64()));
    heads.max().expect("org-b holds a head of org-a")
}

/// The request org-a recorded sending to `path`.
fn sent_to(records: &[Record], path: &str) -> Record {
    let found = records
        .iter()
        .find(|r| r.entry.event == "request" && r.entry.direction == "out" && r.entry.path.as_deref() == Some(path));
    found.cloned().unwrap_or_else(|| panic!("no request to {path}"))
}

/// The first receipt record covering request `id`.
fn receipt_of(records: &[Record], id: &str) -> i64 {
    let covers = |r: &&Record| r.entry.receipt.as_ref().is_some_and(|x| x.leaves.iter().any(|l| l.id == id));
    records.iter().find(covers).unwrap_or_else(|| panic!("no receipt of {id}")).seq
}

#[test]
fn an_untampered_log_is_intact_and_says_what_the_export_covers() {
    let copy = copy_of_a("none");
    let (code, out, err) = copy.verify(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("not ruled out: the last ")
            && out.contains("after the newest checkpoint a peer holds (org-b, seq "),
        "{out}"
    );
    assert!(out.contains("--peer-export"), "{out}");
    let (code, out, err) = copy.verify(&with_export());
    assert_eq!(code, 0, "{out}{err}");
    let newest = newest_head_b_holds();
    assert!(out.contains("cross-checked with org-b's export (it calls this node org-a): "), "{out}");
    assert!(out.contains(&format!("newest head seq {newest} signed at ")), "{out}");
    let held: u64 = out.split(": ").nth(2).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(held >= 5, "the requests, the reply and heads: {out}");

    // --peer names a configured peer; an export that is no log is refused, naming its line.
    let (code, _, err) = copy.verify(&["--peer-export", scenario().b_export.to_str().unwrap(), "--peer", "org-z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("org-z") && err.contains("configured: org-b"), "{err}");
    let garbage = copy.dir.join("garbage.jsonl");
    let mut export = std::fs::read_to_string(&scenario().b_export).unwrap();
    export.push_str("{\"seq\": \"no\"}\n");
    std::fs::write(&garbage, export).unwrap();
    let (code, _, err) = copy.verify(&["--peer-export", garbage.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a record"), "{err}");
}

/// (a) The last records deleted: the chain alone holds, and says the tail after the newest
/// checkpoint a peer holds is not anchored; org-b's export names the cut.
#[test]
fn a_cut_tail_is_named_against_the_peers_export() {
    let copy = copy_of_a("tail");
    let newest = newest_head_b_holds();
    let kept: Vec<Record> = copy.records().into_iter().filter(|r| r.seq < newest).collect();
    copy.write(kept, false);
    let (code, out, err) = copy.verify(&[]);
    assert_eq!(code, 0, "the chain alone holds: {out}{err}");
    assert!(out.contains("not ruled out: "), "{out}");
    let (code, out, err) = copy.verify(&with_export());
    assert_eq!(code, 1, "{out}");
    let cut = format!("broken at seq {newest}: the log ends at seq {} but org-b holds a ", newest - 1);
    assert!(err.contains(&cut) && err.contains("were removed"), "{err}");
}

/// (b) A record in the middle deleted and the chain recomputed after it: the chain alone holds;
/// org-b's export names the deleted record's place.
#[test]
fn a_deleted_record_in_a_rewritten_chain_is_named_against_the_peers_export() {
    let copy = copy_of_a("deleted");
    let records = copy.records();
    let gone = sent_to(&records, "/report");
    let records: Vec<Record> = records.into_iter().filter(|r| r.seq != gone.seq).collect();
    // Its own checkpoints (and time-stamps) of later heads show a rewrite in the log alone.
    copy.write(records.clone(), true);
    let (code, _, err) = copy.verify(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("checkpoint: org-b keeps a head of seq") || err.contains("time-stamp: "), "{err}");
    // Removed as well, they do not.
    copy.write(unanchored(records, gone.seq), true);
    let (code, out, err) = copy.verify(&[]);
    assert_eq!(code, 0, "the chain recomputed holds alone: {out}{err}");
    let (code, out, err) = copy.verify(&with_export());
    assert_eq!(code, 1, "{out}");
    assert!(err.contains(&format!("broken at seq {}: ", gone.seq)), "{err}");
    assert!(err.contains(&format!("{} (its seq", gone.entry.id)) && err.contains("no record of it"), "{err}");
    let (code, out, err) = copy.verify(&[&with_export()[..], &["--json"]].concat());
    assert_eq!((code, err.as_str()), (1, ""), "{out}");
    let verdict: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&verdict["intact"], &verdict["broken_at"]), (&false.into(), &gone.seq.into()), "{verdict}");
    assert!(verdict["why"].as_str().unwrap().contains("no record of it"), "{verdict}");
}

/// (c) A sent request's path and form changed, the chain recomputed: the receipt names it, and
/// org-b's export names the request itself.
#[test]
fn a_changed_path_and_form_are_named_alone_and_against_the_peers_export() {
    let copy = copy_of_a("changed");
    let mut records = copy.records();
    let pay = sent_to(&records, "/pay");
    let receipt = receipt_of(&records, &pay.entry.id);
    let changed = &mut records[pay.seq as usize - 1].entry;
    changed.path = Some("/transfer".into());
    changed.form = Some(json!({"amount": 1000000}));
    copy.write(unanchored(records, pay.seq), true);
    let (code, _, err) = copy.verify(&[]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("broken at seq {receipt}: ")) && err.contains("signed other content"), "{err}");
    let (code, _, err) = copy.verify(&with_export());
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("broken at seq {}: its request", pay.seq)) && err.contains("differs in its path"),
        "{err}"
    );
}

/// (d) A receipt forged (a leaf or the signature altered), the chain recomputed: named alone
/// and against the export.
#[test]
fn a_forged_receipt_is_named() {
    type Forge = fn(&mut ferry::evidence::Receipt, &str);
    let forgeries: [(&str, Forge); 2] = [
        ("leaf", |receipt, _| receipt.leaves[0].body_sha256 = "00".repeat(32)),
        ("signature", |receipt, other| receipt.signature = other.to_owned()),
    ];
    for (what, forge) in forgeries {
        let copy = copy_of_a(&format!("forged-{what}"));
        let mut records = copy.records();
        let other = records.iter().find_map(|r| r.entry.checkpoint.as_ref()).unwrap().signature.clone();
        let at = records.iter().position(|r| r.entry.event == "receipt").unwrap();
        forge(records[at].entry.receipt.as_mut().unwrap(), &other);
        let seq = records[at].seq;
        copy.write(records, true);
        for args in [&[][..], &with_export()[..]] {
            let (code, _, err) = copy.verify(args);
            assert_eq!(code, 1, "{what} {args:?}");
            assert!(err.contains(&format!("broken at seq {seq}: receipt: ")), "{what} {args:?}: {err}");
        }
    }
}

/// (e) A time-stamp record removed and the chain recomputed: the log alone cannot show it (the
/// altered tokens and stamped hashes that it can show are tests/timestamp_node.rs's); org-b's
/// heads of org-a after it name the rewrite.
#[test]
fn a_removed_time_stamp_in_a_rewritten_chain_is_named_against_the_peers_export() {
    if !scenario().stamped {
        return; // no openssl, outside CI: `have_openssl` said so
    }
    let copy = copy_of_a("timestamp");
    let records = copy.records();
    let stamp = records.iter().find(|r| r.entry.event == "timestamp").unwrap().seq;
    copy.write(unanchored(records.into_iter().filter(|r| r.seq != stamp).collect(), stamp), true);
    let (code, out, err) = copy.verify(&[]);
    assert_eq!(code, 0, "the chain recomputed holds alone: {out}{err}");
    let (code, out, err) = copy.verify(&with_export());
    assert_eq!(code, 1, "{out}");
    let named: i64 = err.split("broken at seq ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    assert!(named >= stamp && named <= newest_head_b_holds(), "{err}");
    assert!(err.contains(&format!("was rewritten at or before seq {named}")) || err.contains("were removed"), "{err}");
}
