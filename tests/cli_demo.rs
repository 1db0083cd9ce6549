//! `ferry demo`: runs without set-up and shows every flow.

mod support;

use std::time::Duration;

use support::cli::*;

#[test]
fn demo_runs_without_set_up() {
    let out = run_bounded(ferry_cmd().arg("demo"), Duration::from_secs(60));
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("demo complete"), "{text}");
    // Both requests' answers: the GET's user list and the POST's echo of what was created.
    assert!(text.contains("/user/list"), "{text}");
    assert!(text.contains("/user/create"), "{text}");
    assert!(text.contains("Ada"), "{text}");
    assert!(text.matches("\"status\": 200").count() >= 2, "two answers with status 200 expected:\n{text}");
}

#[test]
fn demo_runs_async_reply_callback_and_file_transfer() {
    let out = run_bounded(ferry_cmd().arg("demo"), Duration::from_secs(60));
    assert_code(&out, 0);
    let text = stdout(&out).to_lowercase();
    for word in ["async", "reply", "callback", "file", "sha256"] {
        assert!(text.contains(word), "demo output never mentions {word:?}:\n{text}");
    }
}
