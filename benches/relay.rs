//! Synchronous request latency and throughput through two ferry nodes, against the same service
//! called directly, and with the evidence log and receipts on and off, in one run:
//! `cargo bench --bench relay`.
//!
//! Everything runs in this one process on loopback: the callers (one shared reqwest client,
//! HTTP/1.1 keep-alive), two pairs of nodes org-a and org-b (set up as admins would: `init`,
//! `peer add`, `service add`) and org-b's service, a trivial axum handler (`GET /ping?n=1` →
//! `{"ok":true}`) so that the service is never the bottleneck. One pair runs the default
//! configuration (evidence log and signed receipts on); the other has `[evidence] log = false,
//! receipts = false` in both nodes' configurations. For 1, 8 and 64 concurrent callers, each doing
//! requests back to back, it measures the service called directly (`direct`), the same call
//! relayed org-a → org-b → service (`relay`, `POST /v1/requests` on org-a, evidence on) and the
//! same through the other pair (`relay-off`, evidence off). Each row's measured time is cut into
//! `FERRY_BENCH_ROUNDS` slices, and the paths take turns slice by slice (on and off alternated
//! ABBA), so that a busy stretch of a shared machine falls on all of them. It prints p50, p99,
//! requests per second and the process's CPU time per request, what the evidence costs (throughput
//! with it on against off, overall and by round, with the rounds' mean and its standard error),
//! then the targets with PASS/MISS (printed, not asserted); the evidence cost is UNSURE while the
//! target is inside its 95% confidence interval.
//!
//! On a shared 2-core machine a single round's cost swings by ±40%, so the cost is worth reading
//! only from long runs: `FERRY_BENCH_CALLERS=64 FERRY_BENCH_PATHS=relay,relay-off
//! FERRY_BENCH_ROUNDS=100 FERRY_BENCH_MEASURE_MS=150000` (about 6 minutes) gives it to about ±1.5%.
//!
//! Settings, from the environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FERRY_BENCH_WARMUP_MS` | 300 | warm-up per slice, not measured |
//! | `FERRY_BENCH_MEASURE_MS` | 4500 | measured time per row, all its slices together |
//! | `FERRY_BENCH_ROUNDS` | 3 | slices per row; the paths take turns slice by slice |
//! | `FERRY_BENCH_CALLERS` | `1,8,64` | the concurrent caller counts, one row per path each |
//! | `FERRY_BENCH_WORKERS` | available CPUs | tokio worker threads |
//! | `FERRY_BENCH_PATHS` | `direct,relay,relay-off` | which paths to measure; also `relay-log` (log on, receipts off) and `relay-receipts` (receipts on, log off), each through a pair of its own, to see which half costs what, and `relay-off-2`, a second pair with both off, to see how far two identical pairs differ in one run (measure it with `relay-off` alone, so that both take turns as on and off do) |
//! | `FERRY_BENCH_LAYOUT` | `shared` | where the components run: `shared`, one runtime for all; `split`, callers, org-a, org-b and the service each on a runtime of their own (`FERRY_BENCH_WORKERS` threads each); `processes`, each node a `ferry run` process of its own, as deployed. With `split` and `processes`, the CPU time per request is broken down by component |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use ferry::config::Config;

#[path = "../tests/support/mod.rs"]
mod support;
use support::cpu::{load_average, Snapshot};
use support::report::{
    added_pct, check_evidence, cost_pct, judge_cost, pass, pct, render, rounds, set_evidence, thousands, Evidence,
    RoundCosts, TARGET_EVIDENCE_COST_PCT,
};

/// The relay may add at most this much to the p50 latency with one caller.
const TARGET_ADDED_P50_MS: f64 = 0.3;
/// The relay must carry at least this many requests per second with 64 callers.
const TARGET_RPS: f64 = 10_000.0;
/// The caller count the throughput target is for.
const TARGET_RPS_CALLERS: usize = 64;
/// Idle keep-alive connections the shared client keeps per host.
const POOL: usize = 256;

struct Settings {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    callers: Vec<usize>,
    workers: usize,
    paths: Vec<Path_>,
    layout: Layout,
}

