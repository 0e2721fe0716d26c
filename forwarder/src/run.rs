//! The forwarder's stage loop: consumes `m365.events` and `m365.health` in a consumer group,
//! batches records by size and time, writes each batch through the [`Output`], and commits
//! a batch's offsets only after it was written and flushed (design.md §6).
//!
//! # Shape
//! Two tasks. The **loop** owns the Kafka consumer: it reads records, builds batches, keeps
//! them in an ordered queue of *slots*, and commits. The **writer** owns the [`Output`]: it
//! submits each batch and reports its delivery back. The loop never awaits the output, so
//! it keeps polling Kafka (group heartbeats, `max.poll.interval.ms`, rebalances) however long
//! Devo is away.
//!
//! # Records
//! * `m365.events`: the value is sent byte for byte under the record's `tag` header. A
//!   missing, non-UTF-8 or malformed tag (empty, spaces, control characters, longer than 256
//!   bytes) sends the record under the fallback tag and counts it.
//! * `m365.health`: the JSON value is sent under the configured health tag, so Devo's
//!   inactivity alert can watch the pipeline itself.
//! * A record without a value is not sent; its offset is committed with its batch.
//!
//! # Batches and back-pressure
//! A batch is sealed before a record would push its framed size past `batch_max_bytes`, or
//! `batch_max_wait` after its first record. At most `max_in_flight` batches are with the
//! writer at once (the output retries a failed write with backoff until it succeeds). When
//! `max_in_flight` sealed batches wait for room besides those, or the batches held in
//! memory exceed `max_held_bytes`, every assigned partition is paused; `recv` keeps being
//! polled (it serves rebalances and returns nothing new) and the partitions resume once no
//! sealed batch waits any more. The gap between the two thresholds matters: librdkafka
//! drops its prefetched records on every pause, so pausing per batch would refetch all the
//! time. Memory is thus bounded by twice the in-flight batches, one open batch and
//! librdkafka's prefetch (`queued.max.messages.kbytes`, sized from the batch limit unless
//! configured; `fetch.queue.backoff.ms` is lowered from librdkafka's 1 s so that a small
//! prefetch queue is refilled as soon as it is drained instead of a second later).
//!
//! # Commits
//! Slots are committed strictly in the order they were sealed, so a later batch delivered
//! early never commits past an earlier one still being retried. Offsets are stored and
//! committed synchronously (`store_offsets` + `commit(Sync)`); a failed commit is kept and
//! merged into the next one.
//!
//! Syslog over TCP has no acknowledgement: a write that returned is in kernel buffers, and
//! a connection the server drops (Devo restarting, a balancer failing over) loses what had
//! not been read yet, without telling the sender. The loop narrows that window: a delivered
//! batch is committed only after `commit_delay`, and is **sent again** instead when, in the
//! meantime, the output saw connection trouble (a reconnect, a failed write or connect), or
//! when its own write needed a retry (the output resumes a failed write after the bytes it
//! had handed to the dead socket, which may not have arrived). This trades a few duplicates
//! after a failure for no loss; the residual risk is a drop that nothing detects within
//! `commit_delay` (no further write on that connection), which a clean stop closes by
//! half-closing every connection and waiting for Devo's close before the final commit.
//!
//! # Rebalances and stops
//! At-least-once throughout: offsets are committed only for partitions still assigned at
//! commit time; batches holding records of revoked partitions are still delivered, and the
//! new owner re-reads from the last commit. On cancellation the open batch is sealed,
//! everything held is delivered (bounded by `drain_timeout`), the output is closed
//! gracefully, then the offsets are committed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use m365_common::envelope::EventHeaders;
use m365_common::kafka::{KafkaGlueError, KafkaSettings};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, TopicPartitionList as Tpl};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::framing::LineFormat;
use crate::internal_events::ForwarderStats;
use crate::output::{Delivery, Output, OutputError, OutputStats};
use crate::settings::ForwarderSettings;

/// Longest tag accepted from a `tag` header.
const MAX_TAG_LEN: usize = 256;

/// librdkafka's `fetch.queue.backoff.ms` unless configured (its default is 1000).
const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// Distinct tags remembered before the intern table is cleared.
const MAX_INTERNED_TAGS: usize = 4096;

