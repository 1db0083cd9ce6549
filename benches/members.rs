//! The store's two backends, and members sharing one: `cargo bench --bench members`.
//!
//! Every node runs in this process on loopback, set up as admins would (`init`, `peer add`,
//! `service add`); PostgreSQL is a server of the bench's own (`tests/support/postgres.rs`, the
//! tests' settings: loopback, `fsync=off`). org-b is one node on SQLite whose service is a trivial
//! axum handler counting the distinct `X-Ferry-Request-Id`s it sees. org-a, the side measured, is
//! laid out four ways, one after the other, in one run:
//!
//! 1. one member on SQLite (the default);
//! 2. one member on PostgreSQL, over TLS (`[store] ca`), and the same without TLS;
//! 3. two members on one PostgreSQL store, the callers split between them.
//!
//! For each: **accept**: `FERRY_BENCH_CALLERS` callers post asynchronous requests back to back for
//! `FERRY_BENCH_MEASURE_MS` (each 202 means committed to org-a's store): accepted per second, p50
//! and p99; **through**: from the first post until org-b's service has seen every accepted request
//! (end to end, requests per second); **reads**: the callers ask `GET /v1/requests/{id}` of
//! accepted ids for the same time (reads per second). Then the reads again on one PostgreSQL
//! member with `[store] readers` = 2, 8 and 32: what the pool size should be.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FERRY_BENCH_CALLERS` | 64 | concurrent callers |
//! | `FERRY_BENCH_MEASURE_MS` | 3000 | each measured phase |
//! | `FERRY_BENCH_WAIT_S` | 60 | the longest wait for the accepted requests to get through |
//! | `FERRY_BENCH_ONLY` | unset | only the layouts whose name holds this text |

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

