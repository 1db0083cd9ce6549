//! The fault suite (issue 8, item 1): two nodes run as real `ferry run` processes while faults are
//! injected, and after each round the suite checks that nothing was lost and nothing done twice.
//!
//! - 20 rounds of SIGKILL of either node, chosen with a seeded RNG (the seed is printed; set
//!   `FERRY_FAULT_SEED` to replay a run), at a random point of the sync, async, reply (reply mode
//!   and `POST /v1/replies`), callback and file flows, then a restart on the same ports;
//! - one round with the receiving peer down for a while (graceful stop) while a backlog builds;
//! - one round of every flow over a lossy link: 5 % packet loss and 50 ms delay with `tc netem` on
//!   a veth pair between two network namespaces the test creates, the nodes running inside them
//!   (`ip netns exec`), where the machine allows it (root, `ip`, a kernel with netem); elsewhere
//!   on loopback through a userspace UDP relay (`support/lossy.rs`) that drops 5 % of the
//!   datagrams each way, from an RNG seeded by the suite's seed, and delays the others 25 ms each
//!   way. The phase always runs: none of the suite is skipped.
//!
//! After each round: every request reached its final state (async ones `success`, or `failed`
//! with the documented "stopped while its service was being called" error when a kill interrupted
//! the service call: at most once, by design; sync requests cut by a kill may fail at the caller),
//! the service was called exactly once per id for requests that succeeded and never twice for any
//! id or any request of the test, every result reached the callback receiver, every received
//! file's SHA-256 matches the sent one, and `ferry audit verify` passes on both nodes. A summary
//! table is printed at the end; lost and duplicated must be 0.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::files::{make_file_seeded, sha_of};
use support::lossy::LossyLink;
use support::netns::TestNet;
use support::process::{try_until, Node, Recorder, INTERRUPTED, SETTLE};
use tokio::time::Instant;

/// SIGKILL rounds (`FERRY_FAULT_ROUNDS` sets fewer or more, to reproduce a finding quickly).
const ROUNDS: usize = 20;
/// The bound on the whole suite.
const WHOLE: Duration = Duration::from_secs(170);
/// The bound on one round's requests reaching their final state after the restart.
const SETTLE_ROUND: Duration = Duration::from_secs(45);
/// The bearer token of the nodes in network namespaces (callers there are not on loopback).
const TOKEN: &str = "fault-suite-token-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Requests of a round
// ---------------------------------------------------------------------------------------------

/// The flows a round mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `mode: sync`.
    Sync,
    /// `mode: async` with a callback.
    Async,
    /// `mode: async, reply: true` with a callback; the reply driver answers with
    /// `POST /v1/replies`, twice, sometimes with a file.
    Reply,
    /// `mode: async` with a file and a callback.
    File,
}

impl Mix {
    /// Without the flows that `FERRY_FAULT_FLOWS` (e.g. `async,reply,file`) leaves out: a way to
    /// look past one finding at the others.
    fn chosen(mut self) -> Mix {
        if let Ok(flows) = std::env::var("FERRY_FAULT_FLOWS") {
            let on = |kind: Kind| flows.split(',').any(|f| f.trim() == kind.word());
            for (kind, n) in [
                (Kind::Sync, &mut self.sync),
                (Kind::Async, &mut self.r#async),
                (Kind::Reply, &mut self.reply),
                (Kind::File, &mut self.file),
            ] {
                if !on(kind) {
                    *n = 0;
                }
            }
        }
        self
    }
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Async => "async",
            Kind::Reply => "reply",
            Kind::File => "file",
        }
    }
}

/// How many requests of each kind a round sends.
#[derive(Clone, Copy)]
struct Mix {
    sync: usize,
    r#async: usize,
    reply: usize,
    file: usize,
    /// The largest request file, in bytes.
    file_max: u64,
}

/// One request the test sent. Its path is `/sleep/{ms}/{kind}/{tag}` and its form
/// `{"tag": tag}`, so every service call can be traced back to it.
struct Spec {
    tag: String,
    kind: Kind,
    body: Value,
    /// The SHA-256 of the request's file.
    file_sha: Option<String>,
    /// The SHA-256 of the file the final reply carries.
    reply_file_sha: Option<String>,
}

/// What `POST /v1/requests` answered.
enum Answer {
    /// 202 with this id.
    Accepted(String),
    /// 200 (sync) with this id and the service's status.
    Answered(String, u64),
    /// Another HTTP status, and the envelope.
    Refused(u16, Value),
    /// No answer: the node went down while the request was being posted.
    Cut(String),
}