/// Why the stage stopped with an error (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Kafka consumer could not be created or subscribed.
    #[error(transparent)]
    Kafka(#[from] KafkaGlueError),
    /// librdkafka reported a fatal error; the consumer cannot continue.
    #[error("the Kafka consumer failed fatally: {0}")]
    FatalConsumer(String),
    /// The output failed in a way retrying cannot fix (certificates, configuration …).
    #[error("the Devo output failed: {0}")]
    Output(#[from] OutputError),
    /// The writer task ended unexpectedly.
    #[error("the output writer task ended unexpectedly: {0}")]
    Writer(String),
}

/// Logs rebalances and counts them.
struct GroupContext {
    stats: Arc<ForwarderStats>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error.");
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.stats.rebalances.inc();
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "Kafka partitions assigned.")
            }
            Rebalance::Revoke(tpl) => tracing::info!(
                partitions = tpl.count(),
                "Kafka partitions revoked; their uncommitted records will be re-read by the next owner."
            ),
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance failed."),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// Which topic a record came from: index into [`Batch::offsets`] keys.
const EVENTS: u8 = 0;
const HEALTH: u8 = 1;

/// One batch: records packed into one buffer, with the next offset of every partition it
/// covers.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    records: Vec<(Arc<str>, usize, usize)>,
    offsets: BTreeMap<(u8, i32), i64>,
    framed_bytes: usize,
    first_at: Option<Instant>,
}

impl Batch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds neither records nor offsets.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.offsets.is_empty()
    }

    /// Framed size of the batch (what it puts on the wire before compression).
    pub fn framed_bytes(&self) -> usize {
        self.framed_bytes
    }

    fn push(&mut self, tag: Arc<str>, value: &[u8], framed: usize, now: Instant) {
        let start = self.data.len();
        self.data.extend_from_slice(value);
        self.records.push((tag, start, self.data.len()));
        self.framed_bytes += framed;
        self.first_at.get_or_insert(now);
    }

    fn note_offset(&mut self, topic: u8, partition: i32, next: i64, now: Instant) {
        let e = self.offsets.entry((topic, partition)).or_insert(next);
        *e = (*e).max(next);
        self.first_at.get_or_insert(now);
    }

    /// `(tag, record)` pairs for [`Output::submit_records`].
    fn refs(&self) -> Vec<(&str, &[u8])> {
        self.records
            .iter()
            .map(|(t, s, e)| (&**t, &self.data[*s..*e]))
            .collect()
    }
}

/// Where a sealed batch stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SlotState {
    /// Waiting to be handed to the writer (first time or again).
    Queued,
    /// With the writer. `errors` = output errors when it was handed over.
    Submitted { at: Instant, errors: u64 },
    /// Written and flushed; committable once `eligible_at` passed without connection trouble
    /// since `churn` was sampled.
    Delivered {
        eligible_at: Instant,
        churn: u64,
        cleared: bool,
    },
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    batch: Arc<Batch>,
    state: SlotState,
}

/// The output's error and churn counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trouble {
    /// Failed writes and connects.
    errors: u64,
    /// `errors` plus connections replaced (peer closed, idle, age).
    churn: u64,
}

fn trouble(stats: &OutputStats) -> Trouble {
    let s = stats.snapshot();
    let errors = s.write_errors + s.connect_failures;
    Trouble {
        errors,
        churn: errors + s.reconnects,
    }
}

/// Everything the loop keeps between records: the open batch, the ordered slots and the
/// commit bookkeeping. Free of Kafka types except at its edges, so it is unit-tested.
#[derive(Debug)]
struct Batches {
    settings: ForwarderSettings,
    current: Batch,
    slots: VecDeque<Slot>,
    next_seq: u64,
    submitted: usize,
    held_bytes: usize,
    tags: HashMap<Box<[u8]>, Arc<str>>,
    health_tag: Arc<str>,
    fallback_tag: Arc<str>,
}

impl Batches {
    fn new(settings: ForwarderSettings) -> Self {
        Batches {
            health_tag: Arc::from(settings.health_tag.as_str()),
            fallback_tag: Arc::from(settings.fallback_tag.as_str()),
            settings,
            current: Batch::default(),
            slots: VecDeque::new(),
            next_seq: 0,
            submitted: 0,
            held_bytes: 0,
            tags: HashMap::new(),
        }
    }

