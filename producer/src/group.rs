//! Sharing the streams between producer instances (issue #6): which instance runs which
//! stream, decided by a Kafka consumer group.
//!
//! # How
//!
//! Every instance joins the consumer group `<prefix>-producer` subscribed to the coordination
//! topic `<prefix>.streams`, whose N partitions are *stream slots*; nothing is ever written to
//! it and nothing is read. A stream belongs to slot [`stream_slot`] (a fixed FNV-1a hash of
//! `tenant/content_type`, modulo N), and an instance runs exactly the streams of the slots the
//! group assigns to it. The group protocol gives each partition to at most one member at a
//! time, so each stream has at most one owner; every partition is assigned to some live
//! member, so each stream has one.
//!
//! The rebalance callbacks run on the thread that polls the consumer ([`GroupMember`]) and
//! report to the producer's main loop over a channel:
//! - **revoke**: the callback sends [`GroupEvent::Revoked`] and *blocks* until the main loop
//!   has stopped those streams and their commit in flight has been acknowledged. The client
//!   re-joins the group only after the callback returns, and with the cooperative protocol
//!   used here (`cooperative-sticky`) a slot is given to another member only in the rebalance
//!   that follows its release, so old and new owner never overlap.
//! - **assign**: [`GroupEvent::Assigned`]; the main loop then fences and re-reads the state
//!   of the adopted streams before starting them (see `run.rs`).
//! - A member that dies stops heart-beating; after `session.timeout.ms` the coordinator drops
//!   it and the survivors share its slots. A member cut off from the coordinator finds out
//!   itself after the same timeout (librdkafka reports the assignment as lost, through the
//!   same revoke callback) and stops its streams.
//!
//! The poll thread keeps polling (the client must, or it is evicted after
//! `max.poll.interval.ms`); the blocking callback is the only place it waits, for at most one
//! commit, whose own timeout (`message.timeout.ms`) is below `max.poll.interval.ms`.
//!
//! **Stuck rebalances.** Some Kafka-protocol brokers (tansu 0.6) never elect a new group
//! leader once the leader died, so the survivors re-join forever without an assignment. The
//! poll thread watches librdkafka's group join state (from its statistics): if it has not been
//! `steady` for [`UNSETTLED_SESSIONS`] session timeouts in a row, the member leaves the group
//! (its streams are released through the usual revoke callback) and joins again as a new
//! member, which makes such a broker form the group afresh. On a broker whose rebalances
//! complete this never fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use m365_common::kafka::KafkaSettings;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::settings::ProducerSettings;
use crate::state::StreamId;

/// `max.poll.interval.ms` of the group consumer: above the producer's `message.timeout.ms`
/// (300 s), so a revoke callback waiting for a slow commit does not get the member evicted
/// half-way through.
const MAX_POLL_INTERVAL_MS: &str = "600000";

/// Session timeouts without a settled group after which the member leaves and joins again.
pub const UNSETTLED_SESSIONS: u32 = 3;

/// The slot (partition of `<prefix>.streams`) of a stream: FNV-1a (32 bit) of
/// `tenant/content_type` modulo `slots`. Stable across versions, platforms and processes —
/// every instance must compute the same slot, so this function must never change.
pub fn stream_slot(id: &StreamId, slots: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    let key = format!("{}/{}", id.tenant_id, id.content_type);
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let n = u32::try_from(slots.max(1)).unwrap_or(1);
    // The remainder is below `slots`, which is an i32.
    i32::try_from(h % n).unwrap_or(0)
}

/// What the group told this instance.
#[derive(Debug)]
pub enum GroupEvent {
    /// These slots are now ours.
    Assigned(Vec<i32>),
    /// These slots are ours no longer. The group waits until `done` is sent (or dropped): by
    /// then their streams must have stopped and their last commit be finished.
    Revoked {
        slots: Vec<i32>,
        done: std_mpsc::Sender<()>,
    },
}

/// Errors of joining the group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("the producer group consumer could not be created: {0}")]
    Client(#[source] KafkaError),
    #[error("the producer group could not subscribe to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("the producer group's poll thread could not start: {0}")]
    Thread(String),
}

/// Forwards rebalances to the main loop, logs client errors, and keeps the group's join
/// state from the client's statistics.
#[derive(Clone)]
struct GroupContext {
    topic: String,
    events: mpsc::UnboundedSender<GroupEvent>,
    /// `cgrp.join_state` of the latest statistics (`steady` once the group has settled).
    join_state: Arc<std::sync::Mutex<String>>,
}

