//! `--json` on the commands that set a node up and edit its config: one JSON object each, with
//! what the command did and, for an edit, what the running node said (`reload`).

mod support;

use serde_json::Value;
use support::cli::{assert_code, ferry, ferry_at, init, stdout};

/// Runs `ferry ARGS --json --config <node's config>`; exit 0 and its one JSON object.
fn json_at(node: &support::cli::NodeDir, args: &[&str]) -> Value {
    let out = ferry_at(node, &[args, &["--json"]].concat());
    assert_code(&out, 0);
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}):\n{}", stdout(&out)))
}

#[test]
fn setup_and_edit_commands_print_one_json_object() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("org-a");
    let out = ferry(["init", "--dir", dir.to_str().unwrap(), "--name", "org-a", "--json"]);
    assert_code(&out, 0);
    let made: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(made["name"], "org-a");
    assert!(made["fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:")), "{made}");
    assert!(std::path::Path::new(made["config"].as_str().unwrap()).exists(), "{made}");

    let a = init(root.path(), "org-x", None);
    let b = init(root.path(), "org-b", None);
    let invite = root.path().join("org-b.invite");
    let b_invite = json_at(&b, &["invite", "--out", invite.to_str().unwrap(), "--address", "127.0.0.1:7444"]);
    assert_eq!((&b_invite["name"], &b_invite["fingerprint"]), (&"org-b".into(), &b.fingerprint.as_str().into()));

    let added = json_at(&a, &["peer", "add", "--invite", invite.to_str().unwrap()]);
    assert_eq!(added["fingerprint"], b.fingerprint.as_str());
    assert_eq!(added["address"], "127.0.0.1:7444");
    assert!(added["reload"].as_str().is_some_and(|r| r.starts_with("no node answers")), "{added}");
    let moved = json_at(&a, &["peer", "set", "org-b", "--address", "127.0.0.1:7445"]);
    assert!(moved["change"].as_str().is_some_and(|c| c.contains("127.0.0.1:7445")), "{moved}");
    let service = json_at(&a, &["service", "add", "--id", "1", "--base-url", "http://127.0.0.1:9", "--allow", "org-b"]);
    assert!(service["change"].as_str().is_some_and(|c| c.contains("added service `1`")), "{service}");
    let set = json_at(&a, &["service", "set", "1", "--state", "disabled"]);
    assert!(set["change"].as_str().is_some_and(|c| c.contains("disabled")), "{set}");
    json_at(&a, &["service", "remove", "1"]);
    json_at(&a, &["peer", "remove", "org-b"]);

    let rotated = json_at(&a, &["cert", "rotate", "--grace", "1h"]);
    assert_eq!(rotated["previous"], a.fingerprint.as_str());
    assert_ne!(rotated["fingerprint"], a.fingerprint.as_str());
    let now = json_at(&a, &["cert", "fingerprint"]);
    assert_eq!((&now["fingerprint"], &now["rollover"]["previous"]), (&rotated["fingerprint"], &rotated["previous"]));
    assert_eq!(now["rollover"]["until"], rotated["until"]);
}
