//! One blob: download it as a stream, split it into records, tag them, drop the ids already
//! seen on the stream, and produce the rest to `m365.events` with bounded in-flight sends.
//!
//! Nothing is held whole: body chunks go straight into the [`Splitter`], each record is sent
//! as soon as it is complete, and at most `max_in_flight_records` / `max_in_flight_bytes`
//! await acknowledgement.
//!
//! Dedup and commits: in the transactional mode, ids of this blob are collected in
//! [`BlobResult::new_ids`] and inserted into the filter by the caller only after the
//! transaction committed (an aborted blob leaves the filter untouched). In the ordered mode
//! ids go into the filter as they are sent, because what was acknowledged stays on the topic
//! even if the blob then fails (a retry must not send it again); on a Kafka error the caller
//! discards the filter and reloads it from `m365.state` + `m365.events`.
//!
//! Acknowledgements: a failed blob has every send settled before [`download`] returns. A
//! completed blob in the ordered mode is returned with its last sends possibly still
//! unacknowledged ([`Downloaded::unacknowledged`]), so the caller can start the next blob
//! while they arrive; it must drain them before committing the blob's offset or writing a
//! snapshot of a filter that holds the blob's ids.
//!
//! Damaged bodies: an element with invalid JSON or UTF-8 stops the download and fails the
//! attempt (transient: the damage may have happened in transit) until the blob has been tried
//! `damaged_body_retries` times; after that intact records are kept and the damaged elements
//! reported. Elements that are deterministically not records (not an object, no `Id`, over
//! the size cap) are counted and reported; the rest of the blob goes on.

use std::collections::{BTreeMap, HashSet};

use m365_common::api::{ApiClient, ApiError};
use m365_common::envelope::{EventHeaders, UriMessage};
use m365_common::kafka::KafkaGlueError;
use m365_common::tags::tag_for_workload;
use tracing::warn;

use crate::dedup::Dedup;
use crate::kafka_io::{InFlight, Output};
use crate::settings::{ConsumerSettings, StreamOptions};
use crate::split::{BlobIncomplete, RejectCounts, RejectReason, SplitItem, Splitter};

/// What a completed blob gave.
#[derive(Debug, Default)]
pub struct BlobResult {
    /// Records read (before dedup).
    pub records_in: u64,
    /// Records dropped as already seen.
    pub duplicates: u64,
    /// Records produced, by tag.
    pub out_by_tag: BTreeMap<String, u64>,
    /// Records without a `Workload`.
    pub without_workload: u64,
    /// Elements that were not records.
    pub rejected: RejectCounts,
    /// Transactional mode: ids to insert into the filter once committed.
    pub new_ids: Vec<String>,
    /// Body bytes read.
    pub body_bytes: u64,
}

/// A completed blob: what it gave, and its sends still awaiting acknowledgement (always
/// empty in the transactional mode).
pub struct Downloaded {
    pub result: BlobResult,
    pub unacknowledged: InFlight,
}

/// Why a blob did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The API refused or the transfer failed (including a body cut off in transport).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The body ended inside the array, or was not a JSON array (e.g. an error page).
    #[error(transparent)]
    Incomplete(Box<BlobIncomplete>),
    /// An element was damaged (invalid JSON or UTF-8) and the blob may still be re-fetched.
    #[error("blob body is damaged: {reason} at byte {offset}")]
    Damaged { reason: RejectReason, offset: u64 },
    /// Producing to Kafka failed; the session must be restarted.
    #[error(transparent)]
    Kafka(#[from] KafkaGlueError),
}

/// Everything [`download`] needs besides the blob.
pub struct BlobJob<'a> {
    pub settings: &'a ConsumerSettings,
    pub events_topic: &'a str,
    pub out: &'a Output,
    pub options: &'a StreamOptions,
}