#[path = "../tests/support/mod.rs"]
mod support;
use support::{postgres, Node};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// org-b's service: counts the distinct request ids it is called with.
async fn service() -> (String, Arc<Mutex<HashSet<String>>>) {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let counted = seen.clone();
    let app = Router::new().route(
        "/count",
        post(move |headers: HeaderMap| {
            let counted = counted.clone();
            async move {
                if let Some(id) = headers.get("x-ferry-request-id").and_then(|v| v.to_str().ok()) {
                    counted.lock().unwrap().insert(id.to_owned());
                }
                "{\"ok\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// What one phase measured.
#[derive(Default)]
struct Calls {
    latencies_ns: Vec<u64>,
    ids: Vec<String>,
    errors: usize,
    first_error: Option<String>,
    elapsed_s: f64,
}

impl Calls {
    fn per_s(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.elapsed_s.max(f64::EPSILON)
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies_ns.sort_unstable();
        let n = self.latencies_ns.len();
        if n == 0 {
            return f64::NAN;
        }
        self.latencies_ns[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e6
    }
}

/// `callers` callers for `measure`, caller `i` at `apis[i % len]`: posting async requests, or
/// (with `read_ids`) reading the status of those ids in turn.
async fn callers(
    apis: &[std::net::SocketAddr],
    callers: usize,
    measure: Duration,
    read_ids: Option<&[String]>,
) -> Calls {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(callers).build().unwrap();
    let until = Instant::now() + measure;
    let read_ids: Option<Arc<Vec<String>>> = read_ids.map(|ids| Arc::new(ids.to_vec()));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (client, api, read_ids) = (client.clone(), apis[i % apis.len()], read_ids.clone());
            tokio::spawn(async move {
                let mut seen = Calls::default();
                let mut n = i;
                while Instant::now() < until {
                    let sent = Instant::now();
                    let answer = match &read_ids {
                        Some(ids) => {
                            n = (n + callers) % ids.len();
                            client.get(format!("http://{api}/v1/requests/{}", ids[n])).send().await
                        }
                        None => {
                            let body = serde_json::json!({"peer": "org-b", "service": "1", "path": "/count",
                                "method": "POST", "form": {"n": n.to_string()}, "mode": "async"});
                            client.post(format!("http://{api}/v1/requests")).json(&body).send().await
                        }
                    };
                    let ok = match answer {
                        Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                        Ok(r) => {
                            seen.first_error.get_or_insert(format!(
                                "{}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ));
                            None
                        }
                        Err(e) => {
                            seen.first_error.get_or_insert(e.to_string());
                            None
                        }
                    };
                    match ok {
                        Some(env) => {
                            seen.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                            if read_ids.is_none() {
                                seen.ids.push(env["data"]["id"].as_str().unwrap_or_default().to_owned());
                            }
                        }
                        None => seen.errors += 1,
                    }
                }
                seen
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Calls::default();
    for task in tasks {
        let mut one = task.await.unwrap();
        all.latencies_ns.append(&mut one.latencies_ns);
        all.ids.append(&mut one.ids);
        all.errors += one.errors;
        all.first_error = all.first_error.or(one.first_error);
    }
    all.elapsed_s = started.elapsed().as_secs_f64();
    all
}

/// org-a laid out as `members` members (none: SQLite), with org-b pinning them all; started.
/// On PostgreSQL, over TLS when `tls`.
async fn org_a(root: &Path, b: &Node, members: &[&str], url: Option<&str>, readers: usize, tls: bool) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let node = Node::create(&root.join(format!("a{i}")), "org-a");
        if let Some(url) = url {
            node.setup().use_store(url, Some(member));
            let mut text = std::fs::read_to_string(&node.config_path).unwrap();
            if !tls {
                text = text.lines().filter(|l| !l.starts_with("ca = ")).map(|l| format!("{l}\n")).collect();
            }
            text.push_str(&format!("readers = {readers}\n"));
            std::fs::write(&node.config_path, text).unwrap();
        }
        node.add_peer(b);
        nodes.push(node);
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.link.to_string()).collect();
    let certs: Vec<_> = nodes.iter().map(Node::cert).collect();
    let b_config = b.config_path.clone();
    tokio::task::spawn_blocking(move || {
        let _ = ferry::cli::peer::remove(&b_config, "org-a");
        ferry::cli::peer::add(&b_config, "org-a", &addresses, &certs).unwrap()
    })
    .await
    .unwrap();
    // org-b takes its new pins of org-a.
    let (status, answer) = b.post("/v1/reload", serde_json::json!({})).await;
    assert!(status.is_success(), "{answer}");
    for node in &mut nodes {
        node.start().await;
    }
    nodes
}

struct Row {
    layout: String,
    accepted: f64,
    p50: f64,
    p99: f64,
    through: String,
    reads: f64,
    errors: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let callers_n = setting("FERRY_BENCH_CALLERS", 64) as usize;
    let measure = Duration::from_millis(setting("FERRY_BENCH_MEASURE_MS", 3000));
    let wait = Duration::from_secs(setting("FERRY_BENCH_WAIT_S", 60));
    let (service_url, seen) = service().await;
    let root = tempfile::tempdir().unwrap();
    let mut b = Node::create(root.path(), "org-b");
    b.add_service("1", &service_url, &["*"]);
    b.start().await;
    println!("callers {callers_n}, {} ms a phase; PostgreSQL: the bench's own server on loopback", measure.as_millis());

    let mut rows = Vec::new();
    // (layout, members, on PostgreSQL, readers, over TLS)
    let layouts: [(&str, &[&str], bool, usize, bool); 7] = [
        ("1 member, SQLite", &["a1"], false, 8, false),
        ("1 member, PostgreSQL", &["a1"], true, 8, true),
        ("1 member, PostgreSQL without TLS", &["a1"], true, 8, false),
        ("2 members, one PostgreSQL store", &["a1", "a2"], true, 8, true),
        ("1 member, PostgreSQL, readers = 2", &["a1"], true, 2, true),
        ("1 member, PostgreSQL, readers = 8", &["a1"], true, 8, true),
        ("1 member, PostgreSQL, readers = 32", &["a1"], true, 32, true),
    ];
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    for (i, (layout, members, on_postgres, readers, tls)) in layouts.into_iter().enumerate() {
        if !layout.contains(only.as_str()) {
            continue;
        }
        let url = on_postgres.then(postgres::database);
        let dir = root.path().join(format!("layout{i}"));
        let mut a = org_a(&dir, &b, members, url.as_deref(), readers, tls).await;
        let apis: Vec<_> = a.iter().map(|n| n.api).collect();
        let before = seen.lock().unwrap().len();
        let started = Instant::now();
        let mut accepted = callers(&apis, callers_n, measure, None).await;
        let through = loop {
            let got = seen.lock().unwrap().len() - before;
            if got >= accepted.ids.len() {
                break format!("{:.0}/s", got as f64 / started.elapsed().as_secs_f64());
            }
            if started.elapsed() > measure + wait {
                break format!("INCOMPLETE: {got} of {}", accepted.ids.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let reads = callers(&apis, callers_n, measure, Some(&accepted.ids)).await;
        if let Some(e) = accepted.first_error.as_ref().or(reads.first_error.as_ref()) {
            eprintln!("{layout}: first error: {e}");
        }
        let row = Row {
            layout: layout.to_owned(),
            accepted: accepted.per_s(),
            p50: accepted.percentile_ms(0.5),
            p99: accepted.percentile_ms(0.99),
            through,
            reads: reads.per_s(),
            errors: accepted.errors + reads.errors,
        };
        println!(
            "{}: accepted {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), through {}, reads {:.0}/s, errors {}",
            row.layout, row.accepted, row.p50, row.p99, row.through, row.reads, row.errors
        );
        rows.push(row);
        for node in &mut a {
            node.stop().await;
        }
    }
    println!("\n| org-a | accepted/s | p50 ms | p99 ms | through | reads/s | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {} |",
            r.layout, r.accepted, r.p50, r.p99, r.through, r.reads, r.errors
        );
    }
}
