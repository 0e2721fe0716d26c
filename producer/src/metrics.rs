//! The producer's Prometheus metrics and readiness: its counters and per-stream cursors
//! ([`ProducerStats`]) read at scrape time, plus the start-up wiring of a producer process
//! (API metrics, token and Kafka probes, the HTTP server).
//!
//! Per stream (`tenant`, `content_type`):
//! - [`PRODUCER_CURSOR_LAG`]: server time minus the cursor. When caught up it stays near the
//!   settle time plus the poll interval; it grows while the stream is stuck.
//! - [`PRODUCER_HORIZON_REMAINING`]: cursor minus (server time − 7 days), the time left before
//!   content not yet listed can no longer be listed. It shrinks one second per second while the
//!   stream is stuck; at zero the next window is clamped and a gap recorded.

use std::sync::Arc;

use chrono::Utc;
use m365_common::kafka::KafkaSettings;
use m365_common::metrics::prometheus::Registry;
use m365_common::metrics::{
    self, KafkaMonitorSettings, MetricsError, PRODUCER_BLOBS_ALREADY_EMITTED,
    PRODUCER_BLOBS_EMITTED, PRODUCER_CURSOR_LAG, PRODUCER_CURSOR_TIMESTAMP, PRODUCER_GAPS,
    PRODUCER_HORIZON_REMAINING, PRODUCER_LATE_BLOBS, PRODUCER_SUBSCRIPTIONS_STARTED,
    PRODUCER_TICK_ERRORS, PRODUCER_WINDOWS_LISTED, READY_OUTPUT, Readiness, ScrapeCollector,
};
use tokio_util::sync::CancellationToken;

use crate::internal_events::ProducerStats;
use crate::run::TenantRuntime;
use crate::stream::API_HORIZON;

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Registers the producer's metrics (the `m365_producer_*` rows of
/// [`metrics::ALL_METRICS`]) in `registry`, read from `stats` at every scrape.
pub fn register(registry: &Registry, stats: Arc<ProducerStats>) -> Result<(), MetricsError> {
    ScrapeCollector::new(
        &[
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
        ],
        move |s| {
            let st = &stats;
            s.add_u64(&PRODUCER_WINDOWS_LISTED, &[], st.windows_listed.get());
            s.add_u64(&PRODUCER_BLOBS_EMITTED, &[], st.blobs_emitted.get());
            s.add_u64(
                &PRODUCER_BLOBS_ALREADY_EMITTED,
                &[],
                st.blobs_already_emitted.get(),
            );
            s.add_u64(&PRODUCER_LATE_BLOBS, &[], st.late_blobs.get());
            s.add_u64(&PRODUCER_GAPS, &[], st.gaps.get());
            s.add_u64(&PRODUCER_TICK_ERRORS, &[], st.tick_errors.get());
            s.add_u64(
                &PRODUCER_SUBSCRIPTIONS_STARTED,
                &[],
                st.subscriptions_started.get(),
            );
            let now = Utc::now();
            for (id, pos) in st.streams.snapshot() {
                let labels = [id.tenant_id.as_str(), id.content_type.as_str()];
                s.add(&PRODUCER_CURSOR_LAG, &labels, seconds(pos.lag(now)));
                s.add(
                    &PRODUCER_HORIZON_REMAINING,
                    &labels,
                    seconds(pos.horizon_remaining(now, API_HORIZON)),
                );
                s.add(
                    &PRODUCER_CURSOR_TIMESTAMP,
                    &labels,
                    pos.cursor.timestamp_millis() as f64 / 1000.0,
                );
            }
        },
    )?
    .register(registry)
}

/// Adds the producer's `output` component to `readiness`: ready while its Kafka committer is
/// connected.
pub fn add_readiness(readiness: &Readiness, stats: Arc<ProducerStats>) {
    readiness.probe(READY_OUTPUT, move || stats.is_output_connected());
}

/// Everything a producer process exports, wired: producer and API metrics, readiness (token
/// per tenant, Kafka, output) with their probes. The caller then serves `registry` and
/// `readiness` with [`metrics::serve`]. Probes stop when `cancel` fires.
pub fn install(
    registry: &Registry,
    readiness: &Arc<Readiness>,
    stats: Arc<ProducerStats>,
    tenants: &[TenantRuntime],
    kafka: &KafkaSettings,
    monitor: KafkaMonitorSettings,
    cancel: &CancellationToken,
) -> Result<(), MetricsError> {
    register(registry, stats.clone())?;
    metrics::register_api(registry, tenants.iter().map(|t| t.api.clone()).collect())?;
    readiness.register(registry)?;
    add_readiness(readiness, stats);
    metrics::spawn_token_probe(
        readiness,
        tenants.iter().map(|t| t.api.tokens().clone()).collect(),
        monitor.interval,
        cancel.clone(),
    );
    metrics::spawn_kafka_monitor(kafka, monitor, registry, readiness, cancel.clone())?;
    Ok(())
}
