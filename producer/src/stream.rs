//! One stream's work: list windows of at most 24 h from its cursor, emit the blobs not yet in
//! its ledger, and advance the cursor only once Kafka holds the URIs (design.md §4).
//!
//! A stream can be asked to stop (shutdown, or its slot moving to another instance): a
//! listing in progress is abandoned, but a commit in progress is always finished first, so
//! once the stream's task has ended nothing more of it can reach Kafka from this process.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use m365_common::api::{ApiClient, ApiError, ContentBlob};
use m365_common::envelope::UriMessage;
use m365_common::health::{Gap, HealthRecord};
use m365_common::kafka::{Committer, KafkaGlueError, OutRecord, Topics};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::internal_events::ProducerStats;
use crate::settings::ProducerSettings;
use crate::state::{Ledger, StreamId, encode_cursor, encode_ledger};

/// The listing horizon of the API: `startTime` at most this far back.
pub const API_HORIZON: Duration = Duration::days(7);
/// The widest window the API answers completely.
pub const MAX_WINDOW: Duration = Duration::hours(24);

/// Why a tick stopped.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Kafka(#[from] KafkaGlueError),
    /// The stream was asked to stop while it was listing; nothing was committed.
    #[error("the stream was stopped")]
    Stopped,
}

/// Shared by every stream of a producer process.
pub struct Shared {
    pub settings: ProducerSettings,
    pub topics: Topics,
    pub committer: Committer,
    /// One transaction at a time on the shared transactional producer.
    pub commit_lock: Mutex<()>,
    pub stats: Arc<ProducerStats>,
}

/// The state of one stream, owned by its task.
pub struct Stream {
    pub id: StreamId,
    pub api: Arc<ApiClient>,
    pub cursor: DateTime<Utc>,
    pub ledger: Ledger,
    pub last_sweep: Option<DateTime<Utc>>,
}

/// What a catch-up step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A window was listed and committed; there may be more to catch up.
    Advanced { emitted: usize },
    /// The cursor is as close to now as the settle time allows.
    CaughtUp,
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::seconds(1)).unwrap_or(t)
}

impl Stream {
    /// Lists the next window and commits what it found. The window is
    /// `[cursor, min(cursor + 24h, now − settle))` with `cursor` clamped to the 7-day horizon;
    /// a clamp emits a gap record in the same commit.
    ///
    /// `stop` abandons the listing (with [`TickError::Stopped`]), never a commit under way.
    pub async fn step(
        &mut self,
        shared: &Shared,
        stop: &CancellationToken,
    ) -> Result<Step, TickError> {
        let now = self.api.server_now();
        let horizon = whole_seconds(now - API_HORIZON + shared.settings.horizon_margin);
        let mut start = self.cursor;
        let mut gap = None;
        if start < horizon {
            gap = Some(Gap {
                tenant_id: self.id.tenant_id.clone(),
                content_type: self.id.content_type.clone(),
                content_id: None,
                start,
                end: horizon,
                reason: "older than the API's 7-day listing horizon".into(),
            });
            start = horizon;
        }
        let end = whole_seconds((start + MAX_WINDOW).min(now - shared.settings.settle));
        if end <= start {
            if let Some(gap) = gap {
                // Nothing to list yet, but the clamp itself must be recorded and the cursor moved.
                self.commit(shared, Vec::new(), start, Some(gap)).await?;
            }
            return Ok(Step::CaughtUp);
        }
        let blobs = self.list(start, end, stop).await?;
        shared.stats.windows_listed.inc();
        let emitted = self.emit_new(shared, blobs, end, gap).await?;
        Ok(Step::Advanced { emitted })
    }

    /// Re-lists the trailing sweep horizon (behind the cursor) to catch blobs published late;
    /// the ledger keeps what was already emitted from going out twice.
    pub async fn sweep(
        &mut self,
        shared: &Shared,
        stop: &CancellationToken,
    ) -> Result<usize, TickError> {
        let now = self.api.server_now();
        let horizon = whole_seconds(now - API_HORIZON + shared.settings.horizon_margin);
        let mut start = whole_seconds((self.cursor - shared.settings.sweep_horizon).max(horizon));
        let mut total = 0;
        while start < self.cursor {
            let end = (start + MAX_WINDOW).min(self.cursor);
            let blobs = self.list(start, end, stop).await?;
            shared.stats.windows_listed.inc();
            let cursor = self.cursor;
            let n = self.emit_new(shared, blobs, cursor, None).await?;
            if n > 0 {
                info!(stream = %self.id, emitted = n, "Late-content sweep found blobs published late.");
                shared.stats.late_blobs.add(n as u64);
            }
            total += n;
            start = end;
        }
        self.last_sweep = Some(now);
        Ok(total)
    }

