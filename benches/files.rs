//! One large file from node to node, against what the machine and QUIC can do, in one run:
//! `cargo bench --bench files`.
//!
//! Everything runs in this one process on loopback, on one tokio runtime (as `benches/relay.rs`):
//! the host client, org-a and org-b (set up as admins would: `init`, `peer add`, `service add`)
//! and org-b's service, an axum handler that records when it is called. With
//! `FERRY_BENCH_SPLIT=1` the sending side (org-a, threads `b-send`) and the receiving side (org-b,
//! `b-recv`) get their own runtimes, so that their CPU time can be told apart. The figures:
//!
//! - **ferry**: a synchronous `POST /v1/requests` to org-a with `file`, measured from the request
//!   until org-b's service is called (the file is then on org-b's disk, verified);
//! - **four files at once**: four such requests sent together, each with its own file of a quarter
//!   of the size, from the first request until the last service call;
//! - **the page cache**: the first row and four at once again, on new nodes whose org-b has
//!   `[files] direct_io = false`;
//! - **a big file** (`FERRY_BENCH_BIG_MIB`, 10 GiB by default): one such request, with the peak
//!   RSS during it, and what the transfer added to the process's RSS against what the first run
//!   of the first row added (both on fresh nodes; the big file runs last); skipped, with the
//!   reason printed, where the disk has no room for the source, the received copy and 1 GiB to
//!   spare. Its files are removed afterwards by a drop guard, also when the run fails;
//! - **(a′)** the physical limit: raw quinn as (a), the receiver hashing once (SHA-256) inline and
//!   handing 1 MiB pieces through a bounded queue to a blocking thread that writes them to a file
//!   in the bench's temporary directory (the nodes' disk) and fsyncs it at the end, before it
//!   answers; one row writing through the page cache, one with direct I/O (where the file system
//!   takes it); ferry's target is against the faster;
//! - **(a)** raw quinn, one bidirectional stream, the same transport settings
//!   (`ferry::link::Transport::default().config()`) and the same TLS configurations
//!   (`ferry::tls`), the sender writing from memory, the receiver hashing with SHA-256 what it
//!   reads (and without hashing), until the receiver's 32-byte answer is back;
//! - **(b)** SHA-256 (sha2) of the size in memory;
//! - **(c)** write + fsync of the size to the disk of the nodes' data directories;
//! - **(a0)** raw quinn as (a) with the transport settings before the windows were sized (quinn's
//!   1.25 MB stream window, the system's socket buffers), to show the sizing costs loopback
//!   nothing; **(s)** rows for any settings asked for with `FERRY_BENCH_SWEEP`;
//! - **50 ms of RTT with loss** (a second table): two network namespaces joined by a veth pair
//!   with `tc qdisc ... netem delay 25ms loss 0.5%` on each side (half of `FERRY_BENCH_WAN_LOSS`
//!   each way; the link sockets are bound inside the namespaces from a thread that enters them
//!   with setns, so the nodes still run in this process and their APIs and the service stay on
//!   loopback); where the kernel has no netem (the build machine's does not), a userspace relay on
//!   loopback (`tests/support/lossy.rs`, `DelayRelay`) that holds each datagram 25 ms each way and
//!   drops the same share from a seeded RNG (the seed is printed; the raw quinn rows and the ferry
//!   row get relays with the same seed). Rows: ferry node to node (`FERRY_BENCH_WAN_MIB`, 256 MiB
//!   by default), raw quinn with the previous and the current settings, with quinn's loss and
//!   congestion counters, and (w) raw quinn with ferry's settings but quinn's BBR congestion
//!   controller instead of Cubic (a diagnostic: Cubic takes each loss for congestion); target:
//!   ferry ≥ 90% of raw quinn with ferry's settings. The namespaces are deleted by a drop guard,
//!   also on panic; ones left by a killed run are removed at the next;
//! - the process's peak RSS during the ferry transfer and during the big one (VmHWM after
//!   resetting it through `/proc/self/clear_refs`, and VmRSS sampled every 5 ms);
//! - diagnostics for where the time goes: (k) raw quinn with as many SHA-256 passes added as
//!   ferry makes (per chunk and whole, each side) and (l) with one pass each side; (e)
//!   `ferry::transfer::send` → `ferry::transfer::receive` over raw quinn (ferry's own file code
//!   without the nodes: with (k), it shows what the file code adds to its hashing); plain reads
//!   of the source.
//!
//! It measures ferry and what the machine and QUIC can do, nothing else: it installs nothing and
//! starts no other server. ferry against scp and rsync over ssh is `bench/compare.sh`.
//!
//! Targets are printed next to the figures, not asserted. The source files are written into a
//! temporary directory and removed with it.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FERRY_BENCH_MIB` | 1024 | the file size in MiB |
//! | `FERRY_BENCH_RUNS` | 2 | runs of each network measurement (the best is compared) |
//! | `FERRY_BENCH_DIR` | the system temp dir | where the temporary directory goes (the disk measured) |
//! | `FERRY_BENCH_WORKERS` | available CPUs | worker threads of each of the three runtimes |
//! | `FERRY_BENCH_BIG_MIB` | 10240 | the size of the big file, whose RSS is compared with the first row's |
//! | `FERRY_BENCH_WAN_MIB` | 256 | the file size across 50 ms of RTT |
//! | `FERRY_BENCH_WAN_LOSS` | 1 | the share of datagrams lost across 50 ms of RTT, in percent, round trip (half of it each way) |
//! | `FERRY_BENCH_WAN_SEED` | drawn from the clock | the relay's seed for which datagrams it drops (printed; no effect with netem) |
//! | `FERRY_BENCH_SKIP` | none | parts to leave out, comma-separated: `big` (the big file), `diag` (rows k, l, e, and w at 50 ms), `local` (b, c, f, g, j), `wan` |
//! | `FERRY_BENCH_SWEEP` | none | extra raw-quinn rows on loopback and at 50 ms: `window:buffer,...`, the stream window in MiB and the socket buffers in KiB (0: system default); e.g. `8:4096,32:4096` |
//! | `FERRY_BENCH_NETEM` | unset | `off`: build the namespaces without netem (a check of the plumbing, no delay and no loss) |
//! | `FERRY_BENCH_SPLIT` | unset | `1`: the sending side (org-a), the receiving side (org-b) and the rest each get their own runtime (`FERRY_BENCH_WORKERS` threads each), and CPU time is broken down by side; for profiling, not for the headline figures (more threads than CPUs) |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ferry::identity::{Fingerprint, Identity};
use ferry::peer::{Peer, Peers};
use ferry::wire::{self, Answer, Opening};

#[path = "../tests/support/mod.rs"]
mod support;
use support::cpu::{cpu_has, cpu_model, load_average, own_kib, reset_peak_rss, RssSampler, Snapshot};
use support::files::{bytes, make_file_seeded};
use support::lossy::DelayRelay;
use support::netns::TestNet;
use support::report::{pass, render, thousands};

