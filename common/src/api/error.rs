//! Errors of the Management Activity API client: AF codes (management-activity-api.md §7.2),
//! the action a collector should take for each, and the [`ApiError`] type every call returns.
//!
//! Each error carries the tenant, the content type (when the call had one), the URL (which
//! holds no secret: the token travels in a header), the HTTP status and the AF code, and maps
//! to a fixed [`ApiError::error_type`] label for metrics.

use std::fmt;
use std::time::Duration;

use crate::auth::AuthError;

/// Which API operation a request belonged to (also a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `GET subscriptions/list`.
    ListSubscriptions,
    /// `POST subscriptions/start`.
    StartSubscription,
    /// `POST subscriptions/stop`.
    StopSubscription,
    /// `GET subscriptions/content` (every page).
    ListContent,
    /// `GET {contentUri}`.
    FetchBlob,
}

impl Endpoint {
    /// A fixed label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ListSubscriptions => "subscriptions_list",
            Endpoint::StartSubscription => "subscriptions_start",
            Endpoint::StopSubscription => "subscriptions_stop",
            Endpoint::ListContent => "content",
            Endpoint::FetchBlob => "blob",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller should do about an error (management-activity-api.md §7.2–§7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transient: retry with exponential backoff.
    Retry,
    /// Throttled (AF429 / 429): back off, honouring `Retry-After`, then retry.
    Backoff,
    /// No or disabled subscription (AF20022 / AF20023): call `start` (respecting the
    /// 15-minute rule), then retry.
    RestartSubscription,
    /// Time window rejected (AF20030 / AF20055): clamp the window to the rules (check clock
    /// skew) and retry.
    ClampWindow,
    /// Bad `nextPage` (AF20031): list the window again from page 1.
    RestartListing,
    /// The blob does not exist (AF20050, or 404 on a blob): skip it and log.
    Skip,
    /// The blob expired (AF20051): skip it and count it as data loss.
    SkipExpired,
    /// Not an error (AF20024: subscription already enabled).
    TreatAsSuccess,
    /// The request itself is malformed (AF20001, AF20002, AF20013, AF20052, unknown AF2xxxx…):
    /// a bug on our side; do not retry, fail loudly.
    Bug,
    /// Tenant, consent, permission or configuration problem: stop this tenant or stream and
    /// alert; retrying soon will not help.
    Fatal,
}

/// An AF error code from the API's error body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AfCode {
    /// Token lacks `ActivityFeed.Read`.
    Af10001,
    /// Missing parameter.
    Af20001,
    /// Invalid parameter type.
    Af20002,
    /// Webhook expiration in the past.
    Af20003,
    /// Tenant in URL differs from tenant in token.
    Af20010,
    /// Tenant does not exist (or auditing is off).
    Af20011,
    /// Tenant incorrectly configured.
    Af20012,
    /// Tenant id in URL is not a GUID.
    Af20013,
    /// Invalid content type.
    Af20020,
    /// Webhook validation failed.
    Af20021,
    /// No subscription for this content type.
    Af20022,
    /// Subscription disabled.
    Af20023,
    /// Subscription already enabled, nothing to change.
    Af20024,
    /// Invalid time window.
    Af20030,
    /// Invalid `nextPage` value.
    Af20031,
    /// Content does not exist.
    Af20050,
    /// Content expired.
    Af20051,
    /// Content id invalid.
    Af20052,
    /// More than one language in `Accept-Language`.
    Af20053,
    /// Invalid `Accept-Language`.
    Af20054,
    /// Invalid time window (start not before end).
    Af20055,
    /// Too many requests.
    Af429,
    /// Internal error, retry.
    Af50000,
    /// Internal error, retry.
    Af50005,
    /// Internal error, retry.
    Af50006,
    /// Any other code, as sent.
    Other(String),
}