    fn line(&self) -> &LineFormat {
        &self.settings.line
    }

    /// The tag of an event from its header value; `None` means the fallback tag.
    fn event_tag(&mut self, header: Option<&[u8]>) -> Option<Arc<str>> {
        let raw = header?;
        if let Some(t) = self.tags.get(raw) {
            return Some(Arc::clone(t));
        }
        let s = std::str::from_utf8(raw).ok()?;
        if s.is_empty() || s.len() > MAX_TAG_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        if self.tags.len() >= MAX_INTERNED_TAGS {
            self.tags.clear();
        }
        let tag: Arc<str> = Arc::from(s);
        self.tags.insert(raw.into(), Arc::clone(&tag));
        Some(tag)
    }

    /// Adds one record (or, with `value` empty, only its offset to the open batch).
    #[allow(clippy::too_many_arguments)] // One call site; the fields of one Kafka record.
    fn add(
        &mut self,
        topic: u8,
        partition: i32,
        offset: i64,
        tag_header: Option<&[u8]>,
        value: Option<&[u8]>,
        now: Instant,
        stats: &ForwarderStats,
    ) {
        match value {
            Some(v) if !v.is_empty() => {
                let tag = if topic == HEALTH {
                    stats.health_in.inc();
                    Arc::clone(&self.health_tag)
                } else {
                    stats.events_in.inc();
                    match self.event_tag(tag_header) {
                        Some(t) => t,
                        None => {
                            stats.fallback_tag_records.inc();
                            Arc::clone(&self.fallback_tag)
                        }
                    }
                };
                let framed = self.line().line_len(&tag, v);
                if !self.current.records.is_empty()
                    && self.current.framed_bytes + framed > self.settings.batch_max_bytes
                {
                    self.seal();
                }
                self.current.push(tag, v, framed, now);
            }
            _ => {
                if topic == HEALTH {
                    stats.health_in.inc();
                } else {
                    stats.events_in.inc();
                }
                stats.empty_records.inc();
            }
        }
        self.current.note_offset(topic, partition, offset + 1, now);
        if self.current.framed_bytes >= self.settings.batch_max_bytes {
            self.seal();
        }
    }

    /// When the open batch must be sealed by time.
    fn current_deadline(&self) -> Option<Instant> {
        self.current
            .first_at
            .map(|t| t + self.settings.batch_max_wait)
    }

