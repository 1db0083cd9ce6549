//! The soak run (issue 20, item 8): `cargo bench --bench soak`.
//!
//! Two nodes, org-a and org-b, run as real `ferry run` processes (as `tests/faults.rs` runs them,
//! through `tests/common/process.rs`), so that each one's resident set and open descriptors can be
//! read from /proc. For `FERRY_SOAK_MINUTES` the host side sends org-a a bounded rate of mixed
//! requests for org-b's service: sync; async with a callback; reply mode with a callback, answered
//! by a reply driver with `POST /v1/replies` (one reply, or `end: false` then `end: true`, the last
//! sometimes with a small file); async with a file (4–256 KiB, one in 20 of 1–4 MiB). The callback
//! receiver records every delivery `(id, seq)` and, to exercise the retries, refuses one first
//! attempt in 50 with a 503. Every `FERRY_SOAK_RESTART_S` one node is restarted, org-a and org-b in
//! turn, by SIGKILL or a graceful SIGTERM. At the end the bench waits (at most
//! `FERRY_SOAK_SETTLE_S`) until nothing is open on either node, then checks every request and
//! prints the tables:
//!
//! - **lost**: accepted (202, or listed by org-a after a post a restart cut) but not ended
//!   (`success` or `failed`); ended without its callbacks `1..=n` (`n` the one with `end=true`)
//!   reaching the receiver; a success whose service was never called; a sync 200 without a
//!   service call;
//! - **duplicated**: a service called twice for one id (or one request under two ids); a
//!   callback `(id, seq)` delivered twice, unless org-a was SIGKILLed between the two deliveries
//!   (a kill may cut the record of a delivery the host acknowledged: that is counted as
//!   **redelivered after a kill**);
//! - **out of order**: a request whose callbacks reached the host with a seq lower than one
//!   already delivered;
//! - **interrupted**: async requests failed with the documented "stopped while its service was
//!   being called" (a kill of org-b during the call; at most once, by design);
//! - per node, at start (idle, before traffic) and at the end (idle, after the settle): resident
//!   set, open descriptors and store size (`data/ferry.db` + `-wal`), the peak resident set
//!   (sampled every second), CPU seconds, and warning and error lines in its log; and one row per
//!   run of each node (a restart starts a new process) with the same figures at its end.
//!
//! Every request file and reply file is checked against its SHA-256 where it arrives (by the
//! service, by the callback receiver) and then deleted, with its source, so that the disk holds
//! only what is in flight. The nodes' directories are temporary and removed at the end (kept with
//! `FERRY_SOAK_KEEP=1`).
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FERRY_SOAK_MINUTES` | 30 | how long traffic runs |
//! | `FERRY_SOAK_RESTART_S` | 180 | seconds between restarts (org-a and org-b in turn) |
//! | `FERRY_SOAK_RATE` | 50 | requests per second, all kinds together |
//! | `FERRY_SOAK_SETTLE_S` | 180 | the bound on waiting for everything to end after the traffic |
//! | `FERRY_SOAK_SEED` | the clock | the seed of the request mix, sizes, delays and stop kinds (timing is not replayed) |
//! | `FERRY_SOAK_KEEP` | unset | keep the nodes' directory (its path is printed) |

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::cpu::{proc_usage, ProcUsage};
use support::files::{make_file_seeded, try_sha_of};
use support::process::{http, two_nodes, Node, INTERRUPTED};
use support::report::{mib, pass, render, thousands};
use tokio::time::Instant;

/// Posts in flight at most; a tick past it is skipped (counted).
const IN_FLIGHT: usize = 256;
/// One first callback attempt in this many is answered 503, so that deliveries are retried.
const REFUSE_ONE_IN: u64 = 50;
/// After everything has ended, how long to keep watching for a late duplicate.
const LATE: Duration = Duration::from_secs(5);
/// How long the nodes may idle at the end until their descriptors are back to those at start
/// (pooled connections idle 90 s and are swept as often).
const IDLE: Duration = Duration::from_secs(190);

/// The settings, from the environment.
struct Settings {
    minutes: f64,
    restart_s: f64,
    rate: f64,
    settle_s: f64,
    seed: u64,
    keep: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        let settings = Settings {
            minutes: var("FERRY_SOAK_MINUTES", 30.0)?,
            restart_s: var("FERRY_SOAK_RESTART_S", 180.0)?,
            rate: var("FERRY_SOAK_RATE", 50.0)?,
            settle_s: var("FERRY_SOAK_SETTLE_S", 180.0)?,
            seed: var("FERRY_SOAK_SEED", clock)?,
            keep: std::env::var_os("FERRY_SOAK_KEEP").is_some(),
        };
        anyhow::ensure!(settings.minutes > 0.0, "FERRY_SOAK_MINUTES must be above 0");
        anyhow::ensure!(settings.restart_s >= 5.0, "FERRY_SOAK_RESTART_S must be at least 5");
        anyhow::ensure!(settings.rate > 0.0 && settings.rate <= 1000.0, "FERRY_SOAK_RATE must be 1 to 1000");
        Ok(settings)
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(soak(settings))
}

// ---------------------------------------------------------------------------------------------
// What is sent
// ---------------------------------------------------------------------------------------------

/// The flows the traffic mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Sync,
    Async,
    Reply,
    File,
}

const KINDS: [Kind; 4] = [Kind::Sync, Kind::Async, Kind::Reply, Kind::File];

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Async => "async",
            Kind::Reply => "reply",
            Kind::File => "file",
        }
    }

    fn parse(word: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.word() == word)
    }

    /// One kind, in the proportions sync 30 %, async 25 %, reply 25 %, file 20 %.
    fn pick(rng: &mut StdRng) -> Kind {
        match rng.random_range(0..100) {
            0..30 => Kind::Sync,
            30..55 => Kind::Async,
            55..80 => Kind::Reply,
            _ => Kind::File,
        }
    }
}

/// What one request is to do, chosen when it is sent; found again by its tag (the last segment
/// of its path, and its form field `tag`).
#[derive(Clone)]
struct Plan {
    kind: Kind,
    /// How long the service takes to answer.
    service_ms: u64,
    /// Reply mode: how many replies (1, or 2: `end: false` then `end: true`).
    replies: u8,
    /// Reply mode: the size and pattern of a file sent with the last reply.
    reply_file: Option<(u64, u64)>,
    /// The request's file and its SHA-256.
    file: Option<(PathBuf, String)>,
}

/// What `POST /v1/requests` answered.
#[derive(Debug)]
enum Outcome {
    /// 202 with this id.
    Accepted(String),
    /// 200 with this id and the service's status.
    Answered(String, u64),
    /// Another status and the error kind (`data.error`).
    Refused(u16, String),
    /// No connection: the node was down.
    Down,
    /// The connection was cut before an answer (a restart during the post).
    Cut,
}

/// One callback delivery the receiver answered 2xx.
struct Delivery {
    seq: u64,
    end: bool,
    at: Instant,
}

/// A stop of a node.
#[derive(Clone)]
struct Restart {
    node: &'static str,
    kill: bool,
    /// Seconds into the traffic.
    at_s: f64,
    down_at: Instant,
    down_s: f64,
}

/// Everything the host side saw, shared by the sender, the service, the reply driver and the
/// callback receiver.
struct Soak {
    seed: u64,
    /// org-b's API (`http://addr`), where the reply driver posts.
    b_api: String,
    b_outbox: PathBuf,
    plans: Mutex<HashMap<String, Plan>>,
    outcomes: Mutex<Vec<(String, Kind, Outcome)>>,
    /// Service calls by request id: the tag and how many calls.
    service_calls: Mutex<HashMap<String, (String, u32)>>,
    /// The request ids under which the service saw each tag.
    tag_ids: Mutex<HashMap<String, Vec<String>>>,
    /// Reply files written for the driver, by tag: path and SHA-256.
    reply_files: Mutex<HashMap<String, (PathBuf, String)>>,
    callbacks: Mutex<HashMap<String, Vec<Delivery>>>,
    /// Every (id, seq) a callback delivery was attempted for, to refuse some first attempts.
    callback_attempts: Mutex<HashSet<(String, u64)>>,
    restarts: Mutex<Vec<Restart>>,
    /// Files whose SHA-256 did not match where they arrived, and other findings, as text.
    problems: Mutex<Vec<String>>,
    corrupt_files: AtomicUsize,
    files_checked: AtomicUsize,
    drivers_in_flight: AtomicUsize,
    skipped: AtomicUsize,
    /// When the reply driver gives up a reply it cannot post.
    give_up_at: Instant,
}

