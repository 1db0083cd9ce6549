//! Evidence bundles a third party can verify: two real nodes time-stamped by a real local TSA
//! (`support::tsa`) exchange a synchronous request with a form and a file, an asynchronous one
//! answered by a reply, and a burst whose receipts batch several leaves; `ferry audit bundle`
//! writes each exchange's bundle; both nodes' folders are deleted; `ferry audit verify-bundle`
//! (a real `ferry` process, no database, no config) verifies them, names each tampering, and
//! refuses crafted files without panicking. Each step of docs/evidence.md is recomputed here by
//! hand, as an auditor with `sha256sum` and `openssl` would. Without `openssl` the test skips, or
//! fails under `CI`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::evidence::Record;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::tsa::{have_openssl, start, use_tsa, Behaviour, KeyKind};
use support::{unstarted_pair, Node};

/// The test's bound.
const BOUND: Duration = Duration::from_secs(150);

/// What `ferry audit bundle` says of a bundle a time-stamp anchors.
const STAMPED: &str = "anchored by a time-stamp";

/// `node`'s evidence records.
fn records(node: &Node) -> Vec<Record> {
    support::evidence_log(&node.dir).iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect()
}

/// The receipts in `node`'s log with a leaf of request `id` (and reply `reply_seq`): how many
/// leaves each signed.
fn receipts_of(node: &Node, id: &str, reply_seq: Option<u32>) -> Vec<usize> {
    let records = records(node);
    let receipts = records.iter().filter_map(|r| r.entry.receipt.as_ref());
    receipts
        .filter(|r| r.leaves.iter().any(|l| l.id == id && l.reply_seq == reply_seq))
        .map(|r| r.leaves.len())
        .collect()
}

