//! Failed blobs: what is transient, where a failure goes (`m365.uris.retry` with jittered
//! exponential backoff, or `m365.uris.dead` plus a gap record), and the `uri_retry` service.
//!
//! # Classification
//! Transient (retried until `content_expiration`): 5xx, timeouts and other transport errors,
//! 429/AF429, token failures, a body cut off or not a JSON array, a damaged body (see
//! [`crate::blob`]), and tenant-level refusals (401 after a token refresh, AF10001, AF20022/3),
//! which an operator can fix before the content expires. Permanent (dead at once): AF20051 and
//! other expiry answers, AF20050/404, AF20052 and other malformed-request codes, a blob over
//! `max_blob_bytes`, a `content_uri` off the tenant's API base.
//!
//! # The service
//! The uri_retry service consumes `m365.uris.retry` in its own group. Each partition keeps a
//! FIFO of fetched messages; while the head's `not_before` is in the future the partition is
//! paused (other partitions go on) and a timer wakes the loop when the head is due. A due
//! message whose content has expired goes to `m365.uris.dead` with a gap record; any other is
//! handed back to `m365.uris` (same key, so the stream's partition, with its `attempt` and
//! `last_error`), in one transaction with the retry offset (ordered mode: acknowledged first,
//! then the offset committed; a crash in between repeats the URI, which dedup absorbs).
//!
//! Why hand back rather than download here: every record of a stream is then produced by the
//! one member that owns the stream's `m365.uris` partition, with that stream's dedup filter,
//! so a retried blob and a new blob sharing records can never both send them. A content whose
//! expiry comes before its `not_before` is dead-lettered at its expiry instant.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use m365_common::api::Action;
use m365_common::envelope::UriMessage;
use m365_common::health::{Gap, HealthRecord, Kind, Level};
use m365_common::kafka::{KafkaGlueError, OutRecord};
use rand::Rng as _;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::blob::BlobError;
use crate::kafka_io::{GroupConsumer, Output, group_consumer};
use crate::run::Shared;
use crate::settings::{ConsumerSettings, RetryPolicy};
use crate::split::RejectReason;

/// Service name of the uri_retry service on health records.
pub const SERVICE_NAME: &str = "uri_retry";

/// A failed attempt, classified.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Trying again later may succeed.
    pub transient: bool,
    /// Short reason for the dead topic and the gap record, e.g. `content_expired (AF20051)`.
    pub reason: String,
    /// Full message for `last_error` (never holds a secret).
    pub message: String,
    /// Server-requested delay, if any.
    pub retry_after: Option<Duration>,
}

/// Classifies a blob failure (Kafka errors are not blob failures and never get here).
pub fn classify(e: &BlobError) -> Failure {
    match e {
        BlobError::Api(api) => {
            let transient = match api.action() {
                Action::Skip | Action::SkipExpired | Action::Bug => false,
                Action::Retry
                | Action::Backoff
                | Action::Fatal
                | Action::RestartSubscription
                | Action::ClampWindow
                | Action::RestartListing
                | Action::TreatAsSuccess => true,
            };
            let reason = match api.af_code() {
                Some(code) => format!("{} ({})", api.error_type(), code.as_str()),
                None => match api.status() {
                    Some(status) => format!("{} (HTTP {status})", api.error_type()),
                    None => api.error_type().to_string(),
                },
            };
            Failure {
                transient,
                reason,
                message: api.to_string(),
                retry_after: api.retry_after(),
            }
        }
        BlobError::Incomplete(inc) => Failure {
            transient: true,
            reason: match inc.rejection.reason {
                RejectReason::NotAnArray => "body_not_an_array".into(),
                _ => "body_truncated".into(),
            },
            message: inc.to_string(),
            retry_after: None,
        },
        BlobError::Damaged { .. } => Failure {
            transient: true,
            reason: "body_damaged".into(),
            message: e.to_string(),
            retry_after: None,
        },
        BlobError::Kafka(k) => Failure {
            transient: true,
            reason: k.error_type().into(),
            message: k.to_string(),
            retry_after: None,
        },
    }
}

/// Where a failed blob goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// To `m365.uris.retry`.
    Retry(UriMessage),
    /// To `m365.uris.dead`, with its gap record for `m365.health`.
    Dead(UriMessage, Box<HealthRecord>),
}

