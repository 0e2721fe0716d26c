//! Ground truth and observations exported by the simulator: what content existed, what was
//! listed and downloaded, every request received and every rule the client broke.
//!
//! End-to-end tests compare what reached the sink with [`Truth`]; collector tests assert on
//! [`RequestLog`] and [`Violation`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One blob as the simulator knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobTruth {
    /// Opaque content id.
    pub content_id: String,
    /// `contentCreated`.
    pub content_created: DateTime<Utc>,
    /// `contentExpiration` (possibly moved earlier by an expiry fault).
    pub content_expiration: DateTime<Utc>,
    /// When the blob first became listable (later than `content_created` for late blobs).
    pub visible_at: DateTime<Utc>,
    /// Record `Id`s in body order (a record with no `Id` appears as an empty string).
    pub record_ids: Vec<String>,
    /// Listable at some point: visible, and not created while the subscription was off.
    pub published: bool,
    /// Past its expiration now.
    pub expired: bool,
    /// Times the blob appeared in a listing page.
    pub times_listed: u64,
    /// Times the complete, intact body was served.
    pub times_downloaded: u64,
}

/// Truth of one (tenant, content type) stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamTruth {
    /// Every blob that exists, including not-yet-visible and hidden ones, in
    /// `contentCreated` order.
    pub blobs: Vec<BlobTruth>,
    /// Distinct record ids of published blobs.
    pub published_record_ids: BTreeSet<String>,
    /// Records in published blobs counting repeats (same record in two blobs).
    pub published_record_count: u64,
    /// Distinct record ids of blobs downloaded intact at least once.
    pub downloaded_record_ids: BTreeSet<String>,
    /// Content ids of published blobs.
    pub published_content_ids: BTreeSet<String>,
    /// Content ids that appeared in a listing.
    pub listed_content_ids: BTreeSet<String>,
    /// Content ids downloaded intact at least once.
    pub downloaded_content_ids: BTreeSet<String>,
}

/// Ground truth of the whole simulator, keyed by tenant id then content type string.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Truth {
    /// When this snapshot was taken (server clock).
    pub taken_at: DateTime<Utc>,
    /// tenant id → content type (`Audit.Exchange`, ...) → stream truth.
    pub tenants: BTreeMap<String, BTreeMap<String, StreamTruth>>,
    /// Record ids of the intrusion scenario, by step name, if one was configured.
    pub scenario_record_ids: BTreeMap<String, Vec<String>>,
    /// Access tokens issued so far.
    pub tokens_issued: u64,
}

impl Truth {
    /// Distinct record ids published in all tenants and content types.
    pub fn all_published_record_ids(&self) -> BTreeSet<String> {
        self.streams()
            .flat_map(|s| s.published_record_ids.iter().cloned())
            .collect()
    }

    /// Distinct record ids downloaded intact in all tenants and content types.
    pub fn all_downloaded_record_ids(&self) -> BTreeSet<String> {
        self.streams()
            .flat_map(|s| s.downloaded_record_ids.iter().cloned())
            .collect()
    }

    /// Published record ids that were never downloaded intact.
    pub fn missing_record_ids(&self) -> BTreeSet<String> {
        let downloaded = self.all_downloaded_record_ids();
        self.all_published_record_ids()
            .into_iter()
            .filter(|id| !downloaded.contains(id))
            .collect()
    }

    /// Truth of one stream, if that tenant exists.
    pub fn stream(&self, tenant_id: &str, content_type: &str) -> Option<&StreamTruth> {
        self.tenants.get(tenant_id)?.get(content_type)
    }

    fn streams(&self) -> impl Iterator<Item = &StreamTruth> {
        self.tenants.values().flat_map(|m| m.values())
    }
}

/// What kind of rule a client broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ViolationKind {
    /// A request without `PublisherIdentifier`.
    MissingPublisherIdentifier,
    /// `PublisherIdentifier` differs from the expected one.
    WrongPublisherIdentifier,
    /// Listing window wider than 24 hours.
    WindowTooWide,
    /// Listing window starting more than 7 days back.
    StartTooOld,
    /// Only one of `startTime`/`endTime`.
    HalfWindow,
    /// `startTime >= endTime`.
    StartNotBeforeEnd,
    /// A time parameter in an unaccepted format.
    BadTimeFormat,
    /// Two `start` calls closer than the configured minimum interval.
    StartTooSoon,
}

/// One broken rule, for assertions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Violation {
    /// When (server clock).
    pub at: DateTime<Utc>,
    /// Which rule.
    pub kind: ViolationKind,
    /// Tenant in the URL, if any.
    pub tenant: Option<String>,
    /// Request path and query.
    pub request: String,
    /// Human explanation.
    pub detail: String,
}

/// Which endpoint a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// v1 token endpoint.
    TokenV1,
    /// v2 token endpoint.
    TokenV2,
    /// `subscriptions/start`.
    StartSubscription,
    /// `subscriptions/stop`.
    StopSubscription,
    /// `subscriptions/list`.
    ListSubscriptions,
    /// `subscriptions/content`.
    ListContent,
    /// `subscriptions/notifications`.
    ListNotifications,
    /// `audit/{contentId}`.
    GetBlob,
    /// `resources/dlpSensitiveTypes`.
    DlpSensitiveTypes,
    /// Anything else.
    Other,
}

impl Endpoint {
    /// Operation name used in AF429 messages.
    pub fn method_name(self) -> &'static str {
        match self {
            Endpoint::TokenV1 | Endpoint::TokenV2 => "GetToken",
            Endpoint::StartSubscription => "StartSubscription",
            Endpoint::StopSubscription => "StopSubscription",
            Endpoint::ListSubscriptions => "ListSubscriptions",
            Endpoint::ListContent => "ListContent",
            Endpoint::ListNotifications => "ListNotifications",
            Endpoint::GetBlob => "GetBlob",
            Endpoint::DlpSensitiveTypes => "GetDlpSensitiveTypes",
            Endpoint::Other => "Unknown",
        }
    }
}

/// One request as received, with the simulator's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestLog {
    /// Arrival (server clock).
    pub at: DateTime<Utc>,
    /// HTTP method.
    pub method: String,
    /// Path as sent (percent-encoded).
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Tenant in the URL.
    pub tenant: Option<String>,
    /// `contentType` parameter (listing, subscriptions) or the blob's content type.
    pub content_type: Option<String>,
    /// `PublisherIdentifier` value (any casing of the name).
    pub publisher_identifier: Option<String>,
    /// Parsed listing window.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// `nextPage` value if present.
    pub next_page: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// AF / AADSTS code answered, if an error.
    pub error_code: Option<String>,
    /// Body was gzip-compressed.
    pub gzip: bool,
    /// Injected fault, if any.
    pub fault: Option<String>,
    /// Items returned by a listing, or records in a served blob.
    pub items: Option<usize>,
}

/// Counters over all requests (exact even when the log is trimmed).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestSummary {
    /// Requests received.
    pub total: u64,
    /// Requests per endpoint name.
    pub by_endpoint: BTreeMap<String, u64>,
    /// Requests per HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests per error code.
    pub by_error_code: BTreeMap<String, u64>,
    /// Requests without `PublisherIdentifier`.
    pub without_publisher_identifier: u64,
    /// Injected faults by name.
    pub faults: BTreeMap<String, u64>,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Violations recorded.
    pub violations: u64,
    /// Log entries dropped because of the limit.
    pub log_entries_dropped: u64,
}
