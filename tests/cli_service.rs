//! `ferry service add` as a process (API.md §1): the service table, and refusals that leave the config unchanged.

mod support;

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
