//! A member of a peer killed (SIGKILL): its connection goes silent without a close, and the
//! requesting node fails over to another member once the connection has been silent for 3 s,
//! not after the connection's idle timeout (30 s). Real `ferry run` processes.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::process::Node;
use support::Recorder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_failed_over_within_seconds() {
    let (service_1, service_2) = (Recorder::start().await, Recorder::start().await);
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::create(root.path(), "org-a");
    let mut m1 = Node::create(&root.path().join("b1"), "org-b");
    let mut m2 = Node::create(&root.path().join("b2"), "org-b");
    for (m, service) in [(&m1, &service_1), (&m2, &service_2)] {
        m.pin(&a);
        m.add_service("1", &service.base_url(), &["org-a"]);
    }
    let cert = |m: &Node| m.dir.join("certs/node.pem");
    ferry::cli::peer::add(&a.config, "org-b", &[m1.link.to_string(), m2.link.to_string()], &[cert(&m1), cert(&m2)])
        .unwrap();
    for node in [&mut a, &mut m1, &mut m2] {
        node.start().await;
    }
    let request = |path: &str| json!({"peer": "org-b", "service": "1", "path": path, "method": "GET", "form": {}});
    let (status, env) = a.post("/v1/requests", &request("/before")).await;
    assert_eq!(status, 200, "{env}");
    assert_eq!(service_1.seen().len(), 1);

    m1.kill();
    let killed = Instant::now();
    let mut failed = 0;
    let took = loop {
        // A request that waits on the dead connection times out on this client (10 s).
        if let Ok((200, _)) = a.try_post("/v1/requests", &request("/after")).await {
            break killed.elapsed();
        }
        failed += 1;
        assert!(killed.elapsed() < Duration::from_secs(60), "no member answered for a minute");
    };
    println!("member 1 killed: member 2 served after {took:?}, {failed} request(s) failed meanwhile");
    assert_eq!(service_2.seen().len(), 1, "served once, by member 2");
    // Not a speed target: the mechanism. Waiting for the idle timeout would take 30 s.
    assert!(took < Duration::from_secs(20), "failed over after {took:?}: the silence went unnoticed");
    assert!(a.log_text().contains("lost the connection; redialing"), "{}", a.log_text());
    // The admin sees which member did not answer.
    let config = a.config.to_str().unwrap().to_owned();
    let peers = tokio::task::spawn_blocking(move || support::cli::ferry(["peers", "--config", &config])).await.unwrap();
    let said = support::cli::stdout(&peers);
    assert!(said.contains(&format!("org-b: {} did not answer at ", m1.link)), "{said}");

    // Asynchronous work goes to member 2 as well, and member 1, restarted, is not needed.
    let mut body = request("/async-after");
    body["mode"] = "async".into();
    let id = a.accepted(body).await;
    assert_eq!(a.wait_state(&id, "success").await["state"], "success");
    m1.start().await;
    let (status, env) = a.post("/v1/requests", &request("/after-restart")).await;
    assert_eq!(status, 200, "{env}");
    let paths: Vec<String> = service_2.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/after", "/async-after", "/after-restart"], "the link stays with member 2");
    assert_eq!(service_1.seen().len(), 1);
}
