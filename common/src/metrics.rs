//! Prometheus metrics, `/healthz` and `/readyz` for every binary (design.md §8).
//!
//! # Pieces
//! - [`MetricDef`] and [`ALL_METRICS`]: every metric name of the project, in one table
//!   (`m365_<stage>_<what>_<unit>`), with its type, labels and help text. Dashboards and alerts
//!   are written against this table; nothing else names a metric.
//! - [`new_registry`]: an explicit registry (never the global one, so tests share nothing)
//!   with the process collector (RSS, CPU, open files) registered.
//! - [`ScrapeCollector`]: exports counters the stages already keep as atomics, read at scrape
//!   time, so no hot path changes for metrics.
//! - [`register_api`]: request, throttle, retry and token counters of the API clients.
//! - [`Readiness`]: named components (token per tenant, Kafka, output) that the stages and
//!   probes set; `/readyz` answers 200 when all are ready, else 503 naming the others.
//! - [`spawn_token_probe`] and [`spawn_kafka_monitor`]: periodic checks behind readiness, and
//!   the Kafka consumer lag per group, topic and partition ([`consumer_lag`]).
//! - [`serve`] / [`serve_from_config`]: the HTTP server (axum) on the configured address.
//! - [`scrape`] and [`Scraped`]: fetch and parse the text format (tests, `doctor`).
//!
//! Labels carry tenant ids, content types, tags, endpoints and outcome codes, never a secret.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::auth::TokenClient;
use crate::config::MetricsSettings;
use crate::kafka::{KafkaSettings, QuietContext};

/// The `prometheus` crate, re-exported so the stages use exactly this version.
pub use prometheus;

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: cannot register {what}: {source}")]
    Register {
        what: String,
        source: prometheus::Error,
    },
    #[error("metrics: cannot create the Kafka client for {what}: {source}")]
    KafkaClient {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("metrics: Kafka call for {what} failed: {source}")]
    Kafka {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("metrics: scraping {url} failed: {source}")]
    Scrape { url: String, source: reqwest::Error },
}

impl MetricsError {
    /// A fixed label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            MetricsError::Bind { .. } => "bind",
            MetricsError::Register { .. } => "register",
            MetricsError::KafkaClient { .. } => "kafka_client",
            MetricsError::Kafka { .. } => "kafka",
            MetricsError::Scrape { .. } => "scrape",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The one table of metric names.
// ---------------------------------------------------------------------------------------------

/// Counter (only goes up) or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One metric: name, type, label names and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
        labels,
        help,
    }
}

const fn gauge(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Gauge,
        labels,
        help,
    }
}

// --- API client and tokens (registered by `register_api`) ---
pub const API_REQUESTS: MetricDef = counter(
    "m365_api_requests_total",
    &["tenant", "endpoint", "outcome"],
    "Management Activity API requests by endpoint and outcome (HTTP status, AF code or transport error).",
);
pub const API_THROTTLES: MetricDef = counter(
    "m365_api_throttles_total",
    &["tenant"],
    "Throttled API responses (429 / AF429).",
);
pub const API_RETRIES: MetricDef = counter(
    "m365_api_retries_total",
    &["tenant"],
    "API requests retried after a transient failure or throttling.",
);
pub const API_TOKEN_REJECTIONS: MetricDef = counter(
    "m365_api_token_rejections_total",
    &["tenant"],
    "Access tokens the API refused (401), each dropped and fetched again.",
);
pub const AUTH_TOKENS_ISSUED: MetricDef = counter(
    "m365_auth_tokens_issued_total",
    &["tenant"],
    "Access tokens fetched from the token endpoint.",
);
pub const API_CLOCK_SKEW: MetricDef = gauge(
    "m365_api_clock_skew_seconds",
    &["tenant"],
    "Server clock minus local clock, from the HTTP Date header.",
);

