//! Serde structs that mirror the configuration file key for key (JSON or YAML).
//!
//! This is the *raw* layer: values are kept close to what the operator wrote (names as
//! text, numbers as `i64`) so that [`RawConfig::validate`](super::RawConfig::validate) can
//! report every mistake at once with its key path. The typed view the stages use is in
//! [`super::settings`].
//!
//! Devo's own Microsoft 365 collector parameters (`inputs.office365`) are accepted exactly as
//! Devo writes them; unknown keys there are tolerated (and reported as warnings), because
//! Devo may add some. Our own sections reject unknown keys, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::secret::{PropertyValue, SecretSource};

/// The whole configuration file. Every section is optional; see each for defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Devo's collector parameters. Only `inputs.office365` is read; other inputs are ignored.
    pub inputs: Option<RawInputs>,
    /// Devo on-premise `globals` section: accepted and ignored.
    pub globals: Option<IgnoredAny>,
    /// Devo on-premise `outputs` section: accepted and ignored (our output is `devo`).
    pub outputs: Option<IgnoredAny>,
    /// Tenants to collect from, in addition to the one in `inputs.office365`.
    pub tenants: Option<Vec<RawTenant>>,
    /// Kafka connection, topics and client properties.
    pub kafka: Option<RawKafka>,
    /// Where the forwarder sends events.
    pub devo: Option<RawDevoOutput>,
    /// Listing and subscription behaviour of the producer.
    pub producer: Option<RawProducer>,
    /// Blob download, splitting and de-duplication in the consumer.
    pub consumer: Option<RawConsumer>,
    /// Retries of failed content blobs (the `uri_retry` service).
    pub uri_retry: Option<RawUriRetry>,
    /// Prometheus endpoint.
    pub metrics: Option<RawMetrics>,
    /// Status records on the health topic.
    pub health: Option<RawHealth>,
    /// Log output.
    pub logging: Option<RawLogging>,
}

/// Devo's `inputs` map.
#[derive(Debug, Default, Deserialize)]
pub struct RawInputs {
    /// Devo's Microsoft 365 collector input.
    pub office365: Option<RawDevoInput>,
    /// Other collectors' inputs: ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, IgnoredAny>,
}

/// `inputs.office365`, exactly as Devo's collector parameters spell it. Turned into one
/// tenant on the commercial cloud with client-secret authentication and the v2 endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct RawDevoInput {
    /// Devo's input id (five digits); text or number. Used only as a label.
    #[serde(default, deserialize_with = "lenient_text")]
    pub id: Option<String>,
    /// `false` disables this input (default `true`).
    pub enabled: Option<bool>,
    /// Azure application credentials.
    pub credentials: Option<RawDevoCredentials>,
    /// Services to run; a service present (even `{}`) is enabled. Absent: all of them.
    pub services: Option<RawDevoServices>,
    /// Keys Devo may add that we do not use.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// `inputs.office365.credentials`.
