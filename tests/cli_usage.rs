//! Usage errors of the `ferry` binary: exit 2 with a reason on stderr; `--help` and `--version`.

mod support;

use support::cli::*;

#[test]
fn usage_errors_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("n");
    let d = dir.to_str().unwrap();
    for args in [
        vec!["frobnicate"],
        vec!["init", "--dir", d, "--name", "org-a", "--bogus"],
        vec!["init", "--dir", d],
        vec!["check", "--verbose-please"],
        vec!["peer", "remove", "--name", "x"],
        vec!["cert", "sign"],
        vec![],
    ] {
        let out = ferry(&args);
        assert_code(&out, 2);
        assert!(!stderr(&out).trim().is_empty(), "{args:?}: nothing on stderr");
    }
    assert!(!dir.exists(), "a refused command created files");

    // --help and --version are not errors.
    let out = ferry(["--help"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("init"), "{}", stdout(&out));
    let out = ferry(["--version"]);
    assert_code(&out, 0);
}