impl AfCode {
    /// Parses a code such as `AF20022` (case-insensitive, surrounding space ignored).
    pub fn parse(code: &str) -> AfCode {
        let upper = code.trim().to_ascii_uppercase();
        match upper.as_str() {
            "AF10001" => AfCode::Af10001,
            "AF20001" => AfCode::Af20001,
            "AF20002" => AfCode::Af20002,
            "AF20003" => AfCode::Af20003,
            "AF20010" => AfCode::Af20010,
            "AF20011" => AfCode::Af20011,
            "AF20012" => AfCode::Af20012,
            "AF20013" => AfCode::Af20013,
            "AF20020" => AfCode::Af20020,
            "AF20021" => AfCode::Af20021,
            "AF20022" => AfCode::Af20022,
            "AF20023" => AfCode::Af20023,
            "AF20024" => AfCode::Af20024,
            "AF20030" => AfCode::Af20030,
            "AF20031" => AfCode::Af20031,
            "AF20050" => AfCode::Af20050,
            "AF20051" => AfCode::Af20051,
            "AF20052" => AfCode::Af20052,
            "AF20053" => AfCode::Af20053,
            "AF20054" => AfCode::Af20054,
            "AF20055" => AfCode::Af20055,
            "AF429" => AfCode::Af429,
            "AF50000" => AfCode::Af50000,
            "AF50005" => AfCode::Af50005,
            "AF50006" => AfCode::Af50006,
            _ => AfCode::Other(upper),
        }
    }

    /// The code as Microsoft writes it (`AF20022`).
    pub fn as_str(&self) -> &str {
        match self {
            AfCode::Af10001 => "AF10001",
            AfCode::Af20001 => "AF20001",
            AfCode::Af20002 => "AF20002",
            AfCode::Af20003 => "AF20003",
            AfCode::Af20010 => "AF20010",
            AfCode::Af20011 => "AF20011",
            AfCode::Af20012 => "AF20012",
            AfCode::Af20013 => "AF20013",
            AfCode::Af20020 => "AF20020",
            AfCode::Af20021 => "AF20021",
            AfCode::Af20022 => "AF20022",
            AfCode::Af20023 => "AF20023",
            AfCode::Af20024 => "AF20024",
            AfCode::Af20030 => "AF20030",
            AfCode::Af20031 => "AF20031",
            AfCode::Af20050 => "AF20050",
            AfCode::Af20051 => "AF20051",
            AfCode::Af20052 => "AF20052",
            AfCode::Af20053 => "AF20053",
            AfCode::Af20054 => "AF20054",
            AfCode::Af20055 => "AF20055",
            AfCode::Af429 => "AF429",
            AfCode::Af50000 => "AF50000",
            AfCode::Af50005 => "AF50005",
            AfCode::Af50006 => "AF50006",
            AfCode::Other(s) => s,
        }
    }

