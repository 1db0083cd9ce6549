//! The operator commands (`ferry status`, `peers`, `requests`, …) against a running pair.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::cli::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_running_pair() {
    let root = tempfile::tempdir().unwrap();
    let RunningPair { a, b, node_a, node_b, client, seen } = RunningPair::start(root.path()).await;
    let (ca, cb) = (a.dir.config_arg(), b.dir.config_arg());

    // send, sync: the service's answer, as a table and as JSON.
    let send = ["send", "--peer", "org-b", "--service", "1", "--path", "/user/list", "--method", "GET"];
    let out = ferry(send.iter().copied().chain(["--form", "pageSize=1", "--config", &ca]));
    assert_code(&out, 0);
    assert!(stdout(&out).contains("org-b answered 200"), "{}", stdout(&out));
    assert!(stdout(&out).contains("Ada"), "{}", stdout(&out));
    assert_eq!(seen.seen()[0].uri(), "/user/list?pageSize=1");
    let out = ferry(send.iter().copied().chain(["--json", "--config", &ca]));
    assert_code(&out, 0);
    let answer: Value = serde_json::from_str(&stdout(&out)).expect("--json prints JSON");
    assert_eq!(answer["status"], 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(seen.seen()[1].headers["x-ferry-request-id"], id);
    // One info line per exchange, on both nodes.
    for (node, peer) in [(&node_a, "org-b"), (&node_b, "org-a")] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = node.run_log();
            let line = log.lines().find(|l| l.contains(&format!("id={id}"))).map(str::to_owned);
            if let Some(line) = line {
                for want in
                    [" INFO ", "exchange", &format!("peer={peer}"), "path=/user/list", "status=200", "duration_ms="]
                {
                    assert!(line.contains(want), "no {want:?} in {line:?}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "no exchange line for {id} on {}:\n{log}", node.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // peers: the connection the requests used.
    let out = ferry(["peers", "--config", &ca]);
    assert_code(&out, 0);
    let row = lines(&stdout(&out)).into_iter().find(|l| l.starts_with("org-b")).map(str::to_owned);
    let row = row.unwrap_or_else(|| panic!("no org-b row:\n{}", stdout(&out)));
    assert!(row.contains(&b.link.to_string()) && row.contains("yes"), "{row}");
    let out = ferry(["peers", "--json", "--config", &ca]);
    let peers: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(peers[0]["fingerprint"], b.dir.fingerprint.as_str(), "{peers}");

    // send --file: the file arrives whole.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file = a.dir.dir.join("outbox/report.bin");
    fs::write(&file, &bytes).unwrap();
    let out = ferry([
        "send",
        "--peer",
        "org-b",
        "--service",
        "1",
        "--path",
        "/upload",
        "--file",
        file.to_str().unwrap(),
        "--json",
        "--config",
        &ca,
    ]);
    assert_code(&out, 0);
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let received = b.dir.dir.join("data/received/org-a").join(answer["id"].as_str().unwrap()).join("report.bin");
    assert_eq!(Sha256::digest(fs::read(&received).unwrap()), Sha256::digest(&bytes), "{}", received.display());

    // send --async --reply, pending, reply, status, requests.
    let out = ferry(send.iter().copied().chain(["--async", "--reply", "--json", "--config", &ca]));
    assert_code(&out, 0);
    let accepted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let callback_id = loop {
        let out = ferry(["pending", "--json", "--config", &cb]);
        assert_code(&out, 0);
        let pending: Value = serde_json::from_str(&stdout(&out)).unwrap();
        if let Some(cb) = pending[0]["callback_id"].as_str() {
            break cb.to_owned();
        }
        assert!(Instant::now() < deadline, "nothing pending on org-b\n{}", node_b.run_log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = ferry(["pending", "--config", &cb]);
    assert!(stdout(&out).lines().next().unwrap().starts_with("CALLBACK_ID"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&callback_id) && stdout(&out).contains("GET /user/list"), "{}", stdout(&out));
    let out = ferry(["reply", &callback_id, "--data", r#"{"rows":[7]}"#, "--config", &cb]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("accepted"), "{}", stdout(&out));
    let out = ferry(["reply", "no-such-callback", "--reject", "no", "--config", &cb]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    let out = ferry(["reply", &callback_id, "--data", "{not json", "--config", &cb]);
    assert_usage_error(&out);

    let view = wait_final(&client, a.api, &id, Duration::from_secs(10)).await;
    assert_eq!(view["state"], "success", "{view}");
    let out = ferry(["status", &id, "--json", "--config", &ca]);
    assert_code(&out, 0);
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["replies"][0]["data"], json!({"rows": [7]}), "{status}");
    let out = ferry(["status", &id, "--config", &ca]);
    assert_code(&out, 0);
    for want in [id.as_str(), "success", "async, reply", r#"{"rows":[7]}"#] {
        assert!(stdout(&out).contains(want), "no {want:?} in:\n{}", stdout(&out));
    }
    let out = ferry(["status", "no-such-id", "--config", &ca]);
    assert_code(&out, 1);

    let out = ferry(["requests", "--state", "success", "--peer", "org-b", "--config", &ca]);
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    let out = ferry(["requests", "--state", "failed", "--json", "--config", &ca]);
    let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(page["items"], json!([]), "{page}");
    // The direction as the table prints it (or as the API names it); --config before the command.
    for (direction, has_it) in [("out", true), ("outgoing", true), ("in", false), ("incoming", false)] {
        let out = ferry(["--config", &ca, "requests", "--direction", direction, "--json"]);
        assert_code(&out, 0);
        let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let ids: Vec<_> = page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.contains(&id.as_str()), has_it, "--direction {direction}: {page}");
    }
    assert_usage_error(&ferry(["requests", "--direction", "sideways", "--config", &ca]));

    // Tokens, set while the node runs: the commands need one, from --token or FERRY_TOKEN.
    let token = "operator-token-0123456789";
    let config = fs::read_to_string(&a.dir.config).unwrap().replace("tokens = []", &format!("tokens = [\"{token}\"]"));
    fs::write(&a.dir.config, config).unwrap();
    node_a.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ferry(["peers", "--config", &ca]);
        if out.status.code() == Some(1) {
            assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
            break;
        }
        assert!(Instant::now() < deadline, "tokens not in force after SIGHUP\n{}", node_a.run_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_code(&ferry(["peers", "--token", token, "--config", &ca]), 0);
    assert_code(&ferry_with_token(&["peers", "--config", &ca], Some(token)), 0);
    assert_code(&ferry_with_token(&["peers", "--config", &ca], Some("wrong-token-0123456789")), 1);
}

/// `ferry events` follows the node: a line per event as it happens, and the reason when the node
/// closes the stream at its stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follows_the_node_until_it_stops() {
    use std::io::BufRead;
    let root = tempfile::tempdir().unwrap();
    // org-b runs (and its service): the requests go through, and org-a stops without waiting for it.
    let RunningPair { a, mut node_a, client, node_b: _node_b, seen: _seen, .. } = RunningPair::start(root.path()).await;
    for json in [true, false] {
        let mut cmd = ferry_cmd();
        cmd.args(["events", "--peer", "org-b", "--config", &a.dir.config_arg()]);
        if json {
            cmd.arg("--json");
        }
        let mut events = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let (lines, seen) = std::sync::mpsc::channel();
        let stdout = events.stdout.take().unwrap();
        std::thread::spawn(move || {
            std::io::BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(lines.send(l)))
        });
        // Sent until one shows: the stream may open after the first.
        let deadline = Instant::now() + Duration::from_secs(15);
        let line = loop {
            let body = json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "async"});
            let (status, _, env) = post_request(&client, a.api, body).await;
            assert_eq!(status, 202, "{env}");
            if let Ok(line) = seen.recv_timeout(Duration::from_millis(500)) {
                break line;
            }
            assert!(Instant::now() < deadline, "no event line from `ferry events`");
        };
        if json {
            let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(event["peer"], "org-b", "{event}");
            let _ = events.kill();
            run_bounded_child(events, Duration::from_secs(15));
        } else {
            assert!(line.contains("org-b") && (line.contains("  state ") || line.contains("  reply 1")), "{line}");
            assert!(line.starts_with("20") && line[..25].contains('T'), "a full time first: {line}");
            node_a
                .terminate("TERM", Duration::from_secs(10))
                .unwrap_or_else(|| panic!("org-a did not stop:\n{}", node_a.run_log()));
            let out = run_bounded_child(events, Duration::from_secs(15));
            assert_code(&out, 0);
            assert!(
                stderr(&out).contains("the node closed the events stream: the node is stopping"),
                "{}",
                stderr(&out)
            );
        }
    }
}
