//! The consumer's runtime settings, built from the `consumer`, `uri_retry` and `health`
//! sections of a validated configuration, and the per-tenant view the loops use.
//!
//! Mapping of Devo's per-service dedup options onto [`DedupSettings`]: the configuration
//! documents `override_bloom_filter_size` as the ids one filter generation is sized for and
//! `override_bloom_filter_buffer_size` as the generations kept, so a stream's filter remembers
//! at least `size × buffer` ids (`expected_items`) in generations of `size` ids. The allowed
//! expected false drops over that horizon is the stricter of design.md's 0.001 and
//! `consumer.bloom_false_positive_rate × expected_items`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use m365_common::api::ApiClient;
use m365_common::config::Config;

use crate::dedup::{DEFAULT_MAX_EXPECTED_FALSE_DROPS, DedupSettings};
use crate::split::SplitLimits;

/// Default tag of records without a `Workload` (the config's default is the same).
pub const DEFAULT_FALLBACK_TAG: &str = "cloud.office365.management.unknown";

/// Retry policy of failed blobs (the `uri_retry` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up after this many attempts; `None`: until the content expires.
    pub max_attempts: Option<u32>,
    /// First delay, doubled per attempt (equal jitter: half fixed, half random).
    pub backoff_base: Duration,
    /// Longest delay.
    pub backoff_max: Duration,
    /// Downloads whose body had damaged elements (invalid JSON or UTF-8) are retried this many
    /// times, in case the damage happened in transit; after that the intact records are kept
    /// and the damaged elements reported.
    pub damaged_body_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: None,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            damaged_body_retries: 3,
        }
    }
}

/// How the consumer and the uri_retry service run. Defaults suit production; tests shorten.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Names this instance: part of its Kafka transactional ids. Must be stable across restarts
    /// (a restart then fences and aborts the previous run's open transaction) and unique among
    /// running instances.
    pub instance_id: String,
    /// This process run, stamped on health records.
    pub job_id: String,
    /// Limits of the blob splitter (record cap from `consumer.max_record_bytes`).
    pub split: SplitLimits,
    /// Tag of records without a `Workload`.
    pub fallback_tag: String,
    /// Retry policy of failed blobs.
    pub retry: RetryPolicy,
    /// Most events produced and not yet acknowledged, per blob.
    pub max_in_flight_records: usize,
    /// Most event bytes produced and not yet acknowledged, per blob (bounds memory).
    pub max_in_flight_bytes: usize,
    /// A stream's dedup snapshot is written at most this often, the first one this long after
    /// its filter was loaded (and on clean shutdown); ids after the last snapshot are
    /// recovered from `m365.events`.
    pub snapshot_interval: Duration,
    /// Largest part of a dedup snapshot on `m365.state`.
    pub snapshot_part_bytes: usize,
    /// Kafka transaction timeout (a 300 MB blob is one transaction).
    pub transaction_timeout: Duration,
    /// Period of heartbeat records on `m365.health`.
    pub heartbeat_interval: Duration,
    /// Group session timeout: how long a member that vanished (killed, partitioned) keeps its
    /// partitions before the group moves them.
    pub session_timeout: Duration,
    /// Stage 1 (download `m365.uris`) runs.
    pub run_consumer: bool,
    /// Stage 2 (the uri_retry service on `m365.uris.retry`) runs.
    pub run_uri_retry: bool,
    /// In one process with the forwarder on the embedded broker (transactions off): event
    /// sends wait while the forwarder is this far behind (see
    /// [`Backlog`](m365_common::backlog::Backlog)). `None` elsewhere.
    pub backlog: Option<std::sync::Arc<m365_common::backlog::Backlog>>,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            instance_id: "0".into(),
            job_id: m365_common::health::new_job_id(),
            split: SplitLimits::default(),
            fallback_tag: DEFAULT_FALLBACK_TAG.into(),
            retry: RetryPolicy::default(),
            max_in_flight_records: 10_000,
            max_in_flight_bytes: 16 << 20,
            snapshot_interval: Duration::from_secs(60),
            snapshot_part_bytes: 900 * 1024,
            transaction_timeout: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(60),
            session_timeout: Duration::from_secs(45),
            run_consumer: true,
            run_uri_retry: true,
            backlog: None,
        }
    }
}

