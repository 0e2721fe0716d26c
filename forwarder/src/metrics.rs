//! The forwarder's Prometheus metrics and readiness: the `m365_forwarder_*` rows of
//! [`metrics::ALL_METRICS`], read from [`ForwarderStats`] (and the output's
//! [`OutputStats`](crate::output::OutputStats) inside it) at scrape time, so the hot path
//! only bumps atomics; the `output` readiness component; and the start-up wiring of a
//! forwarder process (Kafka probe and consumer lag of the forwarder's group, HTTP server).
//!
//! Readiness `output` is derived from the output's counters at each probe: it turns false
//! when a connect or write failed and nothing succeeded (no connection opened, no batch
//! delivered) since, and true again on the next success. Before any traffic it is true
//! unless an attempt already failed: outputs connect lazily, on the first batch.

use std::sync::{Arc, Mutex};

use m365_common::kafka::KafkaSettings;
use m365_common::metrics::prometheus::Registry;
use m365_common::metrics::{
    self, FORWARDER_BATCH_LATENCY_COUNT, FORWARDER_BATCH_LATENCY_MAX, FORWARDER_BATCH_LATENCY_SUM,
    FORWARDER_BATCHES, FORWARDER_BATCHES_RESENT, FORWARDER_BYTES, FORWARDER_COMMIT_FAILURES,
    FORWARDER_COMMITS, FORWARDER_CONNECT_FAILURES, FORWARDER_CONNECTS, FORWARDER_EVENTS_IN,
    FORWARDER_HEALTH_IN, FORWARDER_LINES, FORWARDER_PAUSES, FORWARDER_REBALANCES,
    FORWARDER_RECONNECTS, FORWARDER_WRITE_ERRORS, GroupTopic, KafkaMonitorSettings, MetricsError,
    READY_OUTPUT, Readiness, ScrapeCollector,
};
use tokio_util::sync::CancellationToken;

use crate::internal_events::ForwarderStats;
use crate::output::StatsSnapshot;
use crate::settings::ForwarderSettings;

/// Registers the forwarder's metrics in `registry`, read from `stats` at every scrape.
pub fn register(registry: &Registry, stats: Arc<ForwarderStats>) -> Result<(), MetricsError> {
    ScrapeCollector::new(
        &[
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
        ],
        move |s| {
            let st = &stats;
            s.add_u64(&FORWARDER_EVENTS_IN, &[], st.events_in.get());
            s.add_u64(&FORWARDER_HEALTH_IN, &[], st.health_in.get());
            let out = st.output_snapshot();
            let mut tags: Vec<_> = out.per_tag.iter().collect();
            tags.sort_by(|a, b| a.0.cmp(b.0));
            for (tag, counts) in tags {
                s.add_u64(&FORWARDER_LINES, &[tag.as_str()], counts.lines);
                s.add_u64(&FORWARDER_BYTES, &[tag.as_str()], counts.bytes);
            }
            s.add_u64(&FORWARDER_CONNECTS, &[], out.connects);
            s.add_u64(&FORWARDER_RECONNECTS, &[], out.reconnects);
            s.add_u64(&FORWARDER_CONNECT_FAILURES, &[], out.connect_failures);
            s.add_u64(&FORWARDER_WRITE_ERRORS, &[], out.write_errors);
            s.add_u64(&FORWARDER_BATCHES, &[], st.batches.get());
            s.add_u64(&FORWARDER_BATCHES_RESENT, &[], st.batches_resent.get());
            s.add(
                &FORWARDER_BATCH_LATENCY_SUM,
                &[],
                st.batch_latency.sum().as_secs_f64(),
            );
            s.add_u64(
                &FORWARDER_BATCH_LATENCY_COUNT,
                &[],
                st.batch_latency.count(),
            );
            s.add(
                &FORWARDER_BATCH_LATENCY_MAX,
                &[],
                st.batch_latency.max().as_secs_f64(),
            );
            s.add_u64(&FORWARDER_COMMITS, &[], st.commits.get());
            s.add_u64(&FORWARDER_COMMIT_FAILURES, &[], st.commit_failures.get());
            s.add_u64(&FORWARDER_PAUSES, &[], st.pauses.get());
            s.add_u64(&FORWARDER_REBALANCES, &[], st.rebalances.get());
        },
    )?
    .register(registry)
}

