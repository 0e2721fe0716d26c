//! Counters every output keeps: batches, bytes, lines (per tag where the output sees tags),
//! reconnects, connect failures, write errors, connections lost and the last error message.
//!
//! Shared behind an `Arc` (a [`super::Pool`]'s connections share one), read with
//! [`OutputStats::snapshot`]; the metrics layer turns snapshots into Prometheus series.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one output. All methods are cheap and thread-safe.
#[derive(Debug, Default)]
pub struct OutputStats {
    batches: AtomicU64,
    bytes: AtomicU64,
    lines: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    write_errors: AtomicU64,
    connections_lost: AtomicU64,
    per_tag: Mutex<HashMap<String, TagCounts>>,
    last_error: Mutex<Option<String>>,
}

/// Lines and bytes delivered for one tag.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TagCounts {
    /// Events delivered under the tag.
    pub lines: u64,
    /// Bytes delivered for the tag (framed, before compression).
    pub bytes: u64,
}

/// A point-in-time copy of [`OutputStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Batches written and flushed.
    pub batches: u64,
    /// Bytes written and flushed (as put on the wire by this output).
    pub bytes: u64,
    /// Events delivered (known only for `write_records`).
    pub lines: u64,
    /// Connections opened, including the first.
    pub connects: u64,
    /// Connections replaced by a new one (idle, age, peer close, error).
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Writes that failed (each retry counts).
    pub write_errors: u64,
    /// Connections lost without a graceful close (write error, peer close or reset seen,
    /// graceful close that failed): what they carried lately is sent again.
    pub connections_lost: u64,
    /// Per-tag counts.
    pub per_tag: HashMap<String, TagCounts>,
    /// Display text of the most recent error, if any.
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave counters inconsistent; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OutputStats {
    /// Records one delivered batch of `bytes` bytes.
    pub fn record_batch(&self, bytes: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records delivered lines for tags, e.g. after a `write_records` batch.
    pub fn record_tags<'a>(&self, counts: impl IntoIterator<Item = (&'a str, TagCounts)>) {
        let mut map = lock(&self.per_tag);
        for (tag, c) in counts {
            self.lines.fetch_add(c.lines, Ordering::Relaxed);
            let entry = match map.get_mut(tag) {
                Some(e) => e,
                None => map.entry(tag.to_owned()).or_default(),
            };
            entry.lines += c.lines;
            entry.bytes += c.bytes;
        }
    }

    /// Records a successful connect; `replaced` when it replaces an earlier connection.
    pub fn record_connect(&self, replaced: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if replaced {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a failed connection attempt.
    pub fn record_connect_failure(&self, error: &dyn std::fmt::Display) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Records a failed write.
    pub fn record_write_error(&self, error: &dyn std::fmt::Display) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Records a connection lost without a graceful close.
    pub fn record_connection_lost(&self) {
        self.connections_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Reconnect count so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Connection attempts that failed so far (cheap: no copy of the per-tag counts).
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lines: self.lines.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            connections_lost: self.connections_lost.load(Ordering::Relaxed),
            per_tag: lock(&self.per_tag).clone(),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// Accumulates per-tag counts while a batch is framed, without a map lookup per record:
/// consecutive records usually share a tag, and a batch holds only a few tags.
#[derive(Debug, Default)]
pub struct TagTally<'a> {
    entries: Vec<(&'a str, TagCounts)>,
}

impl<'a> TagTally<'a> {
    /// Counts one record of `bytes` framed bytes under `tag`.
    #[inline]
    pub fn add(&mut self, tag: &'a str, bytes: usize) {
        if let Some((t, c)) = self.entries.last_mut()
            && *t == tag
        {
            c.lines += 1;
            c.bytes += bytes as u64;
            return;
        }
        if let Some((_, c)) = self.entries.iter_mut().find(|(t, _)| *t == tag) {
            c.lines += 1;
            c.bytes += bytes as u64;
            return;
        }
        self.entries.push((
            tag,
            TagCounts {
                lines: 1,
                bytes: bytes as u64,
            },
        ));
    }

    /// The collected counts, with owned tags (to outlive the records).
    pub fn into_owned(self) -> Vec<(String, TagCounts)> {
        self.entries
            .into_iter()
            .map(|(t, c)| (t.to_owned(), c))
            .collect()
    }
}
