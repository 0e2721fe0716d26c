//! The Office 365 Management Activity API client (management-activity-api.md §4–§9).
//!
//! One [`ApiClient`] per tenant: it starts, stops and lists subscriptions, lists available
//! content across every page, and downloads blobs as streams. Every request carries
//! `PublisherIdentifier` and a bearer token, passes through the tenant's rate governor, and is
//! retried on transient failures with jittered exponential backoff that honours
//! `Retry-After` and AF429. A 401 drops the cached token and retries once. The server's `Date`
//! header feeds a clock-skew estimate so windows can be computed in server time.
//!
//! The token is only ever sent to URLs on the configured API base: next-page links and
//! content URIs elsewhere are refused ([`ApiError::ForeignUrl`]).

mod blob;
mod error;
#[doc(hidden)]
pub mod fuzz_hooks;
mod http;
mod stats;
mod types;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng as _;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, DATE, HeaderMap, RETRY_AFTER};
use secrecy::ExposeSecret as _;
use url::Url;

use crate::auth::TokenClient;

pub use blob::BlobBody;
pub use error::{Action, AfCode, ApiError, Endpoint, TransportKind};
pub use http::{CONNECT_TIMEOUT, HttpClientError, REQUEST_TIMEOUT, http_client};
pub use stats::{ApiCounters, ApiObserver};
pub use types::{ContentBlob, Subscription, Webhook, format_api_time, parse_utc};

/// The per-tenant rate governor type (shareable between clients of one tenant).
pub type TenantGovernor = DefaultDirectRateLimiter;

/// Default per-tenant request rate (Microsoft's baseline quota).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 2_000;
/// Default cap on one decompressed blob.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;
/// Largest listing or subscription answer read into memory.
const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read (the rest is dropped).
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Skew beyond which a warning is logged (Elastic's threshold).
const SKEW_WARN_MS: i64 = 5 * 60 * 1000;

/// Retry behaviour of one client.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request including the first (a 401 token refresh does not count).
    pub max_attempts: u32,
    /// First backoff step; doubled per retry (1 s, 2 s, 4 s …).
    pub base_delay: Duration,
    /// Backoff ceiling.
    pub max_delay: Duration,
    /// Longest `Retry-After` waited for inside a call; a longer one returns the error
    /// (with [`ApiError::retry_after`]) so the caller can reschedule.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// Everything the API client needs; the lead maps the configuration onto it.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// API base, e.g. `https://manage.office.com` (http allowed for local fakes).
    pub api_base: Url,
    /// Tenant GUID (the `{tenant_id}` of the URL).
    pub tenant_id: String,
    /// Publisher tenant GUID sent as `PublisherIdentifier` (default: the tenant id).
    pub publisher_identifier: String,
    /// Rate governor size for this tenant.
    pub requests_per_minute: u32,
    /// Cap on one decompressed blob.
    pub max_blob_bytes: u64,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Whole-request timeout of a blob GET (large blobs stream for longer than the client's
    /// default 120 s).
    pub blob_timeout: Duration,
    /// Most pages followed for one listing window before giving up.
    pub max_pages: u32,
    /// Most restarts of a window after AF20031 (bad `nextPage`).
    pub max_listing_restarts: u32,
}

impl ApiSettings {
    /// Settings with the documented defaults; `PublisherIdentifier` = the tenant id.
    pub fn new(api_base: Url, tenant_id: impl Into<String>) -> Self {
        let tenant_id = tenant_id.into();
        ApiSettings {
            api_base,
            publisher_identifier: tenant_id.clone(),
            tenant_id,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            retry: RetryPolicy::default(),
            blob_timeout: Duration::from_secs(30 * 60),
            max_pages: 10_000,
            max_listing_restarts: 3,
        }
    }
}

/// The Management Activity API client of one tenant. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ApiSettings,
    /// `{api_base}/api/v1.0/{tenant}/activity/feed/`.
    feed_root: Url,
    tokens: Arc<TokenClient>,
    http: reqwest::Client,
    governor: Arc<TenantGovernor>,
    /// Smoothed server-minus-local clock difference, milliseconds.
    skew_ms: AtomicI64,
    skew_known: AtomicBool,
    /// No request leaves before this instant (set when throttled).
    throttled_until: Mutex<Option<tokio::time::Instant>>,
    counters: ApiCounters,
    observer: Option<Arc<dyn ApiObserver>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("tenant", &self.inner.settings.tenant_id)
            .field("feed_root", &self.inner.feed_root.as_str())
            .finish_non_exhaustive()
    }
}

