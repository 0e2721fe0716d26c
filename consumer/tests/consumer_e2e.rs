//! The consumer end to end with the producer and the simulator: the record ids on
//! `m365.events` equal the simulator's truth (records repeated across blobs, overlapping
//! listings from the producer's sweeps), on the embedded broker (transactions) and on the real
//! broker (no transactions: the ordered path plus dedup); with 20% of downloads failing
//! transiently every record still arrives, through the uri_retry service.

mod consumer_support;

use std::time::Duration;

use consumer_support::*;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_producer::internal_events::ProducerStats;
use m365_sim::Simulator;
use tokio_util::sync::CancellationToken;

async fn end_to_end(kind: BrokerKind, name: &str, failing: bool) {
    let Some(broker) = TestBroker::start(kind, name) else {
        return;
    };
    // With faults the transactional path would abort, which the embedded broker only pretends
    // to do (see `ordered`).
    let kafka = if failing {
        ordered(&broker)
    } else {
        broker.settings.clone()
    };
    let tenants = [TENANT, OTHER_TENANT];
    let mut cfg = quiet_sim(&tenants, 6.0);
    cfg.records_per_minute = 20.0;
    cfg.blob_interval_secs = 1800;
    cfg.faults.duplicate_record_fraction = 0.5;
    let sim = Simulator::start(cfg).await.expect("simulator starts");

    m365_common::kafka::ensure_topics(&kafka)
        .await
        .expect("topics");
    let cancel = CancellationToken::new();
    let producer = tokio::spawn(m365_producer::run(
        fast_producer(),
        kafka.clone(),
        producer_tenants(&sim, &tenants),
        std::sync::Arc::new(ProducerStats::default()),
        cancel.clone(),
    ));
    if failing {
        sim.faults().update(|f| {
            f.error_500_fraction = 0.2;
            f.truncated_blob_fraction = 0.05;
        });
    }
    let consumer = RunningConsumer::spawn(
        fast_settings("0"),
        kafka.clone(),
        tenants.iter().map(|t| consumer_tenant(&sim, t)).collect(),
    );
    let (must, may) = expected_ids(&sim, sim.now());
    let events = wait_for_ids(&kafka, &must, Duration::from_secs(120)).await;
    // A few more sweeps of the producer, so a repeated listing would have been consumed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = consumer.stats.clone();
    consumer.stop().await;
    cancel.cancel();
    let _ = producer.await;

    let events = if events.len() < must.len() {
        events
    } else {
        read_events(&kafka).await
    };
    assert_exact(&events, &must, &may);
    assert!(
        stats.records_deduplicated.get() > 0,
        "the simulator repeated records across blobs and the consumer dropped them"
    );
    for e in &events {
        assert!(
            e.headers["tag"].starts_with("cloud.office365.management."),
            "{:?}",
            e.headers
        );
        for h in ["tenant_id", "content_type", "content_id", "workload"] {
            assert!(
                e.headers.contains_key(h),
                "header {h} missing: {:?}",
                e.headers
            );
        }
    }
    if failing {
        assert!(
            stats.blobs_retried.get() > 0,
            "no download failed: the fault injection did not bite"
        );
        assert!(
            stats.retries_requeued.get() > 0,
            "the uri_retry service handed nothing back"
        );
        assert_eq!(
            stats.blobs_dead.get(),
            0,
            "no blob may be lost to transient failures"
        );
    }
    sim.shutdown().await;
}

// Exact on the embedded broker (Kafka transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_equal_truth_embedded_broker() {
    end_to_end(BrokerKind::Embedded, "c-e2e-embedded", false).await;
}

// Exact on the real broker (no transactions: ordered commits plus dedup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_equal_truth_real_broker() {
    end_to_end(BrokerKind::Real, "c-e2e-real", false).await;
}

// 20% of downloads fail with 500 and 5% are cut off: every record arrives through uri_retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_recover_through_uri_retry_embedded_broker() {
    end_to_end(BrokerKind::Embedded, "c-e2e-faults", true).await;
}

// The same on the real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_recover_through_uri_retry_real_broker() {
    end_to_end(BrokerKind::Real, "c-e2e-faults-real", true).await;
}
