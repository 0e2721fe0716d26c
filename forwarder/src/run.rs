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
//! Records are framed as they are read, into the batch's one buffer, with the output's line
//! format; a stream output sends that buffer as it is, without copying it, and the buffers
//! of committed batches are reused (fresh pages and growing buffers cost more than the
//! framing). A batch is sealed before a record would push its framed size past `batch_max_bytes`, or
//! `batch_max_wait` after its first record. At most `max_in_flight` batches are with the
//! writer at once (the output retries a failed write with backoff until it succeeds). When
//! `max_in_flight` sealed batches wait for room besides those, or the batches held in
//! memory exceed `max_held_bytes`, the loop *holds*: it stops polling `recv`, librdkafka's
//! prefetch queue fills and its fetches stop, and nothing is dropped. Only a hold longer
//! than `pause_after` (Devo slow or away) pauses every assigned partition, so that `recv`
//! is polled again (it serves rebalances and returns nothing new); the partitions resume once
//! no sealed batch waits any more. Pausing is kept for long waits only because librdkafka
//! drops its prefetched records on every pause: pausing at every full round (as an earlier
//! version did) refetched all the time and halved throughput. Memory is thus bounded by
//! `max_held_bytes` (batches waiting, in flight, and written but kept for `commit_delay`, which
//! is why this bound, not the CPU, capped throughput near `max_held_bytes / commit_delay`
//! when it was 64 MB), one open batch and librdkafka's prefetch
//! (`queued.max.messages.kbytes`, sized from the batch limit unless configured;
//! `fetch.queue.backoff.ms` is lowered from librdkafka's 1 s so that a small prefetch queue
//! is refilled as soon as it is drained instead of a second later). A batch is sealed when
//! full, `batch_max_wait` after its first record, or [`IDLE_SEAL`] after its last record
//! while the writer has nothing to do.
//!
//! # Commits
//! Slots are committed strictly in the order they were sealed, so a later batch delivered
//! early never commits past an earlier one still being retried. What clears is merged and
//! committed at most every [`COMMIT_INTERVAL`], so small batches under light traffic do not
//! cost a commit round trip each. Offsets are stored and
//! committed synchronously (`store_offsets` + `commit(Sync)`); a failed commit is kept and
//! merged into the next one.
//!
//! Syslog over TCP has no acknowledgement: a write that returned is in kernel buffers, and
//! a connection the server drops (Devo restarting, a balancer failing over) loses what had
//! not been read yet, without telling the sender. The loop narrows that window with
//! evidence **per connection** (the output's [`Carrier`]: which physical connection took a
//! batch, and whether it was lost since, see `output::stream`):
//!
//! * a delivered batch is committed `commit_delay` after its write, unless the connection
//!   that carried it was lost meanwhile; then it is **sent again** (at once, as soon as the
//!   loss is known). A loss elsewhere in the pool — another connection reset, replaced or
//!   failing to connect — re-sends nothing this connection carried: it says nothing about
//!   bytes another socket holds;
//! * one exception: a failed connect anywhere after the delivery may mean Devo went away
//!   before this connection noticed, so the commit is put off once by another
//!   `commit_delay`, then decided by the batch's own connection;
//! * a write that failed part-way is written again from the start of the batch on a new
//!   connection by the output itself (what the failed connection took may be lost); the
//!   delivery then names the new connection and the batch is not queued again, so the
//!   part never handed to the failed connection is sent once;
//! * a connection that closed gracefully (we half-closed, the server closed after reading
//!   everything: rotations and stops) clears its batches at once.
//!
//! Each idle pool connection is watched, so a drop is known within moments rather than at
//! the next write. The residual risk is a drop that goes unnoticed for longer than
//! `commit_delay` (a host vanishing without a reset), and what Devo itself loses after
//! reading; the duplicates left after a failure are the batches written on the dropped
//! connection within `commit_delay` before the drop, plus what of an interrupted write had
//! already arrived. Commits are issued within [`COMMIT_INTERVAL`] of batches clearing, so
//! after a crash of the forwarder the batches sent again are those of the last
//! `commit_delay` plus at most that interval.
//!
//! # Rebalances and stops
//! At-least-once throughout: offsets are committed only for partitions still assigned at
//! commit time; batches holding records of revoked partitions are still delivered, and the
//! new owner re-reads from the last commit. On cancellation the open batch is sealed,
//! everything held is delivered (bounded by `drain_timeout`), the output is closed
//! gracefully, then the offsets of every batch whose connection closed gracefully (or
//! that waited out its delay) are committed; a batch whose connection did not close
//! cleanly stays uncommitted and is sent again after the restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
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
use crate::output::{Carrier, Delivery, LinkState, Output, OutputError};
use crate::settings::ForwarderSettings;

