//! Trusted time in a running node: two nodes with `[evidence] tsa_url` pointing at the loopback
//! TSA (`support::tsa`) keep time-stamp records in their logs, `ferry audit verify` checks them,
//! a changed token is named, a TSA that is down is reported while the node works on, and a stop
//! stamps the last head. Without `openssl` the tests skip, or fail under `CI`.

mod support;

use std::time::Duration;

use ferry::evidence::Record;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::tsa::{have_openssl, signer, start, use_tsa, Behaviour, KeyKind, Tsa, NAME};
use support::{unstarted_pair, Node, Pair};

/// Every test's bound.
const BOUND: Duration = Duration::from_secs(90);

/// Runs a test body within [`BOUND`], skipping it without openssl.
macro_rules! bounded {
    ($body:expr) => {
        if have_openssl() {
            tokio::time::timeout(BOUND, $body).await.expect("the test finished within its bound");
        }
    };
}

/// A started pair both of whose nodes use `tsa`, stamping `every`.
async fn pair_with_tsa(tsa: &Tsa, every: &str) -> Pair {
    let mut p = unstarted_pair().await;
    for node in [&p.a, &p.b] {
        use_tsa(node, tsa.url.as_str(), &tsa.signer.cert_pem, every);
    }
    p.start().await;
    p
}

/// A few synchronous exchanges from org-a to org-b.
async fn exchanges(p: &Pair, n: usize) {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, answer) =
            p.a.request(json!({"peer": "org-b", "service": "1", "path": "/echo", "form": {"i": i}})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        ids.push(answer["data"]["id"].as_str().unwrap().to_owned());
    }
    // org-b's receipts for them join org-a's log a little later: wait for them, so that no
    // record lands while a test looks at the head.
    support::until("org-a to hold org-b's receipts", async || {
        let receipted: Vec<String> = records(&p.a)
            .into_iter()
            .filter_map(|r| r.entry.receipt)
            .flat_map(|r| r.leaves.into_iter().map(|l| l.id))
            .collect();
        match ids.iter().find(|id| !receipted.contains(id)) {
            Some(id) => Err(format!("no receipt of {id} yet")),
            None => Ok(()),
        }
    })
    .await;
}

/// `node`'s evidence records.
fn records(node: &Node) -> Vec<Record> {
    support::evidence_log(&node.dir).iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect()
}

/// `node`'s time-stamp records.
fn stamps(node: &Node) -> Vec<Record> {
    records(node).into_iter().filter(|r| r.entry.event == "timestamp").collect()
}

/// Rewrites `node`'s log one record per row (as text), with `change` applied to each record and
/// the chain recomputed after it when `rechain`, as an insider would; returns the seqs changed.
fn rewrite(node: &Node, rechain: bool, mut change: impl FnMut(&mut Record) -> bool) -> Vec<i64> {
    let rows = records(node);
    let db = rusqlite::Connection::open(node.dir.join("data/ferry.db")).unwrap();
    db.execute("DELETE FROM evidence", []).unwrap();
    let mut prev = ferry::evidence::GENESIS.to_owned();
    let mut changed = Vec::new();
    for mut record in rows {
        if change(&mut record) {
            changed.push(record.seq);
        }
        if rechain {
            record.prev = prev;
            record.hash = record.chain_hash();
            prev = record.hash.clone();
        }
        let text = serde_json::to_string(&record).unwrap();
        db.execute("INSERT INTO evidence (seq, records) VALUES (?1, ?2)", rusqlite::params![record.seq, text]).unwrap();
    }
    changed
}

