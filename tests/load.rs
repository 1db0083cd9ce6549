//! Load: 64 host callers mixing sync, async and file requests against a pair for a bounded time.
//! No errors, every async request done, memory flat; latency percentiles are printed (figures,
//! not assertions: speed targets live in benches/).
//!
//! `FERRY_LOAD_SECONDS=60 cargo test --release --test load -- --nocapture` runs it longer.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{client, pair};

const CALLERS: usize = 64;

/// This process's resident memory in KiB (both nodes and the service run in it).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_mixing_sync_async_and_files() {
    let seconds: u64 = std::env::var("FERRY_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let p = pair().await;
    let outbox = p.a.dir.join("outbox");
    let files: Vec<String> = (0..4)
        .map(|i| {
            let path = outbox.join(format!("load-{i}.bin"));
            std::fs::write(&path, vec![i as u8; 256 * 1024 + i * 4096]).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let url = p.a.url("/v1/requests");
    let latencies: Arc<Mutex<[Vec<Duration>; 3]>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let asyncs: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            samples.push(rss_kib());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        samples
    });
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (url, latencies, errors, asyncs, counter, files) =
                (url.clone(), latencies.clone(), errors.clone(), asyncs.clone(), counter.clone(), files.clone());
            tokio::spawn(async move {
                let http = client();
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    // Of every 20 requests: 14 sync, 5 async, 1 async with a file.
                    let (kind, body) = match n % 20 {
                        0 => (
                            2,
                            json!({"peer": "org-b", "service": "1", "path": "/file", "mode": "async",
                                        "file": files[(n / 20) as usize % files.len()]}),
                        ),
                        1..=5 => (
                            1,
                            json!({"peer": "org-b", "service": "1", "path": "/async", "mode": "async",
                                            "form": {"caller": caller, "n": n}}),
                        ),
                        _ => (0, json!({"peer": "org-b", "service": "1", "path": "/sync", "form": {"n": n}})),
                    };
                    let started = Instant::now();
                    let answer = http.post(&url).json(&body).send().await;
                    let took = started.elapsed();
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            let envelope: serde_json::Value = r.json().await.unwrap_or_default();
                            if kind > 0 {
                                asyncs.lock().unwrap().push(envelope["data"]["id"].as_str().unwrap_or("").to_owned());
                            }
                            latencies.lock().unwrap()[kind].push(took);
                        }
                        Ok(r) => {
                            let why = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                            errors.lock().unwrap().push(why);
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let samples = sampler.await.unwrap();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());

    // Every async request finishes.
    let ids = asyncs.lock().unwrap().clone();
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stats) = p.a.get("/v1/stats").await;
        let outgoing = &stats["data"]["outgoing"];
        let open = outgoing["waiting"].as_u64().unwrap() + outgoing["doing"].as_u64().unwrap();
        if open == 0 {
            assert_eq!(outgoing["success"].as_u64().unwrap(), ids.len() as u64, "{stats}");
            break;
        }
        assert!(Instant::now() < settle, "{open} async requests still open a minute after the load: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut latencies = latencies.lock().unwrap().clone();
    println!("\nload: {CALLERS} callers for {seconds} s, both nodes and the service in this process");
    println!("| kind              | requests |  p50 ms |  p90 ms |  p99 ms |  max ms |");
    println!("| ----------------- | -------: | ------: | ------: | ------: | ------: |");
    for (kind, name) in [(0, "sync"), (1, "async accepted"), (2, "async with file")] {
        let l = &mut latencies[kind];
        l.sort();
        println!(
            "| {name:<17} | {:>8} | {:>7.2} | {:>7.2} | {:>7.2} | {:>7.2} |",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.9),
            percentile(l, 0.99),
            percentile(l, 1.0)
        );
    }
    let third = samples.len() / 3;
    let avg = |s: &[u64]| s.iter().sum::<u64>() / s.len().max(1) as u64;
    let (early, late) = (avg(&samples[third..2 * third]), avg(&samples[2 * third..]));
    println!(
        "RSS: {} samples, middle third {} MiB, last third {} MiB, peak {} MiB",
        samples.len(),
        early / 1024,
        late / 1024,
        samples.iter().max().unwrap_or(&0) / 1024
    );
    assert!(latencies.iter().all(|l| !l.is_empty()), "every kind of request ran");
    // Flat: the last third may not grow past the middle third by more than a quarter (plus slack
    // for allocator noise); a leak per request grows without bound.
    assert!(late <= early + early / 4 + 16 * 1024, "memory grows under steady load: {early} KiB → {late} KiB");
}
