//! The producer's counters and per-stream cursors, readable by tests and exported as
//! Prometheus metrics at scrape time by [`crate::metrics`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};

use crate::state::StreamId;

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
    /// Each stream's cursor, set when its task starts and after every commit, removed when
    /// the stream moves to another instance.
    pub streams: StreamPositions,
    /// True while the producer's Kafka committer is connected (readiness `output`).
    pub output_connected: AtomicBool,
}

impl ProducerStats {
    /// Whether the Kafka committer is connected.
    pub fn is_output_connected(&self) -> bool {
        self.output_connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_output_connected(&self, connected: bool) {
        self.output_connected.store(connected, Ordering::Relaxed);
    }
}

/// Where one stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// Everything before this (server time) has been listed and committed.
    pub cursor: DateTime<Utc>,
    /// The API server's clock minus ours when the cursor was set, so the lag is measured on
    /// the server's timeline as the windows are.
    pub skew: Duration,
}

impl StreamPosition {
    /// Server time now minus the cursor.
    pub fn lag(&self, now: DateTime<Utc>) -> Duration {
        now + self.skew - self.cursor
    }

    /// Time left before the cursor falls behind the API's listing horizon (`horizon` back
    /// from server time); negative once it has.
    pub fn horizon_remaining(&self, now: DateTime<Utc>, horizon: Duration) -> Duration {
        self.cursor - (now + self.skew - horizon)
    }
}

/// The cursor of every stream of this producer.
#[derive(Debug, Default)]
pub struct StreamPositions(Mutex<BTreeMap<StreamId, StreamPosition>>);

impl StreamPositions {
    /// Records where `id` stands now.
    pub fn set(&self, id: &StreamId, cursor: DateTime<Utc>, skew: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(id.clone(), StreamPosition { cursor, skew });
    }

    /// Forgets `id` (its stream now runs elsewhere, so its cursor is not ours to export).
    pub fn remove(&self, id: &StreamId) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(id);
    }

    /// Where `id` stands, if its task has started.
    pub fn get(&self, id: &StreamId) -> Option<StreamPosition> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).copied()
    }

    /// Every stream and its position.
    pub fn snapshot(&self) -> Vec<(StreamId, StreamPosition)> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
