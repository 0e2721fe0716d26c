//! The metrics layer end to end on loopback: `/healthz`, `/readyz` answering 503 with the
//! components that are not ready and 200 once they are, `/metrics` in the text format with the
//! process and API metrics, the token probe against the simulator, and the Kafka monitor
//! (broker reachability and consumer lag) on the embedded broker and on a dead address.

use std::time::Duration;

use m365_common::kafka::{self, KafkaSettings};
use m365_common::metrics::{
    self, API_REQUESTS, AUTH_TOKENS_ISSUED, GroupTopic, KAFKA_BROKER_REACHABLE, KAFKA_CONSUMER_LAG,
    KafkaMonitorSettings, READY, READY_KAFKA, READY_OUTPUT, Readiness, Scraped,
};
use m365_common::testkit::eventually;
use m365_common::testkit::{BrokerKind, TestBroker, sim_api_client};
use m365_sim::tenant::config::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use m365_sim::tenant::faults::{FaultKind, FaultTarget};
use m365_sim::tenant::{SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TENANT: &str = "8a1c2f4e-1b2c-4d5e-8f90-a1b2c3d4e5f6";

async fn readyz(addr: std::net::SocketAddr) -> (u16, Value) {
    let (status, body) = metrics::fetch(&format!("http://{addr}/readyz"))
        .await
        .expect("/readyz answers");
    (
        status,
        serde_json::from_str(&body).expect("/readyz is JSON"),
    )
}

fn fast_monitor(groups: Vec<GroupTopic>) -> KafkaMonitorSettings {
    KafkaMonitorSettings {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        groups,
    }
}

// /healthz is 200; /readyz is 503 naming exactly the components not ready, then 200; /metrics
// carries the process metrics and m365_ready per component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_endpoints() {
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    readiness.register(&registry).expect("register");
    let kafka = readiness.flag(READY_KAFKA);
    let output = readiness.flag(READY_OUTPUT);
    kafka.set(true);
    let cancel = CancellationToken::new();
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness.clone(),
        cancel.clone(),
    )
    .await
    .expect("server starts");
    let addr = server.local_addr();

    let (status, body) = metrics::fetch(&format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));

    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert_eq!(body["not_ready"], serde_json::json!([READY_OUTPUT]));
    assert_eq!(body["components"][READY_KAFKA], true);

    let s = metrics::scrape(addr).await.unwrap();
    assert_eq!(s.get(READY.name, &[("component", READY_OUTPUT)]), Some(0.0));
    assert_eq!(s.get(READY.name, &[("component", READY_KAFKA)]), Some(1.0));
    assert!(
        s.has("process_resident_memory_bytes") && s.has("process_cpu_seconds_total"),
        "process metrics are exported"
    );

    output.set(true);
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(body["not_ready"], serde_json::json!([]));

    cancel.cancel();
    server.join().await;
}

// The token probe keeps token:<tenant> not ready while the token endpoint fails and ready once
// a token is had; the API metrics count requests by endpoint and outcome and the tokens issued
// (as many as the simulator issued), and never show the client secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_readiness_and_api_metrics_against_the_simulator() {
    let mut cfg = SimConfig::for_tests(&[TENANT]);
    cfg.history_hours = 0.0;
    cfg.live_generation = false;
    cfg.expected_publisher_id = None;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    sim.faults()
        .inject(FaultTarget::Token, FaultKind::Internal500, 1_000);
    let api = sim_api_client(
        &sim.base_url(),
        Some(sim.ca_pem()),
        sim.resource(),
        TENANT,
        TEST_CLIENT_ID,
        TEST_CLIENT_SECRET,
    );
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    metrics::register_api(&registry, vec![api.clone(), api.clone()]).expect("register once");
    let cancel = CancellationToken::new();
    metrics::spawn_token_probe(
        &readiness,
        vec![api.tokens().clone()],
        Duration::from_millis(200),
        cancel.clone(),
    );
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let token_component = metrics::ready_token(TENANT);

    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503, "no token yet: {body}");
    assert_eq!(body["not_ready"], serde_json::json!([token_component]));

    sim.faults().clear();
    assert!(
        eventually(Duration::from_secs(30), || async {
            readyz(addr).await.0 == 200
        })
        .await,
        "ready once the token endpoint answers"
    );
    for _ in 0..3 {
        api.list_subscriptions().await.expect("list subscriptions");
    }
    let (_, text) = metrics::fetch(&format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(!text.contains(TEST_CLIENT_SECRET), "no secret in metrics");
    let s = Scraped::parse(&text);
    assert_eq!(
        s.get(
            API_REQUESTS.name,
            &[
                ("tenant", TENANT),
                ("endpoint", "subscriptions_list"),
                ("outcome", "200")
            ]
        ),
        Some(3.0),
        "the same client passed twice is counted once"
    );
    let issued = s
        .get(AUTH_TOKENS_ISSUED.name, &[("tenant", TENANT)])
        .expect("tokens issued");
    assert!(issued >= 1.0);
    assert_eq!(issued, sim.tokens_issued() as f64);

    cancel.cancel();
    server.join().await;
    sim.shutdown().await;
}