// --- Producer (registered by `m365_producer::metrics::register`) ---
pub const PRODUCER_WINDOWS_LISTED: MetricDef = counter(
    "m365_producer_windows_listed_total",
    &[],
    "Listing windows requested (each may span several pages).",
);
pub const PRODUCER_BLOBS_EMITTED: MetricDef = counter(
    "m365_producer_blobs_emitted_total",
    &[],
    "Blobs listed and produced to the URI topic.",
);
pub const PRODUCER_BLOBS_ALREADY_EMITTED: MetricDef = counter(
    "m365_producer_blobs_already_emitted_total",
    &[],
    "Blobs listed again (overlaps, sweeps) and skipped thanks to the ledger.",
);
pub const PRODUCER_LATE_BLOBS: MetricDef = counter(
    "m365_producer_late_blobs_total",
    &[],
    "Blobs found by the late-content sweep.",
);
pub const PRODUCER_GAPS: MetricDef = counter(
    "m365_producer_gaps_total",
    &[],
    "Listing windows clamped to the 7-day horizon (each a gap record).",
);
pub const PRODUCER_TICK_ERRORS: MetricDef = counter(
    "m365_producer_tick_errors_total",
    &[],
    "Stream ticks that ended in an error (retried with backoff).",
);
pub const PRODUCER_SUBSCRIPTIONS_STARTED: MetricDef = counter(
    "m365_producer_subscriptions_started_total",
    &[],
    "Subscriptions started or restarted.",
);
pub const PRODUCER_CURSOR_LAG: MetricDef = gauge(
    "m365_producer_cursor_lag_seconds",
    &["tenant", "content_type"],
    "Server time minus the stream's cursor (listed until); near the settle time when caught up.",
);
pub const PRODUCER_HORIZON_REMAINING: MetricDef = gauge(
    "m365_producer_horizon_remaining_seconds",
    &["tenant", "content_type"],
    "Cursor minus (server time - 7 days): seconds before unlisted content falls off the API.",
);
pub const PRODUCER_CURSOR_TIMESTAMP: MetricDef = gauge(
    "m365_producer_cursor_timestamp_seconds",
    &["tenant", "content_type"],
    "The stream's cursor as a Unix time.",
);

// --- Consumer and uri_retry (registered by `m365_consumer::metrics::register`) ---
pub const CONSUMER_BLOBS_FETCHED: MetricDef = counter(
    "m365_consumer_blobs_fetched_total",
    &[],
    "Blobs downloaded completely and committed.",
);
pub const CONSUMER_BLOBS_RETRIED: MetricDef = counter(
    "m365_consumer_blobs_retried_total",
    &[],
    "Blobs sent to the retry topic.",
);
pub const CONSUMER_BLOBS_DEAD: MetricDef = counter(
    "m365_consumer_blobs_dead_total",
    &[],
    "Blobs sent to the dead topic (each also a gap record).",
);
pub const CONSUMER_URIS_REFUSED: MetricDef = counter(
    "m365_consumer_uris_refused_total",
    &[],
    "Content URIs refused without a request (not on the tenant's API base).",
);
pub const CONSUMER_RETRIES_REQUEUED: MetricDef = counter(
    "m365_consumer_retries_requeued_total",
    &[],
    "Retry messages handed back to the URI topic by the uri_retry service.",
);
pub const CONSUMER_RECORDS_IN: MetricDef = counter(
    "m365_consumer_records_in_total",
    &[],
    "Audit records read from blobs, before deduplication.",
);
pub const CONSUMER_RECORDS_DEDUPLICATED: MetricDef = counter(
    "m365_consumer_records_deduplicated_total",
    &[],
    "Audit records dropped as already seen on their stream.",
);
pub const CONSUMER_RECORDS_OUT: MetricDef = counter(
    "m365_consumer_records_out_total",
    &["tag"],
    "Audit records produced to the events topic, by Devo tag.",
);
pub const CONSUMER_RECORDS_WITHOUT_WORKLOAD: MetricDef = counter(
    "m365_consumer_records_without_workload_total",
    &[],
    "Audit records without a Workload (sent with the fallback tag).",
);
pub const CONSUMER_ELEMENTS_REJECTED: MetricDef = counter(
    "m365_consumer_elements_rejected_total",
    &["reason"],
    "Blob elements that were not audit records, by reason.",
);
pub const CONSUMER_DEDUP_RESTORED: MetricDef = counter(
    "m365_consumer_dedup_restored_total",
    &[],
    "Dedup filters restored from a snapshot.",
);
pub const CONSUMER_DEDUP_REPLAYED_IDS: MetricDef = counter(
    "m365_consumer_dedup_replayed_ids_total",
    &[],
    "Record ids recovered from the events topic after a snapshot.",
);
pub const CONSUMER_DEDUP_SNAPSHOTS: MetricDef = counter(
    "m365_consumer_dedup_snapshots_total",
    &[],
    "Dedup snapshots written.",
);
pub const CONSUMER_SESSION_RESTARTS: MetricDef = counter(
    "m365_consumer_session_restarts_total",
    &[],
    "Kafka sessions restarted after an error.",
);