    /// Seals the open batch into a queued slot.
    fn seal(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.current);
        self.held_bytes += batch.data.len();
        self.slots.push_back(Slot {
            seq: self.next_seq,
            batch: Arc::new(batch),
            state: SlotState::Queued,
        });
        self.next_seq += 1;
    }

    /// Sealed batches waiting for room with the writer.
    fn waiting(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Queued)
            .count()
    }

    /// True when a full round of sealed batches waits besides those in flight, or memory is
    /// at its limit: pause consumption.
    fn blocked(&self) -> bool {
        self.waiting() >= self.settings.max_in_flight.max(1)
            || self.held_bytes >= self.settings.max_held_bytes
    }

    /// True when paused consumption may resume: no sealed batch waits and memory is below
    /// its limit.
    fn may_resume(&self) -> bool {
        self.waiting() == 0 && self.held_bytes < self.settings.max_held_bytes
    }

    /// Queued slots to hand to the writer now (in order), marked as submitted.
    fn take_submittable(&mut self, now: Instant, t: Trouble) -> Vec<(u64, Arc<Batch>)> {
        let mut out = Vec::new();
        for slot in self.slots.iter_mut() {
            if self.submitted >= self.settings.max_in_flight {
                break;
            }
            if slot.state == SlotState::Queued {
                slot.state = SlotState::Submitted {
                    at: now,
                    errors: t.errors,
                };
                self.submitted += 1;
                out.push((slot.seq, Arc::clone(&slot.batch)));
            }
        }
        out
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let front = self.slots.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.slots.get_mut(idx)
    }

    /// Records a successful delivery. A batch whose own write saw output errors is queued
    /// again at once (part of it may sit in a dead socket). Returns the write latency.
    fn delivered(
        &mut self,
        seq: u64,
        now: Instant,
        t: Trouble,
        stats: &ForwarderStats,
    ) -> Option<Duration> {
        let commit_delay = self.settings.commit_delay;
        let slot = self.slot_mut(seq)?;
        let SlotState::Submitted { at, errors } = slot.state else {
            return None;
        };
        if errors != t.errors {
            slot.state = SlotState::Queued;
            stats.batches_resent.inc();
            tracing::info!(
                batch = seq,
                "A Devo connection failed while this batch was written; sending it again."
            );
        } else {
            slot.state = SlotState::Delivered {
                eligible_at: now + commit_delay,
                churn: t.churn,
                cleared: false,
            };
        }
        self.submitted = self.submitted.saturating_sub(1);
        Some(now.saturating_duration_since(at))
    }

    /// Clears delivered slots whose commit delay passed without connection trouble (or
    /// re-queues them when there was some), then pops the cleared prefix. With `now_all`
    /// (a stop) the delay is not waited for. Returns the offsets and record count to commit.
    fn settle(
        &mut self,
        now: Instant,
        t: Trouble,
        now_all: bool,
        stats: &ForwarderStats,
    ) -> (BTreeMap<(u8, i32), i64>, u64) {
        for slot in self.slots.iter_mut() {
            if let SlotState::Delivered {
                eligible_at,
                churn,
                cleared: false,
            } = slot.state
                && (now_all || now >= eligible_at)
            {
                if churn == t.churn {
                    slot.state = SlotState::Delivered {
                        eligible_at,
                        churn,
                        cleared: true,
                    };
                } else {
                    slot.state = SlotState::Queued;
                    stats.batches_resent.inc();
                    tracing::info!(
                        batch = slot.seq,
                        "A Devo connection was lost shortly after this batch was written; sending it again."
                    );
                }
            }
        }
        let mut offsets = BTreeMap::new();
        let mut records = 0u64;
        while let Some(front) = self.slots.front() {
            if !matches!(front.state, SlotState::Delivered { cleared: true, .. }) {
                break;
            }
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(slot.batch.data.len());
            records += slot.batch.len() as u64;
            for (k, v) in &slot.batch.offsets {
                let e = offsets.entry(*k).or_insert(*v);
                *e = (*e).max(*v);
            }
        }
        (offsets, records)
    }

    /// The earliest instant something is due: the open batch's seal or a slot's clearance.
    fn next_wake(&self) -> Option<Instant> {
        let slot = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Delivered {
                    eligible_at,
                    cleared: false,
                    ..
                } => Some(eligible_at),
                _ => None,
            })
            .min();
        match (self.current_deadline(), slot) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when every slot is delivered and cleared, or there are none.
    fn all_cleared(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Delivered { cleared: true, .. }))
    }
}

/// What the writer reports.
enum WriterEvent {
    /// A batch's outcome.
    Done {
        seq: u64,
        result: Result<(), OutputError>,
    },
    /// The output was shut down (after the job channel closed).
    Closed(Result<(), OutputError>),
}

async fn wait_delivery(seq: u64, delivery: Delivery) -> WriterEvent {
    WriterEvent::Done {
        seq,
        result: delivery.wait().await,
    }
}

/// Owns the output: submits each job, reports deliveries, closes the output when the job
/// channel closes.
async fn writer(
    mut output: Output,
    mut jobs: mpsc::Receiver<(u64, Arc<Batch>)>,
    events: mpsc::UnboundedSender<WriterEvent>,
) {
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some((seq, batch)) => {
                    let refs = batch.refs();
                    match output.submit_records(&refs).await {
                        Ok(d) => pending.push(wait_delivery(seq, d)),
                        Err(e) => {
                            let _ = events.send(WriterEvent::Done { seq, result: Err(e) });
                        }
                    }
                }
                None => break,
            },
            Some(ev) = pending.next(), if !pending.is_empty() => {
                let _ = events.send(ev);
            }
        }
    }
    while let Some(ev) = pending.next().await {
        let _ = events.send(ev);
    }
    let closed = output.shutdown().await;
    let _ = events.send(WriterEvent::Closed(closed));
}