#[derive(Debug, Default, Deserialize)]
pub struct RawDevoCredentials {
    /// Application (client) id, a GUID.
    #[serde(default, deserialize_with = "lenient_text")]
    pub client_id: Option<String>,
    /// Directory (tenant) id, a GUID.
    #[serde(default, deserialize_with = "lenient_text")]
    pub tenant_id: Option<String>,
    /// Client secret: inline, `{"env": …}` or `{"file": …}`.
    pub client_secret: Option<SecretSource>,
    /// Keys Devo may add that we do not use.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// `inputs.office365.services`: Devo's service names.
#[derive(Debug, Default, Deserialize)]
pub struct RawDevoServices {
    /// `Audit.AzureActiveDirectory`.
    #[serde(default, deserialize_with = "present")]
    pub azure_active_directory: Option<RawDevoService>,
    /// `Audit.Exchange`.
    #[serde(default, deserialize_with = "present")]
    pub exchange: Option<RawDevoService>,
    /// `Audit.SharePoint`.
    #[serde(default, deserialize_with = "present")]
    pub sharepoint: Option<RawDevoService>,
    /// `Audit.General`.
    #[serde(default, deserialize_with = "present")]
    pub general_audit: Option<RawDevoService>,
    /// `DLP.All`.
    #[serde(default, deserialize_with = "present")]
    pub dlp: Option<RawDevoService>,
    /// The retry service for failed content URIs (not a content type).
    #[serde(default, deserialize_with = "present")]
    pub uri_retry: Option<RawDevoService>,
    /// Service names we do not know.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// One Devo service's parameters.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RawDevoService {
    /// First time to collect, RFC 3339 UTC (`2026-11-20T00:00:00Z`); not in the future.
    pub start_time_in_utc: Option<String>,
    /// Devo tag for every record of this service, replacing
    /// `cloud.office365.management.<workload>`.
    pub override_tag: Option<String>,
    /// Record ids one de-duplication filter generation is sized for.
    #[serde(default, deserialize_with = "lenient_count")]
    pub override_bloom_filter_size: Option<i64>,
    /// Filter generations kept before the oldest is dropped.
    #[serde(default, deserialize_with = "lenient_count")]
    pub override_bloom_filter_buffer_size: Option<i64>,
    /// Keys Devo may add that we do not use.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// One entry of `tenants`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Label in logs, metrics and health records (`input_name`). Default: the tenant id.
    pub name: Option<String>,
    /// `false` skips this tenant (default `true`).
    pub enabled: Option<bool>,
    /// Directory (tenant) id, a GUID.
    #[serde(default, deserialize_with = "lenient_text")]
    pub tenant_id: Option<String>,
    /// Application (client) id, a GUID.
    #[serde(default, deserialize_with = "lenient_text")]
    pub client_id: Option<String>,
    /// How the application proves its identity.
    pub auth: Option<RawAuth>,
    /// `v1` or `v2` (default `v2`).
    pub token_endpoint: Option<String>,
    /// `commercial` (default), `gcc`, `gcc_high`, `dod`, or explicit
    /// `{"api_base": …, "authority_base": …, "resource": …}`.
    pub cloud: Option<RawCloud>,
    /// Extra trusted root certificate (PEM) for the API and authority, e.g. the local simulator's CA.
    pub ca_file: Option<PathBuf>,
    /// `PublisherIdentifier` sent on every API call (default: the tenant id), which gives
    /// this collector its own throttling quota.
    pub publisher_identifier: Option<String>,
    /// API requests per minute for this tenant, listing and downloads together
    /// (default 2000, 1 to 60000).
    pub requests_per_minute: Option<i64>,
    /// Default first time to collect for every stream of this tenant (RFC 3339 UTC).
    pub start_time_in_utc: Option<String>,
    /// Content types to collect, as API names (`Audit.Exchange`) or service names
    /// (`exchange`). Alternative to `services`; absent both: all five.
    pub content_types: Option<Vec<String>>,
    /// Devo-style services map with per-service settings. Alternative to `content_types`.
    pub services: Option<RawTenantServices>,
}

/// `tenants[].auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `client_secret` or `certificate`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `type = client_secret`: the secret (inline, `{"env": …}` or `{"file": …}`).
    pub client_secret: Option<SecretSource>,
    /// `type = certificate`: the certificate registered on the app, PEM.
    pub cert_file: Option<PathBuf>,
    /// `type = certificate`: its unencrypted private key, PEM (PKCS#8 or PKCS#1, RSA ≥ 2048 bits).
    pub key_file: Option<PathBuf>,
    /// `type = certificate`: a PKCS#12 bundle instead of the two PEM files (not supported yet).
    pub pfx_file: Option<PathBuf>,
    /// Password of `pfx_file`.
    pub pfx_password: Option<SecretSource>,
    /// Assertion signature: `RS256` (default) or `PS256`.
    pub alg: Option<String>,
    /// Send the `x5t` header (SHA-1 thumbprint). Default `true`.
    pub x5t: Option<bool>,
    /// Send the `x5t#S256` header (SHA-256 thumbprint). Default `true`.
    pub x5t_s256: Option<bool>,
}

/// `tenants[].services`: Devo's service names with the same per-service settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantServices {
    /// `Audit.AzureActiveDirectory`.
    #[serde(default, deserialize_with = "present")]
    pub azure_active_directory: Option<RawTenantService>,
    /// `Audit.Exchange`.
    #[serde(default, deserialize_with = "present")]
    pub exchange: Option<RawTenantService>,
    /// `Audit.SharePoint`.
    #[serde(default, deserialize_with = "present")]
    pub sharepoint: Option<RawTenantService>,
    /// `Audit.General`.
    #[serde(default, deserialize_with = "present")]
    pub general_audit: Option<RawTenantService>,
    /// `DLP.All`.
    #[serde(default, deserialize_with = "present")]
    pub dlp: Option<RawTenantService>,
    /// The retry service for failed content URIs.
    #[serde(default, deserialize_with = "present")]
    pub uri_retry: Option<RawTenantService>,
}