/// Longest tag accepted from a `tag` header.
const MAX_TAG_LEN: usize = 256;

/// librdkafka's `fetch.queue.backoff.ms` unless configured (its default is 1000).
const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// Offsets are committed at most this often (what clears meanwhile is merged).
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// An open batch is sealed this long after its last record when the writer is idle.
const IDLE_SEAL: Duration = Duration::from_millis(5);

/// Records taken from librdkafka per turn of the loop, when they are already there.
const DRAIN_BURST: usize = 256;

/// Emptied batches kept for reuse.
const SPARE_BATCHES: usize = 8;

/// A new batch buffer is allocated for `batch_max_bytes`, up to this much.
const MAX_PREALLOCATED: usize = 8 << 20;

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

/// One batch: records framed for the wire, back to back in one buffer, with the next
/// offset of every partition it covers.
///
/// Records are framed once, when read, with the output's own [`LineFormat`], so a stream
/// output sends `data` as it is (no copy, see [`Output::submit_framed`]); each record's own
/// bytes stay addressable inside its line for outputs that need them apart (HTTP, gzip).
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    /// `(tag, start, end)`: the record's bytes are `data[start..end]`, inside its line.
    records: Vec<(Arc<str>, usize, usize)>,
    offsets: BTreeMap<(u8, i32), i64>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Batch {
    /// An empty batch whose buffer already holds `bytes`, so that filling it never reallocates.
    fn with_capacity(bytes: usize) -> Self {
        Batch {
            data: Vec::with_capacity(bytes),
            ..Batch::default()
        }
    }

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
        self.data.len()
    }

    /// The framed lines, ready for the wire.
    pub fn framed(&self) -> &[u8] {
        &self.data
    }

    fn push(&mut self, line: &LineFormat, tag: Arc<str>, value: &[u8], now: Instant) {
        line.frame_into(&tag, value, &mut self.data);
        // The line ends with the record, then a newline unless the record brought its own.
        let end = self.data.len() - usize::from(!value.ends_with(b"\n"));
        self.records.push((tag, end - value.len(), end));
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }

    fn note_offset(&mut self, topic: u8, partition: i32, next: i64, now: Instant) {
        let e = self.offsets.entry((topic, partition)).or_insert(next);
        *e = (*e).max(next);
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }

    /// Empties the batch, keeping its buffers for the next one.
    fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
        self.offsets.clear();
        self.first_at = None;
        self.last_at = None;
    }

    /// `(tag, record)` pairs for [`Output::submit_framed`].
    fn refs(&self) -> Vec<(&str, &[u8])> {
        self.records
            .iter()
            .map(|(t, s, e)| (&**t, &self.data[*s..*e]))
            .collect()
    }
}

/// A sealed batch's framed lines as [`Bytes`] without copying them: the bytes keep the batch
/// alive.
struct FramedLines(Arc<Batch>);

impl AsRef<[u8]> for FramedLines {
    fn as_ref(&self) -> &[u8] {
        self.0.framed()
    }
}

/// Where a sealed batch stands.
#[derive(Debug, Clone)]
enum SlotState {
    /// Waiting to be handed to the writer (first time or again).
    Queued,
    /// With the writer since `at`.
    Submitted { at: Instant },
    /// Written and flushed; see [`Held`].
    Delivered(Held),
}

