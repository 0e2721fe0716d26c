//! Configuration of the fake Microsoft 365 tenant: tenants, apps, content generation,
//! throttling and fault injection.
//!
//! Everything here is plain data with sensible defaults; [`SimConfig::for_tests`] gives a
//! ready-to-use configuration, and tests change single fields before calling
//! [`crate::tenant::Simulator::start`]. Runtime changes (faults, throttling, clock skew) go
//! through [`crate::tenant::FaultHandle`] instead.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Client id registered in every tenant by [`SimConfig::for_tests`] (a multi-tenant app).
pub const TEST_CLIENT_ID: &str = "6f0c5a2e-3b7d-4c1e-9a8f-2d4b6c8e0a13";
/// Client secret of [`TEST_CLIENT_ID`] in [`SimConfig::for_tests`]. Test-only value.
pub const TEST_CLIENT_SECRET: &str = "sim-test-secret-not-for-production";
/// Publisher identifier the tests send (any GUID works; this one is just stable).
pub const TEST_PUBLISHER_ID: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
/// Permission needed for every Activity API call.
pub const ROLE_ACTIVITY_FEED_READ: &str = "ActivityFeed.Read";
/// Permission for sensitive-data details in `DLP.All`.
pub const ROLE_ACTIVITY_FEED_READ_DLP: &str = "ActivityFeed.ReadDlp";

/// The five content types of the Management Activity API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContentType {
    /// `Audit.AzureActiveDirectory`
    #[serde(rename = "Audit.AzureActiveDirectory")]
    AzureActiveDirectory,
    /// `Audit.Exchange`
    #[serde(rename = "Audit.Exchange")]
    Exchange,
    /// `Audit.SharePoint`
    #[serde(rename = "Audit.SharePoint")]
    SharePoint,
    /// `Audit.General`
    #[serde(rename = "Audit.General")]
    General,
    /// `DLP.All`
    #[serde(rename = "DLP.All")]
    Dlp,
}

impl ContentType {
    /// All content types, in a fixed order.
    pub const ALL: [ContentType; 5] = [
        ContentType::AzureActiveDirectory,
        ContentType::Exchange,
        ContentType::SharePoint,
        ContentType::General,
        ContentType::Dlp,
    ];

    /// The exact wire string, e.g. `Audit.Exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::AzureActiveDirectory => "Audit.AzureActiveDirectory",
            ContentType::Exchange => "Audit.Exchange",
            ContentType::SharePoint => "Audit.SharePoint",
            ContentType::General => "Audit.General",
            ContentType::Dlp => "DLP.All",
        }
    }

    /// Parse the wire string. Microsoft matches content types case-insensitively.
    pub fn parse(s: &str) -> Option<ContentType> {
        ContentType::ALL
            .into_iter()
            .find(|ct| ct.as_str().eq_ignore_ascii_case(s))
    }

    /// Position in [`ContentType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short tag used inside content ids.
    pub(crate) fn short(self) -> &'static str {
        match self {
            ContentType::AzureActiveDirectory => "aad",
            ContentType::Exchange => "exo",
            ContentType::SharePoint => "spo",
            ContentType::General => "gen",
            ContentType::Dlp => "dlp",
        }
    }

    /// Share of the generated record volume that goes to this content type.
    pub(crate) fn weight(self) -> f64 {
        match self {
            ContentType::AzureActiveDirectory => 0.35,
            ContentType::Exchange => 0.25,
            ContentType::SharePoint => 0.25,
            ContentType::General => 0.10,
            ContentType::Dlp => 0.05,
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An app registration in a tenant (client-credentials flow).
#[derive(Clone)]
pub struct AppSpec {
    /// Application (client) id GUID.
    pub client_id: String,
    /// Client secret, if the app accepts secrets. Never printed by `Debug`.
    pub secret: Option<String>,
    /// After this instant the secret is rejected with AADSTS7000222.
    pub secret_expires_at: Option<DateTime<Utc>>,
    /// Registered certificate(s), PEM (one or more `CERTIFICATE` blocks), for client assertions.
    pub cert_pem: Option<String>,
    /// App roles put into issued tokens (`ActivityFeed.Read`, `ActivityFeed.ReadDlp`, ...).
    pub roles: Vec<String>,
}

impl AppSpec {
    /// An app with a secret and both activity-feed roles.
    pub fn with_secret(client_id: &str, secret: &str) -> AppSpec {
        AppSpec {
            client_id: client_id.to_owned(),
            secret: Some(secret.to_owned()),
            secret_expires_at: None,
            cert_pem: None,
            roles: vec![
                ROLE_ACTIVITY_FEED_READ.to_owned(),
                ROLE_ACTIVITY_FEED_READ_DLP.to_owned(),
            ],
        }
    }

    /// An app with a registered certificate (PEM) and both activity-feed roles.
    pub fn with_certificate(client_id: &str, cert_pem: &str) -> AppSpec {
        AppSpec {
            client_id: client_id.to_owned(),
            secret: None,
            secret_expires_at: None,
            cert_pem: Some(cert_pem.to_owned()),
            roles: vec![
                ROLE_ACTIVITY_FEED_READ.to_owned(),
                ROLE_ACTIVITY_FEED_READ_DLP.to_owned(),
            ],
        }
    }
}

impl fmt::Debug for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_expires_at", &self.secret_expires_at)
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "<certificate>"))
            .field("roles", &self.roles)
            .finish()
    }
}

