//! The producer against the simulator, on the embedded broker and on the real broker the test
//! script starts: content ids on `m365.uris` equal the simulator's truth, none missing, none
//! twice; the API's window rules are never broken; throttling loses nothing.

mod support;

use std::time::Duration;

use chrono::Utc;
use m365_common::health::Kind;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_sim::Simulator;
use support::*;

/// 3 tenants × 5 content types × 48 h of history with late blobs and records repeated across
/// blobs, plus live content while it runs: the URIs equal the truth exactly.
async fn exact_listing(kind: BrokerKind, name: &str) {
    let Some(mut broker) = TestBroker::start(kind, name) else {
        return;
    };
    if kind == BrokerKind::Embedded {
        // The embedded broker runs the transactional path (no crash in this test).
        broker.settings.transactions = m365_common::kafka::TransactionMode::Auto;
    }
    let mut cfg = base_sim_config(&TENANTS);
    cfg.expected_publisher_id = None;
    cfg.faults.late_blob_fraction = 0.2;
    cfg.faults.late_blob_delay_secs = 6;
    cfg.faults.duplicate_record_fraction = 0.2;
    let sim = Simulator::start(cfg).await.expect("simulator starts");

    let producer = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, &TENANTS, None),
    );
    // Let the live generator publish (some late) while the producer runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(120)).await;
    // One more sweep period, so a duplicate emission would have happened by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    producer.stop().await;

    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    assert!(
        uris.iter()
            .all(|u| u.attempt == 0 && u.content_uri.starts_with(sim.base_url().as_str()))
    );
    let violations = sim.violations();
    assert!(
        violations.is_empty(),
        "the producer broke API rules: {violations:?}"
    );
    // Every stream was subscribed by the producer itself.
    let summary = sim.request_summary();
    assert!(summary.total > 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uris_equal_truth_embedded_broker() {
    exact_listing(BrokerKind::Embedded, "exact-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uris_equal_truth_real_broker() {
    exact_listing(BrokerKind::Real, "exact-real").await;
}

/// A cursor older than the 7-day horizon is clamped, never sent: no request starts more than
/// 7 days back or spans more than 24 h, and the skipped range is a gap record on m365.health.
async fn clamp_is_reported(kind: BrokerKind, name: &str) {
    let Some(broker) = TestBroker::start(kind, name) else {
        return;
    };
    let tenant = TENANTS[0];
    let mut cfg = base_sim_config(&[tenant]);
    cfg.history_hours = 6.0;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let ten_days_ago = Utc::now() - chrono::Duration::days(10);
    let producer = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, &[tenant], Some(ten_days_ago)),
    );
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(60)).await;
    producer.stop().await;

    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    let gaps: Vec<_> = read_health(&broker.settings)
        .await
        .into_iter()
        .filter(|h| h.kind == Kind::Gap)
        .collect();
    assert_eq!(gaps.len(), 5, "one clamp gap per content type: {gaps:?}");
    for g in &gaps {
        let gap = g.gap.as_ref().expect("a gap record carries its range");
        assert_eq!(gap.tenant_id, tenant);
        assert!(
            (gap.start - ten_days_ago).num_seconds().abs() <= 1,
            "gap starts at the old cursor: {gap:?}"
        );
        assert!(
            gap.end > Utc::now() - chrono::Duration::days(7),
            "gap ends at the horizon: {gap:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_to_horizon_is_a_gap_embedded_broker() {
    clamp_is_reported(BrokerKind::Embedded, "clamp-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_to_horizon_is_a_gap_real_broker() {
    clamp_is_reported(BrokerKind::Real, "clamp-real").await;
}

/// With 30% of API requests throttled, every blob still arrives, and every request carried
/// `PublisherIdentifier` (the simulator records any that did not).
async fn throttled(kind: BrokerKind, name: &str) {
    let Some(broker) = TestBroker::start(kind, name) else {
        return;
    };
    let tenants = &TENANTS[..2];
    let mut cfg = base_sim_config(tenants);
    cfg.history_hours = 24.0;
    cfg.faults.throttle_fraction = 0.3;
    cfg.throttle.retry_after_secs = Some(0);
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let producer = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, tenants, None),
    );
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(120)).await;
    producer.stop().await;

    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    let summary = sim.request_summary();
    let throttled = summary.by_error_code.get("AF429").copied().unwrap_or(0);
    assert!(
        throttled > 0,
        "the simulator throttled nothing: {summary:?}"
    );
    assert_eq!(summary.without_publisher_identifier, 0);
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_loses_nothing_embedded_broker() {
    throttled(BrokerKind::Embedded, "throttle-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_loses_nothing_real_broker() {
    throttled(BrokerKind::Real, "throttle-real").await;
}

/// A producer stopped and started again resumes from its cursor and ledger: the second run
/// emits only what is new, and the whole is still exact.
async fn restart_resumes(kind: BrokerKind, name: &str) {
    let Some(broker) = TestBroker::start(kind, name) else {
        return;
    };
    let tenants = &TENANTS[..1];
    let sim = Simulator::start(base_sim_config(tenants))
        .await
        .expect("simulator starts");
    let first = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, tenants, None),
    );
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(60)).await;
    first.stop().await;
    let after_first = read_uris(&broker.settings).await.len();

    let second = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, tenants, None),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(60)).await;
    let stats = second.stats.clone();
    second.stop().await;
    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    assert_eq!(
        stats.blobs_emitted.get() as usize,
        uris.len() - after_first,
        "the second run emitted only new blobs"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_embedded_broker() {
    restart_resumes(BrokerKind::Embedded, "restart-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_real_broker() {
    restart_resumes(BrokerKind::Real, "restart-real").await;
}

/// An administrator disables a subscription while the producer runs: the producer sees
/// AF20023, starts the subscription again, and content published after that still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_subscription_is_restarted() {
    let Some(broker) = TestBroker::start(BrokerKind::Embedded, "disabled") else {
        return;
    };
    let tenant = TENANTS[0];
    let mut cfg = base_sim_config(&[tenant]);
    cfg.history_hours = 2.0;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let producer = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, &[tenant], None),
    );
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(60)).await;
    let started_before = producer.stats.subscriptions_started.get();

    sim.disable_subscription(tenant, m365_sim::tenant::config::ContentType::Exchange)
        .expect("disable");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while producer.stats.subscriptions_started.get() == started_before
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        producer.stats.subscriptions_started.get() > started_before,
        "the producer restarted the subscription"
    );
    // Content published after the restart is listed and emitted.
    let late = sim
        .publish_generated(tenant, m365_sim::tenant::config::ContentType::Exchange, 3)
        .expect("publish");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cutoff = sim.now() - chrono::Duration::seconds(1);
    let uris = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(30)).await;
    producer.stop().await;
    assert!(
        uris.iter().any(|u| u.content_id == late),
        "content after the restart arrives"
    );
    assert_exact(&sim, &uris, cutoff);
    sim.shutdown().await;
}

/// A tenant whose unified audit logging is off answers AF20011 to everything: the producer
/// says so on m365.health, precisely, and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditing_disabled_is_reported() {
    let Some(broker) = TestBroker::start(BrokerKind::Embedded, "auditoff") else {
        return;
    };
    let tenant = TENANTS[0];
    let mut cfg = base_sim_config(&[tenant]);
    cfg.tenants[0].audit_enabled = false;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let producer = RunningProducer::spawn(
        fast_settings(),
        broker.settings.clone(),
        tenants_for(&sim, &[tenant], None),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut found = None;
    while found.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        found = read_health(&broker.settings)
            .await
            .into_iter()
            .find(|h| h.kind == Kind::Error && h.msg.contains("AF20011"));
    }
    producer.stop().await;
    let rec = found.expect("an error record about AF20011 on m365.health");
    assert!(rec.msg.contains("audit logging"), "{}", rec.msg);
    assert_eq!(rec.input_name, tenant);
    assert!(read_uris(&broker.settings).await.is_empty());
    sim.shutdown().await;
}