/// Downloads `uri` and produces its new records (see the module docs). In the transactional
/// mode the caller has begun a transaction.
pub async fn download(
    job: &BlobJob<'_>,
    api: &ApiClient,
    uri: &UriMessage,
    dedup: &mut Dedup,
) -> Result<Downloaded, BlobError> {
    let transactional = job.out.is_transactional();
    let allow_damaged = uri.attempt >= job.settings.retry.damaged_body_retries;
    let mut body = api.fetch_blob(&uri.content_uri).await?;
    let mut splitter = Splitter::new(job.settings.split);
    let mut flight = InFlight::new(
        job.settings.max_in_flight_records,
        job.settings.max_in_flight_bytes,
    )
    .with_backlog(job.settings.backlog.clone());
    let mut pending: HashSet<String> = HashSet::new();
    let mut result = BlobResult::default();
    let mut items = Vec::new();
    let mut tag_cache: BTreeMap<String, String> = BTreeMap::new();
    let streamed: Result<(), BlobError> = async {
    while let Some(chunk) = body.chunk().await? {
        splitter.feed_into(&chunk, &mut items);
        for item in items.drain(..) {
            let record = match item {
                SplitItem::Record(r) => r,
                SplitItem::Rejected(r) => {
                    if matches!(r.reason, RejectReason::InvalidJson | RejectReason::InvalidUtf8) && !allow_damaged {
                        return Err(BlobError::Damaged { reason: r.reason, offset: r.offset });
                    }
                    warn!(tenant = %uri.tenant_id, content_type = %uri.content_type, content_id = %uri.content_id,
                        reason = %r.reason, index = r.index, offset = r.offset, excerpt = %r.excerpt_lossy(),
                        "Skipping a blob element that is not an audit record.");
                    continue;
                }
            };
            result.records_in += 1;
            let seen = if transactional {
                dedup.contains(&record.id) || !pending.insert(record.id.clone())
            } else {
                !dedup.check_and_insert(&record.id)
            };
            if seen {
                result.duplicates += 1;
                continue;
            }
            let workload = record.workload.as_deref().filter(|w| !w.is_empty());
            if workload.is_none() {
                result.without_workload += 1;
            }
            let tag = match (&job.options.override_tag, workload) {
                (Some(t), _) => t.clone(),
                (None, Some(w)) => tag_cache.entry(w.to_string()).or_insert_with(|| tag_for_workload(w)).clone(),
                (None, None) => job.settings.fallback_tag.clone(),
            };
            let headers: [(&str, &[u8]); 5] = [
                (EventHeaders::TAG, tag.as_bytes()),
                (EventHeaders::TENANT_ID, uri.tenant_id.as_bytes()),
                (EventHeaders::CONTENT_TYPE, uri.content_type.as_bytes()),
                (EventHeaders::CONTENT_ID, uri.content_id.as_bytes()),
                (EventHeaders::WORKLOAD, workload.unwrap_or("").as_bytes()),
            ];
            flight
                .send(job.out, job.events_topic, Some(record.id.as_bytes()), Some(&record.bytes), &headers)
                .await?;
            *result.out_by_tag.entry(tag).or_default() += 1;
        }
        if splitter.is_stopped() {
            break;
        }
    }
    Ok(())
    }
    .await;
    let finished = match streamed {
        Ok(()) => splitter
            .finish()
            .map_err(|incomplete| BlobError::Incomplete(Box::new(incomplete))),
        Err(e) => Err(e),
    };
    match finished {
        Ok(summary) => {
            result.rejected = summary.rejected;
            result.body_bytes = summary.body_bytes;
            if transactional {
                flight.drain().await?;
            }
            result.new_ids = pending.into_iter().collect();
            Ok(Downloaded {
                result,
                unacknowledged: flight,
            })
        }
        Err(e) => {
            // A failed blob is routed (retry or dead letter) right away: in the ordered mode a
            // record whose id is in the filter must be on the topic before that.
            flight.drain().await?;
            Err(e)
        }
    }
}
