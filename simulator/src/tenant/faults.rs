//! Fault injection and throttling: the runtime-adjustable [`FaultHandle`], scripted one-shot
//! faults for deterministic tests, random faults drawn from a seeded generator, and the
//! per-tenant / anonymous token buckets.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::{FaultSpec, ThrottleSpec};
use super::truth::Endpoint;

/// Which requests a scripted fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultTarget {
    /// Any Activity API request (not the token endpoint).
    AnyApi,
    /// `subscriptions/content` (and notifications).
    Listing,
    /// Blob downloads.
    Blob,
    /// `subscriptions/start|stop|list`.
    Subscriptions,
    /// Token endpoints.
    Token,
}

impl FaultTarget {
    fn matches(self, endpoint: Endpoint) -> bool {
        match self {
            FaultTarget::AnyApi => !matches!(endpoint, Endpoint::TokenV1 | Endpoint::TokenV2),
            FaultTarget::Listing => {
                matches!(
                    endpoint,
                    Endpoint::ListContent | Endpoint::ListNotifications
                )
            }
            FaultTarget::Blob => endpoint == Endpoint::GetBlob,
            FaultTarget::Subscriptions => matches!(
                endpoint,
                Endpoint::StartSubscription
                    | Endpoint::StopSubscription
                    | Endpoint::ListSubscriptions
            ),
            FaultTarget::Token => matches!(endpoint, Endpoint::TokenV1 | Endpoint::TokenV2),
        }
    }
}

/// One injected misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// AF429 with the configured throttle status (token endpoint: AADSTS90055, 429).
    Throttle,
    /// 500 AF50000 (token endpoint: 500 AADSTS90033-style temporary error).
    Internal500,
    /// 503 plain text.
    Unavailable503,
    /// 408 plain text.
    Timeout408,
    /// 502 with an HTML page.
    HtmlError,
    /// Wait this many milliseconds, then answer normally.
    Stall(u64),
    /// Abort the connection after part of the body.
    Reset,
    /// Blob only: serve the first half of the body.
    TruncatedBody,
    /// Blob only: overwrite bytes of the body.
    GarbledBody,
}

impl FaultKind {
    /// Short name used in logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::Internal500 => "internal_500",
            FaultKind::Unavailable503 => "unavailable_503",
            FaultKind::Timeout408 => "timeout_408",
            FaultKind::HtmlError => "html_error",
            FaultKind::Stall(_) => "stall",
            FaultKind::Reset => "reset",
            FaultKind::TruncatedBody => "truncated_body",
            FaultKind::GarbledBody => "garbled_body",
        }
    }
}

#[derive(Debug)]
struct Scripted {
    target: FaultTarget,
    kind: FaultKind,
    remaining: u32,
}

/// A continuously refilled token bucket.
#[derive(Debug)]
struct Bucket {
    per_minute: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Bucket {
        Bucket {
            per_minute,
            tokens: f64::from(per_minute),
            last: Instant::now(),
        }
    }