/// One simulated tenant (directory).
#[derive(Clone, Debug)]
pub struct TenantSpec {
    /// Tenant GUID (lower case recommended).
    pub tenant_id: String,
    /// Verified domains accepted in token URLs; the first is used for generated UPNs.
    /// Empty: `tenant<first 8 hex>.onmicrosoft.com`.
    pub domains: Vec<String>,
    /// App registrations consented in this tenant.
    pub apps: Vec<AppSpec>,
    /// Content types that carry data in this tenant.
    pub content_types: Vec<ContentType>,
    /// Subscriptions already enabled when the simulator starts (others start absent).
    pub subscribed: Vec<ContentType>,
    /// Unified audit logging on. Off: every API call answers AF20011 ("does not exist").
    pub audit_enabled: bool,
    /// Overrides [`SimConfig::records_per_minute`] for this tenant.
    pub records_per_minute: Option<f64>,
}

impl TenantSpec {
    /// A tenant with the test app ([`TEST_CLIENT_ID`]/[`TEST_CLIENT_SECRET`]) and all content
    /// types, no subscription started yet.
    pub fn new(tenant_id: &str) -> TenantSpec {
        TenantSpec {
            tenant_id: tenant_id.to_owned(),
            domains: Vec::new(),
            apps: vec![AppSpec::with_secret(TEST_CLIENT_ID, TEST_CLIENT_SECRET)],
            content_types: ContentType::ALL.to_vec(),
            subscribed: Vec::new(),
            audit_enabled: true,
            records_per_minute: None,
        }
    }

    /// The domain used for generated user names.
    pub fn primary_domain(&self) -> String {
        match self.domains.first() {
            Some(d) => d.clone(),
            None => {
                let hex: String = self
                    .tenant_id
                    .chars()
                    .filter(|c| c.is_ascii_hexdigit())
                    .take(8)
                    .collect();
                format!("tenant{hex}.onmicrosoft.com")
            }
        }
    }
}

/// Per-tenant and anonymous request quotas (token buckets refilled continuously).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThrottleSpec {
    /// Requests per minute per tenant; 0 disables the bucket. Microsoft: 2,000.
    pub tenant_per_minute: u32,
    /// Requests per minute shared by all requests without `PublisherIdentifier`; 0 disables.
    pub anonymous_per_minute: u32,
    /// HTTP status of throttled answers: 403 (documented) or 429.
    pub status: u16,
    /// `Retry-After` seconds on throttled answers; `None` sends no header (as documented).
    pub retry_after_secs: Option<u64>,
}

impl Default for ThrottleSpec {
    fn default() -> Self {
        ThrottleSpec {
            tenant_per_minute: 2000,
            anonymous_per_minute: 1000,
            status: 403,
            retry_after_secs: None,
        }
    }
}