/// A token with one character of its base64 changed (still base64).
fn altered(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let at = chars.len() / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn time_stamps_are_kept_and_verified_and_a_changed_token_is_named() {
    if support::sqlite_only("time_stamps_are_kept_and_verified_and_a_changed_token_is_named") {
        return;
    }
    bounded!(async {
        let tsa = start(KeyKind::EcdsaP256, "sha256", 3, Behaviour::Tsa).await;
        let mut p = pair_with_tsa(&tsa, "300ms").await;
        // A head that moved is stamped at the next tick; one that did not is not stamped again.
        for (more, want) in [(3, 1), (2, 2)] {
            exchanges(&p, more).await;
            support::until("a time-stamp of the moved head on org-a", async || {
                let n = stamps(&p.a).len();
                if n >= want {
                    Ok(())
                } else {
                    Err(format!("{n} time-stamps"))
                }
            })
            .await;
        }
        let (_, health) = p.a.get("/v1/health").await;
        let last_ok = &health["data"]["timestamps"]["last_ok"];
        assert!(last_ok["seq"].as_i64().is_some_and(|seq| seq > 0), "{health}");
        assert_eq!(health["data"]["timestamps"]["last_error"], Value::Null, "{health}");
        let (_, verified) = p.a.get("/v1/audit/verify").await;
        assert_eq!(verified["data"]["intact"], true, "{verified}");
        assert!(verified["data"]["timestamps"].as_u64().unwrap() >= 2, "{verified}");
        p.a.stop().await;
        p.b.stop().await;

        for node in [&p.a, &p.b] {
            let all = records(node);
            let stamps = stamps(node);
            assert!(!stamps.is_empty(), "{} keeps time-stamps", node.name);
            for s in &stamps {
                let stamp = s.entry.timestamp.as_ref().unwrap();
                let stamped = &all[stamp.seq as usize - 1];
                assert_eq!((stamped.seq, &stamped.hash), (stamp.seq, &stamp.hash), "it stamps that record's hash");
            }
            let (code, out, err) = node.audit(&["verify"]);
            assert_eq!(code, 0, "{}: {out}{err}", node.name);
            assert!(out.contains(&format!("{} time-stamps verified", stamps.len())), "{out}");
        }

        // A time-stamp record removed: the chain breaks there, as for any record.
        // The first one, followed by more exchanges' records: a cut tail is not seen by the chain.
        let first = stamps(&p.a)[0].seq;
        rewrite(&p.a, false, |_| false);
        let db = rusqlite::Connection::open(p.a.dir.join("data/ferry.db")).unwrap();
        let saved: String = db.query_row("SELECT records FROM evidence WHERE seq = ?1", [first], |r| r.get(0)).unwrap();
        db.execute("DELETE FROM evidence WHERE seq = ?1", [first]).unwrap();
        let (code, _, err) = p.a.audit(&["verify"]);
        assert!(code == 1 && err.contains(&format!("broken at seq {first}")), "{err}");
        db.execute("INSERT INTO evidence (seq, records) VALUES (?1, ?2)", rusqlite::params![first, saved]).unwrap();
        assert_eq!(p.a.audit(&["verify"]).0, 0, "restored");

        // An altered token, the chain left as it is: the record's hash names it.
        let changed = rewrite(&p.a, false, |r| match r.entry.timestamp.as_mut() {
            Some(stamp) if r.seq == first => {
                stamp.token = altered(&stamp.token);
                true
            }
            _ => false,
        });
        let (code, _, err) = p.a.audit(&["verify"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("broken at seq {}", changed[0])), "{err}");

        // The chain rebuilt over the altered token: the token's check names it.
        rewrite(&p.a, true, |_| false);
        let (code, _, err) = p.a.audit(&["verify"]);
        assert!(code == 1 && err.contains(&format!("broken at seq {}: time-stamp:", changed[0])), "{err}");

        // A token over another record's hash, the chain rebuilt: named as not stamping that record.
        let first = stamps(&p.b)[0].seq;
        rewrite(&p.b, true, |r| match r.entry.timestamp.as_mut() {
            Some(stamp) if r.seq == first => {
                stamp.seq -= 1;
                true
            }
            _ => false,
        });
        let (code, _, err) = p.b.audit(&["verify"]);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("broken at seq {first}: time-stamp:")) && err.contains("not the hash of record"),
            "{err}"
        );
    });
}