/// Decides where a failed attempt of `uri` goes.
pub fn route(
    uri: &UriMessage,
    failure: &Failure,
    uri_retry_enabled: bool,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    job_id: &str,
) -> Route {
    let attempt = uri.attempt.saturating_add(1);
    let dead = |reason: String| {
        let (m, g) = dead_letter(uri, &reason, job_id, "consumer");
        Route::Dead(m, Box::new(g))
    };
    if !failure.transient {
        return dead(failure.reason.clone());
    }
    if !uri_retry_enabled {
        return dead(format!("{} (uri_retry is not enabled)", failure.reason));
    }
    if let Some(max) = policy.max_attempts
        && attempt > max
    {
        return dead(format!(
            "retries exhausted after {max} attempts; last error {}",
            failure.reason
        ));
    }
    if now >= uri.content_expiration {
        return dead(format!("content expired; last error {}", failure.reason));
    }
    let wait = backoff(policy, attempt, failure.retry_after);
    let not_before = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
    let mut m = uri.clone();
    m.attempt = attempt;
    m.not_before = Some(not_before);
    m.last_error = Some(format!("{}: {}", failure.reason, failure.message));
    m.reason = None;
    Route::Retry(m)
}

/// The dead-topic message and gap record of `uri`. The gap's time range is the blob's
/// lifetime on the API, `content_created` to `content_expiration`.
pub fn dead_letter(
    uri: &UriMessage,
    reason: &str,
    job_id: &str,
    service: &str,
) -> (UriMessage, HealthRecord) {
    let mut m = uri.clone();
    m.reason = Some(reason.to_string());
    m.not_before = None;
    let gap = HealthRecord::gap(
        job_id,
        service,
        Gap {
            tenant_id: uri.tenant_id.clone(),
            content_type: uri.content_type.clone(),
            content_id: Some(uri.content_id.clone()),
            start: uri.content_created,
            end: uri.content_expiration,
            reason: reason.to_string(),
        },
    );
    (m, gap)
}

/// Delay before attempt `attempt` (1-based): `base · 2^(attempt-1)` capped at `max`, with
/// equal jitter (half fixed, half random); at least `retry_after` when the server asked.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)))
        .min(policy.backoff_max);
    let half = exp / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    let wait = half + Duration::from_millis(jitter);
    retry_after.map_or(wait, |ra| wait.max(ra))
}

/// The records of a route: the URI message (retry or dead topic) and, when dead, its gap.
pub fn route_records(route: &Route, shared: &Shared) -> Vec<OutRecord> {
    let t = &shared.topics;
    match route {
        Route::Retry(m) => vec![uri_record(&t.retry, m)],
        Route::Dead(m, gap) => vec![uri_record(&t.dead, m), gap.to_record(&t.health)],
    }
}

/// A URI message as a record keyed by its stream.
pub fn uri_record(topic: &str, m: &UriMessage) -> OutRecord {
    // Serialising strings, numbers and times cannot fail.
    OutRecord::new(topic, m.key(), serde_json::to_vec(m).unwrap_or_default())
}

/// When a retry message is to be handled: its `not_before`, or its expiry if that is earlier.
fn due_at(m: &Option<UriMessage>) -> DateTime<Utc> {
    match m {
        Some(m) => m
            .not_before
            .map_or(m.content_expiration, |nb| nb.min(m.content_expiration)),
        None => DateTime::<Utc>::MIN_UTC,
    }
}

/// A fetched retry message with its parsed body (`None`: unreadable, committed and skipped).
struct Held {
    message: OwnedMessage,
    uri: Option<UriMessage>,
}

