//! The simulator's mutable world: blobs per (tenant, content type), subscriptions, the
//! clock-driven generator, and the bookkeeping behind truth, request logs and violations.
//!
//! Everything lives in one [`SimState`] behind a mutex; request handlers lock it briefly
//! and never across an `.await`. Generated records are stored as seeds and rendered on
//! download (see `generator`), so large histories stay cheap.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{ContentType, FaultSpec, SimConfig};
use super::generator::{self, TenantCtx, hash_str, mix};
use super::truth::{
    BlobTruth, RequestLog, RequestSummary, StreamTruth, Truth, Violation, ViolationKind,
};

/// A record inside a blob.
#[derive(Clone, Debug)]
pub(crate) enum RecordRef {
    /// Generated: rendered from `seed` for a blob created at `created`.
    Gen { seed: u64, created: DateTime<Utc> },
    /// Literal bytes (record files, scenario, published by tests).
    Lit { id: Arc<str>, bytes: Arc<str> },
}

impl RecordRef {
    pub(crate) fn id(&self) -> String {
        match self {
            RecordRef::Gen { seed, .. } => generator::record_id(*seed),
            RecordRef::Lit { id, .. } => id.to_string(),
        }
    }

    pub(crate) fn render(&self, ctx: &TenantCtx, ct: ContentType) -> String {
        match self {
            RecordRef::Gen { seed, created } => generator::generate(ctx, ct, *created, *seed),
            RecordRef::Lit { bytes, .. } => bytes.to_string(),
        }
    }
}

/// One content blob.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    pub(crate) content_id: String,
    pub(crate) tenant: usize,
    pub(crate) ct: ContentType,
    pub(crate) seq: u64,
    pub(crate) created: DateTime<Utc>,
    pub(crate) visible_at: DateTime<Utc>,
    pub(crate) expiration: DateTime<Utc>,
    pub(crate) records: Vec<RecordRef>,
    pub(crate) times_listed: u64,
    pub(crate) times_downloaded: u64,
}

/// Subscription status of one (tenant, content type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubStatus {
    Absent,
    Enabled,
    Stopped,
    AdminDisabled,
}

#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) status: SubStatus,
    /// Periods whose content is never listable (subscription off); `None` end = still open.
    hidden: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    last_start: Option<DateTime<Utc>>,
    started_once: bool,
}

impl Subscription {
    fn hides(&self, t: DateTime<Utc>) -> bool {
        self.hidden
            .iter()
            .any(|(from, to)| t >= *from && to.is_none_or(|end| t < end))
    }

    fn open_gap(&mut self, at: DateTime<Utc>) {
        if !self.hidden.iter().any(|(_, to)| to.is_none()) {
            self.hidden.push((at, None));
        }
    }

    fn close_gap(&mut self, at: DateTime<Utc>) {
        for gap in &mut self.hidden {
            if gap.1.is_none() {
                gap.1 = Some(at);
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Stream {
    /// Blob indices ordered by (`created`, `seq`).
    order: Vec<usize>,
    pub(crate) sub: Subscription,
    next_seq: u64,
    last_blob: Option<usize>,
    rate_acc: f64,
}

/// An Activity API error answer.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Result of a `start` call.
pub(crate) struct Started;

/// Position in a listing: (`contentCreated` millis, blob sequence).
pub(crate) type PageKey = (i64, u64);

/// Immutable facts shared by handlers.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) cfg: SimConfig,
    pub(crate) ctxs: Vec<TenantCtx>,
    pub(crate) started_at: DateTime<Utc>,
}

impl Env {
    pub(crate) fn tenant_index(&self, tenant: &str) -> Option<usize> {
        self.cfg
            .tenants
            .iter()
            .position(|t| t.tenant_id.eq_ignore_ascii_case(tenant))
    }
}

#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) blobs: Vec<Blob>,
    pub(crate) by_id: HashMap<String, usize>,
    streams: Vec<Vec<Stream>>,
    next_slot: DateTime<Utc>,
    interval: Duration,
    log: VecDeque<RequestLog>,
    pub(crate) summary: RequestSummary,
    violations: Vec<Violation>,
    pub(crate) tokens_issued: u64,
    pub(crate) tokens_by_client: BTreeMap<String, u64>,
    pub(crate) jtis: HashSet<String>,
    pub(crate) scenario: BTreeMap<String, Vec<String>>,
}

fn content_id(
    tenant_id: &str,
    ct: ContentType,
    created: DateTime<Utc>,
    seq: u64,
    seed: u64,
) -> String {
    let ts = created.format("%Y%m%d%H%M%S%3f");
    let tenant_hex: String = tenant_id
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let hour = created.format("%Y%m%d%H");
    let tail = generator::guid(mix(
        seed,
        mix(hash_str(tenant_id), seq ^ ((ct.index() as u64) << 56)),
    ))
    .replace('-', "");
    format!(
        "{ts}{seq:06}${ts}{seq:06}${tenant_hex}{}{hour}${tail}$01",
        ct.short()
    )
}

/// Whether `id` has the shape of a content id (opaque, `$`-separated, URL-safe characters).
pub(crate) fn content_id_well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 512
        && id.contains('$')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'_' | b'-' | b'.'))
}

