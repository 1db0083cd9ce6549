//! `ferry invite` and `ferry peer add --invite`: a node's name, address and certificate in one
//! file, checked when read; a changed certificate or a key in its place is refused.

mod support;

use std::fs;

use serde_json::Value;
use support::cli::*;

#[test]
fn an_invite_pins_its_node_and_a_changed_one_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (init_on_loopback(root.path(), "org-a"), init_on_loopback(root.path(), "org-b"));
    let file = root.path().join("org-a.invite.json");
    let out = ferry(["invite", "--out", file.to_str().unwrap(), "--config", &a.dir.config_arg()]);
    assert_code(&out, 0);
    let invite: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    let fingerprint = fingerprint_of_pem(&a.dir.cert());
    assert_eq!(invite["name"], "org-a");
    assert_eq!(invite["addresses"][0], a.link.to_string());
    assert_eq!(invite["fingerprint"], fingerprint.as_str());
    assert!(stdout(&out).contains(&fingerprint), "{}", stdout(&out));

    // Changed on the way: another certificate under its fingerprint, or a key in its place.
    let tampered = root.path().join("tampered.json");
    let mut changed = invite.clone();
    changed["certificate"] = fs::read_to_string(b.dir.cert()).unwrap().into();
    fs::write(&tampered, changed.to_string()).unwrap();
    let out = ferry(["peer", "add", "--invite", tampered.to_str().unwrap(), "--config", &b.dir.config_arg()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("it was changed"), "{}", stderr(&out));
    changed["certificate"] = fs::read_to_string(a.dir.key()).unwrap().into();
    fs::write(&tampered, changed.to_string()).unwrap();
    let out = ferry(["peer", "add", "--invite", tampered.to_str().unwrap(), "--config", &b.dir.config_arg()]);
    assert_usage_error(&out);
    assert!(!stderr(&out).contains("BEGIN"), "nothing of the file is echoed: {}", stderr(&out));
    assert!(!b.dir.config_text().windows(5).any(|w| w == b"org-a"), "nothing was pinned");

    let out = ferry(["peer", "add", "--invite", file.to_str().unwrap(), "--config", &b.dir.config_arg()]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains(&format!("added peer `org-a` at {}", a.link)), "{}", stdout(&out));
    assert!(stdout(&out).contains(&fingerprint), "{}", stdout(&out));
    assert_eq!(fingerprint_of_pem(&b.dir.dir.join("certs/peers/org-a.pem")), fingerprint);
    assert_code(&check(&b.dir), 0);

    // A node listening on a wildcard address must say where it is reached.
    let c = init(root.path(), "org-c", None);
    let wild = root.path().join("org-c.json");
    let out = ferry(["invite", "--out", wild.to_str().unwrap(), "--config", &c.config_arg()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("--address"), "{}", stderr(&out));
    let out = ferry([
        "invite",
        "--out",
        wild.to_str().unwrap(),
        "--address",
        "203.0.113.7:7443",
        "--address",
        "ferry-2.org-c.example:7443",
        "--config",
        &c.config_arg(),
    ]);
    assert_code(&out, 0);

    // An invite with several addresses (the node's members) pins the peer at every one of them.
    let out = ferry(["peer", "add", "--invite", wild.to_str().unwrap(), "--config", &b.dir.config_arg()]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("at 203.0.113.7:7443, ferry-2.org-c.example:7443"), "{}", stdout(&out));
    let config = b.dir.toml();
    let pinned = &config["peer"].as_array().unwrap()[1];
    assert_eq!(pinned["name"].as_str(), Some("org-c"));
    let addresses: Vec<&str> = pinned["address"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(addresses, ["203.0.113.7:7443", "ferry-2.org-c.example:7443"]);
    assert_code(&check(&b.dir), 0);
}

/// An organization with two members, each with its own key: their invites merged into one pin
/// both certificates at both addresses under one name; `peer list` shows both, `peer remove`
/// takes both. A member's changed certificate and another node's invite are refused.
#[test]
fn an_organization_of_two_members_is_pinned_from_one_invite() {
    let root = tempfile::tempdir().unwrap();
    let a = init_on_loopback(root.path(), "org-a");
    let (m1, m2) =
        (init_on_loopback(&root.path().join("m1"), "org-b"), init_on_loopback(&root.path().join("m2"), "org-b"));
    let (m1_file, m2_file, org) =
        (root.path().join("m1.json"), root.path().join("m2.json"), root.path().join("org-b.json"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    assert_code(&ferry(["invite", "--out", &path(&m2_file), "--config", &m2.dir.config_arg()]), 0);
    let out = ferry([
        "invite",
        "--out",
        &path(&org),
        "--member",
        &path(&m2_file),
        "--json",
        "--config",
        &m1.dir.config_arg(),
    ]);
    assert_code(&out, 0);
    let said: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (fp1, fp2) = (fingerprint_of_pem(&m1.dir.cert()), fingerprint_of_pem(&m2.dir.cert()));
    assert_eq!(said["fingerprints"], serde_json::json!([fp1, fp2]), "{said}");
    assert_eq!(said["addresses"], serde_json::json!([m1.link.to_string(), m2.link.to_string()]), "{said}");
    let invite: Value = serde_json::from_str(&fs::read_to_string(&org).unwrap()).unwrap();
    assert_eq!(invite["members"][0]["fingerprint"], fp2.as_str());

    // A member's certificate changed on the way, and the invite of a node of another name.
    let mut changed = invite.clone();
    changed["members"][0]["certificate"] = fs::read_to_string(a.dir.cert()).unwrap().into();
    let tampered = root.path().join("tampered.json");
    fs::write(&tampered, changed.to_string()).unwrap();
    let out = ferry(["peer", "add", "--invite", &path(&tampered), "--config", &a.dir.config_arg()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("it was changed"), "{}", stderr(&out));
    // A member's hostile address, a member with none, and more members than a peer may have:
    // refused, nothing pinned.
    let before = a.dir.config_text();
    let mut hostile = invite.clone();
    hostile["members"][0]["addresses"] = serde_json::json!(["10.0.0.2:7443\n[node]\nname = \"evil\""]);
    let mut none = invite.clone();
    none["members"][0]["addresses"] = serde_json::json!([]);
    let mut crowd = invite.clone();
    crowd["members"] = serde_json::json!(vec![invite["members"][0].clone(); 16]);
    for (what, bad, says) in
        [("hostile", hostile, "not host:port"), ("none", none, "names no address"), ("crowd", crowd, "1 to 16")]
    {
        fs::write(&tampered, bad.to_string()).unwrap();
        let out = ferry(["peer", "add", "--invite", &path(&tampered), "--config", &a.dir.config_arg()]);
        assert_usage_error(&out);
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
        assert_eq!(a.dir.config_text(), before, "{what}: nothing pinned");
    }
    assert_code(&ferry(["invite", "--out", &path(&m1_file), "--config", &m1.dir.config_arg()]), 0);
    let out =
        ferry(["invite", "--out", &path(&tampered), "--member", &path(&m1_file), "--config", &a.dir.config_arg()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("not of a member of `org-a`"), "{}", stderr(&out));

    // Merging members past what a peer may pin is refused when the invite is written.
    let many: Vec<Value> = (0..16)
        .map(|i| {
            let member = ferry::identity::Identity::generate("org-b").unwrap();
            let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", member.cert.to_vec()));
            serde_json::json!({"addresses": [format!("10.0.1.{i}:7443")], "certificate": certificate,
                "fingerprint": member.fingerprint().to_string()})
        })
        .collect();
    let mut crowded = invite.clone();
    crowded["members"] = many.into();
    fs::write(&tampered, crowded.to_string()).unwrap();
    let out =
        ferry(["invite", "--out", &path(&m1_file), "--member", &path(&tampered), "--config", &m2.dir.config_arg()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("at most 16 certificates"), "{}", stderr(&out));

    let out = ferry(["peer", "add", "--invite", &path(&org), "--config", &a.dir.config_arg()]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains(&format!("fingerprint: {fp1}, {fp2}")), "{}", stdout(&out));
    let config = a.dir.toml();
    let pinned = &config["peer"].as_array().unwrap()[0];
    assert_eq!(pinned["cert"].as_array().unwrap().len(), 2, "{pinned}");
    assert_eq!(fingerprint_of_pem(&a.dir.dir.join("certs/peers/org-b+2.pem")), fp2);
    assert_code(&check(&a.dir), 0);
    let listed: Value = serde_json::from_slice(&ferry_at(&a.dir, &["peer", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["fingerprint"], fp1.as_str(), "{listed}");
    assert_eq!(listed[0]["certs"][1]["fingerprint"], fp2.as_str(), "{listed}");

    // A certificate pinned already, or the same one twice, is refused.
    let c = init_on_loopback(root.path(), "org-c");
    let add_c = ["peer", "add", "--name", "org-c", "--address", "127.0.0.1:9", "--cert", &path(&c.dir.cert())];
    let out = ferry_at(&a.dir, &[&add_c[..], &["--cert", &path(&m2.dir.cert())]].concat());
    assert_usage_error(&out);
    assert!(stderr(&out).contains("pinned already for peer `org-b`"), "{}", stderr(&out));
    let out = ferry_at(&a.dir, &[&add_c[..], &["--cert", &path(&c.dir.cert())]].concat());
    assert_usage_error(&out);
    assert!(stderr(&out).contains("given twice"), "{}", stderr(&out));
    assert!(!a.dir.dir.join("certs/peers/org-c.pem").exists(), "nothing of a refused add is left");

    let line = assert_edited(&ferry_at(&a.dir, &["peer", "remove", "org-b"]));
    assert!(line.contains("org-b.pem") && line.contains("org-b+2.pem"), "{line}");
    assert!(!a.dir.dir.join("certs/peers/org-b+2.pem").exists());
}