/// One request to make.
struct RequestSpec<'a> {
    endpoint: Endpoint,
    method: Method,
    url: Url,
    content_type: Option<&'a str>,
    json_body: bool,
    timeout: Option<Duration>,
}

/// Builds a governor allowing `requests_per_minute` (0 means the default).
pub fn tenant_governor(requests_per_minute: u32) -> Arc<TenantGovernor> {
    let rpm = NonZeroU32::new(requests_per_minute)
        .or(NonZeroU32::new(DEFAULT_REQUESTS_PER_MINUTE))
        .unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_minute(rpm)))
}

impl ApiClient {
    /// A client with its own rate governor.
    pub fn new(settings: ApiSettings, tokens: Arc<TokenClient>, http: reqwest::Client) -> Self {
        let governor = tenant_governor(settings.requests_per_minute);
        Self::with_governor(settings, tokens, http, governor, None)
    }

    /// A client sharing `governor` with other clients of the same tenant, optionally
    /// reporting to `observer`.
    pub fn with_governor(
        settings: ApiSettings,
        tokens: Arc<TokenClient>,
        http: reqwest::Client,
        governor: Arc<TenantGovernor>,
        observer: Option<Arc<dyn ApiObserver>>,
    ) -> Self {
        let mut feed_root = settings.api_base.clone();
        let prefix = settings.api_base.path().trim_end_matches('/').to_string();
        feed_root.set_path(&format!(
            "{prefix}/api/v1.0/{}/activity/feed/",
            settings.tenant_id
        ));
        feed_root.set_query(None);
        feed_root.set_fragment(None);
        ApiClient {
            inner: Arc::new(Inner {
                settings,
                feed_root,
                tokens,
                http,
                governor,
                skew_ms: AtomicI64::new(0),
                skew_known: AtomicBool::new(false),
                throttled_until: Mutex::new(None),
                counters: ApiCounters::default(),
                observer,
            }),
        }
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// The tenant id.
    pub fn tenant_id(&self) -> &str {
        &self.inner.settings.tenant_id
    }

    /// The token client.
    pub fn tokens(&self) -> &Arc<TokenClient> {
        &self.inner.tokens
    }

    /// The rate governor (to share with another client of the same tenant).
    pub fn governor(&self) -> Arc<TenantGovernor> {
        self.inner.governor.clone()
    }

    /// Request, throttle and retry counters.
    pub fn counters(&self) -> &ApiCounters {
        &self.inner.counters
    }

    /// `GET subscriptions/list`.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        let url = self.feed_url("subscriptions/list", &[]);
        self.json(RequestSpec {
            endpoint: Endpoint::ListSubscriptions,
            method: Method::GET,
            url,
            content_type: None,
            json_body: false,
            timeout: None,
        })
        .await
        .map(|(v, _)| v)
    }