#[tokio::test]
async fn a_stop_stamps_the_last_head() {
    bounded!(async {
        let tsa = start(KeyKind::Rsa, "sha256", 0, Behaviour::Tsa).await;
        // Only the stop stamps: the first tick is an hour away.
        let mut p = pair_with_tsa(&tsa, "1h").await;
        exchanges(&p, 3).await;
        assert!(stamps(&p.a).is_empty(), "no time-stamp before the stop");
        p.a.stop().await;
        let all = records(&p.a);
        let last = all.last().unwrap();
        assert_eq!(last.entry.event, "timestamp", "the last record is the stop's time-stamp");
        let before = &all[all.len() - 2];
        let stamp = last.entry.timestamp.as_ref().unwrap();
        assert_eq!((stamp.seq, &stamp.hash), (before.seq, &before.hash), "it stamps the head at the stop");
        let (code, out, err) = p.a.audit(&["verify"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("1 time-stamps verified") && out.contains("the last 1 records are after it"), "{out}");
        p.b.stop().await;
    });
}

#[tokio::test]
async fn a_tsa_that_is_down_leaves_the_node_working_and_health_says_so() {
    bounded!(async {
        let dir = tempfile::tempdir().unwrap();
        let cert = signer(KeyKind::EcdsaP256, dir.path(), NAME, true).cert_pem;
        let down = format!("http://{}/", support::free_tcp());
        let mut p = unstarted_pair().await;
        use_tsa(&p.a, &down, &cert, "300ms");
        p.start().await;
        exchanges(&p, 2).await;
        let why = support::until("org-a to report the TSA's failure", async || {
            let (_, health) = p.a.get("/v1/health").await;
            match health["data"]["timestamps"]["last_error"]["why"].as_str() {
                Some(why) => Ok(why.to_owned()),
                None => Err(health.to_string()),
            }
        })
        .await;
        assert!(why.contains("did not answer"), "{why}");
        exchanges(&p, 2).await;
        let metrics = support::client().get(p.a.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("ferry_timestamps_total{outcome=\"failed\"}"), "{metrics}");
        p.a.stop_within(Duration::from_secs(20)).await.unwrap();
        p.b.stop().await;
        assert!(stamps(&p.a).is_empty());
        let (code, out, err) = p.a.audit(&["verify"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("0 time-stamps verified; no record has a trusted time"), "{out}");
    });
}

#[tokio::test]
async fn a_tsa_that_hangs_does_not_hold_up_a_stop() {
    bounded!(async {
        let dir = tempfile::tempdir().unwrap();
        let cert = signer(KeyKind::EcdsaP256, dir.path(), NAME, true).cert_pem;
        // A TSA that takes every connection and never answers (its requests time out after 30 s).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                connections.push(connection);
            }
        });
        let mut p = unstarted_pair().await;
        // Only the stop stamps: the first tick is an hour away.
        use_tsa(&p.a, &url, &cert, "1h");
        p.start().await;
        exchanges(&p, 2).await;
        let started = std::time::Instant::now();
        p.a.stop_within(Duration::from_secs(20)).await.expect("the stop's stamp is bounded (5 s), not the TSA's 30 s");
        assert!(started.elapsed() < Duration::from_secs(20), "stopped in {:?}", started.elapsed());
        p.b.stop().await;
        held.abort();
        assert!(stamps(&p.a).is_empty(), "no answer, no time-stamp");
        let (code, out, err) = p.a.audit(&["verify"]);
        assert_eq!(code, 0, "{out}{err}");
    });
}

#[tokio::test]
async fn a_restart_does_not_stamp_the_last_stop_stamp_again() {
    bounded!(async {
        let tsa = start(KeyKind::EcdsaP256, "sha256", 0, Behaviour::Tsa).await;
        let mut p = pair_with_tsa(&tsa, "200ms").await;
        exchanges(&p, 2).await;
        p.a.stop().await;
        let after_stop = stamps(&p.a).len();
        assert!(after_stop >= 1, "the stop stamped the last head");
        p.a.start().await;
        // Five ticks with an unmoved head (its last record is the stop's stamp): nothing is
        // stamped. Whether something happens can only be seen by waiting for it.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(stamps(&p.a).len(), after_stop, "an unmoved head is not stamped again after a restart");
        // The stamper is alive: a moved head is stamped at the next tick.
        exchanges(&p, 1).await;
        support::until("a time-stamp of the moved head", async || match stamps(&p.a).len() {
            n if n > after_stop => Ok(()),
            n => Err(format!("{n} time-stamps")),
        })
        .await;
        p.a.stop().await;
        p.b.stop().await;
    });
}
