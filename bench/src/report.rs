//! The results: the table printed on the terminal and `bench/RESULTS.md` (machine, data set,
//! method, every figure as the median of its runs with the spread, ratios beside each figure
//! and whether the targets are met).

use std::fmt::Write as _;
use std::path::Path;

use crate::machine::Machine;
use crate::stats::{Measurement, MemoryPoint};

/// Everything one benchmark run found.
pub struct Results {
    pub machine: Machine,
    /// How it ran (data set, runs, options), one line each.
    pub setup: Vec<String>,
    pub measurements: Vec<Measurement>,
    pub memory: Vec<MemoryPoint>,
    /// Free remarks (what failed, which broker rsyslog used …).
    pub notes: Vec<String>,
}

/// A comparison shown beside a figure.
struct Ratio {
    /// What the figure is compared with.
    against: String,
    value: f64,
    /// The target for this ratio, if it has one.
    target: Option<f64>,
}

impl Results {
    fn get(&self, key: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.key == key)
    }

    fn rps(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Measurement::median_rps)
    }

    /// The ratios of measurement `m`.
    fn ratios(&self, m: &Measurement) -> Vec<Ratio> {
        let Some(v) = m.median_rps() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let (kind, broker) = m.key.split_once('/').unwrap_or((m.key.as_str(), ""));
        let mut push = |against: String, base: Option<f64>, target: Option<f64>| {
            if let Some(b) = base.filter(|b| *b > 0.0) {
                out.push(Ratio {
                    against,
                    value: v / b,
                    target,
                });
            }
        };
        match kind {
            "consumer" => {
                push(
                    "serde_json Value, 1 core".into(),
                    self.rps("serde/value"),
                    Some(0.5),
                );
                push(
                    "splitter alone, 1 core".into(),
                    self.rps("splitter/-"),
                    None,
                );
            }
            "splitter" => {
                push(
                    "serde_json Value, 1 core".into(),
                    self.rps("serde/value"),
                    None,
                );
            }
            "forwarder" => {
                let same = format!("rsyslog/{broker}");
                match self.rps(&same) {
                    Some(r) => push(format!("rsyslog ({broker})"), Some(r), Some(1.0)),
                    None => push(
                        "rsyslog (embedded)".into(),
                        self.rps("rsyslog/embedded"),
                        Some(1.0),
                    ),
                }
                push("devo-sdk".into(), self.rps("devo-sdk/-"), Some(30.0));
            }
            "e2e" => {
                push(
                    "target 100,000 records/s".into(),
                    Some(100_000.0),
                    Some(1.0),
                );
            }
            _ => {}
        }
        out
    }

    /// The table as plain text.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<44} {:<9} {:>12} {:>8} {:>21} {:>5}  ratios",
            "measurement", "broker", "records/s", "MB/s", "min–max records/s", "runs"
        );
        for m in &self.measurements {
            let _ = write!(
                s,
                "{:<44} {:<9} {:>12} {:>8} {:>21} {:>5}  ",
                m.label,
                m.context,
                fmt_opt(m.median_rps(), 0),
                fmt_opt(m.median_mbps(), 1),
                m.spread_rps()
                    .map(|(a, b)| format!("{}–{}", group(a), group(b)))
                    .unwrap_or_else(|| "—".into()),
                format!("{}/{}", m.samples.len(), m.samples.len() + m.failures.len()),
            );
            let r: Vec<String> = self
                .ratios(m)
                .iter()
                .map(|r| {
                    format!(
                        "{:.2}× {}{}",
                        r.value,
                        r.against,
                        r.target.map(|t| verdict(r.value, t)).unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(s, "{}", r.join("; "));
            for f in &m.failures {
                let _ = writeln!(s, "    failed run: {}", one_line(f, 200));
            }
            for f in &m.stalls {
                let _ = writeln!(
                    s,
                    "    STALLED run (rate counts the lines before the stall): {}",
                    one_line(f, 300)
                );
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<44} {:>12} {:>14} {:>10}",
                "consumer peak RSS (m365-consumer binary)", "records", "peak RSS MB", "× blob"
            );
            for p in &self.memory {
                let peak = p.median_peak();
                let _ = writeln!(
                    s,
                    "{:<44} {:>12} {:>14} {:>10}{}",
                    format!("blob {:.0} MB", p.blob_bytes as f64 / 1e6),
                    p.records,
                    fmt_opt(peak.map(|b| b / 1e6), 1),
                    fmt_opt(peak.map(|b| b / p.blob_bytes as f64), 2),
                    memory_verdict(p)
                );
                for f in &p.failures {
                    let _ = writeln!(s, "    failed run: {}", one_line(f, 200));
                }
            }
        }
        s
    }

    /// RESULTS.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# m365-devo benchmark results\n");
        let _ = writeln!(
            s,
            "Written by `scripts/bench.sh` (`m365-bench`). Every figure is the median of its runs \
             (min–max beside it); this machine is noisy.\n"
        );
        let m = &self.machine;
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| cores | {} |", m.cores);
        let _ = writeln!(s, "| CPU | {} |", m.model);
        let _ = writeln!(s, "| memory | {:.1} GiB |", m.memory_gib);
        let _ = writeln!(s, "| kernel | Linux {} |", m.kernel);
        let _ = writeln!(s, "| OS | {} |", m.os);
        let _ = writeln!(s, "| date | {} |\n", m.date);
        let _ = writeln!(s, "## Set-up\n");
        for line in &self.setup {
            let _ = writeln!(s, "- {line}");
        }
        let _ = writeln!(s, "\n## Throughput\n");
        let _ = writeln!(
            s,
            "| measurement | broker | records/s | MB/s | min–max records/s | runs ok | ratios (target) |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|---|");
        for m in &self.measurements {
            let ratios: Vec<String> = self
                .ratios(m)
                .iter()
                .map(|r| {
                    format!(
                        "{:.2}× {}{}",
                        r.value,
                        r.against,
                        r.target
                            .map(|t| format!(
                                " (≥ {t}×: {})",
                                if r.value >= t { "met" } else { "**not met**" }
                            ))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {}/{} | {} |",
                m.label,
                m.context,
                fmt_opt(m.median_rps(), 0),
                fmt_opt(m.median_mbps(), 1),
                m.spread_rps()
                    .map(|(a, b)| format!("{}–{}", group(a), group(b)))
                    .unwrap_or_else(|| "—".into()),
                m.samples.len(),
                m.samples.len() + m.failures.len(),
                ratios.join("; ")
            );
        }
        let failed: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| !m.failures.is_empty() || !m.stalls.is_empty() || m.note.is_some())
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\nNotes and failed runs:\n");
            for m in failed {
                if let Some(n) = &m.note {
                    let _ = writeln!(s, "- {} ({}): {}", m.label, m.context, n);
                }
                for f in &m.failures {
                    let _ = writeln!(
                        s,
                        "- {} ({}) failed: `{}`",
                        m.label,
                        m.context,
                        one_line(f, 400)
                    );
                }
                for f in &m.stalls {
                    let _ = writeln!(
                        s,
                        "- {} ({}) **stalled** (its rate counts the lines before the stall): `{}`",
                        m.label,
                        m.context,
                        one_line(f, 600)
                    );
                }
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(s, "\n## Memory against blob size\n");
            let _ = writeln!(
                s,
                "Peak RSS (`VmHWM`) of the `m365-consumer` binary downloading one blob, splitting, \
                 deduplicating and producing it to the embedded broker (which runs in the benchmark's \
                 process, not the consumer's). Target: ≤ 100 MB for a 200 MB blob.\n"
            );
            let _ = writeln!(
                s,
                "| blob | records | peak RSS | peak / blob | runs ok | target |"
            );
            let _ = writeln!(s, "|--:|--:|--:|--:|--:|---|");
            for p in &self.memory {
                let peak = p.median_peak();
                let _ = writeln!(
                    s,
                    "| {:.0} MB | {} | {} MB | {} | {}/{} | {} |",
                    p.blob_bytes as f64 / 1e6,
                    p.records,
                    fmt_opt(peak.map(|b| b / 1e6), 1),
                    fmt_opt(peak.map(|b| b / p.blob_bytes as f64), 2),
                    p.peaks.len(),
                    p.peaks.len() + p.failures.len(),
                    memory_verdict(p).trim()
                );
            }
            for p in &self.memory {
                for f in &p.failures {
                    let _ = writeln!(
                        s,
                        "\n- {:.0} MB blob failed: `{}`",
                        p.blob_bytes as f64 / 1e6,
                        one_line(f, 400)
                    );
                }
            }
        }
        let _ = writeln!(s, "\n## Targets\n");
        for line in self.target_lines() {
            let _ = writeln!(s, "- {line}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// One line per target of the issue: the figure, the bar, met or not.
    pub fn target_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.measurements {
            for r in self.ratios(m) {
                if let Some(t) = r.target {
                    out.push(format!(
                        "{} ({}) vs {}: {:.2}× (target ≥ {t}×) — {}",
                        m.label,
                        m.context,
                        r.against,
                        r.value,
                        if r.value >= t { "met" } else { "NOT MET" }
                    ));
                }
            }
        }
        for p in &self.memory {
            if (p.blob_bytes as f64 / 1e6 - 200.0).abs() < 20.0
                && let Some(peak) = p.median_peak()
            {
                out.push(format!(
                    "consumer peak RSS for a {:.0} MB blob: {:.1} MB (target ≤ 100 MB) — {}",
                    p.blob_bytes as f64 / 1e6,
                    peak / 1e6,
                    if peak <= 100e6 { "met" } else { "NOT MET" }
                ));
            }
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.markdown())
    }
}

fn verdict(value: f64, target: f64) -> String {
    format!(
        " [≥{target}: {}]",
        if value >= target { "met" } else { "NOT MET" }
    )
}

fn memory_verdict(p: &MemoryPoint) -> String {
    match p.median_peak() {
        Some(peak) if (p.blob_bytes as f64 / 1e6 - 200.0).abs() < 20.0 => format!(
            "  [≤100 MB: {}]",
            if peak <= 100e6 { "met" } else { "NOT MET" }
        ),
        _ => String::new(),
    }
}

/// A number with thousands separators (for records/s) or `decimals` places.
fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "—".into(),
        Some(v) if decimals == 0 => group(v),
        Some(v) => format!("{v:.decimals$}"),
    }
}