/// `contentCreated`-style timestamp: milliseconds and `Z`.
pub(crate) fn api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl SimState {
    pub(crate) fn new(env: &Env) -> SimState {
        let cfg = &env.cfg;
        let interval = Duration::seconds(i64::try_from(cfg.blob_interval_secs).unwrap_or(300));
        let history = Duration::seconds((cfg.history_hours * 3600.0) as i64);
        let first = env.started_at - history;
        // Align slots to the interval so runs with the same seed look alike.
        let step = interval.num_seconds().max(1);
        let aligned = first.timestamp().div_euclid(step) * step + step;
        let next_slot = DateTime::from_timestamp(aligned, 0).unwrap_or(first);
        let streams = cfg
            .tenants
            .iter()
            .map(|t| {
                ContentType::ALL
                    .iter()
                    .map(|ct| {
                        let mut sub = Subscription {
                            status: SubStatus::Absent,
                            hidden: Vec::new(),
                            last_start: None,
                            started_once: false,
                        };
                        if t.subscribed.contains(ct) {
                            sub.status = SubStatus::Enabled;
                            sub.started_once = true;
                        }
                        Stream {
                            order: Vec::new(),
                            sub,
                            next_seq: 1,
                            last_blob: None,
                            rate_acc: 0.0,
                        }
                    })
                    .collect()
            })
            .collect();
        SimState {
            blobs: Vec::new(),
            by_id: HashMap::new(),
            streams,
            next_slot,
            interval,
            log: VecDeque::new(),
            summary: RequestSummary::default(),
            violations: Vec::new(),
            tokens_issued: 0,
            tokens_by_client: BTreeMap::new(),
            jtis: HashSet::new(),
            scenario: BTreeMap::new(),
        }
    }

    /// Add a blob and return its index.
    pub(crate) fn add_blob(
        &mut self,
        env: &Env,
        tenant: usize,
        ct: ContentType,
        created: DateTime<Utc>,
        visible_at: DateTime<Utc>,
        records: Vec<RecordRef>,
    ) -> usize {
        let stream = &mut self.streams[tenant][ct.index()];
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let id = content_id(
            &env.cfg.tenants[tenant].tenant_id,
            ct,
            created,
            seq,
            env.cfg.seed,
        );
        let idx = self.blobs.len();
        self.blobs.push(Blob {
            content_id: id.clone(),
            tenant,
            ct,
            seq,
            created,
            visible_at: visible_at.max(created),
            expiration: created + Duration::days(7),
            records,
            times_listed: 0,
            times_downloaded: 0,
        });
        self.by_id.insert(id, idx);
        let blobs = &self.blobs;
        let pos = stream
            .order
            .partition_point(|&i| (blobs[i].created, blobs[i].seq) < (created, seq));
        stream.order.insert(pos, idx);
        stream.last_blob = Some(idx);
        idx
    }

    /// Generate every slot up to `now` (only up to the start time without live generation).
    pub(crate) fn advance(&mut self, env: &Env, faults: &FaultSpec, now: DateTime<Utc>) {
        let until = if env.cfg.live_generation {
            now
        } else {
            env.started_at
        };
        while self.next_slot <= until {
            let slot = self.next_slot;
            self.generate_slot(env, faults, slot);
            self.next_slot = slot + self.interval;
        }
    }

    fn generate_slot(&mut self, env: &Env, faults: &FaultSpec, slot: DateTime<Utc>) {
        let cfg = &env.cfg;
        for (ti, tenant) in cfg.tenants.iter().enumerate() {
            let rate = tenant.records_per_minute.unwrap_or(cfg.records_per_minute);
            let total_w: f64 = tenant.content_types.iter().map(|c| c.weight()).sum();
            if total_w <= 0.0 {
                continue;
            }
            for &ct in &tenant.content_types {
                let slot_seed = mix(
                    mix(cfg.seed, hash_str(&tenant.tenant_id)),
                    mix(ct.index() as u64, slot.timestamp() as u64),
                );
                let mut rng = StdRng::seed_from_u64(slot_seed);
                let expected =
                    rate * self.interval.num_seconds() as f64 / 60.0 * ct.weight() / total_w;
                let stream = &mut self.streams[ti][ct.index()];
                stream.rate_acc += expected * rng.random_range(0.5..1.5);
                let n = stream.rate_acc.floor().max(0.0);
                stream.rate_acc -= n;
                let mut remaining = n as usize;
                let mut index = 0u64;
                while remaining > 0 {
                    let chunk = remaining.min(cfg.max_blob_records);
                    remaining -= chunk;
                    let mut records: Vec<RecordRef> = (0..chunk)
                        .map(|_| {
                            index += 1;
                            RecordRef::Gen {
                                seed: mix(slot_seed, index),
                                created: slot,
                            }
                        })
                        .collect();
                    if faults.duplicate_record_fraction > 0.0
                        && rng.random::<f64>() < faults.duplicate_record_fraction
                        && let Some(prev) = self.streams[ti][ct.index()].last_blob
                        && !self.blobs[prev].records.is_empty()
                    {
                        let src = &self.blobs[prev].records;
                        let copy = src[rng.random_range(0..src.len())].clone();
                        let at = rng.random_range(0..=records.len());
                        records.insert(at, copy);
                    }
                    let late = faults.late_blob_fraction > 0.0
                        && rng.random::<f64>() < faults.late_blob_fraction;
                    let visible = if late {
                        slot + Duration::seconds(
                            i64::try_from(faults.late_blob_delay_secs).unwrap_or(0),
                        )
                    } else {
                        slot
                    };
                    self.add_blob(env, ti, ct, slot, visible, records);
                }
                if faults.empty_blob_fraction > 0.0
                    && rng.random::<f64>() < faults.empty_blob_fraction
                {
                    self.add_blob(env, ti, ct, slot, slot, Vec::new());
                }
            }
        }
    }

    pub(crate) fn stream(&self, tenant: usize, ct: ContentType) -> &Stream {
        &self.streams[tenant][ct.index()]
    }

    fn stream_mut(&mut self, tenant: usize, ct: ContentType) -> &mut Stream {
        &mut self.streams[tenant][ct.index()]
    }

    /// `subscriptions/start`.
    pub(crate) fn start(
        &mut self,
        env: &Env,
        tenant: usize,
        ct: ContentType,
        now: DateTime<Utc>,
    ) -> Result<Started, ApiError> {
        let cfg = &env.cfg;
        let min = Duration::seconds(i64::try_from(cfg.start_min_interval_secs).unwrap_or(0));
        let delay = Duration::seconds(i64::try_from(cfg.first_data_delay_secs).unwrap_or(0));
        let sub = &mut self.stream_mut(tenant, ct).sub;
        let too_soon =
            cfg.start_min_interval_secs > 0 && sub.last_start.is_some_and(|last| now - last < min);
        sub.last_start = Some(now);
        if too_soon {
            return Err(ApiError::new(
                400,
                "AF429",
                format!(
                    "Too many requests. Method=StartSubscription. Wait {} seconds between start requests.",
                    cfg.start_min_interval_secs
                ),
            ));
        }
        match sub.status {
            SubStatus::Enabled => Err(ApiError::new(
                400,
                "AF20024",
                "The subscription is already enabled. No property change.",
            )),
            SubStatus::Absent | SubStatus::Stopped | SubStatus::AdminDisabled => {
                if !sub.started_once {
                    sub.started_once = true;
                    if !cfg.history_visible_on_start {
                        sub.hidden
                            .push((DateTime::<Utc>::MIN_UTC, Some(now + delay)));
                    } else if cfg.first_data_delay_secs > 0 {
                        sub.hidden.push((now, Some(now + delay)));
                    }
                } else {
                    sub.close_gap(now);
                }
                sub.status = SubStatus::Enabled;
                Ok(Started)
            }
        }
    }

    /// Whether this start call comes too soon after the previous one (for the violation log).
    pub(crate) fn start_too_soon(
        &self,
        env: &Env,
        tenant: usize,
        ct: ContentType,
        now: DateTime<Utc>,
    ) -> bool {
        let secs = env.cfg.start_min_interval_secs;
        secs > 0
            && self.stream(tenant, ct).sub.last_start.is_some_and(|last| {
                now - last < Duration::seconds(i64::try_from(secs).unwrap_or(0))
            })
    }

    /// `subscriptions/stop`.
    pub(crate) fn stop(
        &mut self,
        tenant: usize,
        ct: ContentType,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let sub = &mut self.stream_mut(tenant, ct).sub;
        match sub.status {
            SubStatus::Absent => Err(no_subscription(ct)),
            SubStatus::Enabled => {
                sub.status = SubStatus::Stopped;
                sub.open_gap(now);
                Ok(())
            }
            SubStatus::Stopped | SubStatus::AdminDisabled => Ok(()),
        }
    }

    /// An administrator disables the subscription (content is hidden until a new start).
    pub(crate) fn admin_disable(&mut self, tenant: usize, ct: ContentType, now: DateTime<Utc>) {
        let sub = &mut self.stream_mut(tenant, ct).sub;
        if sub.status == SubStatus::Absent {
            sub.started_once = true;
        }
        sub.status = SubStatus::AdminDisabled;
        sub.open_gap(now);
    }

    /// Refuse listing/downloading unless the subscription is enabled.
    pub(crate) fn check_enabled(&self, tenant: usize, ct: ContentType) -> Result<(), ApiError> {
        match self.stream(tenant, ct).sub.status {
            SubStatus::Enabled => Ok(()),
            SubStatus::Absent | SubStatus::Stopped => Err(no_subscription(ct)),
            SubStatus::AdminDisabled => Err(ApiError::new(
                400,
                "AF20023",
                format!(
                    "The subscription for {ct} was disabled by a tenant admin or service admin."
                ),
            )),
        }
    }

    /// Subscriptions ever started: (content type, status string).
    pub(crate) fn subscriptions(&self, tenant: usize) -> Vec<(ContentType, &'static str)> {
        ContentType::ALL
            .iter()
            .filter_map(|&ct| match self.stream(tenant, ct).sub.status {
                SubStatus::Absent => None,
                SubStatus::Enabled => Some((ct, "enabled")),
                SubStatus::Stopped | SubStatus::AdminDisabled => Some((ct, "disabled")),
            })
            .collect()
    }

    fn listable(&self, idx: usize, now: DateTime<Utc>) -> bool {
        let b = &self.blobs[idx];
        b.visible_at <= now
            && b.expiration > now
            && !self.streams[b.tenant][b.ct.index()].sub.hides(b.created)
    }

    /// One page of `start <= contentCreated < end`, from `from` on. Returns blob indices and
    /// the key of the first item of the next page.
    pub(crate) fn list_page(
        &mut self,
        tenant: usize,
        ct: ContentType,
        window: (DateTime<Utc>, DateTime<Utc>),
        from: Option<PageKey>,
        page_size: usize,
        now: DateTime<Utc>,
    ) -> (Vec<usize>, Option<PageKey>) {
        let (start, end) = window;
        let stream = self.stream(tenant, ct);
        let lo = stream
            .order
            .partition_point(|&i| self.blobs[i].created < start);
        let mut page = Vec::new();
        let mut next = None;
        for &idx in &stream.order[lo..] {
            let b = &self.blobs[idx];
            if b.created >= end {
                break;
            }
            let key = (b.created.timestamp_millis(), b.seq);
            if from.is_some_and(|f| key < f) || !self.listable(idx, now) {
                continue;
            }
            if page.len() == page_size {
                next = Some(key);
                break;
            }
            page.push(idx);
        }
        for &idx in &page {
            self.blobs[idx].times_listed += 1;
        }
        (page, next)
    }

    /// Find a blob of this tenant by content id (hidden or not-yet-visible blobs are unknown).
    pub(crate) fn find_blob(
        &self,
        tenant: usize,
        content_id: &str,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        let &idx = self.by_id.get(content_id)?;
        let b = &self.blobs[idx];
        (b.tenant == tenant
            && b.visible_at <= now
            && !self.streams[b.tenant][b.ct.index()].sub.hides(b.created))
        .then_some(idx)
    }

    /// Blob index by content id, any tenant.
    pub(crate) fn blob_index(&self, content_id: &str) -> Option<usize> {
        self.by_id.get(content_id).copied()
    }

    pub(crate) fn push_log(&mut self, limit: usize, entry: RequestLog) {
        let s = &mut self.summary;
        s.total += 1;
        *s.by_endpoint
            .entry(format!("{:?}", entry.endpoint))
            .or_default() += 1;
        *s.by_status.entry(entry.status).or_default() += 1;
        if let Some(code) = &entry.error_code {
            *s.by_error_code.entry(code.clone()).or_default() += 1;
        }
        if let Some(f) = &entry.fault {
            *s.faults.entry(f.clone()).or_default() += 1;
        }
        if entry.publisher_identifier.is_none()
            && !matches!(
                entry.endpoint,
                super::truth::Endpoint::TokenV1 | super::truth::Endpoint::TokenV2
            )
        {
            s.without_publisher_identifier += 1;
        }
        if limit == 0 {
            s.log_entries_dropped += 1;
            return;
        }
        while self.log.len() >= limit {
            self.log.pop_front();
            s.log_entries_dropped += 1;
        }
        self.log.push_back(entry);
    }

    pub(crate) fn requests(&self) -> Vec<RequestLog> {
        self.log.iter().cloned().collect()
    }

    pub(crate) fn violate(
        &mut self,
        at: DateTime<Utc>,
        kind: ViolationKind,
        tenant: Option<&str>,
        request: &str,
        detail: String,
    ) {
        self.summary.violations += 1;
        self.violations.push(Violation {
            at,
            kind,
            tenant: tenant.map(str::to_owned),
            request: request.to_owned(),
            detail,
        });
    }

    pub(crate) fn violations(&self) -> Vec<Violation> {
        self.violations.clone()
    }

    /// Snapshot the ground truth.
    pub(crate) fn truth(&self, env: &Env, now: DateTime<Utc>) -> Truth {
        let mut tenants = BTreeMap::new();
        for (ti, t) in env.cfg.tenants.iter().enumerate() {
            let mut per_ct = BTreeMap::new();
            for ct in ContentType::ALL {
                let stream = self.stream(ti, ct);
                let mut st = StreamTruth::default();
                for &idx in &stream.order {
                    let b = &self.blobs[idx];
                    let ids: Vec<String> = b.records.iter().map(RecordRef::id).collect();
                    let published = b.visible_at <= now && !stream.sub.hides(b.created);
                    if published {
                        st.published_content_ids.insert(b.content_id.clone());
                        st.published_record_count += ids.len() as u64;
                        st.published_record_ids.extend(ids.iter().cloned());
                    }
                    if b.times_listed > 0 {
                        st.listed_content_ids.insert(b.content_id.clone());
                    }
                    if b.times_downloaded > 0 {
                        st.downloaded_content_ids.insert(b.content_id.clone());
                        st.downloaded_record_ids.extend(ids.iter().cloned());
                    }
                    st.blobs.push(BlobTruth {
                        content_id: b.content_id.clone(),
                        content_created: b.created,
                        content_expiration: b.expiration,
                        visible_at: b.visible_at,
                        record_ids: ids,
                        published,
                        expired: b.expiration <= now,
                        times_listed: b.times_listed,
                        times_downloaded: b.times_downloaded,
                    });
                }
                per_ct.insert(ct.as_str().to_owned(), st);
            }
            tenants.insert(t.tenant_id.clone(), per_ct);
        }
        Truth {
            taken_at: now,
            tenants,
            scenario_record_ids: self.scenario.clone(),
            tokens_issued: self.tokens_issued,
        }
    }
}

fn no_subscription(ct: ContentType) -> ApiError {
    ApiError::new(
        400,
        "AF20022",
        format!("No subscription found for the specified content type: {ct}."),
    )
}
