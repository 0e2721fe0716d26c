//! The producer's counters, readable by tests and (later) exported as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the producer has done since it started.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Listing windows requested (each may have several pages).
    pub windows_listed: Counter,
    /// Blobs produced to `m365.uris`.
    pub blobs_emitted: Counter,
    /// Blobs listed again (overlapping windows, sweeps) and skipped thanks to the ledger.
    pub blobs_already_emitted: Counter,
    /// Blobs found by the late-content sweep.
    pub late_blobs: Counter,
    /// Gap records written (windows clamped to the 7-day horizon).
    pub gaps: Counter,
    /// Ticks that ended in an error (retried on the next tick).
    pub tick_errors: Counter,
    /// Subscriptions started (or found already enabled).
    pub subscriptions_started: Counter,
}
