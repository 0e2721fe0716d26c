//! Backpressure between the consumer and the forwarder when both run in one process on the
//! embedded broker.
//!
//! librdkafka's mock cluster (the embedded broker) keeps at most 5 MiB of record batches per
//! partition and silently deletes the oldest beyond that: a forwarder that falls more than
//! that far behind the consumer would find its next records gone (the fetch position is out
//! of range and the reader jumps ahead). A real broker keeps everything for its retention, so
//! this gate is only used there.
//!
//! The consumer records every acknowledged event (partition, offset, size) and, before each
//! send, waits while some partition holds [`Backlog::limit`] bytes or more that the
//! forwarder has not *read* yet; the forwarder, in the same process, reports each record it
//! takes from the topic ([`Backlog::read_up_to`]). What the forwarder read is in its memory
//! until delivered (a batch lost with its connection is re-sent from there, and a stopped
//! Devo stops the forwarder reading once its held batches reach their limit), so only unread
//! records need the broker, and the consumer waits while Devo is down instead of filling a
//! broker that would drop the overflow. The broker lives in the process: a crash loses it
//! whole, so offsets committed or not make no difference after one.
//!
//! An earlier version counted what the forwarder had *committed* (read back every 200 ms):
//! with the forwarder's `commit_delay` that capped the pipeline near 20,000 records/s.
//!
//! Use it only without Kafka transactions: a waiting consumer inside an open transaction
//! would hold back records the forwarder cannot see until the commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Un-forwarded event bytes per partition of the events topic.
#[derive(Debug)]
pub struct Backlog {
    limit: u64,
    parts: Mutex<HashMap<i32, Part>>,
    room: Notify,
}

#[derive(Debug, Default)]
struct Part {
    /// (offset, size) of acknowledged records not yet committed by the forwarder, in order.
    records: VecDeque<(i64, u64)>,
    bytes: u64,
    /// The next offset the forwarder will read: a record acknowledged only after the
    /// forwarder read it (the reader can be quicker than the acknowledgement) is not waiting.
    read_next: i64,
}

impl Backlog {
    /// A gate that holds the writer while a partition has `limit` bytes or more waiting.
    pub fn new(limit: u64) -> Self {
        Backlog {
            limit: limit.max(1),
            parts: Mutex::new(HashMap::new()),
            room: Notify::new(),
        }
    }

    /// The per-partition limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An acknowledged record of `size` bytes (key, value and headers) at `offset`.
    pub fn produced(&self, partition: i32, offset: i64, size: u64) {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        if offset < p.read_next {
            return;
        }
        p.records.push_back((offset, size));
        p.bytes += size;
    }

    /// The forwarder read `partition` up to `next_offset` (exclusive).
    pub fn read_up_to(&self, partition: i32, next_offset: i64) {
        let freed = {
            let mut parts = self.lock();
            let p = parts.entry(partition).or_default();
            p.read_next = p.read_next.max(next_offset);
            let mut freed = false;
            while let Some(&(offset, size)) = p.records.front() {
                if offset >= next_offset {
                    break;
                }
                p.records.pop_front();
                p.bytes -= size;
                freed = true;
            }
            freed
        };
        if freed {
            self.room.notify_waiters();
        }
    }

    /// The largest waiting byte count of any partition.
    pub fn max_waiting(&self) -> u64 {
        self.lock().values().map(|p| p.bytes).max().unwrap_or(0)
    }

    /// Returns once every partition is below the limit. Wakes when the forwarder reads, and re-checks
    /// every second in case a notification raced the check.
    pub async fn wait_for_room(&self) {
        let mut began = None;
        loop {
            let notified = self.room.notified();
            if self.max_waiting() < self.limit {
                if let Some(t) = began.map(|t: std::time::Instant| t.elapsed()) {
                    tracing::debug!(
                        waited_ms = t.as_millis() as u64,
                        "The forwarder caught up; producing again."
                    );
                }
                return;
            }
            began.get_or_insert_with(std::time::Instant::now);
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Part>> {
        // The map stays consistent at every await-free step; a panic elsewhere cannot leave
        // it half-updated, so a poisoned lock is still usable.
        self.parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the gate closes at the limit on one partition and opens when the forwarder's
    // reading passes the waiting records.
    #[tokio::test]
    async fn waits_until_read() {
        let b = std::sync::Arc::new(Backlog::new(100));
        b.produced(0, 0, 60);
        b.produced(1, 0, 90);
        tokio::time::timeout(Duration::from_millis(50), b.wait_for_room())
            .await
            .expect("below the limit: no wait");
        b.produced(0, 1, 50);
        assert_eq!(b.max_waiting(), 110);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_for_room().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "over the limit: the writer waits");
        b.read_up_to(0, 1);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("reading lets the writer go on")
            .unwrap();
        assert_eq!(b.max_waiting(), 90);
        b.read_up_to(1, 5);
        b.read_up_to(7, 5);
        assert_eq!(b.max_waiting(), 50);
    }

    // Proves a record acknowledged after the forwarder already read past it does not count
    // as waiting (else, with nothing more to read on that partition, it would never be freed
    // and could hold the consumer for good).
    #[test]
    fn acknowledged_after_read_is_not_waiting() {
        let b = Backlog::new(100);
        b.read_up_to(3, 10);
        b.produced(3, 9, 80);
        b.produced(3, 10, 30);
        assert_eq!(b.max_waiting(), 30);
        b.read_up_to(3, 8);
        assert_eq!(b.max_waiting(), 30, "reading never goes back");
        b.read_up_to(3, 11);
        assert_eq!(b.max_waiting(), 0);
    }
}
