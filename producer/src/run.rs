//! The producer's main loop: start-up, the streams this instance owns (one task each),
//! heartbeats, clean shutdown.
//!
//! Start-up:
//! 1. topics are created if absent (with [`Coordination::Group`] also `<prefix>.streams`);
//! 2. the instance's [`Committer`] is created (it carries the start, heartbeat and stop
//!    records, and probes whether the broker has transactions);
//! 3. the instance learns which streams are its own: all of them with
//!    [`Coordination::None`]; with [`Coordination::Group`], those of the slots the producer
//!    group assigns it ([`crate::group`]), which changes as instances come and go.
//!
//! Adopting streams (at start, or when the group assigns slots):
//! 1. fencing: with transactions, each slot commits through its own transactional id
//!    `<prefix>-producer-slot-<n>` (with `none`, the instance's id as before). Creating that
//!    producer bumps the id's epoch, which aborts the previous owner's open transaction and
//!    makes every later commit of the previous owner for that slot fail — a zombie owner that
//!    missed its revocation can no longer write for those streams;
//! 2. the state topic is read (cursors, ledger) — final, since nobody else writes it for
//!    these streams any more;
//! 3. without transactions, the tail of `m365.uris` written since the oldest cursor update of
//!    the adopted streams is scanned and added to their ledgers, so URIs whose ledger entries
//!    a crash (of this instance or of the previous owner) kept from being written are not
//!    emitted again;
//! 4. subscriptions of the adopted streams are ensured, a `start` health record per stream is
//!    written, and the streams start.
//!
//! Releasing streams (shutdown, or the group revoking slots): their tasks are stopped — a
//! listing is abandoned, a commit in flight is finished — and awaited, then a `stop` health
//! record per stream is written. Only then is the group told, so the next owner starts after
//! the last write of this one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use m365_common::api::{Action, ApiClient};
use m365_common::envelope::UriMessage;
use m365_common::health::{HealthRecord, Kind, Level};
use m365_common::kafka::{self, Committer, KafkaGlueError, KafkaSettings, TransactionMode};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::group::{GroupError, GroupEvent, GroupMember, stream_slot};
use crate::internal_events::ProducerStats;
use crate::settings::{Coordination, ProducerSettings, SettingsError};
use crate::state::{Recovered, StreamId};
use crate::stream::{API_HORIZON, Shared, Step, Stream, TickError};

/// Attempts at reading `m365.state` (and the tail of `m365.uris`) when adopting streams
/// before giving up: with the backoff doubling from 1 s to 30 s, about four minutes.
const STATE_READ_ATTEMPTS: u32 = 12;

/// One tenant the producer serves.
pub struct TenantRuntime {
    pub tenant_id: String,
    pub api: Arc<ApiClient>,
    pub streams: Vec<StreamSpec>,
}

/// One content type of a tenant.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub content_type: String,
    /// Where a stream without a cursor starts (`start_time_in_utc`); default: as far back as
    /// the API allows, so nothing still available is missed.
    pub start_time: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Kafka(#[from] KafkaGlueError),
    #[error("no stream to collect: the configuration enables no content type")]
    NothingToDo,
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("the producer group membership ended unexpectedly")]
    GroupLost,
}