    fn take(&mut self, per_minute: u32) -> bool {
        if per_minute == 0 {
            return true;
        }
        if per_minute != self.per_minute {
            *self = Bucket::new(per_minute);
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let cap = f64::from(per_minute);
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub(crate) struct FaultState {
    pub(crate) spec: FaultSpec,
    pub(crate) throttle: ThrottleSpec,
    scripted: VecDeque<Scripted>,
    expire_after_listing: u32,
    rng: StdRng,
    tenant_buckets: HashMap<String, Bucket>,
    anonymous_bucket: Bucket,
}

/// What the request pipeline should do, decided before the handler runs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Decision {
    pub(crate) stall_ms: Option<u64>,
    pub(crate) fault: Option<FaultKind>,
}

impl FaultState {
    pub(crate) fn new(spec: FaultSpec, throttle: ThrottleSpec, seed: u64) -> FaultState {
        let anonymous = throttle.anonymous_per_minute;
        FaultState {
            spec,
            throttle,
            scripted: VecDeque::new(),
            expire_after_listing: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_fa17),
            tenant_buckets: HashMap::new(),
            anonymous_bucket: Bucket::new(anonymous),
        }
    }

    fn take_scripted(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let pos = self
            .scripted
            .iter()
            .position(|s| s.target.matches(endpoint))?;
        let entry = self.scripted.get_mut(pos)?;
        let kind = entry.kind;
        entry.remaining = entry.remaining.saturating_sub(1);
        if entry.remaining == 0 {
            self.scripted.remove(pos);
        }
        Some(kind)
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// Decide faults for one request (scripted first, then random).
    pub(crate) fn decide(&mut self, endpoint: Endpoint) -> Decision {
        let mut d = Decision::default();
        if let Some(kind) = self.take_scripted(endpoint) {
            match kind {
                FaultKind::Stall(ms) => d.stall_ms = Some(ms),
                other => d.fault = Some(other),
            }
            return d;
        }
        if matches!(endpoint, Endpoint::TokenV1 | Endpoint::TokenV2) {
            return d;
        }
        let spec = self.spec.clone();
        if self.roll(spec.stall_fraction) {
            d.stall_ms = Some(spec.stall_ms);
        }
        let blob = endpoint == Endpoint::GetBlob;
        d.fault = if self.roll(spec.throttle_fraction) {
            Some(FaultKind::Throttle)
        } else if self.roll(spec.error_500_fraction) {
            Some(FaultKind::Internal500)
        } else if self.roll(spec.error_503_fraction) {
            Some(FaultKind::Unavailable503)
        } else if self.roll(spec.html_error_fraction) {
            Some(FaultKind::HtmlError)
        } else if self.roll(spec.reset_fraction) {
            Some(FaultKind::Reset)
        } else if blob && self.roll(spec.truncated_blob_fraction) {
            Some(FaultKind::TruncatedBody)
        } else if blob && self.roll(spec.garbled_blob_fraction) {
            Some(FaultKind::GarbledBody)
        } else {
            None
        };
        d
    }

    /// Take one token from the tenant bucket and, without a publisher id, the anonymous one.
    pub(crate) fn admit(&mut self, tenant: &str, has_publisher: bool) -> bool {
        let per_tenant = self.throttle.tenant_per_minute;
        let anonymous = self.throttle.anonymous_per_minute;
        let bucket = self
            .tenant_buckets
            .entry(tenant.to_ascii_lowercase())
            .or_insert_with(|| Bucket::new(per_tenant));
        if !bucket.take(per_tenant) {
            return false;
        }
        has_publisher || self.anonymous_bucket.take(anonymous)
    }

    /// Should this just-listed blob expire now (expiry race)?
    pub(crate) fn expire_listed_blob(&mut self) -> bool {
        if self.expire_after_listing > 0 {
            self.expire_after_listing -= 1;
            return true;
        }
        let p = self.spec.expiry_race_fraction;
        self.roll(p)
    }
}

/// Runtime control over faults, throttling and the server clock. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    pub(crate) state: Arc<Mutex<FaultState>>,
    pub(crate) skew_secs: Arc<AtomicI64>,
    /// Access tokens issued (`iat`, server clock, Unix seconds) before this are refused
    /// with 401, as if they had expired; `i64::MIN` = none refused.
    pub(crate) tokens_valid_from: Arc<AtomicI64>,
}

impl FaultHandle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current random-fault rates.
    pub fn spec(&self) -> FaultSpec {
        self.lock().spec.clone()
    }

    /// Replace all random-fault rates.
    pub fn set(&self, spec: FaultSpec) {
        self.lock().spec = spec;
    }

    /// Change some random-fault rates in place.
    pub fn update(&self, change: impl FnOnce(&mut FaultSpec)) {
        change(&mut self.lock().spec);
    }

    /// Turn every random fault off and drop scripted faults.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.spec = FaultSpec::default();
        s.scripted.clear();
        s.expire_after_listing = 0;
    }

    /// Replace the quotas (buckets restart full when a rate changes).
    pub fn set_throttle(&self, throttle: ThrottleSpec) {
        self.lock().throttle = throttle;
    }

    /// Current quotas.
    pub fn throttle(&self) -> ThrottleSpec {
        self.lock().throttle.clone()
    }

    /// Make the next `count` requests matching `target` fail with `kind` (deterministic).
    pub fn inject(&self, target: FaultTarget, kind: FaultKind, count: u32) {
        if count > 0 {
            self.lock().scripted.push_back(Scripted {
                target,
                kind,
                remaining: count,
            });
        }
    }

    /// Make the next `count` listed blobs expire right after the listing that shows them.
    pub fn expire_next_listed(&self, count: u32) {
        self.lock().expire_after_listing += count;
    }

    /// Set the server clock offset (seconds ahead of real time; negative = behind).
    pub fn set_clock_skew_secs(&self, secs: i64) {
        self.skew_secs.store(secs, Ordering::Relaxed);
    }

    /// Current server clock offset.
    pub fn clock_skew_secs(&self) -> i64 {
        self.skew_secs.load(Ordering::Relaxed)
    }

    /// Make every access token issued before `at_unix_secs` (server clock) expire now: the
    /// Activity API answers 401 to them, so clients must fetch a new one. Tokens issued in
    /// that same second or later stay valid, so a refresh right after always works.
    pub fn expire_tokens_issued_before(&self, at_unix_secs: i64) {
        self.tokens_valid_from
            .fetch_max(at_unix_secs, Ordering::Relaxed);
    }

    /// Whether a token issued at `iat` (Unix seconds) has been expired early.
    pub(crate) fn token_expired_early(&self, iat: i64) -> bool {
        iat < self.tokens_valid_from.load(Ordering::Relaxed)
    }
}
