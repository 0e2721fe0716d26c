//! `/metrics` and `/readyz` of a producer running in-process against the simulator on the
//! embedded broker: not ready without a token, ready after; cursor lag large while nothing can
//! be listed and near zero once caught up; throttles counted when the simulator throttles;
//! seconds-to-horizon shrinking while a stream is stuck on a disabled subscription.

mod support;

use std::sync::Arc;
use std::time::Duration;

use m365_common::metrics::{
    self, API_REQUESTS, API_THROTTLES, KafkaMonitorSettings, PRODUCER_BLOBS_EMITTED,
    PRODUCER_CURSOR_LAG, PRODUCER_HORIZON_REMAINING, READY_OUTPUT, Readiness, Scraped,
};
use m365_common::testkit::eventually;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_producer::internal_events::ProducerStats;
use m365_sim::Simulator;
use m365_sim::tenant::config::ContentType;
use m365_sim::tenant::{FaultKind, FaultTarget};
use support::*;
use tokio_util::sync::CancellationToken;

const DAY: f64 = 86_400.0;

fn stream_value(s: &Scraped, name: &str, tenant: &str, ct: ContentType) -> Option<f64> {
    s.get(name, &[("tenant", tenant), ("content_type", ct.as_str())])
}

fn all_lags(s: &Scraped, tenant: &str) -> Vec<f64> {
    ContentType::ALL
        .iter()
        .filter_map(|ct| stream_value(s, PRODUCER_CURSOR_LAG.name, tenant, *ct))
        .collect()
}

// The whole story of one producer's metrics, in order (see the file comment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_metrics_follow_the_pipeline() {
    let broker = TestBroker::start(BrokerKind::Embedded, "metrics-producer").expect("broker");
    let tenant = TENANTS[0];
    let sim = Simulator::start(base_sim_config(&[tenant]))
        .await
        .expect("simulator starts");
    // No token can be had until the faults are cleared.
    sim.faults()
        .inject(FaultTarget::Token, FaultKind::Internal500, 100_000);

    let tenants = tenants_for(&sim, &[tenant], None);
    let stats = Arc::new(ProducerStats::default());
    let registry = metrics::new_registry();
    let readiness = Readiness::new();
    let cancel = CancellationToken::new();
    m365_producer::metrics::install(
        &registry,
        &readiness,
        stats.clone(),
        &tenants,
        &broker.settings,
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

    // Before the producer runs and without a token: 503 naming the token and the output.
    let (status, body) = readyz().await;
    assert_eq!(status, 503);
    let not_ready: Vec<String> = serde_json::from_value(body["not_ready"].clone()).unwrap();
    assert!(
        not_ready.contains(&metrics::ready_token(tenant))
            && not_ready.contains(&READY_OUTPUT.to_string()),
        "{body}"
    );

    let mut settings = fast_settings();
    // A disabled subscription must stay disabled so the stream stays stuck.
    settings.manage_subscriptions = false;
    for ct in ContentType::ALL {
        sim.enable_subscription(tenant, ct).unwrap();
    }
    let producer_cancel = CancellationToken::new();
    let producer = tokio::spawn(m365_producer::run(
        settings,
        broker.settings.clone(),
        tenants,
        stats.clone(),
        producer_cancel.clone(),
    ));

    // Streams start 7 days back and cannot list without a token: the lag is days.
    assert!(
        eventually(Duration::from_secs(60), || async {
            let s = metrics::scrape(addr).await.unwrap();
            let lags = all_lags(&s, tenant);
            lags.len() == ContentType::ALL.len() && lags.iter().all(|l| *l > 6.0 * DAY)
        })
        .await,
        "every stream shows a lag of days before its first listing"
    );
    assert_eq!(readyz().await.0, 503, "still no token");

    // Tokens flow: ready, and every stream catches up (lag near the settle time).
    sim.faults().clear();
    assert!(
        eventually(Duration::from_secs(60), || async {
            readyz().await.0 == 200
        })
        .await,
        "ready once a token is had and the committer is connected"
    );
    assert!(
        eventually(Duration::from_secs(120), || async {
            let s = metrics::scrape(addr).await.unwrap();
            let lags = all_lags(&s, tenant);
            lags.len() == ContentType::ALL.len() && lags.iter().all(|l| *l < 60.0)
        })
        .await,
        "every stream catches up"
    );
    let s = metrics::scrape(addr).await.unwrap();
    for ct in ContentType::ALL {
        let left = stream_value(&s, PRODUCER_HORIZON_REMAINING.name, tenant, ct).unwrap();
        assert!(left > 6.9 * DAY && left <= 7.0 * DAY, "{ct:?}: {left}");
    }
    let emitted = s.get(PRODUCER_BLOBS_EMITTED.name, &[]).unwrap();
    assert!(emitted > 0.0);
    assert!(emitted <= stats.blobs_emitted.get() as f64);

    // The simulator throttles half the requests: throttles are counted, as AF429 outcomes too.
    let before = s.sum(API_THROTTLES.name, &[("tenant", tenant)]);
    sim.faults().update(|f| f.throttle_fraction = 0.5);
    assert!(
        eventually(Duration::from_secs(60), || async {
            let s = metrics::scrape(addr).await.unwrap();
            s.sum(API_THROTTLES.name, &[("tenant", tenant)]) > before
        })
        .await,
        "throttles are counted"
    );
    let s = metrics::scrape(addr).await.unwrap();
    let throttled_outcomes: f64 = s
        .matching(API_REQUESTS.name, &[("tenant", tenant)])
        .filter(|x| {
            x.labels
                .get("outcome")
                .is_some_and(|o| o == "AF429" || o == "429")
        })
        .map(|x| x.value)
        .sum();
    assert!(throttled_outcomes > 0.0, "throttled requests by outcome");
    sim.faults().clear();

    // An administrator disables one subscription: that stream stops advancing, its time to the
    // horizon shrinks and its lag grows, while the others stay caught up.
    let stuck = ContentType::ALL[0];
    let errors_before = stats.tick_errors.get();
    sim.disable_subscription(tenant, stuck).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            stats.tick_errors.get() > errors_before
        })
        .await,
        "the stream fails on the disabled subscription"
    );
    let first = metrics::scrape(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = metrics::scrape(addr).await.unwrap();
    let left1 = stream_value(&first, PRODUCER_HORIZON_REMAINING.name, tenant, stuck).unwrap();
    let left2 = stream_value(&second, PRODUCER_HORIZON_REMAINING.name, tenant, stuck).unwrap();
    assert!(
        left2 < left1,
        "seconds to horizon shrink: {left1} then {left2}"
    );
    let lag1 = stream_value(&first, PRODUCER_CURSOR_LAG.name, tenant, stuck).unwrap();
    let lag2 = stream_value(&second, PRODUCER_CURSOR_LAG.name, tenant, stuck).unwrap();
    assert!(lag2 > lag1, "lag grows: {lag1} then {lag2}");
    let other = ContentType::ALL[1];
    assert!(stream_value(&second, PRODUCER_CURSOR_LAG.name, tenant, other).unwrap() < 60.0);

    producer_cancel.cancel();
    tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("producer stops")
        .expect("producer task")
        .expect("producer ends cleanly");
    assert_eq!(readyz().await.0, 503, "not ready once the producer stopped");
    cancel.cancel();
    server.join().await;
    sim.shutdown().await;
}