/// A node's API without the node, for tasks that run while the node is killed and restarted.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn of(node: &Node) -> Api {
        Api { client: node.client.clone(), base: node.url("") }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let r = self.client.post(format!("{}{path}", self.base)).json(body).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.map_err(|e| e.to_string())?))
    }
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Answer::Accepted(id) => format!("202 {id}"),
            Answer::Answered(id, status) => format!("200 {id} (service status {status})"),
            Answer::Refused(status, env) => format!("{status} {env}"),
            Answer::Cut(why) => format!("no answer: {why}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reply driver: the service side of reply mode
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct DriverState {
    /// Files to send with the final reply, by tag: path and SHA-256.
    files: HashMap<String, PathBuf>,
    /// Replies accepted (202) by callback id.
    sent: HashMap<String, u8>,
    /// Callback ids answered 404 (the request had ended, e.g. failed by an interrupted call).
    gone: HashSet<String>,
    /// Replies accepted, by conversation.
    by_conversation: HashMap<String, usize>,
    /// Unexpected answers.
    errors: Vec<String>,
}

/// Answers every reply-mode service call, as a service would: `POST /v1/replies` with part 1
/// (`end: false`), then part 2 (`end: true`, with the request's reply file if it has one).
/// A failed post (the node is down) is tried again; a 404 means the request has ended.
#[derive(Clone)]
struct ReplyDriver {
    state: Arc<Mutex<DriverState>>,
    stop: Arc<AtomicBool>,
}

impl ReplyDriver {
    fn start(node: &Node, service: Recorder) -> (ReplyDriver, tokio::task::JoinHandle<()>) {
        let driver = ReplyDriver { state: Arc::default(), stop: Arc::default() };
        let (api, me) = (Api::of(node), driver.clone());
        let task = tokio::spawn(async move {
            while !me.stop.load(Ordering::Relaxed) {
                for call in service.seen() {
                    let fields = call.fields();
                    let Some(callback_id) = fields.get("callbackId") else { continue };
                    let tag = fields.get("tag").cloned().unwrap_or_default();
                    let conversation = call.headers.get("x-ferry-conversation").cloned().unwrap_or_default();
                    let (sent, file) = {
                        let s = me.state.lock().unwrap();
                        if s.gone.contains(callback_id) {
                            continue;
                        }
                        (s.sent.get(callback_id).copied().unwrap_or(0), s.files.get(&tag).cloned())
                    };
                    let body = match sent {
                        0 => json!({"callback_id": callback_id, "data": {"part": 1, "tag": tag}, "end": false}),
                        1 => {
                            let mut body =
                                json!({"callback_id": callback_id, "data": {"part": 2, "tag": tag}, "end": true});
                            if let Some(file) = file {
                                body["file"] = json!(file);
                            }
                            body
                        }
                        _ => continue,
                    };
                    let answer = api.post("/v1/replies", &body).await;
                    let mut s = me.state.lock().unwrap();
                    match answer {
                        Ok((202, _)) => {
                            *s.sent.entry(callback_id.clone()).or_insert(0) += 1;
                            *s.by_conversation.entry(conversation).or_insert(0) += 1;
                        }
                        Ok((404, _)) => {
                            s.gone.insert(callback_id.clone());
                        }
                        Ok((status, env)) if status < 500 => {
                            s.errors.push(format!("POST /v1/replies for {tag}: {status} {env}"));
                            s.gone.insert(callback_id.clone());
                        }
                        Ok(_) | Err(_) => {} // the node is down or stopping: again on the next pass
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        (driver, task)
    }

    fn send_file_with(&self, tag: &str, path: PathBuf) {
        self.state.lock().unwrap().files.insert(tag.to_owned(), path);
    }

    fn replies_in(&self, conversation: &str) -> usize {
        self.state.lock().unwrap().by_conversation.get(conversation).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// A pair of nodes as child processes
// ---------------------------------------------------------------------------------------------

/// org-a (the requester, with its callback receiver) and org-b (offering service "1", a
/// recorder), and the reply driver answering for org-b's service.
struct Pair {
    a: Node,
    b: Node,
    service: Recorder,
    callbacks: Recorder,
    driver: ReplyDriver,
    driver_task: Option<tokio::task::JoinHandle<()>>,
    /// The last `ferry audit verify` failure per node, so that a log broken once is reported once.
    audit_failures: Mutex<HashMap<String, String>>,
    _root: tempfile::TempDir,
}

impl Pair {
    /// Offers org-b's service to org-a, starts both (pinned both ways already) and the driver.
    async fn start(root: tempfile::TempDir, mut a: Node, mut b: Node, service: Recorder, callbacks: Recorder) -> Pair {
        b.add_service("1", &service.base_url(), &["org-a"]);
        a.start().await;
        b.start().await;
        let (driver, task) = ReplyDriver::start(&b, service.clone());
        Pair {
            a,
            b,
            service,
            callbacks,
            driver,
            driver_task: Some(task),
            audit_failures: Mutex::default(),
            _root: root,
        }
    }

    async fn stop_driver(&mut self) {
        self.driver.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.driver_task.take() {
            let _ = task.await;
        }
    }

    /// The requests of one round, tagged `{conversation}-{n}`, with their files written.
    fn specs(&self, conversation: &str, mix: Mix, rng: &mut StdRng) -> Vec<Spec> {
        let mut kinds = Vec::new();
        let mix = mix.chosen();
        kinds.extend(std::iter::repeat_n(Kind::Sync, mix.sync));
        kinds.extend(std::iter::repeat_n(Kind::Async, mix.r#async));
        kinds.extend(std::iter::repeat_n(Kind::Reply, mix.reply));
        kinds.extend(std::iter::repeat_n(Kind::File, mix.file));
        kinds
            .into_iter()
            .enumerate()
            .map(|(n, kind)| {
                let tag = format!("{conversation}-{n}");
                let sleep = rng.random_range(0..400);
                let mut body = json!({
                    "peer": "org-b", "service": "1", "method": "POST",
                    "path": format!("/sleep/{sleep}/{}/{tag}", kind.word()),
                    "form": {"tag": tag}, "conversation": conversation,
                });
                let (mut file_sha, mut reply_file_sha) = (None, None);
                if kind == Kind::Sync {
                    body["mode"] = json!("sync");
                    body["timeout_ms"] = json!(8000);
                } else {
                    body["mode"] = json!("async");
                    let slow = rng.random_range(0..150);
                    body["callback"] = json!({"url": format!("{}/sleep/{slow}/cb/{tag}", self.callbacks.base_url())});
                }
                if kind == Kind::Reply {
                    body["reply"] = json!(true);
                    if rng.random_bool(0.5) {
                        let path = self.b.dir.join(format!("outbox/reply-{tag}.bin"));
                        let size = rng.random_range(1..=1 << 20);
                        reply_file_sha = Some(make_file_seeded(&path, size, rng.random()));
                        self.driver.send_file_with(&tag, path);
                    }
                }
                if kind == Kind::File {
                    let path = self.a.dir.join(format!("outbox/{tag}.bin"));
                    let size = rng.random_range(1..=mix.file_max);
                    file_sha = Some(make_file_seeded(&path, size, rng.random()));
                    body["file"] = json!(path);
                }
                Spec { tag, kind, body, file_sha, reply_file_sha }
            })
            .collect()
    }

    /// Posts every request from its own task, a few milliseconds apart; the tasks.
    fn send(&self, specs: &[Spec], rng: &mut StdRng) -> Vec<tokio::task::JoinHandle<Answer>> {
        let api = Api::of(&self.a);
        specs
            .iter()
            .map(|spec| {
                let (api, body) = (api.clone(), spec.body.clone());
                let after = Duration::from_millis(rng.random_range(0..120));
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    match api.post("/v1/requests", &body).await {
                        Ok((202, env)) => Answer::Accepted(env["data"]["id"].as_str().unwrap_or_default().to_owned()),
                        Ok((200, env)) => Answer::Answered(
                            env["data"]["id"].as_str().unwrap_or_default().to_owned(),
                            env["data"]["status"].as_u64().unwrap_or(0),
                        ),
                        Ok((status, env)) => Answer::Refused(status, env),
                        Err(e) => Answer::Cut(e),
                    }
                })
            })
            .collect()
    }

    /// Every request of `conversation` in `direction` on `node`.
    async fn listed(node: &Node, direction: &str, conversation: &str) -> Result<Vec<Value>, String> {
        let data =
            node.get(&format!("/v1/requests?direction={direction}&conversation={conversation}&limit=500")).await?;
        data["items"].as_array().cloned().ok_or_else(|| data.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and the tally
// ---------------------------------------------------------------------------------------------

/// What a phase did and found.
#[derive(Default)]
struct Tally {
    phase: String,
    rounds: usize,
    faults: usize,
    requests: usize,
    lost: usize,
    duplicated: usize,
    /// Async requests failed because a kill interrupted their service call (at most once).
    interrupted: usize,
    /// Sync requests (or posts) cut by a kill, answered with an error or not at all.
    cut: usize,
    /// Callback results delivered more than once (a kill between the delivery and its record).
    redelivered: usize,
    files: usize,
    problems: Vec<String>,
}

impl Tally {
    fn new(phase: &str) -> Tally {
        Tally { phase: phase.to_owned(), ..Tally::default() }
    }

    fn problem(&mut self, what: String) {
        eprintln!("PROBLEM [{}]: {what}", self.phase);
        self.problems.push(what);
    }
}

/// How a round may end for requests cut by its fault.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A kill: posts and sync requests may be cut, async calls may be interrupted.
    Kill,
    /// The peer is down while requests are posted: sync ones fail as `peer_unreachable`.
    PeerDown,
    /// Nothing may fail.
    Clean,
}

/// Waits for every request of the round to end and checks everything (see the file's docs).
async fn check_round(
    pair: &Pair,
    conversation: &str,
    specs: &[Spec],
    answers: Vec<Answer>,
    expect: Expect,
    t: &mut Tally,
) {
    t.requests += specs.len();
    let by_tag: HashMap<&str, &Spec> = specs.iter().map(|s| (s.tag.as_str(), s)).collect();
    let mut sync_ids = Vec::new();
    let mut accepted = Vec::new();
    for (spec, answer) in specs.iter().zip(answers) {
        match (spec.kind, answer) {
            (Kind::Sync, Answer::Answered(id, status)) => {
                if status != 200 {
                    t.problem(format!("{}: sync answered with service status {status}", spec.tag));
                }
                sync_ids.push((spec.tag.clone(), id));
            }
            (Kind::Sync, Answer::Refused(status, env)) if expect == Expect::PeerDown => {
                if env["data"]["error"] != "peer_unreachable" {
                    t.problem(format!("{}: with the peer down, sync answered {status} {env}", spec.tag));
                }
                t.cut += 1;
            }
            (Kind::Sync, Answer::Refused(..) | Answer::Cut(_)) if expect == Expect::Kill => t.cut += 1,
            (_, Answer::Accepted(id)) if spec.kind != Kind::Sync => accepted.push((spec.tag.clone(), id)),
            (_, Answer::Cut(_)) if expect == Expect::Kill => t.cut += 1,
            (kind, answer) => t.problem(format!("{} ({kind:?}): unexpected answer {}", spec.tag, answer.describe())),
        }
    }

    // Every async request of the round on org-a, including any whose 202 a kill cut, ends, and
    // its callback results are delivered.
    let ended = try_until(SETTLE_ROUND, async || {
        let items = Pair::listed(&pair.a, "outgoing", conversation).await?;
        let open: Vec<String> = items
            .iter()
            .filter(|s| {
                !(s["state"] == "success" || s["state"] == "failed")
                    || (s["callback"].is_object() && s["callback"]["delivered"] != true)
            })
            .map(|s| format!("{} {} {} callback {}", s["id"], s["path"], s["state"], s["callback"]))
            .collect();
        if open.is_empty() {
            Ok(items)
        } else {
            Err(format!("{open:?}"))
        }
    })
    .await;
    let items = match ended {
        Ok(items) => items,
        Err(open) => {
            t.problem(format!("{conversation}: requests did not end within {SETTLE_ROUND:?}: {open}"));
            let items = Pair::listed(&pair.a, "outgoing", conversation).await.unwrap_or_default();
            t.lost += items.iter().filter(|s| !(s["state"] == "success" || s["state"] == "failed")).count();
            items
        }
    };
    let listed: HashSet<&str> = items.iter().filter_map(|s| s["id"].as_str()).collect();
    for (tag, id) in &accepted {
        if !listed.contains(id.as_str()) {
            t.lost += 1;
            t.problem(format!("{tag}: accepted as {id} but org-a does not list it"));
        }
    }

    for listed in &items {
        let id = listed["id"].as_str().unwrap_or_default();
        // The listing leaves the replies out.
        let status = &pair.a.status(id).await.unwrap_or_else(|_| listed.clone());
        let path = status["path"].as_str().unwrap_or_default();
        let tag = path.rsplit('/').next().unwrap_or_default();
        let Some(spec) = by_tag.get(tag) else {
            t.problem(format!("{id}: a request the test did not send: {status}"));
            continue;
        };
        let calls = pair.service.calls_for(id);
        match status["state"].as_str() {
            Some("success") => {
                if calls.is_empty() {
                    t.lost += 1;
                    t.problem(format!("{tag} ({id}) succeeded but its service was never called: {status}"));
                }
                if spec.kind != Kind::Reply && status["response"]["status"] != 200 {
                    t.problem(format!("{tag} ({id}): service status not 200: {status}"));
                }
            }
            Some("failed") => {
                let error = status["error"].as_str().unwrap_or_default();
                if expect == Expect::Kill && error.contains(INTERRUPTED) {
                    t.interrupted += 1;
                } else {
                    t.problem(format!("{tag} ({id}) failed: {status}"));
                }
                continue;
            }
            _ => continue, // counted as lost above
        }
        // The request's file reached the service whole.
        if let Some(sha) = &spec.file_sha {
            t.files += 1;
            if status["transfer"]["sha256"] != sha.as_str() {
                t.problem(format!("{tag} ({id}): transfer {} is not the file sent ({sha})", status["transfer"]));
            }
            match calls.first().and_then(|c| c.fields().get("file").cloned()) {
                Some(got) if sha_of(&PathBuf::from(&got)) == *sha => {}
                Some(got) => t.problem(format!("{tag} ({id}): the file the service got ({got}) has another SHA-256")),
                None => t.problem(format!("{tag} ({id}): the service got no file field: {calls:?}")),
            }
        }
        // Reply mode: part 1 (perhaps posted twice across a kill), then part 2 with `end`.
        let replies = status["replies"].as_array().cloned().unwrap_or_default();
        if spec.kind == Kind::Reply {
            let last = replies.last().cloned().unwrap_or(Value::Null);
            let firsts_ok =
                replies[..replies.len().saturating_sub(1)].iter().all(|r| r["data"]["part"] == 1 && r["end"] == false);
            if last["data"]["part"] != 2 || last["end"] != true || !firsts_ok {
                t.problem(format!("{tag} ({id}): replies not part 1 then part 2 with end: {replies:?}"));
            }
        }
        // Every result reached the callback receiver, in seq order, at least once.
        let delivered = pair.callbacks.callbacks_for(id);
        let seqs: Vec<u64> = delivered.iter().filter_map(|f| f.get("seq")?.parse().ok()).collect();
        let distinct: Vec<u64> = seqs.iter().fold(Vec::new(), |mut v, s| {
            if !v.contains(s) {
                v.push(*s);
            }
            v
        });
        let want = replies.len().max(1) as u64;
        if distinct != (1..=want).collect::<Vec<_>>() {
            t.problem(format!("{tag} ({id}): callback seqs {seqs:?}, expected 1..={want}"));
        }
        t.redelivered += seqs.len() - distinct.len();
        if let Some(sha) = &spec.reply_file_sha {
            t.files += 1;
            let file =
                delivered.iter().find(|f| f.get("end").map(String::as_str) == Some("true")).and_then(|f| f.get("file"));
            match file {
                Some(got) if sha_of(&PathBuf::from(got)) == *sha => {}
                Some(got) => t.problem(format!("{tag} ({id}): the reply file delivered ({got}) has another SHA-256")),
                None => t.problem(format!("{tag} ({id}): no reply file in the final callback: {delivered:?}")),
            }
        }
    }

    // Sync requests answered 200 reached the service exactly once (duplicates are counted at the
    // end of the phase, over every call).
    for (tag, id) in &sync_ids {
        if pair.service.calls_for(id).is_empty() {
            t.lost += 1;
            t.problem(format!("{tag} ({id}): answered but the service has no call for it"));
        }
    }

    // org-b's side of the round ended too.
    let incoming = try_until(SETTLE_ROUND, async || {
        let items = Pair::listed(&pair.b, "incoming", conversation).await?;
        let open: Vec<String> = items
            .iter()
            .filter(|s| !(s["state"] == "success" || s["state"] == "failed"))
            .map(|s| format!("{} {} {}", s["id"], s["path"], s["state"]))
            .collect();
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("{open:?}"))
        }
    })
    .await;
    if let Err(open) = incoming {
        t.problem(format!("{conversation}: org-b's incoming requests did not end: {open}"));
    }

    for node in [&pair.a, &pair.b] {
        if let Err(e) = node.audit_verify() {
            let before = pair.audit_failures.lock().unwrap().insert(node.name.clone(), e.clone());
            if before.as_ref() != Some(&e) {
                t.problem(format!("after {conversation}: {e}"));
            }
        }
    }
}

/// Counts the test's requests of the phase (`ours` picks their tags) that reached the service more
/// than once, under one id or several; call it once the calls had time to settle.
fn count_duplicates(pair: &Pair, t: &mut Tally, ours: impl Fn(&str) -> bool) {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in pair.service.seen() {
        let tag = c.fields().get("tag").cloned().unwrap_or_default();
        if ours(&tag) {
            by_tag.entry(tag).or_default().push(c.request_id().unwrap_or("<none>").to_owned());
        }
    }
    for (tag, ids) in by_tag {
        if ids.len() > 1 {
            t.duplicated += 1;
            t.problem(format!("request {tag} reached the service {} times, with request ids {ids:?}", ids.len()));
        }
    }
}

/// The reply driver's unexpected answers, as problems; and both nodes' logs if there were any.
fn wrap_up(pair: &Pair, t: &mut Tally) {
    let errors = pair.driver.state.lock().unwrap().errors.clone();
    for e in errors {
        t.problem(format!("reply driver: {e}"));
    }
    if !t.problems.is_empty() {
        for node in [&pair.a, &pair.b] {
            eprintln!("---- log of `ferry run` for {} ({}) ----\n{}", node.name, t.phase, node.log_text());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The phases
// ---------------------------------------------------------------------------------------------

/// Where in the flows a round's kill lands.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// While the requests are being posted.
    Posting,
    /// Once the service is working on sync requests.
    SyncCall,
    /// Once the service has calls of the round in hand.
    ServiceCall,
    /// Once part of a request file is on org-b's disk.
    FileTransfer,
    /// Once the reply driver has had a reply accepted.
    Reply,
    /// Once a callback result reached the host.
    Callback,
}

const POINTS: [Point; 6] =
    [Point::Posting, Point::SyncCall, Point::ServiceCall, Point::FileTransfer, Point::Reply, Point::Callback];

/// Whether the round has reached `point`.
fn reached(pair: &Pair, conversation: &str, point: Point, callbacks_before: usize) -> bool {
    let of_round = || {
        pair.service
            .seen()
            .into_iter()
            .filter(|c| c.headers.get("x-ferry-conversation").map(String::as_str) == Some(conversation))
            .collect::<Vec<_>>()
    };
    match point {
        Point::Posting => true,
        Point::SyncCall => of_round().iter().any(|c| c.path.contains("/sync/")),
        Point::ServiceCall => of_round().len() >= 2,
        Point::FileTransfer => {
            std::fs::read_dir(pair.b.dir.join("data/partial/org-a"))
                .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
                .unwrap_or(false)
                || of_round().iter().any(|c| c.path.contains("/file/"))
        }
        Point::Reply => pair.driver.replies_in(conversation) > 0,
        Point::Callback => pair.callbacks.seen().len() > callbacks_before,
    }
}

/// A temporary directory for the nodes, kept (and named) when `FERRY_FAULT_KEEP` is set, so that
/// their stores and evidence logs can be examined after a finding.
fn temp_root() -> tempfile::TempDir {
    let mut root = tempfile::Builder::new();
    root.prefix("ferry-faults-");
    if std::env::var_os("FERRY_FAULT_KEEP").is_some() {
        root.disable_cleanup(true);
    }
    let root = root.tempdir().unwrap();
    eprintln!("nodes in {}", root.path().display());
    root
}

/// The seed: `FERRY_FAULT_SEED`, or the clock.
fn seed() -> u64 {
    match std::env::var("FERRY_FAULT_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("FERRY_FAULT_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

/// 20 rounds of SIGKILL, then the peer-down round, on loopback.
async fn kills_and_backlog(seed: u64) -> Vec<Tally> {
    let mut rng = StdRng::seed_from_u64(seed);
    let root = temp_root();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (a, b) = (Node::create(root.path(), "org-a"), Node::create(root.path(), "org-b"));
    a.pin(&b);
    b.pin(&a);
    let mut pair = Pair::start(root, a, b, service, callbacks).await;
    let mix = Mix { sync: 2, r#async: 3, reply: 2, file: 1, file_max: 6 << 20 };

    let mut t = Tally::new("sigkill");
    let rounds = std::env::var("FERRY_FAULT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS);
    for round in 1..=rounds {
        let started = Instant::now();
        let conversation = format!("k{round}");
        let kill_a = rng.random_bool(0.5);
        let point = POINTS[rng.random_range(0..POINTS.len())];
        let extra = Duration::from_millis(rng.random_range(0..250));
        let down = Duration::from_millis(rng.random_range(50..800));
        let specs = pair.specs(&conversation, mix, &mut rng);
        let callbacks_before = pair.callbacks.seen().len();
        let tasks = pair.send(&specs, &mut rng);

        let hit = try_until(Duration::from_secs(6), async || {
            if reached(&pair, &conversation, point, callbacks_before) {
                Ok(())
            } else {
                Err(String::new())
            }
        })
        .await
        .is_ok();
        tokio::time::sleep(extra).await;
        let victim = if kill_a { &mut pair.a } else { &mut pair.b };
        victim.kill();
        t.faults += 1;
        let mut answers = Vec::new();
        tokio::time::sleep(down).await;
        let victim = if kill_a { &mut pair.a } else { &mut pair.b };
        victim.start().await;
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let before = t.problems.len();
        check_round(&pair, &conversation, &specs, answers, Expect::Kill, &mut t).await;
        t.rounds += 1;
        eprintln!(
            "round {round:2}: killed {} at {point:?}{} +{extra:?}, down {down:?}: {} requests, {} problems, {:?}",
            if kill_a { "org-a" } else { "org-b" },
            if hit { "" } else { " (not reached: killed anyway)" },
            specs.len(),
            t.problems.len() - before,
            started.elapsed(),
        );
    }

    // The peer is down for a while (a graceful stop) while a backlog builds on org-a.
    let mut p = Tally::new("peer down");
    let conversation = "down";
    let backlog = Mix { sync: 2, r#async: 12, reply: 6, file: 4, file_max: 2 << 20 };
    let specs = pair.specs(conversation, backlog, &mut rng);
    pair.b.stop().await;
    p.faults += 1;
    let mut answers = Vec::new();
    for task in pair.send(&specs, &mut rng) {
        answers.push(task.await.unwrap());
    }
    let waiting = Pair::listed(&pair.a, "outgoing", conversation).await.unwrap_or_default();
    let not_waiting: Vec<&Value> = waiting.iter().filter(|s| s["state"] != "waiting").collect();
    if waiting.len() != specs.iter().filter(|s| s.kind != Kind::Sync).count() || !not_waiting.is_empty() {
        p.problem(format!("with org-b down, {} listed, not waiting: {not_waiting:?}", waiting.len()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.b.start().await;
    check_round(&pair, conversation, &specs, answers, Expect::PeerDown, &mut p).await;
    p.rounds += 1;

    tokio::time::sleep(SETTLE).await;
    pair.stop_driver().await;
    count_duplicates(&pair, &mut t, |tag| tag.starts_with('k'));
    count_duplicates(&pair, &mut p, |tag| tag.starts_with("down-"));
    wrap_up(&pair, &mut t);
    wrap_up(&pair, &mut p);
    vec![t, p]
}

/// The lossy-link phase: every flow over a link that loses 5 % of the datagrams and delays the
/// others; netem between two network namespaces where the kernel has it, else the relay.
async fn lossy(seed: u64) -> Tally {
    match TestNet::create("fz", true).and_then(|net| net.netem("loss 5% delay 50ms").map(|()| net)) {
        Ok(net) => over_netem(net, seed).await,
        Err(why) => {
            eprintln!("no netem ({why}): the lossy-link phase runs through the userspace relay");
            over_relay(seed).await
        }
    }
}

/// One round of every flow between nodes in two namespaces, over a link with netem.
async fn over_netem(net: TestNet, seed: u64) -> Tally {
    let mut t = Tally::new("netem 5%/50ms");
    t.faults += 1;
    let root = temp_root();
    let service = Recorder::start_on(net.addr(2, 1, 0)).await;
    let callbacks = Recorder::start_on(net.addr(1, 1, 0)).await;
    let mut a =
        Node::create_at(root.path(), "org-a", net.addr(3, 1, 7443), net.addr(1, 2, 8888), Some(&net.namespaces[0]));
    let mut b =
        Node::create_at(root.path(), "org-b", net.addr(3, 2, 7443), net.addr(2, 2, 8888), Some(&net.namespaces[1]));
    a.set_token(TOKEN);
    b.set_token(TOKEN);
    a.pin(&b);
    b.pin(&a);
    let pair = Pair::start(root, a, b, service, callbacks).await;
    lossy_round(pair, seed, &mut t).await;
    drop(net); // after the nodes: they ended with the pair
    t
}

/// One round of every flow between nodes on loopback whose datagrams pass the lossy relay: 5 %
/// dropped each way, the others delayed 25 ms each way (50 ms round trip). The faults counted
/// are the datagrams dropped.
async fn over_relay(seed: u64) -> Tally {
    let mut t = Tally::new("relay 5%/50ms RTT");
    let relay_seed = seed ^ 0x0072_656c_6179;
    eprintln!("lossy relay seed {relay_seed} (from the suite's seed)");
    let root = temp_root();
    let (service, callbacks) = (Recorder::start().await, Recorder::start().await);
    let (a, b) = (Node::create(root.path(), "org-a"), Node::create(root.path(), "org-b"));
    let link = LossyLink::start(a.link, b.link, 0.05, Duration::from_millis(25), relay_seed);
    a.pin_at(&b, link.to_b);
    b.pin_at(&a, link.to_a);
    let pair = Pair::start(root, a, b, service, callbacks).await;
    lossy_round(pair, seed, &mut t).await;
    let (forwarded, dropped) = (link.forwarded(), link.dropped());
    eprintln!("lossy relay: forwarded {forwarded:?}, dropped {dropped:?} datagrams (a to b, b to a)");
    t.faults += (dropped[0] + dropped[1]) as usize;
    if t.faults == 0 {
        t.problem(format!("the relay dropped none of {forwarded:?} datagrams: no loss was tested"));
    }
    t
}

/// Sends a round of every flow and checks it; the nodes stop at the end.
async fn lossy_round(mut pair: Pair, seed: u64, t: &mut Tally) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_6574_656d);
    let mix = Mix { sync: 4, r#async: 6, reply: 3, file: 2, file_max: 256 << 10 };
    let specs = pair.specs("lossy", mix, &mut rng);
    let mut answers = Vec::new();
    for task in pair.send(&specs, &mut rng) {
        answers.push(task.await.unwrap());
    }
    check_round(&pair, "lossy", &specs, answers, Expect::Clean, t).await;
    t.rounds += 1;
    tokio::time::sleep(SETTLE).await;
    pair.stop_driver().await;
    count_duplicates(&pair, t, |tag| tag.starts_with("lossy-"));
    wrap_up(&pair, t);
}

/// The table: one row per phase and the total.
fn table(tallies: &[Tally]) -> String {
    let mut out = String::new();
    let header =
        ["phase", "rounds", "faults", "requests", "lost", "duplicated", "interrupted", "cut", "cb again", "files"];
    writeln!(out, "{:<18}{}", header[0], header[1..].iter().map(|h| format!("{h:>12}")).collect::<String>()).unwrap();
    let row = |out: &mut String, name: &str, v: [usize; 9]| {
        writeln!(out, "{name:<18}{}", v.iter().map(|n| format!("{n:>12}")).collect::<String>()).unwrap();
    };
    let mut total = [0usize; 9];
    for t in tallies {
        let v = [t.rounds, t.faults, t.requests, t.lost, t.duplicated, t.interrupted, t.cut, t.redelivered, t.files];
        for (sum, n) in total.iter_mut().zip(v) {
            *sum += n;
        }
        row(&mut out, &t.phase, v);
    }
    row(&mut out, "total", total);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_and_nothing_is_done_twice_under_faults() {
    let seed = seed();
    eprintln!("fault suite seed {seed} (FERRY_FAULT_SEED={seed} replays it)");
    let started = Instant::now();
    let (mut tallies, net) = tokio::time::timeout(WHOLE, async { tokio::join!(kills_and_backlog(seed), lossy(seed)) })
        .await
        .unwrap_or_else(|_| panic!("the fault suite did not end within {WHOLE:?} (seed {seed})"));
    tallies.push(net);
    let table = table(&tallies);
    eprintln!("\nfault suite, seed {seed}, {:?}\n{table}", started.elapsed());
    println!("{table}");
    let problems: Vec<&String> = tallies.iter().flat_map(|t| &t.problems).collect();
    let lost: usize = tallies.iter().map(|t| t.lost).sum();
    let duplicated: usize = tallies.iter().map(|t| t.duplicated).sum();
    assert_eq!(lost, 0, "requests lost (seed {seed}): {problems:#?}");
    assert_eq!(duplicated, 0, "requests done twice (seed {seed}): {problems:#?}");
    assert!(problems.is_empty(), "{} problems (seed {seed}): {problems:#?}", problems.len());
}