// --- Forwarder (names reserved here; registered by the forwarder's metrics module) ---
pub const FORWARDER_EVENTS_IN: MetricDef = counter(
    "m365_forwarder_events_in_total",
    &[],
    "Records read from the events topic.",
);
pub const FORWARDER_HEALTH_IN: MetricDef = counter(
    "m365_forwarder_health_in_total",
    &[],
    "Records read from the health topic.",
);
pub const FORWARDER_LINES: MetricDef = counter(
    "m365_forwarder_lines_total",
    &["tag"],
    "Lines delivered to Devo, by tag.",
);
pub const FORWARDER_BYTES: MetricDef = counter(
    "m365_forwarder_bytes_total",
    &["tag"],
    "Bytes delivered to Devo (framed, before compression), by tag.",
);
pub const FORWARDER_CONNECTS: MetricDef = counter(
    "m365_forwarder_connects_total",
    &[],
    "Connections to the output opened, including the first.",
);
pub const FORWARDER_RECONNECTS: MetricDef = counter(
    "m365_forwarder_reconnects_total",
    &[],
    "Reconnections to the output (idle, age, EOF or error).",
);
pub const FORWARDER_CONNECT_FAILURES: MetricDef = counter(
    "m365_forwarder_connect_failures_total",
    &[],
    "Failed connection attempts to the output.",
);
pub const FORWARDER_WRITE_ERRORS: MetricDef = counter(
    "m365_forwarder_write_errors_total",
    &[],
    "Writes to the output that failed.",
);
pub const FORWARDER_BATCHES: MetricDef = counter(
    "m365_forwarder_batches_total",
    &[],
    "Batches written and flushed.",
);
pub const FORWARDER_BATCHES_RESENT: MetricDef = counter(
    "m365_forwarder_batches_resent_total",
    &[],
    "Batches written again after an output failure.",
);
pub const FORWARDER_BATCH_LATENCY_SUM: MetricDef = counter(
    "m365_forwarder_batch_latency_seconds_sum",
    &[],
    "Total time spent writing and flushing batches.",
);
pub const FORWARDER_BATCH_LATENCY_COUNT: MetricDef = counter(
    "m365_forwarder_batch_latency_seconds_count",
    &[],
    "Batches timed (divide the sum by this for the mean latency).",
);
pub const FORWARDER_BATCH_LATENCY_MAX: MetricDef = gauge(
    "m365_forwarder_batch_latency_seconds_max",
    &[],
    "Longest batch write-and-flush time since start.",
);
pub const FORWARDER_COMMITS: MetricDef = counter(
    "m365_forwarder_commits_total",
    &[],
    "Offset commits after delivered batches.",
);
pub const FORWARDER_COMMIT_FAILURES: MetricDef = counter(
    "m365_forwarder_commit_failures_total",
    &[],
    "Offset commits that failed.",
);
pub const FORWARDER_PAUSES: MetricDef = counter(
    "m365_forwarder_pauses_total",
    &[],
    "Times consumption paused because the output was down.",
);
pub const FORWARDER_REBALANCES: MetricDef = counter(
    "m365_forwarder_rebalances_total",
    &[],
    "Consumer group rebalances seen.",
);

// --- Kafka and readiness (registered by `spawn_kafka_monitor` / `Readiness::register`) ---
pub const KAFKA_CONSUMER_LAG: MetricDef = gauge(
    "m365_kafka_consumer_lag_messages",
    &["group", "topic", "partition"],
    "High watermark minus the group's committed offset (transaction markers count as one).",
);
pub const KAFKA_BROKER_REACHABLE: MetricDef = gauge(
    "m365_kafka_broker_reachable",
    &[],
    "1 when the last metadata request to the brokers succeeded.",
);
pub const KAFKA_PROBE_FAILURES: MetricDef = counter(
    "m365_kafka_probe_failures_total",
    &[],
    "Metadata or offset requests of the Kafka monitor that failed.",
);
pub const READY: MetricDef = gauge(
    "m365_ready",
    &["component"],
    "1 when the readiness component is ready (token per tenant, kafka, output).",
);

