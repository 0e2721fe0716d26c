//! The validated, typed configuration the stages use.
//!
//! Built only by [`RawConfig::validate`](super::RawConfig::validate): every value here has
//! been checked, defaults are applied, secrets and PEM files are loaded. Secrets are
//! [`SecretString`]s, so `Debug` of any of these types never shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::ConfigWarning;
use crate::cloud::{CloudEndpoints, CloudPreset, TokenEndpoint};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Enabled tenants: `inputs.office365` first (if present), then `tenants[]` in file order.
    pub tenants: Vec<TenantSettings>,
    /// Kafka connection and topics.
    pub kafka: KafkaSettings,
    /// The forwarder's output; `None` when the file has no `devo` section.
    pub devo: Option<DevoSettings>,
    /// Producer timing.
    pub producer: ProducerSettings,
    /// Consumer limits and de-duplication.
    pub consumer: ConsumerSettings,
    /// Retry policy of the `uri_retry` service.
    pub uri_retry: UriRetrySettings,
    /// Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// Health records.
    pub health: HealthSettings,
    /// Log output.
    pub logging: LoggingSettings,
    /// Things accepted but worth logging at start-up (ignored keys, certificates near expiry …).
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// The enabled tenants.
    pub fn tenants(&self) -> &[TenantSettings] {
        &self.tenants
    }

    /// The tenant with this id (lower-case GUID), if configured.
    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantSettings> {
        let wanted = tenant_id.to_ascii_lowercase();
        self.tenants.iter().find(|t| t.tenant_id == wanted)
    }

    /// Whether any tenant enables the `uri_retry` service.
    pub fn uri_retry_enabled(&self) -> bool {
        self.tenants.iter().any(|t| t.uri_retry)
    }
}

/// One tenant, ready for the token client and the API client.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Label for logs, metrics and health records (`input_name`): `tenants[].name`, else the
    /// tenant id; `office365` for Devo's block.
    pub name: String,
    /// Where in the file this tenant was defined (`inputs.office365`, `tenants[2]`), for messages.
    pub key_path: String,
    /// Directory (tenant) id, lower-case GUID.
    pub tenant_id: String,
    /// Application (client) id, lower-case GUID.
    pub client_id: String,
    /// How to obtain tokens.
    pub credential: Credential,
    /// v1 or v2 token endpoint.
    pub token_endpoint: TokenEndpoint,
    /// The named cloud, or `None` for explicit endpoints.
    pub cloud: Option<CloudPreset>,
    /// API, authority and token audience.
    pub endpoints: CloudEndpoints,
    /// Extra trusted root certificate(s), PEM, from `ca_file`.
    pub ca_pem: Option<String>,
    /// `PublisherIdentifier` sent on every API request.
    pub publisher_identifier: String,
    /// Request budget per minute for this tenant (listing and downloads together).
    pub requests_per_minute: u32,
    /// The content types collected, one stream each, in [`ContentType::ALL`] order.
    pub streams: Vec<StreamSettings>,
    /// Whether the `uri_retry` service runs for this tenant.
    pub uri_retry: bool,
}

impl TenantSettings {
    /// The stream of `content_type`, if enabled.
    pub fn stream(&self, content_type: ContentType) -> Option<&StreamSettings> {
        self.streams.iter().find(|s| s.content_type == content_type)
    }
}

/// One (tenant, content type) stream's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// The content type.
    pub content_type: ContentType,
    /// Devo tag for every record of this stream, replacing the workload tag.
    pub override_tag: Option<String>,
    /// Record ids one de-duplication filter generation is sized for.
    pub bloom_filter_size: u64,
    /// Filter generations kept.
    pub bloom_filter_buffer_size: u64,
    /// First time to collect; `None`: the producer's default (as far back as the API allows).
    pub start_time: Option<DateTime<Utc>>,
}

/// The five content types of the Management Activity API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentType {
    /// `Audit.AzureActiveDirectory` (Devo service `azure_active_directory`).
    AzureActiveDirectory,
    /// `Audit.Exchange` (service `exchange`).
    Exchange,
    /// `Audit.SharePoint` (service `sharepoint`).
    SharePoint,
    /// `Audit.General` (service `general_audit`).
    General,
    /// `DLP.All` (service `dlp`).
    DlpAll,
}

impl ContentType {
    /// All five, in the API documentation's order.
    pub const ALL: [ContentType; 5] = [
        ContentType::AzureActiveDirectory,
        ContentType::Exchange,
        ContentType::SharePoint,
        ContentType::General,
        ContentType::DlpAll,
    ];

