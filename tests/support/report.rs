//! Helpers the benchmarks share: machine load readings and the printed tables.
#![allow(dead_code)]

/// `PASS` or `MISS`.
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

/// The issue-5 target: the evidence log and signed receipts cost at most this share of throughput.
pub const TARGET_EVIDENCE_COST_PCT: f64 = 10.0;

/// Whether a pair of nodes keeps the evidence log and signs receipts (`[evidence] log`,
/// `receipts`): on is the default configuration; the halves are for finding where the cost goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Evidence {
    On,
    Off,
    /// The log without receipts.
    LogOnly,
    /// Receipts without the log.
    ReceiptsOnly,
}

impl Evidence {
    /// How the setting is named in the report.
    pub fn name(self) -> &'static str {
        match self {
            Evidence::On => "on",
            Evidence::Off => "off",
            Evidence::LogOnly => "log only",
            Evidence::ReceiptsOnly => "receipts only",
        }
    }

    /// `[evidence] log`.
    pub fn log(self) -> bool {
        matches!(self, Evidence::On | Evidence::LogOnly)
    }

    /// `[evidence] receipts`.
    pub fn receipts(self) -> bool {
        matches!(self, Evidence::On | Evidence::ReceiptsOnly)
    }

    /// The order of `rounds` on/off pairs, alternated ABBA (on off, off on, on off, …) so that
    /// a machine getting faster or slower during the run favours neither.
    pub fn alternated(rounds: usize) -> Vec<Evidence> {
        (0..rounds)
            .flat_map(|r| if r % 2 == 0 { [Evidence::On, Evidence::Off] } else { [Evidence::Off, Evidence::On] })
            .collect()
    }
}

/// Writes `[evidence] log = …, receipts = …` into the node configuration at `config`, both false
/// for [`Evidence::Off`]; leaves it as `init` wrote it (the defaults, both on) for [`Evidence::On`].
pub fn set_evidence(config: &std::path::Path, evidence: Evidence) -> anyhow::Result<()> {
    if evidence == Evidence::On {
        return Ok(());
    }
    let text = std::fs::read_to_string(config)?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let mut section = toml_edit::Table::new();
    section.insert("log", toml_edit::value(evidence.log()));
    section.insert("receipts", toml_edit::value(evidence.receipts()));
    doc.insert("evidence", toml_edit::Item::Table(section));
    std::fs::write(config, doc.to_string())?;
    Ok(())
}

/// Checks that a loaded configuration has the evidence settings `evidence` stands for.
pub fn check_evidence(config: &ferry::config::Config, evidence: Evidence) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.evidence.log == evidence.log() && config.evidence.receipts == evidence.receipts(),
        "{}: [evidence] is not `{}` as configured",
        config.path.display(),
        evidence.name()
    );
    Ok(())
}

/// What turning the evidence on costs, in % of the rate with it off: `(off - on) / off`.
/// Negative when the "on" run was faster (noise).
pub fn cost_pct(on: f64, off: f64) -> f64 {
    if off > 0.0 && on.is_finite() && off.is_finite() {
        (off - on) / off * 100.0
    } else {
        f64::NAN
    }
}

/// What turning the evidence on adds, in % of the CPU time per request with it off.
pub fn added_pct(on: f64, off: f64) -> f64 {
    if off > 0.0 && on.is_finite() && off.is_finite() {
        (on - off) / off * 100.0
    } else {
        f64::NAN
    }
}

/// Each round's cost, or their range when there are many.
pub fn rounds(costs: &[f64]) -> String {
    if costs.len() <= 16 {
        let each: Vec<String> = costs.iter().map(|c| format!("{c:.0}")).collect();
        return format!("{}%", each.join(", "));
    }
    let (min, max) = costs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    format!("{min:.0} to {max:.0}%")
}

/// The mean of the rounds' costs and its standard error: how far one run can be trusted.
pub struct RoundCosts {
    pub mean: f64,
    pub error: f64,
}

impl RoundCosts {
    /// `None` with fewer than two rounds.
    pub fn of(costs: &[f64]) -> Option<RoundCosts> {
        let n = costs.len() as f64;
        if n < 2.0 {
            return None;
        }
        let mean = costs.iter().sum::<f64>() / n;
        let variance = costs.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Some(RoundCosts { mean, error: (variance / n).sqrt() })
    }
}

impl std::fmt::Display for RoundCosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:+.1} ± {:.1}%", self.mean, self.error)
    }
}

/// The evidence cost against [`TARGET_EVIDENCE_COST_PCT`]: PASS or MISS when the target is
/// outside the cost's 95% confidence interval (from its rounds' standard error, Student's t),
/// else UNSURE: the run cannot tell, and more rounds can. MISS whenever a request failed.
pub fn judge_cost(cost: f64, by_round: &[f64], errors: u64) -> &'static str {
    let margin = RoundCosts::of(by_round).map_or(f64::INFINITY, |r| t95(by_round.len() - 1) * r.error);
    if errors > 0 || cost > TARGET_EVIDENCE_COST_PCT + margin {
        "MISS"
    } else if cost < TARGET_EVIDENCE_COST_PCT - margin {
        "PASS"
    } else {
        "UNSURE"
    }
}

/// Student's t for a two-sided 95% interval with `df` degrees of freedom (within 1% beyond 10).
fn t95(df: usize) -> f64 {
    const SMALL: [f64; 10] = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23];
    SMALL.get(df.saturating_sub(1)).copied().unwrap_or(1.96 + 2.4 / df as f64)
}

/// `12.34` → `+12.3%`; NaN → `-`.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.1}%")
    } else {
        "-".into()
    }
}

/// `bytes` in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
