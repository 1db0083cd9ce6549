//! Helpers the benchmarks share: machine load readings and the printed tables.
#![allow(dead_code)]

/// Seconds per clock tick in /proc (USER_HZ = 100 on Linux).
pub const TICK: f64 = 0.01;

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

pub fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table with columns padded to their widths: plain (two spaces between columns) or markdown.
/// Text columns are left-aligned, figures right-aligned.
pub fn render(headers: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| width(&r[i])).chain([width(headers[i])]).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            rows.iter().all(|r| {
                r[i].is_empty() || r[i] == "-" || r[i].starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-')
            })
        })
        .collect();
    let pad = |s: &str, i: usize| {
        let fill = " ".repeat(widths[i] - width(s));
        if numeric[i] {
            format!("{fill}{s}")
        } else {
            format!("{s}{fill}")
        }
    };
    let line = |cells: Vec<String>| {
        if markdown {
            format!("| {} |", cells.join(" | "))
        } else {
            cells.join("  ").trim_end().to_owned()
        }
    };
    let mut out = vec![line(headers.iter().enumerate().map(|(i, h)| pad(h, i)).collect())];
    out.push(if markdown {
        line(
            widths
                .iter()
                .zip(&numeric)
                .map(|(&w, &n)| if n { format!("{}:", "-".repeat(w.max(2) - 1)) } else { "-".repeat(w.max(1)) })
                .collect(),
        )
    } else {
        line(widths.iter().map(|&w| "-".repeat(w)).collect())
    });
    for r in rows {
        out.push(line(r.iter().enumerate().map(|(i, c)| pad(c, i)).collect()));
    }
    out.join("\n")
}