    /// Lists one window, unless `stop` fires first.
    async fn list(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<Vec<ContentBlob>, TickError> {
        tokio::select! {
            biased;
            _ = stop.cancelled() => Err(TickError::Stopped),
            r = self.api.list_content(&self.id.content_type, start, end) => Ok(r?),
        }
    }

    async fn emit_new(
        &mut self,
        shared: &Shared,
        blobs: Vec<ContentBlob>,
        new_cursor: DateTime<Utc>,
        gap: Option<Gap>,
    ) -> Result<usize, TickError> {
        let listed_at = Utc::now();
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for b in blobs {
            if self.ledger.contains(&b.content_id) || !seen.insert(b.content_id.clone()) {
                shared.stats.blobs_already_emitted.inc();
                continue;
            }
            fresh.push(UriMessage {
                tenant_id: self.id.tenant_id.clone(),
                content_type: self.id.content_type.clone(),
                content_id: b.content_id,
                content_uri: b.content_uri,
                content_created: b.content_created,
                content_expiration: b.content_expiration,
                listed_at,
                attempt: 0,
                not_before: None,
                last_error: None,
                reason: None,
            });
        }
        let n = fresh.len();
        if n == 0 && new_cursor == self.cursor && gap.is_none() {
            return Ok(0);
        }
        self.commit(shared, fresh, new_cursor, gap).await?;
        Ok(n)
    }

    /// Phase 1: the URIs. Phase 2: their ledger entries, tombstones of expired entries, a gap
    /// record if any, and the cursor. In one transaction where the broker has them.
    async fn commit(
        &mut self,
        shared: &Shared,
        uris: Vec<UriMessage>,
        new_cursor: DateTime<Utc>,
        gap: Option<Gap>,
    ) -> Result<(), TickError> {
        let state = &shared.topics.state;
        let key = self.id.to_string();
        let phase1: Vec<OutRecord> = uris
            .iter()
            .map(|u| {
                OutRecord::new(
                    &shared.topics.uris,
                    key.clone(),
                    serde_json::to_vec(u).unwrap_or_default(),
                )
            })
            .collect();
        let expired = self.ledger.take_expired(Utc::now());
        let mut phase2: Vec<OutRecord> = uris
            .iter()
            .map(|u| {
                OutRecord::new(
                    state,
                    self.id.ledger_key(&u.content_id),
                    encode_ledger(u.content_expiration),
                )
            })
            .collect();
        phase2.extend(
            expired
                .iter()
                .map(|id| OutRecord::tombstone(state, self.id.ledger_key(id))),
        );
        if let Some(gap) = &gap {
            let rec = HealthRecord::gap(&shared.settings.job_id, "producer", gap.clone());
            phase2.push(rec.to_record(&shared.topics.health));
        }
        phase2.push(OutRecord::new(
            state,
            self.id.cursor_key(),
            encode_cursor(new_cursor, Utc::now()),
        ));
        {
            let _guard = shared.commit_lock.lock().await;
            shared.committer.commit(vec![phase1, phase2]).await?;
        }
        for u in &uris {
            self.ledger
                .insert(u.content_id.clone(), u.content_expiration);
        }
        if let Some(gap) = gap {
            warn!(stream = %self.id, start = %gap.start, end = %gap.end, "Listing window clamped to the 7-day horizon; the skipped range is reported as a gap.");
            shared.stats.gaps.inc();
        }
        shared.stats.blobs_emitted.add(uris.len() as u64);
        debug!(stream = %self.id, from = %self.cursor, to = %new_cursor, emitted = uris.len(), "Committed window.");
        self.cursor = new_cursor;
        shared
            .stats
            .streams
            .set(&self.id, new_cursor, self.api.skew());
        Ok(())
    }
}