/// Where the components run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Callers, both nodes of every pair and the service on one tokio runtime.
    Shared,
    /// Callers, org-a, org-b and the service each on a runtime of their own, in this process.
    Split,
    /// Each node a `ferry run` process of its own, as deployed; the callers and the service on
    /// this process's runtime.
    Processes,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Shared => "shared",
            Layout::Split => "split",
            Layout::Processes => "processes",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Path_ {
    Direct,
    /// Through the pair with the evidence log and receipts on (the default configuration).
    Relay,
    /// Through the pair with both off.
    RelayOff,
    /// Through a pair with the log on and receipts off (not measured unless asked for).
    RelayLog,
    /// Through a pair with receipts on and the log off (not measured unless asked for).
    RelayReceipts,
    /// Through a second pair with both off (not measured unless asked for): against relay-off,
    /// it shows how far two identical pairs differ in the same run, the noise floor of the cost.
    RelayOffAgain,
}

impl Path_ {
    const ALL: [Path_; 6] =
        [Path_::Direct, Path_::Relay, Path_::RelayOff, Path_::RelayLog, Path_::RelayReceipts, Path_::RelayOffAgain];

    fn name(self) -> &'static str {
        match self {
            Path_::Direct => "direct",
            Path_::Relay => "relay",
            Path_::RelayOff => "relay-off",
            Path_::RelayLog => "relay-log",
            Path_::RelayReceipts => "relay-receipts",
            Path_::RelayOffAgain => "relay-off-2",
        }
    }

    /// The evidence settings of the pair a relayed path goes through.
    fn evidence(self) -> Option<Evidence> {
        match self {
            Path_::Direct => None,
            Path_::Relay => Some(Evidence::On),
            Path_::RelayOff | Path_::RelayOffAgain => Some(Evidence::Off),
            Path_::RelayLog => Some(Evidence::LogOnly),
            Path_::RelayReceipts => Some(Evidence::ReceiptsOnly),
        }
    }

    fn is_relay(self) -> bool {
        self != Path_::Direct
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v} is not a valid value")),
                Err(_) => Ok(default),
            }
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let callers = std::env::var("FERRY_BENCH_CALLERS").unwrap_or_else(|_| "1,8,64".into());
        let callers = callers
            .split(',')
            .map(|c| c.trim().parse::<usize>().ok().filter(|&c| c > 0))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("FERRY_BENCH_CALLERS={callers}: want e.g. 1,8,64"))?;
        let paths = std::env::var("FERRY_BENCH_PATHS").unwrap_or_else(|_| "direct,relay,relay-off".into());
        let mut paths = paths
            .split(',')
            .map(|p| Path_::ALL.into_iter().find(|path| path.name() == p.trim()))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!("FERRY_BENCH_PATHS={paths}: want some of direct, relay, relay-off, relay-log, relay-receipts, relay-off-2")
            })?;
        paths.sort();
        paths.dedup();
        Ok(Settings {
            warmup: Duration::from_millis(var("FERRY_BENCH_WARMUP_MS", 300)?),
            measure: Duration::from_millis(var("FERRY_BENCH_MEASURE_MS", 4500)?.max(1)),
            rounds: var("FERRY_BENCH_ROUNDS", 3)?.max(1),
            callers,
            workers: var("FERRY_BENCH_WORKERS", cpus)?.max(1),
            paths,
            layout: {
                let layout = std::env::var("FERRY_BENCH_LAYOUT").unwrap_or_else(|_| "shared".into());
                [Layout::Shared, Layout::Split, Layout::Processes]
                    .into_iter()
                    .find(|l| l.name() == layout.trim())
                    .with_context(|| format!("FERRY_BENCH_LAYOUT={layout}: want shared, split or processes"))?
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); this bench takes its settings from the
    // environment and ignores them.
    let settings = Settings::from_env()?;
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.workers)
            .thread_name(name)
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")
    };
    let client_rt = runtime("b-client")?;
    let runtimes = if settings.layout == Layout::Split {
        Some(Runtimes { node_a: runtime("b-node-a")?, node_b: runtime("b-node-b")?, service: runtime("b-service")? })
    } else {
        None
    };
    client_rt.block_on(bench(&settings, runtimes.as_ref()))
}

/// Separate runtimes for the components, in split mode.
struct Runtimes {
    node_a: tokio::runtime::Runtime,
    node_b: tokio::runtime::Runtime,
    service: tokio::runtime::Runtime,
}