/// Every metric of the project. Process metrics (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds` …) come from the `prometheus` crate and
/// are not listed.
pub const ALL_METRICS: &[MetricDef] = &[
    API_REQUESTS,
    API_THROTTLES,
    API_RETRIES,
    API_TOKEN_REJECTIONS,
    AUTH_TOKENS_ISSUED,
    API_CLOCK_SKEW,
    PRODUCER_WINDOWS_LISTED,
    PRODUCER_BLOBS_EMITTED,
    PRODUCER_BLOBS_ALREADY_EMITTED,
    PRODUCER_LATE_BLOBS,
    PRODUCER_GAPS,
    PRODUCER_TICK_ERRORS,
    PRODUCER_SUBSCRIPTIONS_STARTED,
    PRODUCER_CURSOR_LAG,
    PRODUCER_HORIZON_REMAINING,
    PRODUCER_CURSOR_TIMESTAMP,
    CONSUMER_BLOBS_FETCHED,
    CONSUMER_BLOBS_RETRIED,
    CONSUMER_BLOBS_DEAD,
    CONSUMER_URIS_REFUSED,
    CONSUMER_RETRIES_REQUEUED,
    CONSUMER_RECORDS_IN,
    CONSUMER_RECORDS_DEDUPLICATED,
    CONSUMER_RECORDS_OUT,
    CONSUMER_RECORDS_WITHOUT_WORKLOAD,
    CONSUMER_ELEMENTS_REJECTED,
    CONSUMER_DEDUP_RESTORED,
    CONSUMER_DEDUP_REPLAYED_IDS,
    CONSUMER_DEDUP_SNAPSHOTS,
    CONSUMER_SESSION_RESTARTS,
    FORWARDER_EVENTS_IN,
    FORWARDER_HEALTH_IN,
    FORWARDER_LINES,
    FORWARDER_BYTES,
    FORWARDER_CONNECTS,
    FORWARDER_RECONNECTS,
    FORWARDER_CONNECT_FAILURES,
    FORWARDER_WRITE_ERRORS,
    FORWARDER_BATCHES,
    FORWARDER_BATCHES_RESENT,
    FORWARDER_BATCH_LATENCY_SUM,
    FORWARDER_BATCH_LATENCY_COUNT,
    FORWARDER_BATCH_LATENCY_MAX,
    FORWARDER_COMMITS,
    FORWARDER_COMMIT_FAILURES,
    FORWARDER_PAUSES,
    FORWARDER_REBALANCES,
    KAFKA_CONSUMER_LAG,
    KAFKA_BROKER_REACHABLE,
    KAFKA_PROBE_FAILURES,
    READY,
];

// ---------------------------------------------------------------------------------------------
// Registry and the scrape-time collector.
// ---------------------------------------------------------------------------------------------

/// A fresh registry with the process collector (RSS, CPU seconds, open files, threads).
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = registry.register(Box::new(pc)) {
            // Only a name clash could refuse it, and the registry is new.
            tracing::warn!(error = %e, "The process metrics could not be registered.");
        }
    }
    registry
}

/// Values gathered during one scrape by a [`ScrapeCollector`]'s reader.
#[derive(Debug, Default)]
pub struct Scrape {
    values: HashMap<&'static str, Vec<(Vec<String>, f64)>>,
}

impl Scrape {
    /// Adds `value` to the series of `def` with these label values (in `def.labels` order).
    /// Adding to the same series twice sums the values.
    pub fn add(&mut self, def: &MetricDef, labels: &[&str], value: f64) {
        debug_assert_eq!(
            labels.len(),
            def.labels.len(),
            "label values of {}",
            def.name
        );
        if labels.len() != def.labels.len() || !value.is_finite() {
            return;
        }
        self.values
            .entry(def.name)
            .or_default()
            .push((labels.iter().map(|s| s.to_string()).collect(), value));
    }

    /// Adds an integer counter value.
    pub fn add_u64(&mut self, def: &MetricDef, labels: &[&str], value: u64) {
        self.add(def, labels, value as f64);
    }
}

type Reader = Box<dyn Fn(&mut Scrape) + Send + Sync>;

/// A collector that reads its values when scraped: the stages keep their counters as atomics
/// and `read` copies them into a [`Scrape`].
pub struct ScrapeCollector {
    defs: Vec<MetricDef>,
    descs: Vec<Desc>,
    read: Reader,
}

