//! `/metrics` and `/readyz` of a consumer running in-process (behind the producer) against the
//! simulator on the embedded broker: not ready before its Kafka output connects, ready after;
//! records out by tag move and match the consumer's own counters; the consumer group's lag on
//! the URI topic falls to near zero once everything listed is consumed.

mod consumer_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use consumer_support::*;
use m365_common::metrics::{
    self, API_REQUESTS, CONSUMER_BLOBS_FETCHED, CONSUMER_RECORDS_IN, CONSUMER_RECORDS_OUT,
    KAFKA_CONSUMER_LAG, KafkaMonitorSettings, READY_OUTPUT, Readiness, Scraped,
};
use m365_common::testkit::eventually;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_consumer::ConsumerSettings;
use m365_consumer::internal_events::ConsumerStats;
use m365_producer::internal_events::ProducerStats;
use m365_sim::Simulator;
use tokio_util::sync::CancellationToken;

fn records_out_by_tag(s: &Scraped) -> BTreeMap<String, u64> {
    s.matching(CONSUMER_RECORDS_OUT.name, &[])
        .filter_map(|x| Some((x.labels.get("tag")?.clone(), x.value as u64)))
        .collect()
}

// The consumer's metrics and readiness through a full run (see the file comment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_metrics_follow_the_pipeline() {
    let broker = TestBroker::start(BrokerKind::Embedded, "metrics-consumer").expect("broker");
    // The ordered path: offsets are committed without transaction markers, so a caught-up
    // group has a lag of exactly zero.
    let kafka = ordered(&broker);
    let mut cfg = quiet_sim(&[TENANT], 6.0);
    cfg.records_per_minute = 20.0;
    cfg.blob_interval_secs = 1800;
    cfg.faults.duplicate_record_fraction = 0.3;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    m365_common::kafka::ensure_topics(&kafka)
        .await
        .expect("topics");

    let settings = fast_settings("0");
    let tenants = vec![consumer_tenant(&sim, TENANT)];
    let stats = Arc::new(ConsumerStats::default());
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    let cancel = CancellationToken::new();
    m365_consumer::metrics::install(
        &registry,
        &readiness,
        stats.clone(),
        &settings,
        &tenants,
        &kafka,
        KafkaMonitorSettings {
            interval: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            groups: Vec::new(),
        },
        &cancel,
    )
    .expect("metrics installed");
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness.clone(),
        cancel.clone(),
    )
    .await
    .expect("metrics server");
    let addr = server.local_addr();
    let readyz = || async move {
        let (status, body) = metrics::fetch(&format!("http://{addr}/readyz"))
            .await
            .unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };

    // Before the consumer runs its output is not connected.
    let (status, body) = readyz().await;
    assert_eq!(status, 503);
    assert!(
        body["not_ready"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(READY_OUTPUT)),
        "{body}"
    );

    let run_cancel = CancellationToken::new();
    let producer = tokio::spawn(m365_producer::run(
        fast_producer(),
        kafka.clone(),
        producer_tenants(&sim, &[TENANT]),
        Arc::new(ProducerStats::default()),
        run_cancel.clone(),
    ));
    let consumer = tokio::spawn(m365_consumer::run(
        settings,
        kafka.clone(),
        tenants,
        stats.clone(),
        run_cancel.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(60), || async {
            readyz().await.0 == 200
        })
        .await,
        "ready once token, broker and both outputs are up"
    );

    let (must, _) = expected_ids(&sim, sim.now());
    assert!(!must.is_empty());
    let _ = wait_for_ids(&kafka, &must, Duration::from_secs(120)).await;

    // Everything listed gets consumed: the group's lag on the URI topic falls to zero.
    let group = ConsumerSettings::group_id(&kafka.topic_prefix);
    let uris = kafka.topics().uris;
    assert!(
        eventually(Duration::from_secs(60), || async {
            let s = metrics::scrape(addr).await.unwrap();
            let parts: Vec<f64> = s
                .matching(
                    KAFKA_CONSUMER_LAG.name,
                    &[("group", &group), ("topic", &uris)],
                )
                .map(|x| x.value)
                .collect();
            parts.len() == kafka.partitions as usize && parts.iter().sum::<f64>() == 0.0
        })
        .await,
        "the consumer group catches up"
    );

    // Records out by tag move, and match the consumer's own counters exactly at rest.
    let s = metrics::scrape(addr).await.unwrap();
    let by_tag = records_out_by_tag(&s);
    assert!(!by_tag.is_empty());
    assert!(
        by_tag
            .keys()
            .all(|t| t.starts_with("cloud.office365.management.")),
        "{by_tag:?}"
    );
    assert_eq!(by_tag, stats.records_out.snapshot());
    let records_in = s.get(CONSUMER_RECORDS_IN.name, &[]).unwrap();
    assert!(records_in >= by_tag.values().sum::<u64>() as f64);
    assert!(s.get(CONSUMER_BLOBS_FETCHED.name, &[]).unwrap() > 0.0);
    assert!(
        s.sum(
            API_REQUESTS.name,
            &[("tenant", TENANT), ("endpoint", "blob"), ("outcome", "200")]
        ) > 0.0,
        "blob downloads are counted by endpoint and outcome"
    );

    // New content moves the counters on.
    let before: u64 = by_tag.values().sum();
    sim.publish_generated(TENANT, m365_sim::tenant::config::ContentType::Exchange, 5)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            let s = metrics::scrape(addr).await.unwrap();
            records_out_by_tag(&s).values().sum::<u64>() > before
        })
        .await,
        "records out grow with new content"
    );

    run_cancel.cancel();
    for (name, r) in [
        (
            "producer",
            tokio::time::timeout(Duration::from_secs(60), producer)
                .await
                .map(|r| r.map(|x| x.map_err(|e| e.to_string()))),
        ),
        (
            "consumer",
            tokio::time::timeout(Duration::from_secs(60), consumer)
                .await
                .map(|r| r.map(|x| x.map_err(|e| e.to_string()))),
        ),
    ] {
        r.unwrap_or_else(|_| panic!("{name} stops"))
            .unwrap_or_else(|e| panic!("{name} task: {e}"))
            .unwrap_or_else(|e| panic!("{name} ends cleanly: {e}"));
    }
    assert_eq!(readyz().await.0, 503, "not ready once the consumer stopped");
    cancel.cancel();
    server.join().await;
    sim.shutdown().await;
}
