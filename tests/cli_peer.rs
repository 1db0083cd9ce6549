//! `ferry peer add` as a process (API.md §1): the pinned certificate, and refusals that leave the config unchanged.

mod support;

use std::fs;

use support::cli::*;

#[test]
fn peer_add_pins_the_certificate_and_adds_a_peer_table() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);

    let out = peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), b.fingerprint);

    let pinned = a.dir.join("certs/peers/org-b.pem");
    assert_eq!(
        fs::read(&pinned).unwrap(),
        fs::read(b.cert()).unwrap(),
        "certs/peers/org-b.pem is not a copy of org-b's certificate"
    );

    let conf = a.toml();
    let peers = conf["peer"].as_array().expect("[[peer]] tables");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["name"].as_str(), Some("org-b"));
    assert_eq!(peers[0]["address"].as_str(), Some("127.0.0.1:7444"));
    let cert = peers[0]["cert"].as_str().unwrap();
    assert_eq!(a.dir.join("certs").join(cert), pinned, "cert is relative to certs_dir");

    // The edit keeps the rest of the file and the result still checks.
    let text = String::from_utf8(a.config_text()).unwrap();
    assert!(text.contains("send_roots"), "{text}");
    let out = check(&a);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ok"), "{}", stdout(&out));

    // A DNS name is a valid address.
    let c = init(root.path(), "org-c", None);
    let out = peer_add(&a, "org-c", "ferry.org-c.example:7443", &c.cert());
    assert_code(&out, 0);
    assert_eq!(a.toml()["peer"].as_array().unwrap().len(), 2);
}

#[test]
fn refused_peer_adds_leave_the_config_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let b = init(root.path(), "org-b", None);
    let c = init(root.path(), "org-c", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    let before = a.config_text();
    let pinned_b = fs::read(a.dir.join("certs/peers/org-b.pem")).unwrap();

    // The same peer twice, even with another certificate.
    for cert in [b.cert(), c.cert()] {
        let out = peer_add(&a, "org-b", "127.0.0.1:7444", &cert);
        assert_usage_error(&out);
        assert!(stderr(&out).contains("org-b"), "{}", stderr(&out));
        assert_eq!(a.config_text(), before, "config changed after a refusal");
        assert_eq!(
            fs::read(a.dir.join("certs/peers/org-b.pem")).unwrap(),
            pinned_b,
            "the pinned certificate was replaced"
        );
    }

    // This node's own certificate.
    let out = peer_add(&a, "org-self", "127.0.0.1:7445", &a.cert());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-self.pem").exists());

    // A missing certificate file: named in the message.
    let missing = root.path().join("no-such-cert.pem");
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &missing);
    assert_usage_error(&out);
    assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "should name {}: {}", missing.display(), stderr(&out));
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-c.pem").exists());

    // A file that is not a certificate (the private key).
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &c.key());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");
    assert!(!a.dir.join("certs/peers/org-c.pem").exists());

    // A bad address and a bad name: refused, and nothing half-written.
    for (name, address) in [("org-c", "no-port"), ("org-c", "host:0"), ("org c", "127.0.0.1:7446")] {
        let out = peer_add(&a, name, address, &c.cert());
        assert_usage_error(&out);
        assert_eq!(a.config_text(), before, "config changed after refusing {name:?} {address:?}");
        assert!(
            !a.dir.join("certs/peers/org-c.pem").exists(),
            "a pinned certificate was left after refusing {name:?} {address:?}"
        );
    }

    // This node's own name.
    let out = peer_add(&a, "org-a", "127.0.0.1:7446", &c.cert());
    assert_usage_error(&out);
    assert_eq!(a.config_text(), before, "config changed after a refusal");

    // After all that, org-c can still be added properly.
    let out = peer_add(&a, "org-c", "127.0.0.1:7446", &c.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), c.fingerprint);
}
