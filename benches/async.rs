//! Asynchronous (store-and-forward) throughput through two ferry nodes, with the evidence log and
//! signed receipts on and off: `cargo bench --bench async`.
//!
//! Everything runs in this one process on loopback: the callers (one shared reqwest client,
//! HTTP/1.1 keep-alive), nodes org-a and org-b (set up as admins would: `init`, `peer add`,
//! `service add`) and org-b's service, a trivial axum handler (`POST /count` → `{"ok":true}`) that
//! counts the calls and the distinct `X-Ferry-Request-Id`s it sees, so that the service is never
//! the bottleneck. Every measurement is made with the evidence log and receipts on (the default
//! configuration) and off (`[evidence] log = false, receipts = false` in both nodes'
//! configurations), `FERRY_BENCH_ROUNDS` times each, on and off alternated ABBA, on separate pairs
//! of nodes; the report gives both and what the evidence costs. Three measurements:
//!
//! 1. **accept**: 64 callers post `"mode":"async"` requests back to back to org-a for a fixed time,
//!    while the whole pipeline runs (org-a carries them on, org-b calls the service, the replies
//!    come back); each 202 means the request is committed to org-a's SQLite store. Accepted per
//!    second, p50 and p99 accept latency. Afterwards org-a's database is opened read-only and its
//!    outgoing rows are counted, to check that every 202 is on disk; then the bench waits until
//!    they are all through, so that the next phase starts clean. The on and off pairs both run
//!    through phases 1 and 2 and take turns.
//! 2. **end to end**: N requests submitted by 64 callers; the time from the first submission until
//!    the service has seen all N and org-a's `GET /v1/stats` shows them all `success`.
//! 3. **backlog drain**: a fresh pair of nodes, org-b's sockets bound but its node not running;
//!    N requests queued on org-a; then org-b is started, and the time from its start until the
//!    service has seen all N and org-a shows them all `success`.
//!
//! The row `backlog: queue, org-b down` is the accept rate without the rest of the
//! pipeline competing for the CPU. Each row also gives the process's CPU use, in cores and in CPU
//! time per request, which is steadier than the rates when other processes share the machine. A
//! phase that does not complete within `FERRY_BENCH_WAIT_S` is marked INCOMPLETE, with the
//! per-state counts of both nodes' stores on stderr. Then a table with PASS/MISS against the
//! targets (printed, not asserted), and one of the evidence's cost, also as markdown: UNSURE while
//! the target is inside the cost's 95% confidence interval.
//!
//! Settings, from the environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FERRY_BENCH_CALLERS` | 64 | concurrent callers |
//! | `FERRY_BENCH_WARMUP_MS` | 500 | accept: warm-up, not measured |
//! | `FERRY_BENCH_MEASURE_MS` | 3000 | accept: measured time |
//! | `FERRY_BENCH_N` | 10000 | end to end: requests |
//! | `FERRY_BENCH_BACKLOG` | 10000 | backlog drain: requests queued while org-b is down |
//! | `FERRY_BENCH_WAIT_S` | 30 | the longest wait for one phase to complete |
//! | `FERRY_BENCH_WORKERS` | available CPUs | tokio worker threads |
//! | `FERRY_BENCH_ROUNDS` | 2 | on/off rounds: each measurement runs twice this many times |
//! | `FERRY_BENCH_LOG` | unset | the nodes' log filter (e.g. `warn`, `ferry=debug`), to stderr |

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
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

/// Accepted async requests per second with [`TARGET_CALLERS`] callers.
const TARGET_ACCEPT_RPS: f64 = 5_000.0;
/// The caller count the accept target is for.
const TARGET_CALLERS: usize = 64;
/// The longest backlog drain, from org-b's start.
const TARGET_DRAIN_S: f64 = 5.0;
/// Idle keep-alive connections the shared client keeps per host.
const POOL: usize = 256;
/// How often the waiters look at the service's count and org-a's stats.
const POLL: Duration = Duration::from_millis(20);