impl GroupContext {
    fn slots(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        let mut v: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        v.sort_unstable();
        v
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's own log lines (e.g. with the `debug=cgrp` property) go to `tracing`.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(fac, "{log_message}"),
            RDKafkaLogLevel::Warning => warn!(fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(fac, "{log_message}"),
            RDKafkaLogLevel::Debug => debug!(fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "The producer group client reported an error.");
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(cgrp) = statistics.cgrp {
            *self.join_state.lock().unwrap_or_else(|e| e.into_inner()) = cgrp.join_state;
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let slots = self.slots(tpl);
                if slots.is_empty() {
                    return;
                }
                debug!(?slots, "Stream slots revoked; stopping their streams.");
                let (done, finished) = std_mpsc::channel();
                if self
                    .events
                    .send(GroupEvent::Revoked { slots, done })
                    .is_ok()
                {
                    // Returns when the main loop has stopped the streams, or has gone away.
                    let _ = finished.recv();
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "The producer group failed to rebalance."),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let slots = self.slots(tpl);
            if !slots.is_empty() {
                debug!(?slots, "Stream slots assigned.");
                let _ = self.events.send(GroupEvent::Assigned(slots));
            }
        }
    }
}

/// This instance's membership of the producer group: a consumer polled on a thread of its
/// own, whose rebalances arrive as [`GroupEvent`]s.
pub struct GroupMember {
    events: mpsc::UnboundedReceiver<GroupEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GroupMember {
    /// Joins `<prefix>-producer` on `<prefix>.streams` (which must exist).
    pub fn join(kafka: &KafkaSettings, settings: &ProducerSettings) -> Result<Self, GroupError> {
        let topics = kafka.topics();
        let group = format!("{}-producer", kafka.topic_prefix);
        let mut cfg = kafka.client_config();
        cfg.set("group.id", &group)
            .set(
                "client.id",
                format!("m365-producer-{}", settings.instance_id),
            )
            .set(
                "session.timeout.ms",
                settings.group_session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                settings.group_heartbeat_interval.as_millis().to_string(),
            )
            .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false");
        let (tx, events) = mpsc::unbounded_channel();
        let context = GroupContext {
            topic: topics.streams.clone(),
            events: tx,
            join_state: Arc::default(),
        };
        let consumer = subscribe(&cfg, context.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let patience = settings
            .group_session_timeout
            .saturating_mul(UNSETTLED_SESSIONS);
        let thread = std::thread::Builder::new()
            .name("producer-group".into())
            .spawn(move || poll_until(consumer, &cfg, &context, patience, &stopping))
            .map_err(|e| GroupError::Thread(e.to_string()))?;
        info!(group = %group, topic = %topics.streams, "Joined the producer group.");
        Ok(Self {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The next rebalance; `None` if the poll thread has ended (the membership is gone).
    pub async fn next(&mut self) -> Option<GroupEvent> {
        self.events.recv().await
    }

    /// Leaves the group. Call it only once this instance's streams have stopped: the others
    /// take the slots over as soon as the group hears of it.
    pub async fn leave(mut self) {
        // A revoke callback waiting on us returns once its reply channel is dropped here.
        self.events.close();
        while let Ok(GroupEvent::Revoked { done, .. }) = self.events.try_recv() {
            let _ = done.send(());
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        info!("Left the producer group.");
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        // Without `leave` (an error path): the thread still closes the consumer and exits.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A consumer of the coordination topic in the group, with `context`.
fn subscribe(
    cfg: &ClientConfig,
    context: GroupContext,
) -> Result<BaseConsumer<GroupContext>, GroupError> {
    let topic = context.topic.clone();
    let consumer: BaseConsumer<GroupContext> = cfg
        .create_with_context(context)
        .map_err(GroupError::Client)?;
    consumer
        .subscribe(&[&topic])
        .map_err(|source| GroupError::Subscribe { topic, source })?;
    Ok(consumer)
}

/// Polls until `stop`; dropping the consumer then closes it, which leaves the group. A group
/// that has not settled for `patience` is left and joined again (see the module docs).
fn poll_until(
    mut consumer: BaseConsumer<GroupContext>,
    cfg: &ClientConfig,
    context: &GroupContext,
    patience: Duration,
    stop: &AtomicBool,
) {
    let mut last_error = String::new();
    let mut unsettled_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Ok(_)) => {}
            Some(Err(e)) => {
                let text = e.to_string();
                if text != last_error {
                    warn!(error = %text, "The producer group consumer reported an error.");
                    last_error = text;
                }
            }
        }
        let steady = {
            let state = context.join_state.lock().unwrap_or_else(|e| e.into_inner());
            state.as_str() == "steady"
        };
        if steady {
            unsettled_since = None;
            continue;
        }
        let since = *unsettled_since.get_or_insert_with(Instant::now);
        if since.elapsed() < patience {
            continue;
        }
        warn!(
            waited_ms = since.elapsed().as_millis() as u64,
            "The producer group has not settled; leaving it and joining again."
        );
        // Closing releases our slots through the revoke callback before we leave.
        drop(consumer);
        context
            .join_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        unsettled_since = None;
        consumer = match subscribe(cfg, context.clone()) {
            Ok(c) => c,
            Err(e) => {
                // Ending the thread drops the last event sender: the producer stops.
                tracing::error!(error = %e, "Could not join the producer group again.");
                return;
            }
        };
    }
    drop(consumer);
}

#[cfg(test)]
mod tests {
    use super::*;

    // The slot of a stream is a pure function of tenant and content type (same answer every
    // time, in range), and 15 streams spread over more than one of 12 slots.
    #[test]
    fn slots_are_stable_and_spread() {
        let id = StreamId::new("8a1c2f4e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "Audit.Exchange");
        let s = stream_slot(&id, 12);
        assert!((0..12).contains(&s));
        assert_eq!(stream_slot(&id, 12), s);
        // FNV-1a-32 of "a/b" is 0x3a8e75c1 (computed independently from the published
        // offset basis and prime): the hash is the standard one, not a local variant.
        assert_eq!(stream_slot(&StreamId::new("a", "b"), i32::MAX), 0x3a8e_75c1);
        let mut used = std::collections::BTreeSet::new();
        for t in ["t1", "t2", "t3"] {
            for ct in [
                "Audit.AzureActiveDirectory",
                "Audit.Exchange",
                "Audit.SharePoint",
                "Audit.General",
                "DLP.All",
            ] {
                used.insert(stream_slot(&StreamId::new(t, ct), 12));
            }
        }
        assert!(used.len() > 3, "15 streams in slots {used:?}");
        assert_eq!(stream_slot(&id, 1), 0);
    }
}
