//! Measurements and their summaries: one timed run ([`Sample`]), the runs of one measurement
//! ([`Measurement`]) and their median, since this machine is noisy.

use std::time::Duration;

/// One timed run: how many records (and record bytes) went through in how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Sample {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one measurement is, and its runs (successful or not).
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Short stable key (`consumer/embedded`), used to compute ratios.
    pub key: String,
    /// What is measured, for people.
    pub label: String,
    /// Broker or other context ("embedded", "tansu", "—").
    pub context: String,
    pub samples: Vec<Sample>,
    /// Runs that failed, with why.
    pub failures: Vec<String>,
    /// Runs that stopped short (their sample counts what arrived before the stall).
    pub stalls: Vec<String>,
    /// A free note shown in RESULTS.md.
    pub note: Option<String>,
}

impl Measurement {
    pub fn new(key: &str, label: &str, context: &str) -> Self {
        Measurement {
            key: key.into(),
            label: label.into(),
            context: context.into(),
            samples: Vec::new(),
            failures: Vec::new(),
            stalls: Vec::new(),
            note: None,
        }
    }

    /// Median records/s over the successful runs.
    pub fn median_rps(&self) -> Option<f64> {
        median(self.samples.iter().map(Sample::records_per_sec).collect())
    }

    /// Median MB/s over the successful runs.
    pub fn median_mbps(&self) -> Option<f64> {
        median(self.samples.iter().map(Sample::mb_per_sec).collect())
    }

    /// Smallest and largest records/s.
    pub fn spread_rps(&self) -> Option<(f64, f64)> {
        let v: Vec<f64> = self.samples.iter().map(Sample::records_per_sec).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!v.is_empty()).then_some((lo, hi))
    }
}

/// Peak RSS of the consumer on one blob size.
#[derive(Debug, Clone)]
pub struct MemoryPoint {
    /// Blob body size in bytes.
    pub blob_bytes: u64,
    /// Records in the blob.
    pub records: u64,
    /// Peak RSS (VmHWM) of each run, bytes.
    pub peaks: Vec<u64>,
    pub failures: Vec<String>,
}

impl MemoryPoint {
    pub fn median_peak(&self) -> Option<f64> {
        median(self.peaks.iter().map(|&p| p as f64).collect())
    }
}

/// The median of `v` (mean of the middle two for an even count); `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Odd counts take the middle value, even counts the mean of the middle two, empty none.
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    // A measurement's median rate comes from records over elapsed time of each run.
    #[test]
    fn measurement_median_rate() {
        let mut m = Measurement::new("k", "l", "c");
        for secs in [1.0, 2.0, 4.0] {
            m.samples.push(Sample {
                records: 1000,
                bytes: 2_000_000,
                elapsed: Duration::from_secs_f64(secs),
            });
        }
        assert_eq!(m.median_rps(), Some(500.0));
        assert_eq!(m.median_mbps(), Some(1.0));
        assert_eq!(m.spread_rps(), Some((250.0, 1000.0)));
    }
}
