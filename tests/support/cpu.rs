//! What processes and threads use, read from `/proc`: CPU time (of this process by thread, of
//! another process, of the whole machine), resident memory and open descriptors. `None` where
//! there is no `/proc`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds per clock tick in /proc (USER_HZ = 100 on Linux).
pub const TICK: f64 = 0.01;

/// The command name and user + system CPU seconds in a `/proc/<pid>[/task/<tid>]/stat` file.
pub fn proc_cpu(stat: impl AsRef<std::path::Path>) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of proc_pid_stat(5); utime is 14, stime 15.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some((name, (field(14)? + field(15)?) * TICK))
}

/// CPU seconds the whole machine has been busy (`/proc/stat`: user, nice, system, irq, softirq,
/// steal).
pub fn machine_busy() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = cpu.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<f64>() * TICK)
}

/// The 1-minute load average, to show whether the machine was quiet.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The CPU clocks of one process at one moment: the process's total, each of its live threads,
/// and the whole machine's.
pub struct Snapshot {
    pub at: Instant,
    /// User + system CPU seconds of the process, threads that have ended included.
    pub process: f64,
    /// By thread id: the thread's name and its CPU seconds.
    pub threads: BTreeMap<u64, (String, f64)>,
    pub machine_busy: Option<f64>,
}

impl Snapshot {
    /// This process's clocks now.
    pub fn now() -> Option<Snapshot> {
        Snapshot::of_proc("/proc/self")
    }

    /// Process `pid`'s clocks now; `None` once it is gone.
    pub fn of(pid: u32) -> Option<Snapshot> {
        Snapshot::of_proc(&format!("/proc/{pid}"))
    }

    fn of_proc(dir: &str) -> Option<Snapshot> {
        let process = proc_cpu(format!("{dir}/stat"))?.1;
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(format!("{dir}/task")).ok()?.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
            if let Some(thread) = proc_cpu(task.path().join("stat")) {
                threads.insert(tid, thread);
            }
        }
        Some(Snapshot { at: Instant::now(), process, threads, machine_busy: machine_busy() })
    }

    /// CPU seconds of the process since `before`.
    pub fn process_since(&self, before: &Snapshot) -> f64 {
        (self.process - before.process).max(0.0)
    }

    /// CPU seconds since `before` by group of threads: `group` names the group of each thread
    /// (from its id and name); a thread that started in between counts from zero, and the time of
    /// threads that ended in between goes to group `rest`.
    pub fn by_group(
        &self,
        before: &Snapshot,
        group: impl Fn(u64, &str) -> String,
        rest: &str,
    ) -> BTreeMap<String, f64> {
        let mut groups = BTreeMap::new();
        let mut counted = 0.0;
        for (tid, (name, cpu)) in &self.threads {
            let delta = (cpu - before.threads.get(tid).map_or(0.0, |(_, c)| *c)).max(0.0);
            counted += delta;
            *groups.entry(group(*tid, name)).or_insert(0.0) += delta;
        }
        *groups.entry(rest.to_owned()).or_insert(0.0) += (self.process_since(before) - counted).max(0.0);
        groups
    }

    /// CPU seconds other processes used since `before`, given what this one (or the ones
    /// measured) used: the machine's busy time less `ours`.
    pub fn others_since(&self, before: &Snapshot, ours: f64) -> Option<f64> {
        self.machine_busy.zip(before.machine_busy).map(|(a, b)| (a - b - ours).max(0.0))
    }

    /// Seconds of wall time since `before`.
    pub fn wall_since(&self, before: &Snapshot) -> f64 {
        self.at.duration_since(before.at).as_secs_f64()
    }
}

/// The pid of a child of this process whose command line has `arg` as one of its arguments (a
/// node's config path tells its `ferry run` apart).
pub fn child_pid(arg: &std::path::Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // After the name: state, then the parent's pid.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        (ppid == me && cmdline.split(|&b| b == 0).any(|a| a == arg.as_os_str().as_bytes())).then_some(pid)
    })
}

/// What a process holds, read from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcUsage {
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
    /// User + system CPU seconds.
    pub cpu_s: f64,
}

/// The resident set, open descriptors and CPU time of process `pid`; `None` once it is gone.
pub fn proc_usage(pid: u32) -> Option<ProcUsage> {
    let rss_kib = status_kib(&format!("/proc/{pid}/status"), "VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let (_, cpu_s) = proc_cpu(format!("/proc/{pid}/stat"))?;
    Some(ProcUsage { rss_kib, fds, cpu_s })
}

/// A `key:` line of a `/proc/…/status` file in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status).ok()?;
    let line = status.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// This process's `VmRSS` or `VmHWM`, in KiB.
pub fn own_kib(key: &str) -> Option<u64> {
    status_kib("/proc/self/status", key)
}

/// Resets this process's VmHWM to its current RSS (Linux ≥ 4.0); whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples this process's VmRSS every 5 ms on its own thread.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> RssSampler {
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = own_kib("VmRSS") {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssSampler { stop, peak, thread }
    }

    /// The largest VmRSS seen, KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// The CPU's model name.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Whether the CPU has `flag` (`/proc/cpuinfo`).
pub fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == flag)))
}
