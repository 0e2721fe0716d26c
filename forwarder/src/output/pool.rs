//! A pool of N stream connections (`devo_tls`/`tcp`) that batches are spread over
//! round-robin, for throughput: one TLS connection is bound by one core's encryption and one
//! TCP window, several run in parallel.
//!
//! Each connection is owned by its own task. [`Pool::submit`] hands a batch to the next
//! connection (waiting only if that connection already has a batch queued) and returns a
//! [`Delivery`] that resolves once that batch is written and flushed, so a caller can keep
//! several batches in flight and commit Kafka offsets in order as deliveries complete.
//! Order between batches on different connections is not preserved (Devo orders by
//! ingestion anyway); order within a batch is.
//!
//! A delivery names the physical connection that carried the batch ([`Carrier`]), and
//! while a connection has no batch to write its task watches it
//! ([`StreamOutput::watch`]), so a connection Devo drops is known lost within moments, not
//! only at its next write. The caller can then re-send exactly what that connection
//! carried lately, and nothing carried by the others.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::OutputError;
use super::stats::{OutputStats, TagCounts};
use super::stream::{Carrier, StreamOutput, StreamSettings};

/// What a connection task reports for one batch: the carrier, `None` for an empty batch.
type Sent = Result<Option<Carrier>, OutputError>;

struct Job {
    bytes: Bytes,
    done: oneshot::Sender<Sent>,
}

/// The pending or settled outcome of one submitted batch.
#[derive(Debug)]
pub struct Delivery {
    state: DeliveryState,
    tags: Vec<(String, TagCounts)>,
    stats: Option<Arc<OutputStats>>,
}

#[derive(Debug)]
enum DeliveryState {
    Ready(Sent),
    Pending(oneshot::Receiver<Sent>),
}

impl Delivery {
    /// An already settled delivery of a sink without connections (nothing names a carrier).
    pub fn ready(result: Result<(), OutputError>) -> Self {
        Self::carried(result.map(|()| None))
    }

    /// An already settled delivery over a connection: `Ok(Some(carrier))` names it.
    pub fn carried(result: Result<Option<Carrier>, OutputError>) -> Self {
        Delivery {
            state: DeliveryState::Ready(result),
            tags: Vec::new(),
            stats: None,
        }
    }

    /// Per-tag counts to record in `stats` when the delivery succeeds.
    pub(crate) fn with_tags(
        mut self,
        tags: Vec<(String, TagCounts)>,
        stats: Arc<OutputStats>,
    ) -> Self {
        self.tags = tags;
        self.stats = Some(stats);
        self
    }

    /// Waits until the batch is written and flushed (or failed).
    pub async fn wait(self) -> Result<(), OutputError> {
        self.wait_carrier().await.map(|_| ())
    }

    /// Waits until the batch is written and flushed (or failed); `Ok` names the connection
    /// that carried it (`None` when no connection was involved: other sinks, empty batch).
    pub async fn wait_carrier(self) -> Result<Option<Carrier>, OutputError> {
        let result = match self.state {
            DeliveryState::Ready(r) => r,
            DeliveryState::Pending(rx) => rx.await.unwrap_or(Err(OutputError::Closed)),
        };
        if result.is_ok()
            && let Some(stats) = &self.stats
        {
            stats.record_tags(self.tags.iter().map(|(t, c)| (t.as_str(), *c)));
        }
        result
    }
}

/// N parallel stream connections behind one handle.
#[derive(Debug)]
pub struct Pool {
    senders: Vec<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    stats: Arc<OutputStats>,
}

impl Pool {
    /// Builds `connections` (at least 1) outputs from the same settings, sharing `stats`, and
    /// starts one task per connection. Must be called inside a tokio runtime.
    pub fn new(
        settings: StreamSettings,
        connections: usize,
        stats: Arc<OutputStats>,
    ) -> Result<Self, OutputError> {
        let n = connections.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            let mut output = StreamOutput::new(settings.clone(), Arc::clone(&stats))?;
            output.set_index(index);
            let (tx, rx) = mpsc::channel::<Job>(1);
            senders.push(tx);
            workers.push(tokio::spawn(worker(output, rx)));
        }
        Ok(Pool {
            senders,
            workers,
            next: 0,
            stats,
        })
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Always false: a pool has at least one connection.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// Queues `bytes` on the next connection (round-robin); waits only for queue space.
    pub async fn submit(&mut self, bytes: Bytes) -> Result<Delivery, OutputError> {
        if self.senders.is_empty() {
            return Err(OutputError::Closed);
        }
        let idx = self.next % self.senders.len();
        self.next = self.next.wrapping_add(1);
        let (done, rx) = oneshot::channel();
        self.senders[idx]
            .send(Job { bytes, done })
            .await
            .map_err(|_| OutputError::Closed)?;
        Ok(Delivery {
            state: DeliveryState::Pending(rx),
            tags: Vec::new(),
            stats: None,
        })
    }

    /// Submits and waits: `Ok` once the batch is written and flushed.
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.submit(Bytes::copy_from_slice(bytes))
            .await?
            .wait()
            .await
    }

    /// Stops intake, lets every connection finish its queued batch, then closes each
    /// gracefully (half-close and wait for the server).
    pub async fn shutdown(&mut self) -> Result<(), OutputError> {
        self.senders.clear();
        for handle in self.workers.drain(..) {
            let _ = handle.await;
        }
        Ok(())
    }
}

/// One connection's task: writes each job; between jobs, watches the connection so that a
/// drop by Devo marks it lost at once (and an idle one is closed gracefully in time).
async fn worker(mut output: StreamOutput, mut rx: mpsc::Receiver<Job>) {
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            () = output.watch() => continue,
        };
        let Some(job) = job else { break };
        let result = output.send(&job.bytes).await;
        // The submitter may have stopped waiting; the result is then simply dropped.
        let _ = job.done.send(result);
    }
    let _ = output.shutdown().await;
}
