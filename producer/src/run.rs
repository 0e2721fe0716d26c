//! The producer's main loop: start-up, one task per stream, heartbeats, clean shutdown.
//!
//! Start-up order matters for exactness:
//! 1. topics are created if absent;
//! 2. the [`Committer`] is created — with transactions this fences any earlier instance with
//!    the same transactional id and aborts its open transaction, so what we read next is final;
//! 3. the state topic is read (cursors, ledger);
//! 4. without transactions, the tail of `m365.uris` written since the oldest cursor update is
//!    scanned and added to the ledger, so URIs whose ledger entries a crash kept from being
//!    written are not emitted again;
//! 5. subscriptions are ensured, then every stream runs on its own task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use m365_common::api::{Action, ApiClient};
use m365_common::envelope::UriMessage;
use m365_common::health::{HealthRecord, Kind, Level};
use m365_common::kafka::{self, Committer, KafkaGlueError, KafkaSettings};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::internal_events::ProducerStats;
use crate::settings::ProducerSettings;
use crate::state::{Recovered, StreamId};
use crate::stream::{API_HORIZON, Shared, Step, Stream, TickError};

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
}

/// Runs the producer until `cancel` fires, then finishes the commit in flight, writes a stop
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
    let topics = kafka_settings.topics();
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
    let transactional_id = format!(
        "{}-producer-{}",
        kafka_settings.topic_prefix, settings.instance_id
    );
    let committer = Committer::new(
        &kafka_settings,
        &transactional_id,
        start.to_record(&topics.health),
    )
    .await?;
    info!(
        transactional = committer.is_transactional(),
        "Producer connected to Kafka."
    );
    stats.set_output_connected(true);

    let table = kafka::read_table(&kafka_settings, &topics.state).await?;
    let mut recovered = Recovered::from_table(&table);
    for key in &recovered.undecodable {
        warn!(key = %key, "Ignoring a state value this version cannot read.");
    }
    if !committer.is_transactional() {
        recover_from_uris(&kafka_settings, &tenants, &mut recovered).await?;
    }

    let shared = Arc::new(Shared {
        settings: settings.clone(),
        topics: topics.clone(),
        committer,
        commit_lock: Mutex::new(()),
        stats: stats.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    for tenant in &tenants {
        if settings.manage_subscriptions {
            ensure_subscriptions(tenant, &stats).await;
        }
        for spec in &tenant.streams {
            let id = StreamId::new(&tenant.tenant_id, &spec.content_type);
            let cursor = match recovered.cursors.get(&id) {
                Some(c) => c.listed_until,
                None => {
                    let earliest = tenant.api.server_now() - API_HORIZON + settings.horizon_margin;
                    spec.start_time.unwrap_or(earliest)
                }
            };
            let ledger = recovered.ledgers.remove(&id).unwrap_or_default();
            info!(stream = %id, cursor = %cursor, ledger = ledger.len(), "Stream starting.");
            stats.streams.set(&id, cursor, tenant.api.skew());
            let stream = Stream {
                id,
                api: tenant.api.clone(),
                cursor,
                ledger,
                last_sweep: None,
            };
            tasks.spawn(stream_task(stream, shared.clone(), cancel.clone()));
        }
    }
    tasks.spawn(heartbeat_task(shared.clone(), cancel.clone()));
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(error = %e, "A producer task ended abnormally.");
        }
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
    let _guard = shared.commit_lock.lock().await;
    let stopped = shared
        .committer
        .commit(vec![vec![stop.to_record(&topics.health)]])
        .await;
    stats.set_output_connected(false);
    stopped?;
    info!("Producer stopped cleanly.");
    Ok(())
}

/// Without transactions, a crash between the URIs and their ledger entries leaves URIs on the
/// topic that the ledger does not know. Everything written since the oldest cursor update
/// (less a margin) is read back and added to the ledger.
async fn recover_from_uris(
    kafka_settings: &KafkaSettings,
    tenants: &[TenantRuntime],
    recovered: &mut Recovered,
) -> Result<(), KafkaGlueError> {
    let topics = kafka_settings.topics();
    let ours: std::collections::HashSet<StreamId> = tenants
        .iter()
        .flat_map(|t| {
            t.streams
                .iter()
                .map(|s| StreamId::new(&t.tenant_id, &s.content_type))
        })
        .collect();
    let oldest_update = ours
        .iter()
        .map(|id| recovered.cursors.get(id).map(|c| c.updated_at))
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
    info!(uris = found.len(), since = %from, "Recovered recently emitted URIs into the ledger.");
    for m in &found {
        recovered.add_emitted(m);
    }
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
        // Catch up window by window; cancellation is honoured between windows so a commit is
        // never abandoned half-way.
        let mut result: Result<(), TickError> = Ok(());
        loop {
            if cancel.is_cancelled() {
                break 'outer;
            }
            match stream.step(&shared).await {
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
                result = stream.sweep(&shared).await.map(|_| ());
            }
        }
        let pause = match result {
            Ok(()) => shared.settings.poll_interval,
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
        let TickError::Api(api_err) = e else {
            warn!(stream = %stream.id, error = %e, "Kafka refused the commit; the window will be listed again.");
            return;
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
        .with_counter("tick_errors", s.tick_errors.get());
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
