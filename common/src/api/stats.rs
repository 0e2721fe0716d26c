//! Counters of the API client (requests by endpoint and outcome, throttles, retries) and an
//! optional observer hook, so the stages can attach Prometheus metrics without this module
//! knowing about them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::Endpoint;

/// Receives API client happenings as they occur. All methods default to doing nothing.
pub trait ApiObserver: Send + Sync {
    /// A request finished: `outcome` is the HTTP status (`"200"`), the AF code label
    /// (`"AF429"`) when the error body had one, or a transport label (`"timeout"`,
    /// `"connect"`, `"body_truncated"`, `"transport"`).
    fn request_finished(&self, _endpoint: Endpoint, _outcome: &str) {}
    /// The client was throttled and will wait `wait` before the next request.
    fn throttled(&self, _endpoint: Endpoint, _wait: Duration) {}
    /// A failed request will be retried; `error_type` is [`ApiError::error_type`](super::ApiError::error_type).
    fn retrying(&self, _endpoint: Endpoint, _error_type: &'static str, _wait: Duration) {}
}

/// Plain counters kept by every [`ApiClient`](super::ApiClient).
#[derive(Debug, Default)]
pub struct ApiCounters {
    requests: Mutex<BTreeMap<(Endpoint, String), u64>>,
    throttles: AtomicU64,
    retries: AtomicU64,
    token_refreshes: AtomicU64,
}

impl ApiCounters {
    pub(crate) fn record(&self, endpoint: Endpoint, outcome: &str) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((endpoint, outcome.to_string())).or_insert(0) += 1;
    }

    pub(crate) fn throttled(&self) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn token_refreshed(&self) {
        self.token_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `endpoint` that ended with `outcome` (see [`ApiObserver::request_finished`]).
    pub fn requests(&self, endpoint: Endpoint, outcome: &str) -> u64 {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(endpoint, outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// All requests of `endpoint`, whatever the outcome.
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((e, _), _)| *e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every (endpoint, outcome, count) seen so far.
    pub fn snapshot(&self) -> Vec<(Endpoint, String, u64)> {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|((e, o), n)| (*e, o.clone(), *n)).collect()
    }

    /// Throttled responses (AF429 / 429) seen.
    pub fn throttles(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }

    /// Requests retried after a transient failure or throttling.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Tokens dropped after a 401 (each followed by one retry).
    pub fn token_refreshes(&self) -> u64 {
        self.token_refreshes.load(Ordering::Relaxed)
    }
}
