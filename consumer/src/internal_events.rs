//! The consumer's counters, readable by tests and heartbeats and exported as Prometheus
//! metrics at scrape time by [`crate::metrics`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// A yes/no state that one task sets and others read (readiness).
#[derive(Debug, Default)]
pub struct Flag(AtomicBool);

impl Flag {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by a label (tag, reject reason, error type).
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub fn add(&self, label: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label.to_string()).or_default() += n;
    }

    pub fn get(&self, label: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(label).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the consumer and the uri_retry service have done since they started.
/// Counts are of committed work: a blob whose transaction aborted is not counted as fetched.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Blobs downloaded completely and committed.
    pub blobs_fetched: Counter,
    /// Blobs sent to the retry topic.
    pub blobs_retried: Counter,
    /// Blobs sent to the dead topic (each also a gap record).
    pub blobs_dead: Counter,
    /// Content URIs refused without a request (not on the tenant's API base).
    pub uris_refused: Counter,
    /// Retry messages handed back to `m365.uris` by the uri_retry service.
    pub retries_requeued: Counter,
    /// Records read from blobs (before dedup).
    pub records_in: Counter,
    /// Records dropped as already seen on their stream.
    pub records_deduplicated: Counter,
    /// Records produced to `m365.events`, by tag.
    pub records_out: LabeledCounter,
    /// Records without a `Workload` (sent with the fallback tag).
    pub records_without_workload: Counter,
    /// Blob elements that were not records, by reject reason.
    pub elements_rejected: LabeledCounter,
    /// Dedup filters restored from a snapshot on `m365.state`.
    pub dedup_restored: Counter,
    /// Record ids recovered from `m365.events` after a snapshot.
    pub dedup_replayed_ids: Counter,
    /// Dedup snapshots written.
    pub dedup_snapshots: Counter,
    /// Kafka sessions restarted after an error.
    pub session_restarts: Counter,
    /// True while the download stage's Kafka output is connected (readiness `output`).
    pub output_connected: Flag,
    /// True while the uri_retry service's Kafka output is connected (readiness `output`).
    pub retry_output_connected: Flag,
}

impl ConsumerStats {
    /// Records produced over all tags.
    pub fn records_out_total(&self) -> u64 {
        self.records_out.total()
    }
}