    /// A fixed metrics label: the code itself when known, `AF2xxxx`/`AF5xxxx`/`AFother`
    /// for unknown ones (keeps label cardinality bounded).
    pub fn label(&self) -> &'static str {
        match self {
            AfCode::Af10001 => "AF10001",
            AfCode::Af20001 => "AF20001",
            AfCode::Af20002 => "AF20002",
            AfCode::Af20003 => "AF20003",
            AfCode::Af20010 => "AF20010",
            AfCode::Af20011 => "AF20011",
            AfCode::Af20012 => "AF20012",
            AfCode::Af20013 => "AF20013",
            AfCode::Af20020 => "AF20020",
            AfCode::Af20021 => "AF20021",
            AfCode::Af20022 => "AF20022",
            AfCode::Af20023 => "AF20023",
            AfCode::Af20024 => "AF20024",
            AfCode::Af20030 => "AF20030",
            AfCode::Af20031 => "AF20031",
            AfCode::Af20050 => "AF20050",
            AfCode::Af20051 => "AF20051",
            AfCode::Af20052 => "AF20052",
            AfCode::Af20053 => "AF20053",
            AfCode::Af20054 => "AF20054",
            AfCode::Af20055 => "AF20055",
            AfCode::Af429 => "AF429",
            AfCode::Af50000 => "AF50000",
            AfCode::Af50005 => "AF50005",
            AfCode::Af50006 => "AF50006",
            AfCode::Other(s) if s.starts_with("AF2") => "AF2xxxx",
            AfCode::Other(s) if s.starts_with("AF5") => "AF5xxxx",
            AfCode::Other(_) => "AFother",
        }
    }

    /// The documented collector action for this code.
    pub fn action(&self) -> Action {
        match self {
            AfCode::Af10001 => Action::Fatal,
            AfCode::Af20001 | AfCode::Af20002 | AfCode::Af20013 => Action::Bug,
            AfCode::Af20003 | AfCode::Af20021 => Action::Fatal,
            AfCode::Af20010 | AfCode::Af20011 | AfCode::Af20012 => Action::Fatal,
            AfCode::Af20020 => Action::Fatal,
            AfCode::Af20022 | AfCode::Af20023 => Action::RestartSubscription,
            AfCode::Af20024 => Action::TreatAsSuccess,
            AfCode::Af20030 | AfCode::Af20055 => Action::ClampWindow,
            AfCode::Af20031 => Action::RestartListing,
            AfCode::Af20050 => Action::Skip,
            AfCode::Af20051 => Action::SkipExpired,
            AfCode::Af20052 | AfCode::Af20053 | AfCode::Af20054 => Action::Bug,
            AfCode::Af429 => Action::Backoff,
            AfCode::Af50000 | AfCode::Af50005 | AfCode::Af50006 => Action::Retry,
            AfCode::Other(s) if s.starts_with("AF5") => Action::Retry,
            AfCode::Other(s) if s.starts_with("AF2") => Action::Bug,
            AfCode::Other(_) => Action::Fatal,
        }
    }
}

impl fmt::Display for AfCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Could not connect (refused, DNS, TLS handshake).
    Connect,
    /// Connect or request timeout.
    Timeout,
    /// The body broke off (connection closed early, length mismatch, bad gzip).
    Body,
    /// Anything else the HTTP client reported.
    Other,
}

impl TransportKind {
    pub(crate) fn of(e: &reqwest::Error) -> TransportKind {
        if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else if e.is_body() || e.is_decode() {
            TransportKind::Body
        } else {
            TransportKind::Other
        }
    }
}

/// Formats ` (content type X)` when there is one.
struct Ctx<'a>(&'a Option<String>);

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ct) => write!(f, ", content type {ct}"),
            None => Ok(()),
        }
    }
}