/// Offsets committed or waiting to be.
#[derive(Debug, Default)]
struct Commits {
    pending: BTreeMap<(u8, i32), i64>,
    pending_records: u64,
    done: BTreeMap<(u8, i32), i64>,
}

/// Runs the stage until `cancel` (then drains and returns `Ok`) or a fatal error.
pub async fn run(
    settings: ForwarderSettings,
    kafka: KafkaSettings,
    output: Output,
    stats: Arc<ForwarderStats>,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let consumer = Arc::new(create_consumer(&settings, &kafka, &stats)?);
    let topics = [settings.events_topic.clone(), settings.health_topic.clone()];
    tracing::info!(
        group = %settings.group_id,
        events = %topics[0],
        health = %topics[1],
        output = output.sink().kind(),
        "Forwarder started."
    );
    let out_stats = Arc::clone(output.stats());
    let max_in_flight = settings.max_in_flight.max(1);
    let drain_timeout = settings.drain_timeout;
    let (job_tx, job_rx) = mpsc::channel::<(u64, Arc<Batch>)>(max_in_flight + 1);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer(output, job_rx, ev_tx));

    let mut b = Batches::new(ForwarderSettings {
        max_in_flight,
        ..settings
    });
    let mut commits = Commits::default();
    let mut paused = false;
    let mut stop_deadline: Option<Instant> = None;

    let result: Result<(), RunError> = loop {
        let now = Instant::now();
        let t = trouble(&out_stats);
        for (seq, batch) in b.take_submittable(now, t) {
            stats.batches.inc();
            // Never blocks: the channel holds more than `max_in_flight` jobs.
            if job_tx.try_send((seq, batch)).is_err() {
                writer_task.abort();
                return Err(RunError::Writer("the writer stopped taking batches".into()));
            }
        }
        let (offsets, records) = b.settle(now, t, stop_deadline.is_some(), &stats);
        if stop_deadline.is_none() && !offsets.is_empty() {
            commit(&consumer, &topics, &mut commits, offsets, records, &stats).await;
        } else if !offsets.is_empty() {
            merge(&mut commits, offsets, records);
        }
        if let Some(deadline) = stop_deadline {
            if b.all_cleared() {
                break Ok(());
            }
            if now >= deadline {
                tracing::warn!(
                    held = b.slots.len(),
                    "Stopping before every batch was delivered; they will be re-sent after the restart."
                );
                break Ok(());
            }
        } else {
            // The flag changes only once librdkafka took the change: a resume that failed is
            // tried again, never left half-done with partitions paused for good.
            if !paused && b.blocked() {
                if set_paused(&consumer, true) {
                    paused = true;
                    stats.pauses.inc();
                    tracing::debug!("Batches wait for Devo; pausing Kafka consumption.");
                }
            } else if paused && b.may_resume() && set_paused(&consumer, false) {
                paused = false;
                tracing::debug!("Resuming Kafka consumption.");
            }
        }
        let wake = [b.next_wake(), stop_deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| now + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if stop_deadline.is_none() => {
                tracing::info!("Stopping: delivering and committing what is in flight.");
                b.seal();
                stop_deadline = Some(Instant::now() + drain_timeout);
            }
            ev = ev_rx.recv() => match ev {
                Some(WriterEvent::Done { seq, result: Ok(()) }) => {
                    if let Some(latency) = b.delivered(seq, Instant::now(), trouble(&out_stats), &stats) {
                        stats.batch_latency.observe(latency);
                    }
                }
                Some(WriterEvent::Done { result: Err(e), .. }) => break Err(RunError::Output(e)),
                Some(WriterEvent::Closed(_)) | None => {
                    break Err(RunError::Writer("the writer task ended".into()));
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if b.current_deadline().is_some_and(|d| d <= Instant::now()) {
                    b.seal();
                }
            }
            m = consumer.recv(), if stop_deadline.is_none() => match m {
                Ok(m) => {
                    add_message(&mut b, &topics, &m, &stats);
                    if paused {
                        // Prefetched, or from a partition assigned since the pause (a new
                        // assignment starts unpaused): keep everything assigned paused.
                        set_paused(&consumer, true);
                    }
                }
                Err(e) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        break Err(RunError::FatalConsumer(format!("{code:?}: {reason}")));
                    }
                    tracing::warn!(error = %e, "Kafka consumer error (retrying).");
                }
            },
        }
    };

    // Close the output: queued batches finish, connections half-close and wait for Devo.
    drop(job_tx);
    let close = async {
        while let Some(ev) = ev_rx.recv().await {
            if let WriterEvent::Closed(r) = ev {
                return r;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(drain_timeout.max(Duration::from_secs(1)), close).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Closing the Devo output failed."),
        Err(_) => {
            tracing::warn!("The Devo output did not close in time.");
            writer_task.abort();
        }
    }
    if result.is_ok() {
        // Everything merged so far was delivered before the graceful close.
        let pending = std::mem::take(&mut commits.pending);
        let records = std::mem::take(&mut commits.pending_records);
        if !pending.is_empty() {
            commit(&consumer, &topics, &mut commits, pending, records, &stats).await;
        }
        if !commits.pending.is_empty() {
            tracing::warn!(
                "The final offset commit failed; the last batches will be re-sent after the restart."
            );
        }
        tracing::info!(
            committed_records = stats.committed_records.get(),
            "Forwarder stopped."
        );
    }
    let c = Arc::clone(&consumer);
    drop(consumer);
    // Leaving the group blocks briefly; keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(c)).await;
    result
}

fn create_consumer(
    settings: &ForwarderSettings,
    kafka: &KafkaSettings,
    stats: &Arc<ForwarderStats>,
) -> Result<GroupConsumer, RunError> {
    let mut cfg = kafka.consumer_config(&settings.group_id);
    // Offsets are stored explicitly, after delivery.
    cfg.set("enable.auto.offset.store", "false");
    if !kafka.properties.contains_key("queued.max.messages.kbytes") {
        // Prefetch about two batches per partition set, within librdkafka's limits.
        let kb = (settings.batch_max_bytes.saturating_mul(2) / 1024).clamp(1024, 65_536);
        cfg.set("queued.max.messages.kbytes", kb.to_string());
    }
    if !kafka.properties.contains_key("fetch.queue.backoff.ms") {
        // librdkafka waits 1 s before refetching a partition whose prefetch queue was full;
        // with a queue of a few batches that second would be most of the time.
        cfg.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    let consumer: GroupConsumer = cfg
        .create_with_context(GroupContext {
            stats: Arc::clone(stats),
        })
        .map_err(|source| KafkaGlueError::Client {
            what: "forwarder consumer",
            source,
        })?;
    consumer
        .subscribe(&[&settings.events_topic, &settings.health_topic])
        .map_err(|source| KafkaGlueError::Read {
            topic: format!("{}, {}", settings.events_topic, settings.health_topic),
            source,
        })?;
    Ok(consumer)
}

fn add_message(
    b: &mut Batches,
    topics: &[String; 2],
    m: &BorrowedMessage<'_>,
    stats: &ForwarderStats,
) {
    let topic = if m.topic() == topics[0] {
        EVENTS
    } else if m.topic() == topics[1] {
        HEALTH
    } else {
        return;
    };
    let tag = if topic == EVENTS {
        m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == EventHeaders::TAG)
                .and_then(|h| h.value)
        })
    } else {
        None
    };
    b.add(
        topic,
        m.partition(),
        m.offset(),
        tag,
        m.payload(),
        Instant::now(),
        stats,
    );
}

