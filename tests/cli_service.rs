//! `ferry service add|list|set|remove` as processes (API.md §1): the service tables, edits that
//! keep the file's comments, refusals and hostile ids that leave the config unchanged, and a
//! running node that applies `service set --state` at SIGHUP.

mod support;

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use support::cli::*;

#[test]
fn service_add_adds_a_service_table() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    let c = init(root.path(), "org-c", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&peer_add(&a, "org-c", "127.0.0.1:7445", &c.cert()), 0);

    let out = service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b"));
    assert_code(&out, 0);
    let out = service_add(&a, "2", "http://127.0.0.1:8081", Some("org-b,org-c"));
    assert_code(&out, 0);

    let conf = a.toml();
    let services = conf["service"].as_array().expect("[[service]] tables");
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["id"].as_str(), Some("1"));
    assert_eq!(services[0]["base_url"].as_str(), Some("http://127.0.0.1:8080"));
    let allow = |i: usize| -> Vec<&str> {
        services[i]["allow"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
    };
    assert_eq!(allow(0), ["org-b"]);
    assert_eq!(allow(1), ["org-b", "org-c"]);
    assert_code(&check(&a), 0);
}

#[test]
fn refused_service_adds_leave_the_config_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b")), 0);
    let before = a.config_text();

    // An unknown peer in --allow: named.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("org-z"));
    assert_usage_error(&out);
    assert!(stderr(&out).contains("org-z"), "{}", stderr(&out));
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // One unknown among known ones.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("org-b,org-z"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // The same id twice.
    let out = service_add(&a, "1", "http://127.0.0.1:9090", Some("org-b"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // Not an http(s) URL.
    let out = service_add(&a, "2", "ftp://127.0.0.1/", Some("org-b"));
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // `*` allows every configured peer.
    let out = service_add(&a, "2", "http://127.0.0.1:8080", Some("*"));
    assert_code(&out, 0);
}

/// org-a with org-b and org-c pinned, service 1 for org-b and service 2 for both.
fn a_with_services(root: &std::path::Path) -> NodeDir {
    let a = init(root, "org-a", None);
    for (name, port) in [("org-b", 7444), ("org-c", 7445)] {
        let peer = init(root, name, None);
        assert_code(&peer_add(&a, name, &format!("127.0.0.1:{port}"), &peer.cert()), 0);
    }
    assert_code(&service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b")), 0);
    assert_code(&service_add(&a, "2", "http://127.0.0.1:8081", Some("org-b,org-c")), 0);
    a
}

/// The config file as text.
fn text(node: &NodeDir) -> String {
    String::from_utf8(node.config_text()).unwrap()
}

#[test]
fn service_list_shows_id_base_url_state_and_allow() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    assert_eq!(lines(&stdout(&ferry_at(&a, &["service", "list"]))).len(), 1, "only the header");
    assert_eq!(ferry_at(&a, &["service", "list", "--json"]).stdout, b"[]\n");

    let a = a_with_services(&root.path().join("full"));
    assert_code(&service_add(&a, "3", "http://127.0.0.1:8082", None), 0);
    set_service_key(&a, "2", "state", Some("deprecated"));
    let out = ferry_at(&a, &["service", "list"]);
    assert_code(&out, 0);
    let rows: Vec<Vec<String>> =
        lines(&stdout(&out)).iter().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect();
    assert_eq!(
        rows,
        [
            ["ID", "BASE_URL", "STATE", "ALLOW"],
            ["1", "http://127.0.0.1:8080/", "active", "org-b"],
            ["2", "http://127.0.0.1:8081/", "deprecated", "org-b,org-c"],
            ["3", "http://127.0.0.1:8082/", "active", "nobody"],
        ]
    );
    let json: Value = serde_json::from_slice(&ferry_at(&a, &["service", "list", "--json"]).stdout).unwrap();
    assert_eq!(
        json,
        json!([
            {"id": "1", "base_url": "http://127.0.0.1:8080/", "state": "active", "allow": ["org-b"]},
            {"id": "2", "base_url": "http://127.0.0.1:8081/", "state": "deprecated", "allow": ["org-b", "org-c"]},
            {"id": "3", "base_url": "http://127.0.0.1:8082/", "state": "active", "allow": []},
        ])
    );
}

#[test]
fn service_set_changes_state_allow_and_base_url_in_place_keeping_the_comments() {
    let root = tempfile::tempdir().unwrap();
    let a = a_with_services(root.path());
    fs::write(
        &a.config,
        text(&a).replacen("[[service]]", "# the user service, owned by the web team\n[[service]]", 1).replacen(
            "allow = [\"org-b\"]",
            "allow = [\"org-b\"]   # only the registry",
            1,
        ),
    )
    .unwrap();
    let before = text(&a);

    let line = assert_edited(&ferry_at(&a, &["service", "set", "1", "--state", "disabled"]));
    assert!(line.contains("disabled") && line.contains("active"), "{line}");
    assert_eq!(text(&a), before.replacen("# only the registry\n", "# only the registry\nstate = \"disabled\"\n", 1));
    assert_eq!(a.toml()["service"][0]["state"].as_str(), Some("disabled"));

    // `enabled` is `active`; the key stays where it is.
    assert_edited(&ferry_at(&a, &["service", "set", "1", "--state", "enabled"]));
    assert_eq!(text(&a), before.replacen("# only the registry\n", "# only the registry\nstate = \"active\"\n", 1));

    // The whole allow list, replaced, keeping its comment; '' allows nobody.
    assert_edited(&ferry_at(&a, &["service", "set", "1", "--allow", "org-c,org-b"]));
    assert!(text(&a).contains("allow = [\"org-c\", \"org-b\"]   # only the registry\n"), "{}", text(&a));
    assert_edited(&ferry_at(&a, &["service", "set", "1", "--allow", ""]));
    assert!(text(&a).contains("allow = []   # only the registry\n"), "{}", text(&a));

    // Several at once, on another service.
    let line = assert_edited(&ferry_at(
        &a,
        &["service", "set", "2", "--base-url", "https://users.internal/api/", "--allow", "*", "--state", "deprecated"],
    ));
    assert!(line.contains("https://users.internal/api/") && line.contains("deprecated"), "{line}");
    let conf = a.toml();
    assert_eq!(conf["service"][1]["base_url"].as_str(), Some("https://users.internal/api/"));
    assert_eq!(conf["service"][1]["allow"].as_array().unwrap()[0].as_str(), Some("*"));
    assert!(text(&a).starts_with(&before[..before.find("# the user service").unwrap()]), "the head is untouched");
    assert!(text(&a).contains("# the user service, owned by the web team\n[[service]]\nid = \"1\""), "{}", text(&a));
    assert_code(&check(&a), 0);

    // Asked for what is so already: nothing written.
    let after = text(&a);
    let out = ferry_at(&a, &["service", "set", "2", "--state", "deprecated"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
    assert_eq!(text(&a), after);
}

#[test]
fn refused_service_edits_leave_the_config_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let a = a_with_services(root.path());
    let before = a.config_text();
    for (args, says) in [
        (vec!["service", "set", "9", "--state", "disabled"], "the configured services: 1, 2"),
        (vec!["service", "remove", "9"], "the configured services: 1, 2"),
        (vec!["service", "set", "1", "--allow", "org-b,org-z"], "`org-z` is not a configured peer"),
        (vec!["service", "set", "1", "--base-url", "ftp://127.0.0.1/"], "is not an http(s) URL"),
        (vec!["service", "set", "1", "--state", "paused"], "paused"),
        (vec!["service", "set", "1"], "--state"),
    ] {
        let out = ferry_at(&a, &args);
        assert_usage_error(&out);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(a.config_text(), before, "{args:?} changed the config");
    }
}

#[test]
fn service_remove_takes_its_table_and_comment_only() {
    let root = tempfile::tempdir().unwrap();
    let a = a_with_services(root.path());
    let original = text(&a);
    fs::write(&a.config, original.replacen("[[service]]", "# the user service\n[[service]]", 1)).unwrap();
    let line = assert_edited(&ferry_at(&a, &["service", "remove", "1"]));
    assert!(line.contains("`1`") && line.contains("http://127.0.0.1:8080/"), "{line}");
    let after = text(&a);
    assert!(!after.contains("# the user service") && !after.contains("id = \"1\""), "{after}");
    let services = a.toml()["service"].as_array().unwrap().clone();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0]["id"].as_str(), Some("2"));
    assert_edited(&ferry_at(&a, &["service", "remove", "2"]));
    assert!(a.toml().get("service").is_none());
    assert!(text(&a).contains("send_roots") && text(&a).contains("[[peer]]"), "{}", text(&a));
    let out = ferry_at(&a, &["service", "remove", "2"]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("no service is configured"), "{}", stderr(&out));
    assert_code(&check(&a), 0);
}

