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
//! forwarder has not committed yet; a watcher task feeds the forwarder group's committed
//! offsets in. Counting only what the forwarder *committed* keeps the consumer waiting while
//! Devo is down, instead of filling a broker that would drop the overflow.
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
        p.records.push_back((offset, size));
        p.bytes += size;
    }

    /// The forwarder committed `partition` up to `next_offset` (exclusive).
    pub fn committed(&self, partition: i32, next_offset: i64) {
        let freed = {
            let mut parts = self.lock();
            let Some(p) = parts.get_mut(&partition) else {
                return;
            };
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

    /// Returns once every partition is below the limit. Wakes on commits, and re-checks
    /// every second in case a notification raced the check.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.room.notified();
            if self.max_waiting() < self.limit {
                return;
            }
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
    // commit passes the waiting records.
    #[tokio::test]
    async fn waits_until_committed() {
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
        b.committed(0, 1);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("a commit lets the writer go on")
            .unwrap();
        assert_eq!(b.max_waiting(), 90);
        b.committed(1, 5);
        b.committed(7, 5);
        assert_eq!(b.max_waiting(), 50);
    }
}