    /// The exact API string, e.g. `Audit.Exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::AzureActiveDirectory => "Audit.AzureActiveDirectory",
            ContentType::Exchange => "Audit.Exchange",
            ContentType::SharePoint => "Audit.SharePoint",
            ContentType::General => "Audit.General",
            ContentType::DlpAll => "DLP.All",
        }
    }

    /// Devo's service name, e.g. `exchange`.
    pub fn service_name(self) -> &'static str {
        match self {
            ContentType::AzureActiveDirectory => "azure_active_directory",
            ContentType::Exchange => "exchange",
            ContentType::SharePoint => "sharepoint",
            ContentType::General => "general_audit",
            ContentType::DlpAll => "dlp",
        }
    }

    /// Parses the exact API string (as found on topics and in API answers).
    pub fn from_api_str(s: &str) -> Option<ContentType> {
        ContentType::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Parses an API string (any case) or a Devo service name.
    pub fn from_name(s: &str) -> Option<ContentType> {
        let s = s.trim();
        ContentType::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s) || c.service_name() == s)
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`ContentType::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown content type (expected one of Audit.AzureActiveDirectory, Audit.Exchange, Audit.SharePoint, Audit.General, DLP.All)"
)]
pub struct UnknownContentType;

impl FromStr for ContentType {
    type Err = UnknownContentType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ContentType::from_name(s).ok_or(UnknownContentType)
    }
}

/// How a tenant's application proves its identity.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Client secret.
    ClientSecret(SecretString),
    /// Certificate: a JWT client assertion signed with the private key.
    Certificate {
        /// The certificate (PEM, first block is the leaf); `x5t` headers hash its DER.
        cert_pem: String,
        /// The private key (PEM).
        key_pem: SecretString,
        /// Signature algorithm.
        alg: Alg,
        /// Send the `x5t` (SHA-1 thumbprint) header.
        x5t: bool,
        /// Send the `x5t#S256` (SHA-256 thumbprint) header.
        x5t_s256: bool,
    },
}

/// Signature algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (default).
    #[default]
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
}

impl Alg {
    /// `RS256` or `PS256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
        }
    }
}

/// `kafka.transactions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transactions {
    /// Use transactions when the broker supports them.
    #[default]
    Auto,
    /// Require transactions; fail if the broker cannot.
    On,
    /// Never use transactions (URIs first, cursor after; the ledger absorbs replays).
    Off,
}

/// Kafka connection and topics.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port,…`; `None`: start the embedded broker.
    pub bootstrap_servers: Option<String>,
    /// Topic name prefix (default `m365`).
    pub topic_prefix: String,
    /// Partitions of each topic we create.
    pub partitions: i32,
    /// Replication factor of topics we create; `None`: the broker's default.
    pub replication_factor: Option<i32>,
    /// Transaction policy.
    pub transactions: Transactions,
    /// librdkafka properties passed through.
    pub properties: KafkaProperties,
}

impl KafkaSettings {
    /// `{topic_prefix}.{suffix}`, e.g. `topic("uris.retry")` → `m365.uris.retry`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.topic_prefix)
    }
}

/// librdkafka properties from `kafka.properties`. `Debug` hides values that came from
/// secret references or whose key looks sensitive (password, secret, key, jaas, token).
#[derive(Clone, Default)]
pub struct KafkaProperties {
    pub(crate) entries: BTreeMap<String, (SecretString, bool)>,
}

impl KafkaProperties {
    /// Every `(key, value)` pair, values exposed, for `ClientConfig::set`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.expose_secret()))
    }

    /// The value of `key`, exposed.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|(v, _)| v.expose_secret())
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` names a value that must not be printed.
    pub fn is_sensitive_key(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "key", "jaas", "token", "credential"]
            .iter()
            .any(|w| k.contains(w))
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, (v, sensitive)) in &self.entries {
            if *sensitive {
                m.entry(k, &"[REDACTED]");
            } else {
                m.entry(k, &v.expose_secret());
            }
        }
        m.finish()
    }
}

/// The forwarder's output.
#[derive(Debug, Clone)]
pub struct DevoSettings {
    /// Where lines go.
    pub output: Output,
    /// How each line is framed.
    pub line: LineFormat,
    /// Parallel connections.
    pub connections: u32,
    /// Flush a batch at this many bytes.
    pub batch_max_bytes: u64,
    /// Flush a non-empty batch after this many milliseconds.
    pub batch_max_wait_ms: u64,
    /// Connect and write timeout, seconds.
    pub timeout_secs: u64,
    /// Reconnect after this many idle seconds.
    pub idle_reconnect_secs: u64,
    /// Reconnect connections older than this many seconds.
    pub max_connection_age_secs: u64,
    /// Most megabytes of batches held in memory (queued, in flight, or written and waiting
    /// out the commit delay).
    pub max_held_mb: u64,
}

impl DevoSettings {
    /// `batch_max_wait_ms` as a duration.
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Output kinds (`devo.type`).
#[derive(Debug, Clone)]
pub enum Output {
    /// Syslog lines over TLS with the domain's client certificate.
    DevoTls {
        /// Load balancer host.
        address: String,
        /// TCP port.
        port: u16,
        /// Server name for SNI and verification.
        sni: String,
        /// Client certificate, key and CA chain.
        tls: TlsMaterial,
    },
    /// Devo HTTP ingestion, stream mode.
    DevoHttp {
        /// Endpoint, e.g. `https://http-eu.devo.io`.
        endpoint: Url,
        /// Devo domain.
        domain: String,
        /// Ingestion token.
        token: SecretString,
    },
    /// Plain TCP to an in-house relay.
    Tcp {
        /// Relay host.
        address: String,
        /// Relay port.
        port: u16,
    },
    /// Append lines to a file (debugging).
    File {
        /// The file.
        path: PathBuf,
    },
    /// Write lines to standard output (debugging).
    Stdout,
}

