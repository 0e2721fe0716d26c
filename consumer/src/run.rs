//! The consumer's main loop: start-up, the download stage on `m365.uris`, the uri_retry
//! service, heartbeats, clean shutdown.
//!
//! The download stage handles one URI at a time per instance, in partition order:
//! 1. the message is checked: a tenant this instance does not serve, a `content_uri` off the
//!    tenant's API base (scheme, host, port, or path outside `/api/v1.0/{tenant}/activity/feed/`)
//!    or an already expired content goes to `m365.uris.dead` with a gap record, without any
//!    request;
//! 2. the stream's dedup filter is loaded if this instance does not hold it (see
//!    [`crate::state`]), together with those of the other streams whose URIs come to its
//!    partitions, in one scan;
//! 3. the blob is downloaded, split and produced ([`crate::blob`]) — transactionally together
//!    with the URI offset, or acknowledged and then the offset committed;
//! 4. a failure is routed to the retry or dead topic ([`crate::retry`]), with the offset.
//!
//! In the ordered mode the last sends of a completed blob are acknowledged while the next blob
//! is downloaded and sent (the wait was about a fifth of each blob's time): the blob stays
//! *pending* until then, and is *settled* — acknowledgements drained, URI offset committed,
//! counted — before the next blob's offset is committed, before anything else is committed
//! (a refused or failed URI), before a dedup snapshot is written (a snapshot never holds an
//! id whose event is not on the topic), when no next URI is waiting (an idle topic never
//! leaves an offset uncommitted), after a rebalance and at shutdown. So offsets are still
//! committed strictly in order, each only after its own blob's events are acknowledged. The
//! in-flight bounds (`max_in_flight_records`, `max_in_flight_bytes`) are per blob, so up to
//! twice them may await acknowledgement while two blobs overlap.
//!
//! Rebalances happen only inside `recv`, between blobs (rdkafka serves the rebalance callback
//! on the polling task), so a blob is always downloaded by the member that started it. A
//! revocation first waits for the pending blob's sends (see
//! [`crate::kafka_io::GroupContext`]); the blob's offset is then committed only if its
//! partition stayed with this member (otherwise the new owner reads the URI again and finds
//! every record in its filter). After a rebalance every filter is dropped and reloaded on
//! demand, because another member may have extended it meanwhile. Any Kafka error restarts the session: a new producer
//! (a transactional one fences and aborts the failed transaction) and a new consumer that
//! resumes from the committed offsets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt as _;
use m365_common::envelope::{UriMessage, stream_key};
use m365_common::health::{HealthRecord, Kind, Level};
use m365_common::kafka::{self, KafkaGlueError, KafkaSettings, Topics};
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::blob::{BlobError, BlobJob, BlobResult, Downloaded, download};
use crate::dedup::DedupSettings;
use crate::internal_events::ConsumerStats;
use crate::kafka_io::{GroupConsumer, InFlight, Output, group_consumer};
use crate::retry::{self, Route, classify, dead_letter, route, route_records, uri_record};
use crate::settings::{ConsumerSettings, ConsumerTenant};
use crate::state::{StateStore, StreamId, StreamState};

/// Most dedup filters loaded by one scan of `m365.events` (see `Session::to_load`); with the
/// default sizing each holds about 7.3 MB.
const PRELOAD_STREAMS: usize = 8;

/// Service name of the download stage on health records.
pub const SERVICE_NAME: &str = "consumer";

/// Errors that stop the consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Kafka(#[from] KafkaGlueError),
    #[error("nothing to run: neither the consumer nor the uri_retry service is enabled")]
    NothingToDo,
}

/// What both stages share.
pub struct Shared {
    pub settings: ConsumerSettings,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Tenants by lower-case tenant id.
    pub tenants: HashMap<String, ConsumerTenant>,
    pub stats: Arc<ConsumerStats>,
    pub state: StateStore,
}