struct Settings {
    callers: usize,
    warmup: Duration,
    measure: Duration,
    n: usize,
    backlog: usize,
    wait: Duration,
    workers: usize,
    rounds: usize,
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
        Ok(Settings {
            callers: var("FERRY_BENCH_CALLERS", TARGET_CALLERS)?.max(1),
            warmup: Duration::from_millis(var("FERRY_BENCH_WARMUP_MS", 500)?),
            measure: Duration::from_millis(var("FERRY_BENCH_MEASURE_MS", 3000)?.max(100)),
            n: var("FERRY_BENCH_N", 10_000)?.max(1),
            backlog: var("FERRY_BENCH_BACKLOG", 10_000)?.max(1),
            wait: Duration::from_secs(var("FERRY_BENCH_WAIT_S", 30)?.max(1)),
            workers: var("FERRY_BENCH_WORKERS", cpus)?.max(1),
            rounds: var("FERRY_BENCH_ROUNDS", 2)?.max(1),
        })
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); this bench takes its settings from the
    // environment and ignores them.
    let settings = Settings::from_env()?;
    if let Ok(filter) = std::env::var("FERRY_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .thread_name("b-worker")
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let started = Instant::now();
    let result = runtime.block_on(bench(&settings));
    eprintln!("bench took {:.1} s", started.elapsed().as_secs_f64());
    // Nodes that did not stop in time must not hold the process up.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn bench(settings: &Settings) -> anyhow::Result<()> {
    let service = CountingService::start().await?;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(POOL).build()?;
    let order = Evidence::alternated(settings.rounds);

    println!("ferry async bench: host → org-a (SQLite, 202) → (QUIC, mutual TLS) → org-b (SQLite) → service");
    println!(
        "{} CPUs (load average {} at start); tokio multi-thread runtime, {} worker threads; callers, the nodes and the service in this one process on loopback",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        settings.workers,
    );
    println!(
        "service: axum POST /count → {{\"ok\":true}}, counting calls; callers: one reqwest client, HTTP/1.1 keep-alive, pool {POOL}, {} callers",
        settings.callers
    );
    println!(
        "evidence on: the default configuration (evidence log and signed receipts); off: [evidence] log = false, receipts = false in both nodes' configurations; each measurement runs {} times, on and off alternated ({})\n",
        order.len(),
        order.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
    );

    let mut runs: Vec<Run> = Vec::new();
    let mut phase1_drains: Vec<String> = Vec::new();

    // Phases 1 and 2: a pair with the evidence on and one with it off, both running; they take
    // turns, each phase waiting until the previous one's requests are all through.
    let mut pairs: BTreeMap<Evidence, Pair> = BTreeMap::new();
    for evidence in [Evidence::On, Evidence::Off] {
        let pair = Pair::start(service.addr, true, evidence).await?;
        first_async(&client, &pair, &service, settings.wait).await?;
        pairs.insert(evidence, pair);
    }

    // 1. accept rate.
    for &evidence in &order {
        let pair = &pairs[&evidence];
        let target = Target::new(pair.a_api)?;
        let stored_before = pair.a_rows_on_disk().context("cannot count org-a's stored requests")?;
        let (base_seen, base_success) = (service.distinct(), pair.a_success(&client).await.unwrap_or(0));
        let accepted = accept_for(&client, &target, settings.callers, settings.warmup, settings.measure).await;
        let stored = pair.a_rows_on_disk().context("cannot count org-a's stored requests")? - stored_before;
        let total_202 = accepted.total_ok;
        eprintln!(
            "  accept, evidence {}: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, {} errors; {} requests answered 202 in all, {} new outgoing rows on org-a's disk; {}",
            evidence.name(),
            accepted.rps(),
            accepted.p50_ms(),
            accepted.p99_ms(),
            accepted.errors,
            total_202,
            stored,
            accepted.cpu.describe()
        );
        let durable = stored >= total_202 as u64;
        runs.push(Run {
            phase: Phase::Accept,
            evidence,
            requests: accepted.latencies_ns.len(),
            done: accepted.latencies_ns.len(),
            errors: accepted.errors,
            seconds: accepted.elapsed_s,
            complete: true,
            latencies_ns: accepted.latencies_ns.clone(),
            note: format!("{} on disk / {} answered 202", thousands(stored as f64), thousands(total_202 as f64)),
            durable,
            cpu: accepted.cpu.clone(),
            first_error: accepted.first_error.clone(),
        });

        // What the accept phase queued must be through before the next phase starts.
        let (service_target, success_target) = (base_seen + total_202, base_success + total_202);
        let drained =
            wait_through(&client, pair, &service, Instant::now(), service_target, success_target, settings.wait).await;
        eprintln!(
            "  evidence {}: the accept phase's {} requests through in {:.2} s after the callers stopped{}",
            evidence.name(),
            total_202,
            drained.elapsed_s,
            if drained.complete { "" } else { " (INCOMPLETE)" }
        );
        phase1_drains.push(if drained.complete {
            format!(
                "evidence {}: its {} requests were all through {:.2} s after the callers stopped",
                evidence.name(),
                thousands(total_202 as f64),
                drained.elapsed_s
            )
        } else {
            format!(
                "evidence {}: {}",
                evidence.name(),
                drained.incomplete(total_202, base_seen, base_success).trim_end_matches("; ")
            )
        });
    }

    // 2. end to end.
    for &evidence in &order {
        let pair = &pairs[&evidence];
        let target = Target::new(pair.a_api)?;
        let (base_seen, base_success) = (service.distinct(), pair.a_success(&client).await.unwrap_or(0));
        let cpu_before = cpu_times();
        let t0 = Instant::now();
        let submitted = submit(&client, &target, settings.callers, settings.n).await;
        let submit_s = t0.elapsed().as_secs_f64();
        let through = wait_through(
            &client,
            pair,
            &service,
            t0,
            base_seen + submitted.total_ok,
            base_success + submitted.total_ok,
            settings.wait,
        )
        .await;
        let total_s = if through.complete { through.elapsed_s } else { t0.elapsed().as_secs_f64() };
        let cpu = cpu_delta(cpu_before, cpu_times(), t0.elapsed().as_secs_f64());
        eprintln!(
            "  end to end, evidence {}: {} submitted in {:.2} s ({:.0}/s, p50 {:.3} ms, p99 {:.3} ms); from the first submission, service saw all at {}, org-a all success at {}{}; {}",
            evidence.name(),
            submitted.total_ok,
            submit_s,
            submitted.total_ok as f64 / submit_s,
            submitted.p50_ms(),
            submitted.p99_ms(),
            secs(through.service_s),
            secs(through.success_s),
            if through.complete { "" } else { " (INCOMPLETE)" },
            cpu.describe()
        );
        runs.push(Run {
            phase: Phase::EndToEnd,
            evidence,
            requests: submitted.total_ok,
            done: through.service_seen.saturating_sub(base_seen).min(submitted.total_ok),
            errors: submitted.errors,
            seconds: total_s,
            complete: through.complete,
            latencies_ns: submitted.latencies_ns.clone(),
            note: if through.complete {
                format!(
                    "submitted {submit_s:.2} s, service all {}, success all {}",
                    secs(through.service_s),
                    secs(through.success_s)
                )
            } else {
                format!(
                    "{}submitted in {submit_s:.2} s",
                    through.incomplete(submitted.total_ok, base_seen, base_success)
                )
            },
            durable: true,
            cpu,
            first_error: submitted.first_error.clone().or_else(|| through.problem.clone()),
        });
    }
    for pair in pairs.into_values() {
        pair.stop().await;
    }

    // 3. backlog drain: a fresh pair each time, org-b not running while the backlog is queued.
    for &evidence in &order {
        let service_base = service.distinct();
        let mut pair = Pair::start(service.addr, false, evidence).await?;
        let target = Target::new(pair.a_api)?;
        let cpu_before = cpu_times();
        let t0 = Instant::now();
        let queued = submit(&client, &target, settings.callers, settings.backlog).await;
        let queue_s = t0.elapsed().as_secs_f64();
        let queue_cpu = cpu_delta(cpu_before, cpu_times(), queue_s);
        let waiting = pair.a_stats(&client).await.map(|s| s.outgoing.waiting).unwrap_or(0);
        eprintln!(
            "  backlog, evidence {}: {} queued with org-b down in {:.2} s ({:.0}/s, p50 {:.3} ms, p99 {:.3} ms); org-a shows {} waiting",
            evidence.name(),
            queued.total_ok,
            queue_s,
            queued.total_ok as f64 / queue_s,
            queued.p50_ms(),
            queued.p99_ms(),
            waiting
        );
        runs.push(Run {
            phase: Phase::Queue,
            evidence,
            requests: queued.total_ok,
            done: queued.total_ok,
            errors: queued.errors,
            seconds: queue_s,
            complete: true,
            latencies_ns: queued.latencies_ns.clone(),
            note: format!("{} waiting", thousands(waiting as f64)),
            durable: true,
            cpu: queue_cpu,
            first_error: queued.first_error.clone(),
        });
        let cpu_before = cpu_times();
        let t0 = Instant::now();
        pair.start_b();
        let through =
            wait_through(&client, &pair, &service, t0, service_base + queued.total_ok, queued.total_ok, settings.wait)
                .await;
        let drain_s = through.elapsed_s;
        let cpu = cpu_delta(cpu_before, cpu_times(), drain_s);
        eprintln!(
            "  backlog drain, evidence {}: service saw the first at {}, all at {}, org-a all success at {} after org-b's start{}; {}",
            evidence.name(),
            secs(through.first_s),
            secs(through.service_s),
            secs(through.success_s),
            if through.complete { "" } else { " (INCOMPLETE)" },
            cpu.describe()
        );
        runs.push(Run {
            phase: Phase::Drain,
            evidence,
            requests: queued.total_ok,
            done: through.service_seen.saturating_sub(service_base).min(queued.total_ok),
            errors: 0,
            seconds: drain_s,
            complete: through.complete,
            latencies_ns: Vec::new(),
            note: if through.complete {
                format!(
                    "first {}, service all {}, success all {}",
                    secs(through.first_s),
                    secs(through.service_s),
                    secs(through.success_s)
                )
            } else {
                format!(
                    "{}the first reached the service {} after org-b's start",
                    through.incomplete(queued.total_ok, service_base, 0),
                    secs(through.first_s)
                )
            },
            durable: true,
            cpu,
            first_error: through.problem.clone(),
        });
        pair.stop().await;
    }
    let duplicates = service.calls() - service.distinct();

    print_report(settings, &runs, duplicates, &phase1_drains);
    Ok(())
}

