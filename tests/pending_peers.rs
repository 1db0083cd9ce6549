//! A node that dials with a certificate not pinned here is listed as pending, and pinned only by
//! an admin's `ferry peer accept` after comparing fingerprints; nothing of it crosses before.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dials_unpinned_waits_until_an_admin_accepts_it() {
    let root = tempfile::tempdir().unwrap();
    let (service, seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    // org-a pins org-b; org-b has never heard of org-a.
    assert_code(&peer_add(&a.dir, "org-b", &b.link.to_string(), &b.dir.cert()), 0);
    let node_b = run_node(&b.dir, "org-b");
    let node_a = run_node(&a.dir, "org-a");
    let client = api_client();
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    let (cb, a_fingerprint) = (b.dir.config_arg(), fingerprint_of_pem(&a.dir.cert()));

    // org-a greets org-b at its start: refused, and listed with its fingerprint and address.
    let deadline = Instant::now() + Duration::from_secs(15);
    let knock = loop {
        let out = ferry(["peers", "--pending", "--json", "--config", &cb]);
        assert_code(&out, 0);
        let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
        if let Some(k) = list.as_array().unwrap().iter().find(|k| k["fingerprint"] == a_fingerprint.as_str()) {
            break k.clone();
        }
        let _ = send_request(&client, a.api, "org-b", "1").await; // dial again
        assert!(Instant::now() < deadline, "org-a never listed as pending: {list}\n{}", node_b.run_log());
    };
    assert_eq!(knock["address"], a.link.to_string(), "{knock}");
    assert!(knock["certificate"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let out = ferry(["peers", "--pending", "--config", &cb]);
    assert!(stdout(&out).starts_with("FINGERPRINT") && stdout(&out).contains(&a_fingerprint), "{}", stdout(&out));
    assert_eq!(seen.seen().len(), 0, "nothing of an unpinned node reaches a service");

    // A fingerprint that is not waiting, or too short, is refused; the right one pins org-a.
    let other = "sha256:00000000deadbeef";
    assert_code(&ferry(["peer", "accept", "org-a", "--fingerprint", other, "--config", &cb]), 1);
    assert_usage_error(&ferry(["peer", "accept", "org-a", "--fingerprint", "sha256:ab", "--config", &cb]));
    let prefix = &a_fingerprint[..7 + 12];
    let out = ferry(["peer", "accept", "org-a", "--fingerprint", prefix, "--config", &cb]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(&format!("pinned `org-a` at {}, fingerprint {a_fingerprint}", a.link)),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("reloaded: 1 peer(s)"), "{}", stdout(&out));
    let out = ferry(["peers", "--pending", "--json", "--config", &cb]);
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap(), serde_json::json!([]), "no longer waiting");

    // Now a service org-b offers org-a answers it.
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    assert_code(&ferry(["reload", "--config", &cb]), 0);
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(15), &[&node_a, &node_b]).await;
}