/// Runs the producer until `cancel` fires, then finishes the commits in flight, writes a stop
/// record and returns.
pub async fn run(
    settings: ProducerSettings,
    kafka_settings: KafkaSettings,
    tenants: Vec<TenantRuntime>,
    stats: Arc<ProducerStats>,
    cancel: CancellationToken,
) -> Result<(), ProducerError> {
    if tenants.iter().all(|t| t.streams.is_empty()) {
        return Err(ProducerError::NothingToDo);
    }
    settings.validate()?;
    let topics = kafka_settings.topics();
    // The coordination topic first, so that it gets this instance's slot count if absent.
    let slots = match settings.coordination {
        Coordination::Group => {
            let n = kafka::ensure_streams_topic(&kafka_settings, settings.stream_slots).await?;
            if n != settings.stream_slots {
                info!(
                    slots = n,
                    "Using the stream slot count of the existing coordination topic."
                );
            }
            n
        }
        Coordination::None => 1,
    };
    kafka::ensure_topics(&kafka_settings).await?;

    let start = HealthRecord::new(
        &settings.job_id,
        "office365",
        "producer",
        Level::Info,
        Kind::Start,
        "Producer started.",
    )
    .with_counter(
        "streams",
        tenants.iter().map(|t| t.streams.len() as u64).sum(),
    );
    // Alone, the instance's id fences an earlier run of the same instance. In a group, the
    // slots' ids do the fencing and this one only carries the instance's own records, so it
    // is unique to the run: two instances given the same id do not fence each other.
    let transactional_id = match settings.coordination {
        Coordination::None => format!(
            "{}-producer-{}",
            kafka_settings.topic_prefix, settings.instance_id
        ),
        Coordination::Group => format!(
            "{}-producer-{}-{}",
            kafka_settings.topic_prefix, settings.instance_id, settings.job_id
        ),
    };
    let committer = Committer::new(
        &kafka_settings,
        &transactional_id,
        start.to_record(&topics.health),
    )
    .await?;
    info!(
        transactional = committer.is_transactional(),
        coordination = %settings.coordination,
        instance = %settings.instance_id,
        "Producer connected to Kafka."
    );
    stats.set_output_connected(true);

    let instance = Arc::new(Shared {
        settings: settings.clone(),
        topics: topics.clone(),
        committer,
        commit_lock: Mutex::new(()),
        stats: stats.clone(),
    });
    let beat = cancel.child_token();
    let heartbeat = tokio::spawn(heartbeat_task(instance.clone(), beat.clone()));

    let mut owner = Owner::new(
        &settings,
        &kafka_settings,
        &tenants,
        slots,
        instance.clone(),
    );
    let result = match settings.coordination {
        Coordination::None => match owner.adopt(&[0]).await {
            Ok(()) => {
                cancel.cancelled().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Coordination::Group => run_group(&mut owner, &kafka_settings, &settings, &cancel).await,
    };
    owner.release_all().await;
    beat.cancel();
    if let Err(e) = heartbeat.await {
        error!(error = %e, "The heartbeat task ended abnormally.");
    }

    let stop = HealthRecord::new(
        &settings.job_id,
        "office365",
        "producer",
        Level::Info,
        Kind::Stop,
        "Producer stopped.",
    )
    .with_counter("blobs_emitted", stats.blobs_emitted.get());
    let _guard = instance.commit_lock.lock().await;
    let stopped = instance
        .committer
        .commit(vec![vec![stop.to_record(&topics.health)]])
        .await;
    stats.set_output_connected(false);
    result?;
    stopped?;
    info!("Producer stopped cleanly.");
    Ok(())
}

/// Follows the producer group until `cancel` fires: adopts the streams of assigned slots and
/// releases those of revoked ones. On return every stream has stopped and the group is left.
async fn run_group(
    owner: &mut Owner,
    kafka_settings: &KafkaSettings,
    settings: &ProducerSettings,
    cancel: &CancellationToken,
) -> Result<(), ProducerError> {
    let mut member = GroupMember::join(kafka_settings, settings)?;
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            event = member.next() => match event {
                Some(GroupEvent::Assigned(slots)) => {
                    if let Err(e) = owner.adopt(&slots).await {
                        break Err(e);
                    }
                }
                Some(GroupEvent::Revoked { slots, done }) => {
                    owner.release(&slots).await;
                    let _ = done.send(());
                }
                None => break Err(ProducerError::GroupLost),
            },
        }
    };
    // Stop writing before the group hears we are gone, so the next owners start after us.
    owner.release_all().await;
    member.leave().await;
    result
}

/// One configured stream and where it belongs.
struct Entry {
    id: StreamId,
    slot: i32,
    api: Arc<ApiClient>,
    spec: StreamSpec,
}

/// The streams of one slot while this instance runs them.
struct RunningSlot {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    shared: Arc<Shared>,
    streams: Vec<StreamId>,
}

/// The streams this instance runs, by slot.
struct Owner {
    settings: ProducerSettings,
    kafka: KafkaSettings,
    instance: Arc<Shared>,
    catalog: Vec<Entry>,
    running: BTreeMap<i32, RunningSlot>,
}