impl Soak {
    fn problem(&self, what: String) {
        eprintln!("PROBLEM: {what}");
        self.problems.lock().unwrap().push(what);
    }

    fn plan(&self, tag: &str) -> Option<Plan> {
        self.plans.lock().unwrap().get(tag).cloned()
    }
}

/// The SHA-256 in hex of the file at `path`, read off the async threads.
async fn file_sha(path: PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || try_sha_of(&path)).await?
}

/// Checks the file at `path` against `want`, then deletes it (and its folder, when that is a
/// received file's own).
async fn check_and_delete(soak: &Soak, what: &str, path: &str, want: Option<&str>) {
    soak.files_checked.fetch_add(1, Ordering::Relaxed);
    let got = file_sha(PathBuf::from(path)).await;
    match (got, want) {
        (Ok(got), Some(want)) if got == want => {}
        (got, want) => {
            soak.corrupt_files.fetch_add(1, Ordering::Relaxed);
            soak.problem(format!("{what}: {path} has SHA-256 {got:?}, expected {want:?}"));
        }
    }
    let _ = std::fs::remove_file(path);
    if let Some(folder) = Path::new(path).parent() {
        let _ = std::fs::remove_dir(folder);
    }
}

// ---------------------------------------------------------------------------------------------
// The host side: service, reply driver, callback receiver
// ---------------------------------------------------------------------------------------------

/// org-b's service: records the call, checks and deletes a received file, hands a reply-mode
/// call to the reply driver, and answers 200 after the plan's delay.
async fn service(State(soak): State<Arc<Soak>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let fields: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let id = headers.get("x-ferry-request-id").and_then(|v| v.to_str().ok()).unwrap_or("<none>").to_owned();
    let tag = fields.get("tag").cloned().unwrap_or_default();
    soak.service_calls.lock().unwrap().entry(id.clone()).or_insert_with(|| (tag.clone(), 0)).1 += 1;
    {
        let mut tag_ids = soak.tag_ids.lock().unwrap();
        let ids = tag_ids.entry(tag.clone()).or_default();
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
    }
    let plan = soak.plan(&tag);
    if let Some(path) = fields.get("file") {
        let want = plan.as_ref().and_then(|p| p.file.as_ref()).map(|(_, sha)| sha.as_str());
        check_and_delete(&soak, &format!("request file of {tag} ({id})"), path, want).await;
    }
    if let Some(callback_id) = fields.get("callbackId") {
        soak.drivers_in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(drive_replies(soak.clone(), callback_id.clone(), tag.clone()));
    }
    tokio::time::sleep(Duration::from_millis(plan.map_or(0, |p| p.service_ms))).await;
    axum::Json(json!({"tag": tag, "ok": true}))
}