#[test]
fn hostile_service_ids_and_values_never_write_an_invalid_config() {
    let root = tempfile::tempdir().unwrap();
    let a = a_with_services(root.path());
    let before = files_below(root.path());
    let hostile = ["../x", "1\n", "1\"\n[node]\nname = \"evil", "1\"", "x\ty", "2/../1", ""];
    for id in hostile {
        let url = format!("http://127.0.0.1:8080/{id}\n");
        let mut attempts = vec![
            vec!["service", "set", id, "--state", "disabled"],
            vec!["service", "remove", id],
            vec!["service", "set", "1", "--base-url", &url],
        ];
        if !id.is_empty() {
            attempts.push(vec!["service", "set", "1", "--allow", id]); // `--allow ''` allows nobody
        }
        for args in attempts {
            let out = ferry_at(&a, &args);
            assert_usage_error(&out);
            assert_eq!(lines(&stderr(&out)).len(), 1, "{args:?}: one line, the id escaped:\n{}", stderr(&out));
            assert_eq!(files_below(root.path()), before, "{args:?} changed a file");
        }
    }
    // An id with a line break or a tab is refused when added; one with a quote is only a name,
    // written escaped, and the file still loads.
    for id in ["a\nb", "x\ty", "9\"\n[node]\nname = \"evil"] {
        let out = service_add(&a, id, "http://127.0.0.1:8080", Some("org-b"));
        assert_usage_error(&out);
        assert_eq!(lines(&stderr(&out)).len(), 1, "{id:?}: {}", stderr(&out));
        assert_eq!(files_below(root.path()), before, "adding {id:?} changed a file");
    }
    assert_code(&service_add(&a, "9\" ]", "http://127.0.0.1:8080", Some("org-b")), 0);
    assert_code(&check(&a), 0);
    assert_edited(&ferry_at(&a, &["service", "set", "9\" ]", "--state", "disabled"]));
    assert_edited(&ferry_at(&a, &["service", "remove", "9\" ]"]));
    assert_eq!(files_below(root.path()), before, "an add and its removal leave the file as it was");
}

/// The walkthrough of issue 25: the admin disables a service with `ferry service set`, which has
/// the running node reload at once, and peers are refused as `unavailable` (503); re-enabled, it
/// serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_applies_service_set_state_at_once() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;

    let out = ferry_at(&b.dir, &["service", "set", "1", "--state", "disabled"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("the running node reloaded: 1 peer(s), 1 service(s)"), "{}", stdout(&out));
    let calls = seen.seen().len();
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!((status, &answer["data"]["error"]), (503, &"unavailable".into()), "{answer}");
    assert!(answer["msg"].as_str().unwrap_or_default().contains("disabled"), "{answer}");
    assert_eq!(seen.seen().len(), calls, "a disabled service is never called");

    let out = ferry_at(&b.dir, &["service", "set", "1", "--state", "enabled"]);
    assert!(stdout(&out).contains("the running node reloaded"), "{}", stdout(&out));
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!(status, 200, "served again: {answer}");
    assert!(seen.seen().len() > calls, "served again");
}
