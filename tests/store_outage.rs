//! A node whose PostgreSQL store drops every connection under it (the database restarted, or
//! failed over): it connects again by itself, and nothing accepted is lost or done twice; a
//! request whose transaction was cut is refused whole, and never reaches the service.

mod support;

use serde_json::{json, Value};
use support::process::{two_nodes, Node};
use support::{postgres, Recorder};

/// org-a's asynchronous request `n` to org-b's service "1".
fn request(n: usize) -> Value {
    json!({"peer": "org-b", "service": "1", "path": format!("/job/{n}"), "method": "POST",
           "form": {"n": n.to_string()}, "mode": "async"})
}

/// org-a, its store in the PostgreSQL database at `url`, and org-b offering `service`: started.
async fn nodes(root: &std::path::Path, url: &str, service: &Recorder) -> (Node, Node) {
    let (mut a, mut b) = two_nodes(root, &service.base_url());
    a.setup().use_store(url, None);
    a.start().await;
    b.start().await;
    (a, b)
}

/// Every request in `ids` ends in success, each reached the service once, nothing else reached
/// it, and org-a's evidence chain verifies.
async fn all_done_once(mut a: Node, mut b: Node, service: &Recorder, ids: &[String]) {
    for id in ids {
        a.wait_state(id, "success").await;
    }
    let calls = service.calls_by_id();
    assert!(calls.values().all(|n| *n == 1), "called twice: {calls:?}");
    let mut called: Vec<&String> = calls.keys().collect();
    let mut accepted: Vec<&String> = ids.iter().collect();
    called.sort();
    accepted.sort();
    assert_eq!(called, accepted, "the service saw exactly the accepted requests");
    a.stop().await;
    b.stop().await;
    let verified = a.audit_verify().unwrap();
    assert!(verified.starts_with("intact"), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_connections_end_connects_again_and_loses_nothing() {
    let Some(url) = postgres::database_or_skip("a_node_whose_store_connections_end…") else { return };
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = nodes(root.path(), &url, &service).await;
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
    all_done_once(a, b, &service, &ids).await;
}

/// Connections ended three times while four callers post: a request whose transaction was cut
/// is refused (500, "could not be stored"), and only the accepted ones reach the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_ended_under_load_refuse_whole_requests_and_lose_no_accepted_one() {
    let Some(url) = postgres::database_or_skip("connections_ended_under_load…") else { return };
    let service = Recorder::start().await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = nodes(root.path(), &url, &service).await;
    let caller = async |from: usize| {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        for n in from..from + 25 {
            let (status, env) = a.post("/v1/requests", &request(n)).await;
            let id = env["data"]["id"].as_str().unwrap_or_default().to_owned();
            if status == 202 {
                accepted.push(id);
            } else {
                assert!(status == 500 && env["msg"].as_str().unwrap().contains("could not be stored"), "{env}");
                refused.push(id);
            }
        }
        (accepted, refused)
    };
    let cuts = async {
        let mut ended = 0;
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let url = url.clone();
            ended += tokio::task::spawn_blocking(move || postgres::end_connections(&url)).await.unwrap();
        }
        ended
    };
    let (results, ended) = tokio::join!(futures::future::join_all((0..4).map(|i| caller(i * 100))), cuts);
    let (accepted, refused): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    let (accepted, refused): (Vec<String>, Vec<String>) = (accepted.concat(), refused.concat());
    println!("{ended} connection(s) ended: {} accepted, {} refused", accepted.len(), refused.len());
    assert!(ended >= 1, "org-a held no connection to its store");
    assert!(a.log_text().contains("the store's connection was lost; connecting again"), "{}", a.log_text());
    all_done_once(a, b, &service, &accepted).await;
}