/// ferry must reach this share of raw quinn with the receiver hashing once and writing with fsync
/// (the faster (a′)), and across 50 ms of RTT with loss this share of raw quinn with its settings.
const TARGET_SHARE_OF_QUINN: f64 = 0.90;
/// Peak RSS per node.
const TARGET_RSS_MIB: f64 = 100.0;
/// The big file's peak RSS may exceed the first row's by at most this share.
const TARGET_RSS_GROWTH: f64 = 0.10;
/// The room the big file leaves free on the disk, besides its source and its received copy.
const BIG_SPARE: u64 = 1 << 30;
/// Alignment of direct I/O in memory, offsets and lengths (the largest logical block size in use).
const ALIGN: usize = 4096;
/// Pieces queued between the (a′) receiver and its writer thread, as `ferry::transfer` queues.
const DEPTH: usize = 4;
/// The label of ferry's row, which `bench/compare.sh` looks for in the markdown table.
const FERRY_ROW: &str = "ferry: request → service called";
/// The piece size of every file read and write here, as `ferry::transfer` uses.
const PIECE: usize = ferry::transfer::CHUNK;
const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    size: u64,
    runs: usize,
    dir: PathBuf,
    workers: usize,
    split: bool,
    /// The size of the big file.
    big_size: u64,
    /// The file size across 50 ms of RTT.
    wan_size: u64,
    /// The share of datagrams lost across 50 ms of RTT, round trip, in percent.
    wan_loss_pct: f64,
    /// The relay's seed for which datagrams it drops.
    wan_seed: u64,
    /// Parts left out (`FERRY_BENCH_SKIP`).
    skip: Vec<String>,
    /// Extra raw-quinn rows: (stream window, socket buffer) in bytes (`FERRY_BENCH_SWEEP`).
    sweep: Vec<(u32, usize)>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v} is not a valid value")),
                Err(_) => Ok(default),
            }
        }
        let mib: u64 = var("FERRY_BENCH_MIB", 1024)?;
        ensure!(mib > 0, "FERRY_BENCH_MIB must be at least 1");
        let loss: f64 = var("FERRY_BENCH_WAN_LOSS", 1.0)?;
        ensure!((0.0..100.0).contains(&loss), "FERRY_BENCH_WAN_LOSS is a percentage from 0 to below 100, not {loss}");
        let clock =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Settings {
            size: mib << 20,
            runs: var("FERRY_BENCH_RUNS", 2usize)?.max(1),
            dir: std::env::var_os("FERRY_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
            workers: var("FERRY_BENCH_WORKERS", std::thread::available_parallelism().map_or(2, |n| n.get()))?.max(1),
            split: std::env::var("FERRY_BENCH_SPLIT").is_ok_and(|v| v == "1"),
            big_size: var("FERRY_BENCH_BIG_MIB", 10_240u64)?.max(1) << 20,
            wan_size: var("FERRY_BENCH_WAN_MIB", 256u64)?.max(1) << 20,
            wan_loss_pct: loss,
            wan_seed: var("FERRY_BENCH_WAN_SEED", clock)?,
            skip: std::env::var("FERRY_BENCH_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            sweep: std::env::var("FERRY_BENCH_SWEEP")
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    let (w, b) = p.trim().split_once(':').unwrap_or((p.trim(), "0"));
                    let w: f64 = w.parse().map_err(|_| anyhow::anyhow!("FERRY_BENCH_SWEEP: bad window {w}"))?;
                    let b: usize = b.parse().map_err(|_| anyhow::anyhow!("FERRY_BENCH_SWEEP: bad buffer {b}"))?;
                    anyhow::Ok(((w * MIB) as u32, b << 10))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn runs(&self, part: &str) -> bool {
        !self.skip.iter().any(|p| p == part)
    }
}

/// Where the sending side and the receiving side run: their own runtimes, or (shared) the main one.
struct Runtimes {
    send: tokio::runtime::Handle,
    recv: tokio::runtime::Handle,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this bench takes its settings from the environment.
    let settings = Settings::from_env()?;
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.workers)
            .thread_name(name)
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")
    };
    let main_rt = runtime("b-main")?;
    let (send_rt, recv_rt) =
        if settings.split { (Some(runtime("b-send")?), Some(runtime("b-recv")?)) } else { (None, None) };
    let handle =
        |rt: &Option<tokio::runtime::Runtime>| rt.as_ref().map_or(main_rt.handle().clone(), |r| r.handle().clone());
    let runtimes = Runtimes { send: handle(&send_rt), recv: handle(&recv_rt) };
    let started = Instant::now();
    let result = main_rt.block_on(bench(&settings, &runtimes));
    eprintln!("the bench took {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// One measured figure.
struct Figure {
    what: String,
    seconds: Vec<f64>,
    /// Bytes moved in each run; `None`: the table's size.
    bytes: Option<u64>,
    /// What the row is to the targets.
    role: Role,
    /// CPU seconds of the best run by component (`send`, `recv`, `main`, `other`).
    cpu: Option<Cpu>,
    note: String,
}

/// What a row is to the printed targets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// ferry's one-file row, the one the targets are about.
    Ferry,
    /// ferry's four-files-at-once row (target: at least the one-file row's speed).
    Four,
    /// A limit ferry's row is held to (the faster of them counts).
    Limit,
    /// A figure to compare by eye.
    Plain,
}

impl Figure {
    fn best(&self) -> f64 {
        self.seconds.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Bytes per second of the best run, given the table's size.
    fn rate(&self, size: u64) -> f64 {
        self.bytes.unwrap_or(size) as f64 / self.best()
    }
}

/// Runs `f` `n` times (its argument: the run, from 0), timing each run as `f` reports it and
/// keeping the CPU time of the best one.
async fn runs(
    n: usize,
    what: &str,
    note: &str,
    mut f: impl AsyncFnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Figure> {
    let mut figure = Figure {
        what: what.to_owned(),
        seconds: vec![],
        bytes: None,
        role: Role::Plain,
        cpu: None,
        note: note.to_owned(),
    };
    for run in 0..n {
        let before = Snapshot::now();
        let secs = f(run).await?;
        let cpu = Snapshot::now().zip(before).map(|(after, before)| Cpu::since(&after, &before));
        if figure.seconds.iter().all(|s| secs < *s) {
            figure.cpu = cpu;
        }
        figure.seconds.push(secs);
    }
    eprintln!("  {what}: {}", figure.seconds.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(", "));
    Ok(figure)
}

async fn bench(settings: &Settings, runtimes: &Runtimes) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.dir).with_context(|| format!("cannot create {}", settings.dir.display()))?;
    let root = tempfile::Builder::new().prefix("ferry-bench-files-").tempdir_in(&settings.dir)?;
    let (size, n) = (settings.size, settings.runs);
    println!("ferry file bench: one {} file from org-a to org-b on loopback", human(size));
    println!(
        "{} CPUs ({}{}), load average {} at start; {}, {} worker threads per runtime",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        if cpu_has("sha_ni") { ", SHA-NI" } else { ", no SHA-NI" },
        load_average(),
        if settings.split {
            "split runtimes: b-send (org-a, senders), b-recv (org-b, receivers), b-main (host client, service, bench)"
        } else {
            "one tokio runtime for everything (FERRY_BENCH_SPLIT=1 splits it by side)"
        },
        settings.workers,
    );
    println!("temporary directory (the disk measured): {}", root.path().display());

    let service = Service::start().await?;
    let nodes = Nodes::start(root.path(), service.addr, runtimes, None, true).await?;
    let source = nodes.a_dir.join("outbox/big.bin");
    let t = Instant::now();
    let source_sha = make_file(&source, size, 1)?;
    println!(
        "source file written in {:.1} s (it stays in the page cache: reads below come from memory, not the disk)\n",
        t.elapsed().as_secs_f64()
    );

    let mut figures: Vec<Figure> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // ferry, node to node: one file, a big one, four at once, on the same nodes.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3600)).build()?;
    nodes.warm_up(&client).await?;
    let mut answered = f64::INFINITY;
    let (mut rss, mut first_rss) = (Rss::default(), Rss::default());
    let mut ferry = runs(n, FERRY_ROW, "", async |run| {
        let ((called, total), seen) = peak_rss(ferry_once(&client, nodes.a_api, &service, &source, size)).await?;
        eprintln!(
            "  ferry run {}: service called after {called:.2} s, answer after {total:.2} s; RSS before {} MiB, peak {} MiB",
            run + 1,
            seen.before_kib / 1024,
            seen.peak_kib() / 1024
        );
        answered = answered.min(total - called);
        if run == 0 {
            first_rss = seen.clone();
        }
        rss.merge(&seen);
        Ok(called)
    })
    .await?;
    ferry.role = Role::Ferry;
    ferry.note = format!("sync request with `file`; its answer came {answered:.3} s after the service call");
    figures.push(ferry);
    figures.push(four_at_once(&nodes, &client, &service, size, n).await?);
    nodes.stop().await;

    // The same with org-b writing through the page cache ([files] direct_io = false).
    let cached = root.path().join("cached");
    std::fs::create_dir_all(&cached)?;
    let nodes = Nodes::start(&cached, service.addr, runtimes, None, false).await?;
    let cached_source = nodes.a_dir.join("outbox/big.bin");
    std::fs::hard_link(&source, &cached_source)?;
    nodes.warm_up(&client).await?;
    figures.push(
        runs(
            n,
            "ferry, org-b writing through the page cache",
            "[files] direct_io = false on org-b: the same sync, every 32 MiB, and synced pages dropped from the cache",
            async |_| Ok(ferry_once(&client, nodes.a_api, &service, &cached_source, size).await?.0),
        )
        .await?,
    );
    let mut four = four_at_once(&nodes, &client, &service, size, n).await?;
    four.what = format!("{}, org-b writing through the page cache", four.what);
    four.role = Role::Plain;
    figures.push(four);
    nodes.stop().await;
    let _ = std::fs::remove_dir_all(&cached);

    // The big file last, on fresh nodes, so that its RSS compares with the first run's (fresh
    // nodes too), and so that the host's write-back of its GiB slows no later row.
    let fresh = root.path().join("fresh");
    std::fs::create_dir_all(&fresh)?;
    let nodes = Nodes::start(&fresh, service.addr, runtimes, None, true).await?;
    nodes.warm_up(&client).await?;
    let big_rss = if settings.runs("big") {
        match big_file(settings.big_size, &nodes, &client, &service).await? {
            Ok((figure, rss)) => {
                figures.push(figure);
                Ok(rss)
            }
            Err(why) => Err(why),
        }
    } else {
        Err("left out (FERRY_BENCH_SKIP=big)".to_owned())
    };
    nodes.stop().await;
    let _ = std::fs::remove_dir_all(&fresh);

    // (a′) the physical limit, (a) raw quinn, and the same with ferry's hashing added.
    let quinn = QuinnPair::start(runtimes, ferry::link::Transport::default()).await?;
    let written = root.path().join("quinn-received.bin");
    for direct in [false, true] {
        let (what, how) = if direct {
            (
                "(a′) raw quinn, receiver hashes once + writes (direct I/O) + fsync",
                "with O_DIRECT (the pieces 4 KiB-aligned, as ferry's receiver writes)",
            )
        } else {
            ("(a′) raw quinn, receiver hashes once + writes (page cache) + fsync", "through the page cache (std::fs)")
        };
        if direct {
            if let Err(why) = direct_io_works(root.path()) {
                notes.push(format!("(a′) with direct I/O: skipped, {why}"));
                continue;
            }
        }
        let note = format!(
            "receive task hashes inline and hands 1 MiB pieces ({DEPTH} queued at most) to a blocking thread that writes them {how} \
             to the bench's directory, the size reserved first (fallocate KEEP_SIZE, as ferry's receiver does), and fsyncs at the end, then answers"
        );
        let disk = Disk { path: written.clone(), direct, size };
        let mut figure = runs(n, what, &note, async |_| quinn.raw_to_disk(size, &disk, runtimes).await).await?;
        figure.role = Role::Limit;
        figures.push(figure);
    }
    let note = "sender writes from memory (write_all), receiver read_chunk";
    figures.push(
        runs(n, "(a) raw quinn, 1 stream, receiver hashes (SHA-256)", note, async |_| {
            quinn.raw(size, 0, 1, runtimes).await
        })
        .await?,
    );
    figures.push(
        runs(n, "(a) raw quinn, 1 stream, receiver discards", note, async |_| quinn.raw(size, 0, 0, runtimes).await)
            .await?,
    );
    if settings.runs("diag") {
        figures.push(
            runs(
                n,
                "(k) raw quinn + ferry's hashing: 2 SHA-256 passes each side",
                "sender: per chunk + whole; receiver: per chunk + whole; inline, no files",
                async |_| quinn.raw(size, 2, 2, runtimes).await,
            )
            .await?,
        );
        figures.push(
            runs(
                n,
                "(l) raw quinn + 1 SHA-256 pass each side",
                "the whole-file hash only (no per-chunk SHA-256); inline, no files",
                async |_| quinn.raw(size, 1, 1, runtimes).await,
            )
            .await?,
        );

        // ferry's file code over raw quinn, without the nodes.
        let folders = ferry::transfer::Folders::new(&root.path().join("transfer-only"), u64::MAX);
        figures.push(
            runs(
                n,
                "(e) ferry::transfer send → receive over raw quinn",
                "src/transfer.rs alone: no nodes, store, HTTP or service",
                async |run| {
                    let (secs, sha) = quinn.transfer(&source, &format!("bench-{run}"), &folders, runtimes).await?;
                    ensure!(hex::encode(sha) == source_sha, "ferry::transfer delivered another SHA-256");
                    Ok(secs)
                },
            )
            .await?,
        );
        quinn.stop().await;
        let _ = std::fs::remove_dir_all(root.path().join("transfer-only"));
    } else {
        quinn.stop().await;
    }

    // The windows before they were sized (quinn's stream window, default socket buffers), and
    // any asked for with FERRY_BENCH_SWEEP.
    let mut settings_tried =
        vec![(previous_transport(), "(a0) as (a) hashing, previous windows".to_owned(), previous_note())];
    for &(window, buffer) in &settings.sweep {
        let t = ferry::link::Transport::windows(window, buffer);
        settings_tried.push((t.clone(), format!("(s) as (a) hashing, {}", describe(&t)), String::new()));
    }
    for (transport, what, note) in settings_tried {
        let quinn = QuinnPair::start(runtimes, transport).await?;
        figures.push(runs(n, &what, &note, async |_| quinn.raw(size, 0, 1, runtimes).await).await?);
        quinn.stop().await;
    }
    if settings.runs("local") {
        // (b) SHA-256 in memory.
        let data = bytes(size as usize, 7);
        figures.push(
            runs(1, "(b) SHA-256 in memory (sha2)", "one thread", async |_| {
                let t = Instant::now();
                std::hint::black_box(Sha256::digest(&data));
                Ok(t.elapsed().as_secs_f64())
            })
            .await?,
        );
        drop(data);

        // (c) write + fsync; reads of the source; each side's file work without network.
        let scratch = root.path().join("scratch.bin");
        let one = async |what: &str, note: &str, f: &mut dyn FnMut() -> anyhow::Result<f64>| {
            runs(1, what, note, async |_| f()).await
        };
        let mut fsync = 0.0;
        let mut figure =
            one("(c) write + fsync (std::fs, 1 MiB writes)", "", &mut || write_fsync_std(&scratch, size, &mut fsync))
                .await?;
        figure.note = format!("same disk as the data dirs; the final fsync took {fsync:.2} s of it");
        figures.push(figure);
        std::fs::remove_file(&scratch)?;
        let mut figure = runs(1, "(j) write + fsync (tokio::fs, 1 MiB writes)", "", async |_| {
            write_fsync_tokio(&scratch, size, &mut fsync).await
        })
        .await?;
        figure.note = format!(
            "through the page cache (transfer::receive writes with direct I/O where it can); the final flush + fsync took {fsync:.2} s of it"
        );
        figures.push(figure);
        std::fs::remove_file(&scratch)?;
        figures.push(one("(f) read the source (std::fs, 1 MiB reads)", "page cache", &mut || read_std(&source)).await?);
        figures.push(
            runs(
                1,
                "(g) read the source (tokio::fs, 1 MiB reads)",
                "page cache (transfer::send reads with std::fs on a blocking thread)",
                async |_| read_tokio(&source).await,
            )
            .await?,
        );
    }

    // 50 ms of RTT, with loss.
    let (mut wan_figures, mut wan_how) = (Vec::new(), String::new());
    if settings.runs("wan") {
        match Wan::build(settings) {
            Err(reason) => notes.push(format!("50 ms RTT: skipped: {reason}")),
            Ok(wan) => {
                wan_how = wan.describe();
                eprintln!("across 50 ms of RTT: {wan_how}");
                wan_figures = across_wan(&wan, settings, runtimes, root.path(), &service, &client).await?;
                drop(wan);
            }
        }
    }

    report(settings, &figures, &rss, &first_rss, &big_rss, &notes);
    report_wan(settings, &wan_figures, &wan_how);
    std::fs::remove_file(&source)?;
    drop(root);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// The process's resident memory during a transfer.
#[derive(Clone, Default)]
struct Rss {
    /// VmRSS just before.
    before_kib: u64,
    /// The largest VmRSS sampled during it.
    sampled_kib: u64,
    /// VmHWM after it, when it could be reset before.
    hwm_kib: Option<u64>,
    /// What the transfer itself added: its peak less VmRSS just before (of the latest run, once
    /// merged: the one in the state the next transfer starts from).
    growth_kib: u64,
}

impl Rss {
    /// The peak: VmHWM where it could be reset, else the sampled maximum.
    fn peak_kib(&self) -> u64 {
        self.hwm_kib.unwrap_or(self.sampled_kib)
    }

    /// The larger of each reading, and the latest run's growth.
    fn merge(&mut self, other: &Rss) {
        self.growth_kib = other.growth_kib;
        self.before_kib = self.before_kib.max(other.before_kib);
        self.sampled_kib = self.sampled_kib.max(other.sampled_kib);
        self.hwm_kib = match (self.hwm_kib, other.hwm_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// How it was read, for a note.
    fn describe(&self) -> String {
        format!(
            "{}: {:.0} MiB; sampled VmRSS max {:.0} MiB; VmRSS before the transfer {:.0} MiB, so the transfer added {:.0} MiB; both nodes, service and client in one process",
            if self.hwm_kib.is_some() { "VmHWM (reset before the transfer)" } else { "VmRSS sampled (VmHWM could not be reset)" },
            self.peak_kib() as f64 / 1024.0,
            self.sampled_kib as f64 / 1024.0,
            self.before_kib as f64 / 1024.0,
            self.growth_kib as f64 / 1024.0
        )
    }
}

/// Runs `work` while watching this process's resident memory: VmHWM reset before and read after
/// (Linux), and VmRSS sampled every 5 ms.
async fn peak_rss<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Rss)> {
    let reset = reset_peak_rss();
    let before_kib = own_kib("VmRSS").unwrap_or(0);
    let sampler = RssSampler::start();
    let out = work.await;
    let sampled_kib = sampler.stop();
    let out = out?;
    let hwm_kib = if reset { own_kib("VmHWM") } else { None };
    let growth_kib = hwm_kib.unwrap_or(sampled_kib).saturating_sub(before_kib);
    Ok((out, Rss { before_kib, sampled_kib, hwm_kib, growth_kib }))
}

/// The columns of both tables; `split`: CPU time broken down by side.
fn headers(split: bool) -> [&'static str; 11] {
    [
        "measurement",
        "runs (s)",
        "best (s)",
        "GB/s",
        "MiB/s",
        "ferry speed ×",
        if split { "CPU s send/recv/main +other" } else { "CPU s" },
        "others' CPUs",
        "target",
        "result",
        "note",
    ]
}

impl Figure {
    /// Its row of a table ([`headers`]): measured at `rate` bytes/s, against ferry's `ferry`.
    fn row(&self, rate: f64, ferry: f64, split: bool, target: String, result: String) -> Vec<String> {
        vec![
            self.what.clone(),
            self.seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", "),
            format!("{:.2}", self.best()),
            format!("{:.2}", rate / 1e9),
            mib_per_s(rate),
            if self.role == Role::Ferry { String::new() } else { format!("{:.2}", ferry / rate) },
            self.cpu.as_ref().map_or(String::new(), |c| c.summary(split)),
            self.cpu.as_ref().and_then(|c| c.others_share).map_or(String::new(), |o| format!("{o:.2}")),
            target,
            result,
            self.note.clone(),
        ]
    }
}

/// `PASS (93%)`: whether `share` reaches `target`, and the share.
fn share_result(share: f64, target: f64) -> String {
    format!("{} ({:.0}%)", pass(share >= target), share * 100.0)
}

/// Prints the loopback table; `first` is the first ferry run's memory (fresh nodes, as the big
/// file's).
fn report(
    settings: &Settings,
    figures: &[Figure],
    rss: &Rss,
    first: &Rss,
    big_rss: &Result<Rss, String>,
    notes: &[String],
) {
    let size = settings.size;
    let ferry = figures.iter().find(|f| f.role == Role::Ferry).map_or(f64::NAN, |f| f.rate(size));
    // The physical limit: the faster of the (a′) rows.
    let limit = figures.iter().filter(|f| f.role == Role::Limit).map(|f| f.rate(size)).reduce(f64::max);
    let headers = headers(settings.split);
    let mut rows = Vec::new();
    for f in figures {
        let rate = f.rate(size);
        let (target, result) = match (f.role, limit) {
            (Role::Ferry, Some(limit)) => (
                format!("≥ {:.0}% of the faster (a′)", TARGET_SHARE_OF_QUINN * 100.0),
                share_result(ferry / limit, TARGET_SHARE_OF_QUINN),
            ),
            (Role::Four, _) => ("four at once ≥ one file's MiB/s".to_owned(), share_result(rate / ferry, 1.0)),
            _ => (String::new(), String::new()),
        };
        rows.push(f.row(rate, ferry, settings.split, target, result));
    }
    let rss_row = |what: String, target: String, result: String, note: String| {
        let mut row = vec![what];
        row.extend(std::iter::repeat_n(String::new(), 7));
        row.extend([target, result, note]);
        row
    };
    let peak_mib = rss.peak_kib() as f64 / 1024.0;
    rows.push(rss_row(
        format!("peak RSS during the {} ferry transfer (whole process)", human(size)),
        format!("< {TARGET_RSS_MIB:.0} MiB per node"),
        format!("{} ({peak_mib:.0} MiB for both nodes)", pass(peak_mib < 2.0 * TARGET_RSS_MIB)),
        rss.describe(),
    ));
    let big_what = format!("peak RSS during the {} ferry transfer (whole process)", human(settings.big_size));
    let big_target = format!(
        "< {TARGET_RSS_MIB:.0} MiB per node; adds within +{:.0}% of what the first {} transfer added",
        TARGET_RSS_GROWTH * 100.0,
        human(size)
    );
    rows.push(match big_rss {
        Ok(big) => {
            let big_mib = big.peak_kib() as f64 / 1024.0;
            let growth = big.growth_kib as f64 / first.growth_kib.max(1) as f64 - 1.0;
            let ok = big_mib < 2.0 * TARGET_RSS_MIB && growth <= TARGET_RSS_GROWTH;
            rss_row(
                big_what,
                big_target,
                format!(
                    "{} ({big_mib:.0} MiB for both nodes; added {:.0} MiB, {:+.0}% on the {} transfer's)",
                    pass(ok),
                    big.growth_kib as f64 / 1024.0,
                    growth * 100.0,
                    human(size)
                ),
                big.describe(),
            )
        }
        Err(why) => rss_row(big_what, big_target, "skipped".into(), why.clone()),
    });
    println!("{}", render(&headers, &rows, false));
    for n in notes {
        println!("{n}");
    }
    println!(
        "\nTargets (printed, not asserted): ferry ≥ {:.0}% of raw quinn with the receiver hashing once and writing with fsync (the faster (a′)); \
         four files at once at least as fast as one; RSS < {TARGET_RSS_MIB:.0} MiB per node, and what the big file's transfer adds within +{:.0}% of what the first row's adds.",
        TARGET_SHARE_OF_QUINN * 100.0,
        TARGET_RSS_GROWTH * 100.0
    );
    println!("ferry against scp and rsync over ssh: bench/compare.sh (it installs and starts its own sshd).");
    println!("GB/s = 10^9 bytes per second; \"ferry speed ×\" = ferry's speed ÷ this one's (above 1: ferry is faster by that factor; for the same size, this one's best time ÷ ferry's).");
    if settings.split {
        println!("CPU s: user + system seconds of the best run on the b-send (org-a / sender), b-recv (org-b / receiver) and b-main (client, service, bench) threads, + other threads of this process.");
    } else {
        println!("CPU s: user + system seconds this process used in the best run (both sides; FERRY_BENCH_SPLIT=1 breaks it down by side).");
    }
    println!(
        "others' CPUs: CPU used meanwhile by other processes on the machine, in cores (their load slows every figure)."
    );
    println!("\nMarkdown:\n");
    println!("{}", render(&headers, &rows, true));
}

/// The transport settings before the windows were sized: quinn's stream window (1.25 MB), the
/// system's socket buffers.
fn previous_transport() -> ferry::link::Transport {
    ferry::link::Transport {
        stream_receive_window: 1_250_000,
        receive_window: 16 * 1_250_000,
        send_window: 8 * 1_250_000,
        socket_buffer: 0,
        ..ferry::link::Transport::default()
    }
}

fn previous_note() -> String {
    format!("{}; now: {}", describe(&previous_transport()), describe(&ferry::link::Transport::default()))
}

/// `stream 16 MiB, conn 32 MiB, send 32 MiB, sockbuf 4096 KiB`.
fn describe(t: &ferry::link::Transport) -> String {
    let mib = |b: f64| {
        let m = b / MIB;
        if (m - m.round()).abs() < 0.01 {
            format!("{m:.0} MiB")
        } else {
            format!("{m:.2} MiB")
        }
    };
    format!(
        "stream window {}, conn {}, send {}, socket buffers {}",
        mib(t.stream_receive_window as f64),
        mib(t.receive_window as f64),
        mib(t.send_window as f64),
        if t.socket_buffer == 0 { "system default".to_owned() } else { format!("{} KiB asked", t.socket_buffer >> 10) }
    )
}

/// One synchronous request with `file` from org-a's API that the service answered with 200.
async fn post_file(client: &reqwest::Client, api: SocketAddr, source: &Path) -> anyhow::Result<()> {
    let response = client
        .post(format!("http://{api}/v1/requests"))
        .json(&json!({
            "peer": "org-b", "service": "1", "path": "/upload", "method": "POST",
            "file": source, "file_field": "file", "timeout_ms": 3_600_000,
        }))
        .send()
        .await?;
    let status = response.status();
    let envelope: Value = response.json().await?;
    ensure!(status == 200 && envelope["data"]["status"] == 200, "the ferry request failed: {status} {envelope}");
    Ok(())
}

/// Checks that the service was given a file of `size` bytes at `path`, and removes it.
fn check_and_remove(path: &Path, size: u64) -> anyhow::Result<()> {
    let got = std::fs::metadata(path).with_context(|| format!("the received file {}", path.display()))?.len();
    ensure!(got == size, "the service got a file of {got} bytes, not {size}");
    std::fs::remove_file(path)?;
    Ok(())
}

/// One synchronous request with `file` from org-a's API; seconds until the service was called,
/// and until the answer. The received file is checked for its size and removed.
async fn ferry_once(
    client: &reqwest::Client,
    api: SocketAddr,
    service: &Service,
    source: &Path,
    size: u64,
) -> anyhow::Result<(f64, f64)> {
    service.reset();
    let t0 = Instant::now();
    post_file(client, api, source).await?;
    let total = t0.elapsed().as_secs_f64();
    let calls = service.calls();
    let [(called, path)] = &calls[..] else { bail!("the service was called {} times, not once", calls.len()) };
    check_and_remove(path, size)?;
    Ok((called.duration_since(t0).as_secs_f64(), total))
}

/// Four synchronous requests sent together, each with its own file of a quarter of `size`:
/// seconds from the first request to the last service call.
async fn four_at_once(
    nodes: &Nodes,
    client: &reqwest::Client,
    service: &Service,
    size: u64,
    n: usize,
) -> anyhow::Result<Figure> {
    let quarter = size / 4;
    let sources: Vec<PathBuf> = (0..4).map(|i| nodes.a_dir.join(format!("outbox/quarter-{i}.bin"))).collect();
    for (seed, source) in (11..).zip(&sources) {
        make_file(source, quarter, seed)?;
    }
    let what = format!("ferry: four files of {} at once, first request → last service call", human(quarter));
    let mut figure = runs(n, &what, "", async |_| {
        service.reset();
        let t0 = Instant::now();
        let posts = futures::future::join_all(sources.iter().map(|s| post_file(client, nodes.a_api, s))).await;
        let answered = t0.elapsed().as_secs_f64();
        posts.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let calls = service.calls();
        ensure!(calls.len() == 4, "the service was called {} times, not 4", calls.len());
        let last = calls.iter().map(|(at, _)| *at).max().unwrap_or(t0);
        for (_, path) in &calls {
            check_and_remove(path, quarter)?;
        }
        let secs = last.duration_since(t0).as_secs_f64();
        eprintln!("  four at once: last service call after {secs:.2} s, last answer after {answered:.2} s");
        Ok(secs)
    })
    .await?;
    figure.bytes = Some(4 * quarter);
    figure.role = Role::Four;
    figure.note = "four sync requests with `file` sent together (one connection between the nodes)".into();
    for source in &sources {
        std::fs::remove_file(source)?;
    }
    Ok(figure)
}

/// One synchronous request with a file of `size` bytes, and the process's peak RSS during it;
/// or why there is no room for it on the disk. The files are removed afterwards, also on error.
async fn big_file(
    size: u64,
    nodes: &Nodes,
    client: &reqwest::Client,
    service: &Service,
) -> anyhow::Result<Result<(Figure, Rss), String>> {
    let name = format!("big-{}.bin", size >> 20);
    let source = nodes.a_dir.join("outbox").join(&name);
    let need = size.saturating_mul(2).saturating_add(BIG_SPARE);
    match free_bytes(&nodes.a_dir) {
        Err(e) => return Ok(Err(format!("cannot tell the free space of {}: {e}", nodes.a_dir.display()))),
        Ok(free) if free < need => {
            return Ok(Err(format!(
                "{} MiB free on the bench's disk; the {} file needs {} MiB (source + received copy + {} MiB spare): \
                 free some, or lower FERRY_BENCH_BIG_MIB, or point FERRY_BENCH_DIR at a larger disk",
                free >> 20,
                human(size),
                need >> 20,
                BIG_SPARE >> 20
            )))
        }
        Ok(_) => {}
    }
    let _cleanup = BigFiles {
        source: source.clone(),
        received: nodes.b_data.join("received"),
        partial: nodes.b_data.join("partial"),
        name,
    };
    let t = Instant::now();
    make_file(&source, size, 2)?;
    eprintln!("  the {} source written and synced in {:.1} s", human(size), t.elapsed().as_secs_f64());
    let (mut rss, mut answered) = (Rss::default(), 0.0);
    let what = format!("ferry: one {} file, request → service called", human(size));
    let mut figure = runs(1, &what, "", async |_| {
        let ((called, total), seen) = peak_rss(ferry_once(client, nodes.a_api, service, &source, size)).await?;
        (rss, answered) = (seen, total - called);
        Ok(called)
    })
    .await?;
    figure.bytes = Some(size);
    figure.note = format!("one run, for its peak RSS (below); the answer came {answered:.3} s after the service call");
    Ok(Ok((figure, rss)))
}

/// The big file's source, its received copy and any partial file of it on org-b: removed when
/// dropped, whether the run ended well or not (nothing else is in flight then).
struct BigFiles {
    source: PathBuf,
    /// org-b's received files, where the copy is looked for by `name`.
    received: PathBuf,
    /// org-b's partial files, all removed.
    partial: PathBuf,
    name: String,
}

impl Drop for BigFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.source);
        let copies = files_under(&self.received).into_iter().filter(|f| f.file_name() == Some(self.name.as_ref()));
        for file in copies.chain(files_under(&self.partial)) {
            if let Err(e) = std::fs::remove_file(&file) {
                eprintln!("cannot remove {}: {e}", file.display());
            }
        }
    }
}

