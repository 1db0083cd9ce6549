//! `ferry peer add|list|set|remove` as processes (API.md §1): the pinned certificates, edits that
//! keep the file's comments, refusals that leave the config unchanged, one certificate per peer,
//! and hostile names that touch nothing.

mod support;

use std::fs;
use std::time::Duration;

use serde_json::Value;

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

/// Three node directories in `root`: org-a, and org-b and org-c pinned on org-a.
fn a_with_two_peers(root: &std::path::Path) -> (NodeDir, NodeDir, NodeDir) {
    let a = init(root, "org-a", None);
    let b = init(root, "org-b", None);
    let c = init(root, "org-c", None);
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_code(&peer_add(&a, "org-c", "127.0.0.1:7445", &c.cert()), 0);
    (a, b, c)
}

/// The config's text with `edit` applied, written back: the comments an admin adds by hand.
fn edit_config(node: &NodeDir, edit: impl FnOnce(String) -> String) {
    let text = String::from_utf8(node.config_text()).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    fs::write(&node.config, edited).unwrap();
}

#[test]
fn peer_list_shows_the_configured_peers_as_a_table_or_json() {
    let root = tempfile::tempdir().unwrap();
    let a = init(root.path(), "org-a", None);
    let out = ferry_at(&a, &["peer", "list"]);
    assert_code(&out, 0);
    assert_eq!(lines(&stdout(&out)).len(), 1, "only the header without peers: {}", stdout(&out));
    assert_eq!(ferry_at(&a, &["peer", "list", "--json"]).stdout, b"[]\n");

    let (a, b, c) = {
        let b = init(root.path(), "org-b", None);
        let c = init(root.path(), "org-c", None);
        assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
        assert_code(&peer_add(&a, "org-c", "ferry.org-c.example:7445", &c.cert()), 0);
        (a, b, c)
    };
    let out = ferry_at(&a, &["peer", "list"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let rows = lines(&text);
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "ADDRESS", "CERT", "FINGERPRINT"]);
    let pinned_b = a.dir.join("certs/peers/org-b.pem");
    let row_b = format!("org-b 127.0.0.1:7444 {} {}", pinned_b.display(), b.fingerprint);
    assert_eq!(rows[1].split_whitespace().collect::<Vec<_>>().join(" "), row_b, "{text}");
    assert!(rows[2].starts_with("org-c") && rows[2].contains(&c.fingerprint), "{text}");

    let json: Value = serde_json::from_slice(&ferry_at(&a, &["peer", "list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["name"], "org-b");
    assert_eq!(json[0]["address"], "127.0.0.1:7444");
    assert_eq!(json[0]["cert"], pinned_b.to_str().unwrap());
    assert_eq!(json[0]["fingerprint"], b.fingerprint.as_str());
    assert_eq!(json[0]["error"], Value::Null);
    assert_eq!(json[1]["address"], "ferry.org-c.example:7445");

    // A pinned certificate that cannot be read is listed with why; the list still answers.
    fs::remove_file(a.dir.join("certs/peers/org-c.pem")).unwrap();
    let out = ferry_at(&a, &["peer", "list"]);
    assert_code(&out, 0);
    assert!(lines(&stdout(&out))[2].contains("unreadable: "), "{}", stdout(&out));
    let json: Value = serde_json::from_slice(&ferry_at(&a, &["peer", "list", "--json"]).stdout).unwrap();
    assert_eq!(json[1]["fingerprint"], Value::Null);
    assert!(json[1]["error"].as_str().unwrap().contains("org-c.pem"), "{json}");
}

#[test]
fn peer_set_moves_a_peer_in_place_keeping_the_comments() {
    let root = tempfile::tempdir().unwrap();
    let (a, _b, _c) = a_with_two_peers(root.path());
    edit_config(&a, |t| {
        t.replacen("[[peer]]", "# org-b: the registry, since 2024\n[[peer]]", 1)
            .replace("address = \"127.0.0.1:7444\"", "address = \"127.0.0.1:7444\"   # over the VPN")
    });
    let before = String::from_utf8(a.config_text()).unwrap();

    let line = assert_edited(&ferry_at(&a, &["peer", "set", "org-b", "--address", "ferry.org-b.example:7443"]));
    assert!(line.contains("ferry.org-b.example:7443") && line.contains("127.0.0.1:7444"), "{line}");
    let after = String::from_utf8(a.config_text()).unwrap();
    assert_eq!(after, before.replace("127.0.0.1:7444", "ferry.org-b.example:7443"), "only the address changed");
    assert_code(&check(&a), 0);

    // The same address again: nothing to write.
    let out = ferry_at(&a, &["peer", "set", "org-b", "--address", "ferry.org-b.example:7443"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
    assert_eq!(String::from_utf8(a.config_text()).unwrap(), after);

    // Invalid addresses and an unknown peer: refused, the file as it was.
    for address in ["no-port", "host:0", "host:65536", "two words:7443", "x\"\n[node]\nname = \"evil\":7443"] {
        let out = ferry_at(&a, &["peer", "set", "org-b", "--address", address]);
        assert_usage_error(&out);
        assert_eq!(lines(&stderr(&out)).len(), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("--address"), "{}", stderr(&out));
        assert_eq!(String::from_utf8(a.config_text()).unwrap(), after, "config changed after {address:?}");
    }
    let out = ferry_at(&a, &["peer", "set", "org-z", "--address", "127.0.0.1:7446"]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("org-z") && stderr(&out).contains("org-b, org-c"), "{}", stderr(&out));
    assert_eq!(String::from_utf8(a.config_text()).unwrap(), after);

    // Several addresses (the peer's members): written as a list, listed, and moved back to one.
    let members = ["peer", "set", "org-b", "--address", "10.0.0.1:7443", "--address", "10.0.0.2:7443"];
    let line = assert_edited(&ferry_at(&a, &members));
    assert!(line.contains("now at 10.0.0.1:7443, 10.0.0.2:7443"), "{line}");
    let text = String::from_utf8(a.config_text()).unwrap();
    assert!(text.contains(r#"address = ["10.0.0.1:7443", "10.0.0.2:7443"]   # over the VPN"#), "{text}");
    let json: Value = serde_json::from_slice(&ferry_at(&a, &["peer", "list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["addresses"], serde_json::json!(["10.0.0.1:7443", "10.0.0.2:7443"]));
    assert_eq!(json[0]["address"], "10.0.0.1:7443", "the first, dialed first");
    let out = ferry_at(&a, &["peer", "list"]);
    assert!(stdout(&out).contains("10.0.0.1:7443, 10.0.0.2:7443"), "{}", stdout(&out));
    assert_code(&check(&a), 0);
    let before = a.config_text();
    let twice = ["peer", "set", "org-b", "--address", "10.0.0.1:7443", "--address", "10.0.0.1:7443"];
    let out = ferry_at(&a, &twice);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("given twice"), "{}", stderr(&out));
    assert_eq!(a.config_text(), before, "a refused list writes nothing");
    assert_edited(&ferry_at(&a, &["peer", "set", "org-b", "--address", "10.0.0.3:7443"]));
    assert!(String::from_utf8(a.config_text()).unwrap().contains("address = \"10.0.0.3:7443\"   # over the VPN"));
}

#[test]
fn peer_remove_takes_the_table_the_pin_and_the_allow_entries() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = a_with_two_peers(root.path());
    assert_code(&service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b,org-c")), 0);
    assert_code(&service_add(&a, "2", "http://127.0.0.1:8081", Some("org-b")), 0);
    assert_code(&service_add(&a, "3", "http://127.0.0.1:8082", Some("*")), 0);
    edit_config(&a, |t| t.replacen("[[service]]", "# the user service\n[[service]]", 1));

    let line = assert_edited(&ferry_at(&a, &["peer", "remove", "org-b"]));
    assert!(line.contains("`1`, `2`"), "the line names the services it was allowed: {line}");
    assert!(!a.dir.join("certs/peers/org-b.pem").exists(), "the pin is deleted");
    assert!(a.dir.join("certs/peers/org-c.pem").exists(), "another peer's pin is kept");
    let text = String::from_utf8(a.config_text()).unwrap();
    assert!(!text.contains("org-b"), "{text}");
    assert!(text.contains("# the user service\n[[service]]\nid = \"1\""), "comments are kept:\n{text}");
    assert!(text.contains("send_roots"), "{text}");
    let conf = a.toml();
    assert_eq!(conf["peer"].as_array().unwrap().len(), 1);
    let allow = |i: usize| -> Vec<String> {
        conf["service"][i]["allow"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };
    assert_eq!((allow(0), allow(1), allow(2)), (vec!["org-c".into()], vec![], vec!["*".into()]));
    assert_code(&check(&a), 0);

    // Pinned again under the same name, it is allowed nothing until an admin says so.
    assert_code(&peer_add(&a, "org-b", "127.0.0.1:7444", &b.cert()), 0);
    assert_eq!(a.toml()["service"][1]["allow"].as_array().unwrap().len(), 0);

    // An unknown peer: refused, naming the configured ones.
    let before = a.config_text();
    let out = ferry_at(&a, &["peer", "remove", "org-z"]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("`org-z`") && stderr(&out).contains("org-c, org-b"), "{}", stderr(&out));
    assert_eq!(a.config_text(), before);

    // A table that names a certificate elsewhere: the table goes, the file stays.
    let elsewhere = root.path().join("org-c-elsewhere.pem");
    fs::copy(c.cert(), &elsewhere).unwrap();
    edit_config(&a, |t| t.replace("cert = \"peers/org-c.pem\"", &format!("cert = {:?}", elsewhere.to_str().unwrap())));
    let line = assert_edited(&ferry_at(&a, &["peer", "remove", "org-c"]));
    assert!(line.contains("kept its certificate"), "{line}");
    assert!(elsewhere.exists() && a.dir.join("certs/peers/org-c.pem").exists(), "neither file is deleted");
    assert_eq!(a.toml()["peer"].as_array().unwrap().len(), 1);
    assert_code(&check(&a), 0);
}

#[test]
fn a_certificate_is_pinned_for_one_peer_only() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, _c) = a_with_two_peers(root.path());
    let before = a.config_text();

    // peer add refuses it, naming the peer that pins it.
    let out = peer_add(&a, "org-x", "127.0.0.1:7446", &b.cert());
    assert_usage_error(&out);
    assert!(stderr(&out).contains("pinned already for peer `org-b`"), "{}", stderr(&out));
    assert_eq!(a.config_text(), before);
    assert!(!a.dir.join("certs/peers/org-x.pem").exists());

    // A config that pins it twice by hand: check and run refuse it, naming both peers.
    let a = {
        let listening = init(root.path(), "org-r", Some((free_udp(), free_tcp())));
        assert_code(&peer_add(&listening, "org-b", "127.0.0.1:7444", &b.cert()), 0);
        fs::copy(b.cert(), listening.dir.join("certs/peers/org-x.pem")).unwrap();
        edit_config(&listening, |t| {
            t + "\n[[peer]]\nname = \"org-x\"\naddress = \"127.0.0.1:7446\"\ncert = \"peers/org-x.pem\"\n"
        });
        listening
    };
    let twice = "peers `org-b` and `org-x` pin the same certificate";
    let out = check(&a);
    assert_usage_error(&out);
    assert!(stderr(&out).contains(twice) && stderr(&out).contains(&b.fingerprint), "{}", stderr(&out));
    let mut running = run_node(&a, "org-r");
    let status = running.wait_for_exit(Duration::from_secs(10)).expect("`ferry run` should refuse the config");
    assert_eq!(status.code(), Some(2), "log:\n{}", running.run_log());
    assert!(running.run_log().contains(twice), "log:\n{}", running.run_log());

    // Removing the second pin mends it.
    assert_edited(&ferry_at(&a, &["peer", "remove", "org-x"]));
    assert!(!a.dir.join("certs/peers/org-x.pem").exists() && a.dir.join("certs/peers/org-b.pem").exists());
    assert_code(&check(&a), 0);
}

#[test]
fn hostile_peer_names_and_addresses_touch_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, _c) = a_with_two_peers(root.path());
    assert_code(&service_add(&a, "1", "http://127.0.0.1:8080", Some("org-b")), 0);
    // Files a name escaping certs/peers would reach.
    for bait in [root.path().join("x.pem"), a.dir.join("certs/x.pem"), a.dir.join("x.pem"), a.dir.join("config/x.pem")]
    {
        fs::write(bait, "not to be touched").unwrap();
    }
    let before = files_below(root.path());

    let names = [
        "../x",
        "../../x",
        "../../../x",
        "org-b/../x",
        "org-b/../org-b",
        "x\ny",
        "org-b\n",
        "org-b\"",
        "org-b\"\n[node]\nname = \"evil",
        " org-b",
        "*",
        "",
    ];
    for name in names {
        for args in [
            vec!["peer", "remove", name],
            vec!["peer", "set", name, "--address", "127.0.0.1:7450"],
            vec!["peer", "add", "--name", name, "--address", "127.0.0.1:7450", "--cert", b.cert().to_str().unwrap()],
        ] {
            let out = ferry_at(&a, &args);
            assert_usage_error(&out);
            assert_eq!(lines(&stderr(&out)).len(), 1, "{args:?}: one line, the name escaped:\n{}", stderr(&out));
            assert_eq!(files_below(root.path()), before, "{args:?} changed a file");
        }
    }
    for address in ["127.0.0.1:7444\n[node]", "x\"y:1", "x y:1", "\"\n[[peer]]\nname = \"evil\":1", "../x:1"] {
        let out = ferry_at(&a, &["peer", "set", "org-b", "--address", address]);
        assert_usage_error(&out);
        assert_eq!(files_below(root.path()), before, "address {address:?} changed a file");
    }
    assert_code(&check(&a), 0);
}
