//! The consumer's Prometheus metrics and readiness: its counters ([`ConsumerStats`]) read at
//! scrape time, and the start-up wiring of a consumer process (API metrics, token and Kafka
//! probes with the lag of the consumer and uri_retry groups).

use std::sync::Arc;

use m365_common::kafka::KafkaSettings;
use m365_common::metrics::prometheus::Registry;
use m365_common::metrics::{
    self, CONSUMER_BLOBS_DEAD, CONSUMER_BLOBS_FETCHED, CONSUMER_BLOBS_RETRIED,
    CONSUMER_DEDUP_REPLAYED_IDS, CONSUMER_DEDUP_RESTORED, CONSUMER_DEDUP_SNAPSHOTS,
    CONSUMER_ELEMENTS_REJECTED, CONSUMER_RECORDS_DEDUPLICATED, CONSUMER_RECORDS_IN,
    CONSUMER_RECORDS_OUT, CONSUMER_RECORDS_WITHOUT_WORKLOAD, CONSUMER_RETRIES_REQUEUED,
    CONSUMER_SESSION_RESTARTS, CONSUMER_URIS_REFUSED, GroupTopic, KafkaMonitorSettings,
    MetricsError, READY_OUTPUT, Readiness, ScrapeCollector,
};
use tokio_util::sync::CancellationToken;

use crate::internal_events::ConsumerStats;
use crate::settings::{ConsumerSettings, ConsumerTenant};

/// Registers the consumer's metrics (the `m365_consumer_*` rows of
/// [`metrics::ALL_METRICS`]) in `registry`, read from `stats` at every scrape.
pub fn register(registry: &Registry, stats: Arc<ConsumerStats>) -> Result<(), MetricsError> {
    ScrapeCollector::new(
        &[
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
        ],
        move |s| {
            let st = &stats;
            s.add_u64(&CONSUMER_BLOBS_FETCHED, &[], st.blobs_fetched.get());
            s.add_u64(&CONSUMER_BLOBS_RETRIED, &[], st.blobs_retried.get());
            s.add_u64(&CONSUMER_BLOBS_DEAD, &[], st.blobs_dead.get());
            s.add_u64(&CONSUMER_URIS_REFUSED, &[], st.uris_refused.get());
            s.add_u64(&CONSUMER_RETRIES_REQUEUED, &[], st.retries_requeued.get());
            s.add_u64(&CONSUMER_RECORDS_IN, &[], st.records_in.get());
            s.add_u64(
                &CONSUMER_RECORDS_DEDUPLICATED,
                &[],
                st.records_deduplicated.get(),
            );
            for (tag, n) in st.records_out.snapshot() {
                s.add_u64(&CONSUMER_RECORDS_OUT, &[&tag], n);
            }
            s.add_u64(
                &CONSUMER_RECORDS_WITHOUT_WORKLOAD,
                &[],
                st.records_without_workload.get(),
            );
            for (reason, n) in st.elements_rejected.snapshot() {
                s.add_u64(&CONSUMER_ELEMENTS_REJECTED, &[&reason], n);
            }
            s.add_u64(&CONSUMER_DEDUP_RESTORED, &[], st.dedup_restored.get());
            s.add_u64(
                &CONSUMER_DEDUP_REPLAYED_IDS,
                &[],
                st.dedup_replayed_ids.get(),
            );
            s.add_u64(&CONSUMER_DEDUP_SNAPSHOTS, &[], st.dedup_snapshots.get());
            s.add_u64(&CONSUMER_SESSION_RESTARTS, &[], st.session_restarts.get());
        },
    )?
    .register(registry)
}

/// Adds the consumer's `output` component to `readiness`: ready while the Kafka output of
/// every stage that `settings` runs (download stage, uri_retry service) is connected.
pub fn add_readiness(
    readiness: &Readiness,
    stats: Arc<ConsumerStats>,
    settings: &ConsumerSettings,
) {
    let (download, retry) = (settings.run_consumer, settings.run_uri_retry);
    readiness.probe(READY_OUTPUT, move || {
        (!download || stats.output_connected.get())
            && (!retry || stats.retry_output_connected.get())
    });
}

/// The consumer groups of the stages `settings` runs, with the topic each reads.
pub fn watched_groups(settings: &ConsumerSettings, kafka: &KafkaSettings) -> Vec<GroupTopic> {
    let topics = kafka.topics();
    let mut groups = Vec::new();
    if settings.run_consumer {
        groups.push(GroupTopic::new(
            ConsumerSettings::group_id(&kafka.topic_prefix),
            topics.uris,
        ));
    }
    if settings.run_uri_retry {
        groups.push(GroupTopic::new(
            ConsumerSettings::retry_group_id(&kafka.topic_prefix),
            topics.retry,
        ));
    }
    groups
}

/// Everything a consumer process exports, wired: consumer and API metrics, readiness (token
/// per tenant, Kafka, output), and the lag of the stages' groups (added to `monitor.groups`).
/// The caller then serves `registry` and `readiness` with [`metrics::serve`]. Probes stop
/// when `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub fn install(
    registry: &Registry,
    readiness: &Arc<Readiness>,
    stats: Arc<ConsumerStats>,
    settings: &ConsumerSettings,
    tenants: &[ConsumerTenant],
    kafka: &KafkaSettings,
    mut monitor: KafkaMonitorSettings,
    cancel: &CancellationToken,
) -> Result<(), MetricsError> {
    register(registry, stats.clone())?;
    metrics::register_api(registry, tenants.iter().map(|t| t.api.clone()).collect())?;
    readiness.register(registry)?;
    add_readiness(readiness, stats, settings);
    metrics::spawn_token_probe(
        readiness,
        tenants.iter().map(|t| t.api.tokens().clone()).collect(),
        monitor.interval,
        cancel.clone(),
    );
    monitor.groups.extend(watched_groups(settings, kafka));
    metrics::spawn_kafka_monitor(kafka, monitor, registry, readiness, cancel.clone())?;
    Ok(())
}
