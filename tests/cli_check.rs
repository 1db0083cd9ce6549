//! `ferry check` as a process (API.md §1): every problem named, one per line; `check --connect`.

mod support;

use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};

use support::cli::*;

#[test]
fn check_names_every_problem_one_per_line() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    fs::write(
        &node.config,
        r#"
[node]
name = "org-a"
listen = "nowhere"
api = "127.0.0.1:8888"
colour = "blue"

[api]
heartbeat = "15 parsecs"
"#,
    )
    .unwrap();

    let out = check(&node);
    assert_usage_error(&out);
    let err = stderr(&out);
    let err_lines = lines(&err);
    assert_eq!(err_lines.len(), 3, "one line per problem expected:\n{err}");
    for (needle, what) in
        [("colour", "the unknown key"), ("heartbeat", "the bad duration"), ("listen", "the bad address")]
    {
        let matching: Vec<_> = err_lines.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(matching.len(), 1, "{what} ({needle}) not named on one line:\n{err}");
    }
    assert!(err_lines.iter().all(|l| l.contains(node.config.to_str().unwrap())), "every line should say where:\n{err}");
}

#[cfg(unix)]
#[test]
fn check_warns_when_a_config_holding_tokens_is_readable_by_others() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    let warned = |out: &Output| lines(&stdout(out)).iter().filter(|l| l.starts_with("warning:")).count();

    // Readable by everyone, but nothing secret in it yet.
    set_mode(&node.config, 0o644);
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 0, "{}", stdout(&out));

    let mut doc: toml_edit::DocumentMut = fs::read_to_string(&node.config).unwrap().parse().unwrap();
    doc["api"]["tokens"] = toml_edit::value(toml_edit::Array::from_iter(["0123456789abcdef-secret"]));
    fs::write(&node.config, doc.to_string()).unwrap();
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("api.tokens") && text.contains("0644") && text.contains("chmod 600"), "{text}");
    assert!(!text.contains("0123456789abcdef-secret"), "the warning must not show the token: {text}");

    // Readable by the owner and the node's group only: no warning.
    set_mode(&node.config, 0o640);
    let out = check(&node);
    assert_code(&out, 0);
    assert_eq!(warned(&out), 0, "{}", stdout(&out));
}

#[test]
fn check_names_a_deleted_peer_certificate() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&check(&a), 0);

    let pinned = a.dir.join("certs/peers/org-b.pem");
    fs::remove_file(&pinned).unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    let err = stderr(&out);
    assert_eq!(lines(&err).len(), 1, "{err}");
    assert!(err.contains("org-b.pem"), "should name the file: {err}");
    assert!(err.contains("org-b"), "should name the peer: {err}");
}

#[test]
fn check_refuses_a_key_that_does_not_match_the_certificate() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    fs::remove_file(a.key()).unwrap();
    fs::copy(b.key(), a.key()).unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));

    fs::write(a.key(), "garbage\n").unwrap();
    let out = check(&a);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));
}