async fn bench(settings: &Settings, runtimes: Option<&Runtimes>) -> anyhow::Result<()> {
    let service = match runtimes {
        Some(r) => r.service.spawn(ping_service()).await??,
        None => ping_service().await?,
    };
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(POOL).build()?;
    let relay_body = Bytes::from(serde_json::to_vec(&json!({
        "peer": "org-b", "service": "1", "path": "/ping", "method": "GET", "form": {"n": 1}
    }))?);
    // One pair of nodes for each relayed path, with its evidence settings.
    let mut pairs: Vec<Nodes> = Vec::new();
    let mut targets: BTreeMap<Path_, Arc<Target>> = BTreeMap::new();
    for &path in &settings.paths {
        let target = match path.evidence() {
            None => Target::Direct { url: format!("http://{service}/ping?n=1").parse()? },
            Some(evidence) => {
                let nodes = Nodes::start(service, settings.layout, runtimes, evidence).await?;
                let url = format!("http://{}/v1/requests", nodes.a_api).parse()?;
                pairs.push(nodes);
                Target::Relay { url, body: relay_body.clone() }
            }
        };
        targets.insert(path, Arc::new(target));
    }
    for target in targets.values() {
        first_call(&client, target).await?;
    }

    println!("ferry relay bench: host → org-a → (QUIC, mutual TLS) → org-b → service, against host → service");
    println!(
        "{} CPUs (load average {} at start), on loopback; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        match settings.layout {
            Layout::Shared => format!(
                "callers, both nodes of every pair and the service on one tokio runtime of {} worker threads",
                settings.workers
            ),
            Layout::Split => format!(
                "callers, org-a, org-b and the service each on a tokio runtime of their own, {} worker threads each",
                settings.workers
            ),
            Layout::Processes => format!(
                "each node a `ferry run` process of its own (default runtime); callers and service on one tokio runtime of {} worker threads in the bench's process",
                settings.workers
            ),
        }
    );
    println!(
        "service: axum GET /ping?n=1 → {{\"ok\":true}}; callers: one reqwest client, HTTP/1.1 keep-alive, pool {POOL}; per row {:.1} s measured in {} slices of {:.2} s, each after {:.1} s warm-up, the paths taking turns slice by slice",
        settings.measure.as_secs_f64(),
        settings.rounds,
        settings.measure.as_secs_f64() / settings.rounds as f64,
        settings.warmup.as_secs_f64(),
    );
    println!(
        "relay: the default configuration, evidence log and signed receipts on; relay-off: another pair of nodes with [evidence] log = false, receipts = false in both configurations{}{}\n",
        if settings.paths.iter().any(|p| matches!(p, Path_::RelayLog | Path_::RelayReceipts)) {
            "; relay-log: log = true, receipts = false; relay-receipts: log = false, receipts = true"
        } else {
            ""
        },
        if settings.paths.contains(&Path_::RelayOffAgain) { "; relay-off-2: one more pair, as relay-off" } else { "" }
    );

    let slice = settings.measure / settings.rounds as u32;
    let mut results: Vec<Row> = Vec::new();
    for &callers in &settings.callers {
        let mut slices: BTreeMap<Path_, Vec<Slice>> = BTreeMap::new();
        for round in 0..settings.rounds {
            // direct first, then the relayed paths, in reverse order every other round (on and
            // off alternated ABBA).
            let mut relayed: Vec<Path_> = settings.paths.iter().copied().filter(|p| p.is_relay()).collect();
            if round % 2 == 1 {
                relayed.reverse();
            }
            let order = settings.paths.iter().copied().filter(|p| !p.is_relay()).chain(relayed);
            for path in order {
                let Some(target) = targets.get(&path) else { continue };
                let s = measure(settings.warmup, slice, &client, target, callers).await;
                eprintln!(
                    "  round {} {:<9} {:>3} callers: {:>9.0} req/s, {} errors",
                    round + 1,
                    path.name(),
                    callers,
                    s.latencies_ns.len() as f64 / s.elapsed_s.max(f64::EPSILON),
                    s.errors
                );
                slices.entry(path).or_default().push(s);
            }
        }
        for (path, slices) in slices {
            let row = Row::from_slices(path, callers, slices);
            eprintln!(
                "  {:<9} {:>3} callers: {:>9.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
                path.name(),
                callers,
                row.rps,
                row.p50_ms,
                row.p99_ms,
                row.errors
            );
            results.push(row);
        }
    }
    print_report(settings, &results);
    for nodes in pairs {
        nodes.stop().await;
    }
    Ok(())
}