/// A delivered batch waiting to be cleared for commit.
///
/// It is cleared once `eligible_at` passed while its `carrier` (the connection that took it
/// whole) is neither lost nor still closing; it is queued again as soon as the carrier is
/// known lost. A connection that closed gracefully (the server closed after our
/// half-close) read everything, so its batches are cleared at once. Without a carrier
/// (HTTP, files) only the delay applies.
#[derive(Debug, Clone)]
struct Held {
    eligible_at: Instant,
    carrier: Option<Carrier>,
    /// Pool-wide connect failures when the batch was delivered (or last deferred).
    connect_failures: u64,
    /// Whether clearance was already put off once for connect failures elsewhere.
    deferred: bool,
    cleared: bool,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    batch: Arc<Batch>,
    state: SlotState,
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
    /// Emptied batches whose buffers are reused (at most [`SPARE_BATCHES`]).
    spare: Vec<Batch>,
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
            spare: Vec::new(),
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
                let framed = self.line().framed_len(&tag, v);
                if !self.current.records.is_empty()
                    && self.current.framed_bytes() + framed > self.settings.batch_max_bytes
                {
                    self.seal();
                }
                self.current.push(&self.settings.line, tag, v, now);
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
        if self.current.framed_bytes() >= self.settings.batch_max_bytes {
            self.seal();
        }
    }

    /// When the open batch must be sealed by time: `batch_max_wait` after its first record,
    /// or, while the writer has nothing to do, [`IDLE_SEAL`] after the last record (the
    /// topic is drained for now; waiting longer would only add latency).
    fn current_deadline(&self) -> Option<Instant> {
        let by_age = self
            .current
            .first_at
            .map(|t| t + self.settings.batch_max_wait)?;
        let writer_idle = self.submitted == 0 && self.waiting() == 0;
        match self.current.last_at {
            Some(last) if writer_idle => Some(by_age.min(last + IDLE_SEAL)),
            _ => Some(by_age),
        }
    }

    /// Seals the open batch into a queued slot.
    fn seal(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let fresh = self.spare.pop().unwrap_or_else(|| {
            // Room for a full batch and one more record, so filling it never reallocates.
            Batch::with_capacity(self.settings.batch_max_bytes.min(MAX_PREALLOCATED) + 64 * 1024)
        });
        let batch = std::mem::replace(&mut self.current, fresh);
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
            .filter(|s| matches!(s.state, SlotState::Queued))
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
    fn take_submittable(&mut self, now: Instant) -> Vec<(u64, Arc<Batch>)> {
        let mut out = Vec::new();
        for slot in self.slots.iter_mut() {
            if self.submitted >= self.settings.max_in_flight {
                break;
            }
            if matches!(slot.state, SlotState::Queued) {
                slot.state = SlotState::Submitted { at: now };
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

    /// Records a successful delivery over `carrier` (the connection that took the batch
    /// whole; `None` for sinks without connections). A batch whose carrier is already known
    /// lost is queued again at once. Returns the write latency.
    ///
    /// A write that failed part-way needs nothing here: the output wrote the batch again
    /// from its start on a new connection (what the failed one took may be lost), and the
    /// carrier is that new connection. So the part that never reached the failed connection
    /// is sent once, and the batch is not queued again for a failure its delivery already
    /// repaired.
    fn delivered(
        &mut self,
        seq: u64,
        now: Instant,
        carrier: Option<Carrier>,
        connect_failures: u64,
        stats: &ForwarderStats,
    ) -> Option<Duration> {
        let commit_delay = self.settings.commit_delay;
        let slot = self.slot_mut(seq)?;
        let SlotState::Submitted { at } = slot.state else {
            return None;
        };
        if carrier.as_ref().is_some_and(Carrier::is_lost) {
            slot.state = SlotState::Queued;
            stats.batches_resent.inc();
            tracing::info!(
                batch = seq,
                "The Devo connection that took this batch was lost at once; sending it again."
            );
        } else {
            tracing::debug!(batch = seq, records = slot.batch.len(), "Batch delivered.");
            slot.state = SlotState::Delivered(Held {
                eligible_at: now + commit_delay,
                carrier,
                connect_failures,
                deferred: false,
                cleared: false,
            });
        }
        self.submitted = self.submitted.saturating_sub(1);
        Some(now.saturating_duration_since(at))
    }

    /// Decides every delivered, uncleared slot, then pops the cleared prefix. Returns the
    /// offsets and record count to commit.
    ///
    /// The evidence is per connection, never pool-wide: a slot is queued again when ITS
    /// carrier is lost (before or after `eligible_at`), and otherwise cleared once
    /// `eligible_at` passed and its carrier is not still closing; a gracefully closed
    /// carrier clears it at once. Another connection's reconnects or failures say nothing
    /// about bytes this one carried, with one exception: a failed connect anywhere in the
    /// pool after the delivery may mean Devo went away and this connection has not seen it
    /// yet (no reset has arrived, or its watcher has not run). Such a slot is put off once
    /// by another `commit_delay`, which gives its connection the time to notice, and is
    /// then decided by its own carrier alone (deferring for ever would stall every healthy
    /// connection while one cannot connect).
    ///
    /// `stopping`: the output has been closed gracefully, so a slot whose carrier closed
    /// gracefully is cleared (as always), one without a carrier is cleared without waiting
    /// for the delay, and one whose carrier is still open (its close never ran) needs the
    /// delay as usual, without the deferral.
    fn settle(
        &mut self,
        now: Instant,
        connect_failures: u64,
        stopping: bool,
        stats: &ForwarderStats,
    ) -> (BTreeMap<(u8, i32), i64>, u64) {
        let commit_delay = self.settings.commit_delay;
        for slot in self.slots.iter_mut() {
            let SlotState::Delivered(held) = &mut slot.state else {
                continue;
            };
            if held.cleared {
                continue;
            }
            let link = held.carrier.as_ref().map(Carrier::state);
            match link {
                Some(LinkState::Lost) => {
                    slot.state = SlotState::Queued;
                    stats.batches_resent.inc();
                    tracing::info!(
                        batch = slot.seq,
                        "The Devo connection that took this batch was lost before its commit; sending it again."
                    );
                }
                Some(LinkState::Closed) => held.cleared = true,
                Some(LinkState::Closing) => {
                    // Decided when the graceful close ends (bounded by close_timeout).
                    if now >= held.eligible_at {
                        held.eligible_at = now + commit_delay;
                    }
                }
                Some(LinkState::Open) if now >= held.eligible_at => {
                    if !stopping && !held.deferred && connect_failures != held.connect_failures {
                        held.deferred = true;
                        held.connect_failures = connect_failures;
                        held.eligible_at = now + commit_delay;
                    } else {
                        held.cleared = true;
                    }
                }
                None if stopping || now >= held.eligible_at => held.cleared = true,
                Some(LinkState::Open) | None => {}
            }
        }
        let mut offsets = BTreeMap::new();
        let mut records = 0u64;
        while let Some(front) = self.slots.front() {
            if !matches!(&front.state, SlotState::Delivered(h) if h.cleared) {
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
            // Committed: its buffers serve a later batch (fresh pages cost more than a copy).
            if self.spare.len() < SPARE_BATCHES
                && let Ok(mut batch) = Arc::try_unwrap(slot.batch)
            {
                batch.clear();
                self.spare.push(batch);
            }
        }
        (offsets, records)
    }

    /// The earliest instant something is due: the open batch's seal or a slot's clearance.
    fn next_wake(&self) -> Option<Instant> {
        let slot = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Delivered(h) if !h.cleared => Some(h.eligible_at),
                _ => None,
            })
            .min();
        match (self.current_deadline(), slot) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when every slot is delivered (cleared or not), or there are none.
    fn all_delivered(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Delivered(_)))
    }
}

/// What the writer reports.
enum WriterEvent {
    /// A batch's outcome.
    Done {
        seq: u64,
        result: Result<Option<Carrier>, OutputError>,
    },
    /// The output was shut down (after the job channel closed).
    Closed(Result<(), OutputError>),
}

async fn wait_delivery(seq: u64, delivery: Delivery) -> WriterEvent {
    WriterEvent::Done {
        seq,
        result: delivery.wait_carrier().await,
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
                    let framed = Bytes::from_owner(FramedLines(Arc::clone(&batch)));
                    match output.submit_framed(framed, &refs).await {
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
    let pause_after = settings.pause_after;
    // Batches are framed as they fill, so with the output's own format.
    let line = output.format().clone();
    let (job_tx, job_rx) = mpsc::channel::<(u64, Arc<Batch>)>(max_in_flight + 1);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer(output, job_rx, ev_tx));

    let mut b = Batches::new(ForwarderSettings {
        max_in_flight,
        line,
        ..settings
    });
    let mut commits = Commits::default();
    let mut paused = false;
    let mut blocked_since: Option<Instant> = None;
    let mut next_commit_at = Instant::now();
    let mut stop_deadline: Option<Instant> = None;

    let result: Result<(), RunError> = loop {
        let now = Instant::now();
        let failures = out_stats.connect_failures();
        for (seq, batch) in b.take_submittable(now) {
            stats.batches.inc();
            // Never blocks: the channel holds more than `max_in_flight` jobs.
            if job_tx.try_send((seq, batch)).is_err() {
                writer_task.abort();
                return Err(RunError::Writer("the writer stopped taking batches".into()));
            }
        }
        let (offsets, records) = b.settle(now, failures, false, &stats);
        if !offsets.is_empty() {
            merge(&mut commits, offsets, records);
        }
        // One commit per COMMIT_INTERVAL at most: batches clear one by one (small ones when
        // traffic is light), and each commit is a round trip the loop waits for.
        let commit_due =
            (stop_deadline.is_none() && !commits.pending.is_empty()).then_some(next_commit_at);
        if commit_due.is_some_and(|at| now >= at) {
            commit(&consumer, &topics, &mut commits, &stats).await;
            next_commit_at = Instant::now() + COMMIT_INTERVAL;
        }
        if let Some(deadline) = stop_deadline {
            // The rest is decided once the output closed gracefully (see below).
            if b.all_delivered() {
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
            // Short waits hold: `recv` is not polled, librdkafka's prefetch fills and its
            // fetches stop (nothing is dropped). Only a wait longer than `pause_after` pauses
            // the partitions, so `recv` serves rebalances again while Devo is away. The flag
            // changes only once librdkafka took the change: a resume that failed is tried
            // again, never left half-done with partitions paused for good.
            if b.blocked() {
                let since = *blocked_since.get_or_insert(now);
                if !paused && now >= since + pause_after && set_paused(&consumer, true) {
                    paused = true;
                    stats.pauses.inc();
                    tracing::debug!("Batches wait for Devo; pausing Kafka consumption.");
                }
            } else {
                blocked_since = None;
                if paused && b.may_resume() && set_paused(&consumer, false) {
                    paused = false;
                    tracing::debug!("Resuming Kafka consumption.");
                }
            }
        }
        let holding = stop_deadline.is_none() && !paused && blocked_since.is_some();
        let pause_due = blocked_since
            .filter(|_| holding)
            .map(|since| since + pause_after);
        let commit_wake = commit_due.filter(|_| !commits.pending.is_empty());
        let wake = [b.next_wake(), stop_deadline, pause_due, commit_wake]
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
                Some(WriterEvent::Done { seq, result: Ok(carrier) }) => {
                    let failures = out_stats.connect_failures();
                    if let Some(latency) = b.delivered(seq, Instant::now(), carrier, failures, &stats) {
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
            m = consumer.recv(), if stop_deadline.is_none() && !holding => match m {
                Ok(m) => {
                    let mut fatal = None;
                    let now = Instant::now();
                    let sealed_before = b.slots.len();
                    add_message(&mut b, &topics, &m, now, &stats);
                    drop(m);
                    // Take what librdkafka already holds without a turn of the loop per record
                    // (its timers and bookkeeping cost more than the record), up to a bound so
                    // sealed batches reach the writer promptly.
                    for _ in 1..DRAIN_BURST {
                        // Only a sealed batch can make the loop hold.
                        if b.slots.len() != sealed_before && b.blocked() {
                            break;
                        }
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => add_message(&mut b, &topics, &m, now, &stats),
                            Some(Err(e)) => {
                                fatal = consumer_error(&consumer, &e);
                                break;
                            }
                            None => break,
                        }
                    }
                    if paused {
                        // Prefetched, or from a partition assigned since the pause (a new
                        // assignment starts unpaused): keep everything assigned paused.
                        set_paused(&consumer, true);
                    }
                    if let Some(fatal) = fatal {
                        break Err(fatal);
                    }
                }
                Err(e) => {
                    if let Some(fatal) = consumer_error(&consumer, &e) {
                        break Err(fatal);
                    }
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
        // Connections have closed: gracefully (the server read everything they carried) or
        // not (their batches stay uncommitted and are sent again after the restart).
        let (offsets, records) =
            b.settle(Instant::now(), out_stats.connect_failures(), true, &stats);
        merge(&mut commits, offsets, records);
        if !b.slots.is_empty() {
            tracing::warn!(
                held = b.slots.len(),
                "Some batches could not be confirmed before the stop; they will be re-sent after the restart."
            );
        }
        if !commits.pending.is_empty() {
            commit(&consumer, &topics, &mut commits, &stats).await;
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
        // Prefetch about sixteen batches (16 MB by default; librdkafka's default is 64 MB):
        // the fetcher pauses while the queue is full, so a small queue starves the loop.
        // Measured on the benchmark (medians of 3): 2 MB 249k records/s, 8 MB 379k, 16 MB 384k.
        let kb = (settings.batch_max_bytes.saturating_mul(16) / 1024).clamp(4096, 65_536);
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
    now: Instant,
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
    if topic == EVENTS
        && let Some(progress) = &b.settings.read_progress
    {
        progress.read_up_to(m.partition(), m.offset() + 1);
    }
    b.add(
        topic,
        m.partition(),
        m.offset(),
        tag,
        m.payload(),
        now,
        stats,
    );
}

/// A consumer error: fatal (the stage stops) or logged and retried.
fn consumer_error(consumer: &GroupConsumer, e: &KafkaError) -> Option<RunError> {
    if let Some((code, reason)) = consumer.client().fatal_error() {
        return Some(RunError::FatalConsumer(format!("{code:?}: {reason}")));
    }
    tracing::warn!(error = %e, "Kafka consumer error (retrying).");
    None
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
    stats: &ForwarderStats,
) {
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
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        if let Err(e) = c.store_offsets(&tpl) {
            tracing::debug!(error = %e, "Storing offsets failed; committing them explicitly anyway.");
        }
        c.commit(&tpl, CommitMode::Sync)
    })
    .await;
    match result {
        Ok(Ok(())) => {
            tracing::debug!(
                records = commits.pending_records,
                took_ms = started.elapsed().as_millis() as u64,
                "Committed Kafka offsets."
            );
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

    /// Adds `n` one-record batches (batch size 1 byte: each record seals its own batch).
    fn batches(b: &mut Batches, n: u32, now: Instant, stats: &ForwarderStats) {
        for i in 0..n {
            b.add(
                EVENTS,
                0,
                i64::from(i),
                Some(b"a"),
                Some(&rec(i)),
                now,
                stats,
            );
        }
    }

    fn state(b: &Batches, i: usize) -> &SlotState {
        &b.slots[i].state
    }

    // Proves the open batch is sealed IDLE_SEAL after its last record while the writer has
    // nothing to do (the topic is drained: waiting longer only adds latency), and only by its
    // age (batch_max_wait) while batches are with the writer or wait for it.
    #[test]
    fn idle_writer_seals_early_busy_writer_by_age() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1 << 20, 2));
        assert_eq!(b.current_deadline(), None, "nothing open");
        let t0 = Instant::now();
        b.add(EVENTS, 0, 0, Some(b"a"), Some(&rec(0)), t0, &stats);
        let t1 = t0 + Duration::from_millis(3);
        b.add(EVENTS, 0, 1, Some(b"a"), Some(&rec(1)), t1, &stats);
        assert_eq!(b.current_deadline(), Some(t1 + IDLE_SEAL));
        b.seal();
        assert_eq!(b.take_submittable(t1).len(), 1);
        b.add(EVENTS, 0, 2, Some(b"a"), Some(&rec(2)), t1, &stats);
        assert_eq!(
            b.current_deadline(),
            Some(t1 + b.settings.batch_max_wait),
            "a batch is with the writer: fill the next one"
        );
    }

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

    // Proves a batch holds its records framed for the wire, in order, each record's own bytes
    // addressable inside its line (with or without its own newline, plain and octet-counted),
    // and that a committed batch's buffers are reused by a later one.
    #[test]
    fn batches_hold_framed_lines_and_reuse_buffers() {
        let stats = ForwarderStats::default();
        let values: [&[u8]; 3] = [b"{\"a\":1}", b"{\"b\":2}\n", b"{\"c\":3}"];
        for multiline in [false, true] {
            let mut s = settings(1 << 20, 2);
            s.line.multiline = multiline;
            let mut b = Batches::new(s.clone());
            let now = Instant::now();
            for (i, v) in values.iter().enumerate() {
                b.add(EVENTS, 0, i as i64, Some(b"t.x"), Some(v), now, &stats);
            }
            b.seal();
            let batch = Arc::clone(&b.slots[0].batch);
            let expected: Vec<u8> = values.iter().flat_map(|v| s.line.frame("t.x", v)).collect();
            assert_eq!(batch.framed(), &expected[..]);
            let refs = batch.refs();
            assert_eq!(refs.len(), 3);
            for ((tag, got), want) in refs.iter().zip(values) {
                assert_eq!((*tag, *got), ("t.x", want));
            }
            drop(refs);
            drop(batch);

            // Deliver, clear and commit it: its buffers come back for the next batch.
            let (seq, _) = b.take_submittable(now).pop().unwrap();
            b.delivered(seq, now, None, 0, &stats);
            let later = now + s.commit_delay;
            assert_eq!(b.settle(later, 0, false, &stats).1, 3);
            assert_eq!(b.spare.len(), 1, "the committed batch is kept for reuse");
            let capacity = b.spare[0].data.capacity();
            assert!(b.spare[0].is_empty() && b.spare[0].data.is_empty());
            b.add(EVENTS, 0, 3, Some(b"t.x"), Some(values[0]), later, &stats);
            b.seal();
            b.add(EVENTS, 0, 4, Some(b"t.x"), Some(values[0]), later, &stats);
            assert_eq!(b.current.data.capacity(), capacity, "reused buffer");
            assert_eq!(b.current.framed(), &s.line.frame("t.x", values[0])[..]);
        }
    }

    // Proves commits follow seal order: a later batch delivered first waits for the earlier.
    #[test]
    fn commits_in_order_after_delay() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        batches(&mut b, 3, t0, &stats);
        let a = Carrier::new(0, 1);
        assert_eq!(b.take_submittable(t0).len(), 3);
        b.delivered(2, t0, Some(a.clone()), 0, &stats);
        b.delivered(1, t0, Some(a.clone()), 0, &stats);
        let later = t0 + Duration::from_secs(1);
        let (offsets, n) = b.settle(later, 0, false, &stats);
        assert!(offsets.is_empty() && n == 0, "batch 0 not delivered yet");
        b.delivered(0, later, Some(a), 0, &stats);
        let (offsets, _) = b.settle(later, 0, false, &stats);
        assert!(offsets.is_empty(), "batch 0 still inside its commit delay");
        let (offsets, n) = b.settle(later + Duration::from_secs(1), 0, false, &stats);
        assert_eq!((offsets[&(EVENTS, 0)], n), (3, 3));
        assert!(b.slots.is_empty());
        assert_eq!(stats.batches_resent.get(), 0);
    }

    // Proves a batch whose connection is lost within the commit delay is sent again and not
    // committed, and that the batch after it (other connection) waits for its re-delivery.
    #[test]
    fn batch_on_connection_lost_within_delay_is_resent() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        batches(&mut b, 2, t0, &stats);
        let (a, other) = (Carrier::new(0, 1), Carrier::new(1, 1));
        assert_eq!(b.take_submittable(t0).len(), 2);
        b.delivered(0, t0, Some(a.clone()), 0, &stats);
        b.delivered(1, t0, Some(other.clone()), 0, &stats);
        assert!(a.mark_lost(), "Devo drops connection 0 within the delay");
        let (offsets, _) = b.settle(t0 + Duration::from_millis(50), 0, false, &stats);
        assert!(offsets.is_empty());
        assert!(
            matches!(state(&b, 0), SlotState::Queued),
            "re-queued at once"
        );
        assert_eq!(stats.batches_resent.get(), 1);
        let (offsets, _) = b.settle(t0 + Duration::from_secs(1), 0, false, &stats);
        assert!(offsets.is_empty(), "batch 1 is clear but waits for batch 0");
        let resent = b.take_submittable(t0 + Duration::from_secs(1));
        assert_eq!(resent.len(), 1);
        assert_eq!(
            resent[0].0, 0,
            "only the batch of the lost connection goes again"
        );
        let t1 = t0 + Duration::from_secs(1);
        b.delivered(0, t1, Some(Carrier::new(0, 2)), 0, &stats);
        let (offsets, n) = b.settle(t1 + Duration::from_secs(1), 0, false, &stats);
        assert_eq!((offsets[&(EVENTS, 0)], n), (2, 2));
        assert_eq!(stats.batches_resent.get(), 1);

        // A loss found after the delay passed but before the loop cleared the slot counts too.
        batches(&mut b, 1, t1, &stats);
        b.take_submittable(t1);
        let c = Carrier::new(1, 2);
        b.delivered(2, t1, Some(c.clone()), 0, &stats);
        c.mark_lost();
        let (offsets, _) = b.settle(t1 + Duration::from_secs(5), 0, false, &stats);
        assert!(offsets.is_empty());
        assert!(matches!(state(&b, 0), SlotState::Queued));
    }

    // Proves a batch on a healthy connection is committed, not re-sent, while another
    // connection of the pool is lost, reconnects and fails to connect; the connect failures
    // put its clearance off once, and only once.
    #[test]
    fn healthy_connection_batch_survives_other_connection_churn() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        batches(&mut b, 2, t0, &stats);
        let (healthy, churning) = (Carrier::new(0, 1), Carrier::new(1, 1));
        b.take_submittable(t0);
        b.delivered(0, t0, Some(healthy.clone()), 0, &stats);
        b.delivered(1, t0, Some(churning.clone()), 0, &stats);
        churning.mark_lost();
        // Connection 1 then fails to reconnect 7 times.
        let delay = Duration::from_millis(100);
        let (offsets, _) = b.settle(t0 + delay, 7, false, &stats);
        assert!(
            offsets.is_empty(),
            "connect failures elsewhere: put off once"
        );
        assert!(matches!(state(&b, 0), SlotState::Delivered(h) if h.deferred && !h.cleared));
        assert!(matches!(state(&b, 1), SlotState::Queued));
        let (offsets, n) = b.settle(t0 + delay * 2, 19, false, &stats);
        assert_eq!(
            (offsets[&(EVENTS, 0)], n),
            (1, 1),
            "cleared by its own connection's health, not deferred again"
        );
        assert_eq!(
            stats.batches_resent.get(),
            1,
            "only the lost connection's batch"
        );
    }

    // Proves a write that failed part-way and was completed on a new connection is
    // committed as delivered: its failure does not queue it again (which would send the
    // part the new connection confirmed a second time).
    #[test]
    fn resumed_write_is_not_sent_again() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        batches(&mut b, 1, t0, &stats);
        b.take_submittable(t0);
        // The output wrote part of the batch on connection 0 #1, lost it, then wrote the
        // whole batch from its start on connection 0 #2, which is the carrier it reports.
        let failed = Carrier::new(0, 1);
        failed.mark_lost();
        let new = Carrier::new(0, 2);
        b.delivered(0, t0, Some(new), 3, &stats);
        assert!(matches!(state(&b, 0), SlotState::Delivered(_)));
        let (offsets, n) = b.settle(t0 + Duration::from_secs(1), 3, false, &stats);
        assert_eq!((offsets[&(EVENTS, 0)], n), (1, 1));
        assert_eq!(stats.batches_resent.get(), 0);
        assert!(b.take_submittable(t0).is_empty(), "nothing to send again");
    }

    // Proves a gracefully closed carrier clears its batches at once, a closing one holds
    // them until the close ends, a carrier lost at once re-queues at delivery, and a stop
    // clears only what is confirmed.
    #[test]
    fn graceful_close_and_stop() {
        let stats = ForwarderStats::default();
        let mut b = Batches::new(settings(1, 4));
        let t0 = Instant::now();
        batches(&mut b, 3, t0, &stats);
        b.take_submittable(t0);
        let rotated = Carrier::new(0, 1);
        b.delivered(0, t0, Some(rotated.clone()), 0, &stats);
        rotated.mark_closing();
        let (offsets, _) = b.settle(t0 + Duration::from_secs(1), 0, false, &stats);
        assert!(offsets.is_empty(), "closing: not decided yet");
        rotated.mark_closed();
        let (offsets, _) = b.settle(t0 + Duration::from_secs(1), 0, false, &stats);
        assert_eq!(offsets[&(EVENTS, 0)], 1, "the server read everything");

        let dead = Carrier::new(1, 1);
        dead.mark_lost();
        b.delivered(1, t0, Some(dead), 0, &stats);
        assert!(matches!(state(&b, 0), SlotState::Queued));
        let open = Carrier::new(0, 2);
        b.delivered(2, t0, Some(open.clone()), 0, &stats);
        let (offsets, _) = b.settle(t0, 0, true, &stats);
        assert!(
            offsets.is_empty(),
            "batch 1 is not delivered: nothing after it commits"
        );
        b.take_submittable(t0);
        let closed = Carrier::new(1, 2);
        closed.mark_closing();
        closed.mark_closed();
        b.delivered(1, t0, Some(closed), 0, &stats);
        let (offsets, _) = b.settle(t0, 0, true, &stats);
        assert_eq!(
            offsets[&(EVENTS, 0)],
            2,
            "still-open carrier waits for its delay"
        );
        let (offsets, _) = b.settle(t0 + Duration::from_secs(1), 0, true, &stats);
        assert_eq!(offsets[&(EVENTS, 0)], 3);
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
        assert_eq!(b.take_submittable(t0).len(), 2);
        add(&mut b);
        assert!(!b.blocked(), "one batch waiting of two allowed");
        add(&mut b);
        assert!(b.blocked(), "a full round waits: pause");
        b.delivered(0, t0, None, 0, &stats);
        assert_eq!(b.take_submittable(t0).len(), 1);
        assert!(
            !b.blocked() && !b.may_resume(),
            "still one waiting: stay paused"
        );
        b.delivered(1, t0, None, 0, &stats);
        assert_eq!(b.take_submittable(t0).len(), 1);
        assert!(b.may_resume(), "nothing waits: resume");
    }
}