    /// `POST subscriptions/start` for `content_type` (no webhook). AF20024 ("already
    /// enabled") counts as success and yields an enabled subscription without webhook details.
    pub async fn start_subscription(&self, content_type: &str) -> Result<Subscription, ApiError> {
        let url = self.feed_url("subscriptions/start", &[("contentType", content_type)]);
        let result = self
            .json::<Subscription>(RequestSpec {
                endpoint: Endpoint::StartSubscription,
                method: Method::POST,
                url,
                content_type: Some(content_type),
                json_body: true,
                timeout: None,
            })
            .await;
        match result {
            Ok((sub, _)) => Ok(sub),
            Err(e) if e.action() == Action::TreatAsSuccess => {
                tracing::debug!(tenant = %self.tenant_id(), content_type,
                    "Subscription already enabled.");
                Ok(Subscription {
                    content_type: content_type.to_string(),
                    status: "enabled".into(),
                    webhook: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `POST subscriptions/stop` for `content_type`.
    pub async fn stop_subscription(&self, content_type: &str) -> Result<(), ApiError> {
        let url = self.feed_url("subscriptions/stop", &[("contentType", content_type)]);
        self.execute(
            RequestSpec {
                endpoint: Endpoint::StopSubscription,
                method: Method::POST,
                url,
                content_type: Some(content_type),
                json_body: false,
                timeout: None,
            },
            IgnoreBody,
        )
        .await
    }

    /// Every blob listed for `content_type` with `start <= contentCreated < end`, following
    /// all pages (`NextPageUri`, or `NextPageUrl`). Duplicate content ids across pages are
    /// dropped. AF20031 restarts the window from page 1 (bounded).
    pub async fn list_content(
        &self,
        content_type: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<ContentBlob>, ApiError> {
        let first = self.feed_url(
            "subscriptions/content",
            &[
                ("contentType", content_type),
                ("startTime", &format_api_time(start)),
                ("endTime", &format_api_time(end)),
            ],
        );
        let settings = &self.inner.settings;
        let mut restarts = 0;
        'window: loop {
            let mut url = first.clone();
            let mut blobs = Vec::new();
            let mut seen = HashSet::new();
            for _page in 0..settings.max_pages {
                let spec = RequestSpec {
                    endpoint: Endpoint::ListContent,
                    method: Method::GET,
                    url: url.clone(),
                    content_type: Some(content_type),
                    json_body: false,
                    timeout: None,
                };
                let (page, headers) = match self.json::<Vec<ContentBlob>>(spec).await {
                    Ok(ok) => ok,
                    Err(e)
                        if e.action() == Action::RestartListing
                            && restarts < settings.max_listing_restarts =>
                    {
                        restarts += 1;
                        tracing::warn!(tenant = %self.tenant_id(), content_type, error = %e,
                            "Next-page link rejected; listing the window again from page 1.");
                        continue 'window;
                    }
                    Err(e) => return Err(e),
                };
                for blob in page {
                    if seen.insert(blob.content_id.clone()) {
                        blobs.push(blob);
                    }
                }
                match next_page_link(&headers) {
                    None => return Ok(blobs),
                    Some(raw) => url = self.next_page_url(&url, &raw, content_type)?,
                }
            }
            return Err(ApiError::Pagination {
                tenant: self.tenant_id().to_string(),
                content_type: Some(content_type.to_string()),
                url: url.to_string(),
                message: format!("more than {} pages", settings.max_pages),
            });
        }
    }

    /// Starts downloading the blob at `content_uri` (which must be on this tenant's feed,
    /// see [`is_own_content_uri`](Self::is_own_content_uri)); `PublisherIdentifier` is added
    /// when absent. The body is read with [`BlobBody::chunk`] or [`BlobBody::bytes`].
    pub async fn fetch_blob(&self, content_uri: &str) -> Result<BlobBody, ApiError> {
        let refuse = || ApiError::ForeignUrl {
            tenant: self.tenant_id().to_string(),
            content_type: None,
            url: content_uri.to_string(),
        };
        if !self.is_own_content_uri(content_uri) {
            return Err(refuse());
        }
        let mut url = Url::parse(content_uri).map_err(|_| refuse())?;
        self.add_publisher(&mut url);
        let limit = self.inner.settings.max_blob_bytes;
        self.execute(
            RequestSpec {
                endpoint: Endpoint::FetchBlob,
                method: Method::GET,
                url,
                content_type: None,
                json_body: false,
                timeout: Some(self.inner.settings.blob_timeout),
            },
            StreamBlob { limit },
        )
        .await
    }

    /// Smoothed server clock minus local clock, from the `Date` header of responses (zero
    /// until a response has been seen).
    pub fn skew(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.inner.skew_ms.load(Ordering::Relaxed))
    }

    /// Local now corrected by [`skew`](Self::skew): compute listing windows with this.
    pub fn server_now(&self) -> DateTime<Utc> {
        Utc::now() + self.skew()
    }

    /// True when `uri` is on this tenant's feed: same scheme, host and port as the API base,
    /// no user info, and a path under `/api/v1.0/{tenant}/activity/feed/`.
    pub fn is_own_content_uri(&self, uri: &str) -> bool {
        let Ok(url) = Url::parse(uri) else {
            return false;
        };
        same_origin(&url, &self.inner.settings.api_base)
            && url
                .path()
                .to_ascii_lowercase()
                .starts_with(&self.inner.feed_root.path().to_ascii_lowercase())
    }

    // ----- internals -------------------------------------------------------------------

    fn feed_url(&self, op: &str, params: &[(&str, &str)]) -> Url {
        let mut url = self.inner.feed_root.clone();
        let path = format!("{}{op}", self.inner.feed_root.path());
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        self.add_publisher(&mut url);
        url
    }

    /// Appends `PublisherIdentifier` unless the URL already has it (any casing).
    fn add_publisher(&self, url: &mut Url) {
        let publisher = &self.inner.settings.publisher_identifier;
        if publisher.is_empty() {
            return;
        }
        let present = url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("PublisherIdentifier"));
        if !present {
            url.query_pairs_mut()
                .append_pair("PublisherIdentifier", publisher);
        }
    }

    /// Resolves a next-page link and checks it stays on the API base.
    // The error is large but this runs once per page, next to a network round trip.
    #[allow(clippy::result_large_err)]
    fn next_page_url(&self, current: &Url, raw: &str, content_type: &str) -> Result<Url, ApiError> {
        let refuse = || ApiError::ForeignUrl {
            tenant: self.tenant_id().to_string(),
            content_type: Some(content_type.to_string()),
            url: raw.to_string(),
        };
        let mut url = Url::parse(raw)
            .or_else(|_| current.join(raw))
            .map_err(|_| refuse())?;
        let base = &self.inner.settings.api_base;
        let api_prefix = format!("{}/api/", base.path().trim_end_matches('/'));
        if !same_origin(&url, base) || !url.path().starts_with(&api_prefix) {
            tracing::error!(tenant = %self.tenant_id(), content_type, url = raw,
                "Next-page link points off the API base; refusing to follow it.");
            return Err(refuse());
        }
        self.add_publisher(&mut url);
        Ok(url)
    }

    /// Runs a request whose 2xx body is JSON; returns the value and the headers.
    async fn json<T: serde::de::DeserializeOwned + Send>(
        &self,
        spec: RequestSpec<'_>,
    ) -> Result<(T, HeaderMap), ApiError> {
        self.execute(spec, JsonBody(std::marker::PhantomData)).await
    }

    /// The request loop: governor, throttle gate, token, send, classify, retry.
    /// `finish` turns a 2xx response into the result; its transient errors are retried too.
    async fn execute<F: Finish>(
        &self,
        spec: RequestSpec<'_>,
        finish: F,
    ) -> Result<F::Output, ApiError> {
        let inner = &self.inner;
        let policy = &inner.settings.retry;
        let tenant = &inner.settings.tenant_id;
        let content_type = spec.content_type.map(str::to_string);
        let url_text = spec.url.to_string();
        let mut failures: u32 = 0;
        let mut refreshed = false;
        loop {
            self.wait_for_gate().await;
            inner.governor.until_ready().await;
            let err = match inner.tokens.token().await {
                Err(source) => ApiError::Token {
                    tenant: tenant.clone(),
                    content_type: content_type.clone(),
                    source,
                },
                Ok(token) => {
                    let mut request = inner
                        .http
                        .request(spec.method.clone(), spec.url.clone())
                        .bearer_auth(token.secret().expose_secret())
                        .header(ACCEPT, "application/json");
                    if spec.json_body {
                        request = request.header(CONTENT_TYPE, "application/json").body("{}");
                    }
                    if let Some(timeout) = spec.timeout {
                        request = request.timeout(timeout);
                    }
                    match request.send().await {
                        Err(e) => {
                            let kind = TransportKind::of(&e);
                            let err = ApiError::Transport {
                                tenant: tenant.clone(),
                                content_type: content_type.clone(),
                                endpoint: spec.endpoint,
                                url: url_text.clone(),
                                kind,
                                source: e.without_url(),
                            };
                            self.record(spec.endpoint, err.error_type());
                            err
                        }
                        Ok(resp) => {
                            self.observe_date(resp.headers());
                            let status = resp.status();
                            if status.is_success() {
                                self.record(spec.endpoint, status.as_str());
                                let ctx = FinishCtx {
                                    tenant,
                                    content_type: &content_type,
                                    endpoint: spec.endpoint,
                                    url: &url_text,
                                };
                                match finish.finish(resp, ctx).await {
                                    Ok(value) => return Ok(value),
                                    Err(e) => e,
                                }
                            } else {
                                let err = self
                                    .error_from_response(resp, &spec, &content_type, &url_text)
                                    .await;
                                let outcome = err.af_code().map_or_else(
                                    || status.as_str().to_string(),
                                    |c| c.label().to_string(),
                                );
                                self.record(spec.endpoint, &outcome);
                                if status.as_u16() == 401 && !refreshed {
                                    refreshed = true;
                                    inner.counters.token_refreshed();
                                    inner.tokens.invalidate_token(&token);
                                    tracing::info!(tenant = %tenant, endpoint = %spec.endpoint,
                                        "Request unauthorized; fetching a new token and retrying once.");
                                    continue;
                                }
                                err
                            }
                        }
                    }
                }
            };

            let action = err.action();
            let retryable = matches!(action, Action::Retry | Action::Backoff);
            if !retryable || failures + 1 >= policy.max_attempts.max(1) {
                return Err(err);
            }
            let Some(wait) = self.backoff(failures, err.retry_after()) else {
                return Err(err);
            };
            failures += 1;
            inner.counters.retried();
            if action == Action::Backoff {
                inner.counters.throttled();
                self.close_gate(wait);
                if let Some(o) = &inner.observer {
                    o.throttled(spec.endpoint, wait);
                }
            }
            if let Some(o) = &inner.observer {
                o.retrying(spec.endpoint, err.error_type(), wait);
            }
            tracing::warn!(tenant = %tenant, endpoint = %spec.endpoint,
                error_type = err.error_type(), error = %err, attempt = failures,
                wait_ms = wait.as_millis() as u64, "Management API request failed; retrying.");
            tokio::time::sleep(wait).await;
        }
    }

    async fn error_from_response(
        &self,
        resp: reqwest::Response,
        spec: &RequestSpec<'_>,
        content_type: &Option<String>,
        url: &str,
    ) -> ApiError {
        let status = resp.status().as_u16();
        let retry_after = parse_retry_after(resp.headers(), self.server_now());
        let body = read_limited(resp, MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let (af_code, message) = parse_error_body(&body);
        ApiError::Http {
            tenant: self.tenant_id().to_string(),
            content_type: content_type.clone(),
            endpoint: spec.endpoint,
            url: url.to_string(),
            status,
            af_code,
            message,
            retry_after,
        }
    }

    fn record(&self, endpoint: Endpoint, outcome: &str) {
        self.inner.counters.record(endpoint, outcome);
        if let Some(o) = &self.inner.observer {
            o.request_finished(endpoint, outcome);
        }
    }

    /// Delay before retry number `failures + 1`: `Retry-After` when given (None when it is
    /// longer than the policy allows), else jittered exponential backoff.
    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let policy = &self.inner.settings.retry;
        let mut rng = rand::rng();
        if let Some(ra) = retry_after {
            if ra > policy.max_retry_after {
                return None;
            }
            // Spread clients a little past the server's instant.
            let extra_ms = rng.random_range(0..=(ra.as_millis() as u64 / 10).min(1_000));
            return Some(ra + Duration::from_millis(extra_ms));
        }
        let exp = policy
            .base_delay
            .saturating_mul(2u32.saturating_pow(failures.min(30)))
            .min(policy.max_delay);
        // Equal jitter: half fixed, half random.
        let half = exp / 2;
        let jitter_ms = rng.random_range(0..=half.as_millis() as u64);
        Some(half + Duration::from_millis(jitter_ms))
    }

    fn close_gate(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut gate = self
            .inner
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
    }

    async fn wait_for_gate(&self) {
        let until = *self
            .inner
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until
            && until > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Folds the response's `Date` into the skew estimate.
    fn observe_date(&self, headers: &HeaderMap) {
        let Some(server) = headers
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v.trim()).ok())
        else {
            return;
        };
        // `Date` has one-second resolution: its instant is on average half a second behind.
        let sample = (server.with_timezone(&Utc) - Utc::now()).num_milliseconds() + 500;
        let inner = &self.inner;
        let previous = inner.skew_ms.load(Ordering::Relaxed);
        let next = if inner.skew_known.swap(true, Ordering::Relaxed) {
            previous + (sample - previous) / 4
        } else {
            sample
        };
        inner.skew_ms.store(next, Ordering::Relaxed);
        if next.abs() > SKEW_WARN_MS && previous.abs() <= SKEW_WARN_MS {
            tracing::warn!(tenant = %self.tenant_id(), skew_ms = next,
                "Local clock differs from the Management API's by more than 5 minutes; using server time for windows.");
        }
    }
}

/// What a finisher needs to label its errors.
struct FinishCtx<'a> {
    tenant: &'a str,
    content_type: &'a Option<String>,
    endpoint: Endpoint,
    url: &'a str,
}

impl FinishCtx<'_> {
    fn body_error(&self, e: reqwest::Error) -> ApiError {
        ApiError::Transport {
            tenant: self.tenant.to_string(),
            content_type: self.content_type.clone(),
            endpoint: self.endpoint,
            url: self.url.to_string(),
            kind: match TransportKind::of(&e) {
                TransportKind::Other => TransportKind::Body,
                k => k,
            },
            source: e.without_url(),
        }
    }
}