#[test]
fn check_on_a_missing_or_malformed_config() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("config/ferry.toml");
    let out = ferry(["check", "--config", missing.to_str().unwrap()]);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));

    let node = init(root.path(), "org-a", None);
    fs::write(&node.config, "[node\nname = ").unwrap();
    let out = check(&node);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(node.config.to_str().unwrap()), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_names_each_unreachable_peer_and_service() {
    let root = tempfile::tempdir().unwrap();
    let (service, _seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    let c = init_on_loopback(root.path(), "org-c"); // pinned by org-b, never started
    let d = init_on_loopback(root.path(), "org-d"); // running, but does not pin org-b
    pin_both_ways(&a, "org-a", &b, "org-b");
    // org-a at two addresses (two members), the second one silent: each address is reached.
    let (a_link, silent) = (a.link.to_string(), c.link.to_string());
    assert_code(&ferry_at(&b.dir, &["peer", "set", "org-a", "--address", &a_link, "--address", &silent]), 0);
    assert_code(&peer_add(&b.dir, "org-c", &c.link.to_string(), &c.dir.cert()), 0);
    assert_code(&peer_add(&b.dir, "org-d", &d.link.to_string(), &d.dir.cert()), 0);
    // Pinned at org-d's address: not the node that answers there.
    let e = init_on_loopback(root.path(), "org-e");
    assert_code(&peer_add(&b.dir, "org-e", &d.link.to_string(), &e.dir.cert()), 0);
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    let dead = free_tcp();
    assert_code(&service_add(&b.dir, "2", &format!("http://{dead}"), Some("org-a")), 0);
    let node_a = run_node(&a.dir, "org-a");
    let node_d = run_node(&d.dir, "org-d");
    let client = api_client();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_d, d.api, Duration::from_secs(15)).await;

    // Without --connect nothing is dialed: the files are fine.
    assert_code(&check(&b.dir), 0);
    let started = Instant::now();
    let out = ferry(["check", "--connect", "--config", &b.dir.config_arg()]);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_code(&out, 2);
    let (ok, failed) = (stdout(&out), stderr(&out));
    assert!(ok.contains(&format!("ok: peer `org-a` at {a_link}")), "{ok}");
    assert!(ok.contains("ok: service `1`"), "{ok}");
    let line = |name: &str| failed.lines().find(|l| l.contains(name)).map(str::to_owned);
    let c_line = line("peer `org-c`").unwrap_or_else(|| panic!("org-c not named:\n{failed}"));
    assert!(c_line.contains("no answer"), "{c_line}");
    let d_line = line("peer `org-d`").unwrap_or_else(|| panic!("org-d not named:\n{failed}"));
    assert!(d_line.contains("pinned"), "{d_line}");
    let e_line = line("peer `org-e`").unwrap_or_else(|| panic!("org-e not named:\n{failed}"));
    let (presented, pinned) = (fingerprint_of_pem(&d.dir.cert()), fingerprint_of_pem(&e.dir.cert()));
    assert!(e_line.contains(&format!("presented certificate {presented}, but {pinned} is pinned")), "{e_line}");
    let s_line = line("service `2`").unwrap_or_else(|| panic!("service 2 not named:\n{failed}"));
    assert!(s_line.contains("unreachable") && s_line.contains(&dead.to_string()), "{s_line}");
    let a_line = line("peer `org-a`").unwrap_or_else(|| panic!("org-a's silent member not named:\n{failed}"));
    assert!(a_line.contains(&format!("at {silent}: no answer")), "{a_line}");
    assert_eq!(failed.lines().count(), 5, "one line each, no log lines:\n{failed}");

    // The same as one JSON object, the exit code the same.
    let out = ferry(["check", "--connect", "--json", "--config", &b.dir.config_arg()]);
    assert_code(&out, 2);
    assert_eq!(stderr(&out), "", "JSON only");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let reached = report["reached"].as_array().unwrap();
    let of = |name: &str| reached.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {report}"));
    let a_at = |address: &str| reached.iter().find(|r| r["name"] == "org-a" && r["address"] == address).unwrap();
    assert!(a_at(&a_link)["ok"] == true && a_at(&a_link)["rtt_ms"].is_number(), "{report}");
    assert_eq!(a_at(&silent)["ok"], false, "{report}");
    assert_eq!((&of("1")["ok"], &of("1")["kind"]), (&true.into(), &"service".into()), "{report}");
    assert!(of("org-e")["ok"] == false && of("org-e")["detail"].as_str().unwrap().contains(&presented), "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(reached.len(), 7, "{report}");
}

#[test]
fn check_refuses_a_tsa_certificate_missing_or_not_for_time_stamping() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    let use_tsa_cert = |cert: &str| {
        let mut doc: toml_edit::DocumentMut = fs::read_to_string(&node.config).unwrap().parse().unwrap();
        doc["evidence"] = toml_edit::table();
        doc["evidence"]["tsa_url"] = toml_edit::value("http://127.0.0.1:3180/");
        doc["evidence"]["tsa_cert"] = toml_edit::value(cert);
        fs::write(&node.config, doc.to_string()).unwrap();
    };
    for (cert, named) in [("tsa.pem", "tsa.pem"), ("node.pem", "timeStamping")] {
        use_tsa_cert(cert);
        let out = check(&node);
        assert_usage_error(&out);
        let err = stderr(&out);
        assert!(err.contains("evidence.tsa_cert: ") && err.contains(named), "{cert}: {err}");
    }
    let tsa = support::tsa::signer(support::tsa::KeyKind::EcdsaP256, root.path(), "a TSA", true);
    fs::write(node.dir.join("certs/tsa.pem"), tsa.cert_pem).unwrap();
    use_tsa_cert("tsa.pem");
    assert_code(&check(&node), 0);
}

#[test]
fn check_refuses_a_store_ca_missing_or_holding_no_certificate() {
    let root = tempfile::tempdir().unwrap();
    let node = init(root.path(), "org-a", None);
    let mut doc: toml_edit::DocumentMut = fs::read_to_string(&node.config).unwrap().parse().unwrap();
    doc["store"] = toml_edit::table();
    doc["store"]["url"] = toml_edit::value("postgres://ferry@127.0.0.1:1/ferry");
    doc["store"]["ca"] = toml_edit::value("db-ca.pem");
    fs::write(&node.config, doc.to_string()).unwrap();
    for (ca, named) in [(None, "No such file"), (Some("no certificate here"), "holds no certificate")] {
        if let Some(text) = ca {
            fs::write(node.dir.join("db-ca.pem"), text).unwrap();
        }
        let out = check(&node);
        assert_usage_error(&out);
        let err = stderr(&out);
        assert!(err.contains("store.ca ") && err.contains("db-ca.pem") && err.contains(named), "{err}");
    }
}