impl ScrapeCollector {
    /// A collector of the metrics `defs`, filled by `read` at every scrape.
    pub fn new(
        defs: &[MetricDef],
        read: impl Fn(&mut Scrape) + Send + Sync + 'static,
    ) -> Result<Self, MetricsError> {
        let descs = defs
            .iter()
            .map(|d| {
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    d.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .map_err(|source| MetricsError::Register {
                    what: d.name.to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            defs: defs.to_vec(),
            descs,
            read: Box::new(read),
        })
    }

    /// Registers the collector with `registry`.
    pub fn register(self, registry: &Registry) -> Result<(), MetricsError> {
        let what = self
            .defs
            .iter()
            .map(|d| d.name)
            .collect::<Vec<_>>()
            .join(", ");
        registry
            .register(Box::new(self))
            .map_err(|source| MetricsError::Register { what, source })
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut scrape = Scrape::default();
        (self.read)(&mut scrape);
        let mut out = Vec::with_capacity(self.defs.len());
        for def in &self.defs {
            let opts = Opts::new(def.name, def.help);
            let samples = scrape.values.remove(def.name).unwrap_or_default();
            // Names and labels were validated by `Desc::new` in `new`, so these cannot fail.
            match def.kind {
                MetricKind::Counter => {
                    let Ok(vec) = CounterVec::new(opts, def.labels) else {
                        continue;
                    };
                    for (labels, v) in &samples {
                        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                        if let Ok(c) = vec.get_metric_with_label_values(&refs) {
                            c.inc_by(v.max(0.0));
                        }
                    }
                    out.extend(vec.collect());
                }
                MetricKind::Gauge => {
                    let Ok(vec) = GaugeVec::new(opts, def.labels) else {
                        continue;
                    };
                    for (labels, v) in &samples {
                        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                        if let Ok(g) = vec.get_metric_with_label_values(&refs) {
                            g.add(*v);
                        }
                    }
                    out.extend(vec.collect());
                }
            }
        }
        out
    }
}

/// Registers the API metrics ([`API_REQUESTS`], throttles, retries, token rejections, tokens
/// issued, clock skew) of `clients`. Register each process's clients once: in the all-in-one
/// binary pass every stage's clients in one call (clients of the same tenant are summed).
pub fn register_api(registry: &Registry, clients: Vec<Arc<ApiClient>>) -> Result<(), MetricsError> {
    let mut unique: Vec<Arc<ApiClient>> = Vec::new();
    for c in clients {
        if !unique.iter().any(|u| Arc::ptr_eq(u, &c)) {
            unique.push(c);
        }
    }
    ScrapeCollector::new(
        &[
            API_REQUESTS,
            API_THROTTLES,
            API_RETRIES,
            API_TOKEN_REJECTIONS,
            AUTH_TOKENS_ISSUED,
            API_CLOCK_SKEW,
        ],
        move |s| {
            let mut token_clients: Vec<&Arc<TokenClient>> = Vec::new();
            for c in &unique {
                let tenant = c.tenant_id();
                let counters = c.counters();
                for (endpoint, outcome, n) in counters.snapshot() {
                    s.add_u64(&API_REQUESTS, &[tenant, endpoint.as_str(), &outcome], n);
                }
                s.add_u64(&API_THROTTLES, &[tenant], counters.throttles());
                s.add_u64(&API_RETRIES, &[tenant], counters.retries());
                s.add_u64(&API_TOKEN_REJECTIONS, &[tenant], counters.token_refreshes());
                s.add(
                    &API_CLOCK_SKEW,
                    &[tenant],
                    c.skew().num_milliseconds() as f64 / 1000.0,
                );
                // Clients may share one token client; count its tokens once.
                if !token_clients.iter().any(|t| Arc::ptr_eq(t, c.tokens())) {
                    token_clients.push(c.tokens());
                }
            }
            for t in token_clients {
                s.add_u64(&AUTH_TOKENS_ISSUED, &[t.tenant()], t.tokens_fetched());
            }
        },
    )?
    .register(registry)
}

// ---------------------------------------------------------------------------------------------
// Readiness.
// ---------------------------------------------------------------------------------------------

/// Readiness component: the Kafka brokers answer metadata requests.
pub const READY_KAFKA: &str = "kafka";
/// Readiness component: the stage's output (its Kafka producer, or the Devo connection).
pub const READY_OUTPUT: &str = "output";

/// Readiness component name of a tenant's token: `token:<tenant id>`.
pub fn ready_token(tenant: &str) -> String {
    format!("token:{tenant}")
}

/// A readiness component that someone sets.
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

enum Component {
    Flag(ReadyFlag),
    Probe(Probe),
}

impl Component {
    fn ready(&self) -> bool {
        match self {
            Component::Flag(f) => f.get(),
            Component::Probe(p) => p(),
        }
    }
}

/// The required components of a process and whether each is ready. Shared by the stages
/// (which set flags or add probes) and `/readyz` (which reads them).
#[derive(Default)]
pub struct Readiness {
    components: Mutex<BTreeMap<String, Component>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("status", &self.status())
            .finish()
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyStatus {
    pub ready: bool,
    /// Components not ready, by name.
    pub not_ready: Vec<String>,
    /// Every component and whether it is ready.
    pub components: BTreeMap<String, bool>,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Component>> {
        // The map is only ever inserted into; a panic elsewhere leaves it consistent.
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The required component `name`, not ready until set. Asking again for the same name
    /// returns the same flag.
    pub fn flag(&self, name: impl Into<String>) -> ReadyFlag {
        let mut m = self.lock();
        let name = name.into();
        if let Some(Component::Flag(f)) = m.get(&name) {
            return f.clone();
        }
        let f = ReadyFlag::default();
        m.insert(name, Component::Flag(f.clone()));
        f
    }

    /// The required component `name`, ready when `probe` says so (called at every check; it
    /// must be quick and must not block).
    pub fn probe(&self, name: impl Into<String>, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.lock()
            .insert(name.into(), Component::Probe(Arc::new(probe)));
    }

    /// The state of every component now.
    pub fn status(&self) -> ReadyStatus {
        let components: BTreeMap<String, bool> = self
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.ready()))
            .collect();
        let not_ready: Vec<String> = components
            .iter()
            .filter(|(_, r)| !**r)
            .map(|(k, _)| k.clone())
            .collect();
        ReadyStatus {
            ready: not_ready.is_empty(),
            not_ready,
            components,
        }
    }

    /// Exports [`READY`] (`m365_ready{component}`) into `registry`.
    pub fn register(self: &Arc<Self>, registry: &Registry) -> Result<(), MetricsError> {
        let me = self.clone();
        ScrapeCollector::new(&[READY], move |s| {
            for (name, ready) in me.status().components {
                s.add(&READY, &[&name], if ready { 1.0 } else { 0.0 });
            }
        })?
        .register(registry)
    }
}

/// Keeps the `token:<tenant>` readiness components current: every `interval` each token
/// client is asked for a token (the cached one while valid, so this costs no request until a
/// refresh is due). A tenant is ready once a token was had and until a refresh fails with no
/// valid token left.
pub fn spawn_token_probe(
    readiness: &Readiness,
    tokens: Vec<Arc<TokenClient>>,
    interval: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let mut unique: Vec<Arc<TokenClient>> = Vec::new();
    for t in tokens {
        if !unique.iter().any(|u| Arc::ptr_eq(u, &t)) {
            unique.push(t);
        }
    }
    let probes: Vec<(Arc<TokenClient>, ReadyFlag)> = unique
        .into_iter()
        .map(|t| {
            let flag = readiness.flag(ready_token(t.tenant()));
            (t, flag)
        })
        .collect();
    tokio::spawn(async move {
        loop {
            for (client, flag) in &probes {
                let ok = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = client.token() => match r {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::debug!(tenant = %client.tenant(), error = %e, "Readiness: no valid token.");
                            false
                        }
                    },
                };
                flag.set(ok);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Kafka: reachability and consumer lag.
// ---------------------------------------------------------------------------------------------

/// A consumer group and topic whose lag to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTopic {
    pub group_id: String,
    pub topic: String,
}

impl GroupTopic {
    pub fn new(group_id: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            topic: topic.into(),
        }
    }
}

/// The lag of one partition for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset (next to read), `None` if the group committed nothing.
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
    /// `high − committed`; without a commit `high − low` (everything retained is pending).
    pub lag: i64,
}

type LagConsumer = BaseConsumer<QuietContext>;

fn lag_client(settings: &KafkaSettings, group_id: &str) -> Result<LagConsumer, MetricsError> {
    // A consumer that never subscribes does not join the group; it only reads its offsets.
    settings
        .consumer_config(group_id)
        .create_with_context(QuietContext)
        .map_err(|source| MetricsError::KafkaClient {
            what: format!("lag of group {group_id}"),
            source,
        })
}

fn lag_blocking(
    consumer: &LagConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, MetricsError> {
    let kafka = |what: &str| {
        let what = format!("{what} of {topic}");
        move |source| MetricsError::Kafka { what, source }
    };
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka("metadata"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(kafka("committed offsets"))?;
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka("watermarks"))?;
        let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let lag = match committed {
            Some(c) => (high - c).max(0),
            None => (high - low).max(0),
        };
        out.push(PartitionLag {
            partition: p,
            committed,
            low,
            high,
            lag,
        });
    }
    Ok(out)
}

/// The lag of `group_id` on every partition of `topic`, now (runs on a blocking thread).
pub async fn consumer_lag(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, MetricsError> {
    let consumer = lag_client(settings, group_id)?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || lag_blocking(&consumer, &topic, timeout))
        .await
        .unwrap_or_else(|e| {
            Err(MetricsError::Kafka {
                what: format!("lag task ({e})"),
                source: rdkafka::error::KafkaError::Canceled,
            })
        })
}

/// What the Kafka monitor last saw.
#[derive(Debug, Default)]
struct KafkaView {
    reachable: bool,
    failures: u64,
    lag: BTreeMap<(String, String, i32), i64>,
}

/// Options of [`spawn_kafka_monitor`].
#[derive(Debug, Clone)]
pub struct KafkaMonitorSettings {
    /// Time between two checks.
    pub interval: Duration,
    /// Timeout of each Kafka request.
    pub timeout: Duration,
    /// Consumer groups whose lag to export.
    pub groups: Vec<GroupTopic>,
}

impl Default for KafkaMonitorSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            groups: Vec::new(),
        }
    }
}

