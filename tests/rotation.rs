//! Key rotation without downtime (`ferry cert rotate`): two real nodes across a rotation under
//! traffic, a peer that holds the new certificate for its admin, and a hostile peer's rollover
//! statements.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::identity::{Fingerprint, Identity};
use ferry::wire::{self, Answer, Opening};
use serde_json::Value;
use support::cli::{
    assert_code, ferry_at, fingerprint_in, request_until_ok, run_node, send_request, stdout, wait_healthy, RunningPair,
};

/// `name` as `GET /v1/peers` on the node at `api` shows it.
async fn peer_view(client: &reqwest::Client, api: SocketAddr, name: &str) -> Value {
    let all: Value = client.get(format!("http://{api}/v1/peers")).send().await.unwrap().json().await.unwrap();
    all["data"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or_default()
}

/// A handshake with the node at `link` as `identity`, accepting only `pinned` and asking for
/// `server_name`: whether the node presented that certificate.
async fn presents(identity: &Identity, link: SocketAddr, pinned: &str, server_name: &str) -> bool {
    let pinned: Fingerprint = fingerprint(pinned);
    let tls = ferry::tls::client_config(identity, pinned).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint.connect_with(config, link, server_name).unwrap();
    let presented = tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("a handshake answer");
    endpoint.close(0u32.into(), b"");
    presented.is_ok()
}

fn fingerprint(text: &str) -> Fingerprint {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim_start_matches("sha256:"), &mut bytes).unwrap();
    Fingerprint(bytes)
}

/// Sync requests from org-a to org-b until `stop`, at most 20,000: how many were sent, and every
/// one that did not succeed.
fn traffic(
    client: reqwest::Client,
    api: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<Value>)> {
    tokio::spawn(async move {
        let (mut sent, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) && sent < 20_000 {
            let (status, answer) = send_request(&client, api, "org-b", "1").await;
            if status != 200 || answer["data"]["status"] != 200 {
                failed.push(answer);
            }
            sent += 1;
        }
        (sent, failed)
    })
}