impl Owner {
    fn new(
        settings: &ProducerSettings,
        kafka: &KafkaSettings,
        tenants: &[TenantRuntime],
        slots: i32,
        instance: Arc<Shared>,
    ) -> Self {
        let catalog = tenants
            .iter()
            .flat_map(|t| {
                t.streams.iter().map(move |spec| {
                    let id = StreamId::new(&t.tenant_id, &spec.content_type);
                    Entry {
                        slot: stream_slot(&id, slots),
                        id,
                        api: t.api.clone(),
                        spec: spec.clone(),
                    }
                })
            })
            .collect();
        Self {
            settings: settings.clone(),
            kafka: kafka.clone(),
            instance,
            catalog,
            running: BTreeMap::new(),
        }
    }

    /// Starts the streams of `slots` (those already running are left alone).
    async fn adopt(&mut self, slots: &[i32]) -> Result<(), ProducerError> {
        let adopted_at = Utc::now();
        let new: Vec<i32> = slots
            .iter()
            .copied()
            .filter(|s| !self.running.contains_key(s))
            .filter(|s| self.catalog.iter().any(|e| e.slot == *s))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let ids: Vec<StreamId> = self
            .catalog
            .iter()
            .filter(|e| new.contains(&e.slot))
            .map(|e| e.id.clone())
            .collect();
        info!(slots = ?new, streams = ids.len(), "Adopting streams.");

        // 1. Fencing: with transactions, one transactional id per slot.
        let transactional = self.instance.committer.is_transactional();
        let mut shared_of: HashMap<i32, Arc<Shared>> = HashMap::new();
        for slot in &new {
            let shared = if transactional && self.settings.coordination == Coordination::Group {
                self.slot_shared(*slot).await?
            } else {
                self.instance.clone()
            };
            shared_of.insert(*slot, shared);
        }

        // 2. + 3. State, and without transactions the URIs the ledger may lack.
        // A broker restart while reading is weathered here rather than ending the process:
        // nothing has been listed for these streams yet, so reading again is always safe.
        let topics = self.kafka.topics();
        let mut delay = StdDuration::from_secs(1);
        let mut attempt = 1u32;
        let mut recovered = loop {
            let read = async {
                let table = kafka::read_table(&self.kafka, &topics.state).await?;
                let mut recovered = Recovered::from_table(&table);
                if !transactional {
                    recover_from_uris(&self.kafka, &ids, &mut recovered).await?;
                }
                Ok::<_, ProducerError>(recovered)
            }
            .await;
            match read {
                Ok(r) => break r,
                Err(e) if attempt < STATE_READ_ATTEMPTS => {
                    warn!(error = %e, attempt, retry_in_secs = delay.as_secs(), "Reading the producer state failed; trying again.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(StdDuration::from_secs(30));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        for key in &recovered.undecodable {
            warn!(key = %key, "Ignoring a state value this version cannot read.");
        }

        // 4. Subscriptions, start records, tasks.
        if self.settings.manage_subscriptions {
            let mut by_tenant: BTreeMap<&str, TenantRuntime> = BTreeMap::new();
            for e in self.catalog.iter().filter(|e| new.contains(&e.slot)) {
                by_tenant
                    .entry(e.id.tenant_id.as_str())
                    .or_insert_with(|| TenantRuntime {
                        tenant_id: e.id.tenant_id.clone(),
                        api: e.api.clone(),
                        streams: Vec::new(),
                    })
                    .streams
                    .push(e.spec.clone());
            }
            for tenant in by_tenant.values() {
                ensure_subscriptions(tenant, &self.instance.stats).await;
            }
        }
        for slot in new {
            let Some(shared) = shared_of.remove(&slot) else {
                continue;
            };
            let mut running = RunningSlot {
                stop: CancellationToken::new(),
                tasks: tokio::task::JoinSet::new(),
                shared: shared.clone(),
                streams: Vec::new(),
            };
            let mut records = Vec::new();
            for e in self.catalog.iter().filter(|e| e.slot == slot) {
                let cursor = match recovered.cursors.get(&e.id) {
                    Some(c) => c.listed_until,
                    None => {
                        let earliest =
                            e.api.server_now() - API_HORIZON + self.settings.horizon_margin;
                        e.spec.start_time.unwrap_or(earliest)
                    }
                };
                let ledger = recovered.ledgers.remove(&e.id).unwrap_or_default();
                info!(stream = %e.id, slot, cursor = %cursor, ledger = ledger.len(), "Stream starting.");
                shared.stats.streams.set(&e.id, cursor, e.api.skew());
                let mut rec = HealthRecord::new(
                    &self.settings.job_id,
                    &e.id.tenant_id,
                    &e.id.content_type,
                    Level::Info,
                    Kind::Start,
                    format!(
                        "Stream {} started on producer instance {} (slot {slot}).",
                        e.id, self.settings.instance_id
                    ),
                )
                .with_counter("slot", u64::try_from(slot).unwrap_or_default());
                rec.time = adopted_at;
                records.push(rec.to_record(&topics.health));
                let stream = Stream {
                    id: e.id.clone(),
                    api: e.api.clone(),
                    cursor,
                    ledger,
                    last_sweep: None,
                };
                running.streams.push(e.id.clone());
                running
                    .tasks
                    .spawn(stream_task(stream, shared.clone(), running.stop.clone()));
            }
            write_health(&shared, records).await;
            self.running.insert(slot, running);
        }
        Ok(())
    }

    /// The committer of one slot: a transactional producer whose id is the slot's, so that
    /// creating it fences the slot's previous owner.
    async fn slot_shared(&self, slot: i32) -> Result<Arc<Shared>, ProducerError> {
        let mut kafka = self.kafka.clone();
        kafka.transactions = TransactionMode::On;
        let topics = kafka.topics();
        let id = format!("{}-producer-slot-{slot}", kafka.topic_prefix);
        let probe = HealthRecord::new(
            &self.settings.job_id,
            "office365",
            "producer",
            Level::Info,
            Kind::Heartbeat,
            format!(
                "Producer instance {} took stream slot {slot} over.",
                self.settings.instance_id
            ),
        )
        .with_counter("slot", u64::try_from(slot).unwrap_or_default());
        let committer = Committer::new(&kafka, &id, probe.to_record(&topics.health)).await?;
        Ok(Arc::new(Shared {
            settings: self.settings.clone(),
            topics,
            committer,
            commit_lock: Mutex::new(()),
            stats: self.instance.stats.clone(),
        }))
    }

    /// Stops the streams of `slots` and waits for their commits in flight.
    async fn release(&mut self, slots: &[i32]) {
        for slot in slots {
            let Some(mut running) = self.running.remove(slot) else {
                continue;
            };
            running.stop.cancel();
            while let Some(r) = running.tasks.join_next().await {
                if let Err(e) = r {
                    error!(error = %e, "A stream task ended abnormally.");
                }
            }
            let mut records = Vec::new();
            for id in &running.streams {
                running.shared.stats.streams.remove(id);
                info!(stream = %id, slot, "Stream stopped.");
                let rec = HealthRecord::new(
                    &self.settings.job_id,
                    &id.tenant_id,
                    &id.content_type,
                    Level::Info,
                    Kind::Stop,
                    format!(
                        "Stream {id} stopped on producer instance {} (slot {slot}).",
                        self.settings.instance_id
                    ),
                )
                .with_counter("slot", u64::try_from(*slot).unwrap_or_default());
                records.push(rec.to_record(&running.shared.topics.health));
            }
            write_health(&running.shared, records).await;
        }
    }

    async fn release_all(&mut self) {
        let slots: Vec<i32> = self.running.keys().copied().collect();
        self.release(&slots).await;
    }
}

/// Writes health records; a failure is logged, never fatal.
async fn write_health(shared: &Shared, records: Vec<kafka::OutRecord>) {
    if records.is_empty() {
        return;
    }
    let _guard = shared.commit_lock.lock().await;
    if let Err(e) = shared.committer.commit(vec![records]).await {
        warn!(error = %e, "Could not write health records.");
    }
}

/// Without transactions, a crash between the URIs and their ledger entries leaves URIs on the
/// topic that the ledger does not know. Everything written since the oldest cursor update of
/// `streams` (less a margin) is read back and added to the ledger.
async fn recover_from_uris(
    kafka_settings: &KafkaSettings,
    streams: &[StreamId],
    recovered: &mut Recovered,
) -> Result<(), KafkaGlueError> {
    let topics = kafka_settings.topics();
    let ours: HashSet<&StreamId> = streams.iter().collect();
    let oldest_update = ours
        .iter()
        .map(|id| recovered.cursors.get(*id).map(|c| c.updated_at))
        .min()
        .flatten();
    let from = match oldest_update {
        Some(t) => t - chrono::Duration::minutes(10),
        None => Utc::now() - chrono::Duration::days(8),
    };
    let offsets =
        kafka::offsets_for_time(kafka_settings, &topics.uris, from.timestamp_millis()).await?;
    // Partitions with no record at or after `from` need no scan: start them at the end.
    let found = Arc::new(std::sync::Mutex::new(Vec::<UriMessage>::new()));
    let sink = found.clone();
    let partitions = kafka::partition_count(kafka_settings, &topics.uris)?;
    let mut start: HashMap<i32, i64> = HashMap::new();
    for p in 0..partitions {
        start.insert(p, offsets.get(&p).copied().unwrap_or(i64::MAX));
    }
    kafka::scan_topic(kafka_settings, &topics.uris, start, move |r| {
        if let Some(m) = r
            .payload
            .and_then(|p| serde_json::from_slice::<UriMessage>(&p).ok())
        {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(m);
        }
    })
    .await?;
    let found = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
    let mut added = 0usize;
    for m in &found {
        if ours.contains(&StreamId::new(&m.tenant_id, &m.content_type)) {
            recovered.add_emitted(m);
            added += 1;
        }
    }
    info!(uris = added, since = %from, "Recovered recently emitted URIs into the ledger.");
    Ok(())
}

/// Lists the tenant's subscriptions and starts the ones the configuration needs. Failures are
/// logged; the stream loops retry through AF20022/AF20023.
async fn ensure_subscriptions(tenant: &TenantRuntime, stats: &ProducerStats) {
    let existing = match tenant.api.list_subscriptions().await {
        Ok(list) => list,
        Err(e) => {
            warn!(tenant = %tenant.tenant_id, error = %e, "Could not list subscriptions; will start them as needed.");
            Vec::new()
        }
    };
    for spec in &tenant.streams {
        let enabled = existing
            .iter()
            .any(|s| s.content_type == spec.content_type && s.is_enabled());
        if enabled {
            continue;
        }
        match tenant.api.start_subscription(&spec.content_type).await {
            Ok(_) => {
                stats.subscriptions_started.inc();
                info!(tenant = %tenant.tenant_id, content_type = %spec.content_type, "Subscription started.");
            }
            Err(e) => {
                warn!(tenant = %tenant.tenant_id, content_type = %spec.content_type, error = %e, "Could not start the subscription.")
            }
        }
    }
}

async fn stream_task(mut stream: Stream, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut failures: u32 = 0;
    let mut last_start_attempt: Option<tokio::time::Instant> = None;
    'outer: while !cancel.is_cancelled() {
        // Catch up window by window; a listing is abandoned when `cancel` fires, a commit
        // never is.
        let mut result: Result<(), TickError> = Ok(());
        loop {
            if cancel.is_cancelled() {
                break 'outer;
            }
            match stream.step(&shared, &cancel).await {
                Ok(Step::Advanced { .. }) => failures = 0,
                Ok(Step::CaughtUp) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let due = match stream.last_sweep {
                Some(t) => stream.api.server_now() - t >= shared.settings.sweep_interval,
                None => true,
            };
            if due {
                result = stream.sweep(&shared, &cancel).await.map(|_| ());
            }
        }
        let pause = match result {
            Ok(()) => shared.settings.poll_interval,
            Err(TickError::Stopped) => break,
            Err(e) => {
                failures = failures.saturating_add(1);
                shared.stats.tick_errors.inc();
                handle_error(&stream, &shared, &e, &mut last_start_attempt).await;
                backoff(failures, shared.settings.error_backoff_max)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Jittered exponential backoff: 1 s, 2 s, 4 s … up to `max`.
fn backoff(failures: u32, max: StdDuration) -> StdDuration {
    let base = StdDuration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(max);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    base.mul_f64(jitter).min(max)
}

fn handle_error<'a>(
    stream: &'a Stream,
    shared: &'a Shared,
    e: &'a TickError,
    last_start_attempt: &'a mut Option<tokio::time::Instant>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let api_err = match e {
            TickError::Api(api_err) => api_err,
            TickError::Kafka(_) => {
                warn!(stream = %stream.id, error = %e, "Kafka refused the commit; the window will be listed again.");
                return;
            }
            TickError::Stopped => return,
        };
        let code = api_err
            .af_code()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        match api_err.action() {
            Action::RestartSubscription => {
                let cooldown = shared.settings.subscription_cooldown;
                let cooled = match *last_start_attempt {
                    Some(t) => t.elapsed() >= cooldown,
                    None => true,
                };
                let what = if code == "AF20023" {
                    "disabled by an administrator"
                } else {
                    "missing"
                };
                warn!(stream = %stream.id, af_code = %code, "The subscription is {what}.");
                if cooled && shared.settings.manage_subscriptions {
                    *last_start_attempt = Some(tokio::time::Instant::now());
                    match stream.api.start_subscription(&stream.id.content_type).await {
                        Ok(_) => {
                            shared.stats.subscriptions_started.inc();
                            info!(stream = %stream.id, "Subscription (re)started.");
                        }
                        Err(e2) => {
                            let msg = format!(
                                "The subscription is {what} and could not be started: {e2}."
                            );
                            health_error(shared, stream, &msg).await;
                        }
                    }
                }
            }
            _ if code == "AF20011" => {
                health_error(
                shared,
                stream,
                "The tenant is unknown to the Management Activity API (AF20011): unified audit logging is probably turned off (Purview, Audit, Start recording).",
            )
            .await;
            }
            Action::Retry | Action::Backoff | Action::ClampWindow | Action::RestartListing => {
                warn!(stream = %stream.id, error = %api_err, "Listing failed; retrying with backoff.");
            }
            _ => {
                let msg = format!("Listing failed: {api_err}.");
                health_error(shared, stream, &msg).await;
            }
        }
    })
}

async fn health_error(shared: &Shared, stream: &Stream, msg: &str) {
    error!(stream = %stream.id, "{msg}");
    let rec = HealthRecord::new(
        &shared.settings.job_id,
        &stream.id.tenant_id,
        &stream.id.content_type,
        Level::Error,
        Kind::Error,
        msg,
    );
    let _guard = shared.commit_lock.lock().await;
    if let Err(e) = shared
        .committer
        .commit(vec![vec![rec.to_record(&shared.topics.health)]])
        .await
    {
        warn!(error = %e, "Could not write a health record.");
    }
}

async fn heartbeat_task(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.settings.heartbeat_interval) => {}
        }
        let s = &shared.stats;
        let rec = HealthRecord::new(
            &shared.settings.job_id,
            "office365",
            "producer",
            Level::Info,
            Kind::Heartbeat,
            "Producer alive.",
        )
        .with_counter("blobs_emitted", s.blobs_emitted.get())
        .with_counter("windows_listed", s.windows_listed.get())
        .with_counter("gaps", s.gaps.get())
        .with_counter("tick_errors", s.tick_errors.get())
        .with_counter("streams_owned", s.streams.snapshot().len() as u64);
        let _guard = shared.commit_lock.lock().await;
        if let Err(e) = shared
            .committer
            .commit(vec![vec![rec.to_record(&shared.topics.health)]])
            .await
        {
            warn!(error = %e, "Could not write a heartbeat record.");
        }
    }
}

/// The producer's view of the tenants built from the configuration.
pub fn tenants_from_runtime(tenants: &[m365_common::runtime::TenantRuntime]) -> Vec<TenantRuntime> {
    tenants
        .iter()
        .map(|t| TenantRuntime {
            tenant_id: t.settings.tenant_id.clone(),
            api: t.api.clone(),
            streams: t
                .settings
                .streams
                .iter()
                .map(|s| StreamSpec {
                    content_type: s.content_type.as_str().to_string(),
                    start_time: s.start_time,
                })
                .collect(),
        })
        .collect()
}