/// Turns a 2xx response into a call's result inside the retry loop (a transient failure
/// here, such as a cut-off body, is retried like a failed request). A trait rather than a
/// closure so the returned futures are provably `Send`.
trait Finish: Send + Sync {
    type Output: Send;
    fn finish(
        &self,
        response: reqwest::Response,
        ctx: FinishCtx<'_>,
    ) -> impl Future<Output = Result<Self::Output, ApiError>> + Send;
}

/// Drops the body (stop).
struct IgnoreBody;

impl Finish for IgnoreBody {
    type Output = ();
    async fn finish(
        &self,
        _response: reqwest::Response,
        _ctx: FinishCtx<'_>,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Reads the body (capped) and parses it as JSON; returns the value and the headers.
struct JsonBody<T>(std::marker::PhantomData<fn() -> T>);

impl<T: serde::de::DeserializeOwned + Send> Finish for JsonBody<T> {
    type Output = (T, HeaderMap);
    async fn finish(
        &self,
        response: reqwest::Response,
        ctx: FinishCtx<'_>,
    ) -> Result<(T, HeaderMap), ApiError> {
        let headers = response.headers().clone();
        let body = read_limited(response, MAX_JSON_BYTES)
            .await
            .map_err(|e| ctx.body_error(e))?;
        let value = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            tenant: ctx.tenant.to_string(),
            content_type: ctx.content_type.clone(),
            endpoint: ctx.endpoint,
            url: ctx.url.to_string(),
            message: e.to_string(),
        })?;
        Ok((value, headers))
    }
}