/// Waits until `node` keeps a receipt for request `id` (reply `reply_seq`).
async fn receipted(node: &Node, id: &str, reply_seq: Option<u32>) {
    support::until(&format!("{}'s receipt for {id}", node.name), async || {
        if receipts_of(node, id, reply_seq).is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
}

/// `ferry audit verify-bundle FILE`: the exit code, stdout and stderr.
fn verify_bundle(file: &Path) -> (i32, String, String) {
    let mut cmd = support::cli::ferry_cmd();
    cmd.args(["audit", "verify-bundle"]).arg(file);
    let out = support::cli::run_bounded(&mut cmd, Duration::from_secs(60));
    (out.status.code().unwrap_or(-1), support::cli::stdout(&out), support::cli::stderr(&out))
}

/// `ferry audit verify-bundle --json FILE`: the exit code and the JSON verdict.
fn verify_bundle_json(file: &Path) -> (i32, Value) {
    let mut cmd = support::cli::ferry_cmd();
    cmd.args(["audit", "verify-bundle", "--json"]).arg(file);
    let out = support::cli::run_bounded(&mut cmd, Duration::from_secs(60));
    (out.status.code().unwrap_or(-1), serde_json::from_str(&support::cli::stdout(&out)).unwrap())
}

/// `ferry audit bundle --id ID --out dir/name.json` on `node`, which must say `anchored`: the
/// file, read.
fn bundle(node: &Node, id: &str, dir: &Path, name: &str, anchored: &str) -> (PathBuf, Value) {
    let file = dir.join(format!("{name}.json"));
    let (code, out, err) = node.audit(&["bundle", "--id", id, "--out", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{name}: {out}{err}");
    assert!(out.contains(anchored), "{name}: {out}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    (file, bundle)
}

/// Writes `bundle` to `dir/tampered.json` and runs `verify-bundle` on it, which must fail with
/// exit 1 and a message holding each of `reasons`.
fn fails(dir: &Path, what: &str, bundle: &Value, reasons: &[&str]) {
    let file = dir.join("tampered.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bundle).unwrap()).unwrap();
    fails_as_is(&file, what, reasons);
}

/// Runs `verify-bundle` on `file`, which must fail with exit 1 and a message holding `reasons`.
fn fails_as_is(file: &Path, what: &str, reasons: &[&str]) {
    let (code, out, err) = verify_bundle(file);
    assert_eq!(code, 1, "{what}: exit {code}\n{out}{err}");
    let (code, said) = verify_bundle_json(file);
    assert_eq!((code, &said["verified"]), (1, &false.into()), "{what}: {said}");
    let first = |why: &str| why.lines().next().is_some_and(|line| err.contains(line));
    assert!(said["why"].as_str().is_some_and(first), "{what}: {said} against {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    for reason in reasons {
        assert!(err.contains(reason), "{what}: `{reason}` not in: {err}");
    }
}

/// The bundle's segment records, parsed.
fn segment(bundle: &Value) -> Vec<Record> {
    let lines = bundle["segment"].as_array().unwrap();
    lines.iter().map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap()).collect()
}

/// Writes `records` back as the bundle's segment, rechaining from index `from` on (each `prev`
/// and `hash` recomputed, as an insider would), and the exchange's records as the segment has
/// them.
fn set_segment(bundle: &mut Value, mut records: Vec<Record>, from: usize) {
    for i in from..records.len() {
        if i > 0 {
            records[i].prev = records[i - 1].hash.clone();
        }
        records[i].hash = records[i].chain_hash();
    }
    let lines: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    for line in bundle["records"].as_array_mut().unwrap() {
        let seq = serde_json::from_str::<Record>(line.as_str().unwrap()).unwrap().seq;
        if let Some(at) = records.iter().position(|r| r.seq == seq) {
            *line = json!(lines[at]);
        }
    }
    bundle["segment"] = json!(lines);
}

/// `text`, its middle base64 character changed (still base64).
fn altered(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// The SHA-256 of `parts`, concatenated.
fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

fn unhex(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// `text(s)` of docs/evidence.md: its length in bytes (8, big-endian), then its bytes.
fn text(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_be_bytes());
    out.extend(s.as_bytes());
}

/// `record_sha256` of a request or reply record, from docs/evidence.md's layout.
fn record_sha256(record: &Value) -> String {
    let mut b = b"ferry-record/1\0".to_vec();
    text(&mut b, record["id"].as_str().unwrap());
    b.extend((record["reply_seq"].as_u64().unwrap_or(0) as u32).to_be_bytes());
    for part in ["method", "path"] {
        match record[part].as_str() {
            Some(part) => {
                b.push(1);
                text(&mut b, part);
            }
            None => b.push(0),
        }
    }
    match record["form"].as_object() {
        Some(form) => {
            let mut digest = b"ferry-form/1\0".to_vec();
            for (name, value) in form {
                text(&mut digest, name);
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                digest.extend(sha(&[value.as_bytes()]));
            }
            b.push(1);
            b.extend(sha(&[&digest]));
        }
        None => b.push(0),
    }
    b.extend(unhex(record["body_sha256"].as_str().unwrap()));
    match record["file"].as_object() {
        Some(file) => {
            b.push(1);
            text(&mut b, file["name"].as_str().unwrap());
            b.extend(file["size"].as_u64().unwrap().to_be_bytes());
            b.extend(unhex(file["sha256"].as_str().unwrap()));
        }
        None => b.push(0),
    }
    hex::encode(sha(&[&b]))
}

/// Checks an ECDSA P-256 signature (base64 of DER) over `statement` with the key of the PEM
/// certificate `cert`.
fn signed_by(cert: &Value, statement: &[u8], signature: &Value) {
    use base64::Engine;
    let cert = pem::parse(cert.as_str().unwrap()).unwrap();
    let key = public_key(cert.contents());
    let signature = base64::engine::general_purpose::STANDARD.decode(signature.as_str().unwrap()).unwrap();
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &key);
    key.verify(statement, &signature).expect("the signature over the statement, as docs/evidence.md builds it");
}

/// The checks of docs/evidence.md, done by hand from its byte layouts (not with ferry's code):
/// each record's hash over its line without `,"hash":"…"`, `record_sha256` of the record each
/// leaf covers, the leaf hash, the Merkle path, the statement and the peer's signature over it,
/// and the anchor: the time-stamp token with `openssl ts -verify` (in `dir`), or the checkpoint's
/// signature.
fn check_by_hand(bundle: &Value, dir: &Path) {
    let mut prev: Option<String> = None;
    let mut segment = Vec::new();
    for line in bundle["segment"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        let at = line.rfind(",\"hash\":\"").unwrap();
        let hash = &line[at + 9..at + 73];
        let hashed = format!("{}}}", &line[..at]);
        assert_eq!(hex::encode(sha(&[hashed.as_bytes()])), hash, "sha256sum of the line without its hash");
        let record: Value = serde_json::from_str(line).unwrap();
        if let Some(prev) = prev {
            assert_eq!(record["prev"], prev.as_str());
        }
        prev = Some(hash.to_owned());
        segment.push(record);
    }
    for receipt in bundle["receipts"].as_array().unwrap() {
        let leaf = &receipt["leaf"];
        let head = &receipt["head"];
        let covered = segment.iter().find(|r| r["seq"] == receipt["covers"]).expect("the record it covers");
        if !head.is_null() {
            assert_eq!(leaf["record_sha256"].as_str().unwrap(), record_sha256(covered), "record_sha256 by hand");
        }
        let id = leaf["id"].as_str().unwrap().as_bytes();
        let mut plain = b"ferry-receipt-leaf/1\0".to_vec();
        plain.extend((id.len() as u32).to_be_bytes());
        plain.extend(id);
        plain.extend((leaf["reply_seq"].as_u64().unwrap_or(0) as u32).to_be_bytes());
        plain.extend(unhex(leaf["body_sha256"].as_str().unwrap()));
        match leaf["file_sha256"].as_str() {
            Some(file) => {
                plain.push(1);
                plain.extend(unhex(file));
            }
            None => plain.push(0),
        }
        plain.extend(leaf["at_ms"].as_i64().unwrap().to_be_bytes());
        let plain = sha(&[&plain]);
        let mut hash = match leaf["record_sha256"].as_str() {
            Some(record) if !head.is_null() => sha(&[b"ferry-receipt-leaf/2\0", &plain, &unhex(record)]),
            _ => plain,
        };
        for step in receipt["path"].as_array().unwrap() {
            let sibling = unhex(step["hash"].as_str().unwrap());
            hash = match step["side"].as_str().unwrap() {
                "left" => sha(&[b"ferry-receipt-node/1\0", &sibling, &hash]),
                _ => sha(&[b"ferry-receipt-node/1\0", &hash, &sibling]),
            };
        }
        let statement = match head.is_null() {
            true => [b"ferry-receipt-root/1\0".as_slice(), &hash].concat(),
            false => [
                b"ferry-receipt-root/2\0".as_slice(),
                &hash,
                &head["seq"].as_u64().unwrap().to_be_bytes(),
                &unhex(head["hash"].as_str().unwrap()),
            ]
            .concat(),
        };
        signed_by(&bundle["peer"]["certificate"], &statement, &receipt["signature"]);
    }
    let last = segment.last().unwrap();
    let anchor: Value = match bundle["anchor"]["record"].as_str() {
        Some(record) => serde_json::from_str(record).unwrap(),
        None => return,
    };
    if let Some(checkpoint) = anchor.get("checkpoint") {
        assert_eq!(checkpoint["head"]["hash"], last["hash"]);
        let statement = [
            b"ferry-checkpoint/1\0".as_slice(),
            &checkpoint["head"]["seq"].as_u64().unwrap().to_be_bytes(),
            &unhex(checkpoint["head"]["hash"].as_str().unwrap()),
            &checkpoint["at_ms"].as_i64().unwrap().to_be_bytes(),
        ]
        .concat();
        signed_by(&bundle["node"]["certificate"], &statement, &checkpoint["signature"]);
        return;
    }
    use base64::Engine;
    let stamp = &anchor["timestamp"];
    assert_eq!(stamp["hash"], last["hash"]);
    let token = base64::engine::general_purpose::STANDARD.decode(stamp["token"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("token.der"), token).unwrap();
    std::fs::write(dir.join("tsa.pem"), bundle["anchor"]["tsa_certificate"].as_str().unwrap()).unwrap();
    let mut openssl = std::process::Command::new("openssl");
    openssl.current_dir(dir).args(["ts", "-verify", "-token_in", "-in", "token.der", "-CAfile", "tsa.pem"]);
    openssl.args(["-partial_chain", "-digest", last["hash"].as_str().unwrap()]);
    let out = support::cli::run_bounded(&mut openssl, Duration::from_secs(30));
    let said = format!("{}{}", support::cli::stdout(&out), support::cli::stderr(&out));
    assert!(out.status.success() && said.contains("Verification: OK"), "openssl ts -verify: {said}");
}

/// The public key (an uncompressed P-256 point) of a DER certificate.
fn public_key(der: &[u8]) -> Vec<u8> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec()
}

#[tokio::test]
async fn bundles_verify_after_both_nodes_are_gone_and_tampering_is_named() {
    if !have_openssl() {
        return;
    }
    tokio::time::timeout(BOUND, async {
        let tsa = start(KeyKind::EcdsaP256, "sha256", 3, Behaviour::Tsa).await;
        let mut p = unstarted_pair().await;
        for node in [&p.a, &p.b] {
            use_tsa(node, tsa.url.as_str(), &tsa.signer.cert_pem, "300ms");
        }
        p.start().await;

        // A synchronous request with a form and a file.
        let file = p.a.dir.join("outbox/contract.pdf");
        support::files::make_file(&file, 100_000);
        let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "method": "POST",
            "form": {"amount": "12.50", "to": "bob"}, "file": file});
        let (status, answer) = p.a.request(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let sync_id = answer["data"]["id"].as_str().unwrap().to_owned();

        // An asynchronous request answered by a reply.
        let body = json!({"peer": "org-b", "service": "1", "path": "/orders", "mode": "async", "reply": true,
            "form": {"q": "x"}});
        let (status, answer) = p.a.request(body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let async_id = answer["data"]["id"].as_str().unwrap().to_owned();
        let seen = support::until("the service to see the async request", async || {
            p.service.calls_for(&async_id).into_iter().next().ok_or_else(|| "not yet".to_owned())
        })
        .await;
        let callback_id = seen.fields()["callbackId"].clone();
        let (status, env) = p.b.post("/v1/replies", json!({"callback_id": callback_id, "data": {"ok": true}})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{env}");
        assert_eq!(p.a.wait_state(&async_id, "success", Duration::from_secs(20)).await["state"], "success");

        // Bursts of synchronous requests until one receipt signs several leaves (at most 10).
        let mut batched = None;
        for _ in 0..10 {
            let burst =
                (0..8).map(|i| p.a.request(json!({"peer": "org-b", "service": "1", "path": "/b", "form": {"i": i}})));
            let ids: Vec<String> = futures::future::join_all(burst)
                .await
                .into_iter()
                .map(|(_, answer)| answer["data"]["id"].as_str().unwrap().to_owned())
                .collect();
            for id in &ids {
                receipted(&p.a, id, None).await;
            }
            batched = ids.into_iter().find(|id| receipts_of(&p.a, id, None).iter().any(|n| *n >= 2));
            if batched.is_some() {
                break;
            }
        }
        let batched = batched.expect("a receipt of several leaves in 10 bursts of 8");

        receipted(&p.a, &sync_id, None).await;
        receipted(&p.a, &async_id, None).await;
        receipted(&p.b, &async_id, Some(1)).await;
        // Stamped every 300 ms, and each stop stamps its node's head again.
        stamped(&p.a).await;
        stamped(&p.b).await;
        p.a.stop().await;
        p.b.stop().await;

        let out = tempfile::tempdir().unwrap();
        let (sync_file, sync_bundle) = bundle(&p.a, &sync_id, out.path(), "sync", STAMPED);
        let (async_file, async_bundle) = bundle(&p.a, &async_id, out.path(), "async", STAMPED);
        let (reply_file, reply_bundle) = bundle(&p.b, &async_id, out.path(), "reply", STAMPED);
        let (batched_file, batched_bundle) = bundle(&p.a, &batched, out.path(), "batched", STAMPED);
        assert_eq!(sync_bundle["format"], "ferry-evidence-bundle/1");
        assert_eq!(sync_bundle["anchor"]["kind"], "timestamp");
        assert!(batched_bundle["receipts"][0]["leaves"].as_u64().unwrap() >= 2, "{batched_bundle}");
        let explanation = sync_bundle["explanation"].as_array().unwrap();
        assert!(explanation.iter().any(|l| l.as_str().unwrap().starts_with("anchor (timestamp)")), "{explanation:?}");
        if let Some(keep) = std::env::var_os("FERRY_KEEP_BUNDLES") {
            for file in [&sync_file, &async_file, &reply_file, &batched_file] {
                std::fs::copy(file, Path::new(&keep).join(file.file_name().unwrap())).unwrap();
            }
        }

        // Both nodes' folders gone, and the TSA: the bundles stand alone.
        for node in [&p.a, &p.b] {
            std::fs::remove_dir_all(&node.dir).unwrap();
        }
        drop(tsa);
        for (file, says) in [
            (
                &sync_file,
                vec!["request out POST /upload", "form fields amount, to", "file contract.pdf (100000 bytes)"],
            ),
            (&async_file, vec!["request out POST /orders", "in (reply 1)"]),
            (&reply_file, vec!["out (reply 1)", "signed by org-a"]),
            (&batched_file, vec!["request out POST /b"]),
        ] {
            let (code, out, err) = verify_bundle(file);
            assert_eq!(code, 0, "{}: {out}{err}", file.display());
            for words in says.iter().chain(&["verified: the evidence of request", "trusted time: a TSA"]) {
                assert!(out.contains(words), "{}: `{words}` not in:\n{out}", file.display());
            }
        }
        let (_, told, _) = verify_bundle(&sync_file);
        assert!(told.contains("the request at seq") && told.contains("countersigned"), "{told}");
        let (code, said) = verify_bundle_json(&sync_file);
        assert_eq!(
            (code, &said["verified"], &said["anchor"]["kind"]),
            (0, &true.into(), &"timestamp".into()),
            "{said}"
        );
        assert!(said["records"].as_array().is_some_and(|r| !r.is_empty()) && said["node"]["fingerprint"].is_string());
        for bundle in [&sync_bundle, &async_bundle, &batched_bundle, &reply_bundle] {
            check_by_hand(bundle, out.path());
        }

        let dir = out.path();
        // A changed path, the chain left as it was: that record's hash names it.
        let records = segment(&sync_bundle);
        let sent = records.iter().position(|r| r.entry.event == "request").unwrap();
        let mut changed = records.clone();
        changed[sent].entry.path = Some("/transfer".into());
        let mut tampered = sync_bundle.clone();
        set_segment(&mut tampered, changed.clone(), changed.len());
        let line = serde_json::to_string(&changed[sent]).unwrap();
        tampered["segment"][sent] = json!(line);
        fails(
            dir,
            "a changed path",
            &tampered,
            &[&format!("segment record {}", changed[sent].seq), "does not match its hash"],
        );
        // … the chain recomputed from it on, as an insider would: the peer's receipt names it.
        for (what, change) in [
            ("path", (|r: &mut Record| r.entry.path = Some("/transfer".into())) as fn(&mut Record)),
            ("form", |r| r.entry.form.as_mut().unwrap()["amount"] = json!("1000000")),
        ] {
            let mut changed = records.clone();
            change(&mut changed[sent]);
            let mut tampered = sync_bundle.clone();
            set_segment(&mut tampered, changed, sent);
            fails(dir, what, &tampered, &["receipt 1", "org-b signed other content than record"]);
        }
        // A record of the segment dropped.
        let mut tampered = sync_bundle.clone();
        tampered["segment"].as_array_mut().unwrap().remove(sent + 1);
        fails(dir, "a dropped record", &tampered, &["a record is missing or moved"]);
        // A record of the exchange left out.
        let mut tampered = sync_bundle.clone();
        tampered["records"].as_array_mut().unwrap().pop();
        fails(
            dir,
            "an exchange record left out",
            &tampered,
            &["a record of the exchange that the bundle's records leave out"],
        );
        // An altered receipt signature: alone, then in the receipt record too, rechained.
        let mut tampered = sync_bundle.clone();
        let signature = altered(tampered["receipts"][0]["signature"].as_str().unwrap());
        tampered["receipts"][0]["signature"] = json!(signature);
        fails(dir, "an altered signature", &tampered, &["receipt 1", "differs from the receipt record's"]);
        let at = records.iter().position(|r| r.entry.receipt.is_some()).unwrap();
        let mut changed = records.clone();
        changed[at].entry.receipt.as_mut().unwrap().signature = signature;
        set_segment(&mut tampered, changed, at);
        fails(dir, "an altered signature, rechained", &tampered, &["receipt 1", "signature does not verify"]);
        // A leaf moved in the Merkle path: its side flipped, its place changed, a sibling changed.
        let mut tampered = batched_bundle.clone();
        let step = &mut tampered["receipts"][0]["path"][0]["side"];
        *step = json!(if *step == "left" { "right" } else { "left" });
        fails(dir, "a flipped side", &tampered, &["receipt 1", "its Merkle path does not fit leaf"]);
        let mut tampered = batched_bundle.clone();
        let index = tampered["receipts"][0]["index"].as_u64().unwrap();
        tampered["receipts"][0]["index"] = json!(index ^ 1);
        fails(dir, "a moved leaf", &tampered, &["receipt 1", "does not hold this leaf as leaf"]);
        let mut tampered = batched_bundle.clone();
        let sibling = tampered["receipts"][0]["path"][0]["hash"].as_str().unwrap().replace(['0', '1'], "2");
        tampered["receipts"][0]["path"][0]["hash"] = json!(sibling);
        fails(dir, "a changed sibling", &tampered, &["receipt 1", "signature does not verify over the root"]);
        // A path of the wrong length.
        let mut tampered = batched_bundle.clone();
        let step = tampered["receipts"][0]["path"][0].clone();
        tampered["receipts"][0]["path"].as_array_mut().unwrap().push(step);
        fails(dir, "a path too long", &tampered, &["its Merkle path does not fit leaf"]);
        // An altered token: as it is, then with its record's hash recomputed.
        let mut tampered = sync_bundle.clone();
        let mut stamp: Record = serde_json::from_str(tampered["anchor"]["record"].as_str().unwrap()).unwrap();
        let token = &mut stamp.entry.timestamp.as_mut().unwrap().token;
        *token = altered(token);
        tampered["anchor"]["record"] = json!(serde_json::to_string(&stamp).unwrap());
        fails(dir, "an altered token", &tampered, &["time-stamp record", "does not match its hash"]);
        stamp.hash = stamp.chain_hash();
        tampered["anchor"]["record"] = json!(serde_json::to_string(&stamp).unwrap());
        fails(dir, "an altered token, rehashed", &tampered, &["anchor", "the time-stamp token does not verify"]);
        // A swapped peer certificate.
        let mut tampered = sync_bundle.clone();
        tampered["peer"]["certificate"] = tampered["node"]["certificate"].clone();
        fails(dir, "a swapped peer certificate", &tampered, &["with the bundle's peer certificate"]);

        // Crafted files: named, never a panic.
        let crafted = dir.join("crafted.json");
        std::fs::write(&crafted, b"{\"format\": \"ferry-evidence-bundle/1\", \"id\": ").unwrap();
        fails_as_is(&crafted, "bad JSON", &["not a ferry evidence bundle"]);
        std::fs::write(&crafted, [0xff, 0xfe, 0]).unwrap();
        fails_as_is(&crafted, "not text", &["not a ferry evidence bundle"]);
        for (what, path, value, reason) in [
            ("a wrong type", "/segment", json!(5), "at `segment`"),
            ("a huge number", "/receipts/0/index", json!(18_446_744_073_709_551_616u128), "at `receipts[0].index`"),
            ("a huge seq", "/receipts/0/seq", json!(u64::MAX), "at `receipts[0].seq`"),
            ("the largest index", "/receipts/0/index", json!(u64::MAX), "does not hold this leaf"),
            ("a huge leaf count", "/receipts/0/leaves", json!(u64::MAX), "does not hold this leaf"),
            ("an unknown field", "/extra", json!(1), "unknown field `extra`"),
            ("a receipt outside", "/receipts/0/seq", json!(1_000_000), "its receipt record is not in the segment"),
            ("no segment", "/segment", json!([]), "it holds no record"),
            ("another format", "/format", json!("ferry-evidence-bundle/2"), "this ferry reads"),
            (
                "a bad certificate",
                "/peer/certificate",
                json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                "the peer's certificate",
            ),
        ] {
            let mut tampered = sync_bundle.clone();
            match tampered.pointer_mut(path) {
                Some(slot) => *slot = value,
                None => tampered["extra"] = value,
            }
            fails(dir, what, &tampered, &[reason]);
        }
        // A record that is not in the segment.
        let mut tampered = sync_bundle.clone();
        let mut foreign: Record = serde_json::from_str(tampered["records"][0].as_str().unwrap()).unwrap();
        foreign.seq += 1_000_000;
        foreign.hash = foreign.chain_hash();
        tampered["records"][0] = json!(serde_json::to_string(&foreign).unwrap());
        fails(dir, "a record outside the segment", &tampered, &["it is not in the segment"]);
        let (code, _, err) = verify_bundle(&dir.join("missing.json"));
        assert!(code == 2 && err.contains("cannot read"), "{err}");
    })
    .await
    .expect("the test finished within its bound");
}

/// Sets `node`'s `[evidence] checkpoint_every`.
fn checkpoint_every(node: &Node, every: &str) {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&node.config_path).unwrap().parse().unwrap();
    if doc.get("evidence").is_none() {
        doc["evidence"] = toml_edit::table();
    }
    doc["evidence"]["checkpoint_every"] = toml_edit::value(every);
    std::fs::write(&node.config_path, doc.to_string()).unwrap();
}

/// Waits until a time-stamp in `node`'s log stamps its last record other than a time-stamp as it
/// is now, or a later one (the node stamps only a head that moved since its last stamp).
async fn stamped(node: &Node) {
    let last = records(node).iter().rev().find(|r| r.entry.timestamp.is_none()).unwrap().seq;
    support::until(&format!("a time-stamp of {}'s record {last}", node.name), async || {
        let stamps = records(node).into_iter().filter_map(|r| r.entry.timestamp);
        match stamps.map(|t| t.seq).max() {
            Some(seq) if seq >= last => Ok(()),
            other => Err(format!("the newest stamps {other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn without_a_time_stamp_a_bundle_is_anchored_by_a_checkpoint_or_says_nothing_anchors_it() {
    tokio::time::timeout(BOUND, async {
        let mut p = unstarted_pair().await;
        // No checkpoint for an hour.
        for node in [&p.a, &p.b] {
            checkpoint_every(node, "1h");
        }
        p.start().await;
        let body = json!({"peer": "org-b", "service": "1", "path": "/pay", "form": {"amount": 12.50, "to": "bob"}});
        let (status, answer) = p.a.request(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let id = answer["data"]["id"].as_str().unwrap().to_owned();
        receipted(&p.a, &id, None).await;
        let out = tempfile::tempdir().unwrap();

        // No such request: named, nothing written.
        let nothing = out.path().join("nothing.json");
        let (code, _, err) = p.a.audit(&["bundle", "--id", "no-such-id", "--out", nothing.to_str().unwrap()]);
        assert!(code == 1 && err.contains("no record of request `no-such-id`"), "{err}");
        assert!(!nothing.exists());
        // The node running, nothing after the exchange vouches for it yet: said so, and verified.
        let (file, unanchored) = bundle(&p.a, &id, out.path(), "unanchored", "not anchored: nothing anchors");
        assert_eq!(unanchored["anchor"]["kind"], "none");
        let (code, told, err) = verify_bundle(&file);
        assert_eq!(code, 0, "{told}{err}");
        assert!(told.contains("not anchored: nothing outside org-a vouches for these records yet"), "{told}");
        check_by_hand(&unanchored, out.path());

        // Restarted to send checkpoints every 200 ms: org-b acknowledges keeping org-a's head.
        let last = records(&p.a).last().unwrap().seq;
        p.a.stop().await;
        checkpoint_every(&p.a, "200ms");
        p.a.start().await;
        support::until("org-b to keep a checkpoint of org-a's head", async || {
            let kept =
                records(&p.a).into_iter().filter_map(|r| r.entry.checkpoint.filter(|_| r.entry.direction == "out"));
            match kept.map(|c| c.head.seq).max() {
                Some(seq) if seq >= last as u64 => Ok(()),
                other => Err(format!("the newest kept: {other:?}, the exchange's last record: {last}")),
            }
        })
        .await;
        p.a.stop().await;
        let (file, anchored) = bundle(&p.a, &id, out.path(), "checkpoint", "anchored by a checkpoint");
        p.b.stop().await;
        for node in [&p.a, &p.b] {
            std::fs::remove_dir_all(&node.dir).unwrap();
        }
        let (code, told, err) = verify_bundle(&file);
        assert_eq!(code, 0, "{told}{err}");
        assert!(told.contains("checkpoint: org-a signed its chain head at record"), "{told}");
        assert!(told.contains("org-b acknowledged keeping it"), "{told}");
        check_by_hand(&anchored, out.path());

        // The checkpoint's signature altered, its record rehashed: named.
        let mut tampered = anchored.clone();
        let mut record: Record = serde_json::from_str(tampered["anchor"]["record"].as_str().unwrap()).unwrap();
        let checkpoint = record.entry.checkpoint.as_mut().unwrap();
        checkpoint.signature = altered(&checkpoint.signature);
        record.hash = record.chain_hash();
        tampered["anchor"]["record"] = json!(serde_json::to_string(&record).unwrap());
        fails(out.path(), "an altered checkpoint", &tampered, &["anchor: the checkpoint", "does not verify"]);
        // A checkpoint of another head.
        let mut tampered = anchored.clone();
        let mut record: Record = serde_json::from_str(tampered["anchor"]["record"].as_str().unwrap()).unwrap();
        record.entry.checkpoint.as_mut().unwrap().head.seq -= 1;
        record.hash = record.chain_hash();
        tampered["anchor"]["record"] = json!(serde_json::to_string(&record).unwrap());
        fails(out.path(), "a checkpoint of another head", &tampered, &["anchor", "not of the segment's last record"]);
    })
    .await
    .expect("the test finished within its bound");
}
