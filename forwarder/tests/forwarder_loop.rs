//! The stage loop in process, against the embedded broker (and the real one from
//! `scripts/test.sh`) and the fake Devo: nothing lost across a Devo outage, commits only
//! after delivery, health records under the health tag, fallback tag counted.

mod forwarder_support;

use std::sync::Arc;
use std::time::Duration;

use forwarder_support::{
    UNTAGGED_EVERY, committed, end_offsets, event_positions, populate, received,
};
use m365_common::config::{DEFAULT_FALLBACK_TAG, DEFAULT_HEALTH_TAG};
use m365_common::kafka::{KafkaSettings, ensure_topics};
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_forwarder::ForwarderSettings;
use m365_forwarder::framing::LineFormat;
use m365_forwarder::internal_events::ForwarderStats;
use m365_forwarder::output::{Output, Pool, RetryPolicy, Sink, StreamSettings, TlsSettings};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 20_000;
const HEALTH: usize = 40;
const WAIT: Duration = Duration::from_secs(90);

fn settings(kafka: &KafkaSettings) -> ForwarderSettings {
    let mut s = ForwarderSettings::new(&kafka.topic_prefix, LineFormat::sdk_default("fwd-test"));
    s.batch_max_bytes = 64 * 1024;
    s.batch_max_wait = Duration::from_millis(100);
    s.max_in_flight = 4;
    s.commit_delay = Duration::from_millis(300);
    s
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    }
}

/// Debugging aid: with M365_TEST_FORWARDER_LOG set (an env filter, e.g.
/// `m365_forwarder=debug`), the stage's logs go to stderr.
fn init_logs() {
    if let Ok(filter) = std::env::var("M365_TEST_FORWARDER_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Waits until every id arrived at the fake Devo (or the time is up).
async fn wait_all(devo: &FakeDevo, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if received(devo).missing(ids).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Forwards `ids` (already on the topic) through devo_tls with two connections, stopping
/// the fake Devo's listeners for `outage` once a quarter has arrived (`None`: no outage).
/// Returns the stats after a clean stop.
async fn forward(
    broker: &TestBroker,
    ids: &[String],
    outage: Option<Duration>,
) -> (FakeDevo, Arc<ForwarderStats>) {
    init_logs();
    let kafka = broker.settings.clone();
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = devo.pki().write_to(dir.path()).unwrap();
    let mut stream = StreamSettings::with_tls(
        devo.tls_addr().to_string(),
        TlsSettings::new(
            "localhost",
            &paths.ca,
            &paths.client_cert,
            &paths.client_key,
        ),
    );
    stream.retry = quick_retry();
    stream.connect_timeout = Duration::from_secs(5);
    let stats = Arc::new(ForwarderStats::default());
    let pool = Pool::new(stream, 2, Arc::clone(&stats.output)).unwrap();
    let output = Output::new(Sink::Pool(pool), LineFormat::sdk_default("fwd-test"));
    let s = settings(&kafka);
    let group = s.group_id.clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m365_forwarder::run(
        s,
        kafka.clone(),
        output,
        Arc::clone(&stats),
        cancel.clone(),
    ));

    if let Some(outage) = outage {
        devo.wait_for_lines(ids.len() as u64 / 4, WAIT)
            .await
            .unwrap();
        devo.stop_listening().await;
        // Let batches written just before the drop be detected and everything settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_start = committed(&kafka, &group);
        let delivered = received(&devo);
        // Every committed event is at Devo: commits never run ahead of delivery.
        let positions = event_positions(&kafka).await;
        for ((topic, p), &o) in &at_start {
            if *topic != kafka.topics().events {
                continue;
            }
            for off in 0..o {
                let id = &positions[&(*p, off)];
                assert!(
                    delivered.ids.contains_key(id),
                    "offset {off} of partition {p} committed but {id} not delivered"
                );
            }
        }
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(1))).await;
        assert_eq!(
            committed(&kafka, &group),
            at_start,
            "nothing is committed while Devo is down"
        );
        assert!(
            stats.output_snapshot().connect_failures > 0,
            "the forwarder kept trying to reconnect"
        );
        devo.resume_listening().await.unwrap();
    }

    wait_all(&devo, ids).await;
    // Health records follow the events on their own topic.
    devo.wait_for_tag(DEFAULT_HEALTH_TAG, HEALTH as u64, WAIT)
        .await
        .unwrap();
    cancel.cancel();
    task.await.unwrap().expect("clean stop");
    let committed = committed(&kafka, &group);
    let ends = end_offsets(&kafka);
    assert_eq!(committed, ends, "a clean stop commits everything delivered");
    (devo, stats)
}

// Proves the outage scenario: Devo stops listening for 60 s mid-stream, and
// afterwards every event on the topic is at Devo, none lost; commits never run ahead of
// delivery and stand still during the outage; duplicates are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devo_outage_mid_stream_loses_nothing() {
    let broker = TestBroker::start(BrokerKind::Embedded, "fwd-outage").unwrap();
    ensure_topics(&broker.settings).await.unwrap();
    let ids = populate(&broker.settings, EVENTS, HEALTH).await;
    let (devo, stats) = forward(&broker, &ids, Some(Duration::from_secs(60))).await;

    let got = received(&devo);
    let missing = got.missing(&ids);
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.ids.len(), EVENTS, "no foreign ids");
    let untagged = (0..EVENTS)
        .filter(|n| n % UNTAGGED_EVERY == UNTAGGED_EVERY - 1)
        .count() as u64;
    // Untagged events go out under the fallback tag, and are counted.
    assert!(stats.fallback_tag_records.get() >= untagged);
    assert!(got.per_tag[DEFAULT_FALLBACK_TAG] >= untagged);
    assert!(got.per_tag[DEFAULT_HEALTH_TAG] >= HEALTH as u64);
    assert!(
        stats.pauses.get() >= 1,
        "consumption paused while Devo was down"
    );
    let out = stats.output_snapshot();
    assert!(out.per_tag.contains_key(DEFAULT_HEALTH_TAG));
    assert!(stats.batch_latency.count() > 0 && stats.commits.get() > 0);
    eprintln!(
        "outage: {} events, {} duplicates at Devo, {} batches re-sent, {} connections lost, {} reconnects, {} connect failures, {} pauses",
        EVENTS,
        got.duplicates(),
        stats.batches_resent.get(),
        out.connections_lost,
        out.reconnects,
        out.connect_failures,
        stats.pauses.get()
    );
    devo.shutdown().await;
}

// Proves the loop against a real Kafka-protocol broker (tansu, no transactions): every
// event and health record arrives and the group's offsets reach the end of both topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_forwards_everything() {
    // SQLite storage: the forwarder pauses and resumes mid-batch, which tansu's memory
    // engine answers from the next batch (records skipped).
    let Some(broker) = TestBroker::start(BrokerKind::RealSqlite, "fwd-real") else {
        return;
    };

    ensure_topics(&broker.settings).await.unwrap();
    let ids = populate(&broker.settings, 5_000, HEALTH).await;
    let (devo, stats) = forward(&broker, &ids, None).await;
    let got = received(&devo);
    let missing = got.missing(&ids);
    assert!(
        missing.is_empty(),
        "{} of {} events missing; forwarder read {} events, {} batches, {} pauses, {} rebalances",
        missing.len(),
        ids.len(),
        stats.events_in.get(),
        stats.batches.get(),
        stats.pauses.get(),
        stats.rebalances.get()
    );
    eprintln!(
        "real broker: {} duplicates, {} commits",
        got.duplicates(),
        stats.commits.get()
    );
    devo.shutdown().await;
}