/// Runs the enabled stages until `cancel` fires, then finishes the blob in flight, writes
/// dedup snapshots and a stop record, and returns.
pub async fn run(
    settings: ConsumerSettings,
    kafka_settings: KafkaSettings,
    tenants: Vec<ConsumerTenant>,
    stats: Arc<ConsumerStats>,
    cancel: CancellationToken,
) -> Result<(), ConsumerError> {
    if !settings.run_consumer && !settings.run_uri_retry {
        return Err(ConsumerError::NothingToDo);
    }
    // Another stage may be creating the same topics at this moment; a failed attempt is
    // retried a few times before giving up.
    let mut attempt = 0;
    loop {
        match kafka::ensure_topics(&kafka_settings).await {
            Ok(()) => break,
            Err(e) if attempt < 3 && !cancel.is_cancelled() => {
                attempt += 1;
                warn!(error = %e, attempt, "Creating the Kafka topics failed; trying again.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let shared = Arc::new(Shared {
        topics: kafka_settings.topics(),
        state: StateStore::new(
            kafka_settings.clone(),
            settings.snapshot_part_bytes,
            stats.clone(),
        ),
        tenants: tenants
            .into_iter()
            .map(|t| (t.tenant_id.to_ascii_lowercase(), t))
            .collect(),
        settings,
        kafka: kafka_settings,
        stats,
    });
    let mut tasks = tokio::task::JoinSet::new();
    if shared.settings.run_consumer {
        tasks.spawn(run_consumer(shared.clone(), cancel.clone()));
    }
    if shared.settings.run_uri_retry {
        tasks.spawn(retry::run_uri_retry(shared.clone(), cancel.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(error = %e, "A consumer task ended abnormally.");
        }
    }
    info!("Consumer stopped cleanly.");
    Ok(())
}

/// The download stage, restarting its Kafka session after errors.
async fn run_consumer(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let mut session = Session {
            filters: HashMap::new(),
            pending: None,
            last_heartbeat: Instant::now(),
        };
        let result = session.run(&shared, &cancel).await;
        shared.stats.output_connected.set(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                shared.stats.session_restarts.inc();
                warn!(error = %e, "The consumer's Kafka session failed; restarting it from the committed offsets.");
                let wait = Duration::from_millis(500u64 << failures.min(6));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// One Kafka session of the download stage.
struct Session {
    /// Dedup filters of the streams this member holds.
    filters: HashMap<StreamId, StreamState>,
    /// The ordered mode's completed blob whose sends may still await acknowledgement.
    pending: Option<Pending>,
    last_heartbeat: Instant,
}

/// A completed blob of the ordered mode not settled yet (see the module docs).
struct Pending {
    unacknowledged: InFlight,
    partition: i32,
    /// The URI offset to commit: the blob's own offset + 1.
    next_offset: i64,
    uri: UriMessage,
    result: BlobResult,
}

impl Session {
    async fn run(
        &mut self,
        shared: &Arc<Shared>,
        cancel: &CancellationToken,
    ) -> Result<(), KafkaGlueError> {
        let settings = &shared.settings;
        let topics = &shared.topics;
        let tx_id = format!(
            "{}-consumer-{}",
            shared.kafka.topic_prefix, settings.instance_id
        );
        let start = HealthRecord::new(
            &settings.job_id,
            "office365",
            SERVICE_NAME,
            Level::Info,
            Kind::Start,
            "Consumer started.",
        );
        // The producer first: with transactions this fences an earlier run with the same id and
        // aborts its open transaction before anything is read.
        let out = Output::connect(
            &shared.kafka,
            &tx_id,
            settings.transaction_timeout,
            start.to_record(&topics.health),
        )
        .await?;
        let (consumer, ctx) = group_consumer(
            &shared.kafka,
            &ConsumerSettings::group_id(&shared.kafka.topic_prefix),
            &topics.uris,
            settings.session_timeout,
            (!out.is_transactional()).then_some(&out),
        )?;
        info!(
            transactional = out.is_transactional(),
            "Consumer connected to Kafka."
        );
        shared.stats.output_connected.set(true);
        let mut rebalances = ctx.rebalances();
        let read_error = |source| KafkaGlueError::Read {
            topic: topics.uris.clone(),
            source,
        };
        loop {
            if cancel.is_cancelled() {
                break;
            }
            // With a blob pending, take the next URI only if it is already here; otherwise
            // settle the blob before waiting.
            let ready = match &self.pending {
                Some(_) => consumer.recv().now_or_never(),
                None => None,
            };
            if ready.is_none() {
                // That poll may have served a rebalance.
                let moved = ctx.rebalances() != rebalances;
                self.settle(shared, &out, &consumer, moved).await?;
            }
            let message = match ready {
                Some(m) => Some(m.map_err(read_error)?.detach()),
                None => tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(settings.heartbeat_interval) => None,
                    m = consumer.recv() => Some(m.map_err(read_error)?.detach()),
                },
            };
            if ctx.rebalances() != rebalances {
                rebalances = ctx.rebalances();
                self.settle(shared, &out, &consumer, true).await?;
                self.filters.clear();
            }
            if let Some(message) = message
                && let Err(e) = self.handle(shared, &out, &consumer, &message).await
            {
                // The filters may hold ids whose events are not durable: reload them later.
                self.filters.clear();
                return Err(e);
            }
            if self.last_heartbeat.elapsed() >= settings.heartbeat_interval {
                self.heartbeat(shared, &out).await?;
            }
        }
        self.shutdown(shared, &out, &consumer).await
    }

    async fn handle(
        &mut self,
        shared: &Shared,
        out: &Output,
        consumer: &Arc<GroupConsumer>,
        message: &OwnedMessage,
    ) -> Result<(), KafkaGlueError> {
        let topics = &shared.topics;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(uri) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<UriMessage>(p).ok())
        else {
            error!(
                partition,
                offset, "Skipping an unreadable message on the URI topic."
            );
            let rec = HealthRecord::new(
                &shared.settings.job_id,
                "office365",
                SERVICE_NAME,
                Level::Error,
                Kind::Error,
                format!(
                    "Unreadable message on {} partition {partition} offset {offset} skipped.",
                    topics.uris
                ),
            );
            let records = vec![rec.to_record(&topics.health)];
            return self
                .commit_alone(shared, out, consumer, message, records)
                .await;
        };
        let job_id = &shared.settings.job_id;
        let refuse = |reason: &str| {
            let (m, gap) = dead_letter(&uri, reason, job_id, SERVICE_NAME);
            vec![uri_record(&topics.dead, &m), gap.to_record(&topics.health)]
        };
        let Some(tenant) = shared.tenants.get(&uri.tenant_id.to_ascii_lowercase()) else {
            warn!(tenant = %uri.tenant_id, content_id = %uri.content_id, "URI of a tenant this consumer does not serve; dead-lettered.");
            let records = refuse("unknown tenant: not in this consumer's configuration");
            self.commit_alone(shared, out, consumer, message, records)
                .await?;
            shared.stats.blobs_dead.inc();
            return Ok(());
        };
        if !tenant.api.is_own_content_uri(&uri.content_uri) {
            error!(tenant = %uri.tenant_id, content_id = %uri.content_id, content_uri = %uri.content_uri,
                "Refusing a content URI that is not on the tenant's API base; no request was made.");
            let records = refuse("foreign_content_uri: not on the tenant's configured API base");
            self.commit_alone(shared, out, consumer, message, records)
                .await?;
            shared.stats.uris_refused.inc();
            shared.stats.blobs_dead.inc();
            return Ok(());
        }
        if Utc::now() >= uri.content_expiration {
            let records = refuse("content expired before download");
            self.commit_alone(shared, out, consumer, message, records)
                .await?;
            shared.stats.blobs_dead.inc();
            return Ok(());
        }
        let id = StreamId::new(&uri.tenant_id, &uri.content_type);
        let options = tenant.stream(&uri.content_type);
        if !self.filters.contains_key(&id) {
            // Loading scans m365.events; settle first so the scan sees everything sent.
            self.settle(shared, out, consumer, false).await?;
            let wanted = self.to_load(shared, consumer, &uri, partition, options.dedup);
            for (stream, state) in shared.state.load_many(wanted).await? {
                self.filters.insert(stream, state);
            }
        }
        let Some(state) = self.filters.get_mut(&id) else {
            return Ok(());
        };
        let job = BlobJob {
            settings: &shared.settings,
            events_topic: &topics.events,
            out,
            options: &options,
        };
        out.begin().await?;
        let outcome = download(&job, &tenant.api, &uri, &mut state.dedup).await;
        match outcome {
            Ok(Downloaded {
                result,
                unacknowledged,
            }) => {
                state.dirty |= result.records_in > result.duplicates;
                if out.is_transactional() {
                    if let Err(e) = out
                        .commit_with_offsets(consumer, &topics.uris, partition, offset + 1)
                        .await
                    {
                        out.abort().await;
                        return Err(e);
                    }
                    for rid in &result.new_ids {
                        state.dedup.check_and_insert(rid);
                    }
                    blob_done(shared, out, &uri, &result).await?;
                } else {
                    // The ids went into the filter as they were sent; the previous blob's
                    // acknowledgements arrived while this one was sent.
                    self.settle(shared, out, consumer, false).await?;
                    self.pending = Some(Pending {
                        unacknowledged,
                        partition,
                        next_offset: offset + 1,
                        uri,
                        result,
                    });
                }
                let due = self.filters.get(&id).is_some_and(|state| {
                    state.dirty
                        && state.last_snapshot.elapsed() >= shared.settings.snapshot_interval
                });
                if due {
                    self.settle(shared, out, consumer, false).await?;
                    if let Some(state) = self.filters.get_mut(&id) {
                        shared.state.save(&id, state, out).await?;
                    }
                }
                Ok(())
            }
            Err(BlobError::Kafka(e)) => {
                out.abort().await;
                Err(e)
            }
            Err(e) => {
                out.abort().await;
                let failure = classify(&e);
                let r = route(
                    &uri,
                    &failure,
                    tenant.uri_retry,
                    &shared.settings.retry,
                    Utc::now(),
                    job_id,
                );
                match &r {
                    Route::Retry(m) => {
                        warn!(tenant = %uri.tenant_id, content_type = %uri.content_type, content_id = %uri.content_id,
                            attempt = m.attempt, error = %e, "Blob download failed; scheduled for retry.");
                        shared.stats.blobs_retried.inc();
                    }
                    Route::Dead(m, _) => {
                        error!(tenant = %uri.tenant_id, content_type = %uri.content_type, content_id = %uri.content_id,
                            reason = m.reason.as_deref().unwrap_or(""), error = %e, "Blob download failed for good; dead-lettered.");
                        shared.stats.blobs_dead.inc();
                    }
                }
                let records = route_records(&r, shared);
                self.commit_alone(shared, out, consumer, message, records)
                    .await
            }
        }
    }

    /// Commits `records` together with the offset after `message`'s, for a URI that produced
    /// no blob (refused, unreadable, or routed to retry or dead letter). The pending blob is
    /// settled first: its offset comes before this one.
    async fn commit_alone(
        &mut self,
        shared: &Shared,
        out: &Output,
        consumer: &Arc<GroupConsumer>,
        message: &OwnedMessage,
        records: Vec<kafka::OutRecord>,
    ) -> Result<(), KafkaGlueError> {
        self.settle(shared, out, consumer, false).await?;
        let at = (
            consumer,
            shared.topics.uris.as_str(),
            message.partition(),
            message.offset() + 1,
        );
        out.send_and_commit(&records, Some(at)).await
    }

    /// Settles the pending blob, if any (see the module docs): waits for its sends, commits
    /// its URI offset and counts it. `after_rebalance`: the offset is committed only if the
    /// partition is still this member's (a rebalance may have given it to another).
    async fn settle(
        &mut self,
        shared: &Shared,
        out: &Output,
        consumer: &Arc<GroupConsumer>,
        after_rebalance: bool,
    ) -> Result<(), KafkaGlueError> {
        let Some(mut blob) = self.pending.take() else {
            return Ok(());
        };
        blob.unacknowledged.drain().await?;
        let topic = &shared.topics.uris;
        let kept = !after_rebalance
            || consumer
                .assignment()
                .is_ok_and(|tpl| tpl.find_partition(topic, blob.partition).is_some());
        if kept {
            out.commit_with_offsets(consumer, topic, blob.partition, blob.next_offset)
                .await?;
        } else {
            info!(partition = blob.partition, content_id = %blob.uri.content_id,
                "The blob's partition went to another member before its offset was committed; that member reads the URI again and drops its records as duplicates.");
        }
        blob_done(shared, out, &blob.uri, &blob.result).await
    }
}

/// Counts and logs a committed blob, and reports its skipped elements.
async fn blob_done(
    shared: &Shared,
    out: &Output,
    uri: &UriMessage,
    result: &BlobResult,
) -> Result<(), KafkaGlueError> {
    let s = &shared.stats;
    s.blobs_fetched.inc();
    s.records_in.add(result.records_in);
    s.records_deduplicated.add(result.duplicates);
    s.records_without_workload.add(result.without_workload);
    for (tag, n) in &result.out_by_tag {
        s.records_out.add(tag, *n);
    }
    for (reason, n) in result.rejected.iter() {
        s.elements_rejected.add(reason.as_str(), n);
    }
    info!(tenant = %uri.tenant_id, content_type = %uri.content_type, content_id = %uri.content_id,
        records = result.records_in, duplicates = result.duplicates, rejected = result.rejected.total(),
        bytes = result.body_bytes, "Blob fetched.");
    if result.rejected.total() > 0 {
        report_rejections(shared, out, uri, result).await?;
    }
    Ok(())
}

impl Session {
    /// The filters to load for `uri`'s stream: its own, and, up to [`PRELOAD_STREAMS`] in
    /// all, those of the configured tenants' other streams that are not loaded and whose URIs
    /// come to a partition this member holds, so one scan of `m365.events` loads them all
    /// (a restart or rebalance otherwise scans once per stream; measured end to end, the
    /// scans were most of a 200-blob run). Which partition a stream's URIs take is computed
    /// as librdkafka's default partitioner does (CRC-32 of the key modulo the partition
    /// count); the guess is checked against the partition this URI came from and no stream
    /// is added when they disagree (another partitioner, a topic of another size). A wrong
    /// guess costs only memory until the next rebalance clears the filters: a stream loaded
    /// here whose URIs reach another member is never used by this one.
    fn to_load(
        &self,
        shared: &Shared,
        consumer: &GroupConsumer,
        uri: &UriMessage,
        partition: i32,
        dedup: DedupSettings,
    ) -> Vec<(StreamId, DedupSettings)> {
        let mut wanted = vec![(StreamId::new(&uri.tenant_id, &uri.content_type), dedup)];
        let count = shared.kafka.partitions.max(1);
        let slot = |tenant: &str, content_type: &str| {
            (crc32fast::hash(stream_key(tenant, content_type).as_bytes()) % count as u32) as i32
        };
        if slot(&uri.tenant_id, &uri.content_type) != partition {
            return wanted;
        }
        let held: HashSet<i32> = consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&shared.topics.uris)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        let mut tenants: Vec<&ConsumerTenant> = shared.tenants.values().collect();
        tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        for tenant in tenants {
            let mut content_types: Vec<&String> = tenant.streams.keys().collect();
            content_types.sort();
            for ct in content_types {
                if wanted.len() >= PRELOAD_STREAMS {
                    return wanted;
                }
                let id = StreamId::new(&tenant.tenant_id, ct);
                if !self.filters.contains_key(&id)
                    && !wanted.iter().any(|(w, _)| *w == id)
                    && held.contains(&slot(&tenant.tenant_id, ct))
                {
                    wanted.push((id, tenant.stream(ct).dedup));
                }
            }
        }
        wanted
    }
}

/// A warning record naming the blob and its skipped elements by reason.
async fn report_rejections(
    shared: &Shared,
    out: &Output,
    uri: &UriMessage,
    result: &BlobResult,
) -> Result<(), KafkaGlueError> {
    let mut rec = HealthRecord::new(
        &shared.settings.job_id,
        &uri.tenant_id,
        &uri.content_type,
        Level::Warning,
        Kind::Error,
        format!(
            "Blob {} had {} elements that are not audit records; they were skipped.",
            uri.content_id,
            result.rejected.total()
        ),
    );
    for (reason, n) in result.rejected.iter() {
        rec = rec.with_counter(reason.as_str(), n);
    }
    out.send_and_commit(&[rec.to_record(&shared.topics.health)], None)
        .await
}

impl Session {
    async fn heartbeat(&mut self, shared: &Shared, out: &Output) -> Result<(), KafkaGlueError> {
        self.last_heartbeat = Instant::now();
        let s = &shared.stats;
        let rec = HealthRecord::new(
            &shared.settings.job_id,
            "office365",
            SERVICE_NAME,
            Level::Info,
            Kind::Heartbeat,
            "Consumer alive.",
        )
        .with_counter("blobs_fetched", s.blobs_fetched.get())
        .with_counter("blobs_retried", s.blobs_retried.get())
        .with_counter("blobs_dead", s.blobs_dead.get())
        .with_counter("records_out", s.records_out_total())
        .with_counter("records_deduplicated", s.records_deduplicated.get());
        out.send_and_commit(&[rec.to_record(&shared.topics.health)], None)
            .await
    }

    /// Settles the pending blob, writes a snapshot of every filter with news, then a stop
    /// record.
    async fn shutdown(
        &mut self,
        shared: &Shared,
        out: &Output,
        consumer: &Arc<GroupConsumer>,
    ) -> Result<(), KafkaGlueError> {
        if let Err(e) = self.settle(shared, out, consumer, false).await {
            // No snapshot then: a filter may hold ids whose events are not on the topic.
            warn!(error = %e, "The last blob was not acknowledged at shutdown; the next start reads it again.");
            self.filters.clear();
        }
        for (id, state) in self.filters.iter_mut() {
            if state.dirty
                && let Err(e) = shared.state.save(id, state, out).await
            {
                warn!(stream = %id, error = %e, "Could not write the dedup snapshot at shutdown; the next start replays m365.events instead.");
            }
        }
        let stop = HealthRecord::new(
            &shared.settings.job_id,
            "office365",
            SERVICE_NAME,
            Level::Info,
            Kind::Stop,
            "Consumer stopped.",
        )
        .with_counter("blobs_fetched", shared.stats.blobs_fetched.get())
        .with_counter("records_out", shared.stats.records_out_total());
        out.begin().await?;
        out.send_all(&[stop.to_record(&shared.topics.health)])
            .await?;
        out.commit_plain().await
    }
}