/// Waits until `node` (org-b, which rotated) logs that org-a pins its new certificate.
async fn heard_pinned(node: &support::cli::RunningNode) {
    support::until("org-b to hear that org-a pins its new certificate", async || {
        let log = node.run_log();
        match log.contains("the peer pins this node's new certificate") {
            true => Ok(()),
            false => Err(log),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_traffic_loses_no_request_and_ends_with_the_new_certificate_alone() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, mut node_a, node_b, client, seen: _seen } = RunningPair::start(root.path()).await;
    let logs = [&node_a, &node_b];
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &logs).await;
    let old = b.dir.fingerprint.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = traffic(client.clone(), a.api, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rotated = ferry_at(&b.dir, &["cert", "rotate", "--grace", "8s"]);
    assert_code(&rotated, 0);
    let said = stdout(&rotated);
    let new = fingerprint_in(said.lines().find(|l| l.starts_with("new certificate:")).unwrap());
    assert_ne!(new, old);
    assert!(said.contains("the running node reloaded"), "{said}");
    let health: Value = client.get(format!("http://{}/v1/health", b.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["data"]["fingerprint"], new.as_str());
    assert_eq!(health["data"]["rollover"]["previous"], old.as_str());

    // org-a pins the new certificate beside the old one, and org-b presents it to org-a from then on.
    support::until("org-a to pin org-b's new certificate beside the old", async || {
        let view = peer_view(&client, a.api, "org-b").await;
        match view["fingerprint"] == new.as_str() && view["replaced"][0]["fingerprint"] == old.as_str() {
            true => Ok(()),
            false => Err(view.to_string()),
        }
    })
    .await;
    heard_pinned(&node_b).await;
    // During the grace, org-b presents whichever certificate a client asks for.
    let a_identity = Identity::load(&a.dir.cert(), &a.dir.key()).unwrap();
    assert!(
        presents(&a_identity, b.link, &old, ferry::tls::SERVER_NAME).await,
        "the old one, to a client that pins it"
    );
    let asking_new = ferry::tls::server_name(fingerprint(&new));
    assert!(presents(&a_identity, b.link, &new, &asking_new).await, "the new one, to a client that asks for it");

    // After the grace: the old certificate is pinned and presented no more.
    support::until("org-a to drop org-b's old certificate after the grace", async || {
        let view = peer_view(&client, a.api, "org-b").await;
        match view["replaced"].as_array().is_some_and(Vec::is_empty) {
            true => Ok(()),
            false => Err(view.to_string()),
        }
    })
    .await;
    assert!(
        !presents(&a_identity, b.link, &old, ferry::tls::SERVER_NAME).await,
        "after the grace no client is presented the old certificate"
    );
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = sending.await.unwrap();
    assert!(sent > 10, "the traffic ran across the rotation: {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed across the rotation, the first: {}",
        failed.len(),
        failed[0]
    );

    // org-a keeps the new pin across a restart (its store holds the rollover), and its check
    // reaches org-b with it.
    node_a.stop().await;
    let node_a = run_node(&a.dir, "org-a");
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;
    assert_eq!(peer_view(&client, a.api, "org-b").await["fingerprint"], new.as_str());
    let check = ferry_at(&a.dir, &["check", "--connect"]);
    assert_code(&check, 0);
    let listed: Value = serde_json::from_str(&stdout(&ferry_at(&a.dir, &["peer", "list", "--json"]))).unwrap();
    assert_eq!((&listed[0]["fingerprint"], &listed[0]["rolled_over_to"]), (&old.as_str().into(), &new.as_str().into()));

    // The evidence holds: org-b's receipts, signed by both keys, verify on org-a, and org-a's
    // log records the rollover it pinned.
    for node in [&node_a, &node_b] {
        node.audit_verify().unwrap();
    }
    let export = stdout(&ferry_at(&a.dir, &["audit", "export"]));
    assert!(export.contains("\"event\":\"rollover\"") && export.contains(&new), "{export}");
    // org-a's log holds org-b's receipts signed by both keys: org-b's cross-check against it
    // checks them with its retired certificate as well as its new one.
    let exported = root.path().join("org-a.export");
    std::fs::write(&exported, &export).unwrap();
    let cross = ferry_at(&b.dir, &["audit", "verify", "--peer-export", exported.to_str().unwrap()]);
    assert_code(&cross, 0);
    let later = ferry_at(&b.dir, &["cert", "fingerprint", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&stdout(&later)).unwrap(), serde_json::json!({"fingerprint": new}));
    let check_b = stdout(&ferry_at(&b.dir, &["check"]));
    assert!(check_b.contains("previous.key is a replaced key no longer used"), "{check_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_auto_rollover_off_holds_the_new_certificate_until_its_admin_accepts() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, mut node_b, client, seen: _seen } = RunningPair::start(root.path()).await;
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&a.dir.config).unwrap().parse().unwrap();
    doc["peer"].as_array_of_tables_mut().unwrap().get_mut(0).unwrap()["auto_rollover"] = toml_edit::value(false);
    std::fs::write(&a.dir.config, doc.to_string()).unwrap();
    assert_code(&ferry_at(&a.dir, &["reload"]), 0);
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;
    let old = b.dir.fingerprint.clone();

    let rotated = ferry_at(&b.dir, &["cert", "rotate", "--grace", "1h"]);
    assert_code(&rotated, 0);
    let new = fingerprint_in(stdout(&rotated).lines().find(|l| l.starts_with("new certificate:")).unwrap());
    support::until("org-a to hold org-b's new certificate for its admin", async || {
        let view = peer_view(&client, a.api, "org-b").await;
        match view["rollover_offered"] == new.as_str() {
            true => Ok(()),
            false => Err(view.to_string()),
        }
    })
    .await;
    let view = peer_view(&client, a.api, "org-b").await;
    assert_eq!(view["fingerprint"], old.as_str(), "nothing new is pinned without the admin");
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;
    let peers = stdout(&ferry_at(&a.dir, &["peers"]));
    assert!(peers.contains(&format!("ferry peer accept org-b --fingerprint {new}")), "{peers}");

    // A wrong fingerprint pins nothing; the right one (its first 16 digits will do) pins it.
    let wrong = ferry_at(&a.dir, &["peer", "accept", "org-b", "--fingerprint", &old]);
    assert_code(&wrong, 1);
    assert_eq!(peer_view(&client, a.api, "org-b").await["fingerprint"], old.as_str());
    let accepted = ferry_at(&a.dir, &["peer", "accept", "org-b", "--fingerprint", &new[..23]]);
    assert_code(&accepted, 0);
    assert!(stdout(&accepted).contains(&format!("pinned `org-b`'s new certificate {new}")), "{}", stdout(&accepted));
    let view = peer_view(&client, a.api, "org-b").await;
    assert_eq!(
        (&view["fingerprint"], &view["replaced"][0]["fingerprint"]),
        (&new.as_str().into(), &old.as_str().into())
    );
    assert!(view["rollover_offered"].is_null());
    heard_pinned(&node_b).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;

    // org-b restarted inside the grace presents the old certificate until org-a acknowledges the
    // statement again, at once, then the new one; nothing in between fails.
    node_b.stop().await;
    node_b.start().await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;
    heard_pinned(&node_b).await;
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!((status, &answer["data"]["status"]), (200, &200.into()), "{answer}");
}

/// A peer's rollover statement is pinned only when its pinned key signed it, for a certificate
/// of its own, inside its grace; a stolen old key cannot take the pin back after a rotation.
#[tokio::test]
async fn a_rollover_is_pinned_only_when_the_pinned_key_vouches_for_it() {
    let (rogue, b, _service, _root) = support::rogue_and_node().await;
    let rogue_view = async || peer_view(&reqwest::Client::new(), b.api, "rogue").await;
    let original = rogue_view().await["fingerprint"].as_str().unwrap().to_owned();
    let now = ferry::store::now_ms();
    let next = Identity::generate("rogue").unwrap();
    let stranger = Identity::generate("stranger").unwrap();
    let refused = |answer: Result<Answer, Option<wire::Code>>| match answer {
        Ok(Answer::Refused(refusal)) => refusal.message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let send =
        async |statement: wire::Rollover| rogue.send(&wire::encode(&Opening::Rollover(statement)).unwrap()).await;

    // Signed by a key that is not pinned, though it names the pinned certificate as the old one.
    let mut forged = ferry::rollover::sign("rogue", &stranger, &next.cert, now, now + 60_000).unwrap();
    forged.old = rogue.identity.fingerprint().0;
    assert!(refused(send(forged).await).contains("signature"));
    // Its grace over already.
    let late = ferry::rollover::sign("rogue", &rogue.identity, &next.cert, now - 120_000, now - 60_000).unwrap();
    assert!(refused(send(late).await).contains("grace is over"));
    // A grace beyond 90 days.
    let long = ferry::rollover::sign("rogue", &rogue.identity, &next.cert, now, now + 91 * 86_400_000).unwrap();
    assert!(refused(send(long).await).contains("grace"));
    // A certificate of the node's own: pinning it for a peer would make every later start and
    // reload refuse the config.
    let own = ferry::identity::load_cert(&b.cert()).unwrap();
    let onto_own = ferry::rollover::sign("rogue", &rogue.identity, &own, now, now + 60_000).unwrap();
    assert!(refused(send(onto_own).await).contains("this node's own certificate"));
    assert_eq!(rogue_view().await["fingerprint"], original.as_str(), "nothing was pinned");

    let genuine = ferry::rollover::sign("rogue", &rogue.identity, &next.cert, now, now + 60_000).unwrap();
    assert!(matches!(send(genuine.clone()).await, Ok(Answer::Ack(_))));
    let view = rogue_view().await;
    assert_eq!(view["fingerprint"], next.fingerprint().to_string());
    assert_eq!(view["replaced"][0]["fingerprint"], original.as_str());
    assert!(matches!(send(genuine).await, Ok(Answer::Ack(_))), "the same statement again: pinned already");
    // Another rollover inside the first one's grace: refused, so pins cannot pile up.
    let third = Identity::generate("rogue").unwrap();
    let soon = ferry::rollover::sign("rogue", &next, &third.cert, now, now + 60_000).unwrap();
    assert!(refused(send(soon).await).contains("grace lasts until"));

    // The old key, stolen, vouches for a certificate of the thief's: it is not the newest pin's.
    let thief = ferry::rollover::sign("rogue", &rogue.identity, &stranger.cert, now, now + 60_000).unwrap();
    assert!(refused(send(thief).await).contains("which is not the newest pinned for rogue"));
    assert_eq!(rogue_view().await["fingerprint"], next.fingerprint().to_string());
    let (code, _, why) = b.audit(&["verify"]);
    assert_eq!(code, 0, "{why}");
    assert!(b.audit(&["export"]).1.contains("\"event\":\"rollover\""), "the pinned rollover is evidence");
}