/// The files beneath `dir`, at any depth (none if it cannot be read).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(_) => files.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    files
}

/// Bytes free for an unprivileged user on the file system of `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Across the namespaces or the relay of `wan`: raw quinn with the previous and the current
/// transport settings, then two nodes with their link sockets on it (org-a on side `a`, org-b on
/// side `b`; their APIs, the host client and the service stay on this process's loopback).
async fn across_wan(
    wan: &Wan,
    settings: &Settings,
    runtimes: &Runtimes,
    root: &Path,
    service: &Service,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Figure>> {
    let (size, n) = (settings.wan_size, settings.runs);
    let mut figures = Vec::new();
    let mut tried = vec![
        (previous_transport(), false, "raw quinn, receiver hashes, previous windows".to_owned()),
        (ferry::link::Transport::default(), false, "raw quinn, receiver hashes, ferry's windows".to_owned()),
    ];
    if settings.runs("diag") {
        tried.push((
            ferry::link::Transport::default(),
            true,
            "(w) raw quinn, receiver hashes, ferry's windows, BBR".to_owned(),
        ));
    }
    for &(window, buffer) in &settings.sweep {
        let t = ferry::link::Transport::windows(window, buffer);
        tried.push((t.clone(), false, format!("(s) raw quinn, receiver hashes, {}", describe(&t))));
    }
    for (i, (transport, bbr, what)) in tried.into_iter().enumerate() {
        let note = match bbr {
            true => format!(
                "{}, quinn's BBR instead of Cubic (a controller that does not take loss for congestion)",
                describe(&transport)
            ),
            false => describe(&transport),
        };
        let link = wan.link()?;
        let quinn = QuinnPair::start_on(runtimes, &transport, bbr, link.a, link.b, Some(link.a_to_b)).await?;
        // The previous windows are there to compare with: one run is enough to show them.
        let n = if i == 0 { 1 } else { n };
        let before = quinn.connection.stats().path;
        let mut figure = runs(n, &what, &note, async |_| quinn.raw(size, 0, 1, runtimes).await).await?;
        let after = quinn.connection.stats().path;
        figure.note = format!(
            "{note}; RTT seen by quinn {:.1} ms, {} of {} packets lost, {} congestion events, final cwnd {:.0} KiB{}",
            quinn.connection.rtt().as_secs_f64() * 1e3,
            after.lost_packets - before.lost_packets,
            after.sent_packets - before.sent_packets,
            after.congestion_events - before.congestion_events,
            after.cwnd as f64 / 1024.0,
            link.relay.as_ref().map_or(String::new(), relay_counts)
        );
        // The one with ferry's settings is what ferry is held to.
        if i == 1 {
            figure.role = Role::Limit;
        }
        quinn.stop().await;
        drop(link.relay);
        figures.push(figure);
    }

    let dir = root.join("wan");
    std::fs::create_dir_all(&dir)?;
    let link = wan.link()?;
    let nodes =
        Nodes::start(&dir, service.addr, runtimes, Some((link.a, link.b, link.a_to_b, link.b_to_a)), true).await?;
    let source = nodes.a_dir.join("outbox/wan.bin");
    make_file(&source, size, 1)?;
    nodes.warm_up(client).await?;
    let mut answered = f64::INFINITY;
    let mut figure = runs(n, FERRY_ROW, "", async |_| {
        let (called, total) = ferry_once(client, nodes.a_api, service, &source, size).await?;
        answered = answered.min(total - called);
        Ok(called)
    })
    .await?;
    figure.role = Role::Ferry;
    figure.note = format!(
        "two nodes, {}; the answer came {answered:.3} s after the service call{}",
        describe(&ferry::link::Transport::default()),
        link.relay.as_ref().map_or(String::new(), relay_counts)
    );
    figures.insert(0, figure);
    nodes.stop().await;
    drop(link.relay);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

/// `; the relay dropped 123 of 45,678 datagrams (0.27%)`, both ways together.
fn relay_counts(relay: &DelayRelay) -> String {
    let (dropped, forwarded): (u64, u64) = (relay.dropped().iter().sum(), relay.forwarded().iter().sum());
    let seen = (dropped + forwarded).max(1);
    format!(
        "; the relay dropped {} of {} datagrams ({:.2}%)",
        thousands(dropped as f64),
        thousands(seen as f64),
        dropped as f64 / seen as f64 * 100.0
    )
}

fn report_wan(settings: &Settings, figures: &[Figure], how: &str) {
    let Some(ferry) = figures.iter().find(|f| f.role == Role::Ferry).map(|f| f.rate(settings.wan_size)) else {
        return;
    };
    let limit = figures.iter().find(|f| f.role == Role::Limit).map(|f| f.rate(settings.wan_size));
    println!("\n{} from org-a to org-b across {}: {how}\n", human(settings.wan_size), Wan::title(settings));
    let headers = headers(false);
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            let rate = f.rate(settings.wan_size);
            let (target, result) = match (f.role, limit) {
                (Role::Ferry, Some(limit)) => (
                    format!("≥ {:.0}% of raw quinn, ferry's windows", TARGET_SHARE_OF_QUINN * 100.0),
                    share_result(ferry / limit, TARGET_SHARE_OF_QUINN),
                ),
                _ => (String::new(), String::new()),
            };
            f.row(rate, ferry, false, target, result)
        })
        .collect();
    println!("{}", render(&headers, &rows, false));
    println!(
        "\nTarget (printed, not asserted): ferry ≥ {:.0}% of raw quinn with the same settings (ferry's windows), across the same path.",
        TARGET_SHARE_OF_QUINN * 100.0
    );
    println!("\nMarkdown:\n");
    println!("{}", render(&headers, &rows, true));
}