/// Pauses or resumes every assigned partition; false when librdkafka refused (logged), so
/// the caller keeps its state and tries again. Pausing is an optimisation of memory, never a
/// condition of correctness, but a resume that silently failed would stall partitions.
fn set_paused(consumer: &GroupConsumer, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "Cannot read the Kafka assignment.");
            return false;
        }
    };
    if assignment.count() == 0 {
        return true;
    }
    let r = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, pause, "Pausing/resuming Kafka partitions failed; trying again.");
            false
        }
    }
}

fn merge(commits: &mut Commits, offsets: BTreeMap<(u8, i32), i64>, records: u64) {
    for (k, v) in offsets {
        let e = commits.pending.entry(k).or_insert(v);
        *e = (*e).max(v);
    }
    commits.pending_records += records;
}

/// Stores and commits (synchronously) the merged pending offsets of assigned partitions.
/// Offsets of partitions no longer assigned are dropped (their next owner re-reads them).
async fn commit(
    consumer: &Arc<GroupConsumer>,
    topics: &[String; 2],
    commits: &mut Commits,
    offsets: BTreeMap<(u8, i32), i64>,
    records: u64,
    stats: &ForwarderStats,
) {
    merge(commits, offsets, records);
    let assignment = consumer.assignment().unwrap_or_else(|_| Tpl::new());
    let mut tpl = TopicPartitionList::new();
    let mut dropped = Vec::new();
    for (&(t, p), &o) in &commits.pending {
        let topic = &topics[usize::from(t)];
        if assignment.find_partition(topic, p).is_none() {
            dropped.push((t, p));
            continue;
        }
        if commits.done.get(&(t, p)).is_some_and(|&d| d >= o) {
            continue;
        }
        if tpl
            .add_partition_offset(topic, p, Offset::Offset(o))
            .is_err()
        {
            continue;
        }
    }
    for k in dropped {
        commits.pending.remove(&k);
    }
    if tpl.count() == 0 {
        commits.pending.clear();
        stats
            .committed_records
            .add(std::mem::take(&mut commits.pending_records));
        return;
    }
    let c = Arc::clone(consumer);
    let result = tokio::task::spawn_blocking(move || {
        if let Err(e) = c.store_offsets(&tpl) {
            tracing::debug!(error = %e, "Storing offsets failed; committing them explicitly anyway.");
        }
        c.commit(&tpl, CommitMode::Sync)
    })
    .await;
    match result {
        Ok(Ok(())) => {
            stats.commits.inc();
            stats
                .committed_records
                .add(std::mem::take(&mut commits.pending_records));
            let pending = std::mem::take(&mut commits.pending);
            commits.done.extend(pending);
        }
        Ok(Err(e)) => {
            stats.commit_failures.inc();
            tracing::warn!(error = %e, "Committing Kafka offsets failed; will retry with the next batch.");
        }
        Err(e) => {
            stats.commit_failures.inc();
            tracing::warn!(error = %e, "The offset commit task failed; will retry with the next batch.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: usize, in_flight: usize) -> ForwarderSettings {
        let mut s = ForwarderSettings::new("t", LineFormat::sdk_default("h"));
        s.batch_max_bytes = max_bytes;
        s.max_in_flight = in_flight;
        s.commit_delay = Duration::from_millis(100);
        s
    }

    fn rec(n: u32) -> Vec<u8> {
        format!(r#"{{"Id":"{n:08}"}}"#).into_bytes()
    }

    const CLEAN: Trouble = Trouble {
        errors: 0,
        churn: 0,
    };

    // Proves batches are sealed before exceeding the byte limit, tags fall back when the
    // header is missing or malformed, and health records take the health tag.
    #[test]
    fn seals_by_size_and_tags() {
        let stats = ForwarderStats::default();
        let line_len = LineFormat::sdk_default("h").line_len("a.b", &rec(0));
        let mut b = Batches::new(settings(line_len * 3, 2));
        let now = Instant::now();
        for n in 0..7 {
            b.add(
                EVENTS,
                0,
                i64::from(n),
                Some(b"a.b"),
                Some(&rec(n as u32)),
                now,
                &stats,
            );
        }
        assert_eq!(b.slots.len(), 2, "two full batches of three");
        assert!(b.slots.iter().all(|s| s.batch.len() == 3));
        assert_eq!(b.slots[1].batch.offsets[&(EVENTS, 0)], 6);
        b.add(EVENTS, 1, 0, Some(b"bad tag"), Some(&rec(9)), now, &stats);
        b.add(EVENTS, 1, 1, None, Some(&rec(10)), now, &stats);
        b.add(HEALTH, 0, 5, Some(b"ignored"), Some(b"{}"), now, &stats);
        b.add(EVENTS, 2, 3, None, None, now, &stats);
        assert_eq!(stats.fallback_tag_records.get(), 2);
        assert_eq!(stats.empty_records.get(), 1);
        b.seal();
        let last = &b.slots[b.slots.len() - 1].batch;
        let tags: Vec<&str> = last.records.iter().map(|(t, _, _)| &**t).collect();
        assert!(tags.contains(&m365_common::config::DEFAULT_HEALTH_TAG));
        assert!(tags.contains(&m365_common::config::DEFAULT_FALLBACK_TAG));
        assert_eq!(
            last.offsets[&(EVENTS, 2)],
            4,
            "empty record's offset is kept"
        );
    }

    // Proves commits follow seal order: a later batch delivered first waits for the earlier.
    #[test]
    fn commits_in_order_after_delay() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        for n in 0..3 {
            b.add(
                EVENTS,
                0,
                i64::from(n),
                Some(b"a"),
                Some(&rec(n as u32)),
                t0,
                &stats,
            );
        }
        assert_eq!(b.take_submittable(t0, CLEAN).len(), 3);
        b.delivered(2, t0, CLEAN, &stats);
        b.delivered(1, t0, CLEAN, &stats);
        let later = t0 + Duration::from_secs(1);
        let (offsets, n) = b.settle(later, CLEAN, false, &stats);
        assert!(offsets.is_empty() && n == 0, "batch 0 not delivered yet");
        b.delivered(0, later, CLEAN, &stats);
        let (offsets, _) = b.settle(later, CLEAN, false, &stats);
        assert!(offsets.is_empty(), "batch 0 still inside its commit delay");
        let (offsets, n) = b.settle(later + Duration::from_secs(1), CLEAN, false, &stats);
        assert_eq!((offsets[&(EVENTS, 0)], n), (3, 3));
        assert!(b.slots.is_empty());
    }

    // Proves connection trouble after a delivery, or during its write, re-queues the batch
    // instead of committing it, and that in-flight limits block consumption.
    #[test]
    fn trouble_resends_and_limits_block() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 1));
        let t0 = Instant::now();
        b.add(EVENTS, 0, 0, Some(b"a"), Some(&rec(0)), t0, &stats);
        b.add(EVENTS, 0, 1, Some(b"a"), Some(&rec(1)), t0, &stats);
        assert_eq!(b.take_submittable(t0, CLEAN).len(), 1);
        assert!(
            b.blocked(),
            "second batch waits for the single in-flight slot"
        );
        b.delivered(0, t0, CLEAN, &stats);
        let churned = Trouble {
            errors: 0,
            churn: 1,
        };
        let (offsets, _) = b.settle(t0 + Duration::from_secs(1), churned, false, &stats);
        assert!(offsets.is_empty());
        assert_eq!(
            b.slots[0].state,
            SlotState::Queued,
            "re-queued after a reconnect"
        );
        assert_eq!(stats.batches_resent.get(), 1);
        let sent = b.take_submittable(t0, churned);
        assert_eq!(sent[0].0, 0, "the re-queued batch goes first");
        let failed = Trouble {
            errors: 1,
            churn: 2,
        };
        b.delivered(0, t0, failed, &stats);
        assert_eq!(
            b.slots[0].state,
            SlotState::Queued,
            "its write saw an error"
        );
        assert_eq!(stats.batches_resent.get(), 2);
    }

    // Proves consumption pauses only once a full round of sealed batches waits besides the
    // in-flight ones, and resumes only when none waits (no pause/resume per batch).
    #[test]
    fn pause_has_hysteresis() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 2));
        let t0 = Instant::now();
        let mut n = 0;
        let mut add = |b: &mut Batches| {
            b.add(EVENTS, 0, n, Some(b"a"), Some(&rec(n as u32)), t0, &stats);
            n += 1;
        };
        add(&mut b);
        add(&mut b);
        assert_eq!(b.take_submittable(t0, CLEAN).len(), 2);
        add(&mut b);
        assert!(!b.blocked(), "one batch waiting of two allowed");
        add(&mut b);
        assert!(b.blocked(), "a full round waits: pause");
        b.delivered(0, t0, CLEAN, &stats);
        assert_eq!(b.take_submittable(t0, CLEAN).len(), 1);
        assert!(
            !b.blocked() && !b.may_resume(),
            "still one waiting: stay paused"
        );
        b.delivered(1, t0, CLEAN, &stats);
        assert_eq!(b.take_submittable(t0, CLEAN).len(), 1);
        assert!(b.may_resume(), "nothing waits: resume");
    }
}