/// Per-service settings in `tenants[].services` (same meaning as Devo's).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantService {
    /// First time to collect, RFC 3339 UTC; not in the future.
    pub start_time_in_utc: Option<String>,
    /// Devo tag replacing `cloud.office365.management.<workload>`.
    pub override_tag: Option<String>,
    /// Record ids one de-duplication filter generation is sized for.
    pub override_bloom_filter_size: Option<i64>,
    /// Filter generations kept.
    pub override_bloom_filter_buffer_size: Option<i64>,
}

/// `cloud`: a preset name or explicit endpoints.
#[derive(Debug, Clone)]
pub enum RawCloud {
    /// `commercial`, `gcc`, `gcc_high` or `dod`.
    Preset(String),
    /// Explicit hosts.
    Explicit(RawCloudHosts),
}

/// Explicit cloud endpoints.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudHosts {
    /// Management Activity API base URL, e.g. `https://manage.office.com`.
    pub api_base: Option<String>,
    /// Token authority base URL, e.g. `https://login.microsoftonline.com`.
    pub authority_base: Option<String>,
    /// Token audience (default: the `api_base` origin).
    pub resource: Option<String>,
}

impl<'de> Deserialize<'de> for RawCloud {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCloud;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a cloud name (commercial, gcc, gcc_high, dod) or {\"api_base\": …, \"authority_base\": …}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCloud, E> {
                Ok(RawCloud::Preset(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCloud, A::Error> {
                RawCloudHosts::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawCloud::Explicit)
            }
        }
        d.deserialize_any(V)
    }
}

/// `kafka`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `host:port[,host:port…]` (text or list). Absent: the embedded in-process broker,
    /// which keeps nothing across restarts.
    #[serde(default, deserialize_with = "text_or_list")]
    pub bootstrap_servers: Option<String>,
    /// Prefix of every topic name (default `m365`): `m365.uris`, `m365.events` …
    pub topic_prefix: Option<String>,
    /// Partitions of each topic we create (default 6).
    pub partitions: Option<i64>,
    /// Replication factor of topics we create (default: the broker's default).
    pub replication_factor: Option<i64>,
    /// Kafka transactions: `auto` (use them when the broker supports them; default), `on`, `off`.
    pub transactions: Option<String>,
    /// Any librdkafka property, passed through (`security.protocol`, `sasl.mechanism`,
    /// `sasl.password` …). Values may be secret references.
    pub properties: Option<BTreeMap<String, PropertyValue>>,
}

/// `devo`: the forwarder's output. `type` chooses the kind; the other keys apply to some kinds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevoOutput {
    /// `devo_tls`, `devo_http`, `tcp`, `file` or `stdout`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `devo_tls`/`tcp`: host name or IP of the Devo event load balancer or relay,
    /// e.g. `collector-eu.devo.io`.
    pub address: Option<String>,
    /// `devo_tls`/`tcp`: TCP port (default 443).
    pub port: Option<i64>,
    /// `devo_tls`: the domain's client certificate, PEM.
    pub cert_file: Option<PathBuf>,
    /// `devo_tls`: its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// `devo_tls`: the CA chain that verifies the server, PEM.
    pub chain_file: Option<PathBuf>,
    /// `devo_tls`: PKCS#12 bundle instead of the three PEM files (not supported yet).
    pub pkcs12_file: Option<PathBuf>,
    /// Password of `pkcs12_file`.
    pub pkcs12_password: Option<SecretSource>,
    /// `devo_tls`: server name for SNI and certificate check (default: `address`).
    pub sni: Option<String>,
    /// Host name written in each syslog line (default: this machine's host name).
    pub hostname: Option<String>,
    /// Syslog facility 0–23 (default 1, user): PRI = facility × 8 + severity.
    pub facility: Option<i64>,
    /// Syslog severity 0–7 (default 6, info).
    pub severity: Option<i64>,
    /// Syslog date: `devo_sdk` (constant `Jan  1 00:00:00`, as Devo's SDK; default),
    /// `rfc3164` (current UTC time, `Mmm dd hh:mm:ss`) or `rfc3339`.
    pub date_style: Option<String>,
    /// Octet-counted framing (`<length> <line>`), as the SDK's `multiline=True` (default false).
    pub multiline: Option<bool>,
    /// `devo_tls`/`tcp`: send gzip members instead of plain lines, as the SDK's `zip=True`
    /// (default false).
    pub zip: Option<bool>,
    /// Parallel connections (default 1, up to 64).
    pub connections: Option<i64>,
    /// Flush a batch once it holds this many bytes (default 1048576).
    pub batch_max_bytes: Option<i64>,
    /// Flush a non-empty batch after this many milliseconds (default 1000).
    pub batch_max_wait_ms: Option<i64>,
    /// Connect and write timeout in seconds (default 30).
    pub timeout_secs: Option<i64>,
    /// Reconnect after this many idle seconds, before Devo's balancer drops us (default 25).
    pub idle_reconnect_secs: Option<i64>,
    /// Reconnect connections older than this many seconds (default 3600).
    pub max_connection_age_secs: Option<i64>,
    /// Most megabytes of batches the forwarder keeps in memory: waiting to be written, being
    /// written, and written but kept for the commit delay in case their connection turns out
    /// lost (default 256). Throughput is at most about twice this per second.
    pub max_held_mb: Option<i64>,
    /// `devo_http`: ingestion endpoint, e.g. `https://http-eu.devo.io`.
    pub endpoint: Option<String>,
    /// `devo_http`: Devo domain name.
    pub domain: Option<String>,
    /// `devo_http`: HTTP ingestion token (inline, `{"env": …}` or `{"file": …}`).
    pub token: Option<SecretSource>,
    /// `file`: path of the file lines are appended to.
    pub path: Option<PathBuf>,
}