/// Random fault rates (each a probability in `0.0..=1.0`) and their parameters.
///
/// Request faults apply to Activity API calls after authentication; blob-body faults only to
/// blob downloads; generation faults to blobs generated after the change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Answer AF429 (status from [`ThrottleSpec::status`]).
    pub throttle_fraction: f64,
    /// Answer 500 with AF50000.
    pub error_500_fraction: f64,
    /// Answer 503 (plain text, as a gateway would).
    pub error_503_fraction: f64,
    /// Answer 502 with an HTML error page.
    pub html_error_fraction: f64,
    /// Delay the answer by [`FaultSpec::stall_ms`].
    pub stall_fraction: f64,
    /// Stall length in milliseconds.
    pub stall_ms: u64,
    /// Abort the connection in the middle of the body.
    pub reset_fraction: f64,
    /// Serve only the first half of a blob body (status 200).
    pub truncated_blob_fraction: f64,
    /// Serve a blob body with bytes overwritten (invalid JSON, status 200).
    pub garbled_blob_fraction: f64,
    /// Generated blobs that become listable only [`FaultSpec::late_blob_delay_secs`] after
    /// their `contentCreated`.
    pub late_blob_fraction: f64,
    /// Listing delay of late blobs.
    pub late_blob_delay_secs: u64,
    /// Generated blobs that repeat one record of the previous blob (same `Id`, same bytes).
    pub duplicate_record_fraction: f64,
    /// Extra generated blobs whose body is an empty array.
    pub empty_blob_fraction: f64,
    /// Listed blobs that expire right after being listed (expiry race).
    pub expiry_race_fraction: f64,
}

/// Header carrying the next-page URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NextPageHeader {
    /// `NextPageUri` (current documentation).
    #[default]
    NextPageUri,
    /// `NextPageUrl` (older documentation).
    NextPageUrl,
}

/// An optional attack story mixed into one tenant's data (for the demo and detection tests):
/// a password spray with one success, an inbox rule forwarding outside, a mailbox permission
/// grant and a mass download, all from one attacker IP.
#[derive(Clone, Debug)]
pub struct Intrusion {
    /// Tenant that is attacked; `None` = the first tenant.
    pub tenant_id: Option<String>,
    /// When the spray starts, in minutes before the simulator starts (negative = later).
    pub starts_minutes_ago: i64,
    /// Source IP of every attacker action.
    pub attacker_ip: String,
    /// Number of accounts sprayed (all fail except the victim).
    pub sprayed_accounts: usize,
    /// External address the inbox rule forwards to.
    pub forward_to: String,
    /// Number of `FileDownloaded` records in the exfiltration burst.
    pub downloads: usize,
}

impl Default for Intrusion {
    fn default() -> Self {
        Intrusion {
            tenant_id: None,
            starts_minutes_ago: 90,
            attacker_ip: "198.51.100.23".to_owned(),
            sprayed_accounts: 25,
            forward_to: "collect@exfil-mail.example".to_owned(),
            downloads: 60,
        }
    }
}

/// Real audit records loaded from a file (JSON lines, or JSON arrays) and served as blobs.
#[derive(Clone, Debug)]
pub struct RecordFileSpec {
    /// File to read.
    pub path: PathBuf,
    /// Take the record from this top-level field of each line (e.g. `event`); `None` detects
    /// a wrapper object with an `event` field and otherwise uses the line itself.
    pub field: Option<String>,
    /// Tenant to serve them in; `None` = the first tenant.
    pub tenant_id: Option<String>,
    /// Records per blob.
    pub records_per_blob: usize,
}

impl RecordFileSpec {
    /// Serve the file's records in the first tenant, 50 per blob, wrapper field detected.
    pub fn new(path: impl Into<PathBuf>) -> RecordFileSpec {
        RecordFileSpec {
            path: path.into(),
            field: None,
            tenant_id: None,
            records_per_blob: 50,
        }
    }
}