/// A failed Management Activity API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status.
    #[error(
        "Management API {endpoint} failed for tenant {tenant}{ctx}: HTTP {status} {code}: {message} (url {url})",
        ctx = Ctx(.content_type),
        code = .af_code.as_ref().map_or("without AF code", |c| c.as_str())
    )]
    Http {
        /// Tenant id.
        tenant: String,
        /// Content type of the call, if any.
        content_type: Option<String>,
        /// Operation.
        endpoint: Endpoint,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// AF code from the body; `None` for 401 `{"Message":…}`, HTML or empty bodies.
        af_code: Option<AfCode>,
        /// The server's message, or an excerpt of an unparsable body.
        message: String,
        /// `Retry-After`, if sent.
        retry_after: Option<Duration>,
    },
    /// The request could not be completed (connect, timeout, body cut off).
    #[error("Management API {endpoint} for tenant {tenant}{ctx} failed in transport ({kind:?}): {source} (url {url})", ctx = Ctx(.content_type))]
    Transport {
        /// Tenant id.
        tenant: String,
        /// Content type of the call, if any.
        content_type: Option<String>,
        /// Operation.
        endpoint: Endpoint,
        /// Request URL.
        url: String,
        /// Which kind of failure.
        kind: TransportKind,
        /// The HTTP client's error (URL stripped; it is in `url`).
        #[source]
        source: reqwest::Error,
    },
    /// No token could be obtained.
    #[error("No access token for tenant {tenant}{ctx}: {source}", ctx = Ctx(.content_type))]
    Token {
        /// Tenant id.
        tenant: String,
        /// Content type of the call, if any.
        content_type: Option<String>,
        /// The token client's error.
        #[source]
        source: AuthError,
    },
    /// The blob is larger than `max_blob_bytes` (after decompression).
    #[error("Blob for tenant {tenant}{ctx} exceeds the limit of {limit} bytes (url {url})", ctx = Ctx(.content_type))]
    BlobTooLarge {
        /// Tenant id.
        tenant: String,
        /// Content type, if known.
        content_type: Option<String>,
        /// Blob URL.
        url: String,
        /// The cap that was hit.
        limit: u64,
    },
    /// A URL (content URI or next page) is not on the configured API base, so the bearer
    /// token is not sent there.
    #[error("Refusing URL not on the configured API base for tenant {tenant}{ctx}: {url}", ctx = Ctx(.content_type))]
    ForeignUrl {
        /// Tenant id.
        tenant: String,
        /// Content type, if known.
        content_type: Option<String>,
        /// The refused URL.
        url: String,
    },
    /// A 2xx answer whose body is not what the operation returns.
    #[error("Management API {endpoint} for tenant {tenant}{ctx} sent an unreadable answer: {message} (url {url})", ctx = Ctx(.content_type))]
    Decode {
        /// Tenant id.
        tenant: String,
        /// Content type, if any.
        content_type: Option<String>,
        /// Operation.
        endpoint: Endpoint,
        /// Request URL.
        url: String,
        /// Parser message.
        message: String,
    },
    /// Pagination went wrong beyond recovery (too many pages or AF20031 restarts).
    #[error("Listing for tenant {tenant}{ctx} gave up: {message} (url {url})", ctx = Ctx(.content_type))]
    Pagination {
        /// Tenant id.
        tenant: String,
        /// Content type.
        content_type: Option<String>,
        /// Last URL requested.
        url: String,
        /// Why.
        message: String,
    },
}

impl ApiError {
    /// The tenant the call was for.
    pub fn tenant(&self) -> &str {
        match self {
            ApiError::Http { tenant, .. }
            | ApiError::Transport { tenant, .. }
            | ApiError::Token { tenant, .. }
            | ApiError::BlobTooLarge { tenant, .. }
            | ApiError::ForeignUrl { tenant, .. }
            | ApiError::Decode { tenant, .. }
            | ApiError::Pagination { tenant, .. } => tenant,
        }
    }

    /// The content type of the call, if it had one.
    pub fn content_type(&self) -> Option<&str> {
        match self {
            ApiError::Http { content_type, .. }
            | ApiError::Transport { content_type, .. }
            | ApiError::Token { content_type, .. }
            | ApiError::BlobTooLarge { content_type, .. }
            | ApiError::ForeignUrl { content_type, .. }
            | ApiError::Decode { content_type, .. }
            | ApiError::Pagination { content_type, .. } => content_type.as_deref(),
        }
    }

    /// The URL involved, if any.
    pub fn url(&self) -> Option<&str> {
        match self {
            ApiError::Http { url, .. }
            | ApiError::Transport { url, .. }
            | ApiError::BlobTooLarge { url, .. }
            | ApiError::ForeignUrl { url, .. }
            | ApiError::Decode { url, .. }
            | ApiError::Pagination { url, .. } => Some(url),
            ApiError::Token { .. } => None,
        }
    }

    /// The HTTP status, for errors that had a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The AF code, when the error body carried one.
    pub fn af_code(&self) -> Option<&AfCode> {
        match self {
            ApiError::Http { af_code, .. } => af_code.as_ref(),
            _ => None,
        }
    }

