//! `/metrics` and `/readyz` of a forwarder running in-process against the embedded broker
//! and the fake Devo (plain TCP): lines by tag equal what Devo received, records in and
//! batches move, reconnects move when Devo drops every connection, `/readyz` answers 200
//! while the output is connected, and the group's lag on the events topic falls to zero.

mod forwarder_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use forwarder_support::{TAGS, populate};
use m365_common::config::DEFAULT_HEALTH_TAG;
use m365_common::metrics::{
    self, FORWARDER_BATCH_LATENCY_COUNT, FORWARDER_BATCHES, FORWARDER_COMMITS, FORWARDER_CONNECTS,
    FORWARDER_EVENTS_IN, FORWARDER_HEALTH_IN, FORWARDER_LINES, FORWARDER_RECONNECTS,
    KAFKA_CONSUMER_LAG, KafkaMonitorSettings, Readiness, Scraped,
};
use m365_common::testkit::eventually;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_forwarder::ForwarderSettings;
use m365_forwarder::framing::LineFormat;
use m365_forwarder::internal_events::ForwarderStats;
use m365_forwarder::output::{Output, Pool, RetryPolicy, Sink, StreamSettings};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn lines_by_tag(s: &Scraped) -> BTreeMap<String, u64> {
    s.matching(FORWARDER_LINES.name, &[])
        .filter_map(|x| Some((x.labels.get("tag")?.clone(), x.value as u64)))
        .collect()
}

// The forwarder's metrics and readiness through a run with a Devo connection drop (see the
// file comment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_metrics_follow_delivery() {
    const EVENTS: usize = 3_000;
    const HEALTH: usize = 5;
    let broker = TestBroker::start(BrokerKind::Embedded, "metrics-forwarder").expect("broker");
    let kafka = broker.settings.clone();
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    populate(&kafka, EVENTS, HEALTH).await;

    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let mut stream = StreamSettings::new(devo.tcp_addr().unwrap().to_string());
    stream.retry = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    };
    let stats = Arc::new(ForwarderStats::default());
    let pool = Pool::new(stream, 2, Arc::clone(&stats.output)).unwrap();
    let output = Output::new(Sink::Pool(pool), LineFormat::sdk_default("fwd-metrics"));
    let mut settings =
        ForwarderSettings::new(&kafka.topic_prefix, LineFormat::sdk_default("fwd-metrics"));
    settings.batch_max_bytes = 32 * 1024;
    settings.batch_max_wait = Duration::from_millis(100);
    settings.commit_delay = Duration::from_millis(200);

    let metrics_cancel = CancellationToken::new();
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    m365_forwarder::metrics::install(
        &registry,
        &readiness,
        Arc::clone(&stats),
        &settings,
        &kafka,
        KafkaMonitorSettings {
            interval: Duration::from_millis(300),
            ..KafkaMonitorSettings::default()
        },
        &metrics_cancel,
    )
    .unwrap();
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness,
        metrics_cancel.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let cancel = CancellationToken::new();
    let task = tokio::spawn(m365_forwarder::run(
        settings.clone(),
        kafka.clone(),
        output,
        Arc::clone(&stats),
        cancel.clone(),
    ));
    devo.wait_for_lines((EVENTS + HEALTH) as u64, WAIT)
        .await
        .unwrap();

    // Lines by tag equal what Devo counted, once the delivered batches are all reported.
    let deadline = tokio::time::Instant::now() + WAIT;
    let last = loop {
        let devo_tags = devo.count_by_tag();
        let s = metrics::scrape(addr).await.unwrap();
        if lines_by_tag(&s) == devo_tags {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics {:?} vs Devo {devo_tags:?}",
            lines_by_tag(&s)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let by_tag = lines_by_tag(&last);
    assert_eq!(by_tag.get(DEFAULT_HEALTH_TAG), Some(&(HEALTH as u64)));
    assert!(TAGS.iter().all(|t| by_tag.get(*t).is_some_and(|&n| n > 0)));
    assert_eq!(last.get(FORWARDER_EVENTS_IN.name, &[]), Some(EVENTS as f64));
    assert_eq!(last.get(FORWARDER_HEALTH_IN.name, &[]), Some(HEALTH as f64));
    assert!(last.get(FORWARDER_BATCHES.name, &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        last.get(FORWARDER_BATCH_LATENCY_COUNT.name, &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(last.get(FORWARDER_CONNECTS.name, &[]).unwrap_or(0.0) >= 1.0);

    // Connected output and reachable Kafka: ready.
    let ready = eventually(WAIT, || async {
        metrics::fetch(&format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .0
            == 200
    })
    .await;
    assert!(ready, "/readyz is 200 while the output is connected");

    // Commits follow the deliveries and the group's lag on the events topic reaches zero.
    let events_topic = kafka.topics().events;
    let caught_up = eventually(WAIT, || async {
        let s = metrics::scrape(addr).await.unwrap();
        let lags: Vec<f64> = s
            .matching(
                KAFKA_CONSUMER_LAG.name,
                &[("group", &settings.group_id), ("topic", &events_topic)],
            )
            .map(|x| x.value)
            .collect();
        s.get(FORWARDER_COMMITS.name, &[]).unwrap_or(0.0) >= 1.0
            && !lags.is_empty()
            && lags.iter().all(|&l| l == 0.0)
    })
    .await;
    assert!(caught_up, "lag of the forwarder's group falls to zero");

    // Devo drops every connection; the next batches reconnect, and the metric moves.
    let before = metrics::scrape(addr)
        .await
        .unwrap()
        .get(FORWARDER_RECONNECTS.name, &[])
        .unwrap_or(0.0);
    devo.close_all_connections();
    let producer: rdkafka::producer::FutureProducer = kafka.producer_config().create().unwrap();
    let more =
        forwarder_support::produce_events(&producer, &events_topic, EVENTS..EVENTS + 200).await;
    let reconnected = eventually(WAIT, || async {
        let s = metrics::scrape(addr).await.unwrap();
        s.get(FORWARDER_RECONNECTS.name, &[]).unwrap_or(0.0) > before
    })
    .await;
    assert!(
        reconnected,
        "reconnects move after Devo closed the connections"
    );
    devo.wait_for_lines((EVENTS + HEALTH + more.len()) as u64, WAIT)
        .await
        .unwrap();

    cancel.cancel();
    task.await.unwrap().expect("clean stop");
    metrics_cancel.cancel();
    server.join().await;
    devo.shutdown().await;
}