/// The service side of reply mode: posts the plan's replies to org-b, each until it is accepted
/// (a node down or restarting is tried again every 250 ms) or the request has ended (404).
async fn drive_replies(soak: Arc<Soak>, callback_id: String, tag: String) {
    let client = http(None);
    let url = format!("{}/v1/replies", soak.b_api);
    let plan = soak.plan(&tag);
    let (replies, reply_file) = plan.map_or((1, None), |p| (p.replies, p.reply_file));
    'parts: for part in 1..=replies {
        let end = part == replies;
        let mut body = json!({"callback_id": callback_id, "data": {"part": part, "tag": tag}, "end": end});
        if let (true, Some((size, seed))) = (end, reply_file) {
            let path = soak.b_outbox.join(format!("reply-{tag}.bin"));
            if !soak.reply_files.lock().unwrap().contains_key(&tag) {
                let (p, t) = (path.clone(), tag.clone());
                let sha = tokio::task::spawn_blocking(move || make_file_seeded(&p, size, seed)).await.unwrap();
                soak.reply_files.lock().unwrap().insert(t, (path.clone(), sha));
            }
            body["file"] = json!(path);
        }
        loop {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 202 => continue 'parts,
                Ok(r) if r.status() == 404 => break 'parts, // the request ended (e.g. interrupted)
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    soak.problem(format!("POST /v1/replies for {tag}: {status} {text}"));
                    break 'parts;
                }
                _ if Instant::now() >= soak.give_up_at => {
                    soak.problem(format!("POST /v1/replies for {tag}: gave up at the end of the settle"));
                    break 'parts;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    soak.drivers_in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// The host's callback receiver on org-a's side (`/cb/{tag}`): records each delivery it answers
/// 2xx, refuses one first attempt in [`REFUSE_ONE_IN`], checks and deletes a reply file and, once
/// a request has ended, its source files.
async fn callback(State(soak): State<Arc<Soak>>, uri: Uri, body: Bytes) -> impl IntoResponse {
    let fields: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let tag = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
    let id = fields.get("id").cloned().unwrap_or_default();
    let seq: u64 = fields.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
    let end = fields.get("end").map(String::as_str) == Some("true");
    let first_attempt = soak.callback_attempts.lock().unwrap().insert((id.clone(), seq));
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(soak.seed, &id, seq), &mut hasher);
    if first_attempt && std::hash::Hasher::finish(&hasher).is_multiple_of(REFUSE_ONE_IN) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if end {
        if let Some(path) = fields.get("file") {
            let source = soak.reply_files.lock().unwrap().get(&tag).cloned();
            let want = source.as_ref().map(|(_, sha)| sha.as_str());
            check_and_delete(&soak, &format!("reply file of {tag} ({id})"), path, want).await;
            if let Some((source, _)) = source {
                let _ = std::fs::remove_file(source);
            }
        }
        if let Some((source, _)) = soak.plan(&tag).and_then(|p| p.file) {
            let _ = std::fs::remove_file(source);
        }
    }
    soak.callbacks.lock().unwrap().entry(id).or_default().push(Delivery { seq, end, at: Instant::now() });
    StatusCode::OK
}

// ---------------------------------------------------------------------------------------------
// The sender
// ---------------------------------------------------------------------------------------------

/// Sends at `rate` per second until `until`, each request from its own task (at most
/// [`IN_FLIGHT`] at once); returns once every post has its answer.
async fn send_traffic(
    soak: Arc<Soak>,
    a_api: String,
    a_outbox: PathBuf,
    callbacks: String,
    rate: f64,
    until: Instant,
    mut rng: StdRng,
) {
    let client = http(None);
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            soak.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        n += 1;
        let kind = Kind::pick(&mut rng);
        let tag = format!("t{n}");
        let mut plan = Plan { kind, service_ms: rng.random_range(0..40), replies: 1, reply_file: None, file: None };
        let mut body = json!({
            "peer": "org-b", "service": "1", "method": "POST",
            "path": format!("/soak/{}/{tag}", kind.word()), "form": {"tag": tag}, "conversation": "soak",
        });
        if kind == Kind::Sync {
            body["timeout_ms"] = json!(8000);
        } else {
            body["mode"] = json!("async");
            body["callback"] = json!({"url": format!("{callbacks}/cb/{tag}")});
        }
        if kind == Kind::Reply {
            body["reply"] = json!(true);
            plan.replies = rng.random_range(1..=2);
            if rng.random_bool(0.3) {
                plan.reply_file = Some((rng.random_range(4 << 10..=64 << 10), rng.random()));
            }
        }
        if kind == Kind::File {
            let size = if rng.random_range(0..20) == 0 {
                rng.random_range(1 << 20..=4 << 20)
            } else {
                rng.random_range(4 << 10..=256 << 10)
            };
            let (path, seed) = (a_outbox.join(format!("{tag}.bin")), rng.random());
            let p = path.clone();
            let sha = tokio::task::spawn_blocking(move || make_file_seeded(&p, size, seed)).await.unwrap();
            body["file"] = json!(path);
            plan.file = Some((path, sha));
        }
        soak.plans.lock().unwrap().insert(tag.clone(), plan.clone());
        let (soak, client, url) = (soak.clone(), client.clone(), format!("{a_api}/v1/requests"));
        tokio::spawn(async move {
            let outcome = match client.post(&url).json(&body).send().await {
                Err(e) if e.is_connect() => Outcome::Down,
                Err(_) => Outcome::Cut,
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.json::<Value>().await {
                        Err(_) => Outcome::Cut,
                        Ok(env) => {
                            let id = env["data"]["id"].as_str().unwrap_or_default().to_owned();
                            match status {
                                202 => Outcome::Accepted(id),
                                200 => Outcome::Answered(id, env["data"]["status"].as_u64().unwrap_or(0)),
                                _ => Outcome::Refused(status, env["data"]["error"].as_str().unwrap_or("?").to_owned()),
                            }
                        }
                    }
                }
            };
            if !matches!(outcome, Outcome::Accepted(_) | Outcome::Cut) {
                if let Some((source, _)) = plan.file {
                    let _ = std::fs::remove_file(source);
                }
            }
            soak.outcomes.lock().unwrap().push((tag, kind, outcome));
            drop(permit);
        });
    }
    let _ = permits.acquire_many(IN_FLIGHT as u32).await;
}

