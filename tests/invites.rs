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
