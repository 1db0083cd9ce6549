//! `ferry run` as a process: the two-node walkthrough, signals (SIGTERM, SIGINT, SIGHUP reloads), sd_notify, journald, and refusals at start.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::cli::*;

#[test]
fn run_refuses_a_missing_config_or_an_unreadable_key() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("config/ferry.toml");
    let out = ferry(["run", "--config", missing.to_str().unwrap()]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains(missing.to_str().unwrap()), "{}", stderr(&out));

    let node = init(root.path(), "org-a", Some((free_udp(), free_tcp())));
    fs::write(node.key(), "not a key\n").unwrap();
    let mut running = run_node(&node, "org-a");
    let status =
        running.wait_for_exit(Duration::from_secs(10)).expect("`ferry run` with an unreadable key should exit");
    assert_eq!(status.code(), Some(2), "log:\n{}", running.run_log());
    assert!(running.run_log().contains("node.key"), "log:\n{}", running.run_log());

    // A peer pinned with a copy of this node's own certificate (by hand: `peer add` refuses it).
    let node = init(root.path(), "org-b", Some((free_udp(), free_tcp())));
    fs::copy(node.cert(), node.dir.join("certs/peers/org-x.pem")).unwrap();
    let config = fs::read_to_string(&node.config).unwrap();
    let peer = "\n[[peer]]\nname = \"org-x\"\naddress = \"127.0.0.1:9\"\ncert = \"peers/org-x.pem\"\n";
    fs::write(&node.config, config + peer).unwrap();
    let mut running = run_node(&node, "org-b");
    let status = running.wait_for_exit(Duration::from_secs(10)).expect("`ferry run` pinning its own certificate exits");
    assert_eq!(status.code(), Some(2), "log:\n{}", running.run_log());
    assert!(running.run_log().contains("peer `org-x` pins this node's own certificate"), "log:\n{}", running.run_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_two_nodes_as_processes() {
    let root = tempfile::tempdir().unwrap();
    let (service, seen) = recording_service().await;

    let (a_link, a_api) = (free_udp(), free_tcp());
    let (b_link, b_api) = (free_udp(), free_tcp());
    let a = init(root.path(), "org-a", Some((a_link, a_api)));
    let b = init(root.path(), "org-b", Some((b_link, b_api)));

    let out = peer_add(&a, "org-b", &b_link.to_string(), &b.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), b.fingerprint);
    let out = peer_add(&b, "org-a", &a_link.to_string(), &a.cert());
    assert_code(&out, 0);
    assert_eq!(fingerprint_in(&stdout(&out)), a.fingerprint);
    let out = service_add(&b, "1", &format!("http://{service}"), Some("org-a"));
    assert_code(&out, 0);
    assert_code(&check(&a), 0);
    assert_code(&check(&b), 0);

    let mut node_a = run_node(&a, "org-a");
    let mut node_b = run_node(&b, "org-b");

    let client = api_client();
    let health_a = wait_healthy(&client, &node_a, a_api, Duration::from_secs(15)).await;
    let health_b = wait_healthy(&client, &node_b, b_api, Duration::from_secs(15)).await;
    assert_eq!(health_a["data"]["name"], "org-a", "{health_a}");
    assert_eq!(health_a["data"]["fingerprint"], a.fingerprint.as_str(), "{health_a}");
    assert_eq!(health_b["data"]["name"], "org-b", "{health_b}");
    assert_eq!(health_b["data"]["fingerprint"], b.fingerprint.as_str(), "{health_b}");

    let resp = client
        .post(format!("http://{a_api}/v1/requests"))
        .json(&json!({
            "peer": "org-b", "service": "1", "path": "/user/list",
            "method": "GET", "form": {"pageSize": 1}
        }))
        .send()
        .await
        .expect("POST /v1/requests");
    let status = resp.status();
    let answer: Value = resp.json().await.expect("a JSON envelope");
    assert_eq!(status, 200, "{answer}\nlog a:\n{}\nlog b:\n{}", node_a.run_log(), node_b.run_log());
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["status"], 200, "{answer}");
    assert_eq!(answer["data"]["body"]["users"], json!(["Ada"]), "{answer}");
    let id = answer["data"]["id"].as_str().unwrap_or_else(|| panic!("data.id missing: {answer}")).to_owned();
    assert!(!id.is_empty());

    let calls = seen.seen();
    assert_eq!(calls.len(), 1, "the service was called {calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, "GET");
    assert_eq!(call.uri(), "/user/list?pageSize=1");
    assert_eq!(call.headers.get("x-ferry-peer").map(String::as_str), Some("org-a"), "{call:?}");
    assert_eq!(call.headers.get("x-ferry-request-id").map(String::as_str), Some(id.as_str()), "{call:?}");

    // SIGTERM: a graceful stop with exit status 0.
    let status = node_b
        .terminate("TERM", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("org-b did not stop within 10 s of SIGTERM\nlog:\n{}", node_b.run_log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", node_b.run_log());
    // SIGINT stops as gracefully.
    let status = node_a
        .terminate("INT", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("org-a did not stop within 10 s of SIGINT\nlog:\n{}", node_a.run_log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", node_a.run_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_peers_and_services() {
    let root = tempfile::tempdir().unwrap();
    let (service, seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    pin_both_ways(&a, "org-a", &b, "org-b");

    let mut node_a = run_node(&a.dir, "org-a");
    let mut node_b = run_node(&b.dir, "org-b");
    let client = api_client();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;

    // org-b offers no service yet.
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_ne!(status, 200, "{answer}");
    assert!(seen.seen().is_empty());

    // The admin adds one while the node runs, and sends SIGHUP.
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    node_b.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = node_b.exited() {
        panic!("SIGHUP stopped the node ({status})\nlog:\n{}", node_b.run_log());
    }
    let answer = request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
    {
        let calls = seen.seen();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].headers.get("x-ferry-request-id").map(String::as_str), answer["data"]["id"].as_str());
    }

    // A new peer, pinned while org-b runs, is known after SIGHUP.
    let c = init_on_loopback(root.path(), "org-c");
    pin_both_ways(&b, "org-b", &c, "org-c");
    assert_code(&service_add(&b.dir, "2", &format!("http://{service}"), Some("org-c")), 0);
    node_b.signal("HUP");
    let mut node_c = run_node(&c.dir, "org-c");
    wait_healthy(&client, &node_c, c.api, Duration::from_secs(15)).await;
    request_until_ok(&client, c.api, "org-b", "2", Duration::from_secs(10), &[&node_b, &node_c]).await;
    {
        let calls = seen.seen();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].headers.get("x-ferry-peer").map(String::as_str), Some("org-c"));
    }

    for node in [&mut node_a, &mut node_b, &mut node_c] {
        let status = node.terminate("TERM", Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{} log:\n{}", node.name, node.run_log());
    }
}

#[cfg(unix)]
#[test]
fn run_speaks_sd_notify() {
    use std::os::unix::net::UnixDatagram;

    let root = tempfile::tempdir().unwrap();
    let a = init_on_loopback(root.path(), "org-a");
    let socket_path = root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();

    let notify = socket_path.to_str().unwrap();
    let mut node = run_node_with(&a.dir, "org-a", &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")]);

    let mut messages = Vec::new();
    let receive_until = |want: &str, limit: Duration, messages: &mut Vec<String>| {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == want);
                messages.push(text);
                if found {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        receive_until("READY=1", Duration::from_secs(15), &mut messages),
        "no READY=1; got {messages:?}\nlog:\n{}",
        node.run_log()
    );
    assert!(
        receive_until("WATCHDOG=1", Duration::from_secs(3), &mut messages),
        "no WATCHDOG=1 with WATCHDOG_USEC=400000; got {messages:?}"
    );
    let ready = messages.iter().find(|m| m.lines().any(|l| l == "READY=1")).unwrap();
    assert!(ready.lines().any(|l| l.starts_with("STATUS=org-a: 0/0 peers connected")), "{ready:?}");
    // Watchdog pings keep coming, about every 200 ms.
    let started = Instant::now();
    for _ in 0..3 {
        assert!(receive_until("WATCHDOG=1", Duration::from_secs(2), &mut messages), "{messages:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "3 pings took {:?}", started.elapsed());
    // A reload is announced, then READY again.
    node.signal("HUP");
    assert!(receive_until("RELOADING=1", Duration::from_secs(5), &mut messages), "{messages:?}");
    assert!(receive_until("READY=1", Duration::from_secs(5), &mut messages), "{messages:?}");
    node.signal("TERM");
    assert!(
        receive_until("STOPPING=1", Duration::from_secs(10), &mut messages),
        "no STOPPING=1 after SIGTERM; got {messages:?}"
    );
    let status = node.wait_for_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "log:\n{}", node.run_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_keeps_async_work_under_way() {
    let root = tempfile::tempdir().unwrap();
    let (service, arrived, answered) = slow_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    pin_both_ways(&a, "org-a", &b, "org-b");
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    let mut node_a = run_node(&a.dir, "org-a");
    let mut node_b = run_node(&b.dir, "org-b");
    let client = api_client();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    let async_to =
        |path: &str| json!({"peer": "org-b", "service": "1", "path": path, "method": "POST", "mode": "async"});

    // org-b is in the middle of a slow service call when it is told to stop.
    let (status, _, answer) = post_request(&client, a.api, async_to("/slow")).await;
    assert_eq!(status, 202, "{answer}");
    let slow = answer["data"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the service was never called\n{}", node_b.run_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = node_b.terminate("TERM", Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "org-b log:\n{}", node_b.run_log());
    assert_eq!(*answered.lock().unwrap(), vec![slow.clone()], "the call under way was let finish before the exit");

    // org-a holds requests for the stopped peer when it is told to stop.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (status, _, answer) = post_request(&client, a.api, async_to(&format!("/quick/{i}"))).await;
        assert_eq!(status, 202, "{answer}");
        waiting.push(answer["data"]["id"].as_str().unwrap().to_owned());
    }
    let status = node_a.terminate("TERM", Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "org-a log:\n{}", node_a.run_log());
    assert!(node_a.run_log().contains("stopped"), "{}", node_a.run_log());

    // Both back: every request completes, and the interrupted one is not called again.
    let node_a = run_node(&a.dir, "org-a");
    let node_b = run_node(&b.dir, "org-b");
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    for id in waiting.iter().chain([&slow]) {
        let view = wait_final(&client, a.api, id, Duration::from_secs(20)).await;
        assert_eq!(view["state"], "success", "{view}\nlog a:\n{}\nlog b:\n{}", node_a.run_log(), node_b.run_log());
    }
    let calls = arrived.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|id| **id == slow).count(), 1, "{calls:?}");
    assert_eq!(calls.len(), 4, "each request called the service once: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_config_and_a_removed_peer_is_disconnected() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;

    // A broken file: an unknown key, and the service's allow list emptied.
    let good = fs::read_to_string(&b.dir.config).unwrap();
    let broken = good.replace("allow = [\"org-a\"]", "allow = []\nbogus_key = 1");
    assert_ne!(broken, good);
    fs::write(&b.dir.config, &broken).unwrap();
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_b.run_log().contains("reload refused") {
        assert!(Instant::now() < deadline, "no `reload refused` line:\n{}", node_b.run_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node_b.run_log().contains("bogus_key"), "the log names the problem:\n{}", node_b.run_log());
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!((status, &answer["data"]["status"]), (200, &json!(200)), "the old config still serves: {answer}");
    assert_eq!(seen.seen().len(), 2);

    // A good file without org-a: its connection is closed, and it cannot come back.
    let mut doc: toml_edit::DocumentMut = good.parse().unwrap();
    doc.remove("peer");
    doc["service"][0]["allow"] = toml_edit::value(toml_edit::Array::new());
    fs::write(&b.dir.config, doc.to_string()).unwrap();
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_b.run_log().contains("removed org-a") {
        assert!(Instant::now() < deadline, "no reload line naming the removed peer:\n{}", node_b.run_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
        if status == 502 {
            assert_eq!(answer["data"]["error"], "peer_unreachable", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "org-b still answers org-a: {status} {answer}\n{}", node_b.run_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peers: Value = client.get(format!("http://{}/v1/peers", a.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(peers["data"][0]["connected"], false, "{peers}");
    assert_eq!(seen.seen().len(), 2, "no call reached the service after the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_and_disabled_services_take_effect_on_sighup() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    let sync = json!({"peer": "org-b", "service": "1", "path": "/x", "method": "GET"});

    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
    let (status, deprecation, answer) = post_request(&client, a.api, sync.clone()).await;
    assert_eq!((status, deprecation), (200, None), "an active service: {answer}");

    set_service_key(&b.dir, "1", "state", Some("deprecated"));
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, deprecation, answer) = post_request(&client, a.api, sync.clone()).await;
        assert_eq!(status, 200, "a deprecated service is still served: {answer}");
        if let Some(value) = deprecation {
            assert_eq!(value, "true");
            assert_eq!(answer["data"]["headers"]["deprecation"], "true", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "no Deprecation header after the reload\n{}", node_b.run_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    set_service_key(&b.dir, "1", "state", Some("disabled"));
    node_b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, answer) = post_request(&client, a.api, sync.clone()).await;
        if status == 503 {
            assert_eq!(answer["data"]["error"], "unavailable", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "a disabled service is still served: {answer}\n{}", node_b.run_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls_before = seen.seen().len();
    let mut body = sync.clone();
    body["mode"] = "async".into();
    let (status, _, answer) = post_request(&client, a.api, body).await;
    assert_eq!(status, 202, "{answer}");
    let view = wait_final(&client, a.api, answer["data"]["id"].as_str().unwrap(), Duration::from_secs(15)).await;
    assert_eq!(view["state"], "failed", "{view}");
    assert!(view["error"].as_str().unwrap_or_default().contains("disabled"), "{view}");
    assert_eq!(seen.seen().len(), calls_before, "a disabled service is never called");

    set_service_key(&b.dir, "1", "state", None);
    node_b.signal("HUP");
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
}

/// Waits until `node`'s log holds `text`.
fn wait_for_log(node: &RunningNode, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.run_log().contains(text) {
        assert!(Instant::now() < deadline, "no `{text}` in the log:\n{}", node.run_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `node`'s serving line, stops it with SIGTERM (it must exit 0) and returns its log.
fn serve_then_stop(mut node: RunningNode) -> String {
    wait_for_log(&node, "serving");
    let status = node.terminate("TERM", Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.run_log());
    node.run_log()
}

/// `[node] threads` is the number of threads the running node carries its requests on (one by
/// default), as its start-up line says from the runtime itself; a reload that changes it says that
/// it waits for the next start.
#[test]
fn the_node_runs_on_the_threads_its_config_names() {
    let root = tempfile::tempdir().unwrap();
    let set_threads = |node: &NodeDir, n: usize| {
        let config = fs::read_to_string(&node.config).unwrap();
        let config = config.lines().filter(|l| !l.starts_with("threads =")).collect::<Vec<_>>().join("\n");
        fs::write(&node.config, config.replacen("[node]\n", &format!("[node]\nthreads = {n}\n"), 1)).unwrap();
    };
    let a = init_on_loopback(root.path(), "org-a").dir;
    let log = serve_then_stop(run_node(&a, "org-a"));
    assert!(log.lines().any(|l| l.contains("serving") && l.contains("threads=1")), "threads=1 not in:\n{log}");

    let b = init_on_loopback(root.path(), "org-b").dir;
    set_threads(&b, 3);
    let node = run_node(&b, "org-b");
    wait_for_log(&node, "serving");
    set_threads(&b, 2);
    node.signal("HUP");
    wait_for_log(&node, "node.threads take effect only at the next start");
    let log = serve_then_stop(node);
    assert!(log.lines().any(|l| l.contains("serving") && l.contains("threads=3")), "threads=3 not in:\n{log}");
}

#[test]
fn under_journald_log_lines_carry_priorities_and_no_timestamps() {
    let root = tempfile::tempdir().unwrap();
    let a = init_on_loopback(root.path(), "org-a");
    let text = serve_then_stop(run_node_with(&a.dir, "org-a", &[("JOURNAL_STREAM", "8:12345")]));
    let lines = lines(&text);
    assert!(lines.iter().any(|l| l.starts_with("<6>serving node=org-a")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<6>") && l.contains("stopped")), "{text}");
    for line in &lines {
        assert!(line.starts_with('<') && line[1..].starts_with(char::is_numeric), "no priority: {line:?}");
        assert!(!line.contains("T0") && !line.contains("\x1b["), "a timestamp or colour: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_reload_says_what_changed_or_why_the_file_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;
    let config = b.dir.config_arg();

    // A second service and API tokens: without --token, the config's own is used.
    assert_code(&service_add(&b.dir, "2", &format!("http://{}", seen.addr), Some("org-a")), 0);
    let text = fs::read_to_string(&b.dir.config).unwrap();
    fs::write(&b.dir.config, text.replace("tokens = []", r#"tokens = ["reload-token-0123456789"]"#)).unwrap();
    let out = ferry(["reload", "--config", &config]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "reloaded: 1 peer(s), 2 service(s)\n", "{}", stderr(&out));
    let (status, answer) = send_request(&client, a.api, "org-b", "2").await;
    assert_eq!(status, 200, "the new service serves at once: {answer}");

    // A file the node refuses (a pinned certificate gone): the command fails with the reason.
    let pinned = b.dir.dir.join("certs/peers/org-a.pem");
    let kept = fs::read(&pinned).unwrap();
    fs::remove_file(&pinned).unwrap();
    let out = ferry(["reload", "--config", &config]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("reload refused") && stderr(&out).contains("org-a.pem"), "{}", stderr(&out));
    let (status, answer) = send_request(&client, a.api, "org-b", "1").await;
    assert_eq!(status, 200, "the running config stays: {answer}");
    fs::write(&pinned, kept).unwrap();

    // A file that cannot be read here: named, and the node is not asked.
    fs::write(&b.dir.config, fs::read_to_string(&b.dir.config).unwrap() + "\nbogus_key = 1\n").unwrap();
    let out = ferry(["reload", "--config", &config]);
    assert_usage_error(&out);
    assert!(stderr(&out).contains("bogus_key"), "{}", stderr(&out));
    assert_eq!(node_b.run_log().matches("reload refused").count(), 1, "only the certificate's:\n{}", node_b.run_log());
}

/// Log lines an operator reads: peers coming and going with their address and round-trip time,
/// one line per exchange on both nodes (sync and async, refusals included), errors in words;
/// and events clients told that the node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_peers_and_exchanges_in_words_and_a_stop_closes_events_sockets() {
    use futures::StreamExt;
    let root = tempfile::tempdir().unwrap();
    let (service, _seen) = recording_service().await;
    let a = init_on_loopback(root.path(), "org-a");
    let b = init_on_loopback(root.path(), "org-b");
    pin_both_ways(&a, "org-a", &b, "org-b");
    assert_code(&service_add(&b.dir, "1", &format!("http://{service}"), Some("org-a")), 0);
    let info = [("RUST_LOG", "info")];
    let node_a = run_node_with(&a.dir, "org-a", &info);
    let mut node_b = run_node_with(&b.dir, "org-b", &info);
    let client = api_client();
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    wait_healthy(&client, &node_b, b.api, Duration::from_secs(15)).await;
    request_until_ok(&client, a.api, "org-b", "1", Duration::from_secs(10), &[&node_a, &node_b]).await;

    let body = |service: &str| json!({"peer": "org-b", "service": service, "path": "/x", "mode": "async"});
    let mut ids = Vec::new();
    for service in ["1", "9"] {
        let (status, _, env) = post_request(&client, a.api, body(service)).await;
        assert_eq!(status, 202, "{env}");
        ids.push(env["data"]["id"].as_str().unwrap().to_owned());
    }
    let [ok_id, refused_id] = <[String; 2]>::try_from(ids).unwrap();
    assert_eq!(wait_final(&client, a.api, &ok_id, Duration::from_secs(10)).await["state"], "success");
    assert_eq!(wait_final(&client, a.api, &refused_id, Duration::from_secs(10)).await["state"], "failed");

    let (events, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/events", b.api)).await.unwrap();
    let (_, mut events) = events.split();
    node_b.terminate("TERM", Duration::from_secs(10)).expect("org-b stops");
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = events.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = message {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the socket ends within 10 s of SIGTERM");
    let close = close.expect("a close frame, not a cut socket");
    assert_eq!(u16::from(close.code), 1001, "{close:?}");

    let (log_a, log_b) = (node_a.run_log(), node_b.run_log());
    let line = |log: &str, all: &[&str]| log.lines().any(|l| all.iter().all(|w| l.contains(w)));
    assert!(line(&log_a, &["connected to peer", "org-b", "address=", "rtt_ms="]), "{log_a}");
    assert!(line(&log_b, &["peer connected", "org-a", "remote=", "rtt_ms="]), "{log_b}");
    assert!(line(&log_a, &["exchange", "status=200"]), "the sync exchange:\n{log_a}");
    assert!(line(&log_a, &["exchange", &ok_id, "state=\"success\""]), "the async one:\n{log_a}");
    assert!(line(&log_a, &["exchange", &refused_id, "state=\"failed\"", "status=404"]), "the refused one:\n{log_a}");
    assert!(line(&log_b, &["exchange", &ok_id, "status=200"]), "the service call:\n{log_b}");
    assert!(
        line(&log_a, &["org-b", "lost the connection"]) || line(&log_a, &["org-b", "peer disconnected"]),
        "{log_a}"
    );
    for debug in ["PeerUnreachable(", "Refused(", "Some(", "Unreachable("] {
        assert!(!log_a.contains(debug) && !log_b.contains(debug), "Rust's Debug text `{debug}` in a log");
    }
}

/// A stop does not wait long for a peer that does not answer: the messages stay stored for the next
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_a_silent_peer() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, mut node_a, mut node_b, client, .. } = RunningPair::start(root.path()).await;
    node_b.terminate("KILL", Duration::from_secs(10)).expect("org-b is killed");
    let body = json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "async"});
    let (status, _, env) = post_request(&client, a.api, body).await;
    assert_eq!(status, 202, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    // When the stop comes, the message waits for org-b: for its dial to answer (up to 5 s), or its
    // acknowledgement on the connection org-a still believes open. The stop gives it 2 s, then
    // the link 2 s to close: well below the 10 s the work under way may otherwise take.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let stopped = node_a.terminate("TERM", Duration::from_secs(15)).expect("org-a stops");
    assert_eq!(stopped.code(), Some(0), "{}", node_a.run_log());
    assert!(asked.elapsed() < Duration::from_secs(7), "the stop took {:?}:\n{}", asked.elapsed(), node_a.run_log());
    node_a.start().await;
    wait_healthy(&client, &node_a, a.api, Duration::from_secs(15)).await;
    let view: Value =
        client.get(format!("http://{}/v1/requests/{id}", a.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["data"]["state"], "waiting", "kept for org-b: {view}");
}