/// Runs the uri_retry service until `cancel` fires; restarts its Kafka session after errors.
pub async fn run_uri_retry(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let result = retry_session(&shared, &cancel).await;
        shared.stats.retry_output_connected.set(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                shared.stats.session_restarts.inc();
                warn!(error = %e, "The uri_retry service's Kafka session failed; restarting it.");
                let wait = Duration::from_millis(500u64 << failures.min(6));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn retry_session(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Result<(), KafkaGlueError> {
    let settings = &shared.settings;
    let topics = &shared.topics;
    let tx_id = format!(
        "{}-uri-retry-{}",
        shared.kafka.topic_prefix, settings.instance_id
    );
    let start = HealthRecord::new(
        &settings.job_id,
        "office365",
        SERVICE_NAME,
        Level::Info,
        Kind::Start,
        "uri_retry service started.",
    );
    let out = Output::connect(
        &shared.kafka,
        &tx_id,
        settings.transaction_timeout,
        start.to_record(&topics.health),
    )
    .await?;
    let (consumer, ctx) = group_consumer(
        &shared.kafka,
        &ConsumerSettings::retry_group_id(&shared.kafka.topic_prefix),
        &topics.retry,
        settings.session_timeout,
        None,
    )?;
    info!(
        transactional = out.is_transactional(),
        "uri_retry service connected to Kafka."
    );
    shared.stats.retry_output_connected.set(true);
    let mut queues: BTreeMap<i32, VecDeque<Held>> = BTreeMap::new();
    let mut paused: BTreeMap<i32, bool> = BTreeMap::new();
    let mut revocations = ctx.revocations();
    loop {
        let now = Utc::now();
        let next_due = queues
            .values()
            .filter_map(|q| q.front())
            .map(|h| due_at(&h.uri))
            .min();
        let sleep_for = next_due.map_or(Duration::from_secs(3600), |d| {
            (d - now).to_std().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            msg = consumer.recv() => {
                let message = msg.map_err(|source| KafkaGlueError::Read { topic: topics.retry.clone(), source })?.detach();
                let uri = message.payload().and_then(|p| serde_json::from_slice::<UriMessage>(p).ok());
                queues.entry(message.partition()).or_default().push_back(Held { message, uri });
            }
            _ = tokio::time::sleep(sleep_for) => {}
        }
        if ctx.revocations() != revocations {
            // Uncommitted messages of revoked partitions are redelivered to their new owner.
            revocations = ctx.revocations();
            queues.clear();
            paused.clear();
        }
        let now = Utc::now();
        for (partition, queue) in queues.iter_mut() {
            while let Some(head) = queue.front() {
                if due_at(&head.uri) > now {
                    break;
                }
                handle_due(shared, &out, &consumer, head).await?;
                queue.pop_front();
            }
            let should_pause = !queue.is_empty();
            let is_paused = paused.get(partition).copied().unwrap_or(false);
            if should_pause != is_paused {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topics.retry, *partition);
                let r = if should_pause {
                    consumer.pause(&tpl)
                } else {
                    consumer.resume(&tpl)
                };
                r.map_err(|source| KafkaGlueError::Read {
                    topic: topics.retry.clone(),
                    source,
                })?;
                paused.insert(*partition, should_pause);
            }
        }
    }
}

/// Hands a due retry message back to `m365.uris`, or dead-letters it when its content expired.
async fn handle_due(
    shared: &Shared,
    out: &Output,
    consumer: &Arc<GroupConsumer>,
    held: &Held,
) -> Result<(), KafkaGlueError> {
    let topics = &shared.topics;
    let records = match &held.uri {
        None => {
            warn!(
                partition = held.message.partition(),
                offset = held.message.offset(),
                "Skipping an unreadable message on the retry topic."
            );
            Vec::new()
        }
        Some(uri) if Utc::now() >= uri.content_expiration => {
            let reason = format!(
                "content expired before its retry (attempt {}); last error {}",
                uri.attempt,
                uri.last_error.as_deref().unwrap_or("unknown")
            );
            let (m, gap) = dead_letter(uri, &reason, &shared.settings.job_id, SERVICE_NAME);
            warn!(tenant = %uri.tenant_id, content_type = %uri.content_type, content_id = %uri.content_id, "Blob expired before its retry; it is lost.");
            vec![uri_record(&topics.dead, &m), gap.to_record(&topics.health)]
        }
        Some(uri) => {
            let mut m = uri.clone();
            m.not_before = None;
            vec![uri_record(&topics.uris, &m)]
        }
    };
    let at = (
        consumer,
        topics.retry.as_str(),
        held.message.partition(),
        held.message.offset() + 1,
    );
    out.send_and_commit(&records, Some(at)).await?;
    match &held.uri {
        Some(uri) if records.len() == 2 => {
            shared.stats.blobs_dead.inc();
            info!(content_id = %uri.content_id, "Dead-lettered an expired retry.");
        }
        Some(_) => shared.stats.retries_requeued.inc(),
        None => {}
    }
    Ok(())
}