/// Checks the brokers every `interval`: a metadata request sets the [`READY_KAFKA`]
/// readiness component and [`KAFKA_BROKER_REACHABLE`]; the committed offsets and watermarks
/// of each group give [`KAFKA_CONSUMER_LAG`]. Call once per process with every group.
pub fn spawn_kafka_monitor(
    kafka: &KafkaSettings,
    monitor: KafkaMonitorSettings,
    registry: &Registry,
    readiness: &Readiness,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, MetricsError> {
    let probe: LagConsumer = kafka
        .client_config()
        .create_with_context(QuietContext)
        .map_err(|source| MetricsError::KafkaClient {
            what: "broker probe".into(),
            source,
        })?;
    let mut groups = Vec::new();
    for g in &monitor.groups {
        groups.push((g.clone(), lag_client(kafka, &g.group_id)?));
    }
    let view = Arc::new(Mutex::new(KafkaView::default()));
    let reader = view.clone();
    ScrapeCollector::new(
        &[
            KAFKA_CONSUMER_LAG,
            KAFKA_BROKER_REACHABLE,
            KAFKA_PROBE_FAILURES,
        ],
        move |s| {
            let v = reader.lock().unwrap_or_else(|p| p.into_inner());
            s.add(
                &KAFKA_BROKER_REACHABLE,
                &[],
                if v.reachable { 1.0 } else { 0.0 },
            );
            s.add_u64(&KAFKA_PROBE_FAILURES, &[], v.failures);
            for ((group, topic, p), lag) in &v.lag {
                s.add(
                    &KAFKA_CONSUMER_LAG,
                    &[group, topic, &p.to_string()],
                    *lag as f64,
                );
            }
        },
    )?
    .register(registry)?;
    let flag = readiness.flag(READY_KAFKA);
    let clients = Arc::new((probe, groups));
    Ok(tokio::spawn(async move {
        loop {
            let c = clients.clone();
            let timeout = monitor.timeout;
            let check = tokio::task::spawn_blocking(move || {
                let (probe, groups) = &*c;
                let reachable = probe
                    .fetch_metadata(None, timeout)
                    .map(|md| !md.brokers().is_empty())
                    .unwrap_or(false);
                let mut lags = Vec::new();
                let mut failures = u64::from(!reachable);
                if reachable {
                    for (g, consumer) in groups {
                        match lag_blocking(consumer, &g.topic, timeout) {
                            Ok(l) => lags.push((g.clone(), Some(l))),
                            Err(e) => {
                                tracing::debug!(group = %g.group_id, error = %e, "Could not read the consumer lag.");
                                failures += 1;
                                lags.push((g.clone(), None));
                            }
                        }
                    }
                }
                (reachable, failures, lags)
            });
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = check => r,
            };
            if let Ok((reachable, failures, lags)) = result {
                flag.set(reachable);
                let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
                v.reachable = reachable;
                v.failures += failures;
                for (g, l) in lags {
                    // A failed read keeps the last known values of the group.
                    let Some(l) = l else { continue };
                    v.lag.retain(|(group, topic, _), _| {
                        !(group == &g.group_id && topic == &g.topic)
                    });
                    for p in l {
                        v.lag
                            .insert((g.group_id.clone(), g.topic.clone(), p.partition), p.lag);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(monitor.interval) => {}
            }
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// The HTTP server.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct ServerState {
    registry: Registry,
    readiness: Arc<Readiness>,
}

/// A running metrics server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    handle: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server to stop (after its cancellation token fires).
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

/// Serves `/metrics` (text format of `registry`), `/healthz` (200 while the process runs) and
/// `/readyz` (200 when every component of `readiness` is ready, else 503 with a JSON body
/// naming those that are not) on `addr` until `cancel` fires.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) -> Result<MetricsServer, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState {
            registry,
            readiness,
        });
    let handle = tokio::spawn(async move {
        let shutdown = cancel.cancelled_owned();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "The metrics server stopped on an error.");
        }
    });
    tracing::info!(address = %local_addr, "Serving /metrics, /healthz and /readyz.");
    Ok(MetricsServer { local_addr, handle })
}

/// [`serve`] on the configured address, or nothing when `metrics.enabled` is false.
pub async fn serve_from_config(
    settings: &MetricsSettings,
    registry: Registry,
    readiness: Arc<Readiness>,
    cancel: CancellationToken,
) -> Result<Option<MetricsServer>, MetricsError> {
    if !settings.enabled {
        return Ok(None);
    }
    serve(settings.listen_address, registry, readiness, cancel)
        .await
        .map(Some)
}

/// The registry in the text exposition format.
pub fn encode_text(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "Could not encode the metrics.");
    }
    String::from_utf8(buf).unwrap_or_default()
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    // Gathering may read a few locks; keep it off the async workers.
    let registry = state.registry.clone();
    let body = tokio::task::spawn_blocking(move || encode_text(&registry))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn healthz_handler() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz_handler(State(state): State<ServerState>) -> Response {
    let status = state.readiness.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(status)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Reading the text format back (tests, `doctor`).
// ---------------------------------------------------------------------------------------------

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    pub samples: Vec<Sample>,
}

