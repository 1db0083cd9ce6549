//! A node whose PostgreSQL store drops every connection under it (the database restarted, or
//! failed over): it connects again by itself, and nothing accepted is lost or done twice.

mod support;

use serde_json::{json, Value};
use support::process::two_nodes;
use support::{postgres, Recorder};

/// org-a's asynchronous request `n` to org-b's service "1".
fn request(n: usize) -> Value {
    json!({"peer": "org-b", "service": "1", "path": format!("/job/{n}"), "method": "POST",
           "form": {"n": n.to_string()}, "mode": "async"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_connections_end_connects_again_and_loses_nothing() {
    let Some(url) = postgres::database_or_skip("a_node_whose_store_connections_end…") else { return };
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = two_nodes(root.path(), &service.base_url());
    a.setup().use_store(&url, None);
    a.start().await;
    b.start().await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(a.accepted(request(n)).await);
    }
    for id in &ids {
        a.wait_state(id, "success").await;
    }

    let ended = postgres::end_connections(&url);
    assert!(ended >= 1, "org-a held no connection to its store");
    // The next transaction finds its connection gone before it begins, and begins on a new one:
    // no request is refused, and reads go on.
    for n in 10..30 {
        ids.push(a.accepted(request(n)).await);
    }
    assert!(a.log_text().contains("the store's connection was lost; connecting again"), "{}", a.log_text());
    for id in &ids {
        a.wait_state(id, "success").await;
    }
    let twice: Vec<_> = service.calls_by_id().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "called twice: {twice:?}");
    assert_eq!(service.calls_by_id().len(), ids.len());
    a.stop().await;
    b.stop().await;
    let verified = a.audit_verify().unwrap();
    assert!(verified.starts_with("intact"), "{verified}");
}
