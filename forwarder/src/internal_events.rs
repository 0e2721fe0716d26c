//! The forwarder's counters, readable by tests and exported as Prometheus metrics by the
//! metrics layer. Plain atomics; the output's own counters (lines and bytes per tag,
//! connects, reconnects, write errors) live in [`OutputStats`], which is shared here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::output::{OutputStats, StatsSnapshot};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sum, count and maximum of a latency, in microseconds.
#[derive(Debug, Default)]
pub struct Latency {
    sum_us: AtomicU64,
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of all observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us.load(Ordering::Relaxed))
    }

    /// Largest observation.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }
}

/// What the forwarder has done since it started.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Records read from `m365.events`.
    pub events_in: Counter,
    /// Records read from `m365.health` (sent under the health tag).
    pub health_in: Counter,
    /// Events sent under the fallback tag (no usable `tag` header).
    pub fallback_tag_records: Counter,
    /// Records without a value (nothing to send; their offsets are committed).
    pub empty_records: Counter,
    /// Batches handed to the output (re-sends included).
    pub batches: Counter,
    /// Batches sent again because a connection failed around their delivery.
    pub batches_resent: Counter,
    /// Time from handing a batch to the output to its delivery (written and flushed).
    pub batch_latency: Latency,
    /// Offset commits that succeeded.
    pub commits: Counter,
    /// Offset commits that failed (retried with the next commit).
    pub commit_failures: Counter,
    /// Records whose offsets have been committed.
    pub committed_records: Counter,
    /// Times consumption was paused because batches were blocked (Devo slow or down).
    pub pauses: Counter,
    /// Consumer-group rebalances (assignments and revocations).
    pub rebalances: Counter,
    /// The output's counters (lines and bytes per tag, reconnects …).
    pub output: Arc<OutputStats>,
}

impl ForwarderStats {
    /// Reconnects of the output so far.
    pub fn reconnects(&self) -> u64 {
        self.output.reconnects()
    }

    /// A copy of the output's counters.
    pub fn output_snapshot(&self) -> StatsSnapshot {
        self.output.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the latency keeps sum, count and maximum.
    #[test]
    fn latency_sum_count_max() {
        let l = Latency::default();
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_millis(10));
        assert_eq!(l.count(), 2);
        assert_eq!(l.sum(), Duration::from_millis(13));
        assert_eq!(l.max(), Duration::from_millis(10));
    }
}