impl Scraped {
    /// Parses the text exposition format (comments skipped, timestamps ignored).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Self { samples }
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The value of the one sample of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample of `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = find_label_end(line, open)?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

/// The index of the `}` closing the label set opened at `open`, skipping quoted values.
fn find_label_end(line: &str, open: usize) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

/// GETs `url` (plain HTTP on loopback, no proxy) and returns the status and body.
pub async fn fetch(url: &str) -> Result<(u16, String), MetricsError> {
    let err = |source| MetricsError::Scrape {
        url: url.to_string(),
        source,
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(err)?;
    let response = client.get(url).send().await.map_err(err)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(err)?;
    Ok((status, body))
}

/// Scrapes `http://{addr}/metrics` and parses it.
pub async fn scrape(addr: SocketAddr) -> Result<Scraped, MetricsError> {
    let (_, body) = fetch(&format!("http://{addr}/metrics")).await?;
    Ok(Scraped::parse(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every name follows m365_<stage>_<what>_<unit>, is unique, and counters end in _total
    // (or are the _sum/_count of a latency).
    #[test]
    fn metric_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL_METRICS {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("m365_"), "{}", d.name);
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{}",
                d.name
            );
            if d.kind == MetricKind::Counter {
                assert!(
                    d.name.ends_with("_total")
                        || d.name.ends_with("_sum")
                        || d.name.ends_with("_count"),
                    "{}",
                    d.name
                );
            } else {
                assert!(!d.name.ends_with("_total"), "{}", d.name);
            }
            assert!(!d.help.is_empty());
            for l in d.labels {
                assert!(!["secret", "token", "password", "key"].contains(l));
            }
        }
    }

    // The text parser reads names, escaped label values and values, skipping comments.
    #[test]
    fn parses_text_format() {
        let text = "# HELP x y\n# TYPE x counter\nx_total 3\nm{a=\"1\",b=\"q\\\"}z\"} 2.5\n";
        let s = Scraped::parse(text);
        assert_eq!(s.get("x_total", &[]), Some(3.0));
        assert_eq!(s.get("m", &[("a", "1"), ("b", "q\"}z")]), Some(2.5));
        assert_eq!(s.get("m", &[("a", "1")]), None);
        assert_eq!(s.sum("m", &[("a", "1")]), 2.5);
    }

    // A scrape collector exports what its reader adds, summing repeated series.
    #[test]
    fn scrape_collector_reads_at_scrape_time() {
        let registry = Registry::new();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = n.clone();
        ScrapeCollector::new(&[CONSUMER_RECORDS_OUT, PRODUCER_CURSOR_LAG], move |s| {
            s.add_u64(&CONSUMER_RECORDS_OUT, &["a"], r.load(Ordering::Relaxed));
            s.add_u64(&CONSUMER_RECORDS_OUT, &["a"], 1);
            s.add(&PRODUCER_CURSOR_LAG, &["t", "Audit.General"], -2.0);
        })
        .unwrap()
        .register(&registry)
        .unwrap();
        n.store(41, Ordering::Relaxed);
        let s = Scraped::parse(&encode_text(&registry));
        assert_eq!(
            s.get(CONSUMER_RECORDS_OUT.name, &[("tag", "a")]),
            Some(42.0)
        );
        assert_eq!(
            s.get(
                PRODUCER_CURSOR_LAG.name,
                &[("tenant", "t"), ("content_type", "Audit.General")]
            ),
            Some(-2.0)
        );
    }

    // Readiness is ready only when every component is, and names the others.
    #[test]
    fn readiness_names_what_is_missing() {
        let r = Readiness::new();
        assert!(r.status().ready);
        let kafka = r.flag(READY_KAFKA);
        r.probe(READY_OUTPUT, || true);
        let st = r.status();
        assert!(!st.ready);
        assert_eq!(st.not_ready, vec![READY_KAFKA.to_string()]);
        r.flag(READY_KAFKA).set(true);
        assert!(kafka.get());
        assert!(r.status().ready);
    }
}