/// Bytes per second in MiB/s: `187`, or `0.45` below 10.
fn mib_per_s(rate: f64) -> String {
    let mib = rate / MIB;
    if mib < 10.0 {
        format!("{mib:.2}")
    } else {
        format!("{mib:.0}")
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

// ---------------------------------------------------------------------------------------------
// Machine facts: CPU time by thread, RSS
// ---------------------------------------------------------------------------------------------

/// CPU seconds (user + system) used during a run, by component (from the thread names), and by
/// other processes.
#[derive(Clone, Default)]
struct Cpu {
    send: f64,
    recv: f64,
    main: f64,
    /// This process's other threads, also those that ended during the run.
    other: f64,
    /// Other processes on the machine, in CPUs (1.0: one core busy throughout).
    others_share: Option<f64>,
}

impl Cpu {
    /// What this process's threads used between two snapshots, by component (from the runtimes'
    /// thread names; the main thread runs the main runtime's `block_on`), and what other
    /// processes used, in CPUs.
    fn since(after: &Snapshot, before: &Snapshot) -> Cpu {
        let main = u64::from(std::process::id());
        let by = after.by_group(
            before,
            |tid, name| if tid == main { "b-main".to_owned() } else { name.to_owned() },
            "other",
        );
        let mut cpu = Cpu::default();
        for (name, seconds) in by {
            match name.as_str() {
                "b-send" => cpu.send += seconds,
                "b-recv" => cpu.recv += seconds,
                "b-main" => cpu.main += seconds,
                _ => cpu.other += seconds,
            }
        }
        let ours = after.process_since(before);
        let wall = after.wall_since(before).max(1e-3);
        cpu.others_share = after.others_since(before, ours).map(|o| o / wall);
        cpu
    }

    fn summary(&self, split: bool) -> String {
        if !split {
            return format!("{:.1}", self.send + self.recv + self.main + self.other);
        }
        let other = if self.other >= 0.05 { format!(" +{:.1}", self.other) } else { String::new() };
        format!("{:.1}/{:.1}/{:.1}{other}", self.send, self.recv, self.main)
    }
}

// ---------------------------------------------------------------------------------------------
// Files and disks
// ---------------------------------------------------------------------------------------------

/// Writes `size` pseudo-random bytes (no two MiB alike, others for each `seed`) to `path` and
/// syncs it, so that no write-back of it runs during the measurements; its SHA-256 in hex.
fn make_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<String> {
    let sha = make_file_seeded(path, size, seed);
    std::fs::File::open(path)?.sync_all()?;
    Ok(sha)
}

/// Seconds for the whole; `fsync` gets the seconds of the final fsync alone.
fn write_fsync_std(path: &Path, size: u64, fsync: &mut f64) -> anyhow::Result<f64> {
    use std::io::Write;
    let block = bytes(PIECE, 3);
    let t = Instant::now();
    let mut file = std::fs::File::create(path)?;
    let mut left = size;
    while left > 0 {
        let take = left.min(PIECE as u64) as usize;
        file.write_all(&block[..take])?;
        left -= take as u64;
    }
    let f = Instant::now();
    file.sync_all()?;
    *fsync = f.elapsed().as_secs_f64();
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds for the whole; `fsync` gets the seconds of the final flush and fsync alone.
async fn write_fsync_tokio(path: &Path, size: u64, fsync: &mut f64) -> anyhow::Result<f64> {
    let block = bytes(PIECE, 3);
    let t = Instant::now();
    let mut file = tokio::fs::File::create(path).await?;
    let mut left = size;
    while left > 0 {
        let take = left.min(PIECE as u64) as usize;
        file.write_all(&block[..take]).await?;
        left -= take as u64;
    }
    let f = Instant::now();
    file.flush().await?;
    file.sync_all().await?;
    *fsync = f.elapsed().as_secs_f64();
    Ok(t.elapsed().as_secs_f64())
}

fn read_std(path: &Path) -> anyhow::Result<f64> {
    use std::io::Read;
    let mut buf = vec![0u8; PIECE];
    let t = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    std::hint::black_box(total);
    Ok(t.elapsed().as_secs_f64())
}

/// Reads `path` with tokio::fs in 1 MiB pieces.
async fn read_tokio(path: &Path) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; PIECE];
    let t = Instant::now();
    let mut file = tokio::fs::File::open(path).await?;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// The nodes and the service
// ---------------------------------------------------------------------------------------------

/// When the service was called, and the file path it was given, for each call since the reset.
type Called = Arc<Mutex<Vec<(Instant, PathBuf)>>>;

/// org-b's service: records when `POST /upload` is called and the file path it was given.
#[derive(Clone)]
struct Service {
    addr: SocketAddr,
    called: Called,
}

impl Service {
    async fn start() -> anyhow::Result<Service> {
        let called: Called = Arc::default();
        let app = Router::new()
            .route("/upload", post(upload))
            .route("/ping", post(|| async { Json(json!({"ok": true})) }))
            .with_state(called.clone());
        let addr = support::serve(app, false).await;
        Ok(Service { addr, called })
    }

    fn reset(&self) {
        self.called.lock().unwrap().clear();
    }

    /// The calls since the reset, in the order they came.
    fn calls(&self) -> Vec<(Instant, PathBuf)> {
        self.called.lock().unwrap().clone()
    }
}

async fn upload(State(called): State<Called>, body: Bytes) -> Json<Value> {
    let at = Instant::now();
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let path = form.into_iter().find(|(k, _)| k == "file").map(|(_, v)| PathBuf::from(v)).unwrap_or_default();
    called.lock().unwrap().push((at, path));
    Json(json!({"ok": true}))
}

/// org-a (on the `send` runtime) and org-b (on the `recv` runtime), pinned both ways; org-b offers
/// service 1 to org-a.
struct Nodes {
    a: support::Node,
    b: support::Node,
    a_dir: PathBuf,
    a_api: SocketAddr,
    /// org-b's data directory (received and partial files).
    b_data: PathBuf,
}

impl Nodes {
    /// With `links`, the nodes' link sockets (org-a's, org-b's) and the addresses at which each
    /// reaches the other, else both on loopback; their APIs are on loopback either way.
    async fn start(
        root: &Path,
        service: SocketAddr,
        runtimes: &Runtimes,
        links: Option<(std::net::UdpSocket, std::net::UdpSocket, SocketAddr, SocketAddr)>,
        direct_io: bool,
    ) -> anyhow::Result<Nodes> {
        let (a_link, b_link, a_to_b, b_to_a) = match links {
            Some((a, b, a_to_b, b_to_a)) => (a, b, Some(a_to_b), Some(b_to_a)),
            None => (std::net::UdpSocket::bind("127.0.0.1:0")?, std::net::UdpSocket::bind("127.0.0.1:0")?, None, None),
        };
        let api = || std::net::TcpListener::bind("127.0.0.1:0");
        let mut a = support::Node::create_on(root, "org-a", api()?, a_link);
        let mut b = support::Node::create_on(root, "org-b", api()?, b_link);
        a.add_peer_at(&b, a_to_b.unwrap_or(b.link));
        b.add_peer_at(&a, b_to_a.unwrap_or(a.link));
        b.add_service("1", &format!("http://{service}"), &["org-a"]);
        if !direct_io {
            let config = std::fs::read_to_string(&b.config_path)?;
            ensure!(config.contains("\n[files]\n"), "org-b's config has no [files] section");
            std::fs::write(&b.config_path, config.replace("\n[files]\n", "\n[files]\ndirect_io = false\n"))?;
        }
        a.spawn_on(&runtimes.send);
        b.spawn_on(&runtimes.recv);
        for node in [&mut a, &mut b] {
            node.serving(Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
        }
        Ok(Nodes { a_dir: a.dir.clone(), a_api: a.api, b_data: b.data_dir(), a, b })
    }

    /// One request without a file, so that org-a has its connection to org-b before measuring.
    async fn warm_up(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let mut last = String::new();
        for _ in 0..50 {
            let r = client
                .post(format!("http://{}/v1/requests", self.a_api))
                .json(&json!({"peer": "org-b", "service": "1", "path": "/ping", "method": "POST"}))
                .send()
                .await?;
            let env: Value = r.json().await?;
            if env["data"]["status"] == 200 {
                return Ok(());
            }
            last = env.to_string();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the warm-up request never succeeded: {last}")
    }

    async fn stop(mut self) {
        for node in [&mut self.a, &mut self.b] {
            if let Err(e) = node.stop_within(Duration::from_secs(15)).await {
                eprintln!("{e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw quinn
// ---------------------------------------------------------------------------------------------

/// A client endpoint (on the `send` runtime) connected to a server endpoint (on the `recv`
/// runtime), with ferry's TLS configurations and transport settings.
struct QuinnPair {
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    connection: quinn::Connection,
    incoming: Arc<tokio::sync::Mutex<quinn::Connection>>,
}

impl QuinnPair {
    /// On loopback.
    async fn start(runtimes: &Runtimes, transport: ferry::link::Transport) -> anyhow::Result<QuinnPair> {
        let socket = || std::net::UdpSocket::bind("127.0.0.1:0");
        QuinnPair::start_on(runtimes, &transport, false, socket()?, socket()?, None).await
    }

    /// The client on `client_socket`, the server on `server_socket`; both tuned as ferry's link
    /// tunes its socket; with `bbr`, quinn's BBR congestion controller instead of its default
    /// (Cubic).
    async fn start_on(
        runtimes: &Runtimes,
        transport: &ferry::link::Transport,
        bbr: bool,
        client_socket: std::net::UdpSocket,
        server_socket: std::net::UdpSocket,
        server_addr: Option<SocketAddr>,
    ) -> anyhow::Result<QuinnPair> {
        transport.tune_socket(&client_socket)?;
        transport.tune_socket(&server_socket)?;
        let server_id = Identity::generate("bench-server")?;
        let client_id = Identity::generate("bench-client")?;
        let peers = Peers::default();
        peers.insert(Peer::new("bench-client", ["127.0.0.1:9"], [client_id.cert.clone()]));
        let server_tls = ferry::tls::server_config(&server_id, peers)?;
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?));
        server_config.transport_config(quinn_config(transport, bbr));
        let client_tls = ferry::tls::client_config(&client_id, Fingerprint::of(&server_id.cert))?;
        let mut client_config =
            quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?));
        client_config.transport_config(quinn_config(transport, bbr));

        let server = {
            let _guard = runtimes.recv.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config),
                server_socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let addr = server_addr.map_or_else(|| server.local_addr(), Ok)?;
        let accepting = {
            let server = server.clone();
            runtimes.recv.spawn(async move {
                let incoming = server.accept().await.context("the server endpoint closed")?;
                anyhow::Ok(incoming.await?)
            })
        };
        let client = {
            let _guard = runtimes.send.enter();
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, client_socket, Arc::new(quinn::TokioRuntime))?
        };
        let connection = {
            let client = client.clone();
            runtimes
                .send
                .spawn(async move { anyhow::Ok(client.connect_with(client_config, addr, ferry::tls::SERVER_NAME)?.await?) })
                .await??
        };
        let incoming = accepting.await??;
        Ok(QuinnPair { client, server, connection, incoming: Arc::new(tokio::sync::Mutex::new(incoming)) })
    }

    /// `size` bytes on one stream; the receiver reads and answers 32 bytes. Each side makes
    /// `passes` SHA-256 passes over the bytes, inline: 1 = the whole stream, 2 = also each 1 MiB
    /// chunk on its own (as `ferry::transfer` does). Seconds from opening the stream to the answer.
    async fn raw(&self, size: u64, send_passes: u8, recv_passes: u8, runtimes: &Runtimes) -> anyhow::Result<f64> {
        self.raw_into(size, send_passes, recv_passes, None, runtimes).await
    }

    /// As [`QuinnPair::raw`] with one pass on the receiver, which also writes what it reads to
    /// `disk` and fsyncs it before it answers; the file is removed after the answer.
    async fn raw_to_disk(&self, size: u64, disk: &Disk, runtimes: &Runtimes) -> anyhow::Result<f64> {
        self.raw_into(size, 0, 1, Some(disk.clone()), runtimes).await
    }

    async fn raw_into(
        &self,
        size: u64,
        send_passes: u8,
        recv_passes: u8,
        disk: Option<Disk>,
        runtimes: &Runtimes,
    ) -> anyhow::Result<f64> {
        let incoming = self.incoming.clone();
        let receiver = runtimes.recv.spawn(async move {
            let connection = incoming.lock().await;
            let (mut tx, mut rx) = connection.accept_bi().await?;
            let mut writer = disk.as_ref().map(DiskWriter::start);
            let (mut whole, mut chunk) = (Sha256::new(), Sha256::new());
            let (mut total, mut in_chunk) = (0u64, 0usize);
            while let Some(got) = rx.read_chunk(usize::MAX, true).await? {
                if let Some(writer) = &mut writer {
                    writer.put(&got.bytes).await?;
                }
                let mut bytes = &got.bytes[..];
                total += bytes.len() as u64;
                if recv_passes >= 1 {
                    whole.update(bytes);
                }
                while recv_passes >= 2 && !bytes.is_empty() {
                    let take = bytes.len().min(PIECE - in_chunk);
                    chunk.update(&bytes[..take]);
                    in_chunk += take;
                    bytes = &bytes[take..];
                    if in_chunk == PIECE {
                        std::hint::black_box(chunk.finalize_reset());
                        in_chunk = 0;
                    }
                }
            }
            ensure!(total == size, "the receiver got {total} of {size} bytes");
            if let Some(writer) = writer {
                writer.finish().await?;
            }
            tx.write_all(&whole.finalize()).await?;
            tx.finish()?;
            let _ = tx.stopped().await;
            if let Some(disk) = disk {
                std::fs::remove_file(&disk.path)?;
            }
            anyhow::Ok(())
        });
        let connection = self.connection.clone();
        let sender = runtimes.send.spawn(async move {
            let block = bytes(PIECE, 9);
            let t = Instant::now();
            let (mut tx, mut rx) = connection.open_bi().await?;
            let mut whole = Sha256::new();
            let mut left = size;
            while left > 0 {
                let take = left.min(PIECE as u64) as usize;
                if send_passes >= 1 {
                    whole.update(&block[..take]);
                }
                if send_passes >= 2 {
                    std::hint::black_box(Sha256::digest(&block[..take]));
                }
                tx.write_all(&block[..take]).await?;
                left -= take as u64;
            }
            std::hint::black_box(whole.finalize());
            tx.finish()?;
            let answer = rx.read_to_end(64).await?;
            ensure!(answer.len() == 32, "the receiver answered {} bytes", answer.len());
            anyhow::Ok(t.elapsed().as_secs_f64())
        });
        let secs = sender.await??;
        receiver.await??;
        Ok(secs)
    }

    /// `ferry::transfer::send` of `path` under `key` to `ferry::transfer::receive` into `folders`;
    /// seconds from the offer to `FileDone`, and the SHA-256.
    async fn transfer(
        &self,
        path: &Path,
        key: &str,
        folders: &ferry::transfer::Folders,
        runtimes: &Runtimes,
    ) -> anyhow::Result<(f64, [u8; 32])> {
        let incoming = self.incoming.clone();
        let folders = folders.clone();
        let receiver = runtimes.recv.spawn(async move {
            let connection = incoming.lock().await;
            let (mut tx, mut rx) = connection.accept_bi().await?;
            let Opening::FileOffer(offer) = wire::read(&mut rx).await? else { bail!("not a file offer") };
            let received = ferry::transfer::receive(&folders, "bench-client", offer, &mut tx, &mut rx, |_, _| {})
                .await
                .map_err(|e| anyhow::anyhow!("receive failed: {e:?}"))?;
            wire::write(&mut tx, &Answer::FileDone(wire::FileDone { sha256: received.sha256 })).await?;
            tx.finish()?;
            let _ = tx.stopped().await;
            std::fs::remove_file(&received.path)?;
            anyhow::Ok(())
        });
        let connection = self.connection.clone();
        let (path, key) = (path.to_owned(), key.to_owned());
        let sender = runtimes.send.spawn(async move {
            let t = Instant::now();
            let file = std::fs::File::open(&path)?;
            let (_, sha) = ferry::transfer::send(&connection, &key, file, &path, "big.bin", |_| {})
                .await
                .map_err(|e| anyhow::anyhow!("send failed: {e}"))?;
            anyhow::Ok((t.elapsed().as_secs_f64(), sha))
        });
        let result = sender.await??;
        receiver.await??;
        Ok(result)
    }

    async fn stop(self) {
        self.connection.close(0u32.into(), b"done");
        self.client.wait_idle().await;
        self.server.close(0u32.into(), b"done");
    }
}

/// ferry's quinn configuration for `transport`; with `bbr`, with quinn's BBR congestion controller.
fn quinn_config(transport: &ferry::link::Transport, bbr: bool) -> Arc<quinn::TransportConfig> {
    let mut config = transport.config();
    if bbr {
        Arc::get_mut(&mut config)
            .expect("a configuration just made has no other owner")
            .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    config
}

/// Where the (a′) receiver writes: a file, through the page cache or with direct I/O.
#[derive(Clone)]
struct Disk {
    path: PathBuf,
    direct: bool,
    /// The size to reserve before writing.
    size: u64,
}

/// A 1 MiB piece of the (a′) receiver's stream; its bytes start at a multiple of [`ALIGN`] in
/// memory, as direct I/O needs.
struct Piece {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Piece {
    fn new() -> Piece {
        let buf = vec![0u8; PIECE + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Piece { buf, start, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Copies in as much of `bytes` as fits; how much that was.
    fn fill(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(PIECE - self.len);
        let at = self.start + self.len;
        self.buf[at..at + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        take
    }
}

/// The (a′) receiver's side of its writer: it fills pieces on the receive task and queues them
/// (at most [`DEPTH`]) to a blocking thread that writes them in order and fsyncs the file at the
/// end; written pieces come back to be filled again, so nothing is allocated per piece.
struct DiskWriter {
    piece: Piece,
    full: tokio::sync::mpsc::Sender<Piece>,
    empty: tokio::sync::mpsc::UnboundedReceiver<Piece>,
    thread: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DiskWriter {
    /// Starts the writer thread on the current runtime's blocking pool.
    fn start(disk: &Disk) -> DiskWriter {
        let (full, mut to_write) = tokio::sync::mpsc::channel::<Piece>(DEPTH);
        let (recycle, empty) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..=DEPTH {
            let _ = recycle.send(Piece::new());
        }
        let disk = disk.clone();
        let thread = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::{FileExt, OpenOptionsExt};
            let file = std::fs::File::create(&disk.path)?;
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, disk.size.max(1))?;
            let direct = match disk.direct {
                true => Some(std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&disk.path)?),
                false => None,
            };
            let mut offset = 0u64;
            while let Some(mut piece) = to_write.blocking_recv() {
                let bytes = piece.bytes();
                match &direct {
                    // Direct I/O takes whole blocks only: a shorter last piece goes through the page cache.
                    Some(direct) if bytes.len() % ALIGN == 0 => direct.write_all_at(bytes, offset)?,
                    _ => file.write_all_at(bytes, offset)?,
                }
                offset += bytes.len() as u64;
                piece.len = 0;
                let _ = recycle.send(piece);
            }
            file.sync_all()
        });
        DiskWriter { piece: Piece::new(), full, empty, thread }
    }

    /// Adds `bytes` to the file, queueing each piece as it fills (waiting while the queue is full).
    async fn put(&mut self, mut bytes: &[u8]) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            bytes = &bytes[self.piece.fill(bytes)..];
            if self.piece.len == PIECE {
                let Some(next) = self.empty.recv().await else { return Err(self.failed().await) };
                let piece = std::mem::replace(&mut self.piece, next);
                if self.full.send(piece).await.is_err() {
                    return Err(self.failed().await);
                }
            }
        }
        Ok(())
    }

    /// Queues the last piece and waits until everything is written and fsynced.
    async fn finish(self) -> anyhow::Result<()> {
        let DiskWriter { piece, full, thread, .. } = self;
        if piece.len > 0 {
            // A thread that has stopped says why below.
            let _ = full.send(piece).await;
        }
        drop(full);
        thread.await?.context("the (a′) writer failed")
    }

    /// Why the writer thread stopped early.
    async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.thread).await {
            Ok(Err(e)) => anyhow::Error::new(e).context("the (a′) writer failed"),
            Ok(Ok(())) => anyhow::anyhow!("the (a′) writer stopped early"),
            Err(e) => anyhow::Error::new(e).context("the (a′) writer panicked"),
        }
    }
}

/// Whether files in `dir` can be written with direct I/O, or why not.
fn direct_io_works(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-io-probe");
    let tried = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut file| {
            let mut block = Piece::new();
            block.fill(&[7u8; ALIGN]);
            std::io::Write::write_all(&mut file, block.bytes())
        });
    let _ = std::fs::remove_file(&probe);
    tried.map_err(|e| format!("the file system of {} refuses direct I/O ({e})", dir.display()))
}

// ---------------------------------------------------------------------------------------------
// 50 ms of RTT with loss: two network namespaces joined by a veth pair, netem on each side
// ---------------------------------------------------------------------------------------------

/// The one-way delay netem adds on each side of the veth pair (so the RTT is twice this).
const ONE_WAY_DELAY_MS: u32 = 25;
/// Packets netem may hold per side: its default (1000) would itself cap a flow at about
/// 1000 × 1.4 kB per 25 ms, far below what is measured.
const NETEM_LIMIT: u32 = 200_000;

/// A path with 50 ms of RTT and a share of the datagrams lost between two sockets.
struct Wan {
    path: WanPath,
    /// The share of datagrams lost each way (half the round trip's), in percent.
    loss_each_way_pct: f64,
    /// The relay's seed for which datagrams it drops.
    seed: u64,
}

/// Through network namespaces with [`ONE_WAY_DELAY_MS`] of netem delay and the loss on each end
/// of their link, or, where the kernel has no netem, through a [`DelayRelay`] on loopback.
enum WanPath {
    Netem(TestNet),
    Relay { why: String },
}

/// One side `a` and one side `b` of a [`Wan`]: their sockets and the address each sends to for
/// the other; the relay between them, if it is one.
struct WanLink {
    a: std::net::UdpSocket,
    b: std::net::UdpSocket,
    a_to_b: SocketAddr,
    b_to_a: SocketAddr,
    relay: Option<DelayRelay>,
}

impl Wan {
    fn build(settings: &Settings) -> Result<Wan, String> {
        let (loss_each_way_pct, seed) = (settings.wan_loss_pct / 2.0, settings.wan_seed);
        let net = TestNet::create("fb", false)?;
        if netem_off() {
            // A check of the namespace plumbing alone, without delay or loss.
            return Ok(Wan { path: WanPath::Netem(net), loss_each_way_pct, seed });
        }
        let loss = if loss_each_way_pct > 0.0 { format!(" loss {loss_each_way_pct}%") } else { String::new() };
        match net.netem(&format!("delay {ONE_WAY_DELAY_MS}ms{loss} limit {NETEM_LIMIT}")) {
            Ok(()) => Ok(Wan { path: WanPath::Netem(net), loss_each_way_pct, seed }),
            Err(e) if e.contains("qdisc kind is unknown") => {
                Ok(Wan { path: WanPath::Relay { why: e }, loss_each_way_pct, seed })
            }
            Err(e) => Err(e),
        }
    }

    /// What the path is, for the table's heading: `50 ms of RTT with 1% loss`.
    fn title(settings: &Settings) -> String {
        match netem_off() {
            true => "two network namespaces without netem (FERRY_BENCH_NETEM=off)".into(),
            false => format!("{} ms of RTT with {}% loss", 2 * ONE_WAY_DELAY_MS, settings.wan_loss_pct),
        }
    }

    fn describe(&self) -> String {
        let loss = self.loss_each_way_pct;
        match &self.path {
            WanPath::Netem(_) if netem_off() => {
                "two network namespaces joined by a veth pair, WITHOUT delay or loss (FERRY_BENCH_NETEM=off)".into()
            }
            WanPath::Netem(_) => format!(
                "two network namespaces joined by a veth pair, netem delay {ONE_WAY_DELAY_MS} ms, loss {loss}% \
                 (limit {NETEM_LIMIT} packets) on each side"
            ),
            WanPath::Relay { why } => format!(
                "this kernel has no netem ({why}), so a userspace relay on loopback holds every datagram {ONE_WAY_DELAY_MS} ms \
                 each way and drops {loss}% of them each way, drawn with seed {} (FERRY_BENCH_WAN_SEED={} repeats the draws; \
                 every row's relay gets this seed); std threads of this process, GRO in and GSO out: it costs CPU of its own",
                self.seed, self.seed
            ),
        }
    }

    fn link(&self) -> anyhow::Result<WanLink> {
        match &self.path {
            WanPath::Netem(net) => {
                let (a, b) = (net.udp(0)?, net.udp(1)?);
                let (a_to_b, b_to_a) = (b.local_addr()?, a.local_addr()?);
                Ok(WanLink { a, b, a_to_b, b_to_a, relay: None })
            }
            WanPath::Relay { .. } => {
                let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let relay = DelayRelay::start(
                    a.local_addr()?,
                    b.local_addr()?,
                    Duration::from_millis(ONE_WAY_DELAY_MS.into()),
                    self.loss_each_way_pct / 100.0,
                    self.seed,
                )?;
                Ok(WanLink { a, b, a_to_b: relay.to_b, b_to_a: relay.to_a, relay: Some(relay) })
            }
        }
    }
}

fn netem_off() -> bool {
    std::env::var("FERRY_BENCH_NETEM").is_ok_and(|v| v == "off")
}