/// `1234567.8` → `1,234,568`.
fn group(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '`'], " ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Sample;
    use std::time::Duration;

    fn meas(key: &str, rps: f64) -> Measurement {
        let mut m = Measurement::new(key, key, key.split('/').nth(1).unwrap_or("-"));
        m.samples.push(Sample {
            records: rps as u64,
            bytes: rps as u64 * 1000,
            elapsed: Duration::from_secs(1),
        });
        m
    }

    fn results(ms: Vec<Measurement>) -> Results {
        Results {
            machine: Machine::describe(),
            setup: vec![],
            measurements: ms,
            memory: vec![],
            notes: vec![],
        }
    }

    // Thousands separators on rates.
    #[test]
    fn groups_digits() {
        assert_eq!(group(1234567.6), "1,234,568");
        assert_eq!(group(999.0), "999");
    }

    // The forwarder is compared with rsyslog on its own broker and with devo-sdk, and the
    // verdicts follow the targets.
    #[test]
    fn forwarder_ratios_and_verdicts() {
        let r = results(vec![
            meas("forwarder/embedded", 60_000.0),
            meas("rsyslog/embedded", 50_000.0),
            meas("devo-sdk/-", 3_000.0),
        ]);
        let f = &r.measurements[0];
        let ratios = r.ratios(f);
        assert_eq!(ratios.len(), 2);
        assert!((ratios[0].value - 1.2).abs() < 1e-9);
        assert!((ratios[1].value - 20.0).abs() < 1e-9);
        let lines = r.target_lines();
        assert!(lines[0].ends_with("met"));
        assert!(lines[1].ends_with("NOT MET"));
        assert!(r.markdown().contains("**not met**"));
    }

    // A consumer below half the serde_json rate is reported as not meeting its target.
    #[test]
    fn consumer_ratio_against_serde() {
        let r = results(vec![
            meas("consumer/embedded", 40_000.0),
            meas("serde/value", 100_000.0),
        ]);
        let lines = r.target_lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("0.40×"));
        assert!(lines[0].ends_with("NOT MET"));
        assert!(r.table().contains("40,000"));
    }
}