/// Everything the simulator needs to start.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Serve HTTPS with a per-run test PKI (`true`) or plain HTTP (`false`).
    pub tls: bool,
    /// Tenants.
    pub tenants: Vec<TenantSpec>,
    /// Resource (audience) of the Activity API, e.g. `https://manage.office.com`.
    pub resource: String,
    /// If set, requests whose `PublisherIdentifier` differs are recorded as violations.
    pub expected_publisher_id: Option<String>,
    /// Items per `/subscriptions/content` page.
    pub page_size: usize,
    /// Hours of past content present at start.
    pub history_hours: f64,
    /// Generated records per minute per tenant (over all content types).
    pub records_per_minute: f64,
    /// Seconds between blob publications per content type.
    pub blob_interval_secs: u64,
    /// Largest number of records in one generated blob.
    pub max_blob_records: usize,
    /// Keep publishing new blobs as time passes (otherwise only the history exists).
    pub live_generation: bool,
    /// Seed of every random choice (records, faults).
    pub seed: u64,
    /// Compress blob and listing bodies when the client sends `Accept-Encoding: gzip`.
    pub gzip: bool,
    /// The server clock runs this many seconds ahead (negative: behind) of real time: `Date`
    /// headers, window checks, token times and new content all follow it.
    pub clock_skew_secs: i64,
    /// Lifetime of issued access tokens.
    pub token_lifetime_secs: u64,
    /// Leeway applied to client-assertion `nbf`/`exp` checks.
    pub assertion_leeway_secs: u64,
    /// `true`: windows wider than 24h are rejected with AF20030. `false`: answered with the
    /// first 24h only (partial results). Both record a violation.
    pub strict_window: bool,
    /// Name of the pagination header.
    pub next_page_header: NextPageHeader,
    /// Next-page URLs use `/api/v1/` (as one documented example does) instead of `/api/v1.0/`.
    pub next_page_api_v1: bool,
    /// Minimum seconds between two `start` calls of one subscription (Microsoft: 900); 0 = off.
    pub start_min_interval_secs: u64,
    /// Content published before a subscription's first `start` is listable after it.
    pub history_visible_on_start: bool,
    /// After a first `start`, content is hidden until this many seconds have passed.
    pub first_data_delay_secs: u64,
    /// Quotas.
    pub throttle: ThrottleSpec,
    /// Random faults.
    pub faults: FaultSpec,
    /// Optional attack story.
    pub scenario: Option<Intrusion>,
    /// Real records served in addition to generated ones.
    pub record_files: Vec<RecordFileSpec>,
    /// Most request-log entries kept (older ones are dropped; counters stay exact).
    pub request_log_limit: usize,
}

impl SimConfig {
    /// A small, deterministic, fast configuration for tests: HTTPS on `127.0.0.1:0`, the
    /// given tenants with the test app, 3 hours of history at 10 records/minute, blobs every
    /// 5 minutes, live generation on, no faults, Microsoft's default quotas.
    pub fn for_tests(tenant_ids: &[&str]) -> SimConfig {
        SimConfig {
            tenants: tenant_ids.iter().map(|t| TenantSpec::new(t)).collect(),
            ..SimConfig::default()
        }
    }

    /// Look up a tenant by id (case-insensitive).
    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantSpec> {
        self.tenants
            .iter()
            .find(|t| t.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    /// Check the configuration; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.tenants.is_empty() {
            errors.push("tenants: at least one tenant is required".to_owned());
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if uuid::Uuid::parse_str(&t.tenant_id).is_err() {
                errors.push(format!(
                    "tenants[{i}].tenant_id: expected a GUID such as 11111111-2222-3333-4444-555555555555, got {:?}",
                    t.tenant_id
                ));
            }
            for (j, app) in t.apps.iter().enumerate() {
                if app.secret.is_none() && app.cert_pem.is_none() {
                    errors.push(format!(
                        "tenants[{i}].apps[{j}]: needs a secret or a certificate"
                    ));
                }
            }
        }
        if self.page_size == 0 {
            errors.push("page_size: expected at least 1".to_owned());
        }
        if self.max_blob_records == 0 {
            errors.push("max_blob_records: expected at least 1".to_owned());
        }
        if self.blob_interval_secs == 0 {
            errors.push("blob_interval_secs: expected at least 1".to_owned());
        }
        if !(self.records_per_minute >= 0.0 && self.records_per_minute.is_finite()) {
            errors.push("records_per_minute: expected a finite number >= 0".to_owned());
        }
        if !(self.history_hours >= 0.0 && self.history_hours.is_finite()) {
            errors.push("history_hours: expected a finite number >= 0".to_owned());
        }
        if !matches!(self.throttle.status, 403 | 429) {
            errors.push(format!(
                "throttle.status: expected 403 or 429, got {}",
                self.throttle.status
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            tenants: Vec::new(),
            resource: "https://manage.office.com".to_owned(),
            expected_publisher_id: None,
            page_size: 100,
            history_hours: 3.0,
            records_per_minute: 10.0,
            blob_interval_secs: 300,
            max_blob_records: 1000,
            live_generation: true,
            seed: 42,
            gzip: true,
            clock_skew_secs: 0,
            token_lifetime_secs: 3599,
            assertion_leeway_secs: 0,
            strict_window: true,
            next_page_header: NextPageHeader::NextPageUri,
            next_page_api_v1: false,
            start_min_interval_secs: 0,
            history_visible_on_start: true,
            first_data_delay_secs: 0,
            throttle: ThrottleSpec::default(),
            faults: FaultSpec::default(),
            scenario: None,
            record_files: Vec::new(),
            request_log_limit: 100_000,
        }
    }
}