// ---------------------------------------------------------------------------------------------
// The nodes and their resources
// ---------------------------------------------------------------------------------------------

/// One node process and what was read of it.
struct Watched {
    node: Node,
    pid: Option<u32>,
    started: Instant,
    run_peak_kib: u64,
    peak_kib: u64,
    cpu_s: f64,
    last: ProcUsage,
}

/// What a node held at one moment.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    usage: ProcUsage,
    store: u64,
}

/// One run of a node, read just before it ended.
struct Run {
    node: String,
    run: usize,
    ended_by: &'static str,
    uptime_s: f64,
    peak_kib: u64,
    at_end: Snapshot,
}

impl Watched {
    async fn start(node: Node) -> Watched {
        let mut w = Watched {
            node,
            pid: None,
            started: Instant::now(),
            run_peak_kib: 0,
            peak_kib: 0,
            cpu_s: 0.0,
            last: ProcUsage::default(),
        };
        w.launch().await;
        w
    }

    async fn launch(&mut self) {
        self.node.start().await;
        self.pid = self.node.pid();
        assert!(self.pid.is_some(), "cannot find the pid of {}'s `ferry run`", self.node.name);
        self.started = Instant::now();
        self.run_peak_kib = 0;
        self.sample();
    }

    /// Reads the process's figures and keeps the peaks.
    fn sample(&mut self) {
        if let Some(usage) = self.pid.and_then(proc_usage) {
            self.run_peak_kib = self.run_peak_kib.max(usage.rss_kib);
            self.peak_kib = self.peak_kib.max(usage.rss_kib);
            self.last = usage;
        }
    }

    fn store_bytes(&self) -> u64 {
        let data = self.node.dir.join("data");
        ["ferry.db", "ferry.db-wal"].iter().filter_map(|f| std::fs::metadata(data.join(f)).ok()).map(|m| m.len()).sum()
    }

    fn snapshot(&mut self) -> Snapshot {
        self.sample();
        Snapshot { usage: self.last, store: self.store_bytes() }
    }

    /// Ends the current run (SIGKILL, SIGTERM, or SIGTERM at the end of the soak) and records it.
    async fn end_run(&mut self, runs: &mut Vec<Run>, kill: bool, ended_by: &'static str) {
        let at_end = self.snapshot();
        self.cpu_s += at_end.usage.cpu_s;
        runs.push(Run {
            node: self.node.name.clone(),
            run: runs.iter().filter(|r| r.node == self.node.name).count() + 1,
            ended_by,
            uptime_s: self.started.elapsed().as_secs_f64(),
            peak_kib: self.run_peak_kib,
            at_end,
        });
        if kill {
            self.node.kill();
        } else {
            self.node.stop().await;
        }
        self.pid = None;
    }