/// Hands the body over as a stream (blob GET).
struct StreamBlob {
    limit: u64,
}

impl Finish for StreamBlob {
    type Output = BlobBody;
    async fn finish(
        &self,
        response: reqwest::Response,
        ctx: FinishCtx<'_>,
    ) -> Result<BlobBody, ApiError> {
        BlobBody::new(
            response,
            ctx.tenant.to_string(),
            ctx.url.to_string(),
            self.limit,
        )
    }
}

/// Scheme, host and port equal, and no user info in `url`.
fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == base.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
}

/// `NextPageUri`, or `NextPageUrl`, looked up case-insensitively; empty values ignored.
fn next_page_link(headers: &HeaderMap) -> Option<String> {
    ["nextpageuri", "nextpageurl"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    })
}

/// `Retry-After` in seconds or as an HTTP date (measured against server time).
fn parse_retry_after(headers: &HeaderMap, server_now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((when - server_now).to_std().unwrap_or(Duration::ZERO))
}

/// Reads the AF code and message from an error body: `{"error":{"code","message"}}`, the
/// 401 shape `{"Message":…}`, or an excerpt of anything else (HTML, empty).
fn parse_error_body(body: &[u8]) -> (Option<AfCode>, String) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &v["error"];
        let code = error["code"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(AfCode::parse);
        let message = error["message"]
            .as_str()
            .or_else(|| v["Message"].as_str())
            .or_else(|| v["message"].as_str())
            .or_else(|| error.as_str())
            .map(str::to_string);
        if code.is_some() || message.is_some() {
            return (code, message.unwrap_or_default());
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        (None, "empty body".into())
    } else {
        (None, format!("unparsable body: {text}"))
    }
}

/// Reads a body up to `max` bytes (the rest is dropped).
async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the three error body shapes yield the right code and message.
    #[test]
    fn error_bodies_are_read() {
        let (c, m) =
            parse_error_body(br#"{"error":{"code":"AF20022","message":"No subscription found"}}"#);
        assert_eq!(c, Some(AfCode::Af20022));
        assert_eq!(m, "No subscription found");
        let (c, m) =
            parse_error_body(br#"{"Message":"Authorization has been denied for this request."}"#);
        assert_eq!(c, None);
        assert!(m.starts_with("Authorization has been denied"));
        let (c, m) = parse_error_body(b"<html><body>Bad gateway</body></html>");
        assert_eq!(c, None);
        assert!(m.contains("Bad gateway"));
    }

    // Proves Retry-After is read as seconds and as an HTTP date.
    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            parse_retry_after(&h, Utc::now()),
            Some(Duration::from_secs(7))
        );
        let now = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        h.insert(
            RETRY_AFTER,
            "Fri, 27 Nov 2026 10:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
    }
}
