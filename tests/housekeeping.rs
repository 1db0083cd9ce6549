//! `files.keep_received` (API.md §2): the files a node received, and its finished requests past
//! their ttl, go once it has passed; a request under way, a host's file, a path an operator's edit
//! put in the store, and the evidence log stay.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use support::unstarted_pair;

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_files_and_finished_requests_go_after_keep_received_and_nothing_else() {
    if support::sqlite_only("received_files_and_finished_requests_go_after_keep_received_and_nothing_else") {
        return;
    }
    let mut p = unstarted_pair().await;
    let config = std::fs::read_to_string(&p.b.config_path).unwrap();
    assert!(config.contains("keep_received = \"30d\""), "`ferry init` keeps 30 days: {config}");
    let config = config.replacen("keep_received = \"30d\"", "keep_received = \"1s\"", 1);
    std::fs::write(&p.b.config_path, config).unwrap();
    p.start().await;

    // A file from org-a's outbox, received by org-b for an async request with a 1 s ttl.
    let sent = p.a.dir.join("outbox/report.bin");
    support::files::make_file(&sent, 100_000);
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": sent, "ttl_s": 1});
    let (_, env) = p.a.request(body).await;
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    p.b.wait_state(&id, "success", WITHIN).await;
    let fields = p.service.seen().last().unwrap().fields();
    let received = PathBuf::from(&fields["file"]);
    assert!(received.is_file(), "{}", received.display());

    // What an operator's edit of the store may point at: a file outside `received/`, and a link
    // inside it to a file outside.
    let outside = p.root.path().join("precious.txt");
    std::fs::write(&outside, "keep me").unwrap();
    let link = p.b.dir.join("data/received/org-a/link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let db = rusqlite::Connection::open(p.b.dir.join("data/ferry.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    for (key, path) in [("x1", &outside), ("x2", &link)] {
        db.execute(
            "INSERT INTO received_files (peer, key, path, size, sha256, received_at) VALUES ('org-a', ?1, ?2, 7, '00', 0)",
            rusqlite::params![key, path.to_str().unwrap()],
        )
        .unwrap();
    }
    drop(db);

    // The row goes first, then the file, then its emptied folder: wait for all three (waiting for
    // the first two alone raced the folder's removal).
    let folder = received.parent().unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (status, _) = p.b.get(&format!("/v1/requests/{id}")).await;
        if !received.exists() && status == 404 && !folder.exists() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there: file {}, row {status}, the request's emptied folder {}",
            received.exists(),
            folder.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent.is_file(), "the host's file stays");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(&link).is_ok(), "a link is not followed, nor deleted");
    let (status, _) = p.a.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status, 200, "org-a keeps what org-a's config keeps");
    let (code, out, err) = p.b.audit(&["verify"]);
    assert_eq!(code, 0, "the evidence log stays whole: {out}{err}");
}