/// What the callers post to org-a: one async request to org-b's counting service.
struct Target {
    url: reqwest::Url,
    body: Bytes,
}

impl Target {
    fn new(api: SocketAddr) -> anyhow::Result<Target> {
        Ok(Target {
            url: format!("http://{api}/v1/requests").parse()?,
            body: Bytes::from(serde_json::to_vec(&json!({
                "peer": "org-b", "service": "1", "path": "/count", "method": "POST",
                "form": {"n": 1}, "mode": "async"
            }))?),
        })
    }

    /// One async request; `Ok` once org-a answered 202 with the request's id.
    async fn call(&self, client: &reqwest::Client) -> Result<(), String> {
        let response = client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| format!("transport error: {e:?}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("HTTP {status}, body unreadable: {e:?}"))?;
        #[derive(Deserialize)]
        struct Envelope {
            code: i64,
            data: Option<Accepted>,
        }
        #[derive(Deserialize)]
        struct Accepted {
            id: String,
            state: String,
        }
        let ok = status == reqwest::StatusCode::ACCEPTED
            && serde_json::from_slice::<Envelope>(&body)
                .is_ok_and(|e| e.code == 0 && e.data.is_some_and(|d| !d.id.is_empty() && d.state == "waiting"));
        if ok {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// Sends one async request and waits until the service has seen it and org-a shows it `success`
/// (org-a dials org-b on first use).
async fn first_async(
    client: &reqwest::Client,
    pair: &Pair,
    service: &CountingService,
    wait: Duration,
) -> anyhow::Result<()> {
    let seen = service.distinct();
    let target = Target::new(pair.a_api)?;
    target.call(client).await.map_err(|e| anyhow::anyhow!("the first async request was refused: {e}"))?;
    let until = Instant::now() + wait;
    while service.distinct() <= seen || pair.a_success(client).await.unwrap_or(0) < 1 {
        ensure!(Instant::now() < until, "the first async request was not through within {wait:?}");
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// What the callers saw.
#[derive(Default)]
struct Calls {
    latencies_ns: Vec<u64>,
    /// Every 202, measured or not.
    total_ok: usize,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    /// CPU over the measured window (accept only).
    cpu: Cpu,
}

impl Calls {
    fn merge(&mut self, other: Calls) {
        self.latencies_ns.extend(other.latencies_ns);
        self.total_ok += other.total_ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn sort(&mut self) {
        self.latencies_ns.sort_unstable();
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * self.latencies_ns.len() as f64).ceil() as usize).clamp(1, self.latencies_ns.len());
        self.latencies_ns[rank - 1] as f64 / 1e6
    }

    fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    fn rps(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.elapsed_s.max(f64::EPSILON)
    }
}

/// `callers` callers post back to back for `warmup` + `measure`; only the measured part counts.
async fn accept_for(
    client: &reqwest::Client,
    target: &Target,
    callers: usize,
    warmup: Duration,
    measure: Duration,
) -> Calls {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + measure;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_times()
    });
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, url, body) = (client.clone(), target.url.clone(), target.body.clone());
            tokio::spawn(async move {
                let target = Target { url, body };
                let mut seen = Calls { latencies_ns: Vec::with_capacity(1 << 14), ..Calls::default() };
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return seen;
                    }
                    let result = target.call(&client).await;
                    if result.is_ok() {
                        seen.total_ok += 1;
                    }
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
    let mut all = Calls::default();
    for task in tasks {
        all.merge(task.await.expect("a caller panicked"));
    }
    // Requests sent before `until` complete after it: the measured window ends with the last one.
    all.elapsed_s = measure_from.elapsed().as_secs_f64();
    all.cpu = cpu_delta(sampler.await.ok().flatten(), cpu_times(), all.elapsed_s);
    all.sort();
    all
}

/// `callers` callers post `n` requests in all, as fast as org-a takes them.
async fn submit(client: &reqwest::Client, target: &Target, callers: usize, n: usize) -> Calls {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, url, body, next) = (client.clone(), target.url.clone(), target.body.clone(), next.clone());
            tokio::spawn(async move {
                let target = Target { url, body };
                let mut seen = Calls::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let sent = Instant::now();
                    match target.call(&client).await {
                        Ok(()) => {
                            seen.total_ok += 1;
                            seen.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                        }
                        Err(e) => {
                            seen.errors += 1;
                            seen.first_error.get_or_insert(e);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Calls::default();
    for task in tasks {
        all.merge(task.await.expect("a caller panicked"));
    }
    all.elapsed_s = start.elapsed().as_secs_f64();
    all.sort();
    all
}

/// When a batch of requests was through.
struct Through {
    /// From the call until the service saw the first of them.
    first_s: Option<f64>,
    /// From the call until the service had seen them all.
    service_s: Option<f64>,
    /// From the call until org-a showed them all `success`.
    success_s: Option<f64>,
    /// The later of the two (or the time waited).
    elapsed_s: f64,
    complete: bool,
    problem: Option<String>,
    /// Distinct requests the service had seen at the end (all phases).
    service_seen: usize,
    /// Outgoing requests org-a showed `success` at the end, when it answered (all phases).
    success: Option<u64>,
}

impl Through {
    /// Why the row is incomplete, relative to the phase's own requests.
    fn incomplete(&self, n: usize, service_base: usize, success_base: usize) -> String {
        format!(
            "INCOMPLETE after {:.0} s: service saw {} of {}, org-a shows {} of them success; ",
            self.elapsed_s,
            thousands(self.service_seen.saturating_sub(service_base) as f64),
            thousands(n as f64),
            self.success.map_or("?".into(), |s| thousands(s.saturating_sub(success_base as u64) as f64)),
        )
    }
}

/// Waits until the service has seen `service_target` distinct requests and org-a shows
/// `success_target` outgoing requests `success`, at most `wait`.
async fn wait_through(
    client: &reqwest::Client,
    pair: &Pair,
    service: &CountingService,
    start: Instant,
    service_target: usize,
    success_target: usize,
    wait: Duration,
) -> Through {
    let until = Instant::now() + wait;
    let (mut service_s, mut success_s) = (None, None);
    let mut last = None;
    let seen_before = service.distinct();
    let mut first_s = None;
    loop {
        if first_s.is_none() && (service.distinct() > seen_before || seen_before >= service_target) {
            first_s = Some(start.elapsed().as_secs_f64());
        }
        if service_s.is_none() && service.distinct() >= service_target {
            service_s = Some(start.elapsed().as_secs_f64());
        }
        // Stats are a store transaction on org-a: ask only once the service has seen them all,
        // or now and then, so that the waiting does not load the store it measures.
        if success_s.is_none()
            && (service_s.is_some() || last.is_none_or(|t: Instant| t.elapsed() > Duration::from_millis(500)))
        {
            last = Some(Instant::now());
            if let Some(stats) = pair.a_stats(client).await {
                if stats.outgoing.success >= success_target as u64 {
                    success_s = Some(start.elapsed().as_secs_f64());
                }
            }
        }
        if service_s.is_some() && success_s.is_some() {
            return Through {
                first_s,
                service_s,
                success_s,
                elapsed_s: service_s.unwrap_or_default().max(success_s.unwrap_or_default()),
                complete: true,
                problem: None,
                service_seen: service.distinct(),
                success: Some(success_target as u64),
            };
        }
        if Instant::now() >= until {
            let stats = pair.a_stats(client).await;
            let success = stats.as_ref().map(|s| s.outgoing.success);
            let problem = format!(
                "after {:?}: the service saw {} of {}, org-a stats {}",
                wait,
                service.distinct(),
                service_target,
                stats.as_ref().map_or("unavailable".into(), |s| format!(
                    "waiting {} doing {} success {} (of {}) failed {}",
                    s.outgoing.waiting, s.outgoing.doing, s.outgoing.success, success_target, s.outgoing.failed
                ))
            );
            eprintln!("  {problem}\n  stores: {}", pair.census());
            return Through {
                first_s,
                service_s,
                success_s,
                elapsed_s: start.elapsed().as_secs_f64(),
                complete: false,
                problem: Some(problem),
                service_seen: service.distinct(),
                success,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// org-b's service: `POST /count` answers `{"ok":true}` and counts the call and its request id.
#[derive(Clone)]
struct CountingService {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    ids: Mutex<HashSet<String>>,
    distinct: AtomicUsize,
}

impl CountingService {
    async fn start() -> anyhow::Result<CountingService> {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/count",
                post(|State(seen): State<Arc<Seen>>, headers: HeaderMap| async move {
                    seen.calls.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = headers.get("x-ferry-request-id").and_then(|v| v.to_str().ok()) {
                        let mut ids = seen.ids.lock().unwrap();
                        if ids.insert(id.to_owned()) {
                            seen.distinct.store(ids.len(), Ordering::Release);
                        }
                    }
                    Json(json!({"ok": true}))
                }),
            )
            .with_state(seen.clone());
        let addr = support::serve(app, true).await;
        Ok(CountingService { addr, seen })
    }

    /// Distinct request ids seen.
    fn distinct(&self) -> usize {
        self.seen.distinct.load(Ordering::Acquire)
    }

    /// Calls, counting repeats.
    fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::Relaxed) as usize
    }
}

/// org-a's `GET /v1/stats`, the part this bench reads.
#[derive(Deserialize)]
struct StatsEnvelope {
    data: Stats,
}

#[derive(Deserialize)]
struct Stats {
    outgoing: Counts,
}

#[derive(Deserialize)]
struct Counts {
    waiting: u64,
    doing: u64,
    success: u64,
    failed: u64,
}

/// org-a and org-b, pinned both ways; org-b offers service 1 (the counting service) to org-a.
/// org-b's sockets are bound at once; its node may start later ([`Pair::start_b`]).
struct Pair {
    _dir: tempfile::TempDir,
    a: support::Node,
    b: support::Node,
    a_api: SocketAddr,
    a_data: PathBuf,
    b_data: PathBuf,
    stats_url: reqwest::Url,
}

impl Pair {
    async fn start(service: SocketAddr, start_b: bool, evidence: Evidence) -> anyhow::Result<Pair> {
        let dir = tempfile::tempdir()?;
        let (mut a, b) = support::node::two_nodes(dir.path(), &format!("http://{service}"));
        for config in [&a.config_path, &b.config_path] {
            set_evidence(config, evidence)?;
            check_evidence(&Config::load(config)?, evidence)?;
        }
        a.spawn_on(&tokio::runtime::Handle::current());
        let mut pair = Pair {
            _dir: dir,
            a_api: a.api,
            a_data: a.data_dir(),
            b_data: b.data_dir(),
            stats_url: format!("http://{}/v1/stats", a.api).parse()?,
            a,
            b,
        };
        pair.a.serving(Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
        if start_b {
            pair.start_b();
            pair.b.serving(Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
        }
        Ok(pair)
    }

    /// Starts org-b's node on the sockets bound at the start.
    fn start_b(&mut self) {
        self.b.spawn_on(&tokio::runtime::Handle::current());
    }

    async fn a_stats(&self, client: &reqwest::Client) -> Option<Stats> {
        let response = client.get(self.stats_url.clone()).send().await.ok()?;
        let body = response.bytes().await.ok()?;
        serde_json::from_slice::<StatsEnvelope>(&body).ok().map(|e| e.data)
    }

    async fn a_success(&self, client: &reqwest::Client) -> Option<usize> {
        self.a_stats(client).await.map(|s| s.outgoing.success as usize)
    }

    /// Outgoing requests in org-a's database, read by a connection of its own.
    fn a_rows_on_disk(&self) -> anyhow::Result<u64> {
        let conn = rusqlite::Connection::open_with_flags(
            self.a_data.join("ferry.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(conn.query_row("SELECT COUNT(*) FROM requests WHERE direction = 'outgoing'", [], |r| r.get(0))?)
    }

    /// Counts by direction and state in a node's database, read by a connection of its own: the
    /// whole picture when a phase did not complete.
    fn census(&self) -> String {
        let count = |name: &str, data: &Path| -> rusqlite::Result<String> {
            let conn = rusqlite::Connection::open_with_flags(
                data.join("ferry.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let mut stmt = conn.prepare(
                "SELECT direction, state, COUNT(*), SUM(next_attempt_at IS NOT NULL), MAX(attempts) FROM requests
                 GROUP BY direction, state",
            )?;
            let parts: Vec<String> = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} {} (due set {}, max attempts {})",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let unsent: i64 =
                conn.query_row("SELECT COUNT(*) FROM replies WHERE next_send_at IS NOT NULL", [], |r| r.get(0))?;
            Ok(format!("{name}: {}; replies not yet acknowledged {unsent}", parts.join(", ")))
        };
        [("org-a", &self.a_data), ("org-b", &self.b_data)]
            .iter()
            .map(|(name, data)| count(name, data).unwrap_or_else(|e| format!("{name}: cannot read its store: {e}")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn stop(mut self) {
        for node in [&mut self.a, &mut self.b] {
            if let Err(e) = node.stop_within(Duration::from_secs(15)).await {
                eprintln!("{e}");
            }
        }
    }
}

/// CPU used during a phase (or several runs of it), in CPU seconds over `wall_s` seconds.
#[derive(Default, Clone)]
struct Cpu {
    wall_s: f64,
    process_s: Option<f64>,
    store_s: Option<f64>,
    others_s: Option<f64>,
}

impl Cpu {
    /// In CPUs (1.0 = one core busy throughout).
    fn cores(&self, seconds: Option<f64>) -> Option<f64> {
        seconds.map(|s| s / self.wall_s.max(f64::EPSILON))
    }

    /// The process's CPU use, in cores.
    fn process(&self) -> Option<f64> {
        self.cores(self.process_s)
    }

    /// Other processes' CPU use, in cores.
    fn others(&self) -> Option<f64> {
        self.cores(self.others_s)
    }

    /// Process CPU time per request, in µs.
    fn us_per(&self, requests: usize) -> Option<f64> {
        self.process_s.filter(|_| requests > 0).map(|s| s * 1e6 / requests as f64)
    }

    /// Both together, as if one phase.
    fn add(&self, other: &Cpu) -> Cpu {
        let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        Cpu {
            wall_s: self.wall_s + other.wall_s,
            process_s: sum(self.process_s, other.process_s),
            store_s: sum(self.store_s, other.store_s),
            others_s: sum(self.others_s, other.others_s),
        }
    }

    fn describe(&self) -> String {
        let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        format!(
            "CPU in cores: process {}, of it the store writer threads {}; other processes {}",
            f(self.process()),
            f(self.cores(self.store_s)),
            f(self.others())
        )
    }
}

fn cpu_delta(before: Option<Snapshot>, after: Option<Snapshot>, seconds: f64) -> Cpu {
    let (Some(b), Some(a)) = (before, after) else { return Cpu::default() };
    let process = a.process - b.process;
    let by_name = a.by_group(&b, |_, name| name.to_owned(), "");
    Cpu {
        wall_s: seconds.max(f64::EPSILON),
        process_s: Some(process),
        store_s: Some(by_name.get("ferry-store").copied().unwrap_or(0.0)),
        others_s: a.others_since(&b, process),
    }
}

/// The CPU clocks from `/proc`; `None` where there is no `/proc`.
fn cpu_times() -> Option<Snapshot> {
    Snapshot::now()
}

/// The measurements, in the report's order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Accept,
    EndToEnd,
    Queue,
    Drain,
}

/// One run of one measurement.
struct Run {
    phase: Phase,
    evidence: Evidence,
    requests: usize,
    /// Requests the phase got through (the service saw them), for the CPU time per request:
    /// `requests` unless the phase did not complete.
    done: usize,
    errors: u64,
    seconds: f64,
    complete: bool,
    latencies_ns: Vec<u64>,
    note: String,
    /// Accept: every 202 was on disk.
    durable: bool,
    cpu: Cpu,
    first_error: Option<String>,
}

impl Run {
    fn rate(&self) -> Option<f64> {
        self.complete.then(|| self.requests as f64 / self.seconds.max(f64::EPSILON))
    }
}

/// One line of the report: the runs of one measurement with the evidence on or off, together.
struct Row {
    phase: Phase,
    evidence: Evidence,
    what: String,
    runs: usize,
    requests: usize,
    /// See [`Run::done`].
    done: usize,
    errors: u64,
    /// Seconds per run, on average.
    seconds: f64,
    /// `None` when a run did not complete.
    rate: Option<f64>,
    /// Each run's rate, in order.
    rate_by_run: Vec<Option<f64>>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    note: String,
    target: String,
    result: Option<bool>,
    cpu: Cpu,
    first_error: Option<String>,
}

impl Row {
    fn from_runs(settings: &Settings, phase: Phase, evidence: Evidence, runs: &[&Run]) -> Row {
        let requests: usize = runs.iter().map(|r| r.requests).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let complete = runs.iter().all(|r| r.complete);
        let mut latencies: Vec<u64> = runs.iter().flat_map(|r| r.latencies_ns.iter().copied()).collect();
        latencies.sort_unstable();
        let percentile = |p: f64| -> Option<f64> {
            if latencies.is_empty() {
                return None;
            }
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            Some(latencies[rank - 1] as f64 / 1e6)
        };
        let rate = complete.then(|| requests as f64 / seconds.max(f64::EPSILON));
        let errors = runs.iter().map(|r| r.errors).sum();
        let max_seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
        let on = evidence == Evidence::On;
        let (what, target, result) = match phase {
            Phase::Accept => (
                "accept (202 = committed)".to_owned(),
                if on { format!("≥ {} req/s", thousands(TARGET_ACCEPT_RPS)) } else { String::new() },
                on.then(|| {
                    rate.is_some_and(|r| r >= TARGET_ACCEPT_RPS) && errors == 0 && runs.iter().all(|r| r.durable)
                }),
            ),
            Phase::EndToEnd => (format!("end to end ({} requests)", thousands(settings.n as f64)), String::new(), None),
            Phase::Queue => ("backlog: queue, org-b down".to_owned(), String::new(), None),
            Phase::Drain => (
                format!("backlog: drain ({} requests)", thousands(settings.backlog as f64)),
                if on { format!("≤ {TARGET_DRAIN_S:.0} s") } else { String::new() },
                on.then_some(complete && max_seconds <= TARGET_DRAIN_S),
            ),
        };
        let mut note = runs.iter().map(|r| r.note.as_str()).collect::<Vec<_>>().join(" | ");
        if phase == Phase::Accept && !runs.iter().all(|r| r.durable) {
            note.push_str(" (MISSING ROWS)");
        }
        Row {
            phase,
            evidence,
            what,
            runs: runs.len(),
            requests,
            done: runs.iter().map(|r| r.done).sum(),
            errors,
            seconds: seconds / runs.len().max(1) as f64,
            rate,
            rate_by_run: runs.iter().map(|r| r.rate()).collect(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            note,
            target,
            result,
            cpu: runs
                .iter()
                .skip(1)
                .fold(runs.first().map(|r| r.cpu.clone()).unwrap_or_default(), |a, r| a.add(&r.cpu)),
            first_error: runs.iter().find_map(|r| r.first_error.clone()),
        }
    }
}

fn print_report(settings: &Settings, runs: &[Run], duplicates: usize, phase1_drains: &[String]) {
    let mut rows: Vec<Row> = Vec::new();
    for phase in [Phase::Accept, Phase::EndToEnd, Phase::Queue, Phase::Drain] {
        for evidence in [Evidence::On, Evidence::Off] {
            let these: Vec<&Run> = runs.iter().filter(|r| r.phase == phase && r.evidence == evidence).collect();
            if !these.is_empty() {
                rows.push(Row::from_runs(settings, phase, evidence, &these));
            }
        }
    }
    let headers = [
        "measurement",
        "evidence",
        "runs",
        "requests",
        "errors",
        "s per run",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU cores",
        "CPU µs/req",
        "target",
        "result",
        "notes (by run)",
    ];
    let ms = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.3}"));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.what.clone(),
                r.evidence.name().to_owned(),
                r.runs.to_string(),
                thousands(r.requests as f64),
                r.errors.to_string(),
                format!("{:.2}", r.seconds),
                r.rate.map_or("-".into(), thousands),
                ms(r.p50_ms),
                ms(r.p99_ms),
                r.cpu.process().map_or("-".into(), |c| format!("{c:.2}")),
                r.cpu.us_per(r.done).map_or("-".into(), |c| format!("{c:.0}")),
                r.target.clone(),
                r.result.map_or(String::new(), |ok| pass(ok).to_owned()),
                r.note.clone(),
            ]
        })
        .collect();
    println!("{}", render(&headers, &table, false));

    // The evidence log and receipts: on against off, measurement by measurement.
    let cost_headers = [
        "measurement",
        "on req/s",
        "off req/s",
        "throughput cost",
        "cost by round",
        "rounds: mean ± SE",
        "on CPU µs/req",
        "off CPU µs/req",
        "CPU added",
        "target",
        "result",
    ];
    let mut cost_table = Vec::new();
    for phase in [Phase::Accept, Phase::EndToEnd, Phase::Queue, Phase::Drain] {
        let find = |e: Evidence| rows.iter().find(|r| r.phase == phase && r.evidence == e);
        let (Some(on), Some(off)) = (find(Evidence::On), find(Evidence::Off)) else { continue };
        let cost = on.rate.zip(off.rate).map_or(f64::NAN, |(a, b)| cost_pct(a, b));
        let by_round: Vec<f64> = on
            .rate_by_run
            .iter()
            .zip(&off.rate_by_run)
            .filter_map(|(a, b)| a.zip(*b))
            .map(|(a, b)| cost_pct(a, b))
            .collect();
        let (cpu_on, cpu_off) = (on.cpu.us_per(on.done), off.cpu.us_per(off.done));
        cost_table.push(vec![
            on.what.clone(),
            on.rate.map_or("-".into(), thousands),
            off.rate.map_or("-".into(), thousands),
            pct(cost),
            rounds(&by_round),
            RoundCosts::of(&by_round).map_or("-".into(), |r| r.to_string()),
            cpu_on.map_or("-".into(), |c| format!("{c:.0}")),
            cpu_off.map_or("-".into(), |c| format!("{c:.0}")),
            pct(cpu_on.zip(cpu_off).map_or(f64::NAN, |(a, b)| added_pct(a, b))),
            format!("≤ {TARGET_EVIDENCE_COST_PCT:.0}%"),
            judge_cost(cost, &by_round, on.errors).to_owned(),
        ]);
    }
    if !cost_table.is_empty() {
        println!(
            "\nEvidence log and signed receipts, on against off (throughput cost = (off - on) / off; CPU added = (on - off) / off, per request):"
        );
        println!("{}", render(&cost_headers, &cost_table, false));
    }
    for r in rows.iter().filter(|r| r.cpu.others().is_some_and(|s| s > 0.1)) {
        println!(
            "warning: other processes used {:.0}% of a CPU during `{}` (evidence {}); its figures are lower than on a quiet machine",
            r.cpu.others().unwrap_or(0.0) * 100.0,
            r.what,
            r.evidence.name()
        );
    }
    for r in rows.iter().filter(|r| r.first_error.is_some()) {
        println!(
            "first error, {} (evidence {}): {}",
            r.what,
            r.evidence.name(),
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    println!("after each accept phase: {}", phase1_drains.join("; "));
    println!("service calls repeating a request id already seen: {duplicates}");
    println!(
        "\nTargets (printed, not asserted), with the evidence on (the default): at least {} async requests accepted per second with {TARGET_CALLERS} callers (this run: {}); a backlog of {} drained within {TARGET_DRAIN_S:.0} s of org-b's start (every run). The evidence log and receipts cost at most {TARGET_EVIDENCE_COST_PCT:.0}% of each throughput.",
        thousands(TARGET_ACCEPT_RPS),
        settings.callers,
        thousands(settings.backlog as f64),
    );
    println!("\nMarkdown:\n");
    println!("{}", render(&headers, &table, true));
    if !cost_table.is_empty() {
        println!();
        println!("{}", render(&cost_headers, &cost_table, true));
    }
}

fn secs(s: Option<f64>) -> String {
    s.map_or("never".into(), |s| format!("{s:.2} s"))
}