/// `producer`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProducer {
    /// Seconds between listing ticks per stream (default 60).
    pub poll_interval_secs: Option<i64>,
    /// Content younger than this many seconds is not listed yet (default 300).
    pub settle_secs: Option<i64>,
    /// Hours re-listed by the late-content sweep (default 24, at most 168).
    pub sweep_horizon_hours: Option<i64>,
    /// Seconds between late-content sweeps (default 3600).
    pub sweep_interval_secs: Option<i64>,
    /// Seconds to wait before restarting a subscription again (default 900).
    pub subscription_restart_cooldown_secs: Option<i64>,
    /// `group` (default): instances of one configuration share the streams, one owner each;
    /// `none`: this instance runs every stream alone.
    pub coordination: Option<String>,
    /// Producer-group session timeout, ms (default 10000): a dead instance's streams move
    /// after about this long.
    pub group_session_timeout_ms: Option<i64>,
    /// Producer-group heartbeat interval, ms (default 3000; at most a third of the session).
    pub group_heartbeat_interval_ms: Option<i64>,
}

/// `consumer`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    /// Largest single audit record accepted, bytes (default 4194304).
    pub max_record_bytes: Option<i64>,
    /// Largest blob accepted after decompression, bytes (default 536870912).
    pub max_blob_bytes: Option<i64>,
    /// Blobs downloaded at once per process (default 4).
    pub download_concurrency: Option<i64>,
    /// Devo tag for records without a `Workload` (default `cloud.office365.management.unknown`).
    pub fallback_tag: Option<String>,
    /// Target false-positive rate of the de-duplication filter (default 1e-9); a false
    /// positive drops a genuine record.
    pub bloom_false_positive_rate: Option<f64>,
    /// Default of `override_bloom_filter_size` (default 1000000).
    pub bloom_filter_size: Option<i64>,
    /// Default of `override_bloom_filter_buffer_size` (default 2).
    pub bloom_filter_buffer_size: Option<i64>,
}

/// `uri_retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUriRetry {
    /// Give up after this many attempts (default: retry until the content expires).
    pub max_attempts: Option<i64>,
    /// First retry delay in seconds, doubled each attempt (default 30).
    pub backoff_base_secs: Option<i64>,
    /// Longest retry delay in seconds (default 3600).
    pub backoff_max_secs: Option<i64>,
}

/// `metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `/metrics`, `/healthz`, `/readyz` (default true).
    pub enabled: Option<bool>,
    /// `ip:port` to listen on (default `0.0.0.0:9464`).
    pub listen_address: Option<String>,
}

/// `health`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Seconds between heartbeat status records (default 60).
    pub heartbeat_secs: Option<i64>,
    /// Devo tag under which health records are forwarded (default `my.app.m365devo.health`).
    pub tag: Option<String>,
}

/// `logging`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or a filter such as
    /// `info,m365_common=debug`.
    pub level: Option<String>,
    /// One JSON object per line instead of human-readable text (default false).
    pub json: Option<bool>,
}

/// A key present with a null value (`exchange:` in YAML) still means "enabled".
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Text, or an integer taken as its decimal text (YAML reads `id: 12345` as a number).
fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("text")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// A whole number, or text holding one (Devo templates sometimes quote numbers).
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("number too large"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| E::custom("expected a whole number"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// `"a:9092,b:9092"` or `["a:9092", "b:9092"]`, as comma-separated text.
fn text_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"host:port,host:port\" or a list of \"host:port\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut parts = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                parts.push(s);
            }
            Ok(Some(parts.join(",")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}