impl Output {
    /// The configuration name of this kind (`devo_tls` …).
    pub fn kind(&self) -> &'static str {
        match self {
            Output::DevoTls { .. } => "devo_tls",
            Output::DevoHttp { .. } => "devo_http",
            Output::Tcp { .. } => "tcp",
            Output::File { .. } => "file",
            Output::Stdout => "stdout",
        }
    }
}

/// The PEM material of a `devo_tls` output, loaded and checked at start.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Where the client certificate came from.
    pub cert_file: PathBuf,
    /// Client certificate chain, PEM.
    pub cert_pem: String,
    /// Where the key came from.
    pub key_file: PathBuf,
    /// Client private key, PEM.
    pub key_pem: SecretString,
    /// Where the CA chain came from.
    pub chain_file: PathBuf,
    /// CA chain that verifies the server, PEM.
    pub chain_pem: String,
}

/// Syslog line framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFormat {
    /// Host name in each line; `None`: this machine's host name.
    pub hostname: Option<String>,
    /// Syslog facility (0–23).
    pub facility: u8,
    /// Syslog severity (0–7).
    pub severity: u8,
    /// Date field style.
    pub date_style: DateStyle,
    /// Octet-counted framing.
    pub multiline: bool,
    /// Gzip members instead of plain lines.
    pub zip: bool,
}

impl LineFormat {
    /// The PRI value: facility × 8 + severity (14 by default).
    pub fn pri(&self) -> u16 {
        u16::from(self.facility) * 8 + u16::from(self.severity)
    }
}

/// Date field of a syslog line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DateStyle {
    /// The constant `Jan  1 00:00:00` Devo's Python SDK writes (default).
    #[default]
    DevoSdk,
    /// Current UTC time as `Mmm dd hh:mm:ss`.
    Rfc3164,
    /// Current UTC time as RFC 3339.
    Rfc3339,
}

/// Producer timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSettings {
    /// Seconds between listing ticks per stream.
    pub poll_interval_secs: u64,
    /// Content younger than this is not listed yet.
    pub settle_secs: u64,
    /// Hours re-listed by the late-content sweep (≤ 168).
    pub sweep_horizon_hours: u64,
    /// Seconds between sweeps.
    pub sweep_interval_secs: u64,
    /// Seconds before restarting a subscription again.
    pub subscription_restart_cooldown_secs: u64,
    /// Whether instances share the streams through a Kafka group.
    pub coordination: ProducerCoordination,
    /// Producer-group session timeout, ms.
    pub group_session_timeout_ms: u64,
    /// Producer-group heartbeat interval, ms.
    pub group_heartbeat_interval_ms: u64,
}

/// How producer instances divide the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProducerCoordination {
    /// Every instance of the configuration joins `<prefix>-producer`; each stream runs on
    /// exactly one of them.
    #[default]
    Group,
    /// This instance runs every stream (one instance only).
    None,
}

impl ProducerSettings {
    /// `poll_interval_secs` as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }
    /// `settle_secs` as a duration.
    pub fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_secs)
    }
    /// `sweep_horizon_hours` as a duration.
    pub fn sweep_horizon(&self) -> Duration {
        Duration::from_secs(self.sweep_horizon_hours * 3600)
    }
    /// `sweep_interval_secs` as a duration.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }
    /// `subscription_restart_cooldown_secs` as a duration.
    pub fn subscription_restart_cooldown(&self) -> Duration {
        Duration::from_secs(self.subscription_restart_cooldown_secs)
    }
}

/// Consumer limits and de-duplication.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSettings {
    /// Largest single record accepted, bytes.
    pub max_record_bytes: u64,
    /// Largest decompressed blob accepted, bytes.
    pub max_blob_bytes: u64,
    /// Blobs downloaded at once.
    pub download_concurrency: u32,
    /// Tag for records without a `Workload`.
    pub fallback_tag: String,
    /// Target false-positive rate of the de-duplication filter.
    pub bloom_false_positive_rate: f64,
}

/// Retry policy of failed content blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriRetrySettings {
    /// Give up after this many attempts; `None`: until the content expires.
    pub max_attempts: Option<u32>,
    /// First delay, seconds (doubled per attempt).
    pub backoff_base_secs: u64,
    /// Longest delay, seconds.
    pub backoff_max_secs: u64,
}

/// Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Serve metrics at all.
    pub enabled: bool,
    /// Listen address.
    pub listen_address: SocketAddr,
}

/// Health records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// Devo tag of health records.
    pub tag: String,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    /// Level or `EnvFilter` directive.
    pub level: String,
    /// JSON lines.
    pub json: bool,
}