// On the embedded broker the monitor reports the broker reachable and a group's lag per
// partition: records produced minus the offset the group committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_monitor_reports_lag_and_reachability() {
    let broker = TestBroker::start(BrokerKind::Embedded, "metrics-lag").expect("embedded broker");
    let k = broker.settings.clone();
    kafka::ensure_topics(&k).await.expect("topics");
    let topic = k.topics().uris;
    let group = format!("{}-lag-test", k.topic_prefix);

    let producer: FutureProducer = k.producer_config().create().expect("producer");
    for i in 0..5 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key("k")
                    .payload(&format!("r{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("record produced");
    }
    // The group commits offset 2 on partition 0: three records left to read there.
    let committer: BaseConsumer = k.consumer_config(&group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(2))
        .unwrap();
    let c2 = std::sync::Arc::new(committer);
    let c3 = c2.clone();
    tokio::task::spawn_blocking(move || c3.commit(&tpl, CommitMode::Sync))
        .await
        .unwrap()
        .expect("offset committed");

    let lag = metrics::consumer_lag(&k, &group, &topic, Duration::from_secs(5))
        .await
        .expect("lag");
    let p0 = lag.iter().find(|p| p.partition == 0).expect("partition 0");
    assert_eq!((p0.committed, p0.high, p0.lag), (Some(2), 5, 3));
    assert_eq!(lag.len(), k.partitions as usize);

    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    let cancel = CancellationToken::new();
    metrics::spawn_kafka_monitor(
        &k,
        fast_monitor(vec![GroupTopic::new(&group, &topic)]),
        &registry,
        &readiness,
        cancel.clone(),
    )
    .expect("monitor");
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert!(
        eventually(Duration::from_secs(30), || async {
            readyz(addr).await.0 == 200
        })
        .await,
        "the embedded broker is reachable"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            metrics::scrape(addr)
                .await
                .unwrap()
                .has(KAFKA_CONSUMER_LAG.name)
        })
        .await
    );
    let scraped = metrics::scrape(addr).await.unwrap();
    assert_eq!(scraped.get(KAFKA_BROKER_REACHABLE.name, &[]), Some(1.0));
    assert_eq!(
        scraped.get(
            KAFKA_CONSUMER_LAG.name,
            &[("group", &group), ("topic", &topic), ("partition", "0")]
        ),
        Some(3.0)
    );
    cancel.cancel();
    server.join().await;
    drop(c2);
}

// A broker that does not answer keeps /readyz at 503 naming kafka, and the reachability gauge
// at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_not_ready() {
    // Port 1 on loopback: nothing listens there.
    let k = KafkaSettings::new("127.0.0.1:1");
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    let cancel = CancellationToken::new();
    metrics::spawn_kafka_monitor(
        &k,
        fast_monitor(Vec::new()),
        &registry,
        &readiness,
        cancel.clone(),
    )
    .expect("monitor");
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        registry,
        readiness.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // Wait for at least one failed probe to be counted.
    assert!(
        eventually(Duration::from_secs(30), || async {
            metrics::scrape(addr)
                .await
                .unwrap()
                .get(metrics::KAFKA_PROBE_FAILURES.name, &[])
                .is_some_and(|v| v >= 1.0)
        })
        .await
    );
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503);
    assert_eq!(body["not_ready"], serde_json::json!([READY_KAFKA]));
    let s = metrics::scrape(addr).await.unwrap();
    assert_eq!(s.get(KAFKA_BROKER_REACHABLE.name, &[]), Some(0.0));
    cancel.cancel();
    server.join().await;
}