/// Whether the output works, judged from its counters between two probes.
#[derive(Debug)]
struct OutputHealth {
    /// Failed connects and writes seen at the last probe.
    failures: u64,
    /// Connections opened and batches delivered seen at the last probe.
    successes: u64,
    ready: bool,
}

impl OutputHealth {
    fn counts(s: &StatsSnapshot) -> (u64, u64) {
        (s.connect_failures + s.write_errors, s.connects + s.batches)
    }

    fn new(s: &StatsSnapshot) -> Self {
        let (failures, successes) = Self::counts(s);
        OutputHealth {
            failures,
            successes,
            ready: failures == 0 || successes > 0,
        }
    }

    /// Updates the verdict with the counters now: any success since the last probe makes the
    /// output ready, failures alone make it not ready, no change keeps the verdict.
    fn update(&mut self, s: &StatsSnapshot) -> bool {
        let (failures, successes) = Self::counts(s);
        if successes > self.successes {
            self.ready = true;
        } else if failures > self.failures {
            self.ready = false;
        }
        self.failures = failures;
        self.successes = successes;
        self.ready
    }
}

/// Adds the forwarder's `output` component to `readiness` (see the module docs).
pub fn add_readiness(readiness: &Readiness, stats: Arc<ForwarderStats>) {
    let health = Mutex::new(OutputHealth::new(&stats.output_snapshot()));
    readiness.probe(READY_OUTPUT, move || {
        let snapshot = stats.output_snapshot();
        let mut h = health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.update(&snapshot)
    });
}

/// The consumer group and topics whose lag the forwarder exports.
pub fn lag_groups(settings: &ForwarderSettings) -> Vec<GroupTopic> {
    vec![
        GroupTopic::new(settings.group_id.clone(), settings.events_topic.clone()),
        GroupTopic::new(settings.group_id.clone(), settings.health_topic.clone()),
    ]
}

/// Everything a forwarder process exports, wired: forwarder metrics, readiness (Kafka and
/// output) and the Kafka monitor with the lag of the forwarder's group on the events and
/// health topics. The caller then serves `registry` and `readiness` with
/// [`metrics::serve`]. The monitor stops when `cancel` fires.
pub fn install(
    registry: &Registry,
    readiness: &Arc<Readiness>,
    stats: Arc<ForwarderStats>,
    settings: &ForwarderSettings,
    kafka: &KafkaSettings,
    mut monitor: KafkaMonitorSettings,
    cancel: &CancellationToken,
) -> Result<(), MetricsError> {
    register(registry, Arc::clone(&stats))?;
    readiness.register(registry)?;
    add_readiness(readiness, stats);
    monitor.groups.extend(lag_groups(settings));
    metrics::spawn_kafka_monitor(kafka, monitor, registry, readiness, cancel.clone())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(
        connects: u64,
        batches: u64,
        connect_failures: u64,
        write_errors: u64,
    ) -> StatsSnapshot {
        StatsSnapshot {
            connects,
            batches,
            connect_failures,
            write_errors,
            ..StatsSnapshot::default()
        }
    }

    // Proves the output readiness: ready before traffic, not ready after failures alone,
    // ready again after the next connect or delivered batch.
    #[test]
    fn output_readiness_follows_failures_and_successes() {
        let mut h = OutputHealth::new(&snap(0, 0, 0, 0));
        assert!(
            h.update(&snap(0, 0, 0, 0)),
            "lazy output, nothing tried yet"
        );
        assert!(h.update(&snap(1, 3, 0, 0)));
        assert!(!h.update(&snap(1, 3, 2, 1)), "failures, no success since");
        assert!(!h.update(&snap(1, 3, 2, 1)), "no change keeps the verdict");
        assert!(h.update(&snap(2, 3, 3, 1)), "reconnected");
        assert!(!OutputHealth::new(&snap(0, 0, 1, 0)).ready);
    }
}