/// What a caller calls. URLs are parsed once, so that the callers spend as little CPU as they
/// can: they share the machine with the nodes.
enum Target {
    Direct { url: reqwest::Url },
    Relay { url: reqwest::Url, body: Bytes },
}

/// The service's answer, `{"ok":true}`.
#[derive(Deserialize)]
struct Ping {
    ok: bool,
}

/// org-a's answer to a sync request: `{"code":0,"data":{"status":200,"body":{"ok":true},..},..}`.
#[derive(Deserialize)]
struct Envelope {
    code: i64,
    data: Option<Answer>,
}

#[derive(Deserialize)]
struct Answer {
    status: Option<u16>,
    body: Option<Ping>,
}

impl Target {
    /// One request; `Err` with what was wrong when it did not succeed.
    async fn call(&self, client: &reqwest::Client) -> Result<(), String> {
        let response = match self {
            Target::Direct { url } => client.get(url.clone()).send().await,
            Target::Relay { url, body } => {
                client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
            }
        }
        .map_err(|e| format!("transport error: {e:?}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("HTTP {status}, body unreadable: {e:?}"))?;
        let ok = status == reqwest::StatusCode::OK
            && match self {
                Target::Direct { .. } => serde_json::from_slice::<Ping>(&body).is_ok_and(|p| p.ok),
                Target::Relay { .. } => serde_json::from_slice::<Envelope>(&body).is_ok_and(|e| {
                    e.code == 0 && e.data.is_some_and(|d| d.status == Some(200) && d.body.is_some_and(|p| p.ok))
                }),
            };
        if ok {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// Makes sure a target answers before measuring it (the relay dials its peer on first use).
async fn first_call(client: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..50 {
        match target.call(client).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the first request never succeeded: {last}")
}

/// One measured row: a path and caller count, all its slices together.
struct Row {
    path: Path_,
    callers: usize,
    requests: usize,
    errors: u64,
    first_error: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    cpu_us_per_request: Option<f64>,
    cpu_by_component: BTreeMap<String, f64>,
    /// CPU time other processes used during the row, in CPUs (1.0 = one core busy throughout).
    others_share: Option<f64>,
    /// Requests per second of each slice, in order (round 1, 2, …).
    rps_by_round: Vec<f64>,
}

impl Row {
    fn from_slices(path: Path_, callers: usize, slices: Vec<Slice>) -> Row {
        let mut latencies: Vec<u64> = Vec::new();
        let (mut errors, mut first_error, mut elapsed) = (0, None, 0.0);
        let (mut cpu, mut others, mut by_component) = (Some(0.0), Some(0.0), BTreeMap::<String, f64>::new());
        let mut rps_by_round = Vec::new();
        for s in slices {
            rps_by_round.push(s.latencies_ns.len() as f64 / s.elapsed_s.max(f64::EPSILON));
            latencies.extend(s.latencies_ns);
            errors += s.errors;
            first_error = first_error.or(s.first_error);
            elapsed += s.elapsed_s;
            cpu = cpu.zip(s.cpu_s).map(|(a, b)| a + b);
            others = others.zip(s.others_s).map(|(a, b)| a + b);
            for (k, v) in s.cpu_by_component {
                *by_component.entry(k).or_insert(0.0) += v;
            }
        }
        latencies.sort_unstable();
        let percentile = |p: f64| -> f64 {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1] as f64 / 1e6
        };
        let requests = latencies.len();
        let done = (requests as u64 + errors).max(1) as f64;
        Row {
            path,
            callers,
            requests,
            errors,
            first_error,
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            rps: requests as f64 / elapsed.max(f64::EPSILON),
            cpu_us_per_request: cpu.map(|c| c * 1e6 / done),
            cpu_by_component: by_component.into_iter().map(|(k, v)| (k, v * 1e6 / done)).collect(),
            others_share: others.map(|o| o / elapsed.max(f64::EPSILON)),
            rps_by_round,
        }
    }
}

/// One slice of a row, as measured.
struct Slice {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    /// CPU seconds this process used in the slice.
    cpu_s: Option<f64>,
    /// The same by component.
    cpu_by_component: BTreeMap<String, f64>,
    /// CPU seconds other processes used in the slice.
    others_s: Option<f64>,
}

/// What one caller saw while measuring.
struct Seen {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// `callers` callers call `target` back to back for `warmup` + `measure`; only the measured
/// part counts.
async fn measure(
    warmup: Duration,
    measure: Duration,
    client: &reqwest::Client,
    target: &Arc<Target>,
    callers: usize,
) -> Slice {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + measure;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_times()
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut seen = Seen { latencies_ns: Vec::with_capacity(1 << 14), errors: 0, first_error: None };
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return seen;
                    }
                    let result = target.call(&client).await;
                    if sent < measure_from {
                        continue;
                    }
                    match result {
                        Ok(()) => seen.latencies_ns.push(sent.elapsed().as_nanos() as u64),
                        Err(e) => {
                            seen.errors += 1;
                            seen.first_error.get_or_insert(e);
                        }
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        let seen = task.await.expect("a caller panicked");
        latencies.extend(seen.latencies_ns);
        errors += seen.errors;
        if first_error.is_none() {
            first_error = seen.first_error;
        }
    }
    // Requests sent before `until` complete after it: the measured window ends with the last one.
    let elapsed_s = measure_from.elapsed().as_secs_f64();
    let cpu_after = cpu_times();
    let cpu_before = sampler.await.ok().flatten();
    let (mut cpu_s, mut cpu_by_component, mut others_s) = (None, BTreeMap::new(), None);
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        cpu_by_component = after.since(&before);
        let ours: f64 = cpu_by_component.values().sum();
        cpu_s = Some(ours);
        others_s = after.ours.others_since(&before.ours, ours);
    }
    Slice { latencies_ns: latencies, errors, first_error, elapsed_s, cpu_s, cpu_by_component, others_s }
}

/// The CPU clocks of this process and of the `ferry run` processes running.
struct CpuTimes {
    ours: Snapshot,
    /// Each node process (its component name) and its clocks.
    nodes: Vec<(&'static str, Snapshot)>,
}

impl CpuTimes {
    /// CPU seconds used since `before`, by component: this process's threads by runtime (they are
    /// named `b-<component>`; the nodes' store writers `ferry-store`; the rest, also the threads
    /// that ended, "other"), and each node process, its store writers apart.
    fn since(&self, before: &CpuTimes) -> BTreeMap<String, f64> {
        let ours = |_: u64, name: &str| match name.strip_prefix("b-") {
            Some(component) => component.to_owned(),
            None if name == "ferry-store" => "store".to_owned(),
            None => "other".to_owned(),
        };
        let mut by = self.ours.by_group(&before.ours, ours, "other");
        for (component, after) in &self.nodes {
            let Some((_, earlier)) = before.nodes.iter().find(|(c, _)| c == component) else { continue };
            let node = |_: u64, name: &str| if name == "ferry-store" { "store" } else { component }.to_owned();
            for (k, v) in after.by_group(earlier, node, component) {
                *by.entry(k).or_insert(0.0) += v;
            }
        }
        by
    }
}

/// The CPU clocks from `/proc`; `None` where there is no `/proc`.
fn cpu_times() -> Option<CpuTimes> {
    let nodes = NODE_PROCESSES.lock().unwrap().iter().filter_map(|&(c, pid)| Some((c, Snapshot::of(pid)?))).collect();
    Some(CpuTimes { ours: Snapshot::now()?, nodes })
}

/// org-b's service: `GET /ping` answers `{"ok":true}`.
async fn ping_service() -> anyhow::Result<SocketAddr> {
    let app = Router::new().route("/ping", get(|| async { Json(json!({"ok": true})) }));
    Ok(support::serve(app, true).await)
}

/// org-a and org-b, running, pinned both ways; org-b offers service 1 (the ping service) to org-a.
struct Nodes {
    _dir: tempfile::TempDir,
    a_api: SocketAddr,
    running: Running,
}

/// How a pair of nodes runs.
enum Running {
    /// As tasks of this process.
    Tasks(support::Node, support::Node),
    /// As `ferry run` processes.
    Processes(support::process::Node, support::process::Node),
}

/// The `ferry run` processes running (component, pid), for [`cpu_times`].
static NODE_PROCESSES: std::sync::Mutex<Vec<(&str, u32)>> = std::sync::Mutex::new(Vec::new());

impl Nodes {
    async fn start(
        service: SocketAddr,
        layout: Layout,
        runtimes: Option<&Runtimes>,
        evidence: Evidence,
    ) -> anyhow::Result<Nodes> {
        let dir = tempfile::tempdir()?;
        let service_url = format!("http://{service}");
        let evidence_as_asked = |config: &std::path::Path| -> anyhow::Result<()> {
            set_evidence(config, evidence)?;
            check_evidence(&Config::load(config)?, evidence)
        };
        let running = if layout == Layout::Processes {
            let (mut a, mut b) = support::process::two_nodes(dir.path(), &service_url);
            for (component, node) in [("node-a", &mut a), ("node-b", &mut b)] {
                evidence_as_asked(&node.config)?;
                node.rust_log = "warn".into();
                node.start().await;
                NODE_PROCESSES.lock().unwrap().push((component, node.pid().context("no pid")?));
            }
            Running::Processes(a, b)
        } else {
            let (mut a, mut b) = support::node::two_nodes(dir.path(), &service_url);
            let current = tokio::runtime::Handle::current();
            let (on_a, on_b) = match runtimes {
                Some(r) => (r.node_a.handle().clone(), r.node_b.handle().clone()),
                None => (current.clone(), current),
            };
            for (node, runtime) in [(&mut a, &on_a), (&mut b, &on_b)] {
                evidence_as_asked(&node.config_path)?;
                node.spawn_on(runtime);
            }
            for node in [&mut a, &mut b] {
                node.serving(Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
            }
            Running::Tasks(a, b)
        };
        let a_api = match &running {
            Running::Tasks(a, _) => a.api,
            Running::Processes(a, _) => a.api,
        };
        Ok(Nodes { _dir: dir, a_api, running })
    }

    async fn stop(self) {
        match self.running {
            Running::Tasks(mut a, mut b) => {
                a.stop().await;
                b.stop().await;
            }
            Running::Processes(mut a, mut b) => {
                let pids = [a.pid(), b.pid()];
                NODE_PROCESSES.lock().unwrap().retain(|(_, pid)| !pids.contains(&Some(*pid)));
                a.stop().await;
                b.stop().await;
            }
        }
    }
}

fn print_report(settings: &Settings, rows: &[Row]) {
    let find = |path: Path_, callers: usize| rows.iter().find(|r| r.path == path && r.callers == callers);
    let direct_p50 = |callers: usize| find(Path_::Direct, callers).map(|r| r.p50_ms);
    let headers = [
        "path",
        "evidence",
        "callers",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        "req/s",
        "CPU µs/req",
        "relay adds (p50)",
        "target",
        "result",
    ];
    let mut table = Vec::new();
    for r in rows {
        let added = match direct_p50(r.callers) {
            Some(d) if r.path.is_relay() => Some(r.p50_ms - d),
            _ => None,
        };
        let (target, result) = match r.path {
            Path_::Relay if r.callers == 1 => {
                (format!("adds ≤ {TARGET_ADDED_P50_MS:.2} ms"), added.map(|a| pass(a <= TARGET_ADDED_P50_MS)))
            }
            Path_::Relay if r.callers == TARGET_RPS_CALLERS => {
                (format!("≥ {} req/s", thousands(TARGET_RPS)), Some(pass(r.rps >= TARGET_RPS && r.errors == 0)))
            }
            _ => (String::new(), None),
        };
        table.push(vec![
            r.path.name().to_owned(),
            r.path.evidence().map_or("", Evidence::name).to_owned(),
            r.callers.to_string(),
            thousands(r.requests as f64),
            r.errors.to_string(),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p99_ms),
            thousands(r.rps),
            r.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.0}")),
            added.map_or(String::new(), |a| format!("{a:+.3} ms")),
            target,
            result.unwrap_or_default().to_owned(),
        ]);
    }
    println!("{}", render(&headers, &table, false));

    // The evidence log and receipts: relay (on), and the halves if measured, against relay-off,
    // caller count by caller count.
    let cost_headers = [
        "callers",
        "evidence",
        "req/s",
        "off req/s",
        "throughput cost",
        "cost by round",
        "rounds: mean ± SE",
        "p50 ms",
        "off p50 ms",
        "CPU µs/req",
        "off CPU µs/req",
        "CPU added",
        "target",
        "result",
    ];
    let mut cost_table = Vec::new();
    for &callers in &settings.callers {
        let Some(off) = find(Path_::RelayOff, callers) else { continue };
        for path in [Path_::Relay, Path_::RelayLog, Path_::RelayReceipts, Path_::RelayOffAgain] {
            let Some(on) = find(path, callers) else { continue };
            let cost = cost_pct(on.rps, off.rps);
            let by_round: Vec<f64> =
                on.rps_by_round.iter().zip(&off.rps_by_round).map(|(&a, &b)| cost_pct(a, b)).collect();
            let cpu_added =
                on.cpu_us_per_request.zip(off.cpu_us_per_request).map_or(f64::NAN, |(a, b)| added_pct(a, b));
            let judged = path == Path_::Relay && callers == TARGET_RPS_CALLERS;
            cost_table.push(vec![
                callers.to_string(),
                if path == Path_::RelayOffAgain { "off, 2nd pair" } else { path.evidence().map_or("", Evidence::name) }
                    .to_owned(),
                thousands(on.rps),
                thousands(off.rps),
                pct(cost),
                rounds(&by_round),
                RoundCosts::of(&by_round).map_or("-".into(), |r| r.to_string()),
                format!("{:.3}", on.p50_ms),
                format!("{:.3}", off.p50_ms),
                on.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.0}")),
                off.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.0}")),
                pct(cpu_added),
                if judged { format!("≤ {TARGET_EVIDENCE_COST_PCT:.0}%") } else { String::new() },
                if judged { judge_cost(cost, &by_round, on.errors).to_owned() } else { String::new() },
            ]);
        }
    }
    if !cost_table.is_empty() {
        println!(
            "\nEvidence log and signed receipts against relay-off (throughput cost = (off - on) / off; CPU added = (on - off) / off, per request):"
        );
        println!("{}", render(&cost_headers, &cost_table, false));
    }
    let busy: Vec<String> = rows
        .iter()
        .filter(|r| r.others_share.is_some_and(|s| s > 0.1))
        .map(|r| format!("{} {} ({:.0}% of a CPU)", r.path.name(), r.callers, r.others_share.unwrap_or(0.0) * 100.0))
        .collect();
    if !busy.is_empty() {
        println!(
            "\nwarning: other processes were busy during: {}; those figures are lower than on a quiet machine",
            busy.join(", ")
        );
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        println!(
            "first error, {} with {} callers: {}",
            r.path.name(),
            r.callers,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    if settings.layout != Layout::Shared {
        println!(
            "\nCPU µs per request by component ({} layout; store = both nodes' SQLite writer threads{}):",
            settings.layout.name(),
            if settings.layout == Layout::Processes { "; client = the callers and the service" } else { "" }
        );
        let names: Vec<String> = {
            let mut n: Vec<String> = rows.iter().flat_map(|r| r.cpu_by_component.keys().cloned()).collect();
            n.sort();
            n.dedup();
            n
        };
        let mut headers = vec!["path".to_owned(), "callers".to_owned()];
        headers.extend(names.iter().cloned());
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut line = vec![r.path.name().to_owned(), r.callers.to_string()];
                line.extend(
                    names
                        .iter()
                        .map(|n| r.cpu_by_component.get(n).map_or("-".into(), |c| format!("{:.1}", c.max(0.0)))),
                );
                line
            })
            .collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        println!("{}", render(&headers, &table, false));
    }
    println!(
        "\nTargets (printed, not asserted): the relay adds at most {TARGET_ADDED_P50_MS} ms at p50 with 1 caller; at least {} req/s with {TARGET_RPS_CALLERS} callers; the evidence log and receipts cost at most {TARGET_EVIDENCE_COST_PCT:.0}% of the relay's throughput with {TARGET_RPS_CALLERS} callers (relay against relay-off).",
        thousands(TARGET_RPS)
    );
    println!("\nMarkdown:\n");
    println!("{}", render(&headers, &table, true));
    if !cost_table.is_empty() {
        println!();
        println!("{}", render(&cost_headers, &cost_table, true));
    }
}