impl ConsumerSettings {
    /// The settings of a validated configuration. The uri_retry service runs when any tenant
    /// enables it.
    pub fn from_config(cfg: &Config) -> Self {
        let c = &cfg.consumer;
        let r = &cfg.uri_retry;
        ConsumerSettings {
            split: SplitLimits {
                max_record_bytes: usize::try_from(c.max_record_bytes).unwrap_or(usize::MAX),
                ..SplitLimits::default()
            },
            fallback_tag: c.fallback_tag.clone(),
            retry: RetryPolicy {
                max_attempts: r.max_attempts,
                backoff_base: Duration::from_secs(r.backoff_base_secs),
                backoff_max: Duration::from_secs(r.backoff_max_secs),
                ..RetryPolicy::default()
            },
            heartbeat_interval: Duration::from_secs(cfg.health.heartbeat_secs.max(1)),
            run_uri_retry: cfg.uri_retry_enabled(),
            ..ConsumerSettings::default()
        }
    }

    /// Kafka group id of stage 1.
    pub fn group_id(prefix: &str) -> String {
        format!("{prefix}-consumer")
    }

    /// Kafka group id of the uri_retry service.
    pub fn retry_group_id(prefix: &str) -> String {
        format!("{prefix}-uri-retry")
    }
}

/// Per-stream options of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptions {
    /// Replaces the workload tag for every record of the stream.
    pub override_tag: Option<String>,
    /// Dedup filter sizing.
    pub dedup: DedupSettings,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            override_tag: None,
            dedup: dedup_settings(1_000_000, 2, 1e-9),
        }
    }
}

/// One tenant the consumer serves.
#[derive(Debug, Clone)]
pub struct ConsumerTenant {
    /// Directory id (as on `m365.uris`).
    pub tenant_id: String,
    /// Label for health records (`input_name`).
    pub name: String,
    /// The tenant's API client (token client and rate governor shared with other users).
    pub api: Arc<ApiClient>,
    /// Options by content type (`Audit.Exchange` …); a content type not listed gets defaults.
    pub streams: HashMap<String, StreamOptions>,
    /// Failed blobs go to the retry topic (else straight to the dead topic).
    pub uri_retry: bool,
}

impl ConsumerTenant {
    /// Options of `content_type` (defaults when it is not configured).
    pub fn stream(&self, content_type: &str) -> StreamOptions {
        self.streams.get(content_type).cloned().unwrap_or_default()
    }
}

/// Dedup settings from the config's per-service values (see the module docs).
pub fn dedup_settings(size: u64, buffer: u64, false_positive_rate: f64) -> DedupSettings {
    let size = size.max(1);
    let expected = size.saturating_mul(buffer.max(1));
    let by_rate = false_positive_rate * expected as f64;
    let allowed = if by_rate.is_finite() && by_rate > 0.0 {
        by_rate.min(DEFAULT_MAX_EXPECTED_FALSE_DROPS)
    } else {
        DEFAULT_MAX_EXPECTED_FALSE_DROPS
    };
    DedupSettings {
        expected_items: expected,
        generation_items: size,
        max_expected_false_drops: allowed,
    }
}

/// The consumer's view of the tenants built by `m365_common::runtime::build_tenants`.
pub fn tenants_from_runtime(
    cfg: &Config,
    tenants: &[m365_common::runtime::TenantRuntime],
) -> Vec<ConsumerTenant> {
    let fp = cfg.consumer.bloom_false_positive_rate;
    tenants
        .iter()
        .map(|t| ConsumerTenant {
            tenant_id: t.settings.tenant_id.clone(),
            name: t.settings.name.clone(),
            api: t.api.clone(),
            streams: t
                .settings
                .streams
                .iter()
                .map(|s| {
                    (
                        s.content_type.as_str().to_string(),
                        StreamOptions {
                            override_tag: s.override_tag.clone(),
                            dedup: dedup_settings(
                                s.bloom_filter_size,
                                s.bloom_filter_buffer_size,
                                fp,
                            ),
                        },
                    )
                })
                .collect(),
            uri_retry: t.settings.uri_retry,
        })
        .collect()
}