    /// `Retry-After` sent with the error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Http { retry_after, .. } => *retry_after,
            ApiError::Token { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// What the caller should do (management-activity-api.md §7.2–§7.3). The client has
    /// already retried transient failures and refreshed the token after a 401 before
    /// returning, so a returned 401 is [`Action::Fatal`].
    pub fn action(&self) -> Action {
        match self {
            ApiError::Http {
                af_code: Some(code),
                ..
            } => code.action(),
            ApiError::Http {
                status, endpoint, ..
            } => match status {
                408 | 500 | 502 | 503 | 504 => Action::Retry,
                429 => Action::Backoff,
                404 if *endpoint == Endpoint::FetchBlob => Action::Skip,
                410 if *endpoint == Endpoint::FetchBlob => Action::SkipExpired,
                400 => Action::Bug,
                s if *s >= 500 => Action::Retry,
                _ => Action::Fatal,
            },
            ApiError::Transport { .. } | ApiError::Decode { .. } => Action::Retry,
            ApiError::Token { source, .. } => match source.class() {
                crate::auth::TokenErrorClass::Fatal => Action::Fatal,
                crate::auth::TokenErrorClass::Transient => Action::Retry,
                crate::auth::TokenErrorClass::Throttled => Action::Backoff,
            },
            ApiError::BlobTooLarge { .. } => Action::Skip,
            ApiError::ForeignUrl { .. } => Action::Bug,
            ApiError::Pagination { .. } => Action::Retry,
        }
    }

    /// True when trying again later may succeed (retry/backoff actions).
    pub fn is_transient(&self) -> bool {
        matches!(self.action(), Action::Retry | Action::Backoff)
    }

    /// A fixed label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Http { .. } => match self.action() {
                Action::Retry => "server_error",
                Action::Backoff => "throttled",
                Action::RestartSubscription => "subscription_unavailable",
                Action::ClampWindow => "invalid_window",
                Action::RestartListing => "invalid_page",
                Action::Skip => "content_not_found",
                Action::SkipExpired => "content_expired",
                Action::TreatAsSuccess => "already_enabled",
                Action::Bug => "bad_request",
                Action::Fatal if self.status() == Some(401) => "unauthorized",
                Action::Fatal => "tenant_or_permission",
            },
            ApiError::Transport { kind, .. } => match kind {
                TransportKind::Connect => "connect",
                TransportKind::Timeout => "timeout",
                TransportKind::Body => "body_truncated",
                TransportKind::Other => "transport",
            },
            ApiError::Token { source, .. } => source.error_type(),
            ApiError::BlobTooLarge { .. } => "blob_too_large",
            ApiError::ForeignUrl { .. } => "foreign_url",
            ApiError::Decode { .. } => "decode",
            ApiError::Pagination { .. } => "pagination",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every AF code of §7.2 maps to its documented action and unknown codes fall back
    // by family.
    #[test]
    fn af_codes_map_to_documented_actions() {
        let cases = [
            ("AF10001", Action::Fatal),
            ("AF20001", Action::Bug),
            ("AF20002", Action::Bug),
            ("AF20003", Action::Fatal),
            ("AF20010", Action::Fatal),
            ("AF20011", Action::Fatal),
            ("AF20012", Action::Fatal),
            ("AF20013", Action::Bug),
            ("AF20020", Action::Fatal),
            ("AF20021", Action::Fatal),
            ("AF20022", Action::RestartSubscription),
            ("AF20023", Action::RestartSubscription),
            ("AF20024", Action::TreatAsSuccess),
            ("AF20030", Action::ClampWindow),
            ("AF20031", Action::RestartListing),
            ("AF20050", Action::Skip),
            ("AF20051", Action::SkipExpired),
            ("AF20052", Action::Bug),
            ("AF20053", Action::Bug),
            ("AF20054", Action::Bug),
            ("AF20055", Action::ClampWindow),
            ("af429", Action::Backoff),
            ("AF50000", Action::Retry),
            ("AF50005", Action::Retry),
            ("AF50006", Action::Retry),
            ("AF20099", Action::Bug),
            ("AF59999", Action::Retry),
        ];
        for (code, action) in cases {
            let parsed = AfCode::parse(code);
            assert_eq!(parsed.action(), action, "{code}");
            assert!(
                !matches!(parsed, AfCode::Other(_)) || code.ends_with("99"),
                "{code}"
            );
        }
        assert_eq!(AfCode::parse("AF20099").label(), "AF2xxxx");
    }
}