    /// Warning and error lines in every run's log, and the first few of each.
    fn log_lines(&self) -> (usize, usize, Vec<String>) {
        let text = self.node.log_text();
        let (mut warn, mut error, mut firsts) = (0, 0, Vec::new());
        for line in text.lines() {
            let is_warn = line.contains(" WARN ");
            let is_error = line.contains(" ERROR ") || line.contains("panicked");
            warn += is_warn as usize;
            error += is_error as usize;
            if (is_warn || is_error) && firsts.len() < 6 {
                firsts.push(line.chars().take(300).collect());
            }
        }
        (warn, error, firsts)
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn soak(settings: Settings) -> anyhow::Result<()> {
    let seed = settings.seed;
    println!(
        "ferry soak: org-a → org-b as `ferry run` processes, {} min at {} requests/s, a restart every {} s",
        settings.minutes, settings.rate, settings.restart_s
    );
    println!("seed {seed} (FERRY_SOAK_SEED={seed} repeats the mix, sizes and stop kinds; not the timing)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut root = tempfile::Builder::new();
    root.prefix("ferry-soak-");
    if settings.keep {
        root.disable_cleanup(true);
    }
    let root = root.tempdir()?;
    println!("nodes in {}", root.path().display());

    let traffic = Duration::from_secs_f64(settings.minutes * 60.0);
    let settle = Duration::from_secs_f64(settings.settle_s);
    let t0 = Instant::now();
    let service_addr = support::free_tcp();
    let (a, b) = two_nodes(root.path(), &format!("http://{service_addr}"));
    let soak = Arc::new(Soak {
        seed,
        b_api: b.url(""),
        b_outbox: b.dir.join("outbox"),
        plans: Mutex::default(),
        outcomes: Mutex::default(),
        service_calls: Mutex::default(),
        tag_ids: Mutex::default(),
        reply_files: Mutex::default(),
        callbacks: Mutex::default(),
        callback_attempts: Mutex::default(),
        restarts: Mutex::default(),
        problems: Mutex::default(),
        corrupt_files: AtomicUsize::new(0),
        files_checked: AtomicUsize::new(0),
        drivers_in_flight: AtomicUsize::new(0),
        skipped: AtomicUsize::new(0),
        give_up_at: t0 + traffic + settle + Duration::from_secs(60),
    });
    let listener = tokio::net::TcpListener::bind(service_addr).await?;
    let service_app = axum::Router::new().fallback(service).with_state(soak.clone());
    tokio::spawn(async move { axum::serve(listener, service_app).await });
    let callbacks = format!(
        "http://{}",
        support::serve(axum::Router::new().fallback(callback).with_state(soak.clone()), false).await
    );
    let callbacks_port: u16 = callbacks.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);

    let (a_api, a_outbox) = (a.url(""), a.dir.join("outbox"));
    let mut a = Watched::start(a).await;
    let mut b = Watched::start(b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = [a.snapshot(), b.snapshot()];
    let mut runs = Vec::new();

    // Traffic, with a restart every `restart_s` and a sample every second.
    let began = Instant::now();
    let until = began + traffic;
    let sender = tokio::spawn(send_traffic(
        soak.clone(),
        a_api,
        a_outbox,
        callbacks,
        settings.rate,
        until,
        StdRng::seed_from_u64(rng.random()),
    ));
    let restart_every = Duration::from_secs_f64(settings.restart_s);
    let mut next_restart = began + restart_every;
    let mut next_report = began + Duration::from_secs(30);
    let mut restarts = 0usize;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.sample();
        b.sample();
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            let done = soak.outcomes.lock().unwrap().len();
            eprintln!(
                "{:>5.0} s: {done} posts answered, {} callbacks, RSS org-a {} org-b {}",
                began.elapsed().as_secs_f64(),
                soak.callbacks.lock().unwrap().values().map(Vec::len).sum::<usize>(),
                mib(a.last.rss_kib << 10),
                mib(b.last.rss_kib << 10),
            );
        }
        if Instant::now() >= next_restart && Instant::now() + Duration::from_secs(5) < until {
            // org-a and org-b in turn; per node SIGKILL and SIGTERM alternate, so that a short
            // run sees both kinds on both; how long it stays down is random (0.2 to 4 s).
            let (who, kill) = (restarts % 2, (restarts / 2).is_multiple_of(2));
            let down = Duration::from_millis(rng.random_range(200..4000));
            let w = if who == 0 { &mut a } else { &mut b };
            let down_at = Instant::now();
            w.end_run(&mut runs, kill, if kill { "SIGKILL" } else { "SIGTERM" }).await;
            tokio::time::sleep(down).await;
            w.launch().await;
            let r = Restart {
                node: if who == 0 { "org-a" } else { "org-b" },
                kill,
                at_s: (down_at - began).as_secs_f64(),
                down_at,
                down_s: down_at.elapsed().as_secs_f64(),
            };
            eprintln!(
                "{:>5.0} s: {} {} and restarted, down {:.1} s",
                r.at_s,
                r.node,
                if kill { "killed" } else { "stopped" },
                r.down_s
            );
            soak.restarts.lock().unwrap().push(r);
            restarts += 1;
            next_restart = Instant::now() + restart_every;
        }
    }
    sender.await?;
    let sent_for = began.elapsed();

    // Settle: nothing waiting or doing on either node, no callback pending, no reply unposted.
    let settled = settle_wait(&soak, &a.node, &b.node, settle).await;
    tokio::time::sleep(LATE).await;
    let settle_s = (began.elapsed() - sent_for).as_secs_f64();
    let end = [a.snapshot(), b.snapshot()];
    let ports = [
        (a.node.api.port(), "org-a's API"),
        (b.node.api.port(), "org-b's API"),
        (service_addr.port(), "the service"),
        (callbacks_port, "the callback receiver"),
    ];
    let mut fds = vec![("at the end", [describe_fds(&a, &ports), describe_fds(&b, &ports)])];
    let listed = list_all(&a.node, "outgoing").await;
    let report = check(&soak, listed);
    // Idle HTTP connections stay pooled 90 s (reqwest's default), swept at most as often: wait
    // (at most IDLE) until both nodes are back to their descriptors at start.
    let idle = Instant::now();
    let _ = support::try_until(IDLE, async || {
        let back = |w: &Watched, at: &Snapshot| w.pid.and_then(proc_usage).is_some_and(|u| u.fds <= at.usage.fds);
        if back(&a, &start[0]) && back(&b, &start[1]) {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await;
    let when = format!("after {:.0} s idle", idle.elapsed().as_secs_f64());
    fds.push((when.as_str(), [describe_fds(&a, &ports), describe_fds(&b, &ports)]));
    a.sample();
    b.sample();
    for w in [&mut a, &mut b] {
        w.end_run(&mut runs, false, "end").await;
    }
    print_report(&settings, &soak, &report, sent_for, settle_s, settled, [&a, &b], start, end, &fds, &runs);
    if settings.keep {
        println!("kept the nodes' directory {}", root.path().display());
    }
    Ok(())
}

/// Waits (at most `within`) until neither node has a request waiting or doing, org-a has no
/// callback pending and the reply driver has nothing left to post; or why not.
async fn settle_wait(soak: &Soak, a: &Node, b: &Node, within: Duration) -> Result<(), String> {
    support::try_until(within, async || {
        let (sa, sb) = (a.get("/v1/stats").await?, b.get("/v1/stats").await?);
        let open = |s: &Value, direction: &str| s[direction]["waiting"].as_u64().unwrap_or(0) + s[direction]["doing"].as_u64().unwrap_or(0);
        let (out_a, in_b, cb) = (open(&sa, "outgoing"), open(&sb, "incoming"), sa["callbacks_pending"].as_u64().unwrap_or(0));
        let drivers = soak.drivers_in_flight.load(Ordering::SeqCst);
        if out_a + in_b + cb + drivers as u64 == 0 {
            Ok(())
        } else {
            Err(format!("org-a outgoing open {out_a}, callbacks pending {cb}; org-b incoming open {in_b}; replies to post {drivers}"))
        }
    })
    .await
}

/// The node's open descriptors by kind, its TCP sockets by what they connect to (`ports`, read
/// from /proc/net/tcp*), e.g. `12 to the callback receiver`, with their state unless established.
fn describe_fds(w: &Watched, ports: &[(u16, &str)]) -> String {
    let Some(pid) = w.pid else { return "not running".into() };
    let mut sockets: HashMap<String, (String, u16, u16)> = HashMap::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
            if let (Some(local), Some(remote), Some(state), Some(inode)) = (f.get(1), f.get(2), f.get(3), f.get(9)) {
                let state = match (table.starts_with("udp"), *state) {
                    (true, _) => "udp",
                    (_, "01") => "",
                    (_, "06") => " TIME_WAIT",
                    (_, "08") => " CLOSE_WAIT",
                    (_, "0A") => " LISTEN",
                    _ => " (other state)",
                };
                sockets.insert(inode.to_string(), (state.to_owned(), port(local), port(remote)));
            }
        }
    }
    let role = |port: u16| ports.iter().find(|(p, _)| *p == port).map(|(_, r)| *r);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        let inode = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']'));
        let kind = match inode.map(|i| sockets.get(i)) {
            None => fd_kinds_name(&target),
            Some(None) => "socket (other)".to_owned(),
            Some(Some((state, _, _))) if state == "udp" => "UDP socket (link)".to_owned(),
            Some(Some((state, local, remote))) => match (role(*local), role(*remote)) {
                (Some(r), _) if state == " LISTEN" => format!("{r} listening"),
                (Some(r), _) => format!("{r}, accepted{state}"),
                (_, Some(r)) => format!("to {r}{state}"),
                _ => format!("TCP{state}"),
            },
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let each: Vec<String> = kinds.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    format!("{} in all: {}", kinds.values().sum::<usize>(), each.join(", "))
}

/// A descriptor that is not a socket: `pipe`, `anon_inode:[eventpoll]` and the like, or a file's name.
fn fd_kinds_name(target: &str) -> String {
    match target.split_once(":[") {
        Some(("pipe", _)) => "pipe".to_owned(),
        Some(_) => target.to_owned(),
        None => target.rsplit('/').next().unwrap_or_default().to_owned(),
    }
}

/// Every request of `direction` on `node`, all pages.
async fn list_all(node: &Node, direction: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/v1/requests?direction={direction}&limit=500");
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let data = node.get(&path).await?;
        items.extend(data["items"].as_array().cloned().unwrap_or_default());
        match data["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return Ok(items),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// Counts for one kind of request.
#[derive(Default, Clone)]
struct Tally {
    posted: usize,
    accepted: usize,
    /// Posts refused while a node was down (no connection), or sync requests failed by a restart.
    down: usize,
    cut: usize,
    /// Listed by org-a though their post was cut (accepted just before a restart).
    accepted_after_cut: usize,
    success: usize,
    interrupted: usize,
    failed: usize,
    lost: usize,
    duplicated: usize,
    redelivered: usize,
    out_of_order: usize,
}

struct Report {
    by_kind: BTreeMap<Kind, Tally>,
    /// Sync refusals and failures by (status, error kind).
    refusals: BTreeMap<(u16, String), usize>,
    listing_error: Option<String>,
}

/// Checks every request against what the host side saw (see the file's docs).
fn check(soak: &Soak, listed: Result<Vec<Value>, String>) -> Report {
    let mut by_kind: BTreeMap<Kind, Tally> = KINDS.iter().map(|&k| (k, Tally::default())).collect();
    let mut refusals = BTreeMap::new();
    let outcomes = std::mem::take(&mut *soak.outcomes.lock().unwrap());
    let service_calls = soak.service_calls.lock().unwrap().clone();
    let mut accepted: HashMap<String, (String, Kind)> = HashMap::new();
    let mut cut_tags = HashSet::new();
    for (tag, kind, outcome) in &outcomes {
        let t = by_kind.get_mut(kind).unwrap();
        t.posted += 1;
        match outcome {
            Outcome::Accepted(id) => {
                t.accepted += 1;
                accepted.insert(id.clone(), (tag.clone(), *kind));
            }
            Outcome::Answered(id, status) => {
                t.accepted += 1;
                if *status != 200 {
                    soak.problem(format!("sync {tag} ({id}): service status {status}"));
                }
                if service_calls.contains_key(id) {
                    t.success += 1;
                } else {
                    t.lost += 1;
                    soak.problem(format!("sync {tag} ({id}) answered 200 but the service has no call for it"));
                }
            }
            Outcome::Refused(status, error) => {
                t.down += 1;
                *refusals.entry((*status, format!("{} {error}", kind.word()))).or_insert(0) += 1;
            }
            Outcome::Down => t.down += 1,
            Outcome::Cut => {
                t.cut += 1;
                cut_tags.insert(tag.clone());
            }
        }
    }

    let kills_of_a: Vec<Instant> =
        soak.restarts.lock().unwrap().iter().filter(|r| r.kill && r.node == "org-a").map(|r| r.down_at).collect();
    let callbacks = soak.callbacks.lock().unwrap();
    let listing_error = listed.as_ref().err().cloned();
    let items = listed.unwrap_or_default();
    let mut seen = HashSet::new();
    for item in &items {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        let path = item["path"].as_str().unwrap_or_default();
        let mut segments = path.rsplit('/');
        let (tag, kind) = (segments.next().unwrap_or_default().to_owned(), segments.next().and_then(Kind::parse));
        let Some(kind) = kind else {
            soak.problem(format!("{id}: a request the soak did not send: {path}"));
            continue;
        };
        seen.insert(id.clone());
        let t = by_kind.get_mut(&kind).unwrap();
        if !accepted.contains_key(&id) {
            if cut_tags.contains(&tag) {
                t.accepted_after_cut += 1;
            } else {
                soak.problem(format!("{tag} ({id}) is listed by org-a but its post was not cut: {item}"));
            }
        }
        match item["state"].as_str().unwrap_or_default() {
            "success" => {
                t.success += 1;
                if !service_calls.contains_key(&id) {
                    t.lost += 1;
                    soak.problem(format!("{tag} ({id}) succeeded but its service was never called"));
                }
            }
            "failed" => {
                let error = item["error"].as_str().unwrap_or_default();
                if error.contains(INTERRUPTED) {
                    t.interrupted += 1;
                } else {
                    t.failed += 1;
                    soak.problem(format!("{tag} ({id}) failed: {error}"));
                }
            }
            state => {
                t.lost += 1;
                soak.problem(format!("{tag} ({id}) did not end: {state}, {item}"));
                continue;
            }
        }
        // Callbacks: 1..=n, n the one with end=true, in ascending order; repeats told apart.
        let deliveries = callbacks.get(&id).map(Vec::as_slice).unwrap_or_default();
        let seqs: Vec<u64> = deliveries.iter().map(|d| d.seq).collect();
        let last = deliveries.iter().filter(|d| d.end).map(|d| d.seq).max();
        let mut distinct = seqs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if last.is_none() || distinct != (1..=last.unwrap_or(0)).collect::<Vec<_>>() {
            t.lost += 1;
            soak.problem(format!(
                "{tag} ({id}) {}: callback seqs {seqs:?}, expected 1..=n with end at n",
                item["state"]
            ));
        }
        if seqs.iter().enumerate().any(|(i, s)| seqs[..i].iter().any(|p| p > s)) {
            t.out_of_order += 1;
            soak.problem(format!("{tag} ({id}): callback seqs arrived as {seqs:?}"));
        }
        for (i, d) in deliveries.iter().enumerate() {
            let Some(before) = deliveries[..i].iter().rev().find(|p| p.seq == d.seq) else { continue };
            if kills_of_a.iter().any(|k| before.at <= *k && *k <= d.at) {
                t.redelivered += 1;
            } else {
                t.duplicated += 1;
                soak.problem(format!(
                    "{tag} ({id}): callback seq {} delivered again {:.2} s later with no kill of org-a between",
                    d.seq,
                    (d.at - before.at).as_secs_f64()
                ));
            }
        }
    }
    for (id, (tag, kind)) in &accepted {
        if !seen.contains(id) {
            by_kind.get_mut(kind).unwrap().lost += 1;
            soak.problem(format!("{tag} ({id}) was accepted but org-a does not list it"));
        }
    }

    // The service: once per id, and one id per request.
    let plans = soak.plans.lock().unwrap();
    let kind_of = |tag: &str| plans.get(tag).map_or(Kind::Async, |p| p.kind);
    for (id, (tag, calls)) in &service_calls {
        if *calls > 1 {
            by_kind.get_mut(&kind_of(tag)).unwrap().duplicated += 1;
            soak.problem(format!("{tag} ({id}) reached the service {calls} times"));
        }
    }
    for (tag, ids) in soak.tag_ids.lock().unwrap().iter() {
        if ids.len() > 1 {
            by_kind.get_mut(&kind_of(tag)).unwrap().duplicated += 1;
            soak.problem(format!("{tag} reached the service under {} ids: {ids:?}", ids.len()));
        }
    }
    Report { by_kind, refusals, listing_error }
}

// ---------------------------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn print_report(
    settings: &Settings,
    soak: &Soak,
    report: &Report,
    sent_for: Duration,
    settle_s: f64,
    settled: Result<(), String>,
    nodes: [&Watched; 2],
    start: [Snapshot; 2],
    end: [Snapshot; 2],
    fds: &[(&str, [String; 2])],
    runs: &[Run],
) {
    let n = |x: usize| thousands(x as f64);
    let total = report.by_kind.values().fold(Tally::default(), |mut s, t| {
        s.posted += t.posted;
        s.accepted += t.accepted;
        s.down += t.down;
        s.cut += t.cut;
        s.accepted_after_cut += t.accepted_after_cut;
        s.success += t.success;
        s.interrupted += t.interrupted;
        s.failed += t.failed;
        s.lost += t.lost;
        s.duplicated += t.duplicated;
        s.redelivered += t.redelivered;
        s.out_of_order += t.out_of_order;
        s
    });
    let row = |name: &str, t: &Tally| {
        vec![
            name.to_owned(),
            n(t.posted),
            n(t.accepted),
            n(t.down),
            n(t.cut),
            n(t.accepted_after_cut),
            n(t.success),
            n(t.interrupted),
            n(t.failed),
            n(t.lost),
            n(t.duplicated),
            n(t.redelivered),
            n(t.out_of_order),
        ]
    };
    let mut rows: Vec<Vec<String>> = report.by_kind.iter().map(|(k, t)| row(k.word(), t)).collect();
    rows.push(row("all", &total));
    let restarts = soak.restarts.lock().unwrap().clone();
    println!();
    println!(
        "traffic {:.1} min at {:.1} requests/s ({} ticks skipped at {IN_FLIGHT} in flight), settled in {settle_s:.0} s{}; seed {}; load average {}",
        sent_for.as_secs_f64() / 60.0,
        total.posted as f64 / sent_for.as_secs_f64(),
        soak.skipped.load(Ordering::Relaxed),
        match &settled {
            Ok(()) => String::new(),
            Err(open) => format!(" (NOT settled within {} s: {open})", settings.settle_s),
        },
        settings.seed,
        support::cpu::load_average(),
    );
    let stops: Vec<String> = restarts
        .iter()
        .map(|r| {
            format!(
                "{} {} at {:.0} s (down {:.1} s)",
                r.node,
                if r.kill { "SIGKILL" } else { "SIGTERM" },
                r.at_s,
                r.down_s
            )
        })
        .collect();
    println!("restarts ({}): {}", restarts.len(), if stops.is_empty() { "none".to_owned() } else { stops.join("; ") });
    println!();
    println!(
        "{}",
        render(
            &[
                "kind",
                "posted",
                "accepted",
                "refused (down)",
                "cut",
                "accepted though cut",
                "success",
                "interrupted",
                "failed",
                "lost",
                "duplicated",
                "redelivered after a kill",
                "out of order"
            ],
            &rows,
            true
        )
    );
    if !report.refusals.is_empty() {
        let each: Vec<String> =
            report.refusals.iter().map(|((status, what), count)| format!("{what} {status}: {count}")).collect();
        println!("\nrefused while a node was restarting (kind, error, status: count): {}", each.join(", "));
    }
    println!(
        "files checked by SHA-256 where they arrived: {} ({} corrupt); callback first attempts refused on purpose (1 in {REFUSE_ONE_IN}): retried and recorded above",
        n(soak.files_checked.load(Ordering::Relaxed)),
        soak.corrupt_files.load(Ordering::Relaxed)
    );
    if let Some(e) = &report.listing_error {
        println!("org-a's listing failed: {e}");
    }

    // Requests both stores hold: async ones org-a accepted (sync requests are not kept).
    let stored = total.accepted + total.accepted_after_cut - report.by_kind[&Kind::Sync].accepted;
    println!();
    let mut node_rows = Vec::new();
    for (i, w) in nodes.iter().enumerate() {
        let (warn, error, _) = w.log_lines();
        node_rows.push(vec![
            w.node.name.clone(),
            n(runs.iter().filter(|r| r.node == w.node.name).count()),
            mib(start[i].usage.rss_kib << 10),
            mib(end[i].usage.rss_kib << 10),
            mib(w.peak_kib << 10),
            n(start[i].usage.fds as usize),
            n(end[i].usage.fds as usize),
            mib(start[i].store),
            mib(end[i].store),
            format!("{:.1}", end[i].store.saturating_sub(start[i].store) as f64 / 1024.0 / stored.max(1) as f64),
            format!("{:.0}", w.cpu_s),
            format!("{warn} / {error}"),
        ]);
    }
    println!(
        "{}",
        render(
            &[
                "node",
                "runs",
                "RSS start",
                "RSS end",
                "peak RSS",
                "fds start",
                "fds end",
                "store start",
                "store end",
                "KiB / stored request",
                "CPU s",
                "log warn / error"
            ],
            &node_rows,
            true
        )
    );
    println!();
    let run_rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                r.run.to_string(),
                r.ended_by.to_owned(),
                format!("{:.0}", r.uptime_s),
                mib(r.at_end.usage.rss_kib << 10),
                mib(r.peak_kib << 10),
                r.at_end.usage.fds.to_string(),
                mib(r.at_end.store),
                format!("{:.0}", r.at_end.usage.cpu_s),
            ]
        })
        .collect();
    println!("each run of each node, read just before it ended:");
    println!(
        "{}",
        render(&["node", "run", "ended by", "uptime s", "RSS", "peak RSS", "fds", "store", "CPU s"], &run_rows, true)
    );

    for (when, described) in fds {
        for (w, d) in nodes.iter().zip(described) {
            println!("{} open fds {when}: {d}", w.node.name);
        }
    }
    for w in nodes {
        let (_, _, firsts) = w.log_lines();
        for line in firsts {
            println!("{} log: {line}", w.node.name);
        }
    }
    let problems = soak.problems.lock().unwrap();
    if !problems.is_empty() {
        println!("\n{} problems; the first 20:", problems.len());
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
    }
    println!();
    println!(
        "{} lost {}, duplicated {}, out of order {}, corrupt files {}, settled {}",
        pass(
            total.lost + total.duplicated + total.out_of_order + soak.corrupt_files.load(Ordering::Relaxed) == 0
                && settled.is_ok()
        ),
        total.lost,
        total.duplicated,
        total.out_of_order,
        soak.corrupt_files.load(Ordering::Relaxed),
        if settled.is_ok() { "yes" } else { "no" }
    );
}
