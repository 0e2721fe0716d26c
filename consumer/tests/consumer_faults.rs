//! The consumer against single blobs with one fault each, on the embedded broker: forged
//! content URIs are refused without a request, a blob that expires before its retry is one
//! gap record, and every malformed-blob case has its own test.

mod consumer_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use consumer_support::*;
use m365_common::envelope::UriMessage;
use m365_common::health::Kind;
use m365_common::kafka::KafkaSettings;
use m365_common::testkit::{self, BrokerKind, TestBroker, eventually};
use m365_consumer::internal_events::ConsumerStats;
use m365_sim::Simulator;
use m365_sim::tenant::{ContentType, FaultKind, FaultTarget};

const CT: &str = "Audit.Exchange";

fn record(id: &str, workload: Option<&str>) -> String {
    match workload {
        Some(w) => format!(
            r#"{{"CreationTime":"2026-11-27T10:00:00","Id":"{id}","Operation":"Send","RecordType":2,"Workload":"{w}","UserId":"a@b.c"}}"#
        ),
        None => format!(
            r#"{{"CreationTime":"2026-11-27T10:00:00","Id":"{id}","Operation":"Send","RecordType":2,"UserId":"a@b.c"}}"#
        ),
    }
}

/// A broker, a quiet simulator, and the consumer running on them.
struct Rig {
    _broker: TestBroker,
    kafka: KafkaSettings,
    sim: Simulator,
    consumer: Option<RunningConsumer>,
}

impl Rig {
    async fn start(name: &str) -> Rig {
        Rig::start_with(name, fast_settings("0")).await
    }

    async fn start_with(name: &str, settings: m365_consumer::ConsumerSettings) -> Rig {
        let broker = TestBroker::start(BrokerKind::Embedded, name).expect("embedded broker");
        let kafka = ordered(&broker);
        let sim = start_quiet_sim(&[TENANT, OTHER_TENANT]).await;
        m365_common::kafka::ensure_topics(&kafka)
            .await
            .expect("topics");
        let consumer =
            RunningConsumer::spawn(settings, kafka.clone(), vec![consumer_tenant(&sim, TENANT)]);
        Rig {
            _broker: broker,
            kafka,
            sim,
            consumer: Some(consumer),
        }
    }

    fn stats(&self) -> Arc<ConsumerStats> {
        self.consumer.as_ref().expect("running").stats.clone()
    }

    /// Publishes a blob of raw elements and writes its URI; returns the content id.
    async fn publish(&self, elements: Vec<String>) -> String {
        let id = self
            .sim
            .publish_records(TENANT, ContentType::Exchange, elements)
            .expect("published");
        put_uris(&self.kafka, &[uri_for(&self.sim, TENANT, CT, &id)]).await;
        id
    }

    /// Waits until `n` blobs are done (fetched, dead) and returns the events.
    async fn settle(&self, fetched: u64, dead: u64) -> Vec<Event> {
        let stats = self.stats();
        let ok = eventually(Duration::from_secs(40), || {
            let stats = stats.clone();
            async move { stats.blobs_fetched.get() >= fetched && stats.blobs_dead.get() >= dead }
        })
        .await;
        assert!(
            ok,
            "blobs did not complete: fetched {} dead {}",
            stats.blobs_fetched.get(),
            stats.blobs_dead.get()
        );
        read_events(&self.kafka).await
    }

    async fn stop(mut self) {
        if let Some(c) = self.consumer.take() {
            c.stop().await;
        }
        self.sim.shutdown().await;
    }
}

fn ids(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    v.sort();
    v
}

fn good(n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| record(&format!("{prefix}-{i:03}"), Some("Exchange")))
        .collect()
}

// Forged content URIs (another host, plain http, another tenant's path, user info) are
// dead-lettered with the reason, and neither a listener on the forged host nor the simulator
// receives a request for them; a genuine blob after them is still fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_content_uris_are_refused_without_a_request() {
    let rig = Rig::start("c-forged").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forged_port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let accept = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sim_port = rig.sim.local_addr().port();
    let base = uri_for(&rig.sim, TENANT, CT, "x");
    let forged = |uri: String, cid: &str| UriMessage {
        content_uri: uri,
        content_id: cid.into(),
        ..base.clone()
    };
    let uris = vec![
        forged(
            format!("https://127.0.0.1:{forged_port}/api/v1.0/{TENANT}/activity/feed/audit/f1"),
            "f1",
        ),
        forged(
            format!("http://127.0.0.1:{forged_port}/api/v1.0/{TENANT}/activity/feed/audit/f2"),
            "f2",
        ),
        forged(
            format!("http://127.0.0.1:{sim_port}/api/v1.0/{TENANT}/activity/feed/audit/f3"),
            "f3",
        ),
        forged(
            format!("https://127.0.0.1:{sim_port}/api/v1.0/{OTHER_TENANT}/activity/feed/audit/f4"),
            "f4",
        ),
        forged(
            format!("https://evil@127.0.0.1:{sim_port}/api/v1.0/{TENANT}/activity/feed/audit/f5"),
            "f5",
        ),
    ];
    put_uris(&rig.kafka, &uris).await;
    let genuine = rig.publish(good(3, "genuine")).await;
    let events = rig.settle(1, 5).await;
    assert_eq!(
        ids(&events),
        vec!["genuine-000", "genuine-001", "genuine-002"]
    );
    let dead = read_uri_topic(&rig.kafka, &rig.kafka.topics().dead).await;
    let dead_ids: BTreeSet<&str> = dead.iter().map(|d| d.content_id.as_str()).collect();
    assert_eq!(
        dead_ids,
        ["f1", "f2", "f3", "f4", "f5"].into_iter().collect()
    );
    assert!(
        dead.iter().all(|d| d
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("foreign_content_uri"))),
        "{dead:?}"
    );
    assert_eq!(rig.stats().uris_refused.get(), 5);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the forged host received a connection"
    );
    let blob_requests: Vec<String> = rig
        .sim
        .requests()
        .into_iter()
        .map(|r| format!("{r:?}"))
        .filter(|r| r.contains("/audit/f"))
        .collect();
    assert!(
        blob_requests.is_empty(),
        "the simulator saw forged requests: {blob_requests:?}"
    );
    assert!(
        rig.sim
            .requests()
            .iter()
            .any(|r| format!("{r:?}").contains(&genuine))
    );
    let gaps = read_health(&rig.kafka)
        .await
        .into_iter()
        .filter(|h| h.kind == Kind::Gap)
        .count();
    assert_eq!(gaps, 5, "every dead blob is a gap record");
    accept.abort();
    rig.stop().await;
}

// A blob whose download fails and whose content expires before the retry is due: exactly one
// dead message and one gap record naming its id and the reason, and no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_expiring_before_its_retry_is_one_gap() {
    // The retry is due 10 to 20 s after the failure, the content expires after 3 s.
    let mut settings = fast_settings("0");
    settings.retry.backoff_base = Duration::from_secs(20);
    settings.retry.backoff_max = Duration::from_secs(20);
    let rig = Rig::start_with("c-expiry", settings).await;
    // A first blob, so the consumer is surely running before the short-lived one arrives.
    rig.publish(good(1, "warm")).await;
    rig.settle(1, 0).await;
    let id = rig
        .sim
        .publish_records(TENANT, ContentType::Exchange, good(2, "late"))
        .unwrap();
    rig.sim
        .faults()
        .inject(FaultTarget::Blob, FaultKind::Internal500, 1);
    let mut uri = uri_for(&rig.sim, TENANT, CT, &id);
    uri.content_expiration = chrono::Utc::now() + chrono::Duration::seconds(3);
    put_uris(&rig.kafka, &[uri]).await;
    let stats = rig.stats();
    let ok = eventually(Duration::from_secs(30), || {
        let s = stats.clone();
        async move { s.blobs_dead.get() >= 1 }
    })
    .await;
    assert!(ok, "the blob was not dead-lettered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead = read_uri_topic(&rig.kafka, &rig.kafka.topics().dead).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].content_id, id);
    assert!(
        dead[0].reason.as_deref().unwrap().contains("expired"),
        "{:?}",
        dead[0].reason
    );
    let gaps: Vec<_> = read_health(&rig.kafka)
        .await
        .into_iter()
        .filter(|h| h.kind == Kind::Gap)
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let gap = gaps[0].gap.as_ref().unwrap();
    assert_eq!(gap.content_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        (gap.tenant_id.as_str(), gap.content_type.as_str()),
        (TENANT, CT)
    );
    assert!(
        gap.reason.contains("expired") && gap.end > gap.start,
        "{gap:?}"
    );
    assert!(
        stats.blobs_retried.get() >= 1,
        "the blob went through uri_retry first"
    );
    assert_eq!(ids(&read_events(&rig.kafka).await), vec!["warm-000"]);
    rig.stop().await;
}

// A body cut off half-way (HTTP 200) is retried; every record arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_retried_and_exact() {
    let rig = Rig::start("c-truncated").await;
    rig.sim
        .faults()
        .inject(FaultTarget::Blob, FaultKind::TruncatedBody, 1);
    rig.publish(good(40, "t")).await;
    let events = rig.settle(1, 0).await;
    assert_eq!(
        ids(&events),
        (0..40).map(|i| format!("t-{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(rig.stats().blobs_retried.get(), 1);
    rig.stop().await;
}

// A body with overwritten bytes (invalid JSON, HTTP 200) is retried; every record arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_body_is_retried_and_exact() {
    let rig = Rig::start("c-garbled").await;
    rig.sim
        .faults()
        .inject(FaultTarget::Blob, FaultKind::GarbledBody, 1);
    rig.publish(good(40, "g")).await;
    let events = rig.settle(1, 0).await;
    assert_eq!(
        ids(&events),
        (0..40).map(|i| format!("g-{i:03}")).collect::<Vec<_>>()
    );
    assert!(rig.stats().blobs_retried.get() >= 1);
    rig.stop().await;
}

// A 502 HTML error page instead of the blob is retried; every record arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_error_page_is_retried_and_exact() {
    let rig = Rig::start("c-html").await;
    rig.sim
        .faults()
        .inject(FaultTarget::Blob, FaultKind::HtmlError, 1);
    rig.publish(good(5, "h")).await;
    let events = rig.settle(1, 0).await;
    assert_eq!(ids(&events).len(), 5);
    assert_eq!(rig.stats().blobs_retried.get(), 1);
    rig.stop().await;
}

// An empty array is a completed blob with no events, no retry and no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob_completes_without_events() {
    let rig = Rig::start("c-empty").await;
    rig.publish(Vec::new()).await;
    let events = rig.settle(1, 0).await;
    assert!(events.is_empty());
    let s = rig.stats();
    assert_eq!((s.blobs_retried.get(), s.blobs_dead.get()), (0, 0));
    rig.stop().await;
}

// Blobs whose URIs arrive together overlap (the last sends of one are acknowledged while the
// next is sent); a blob is counted only once its offset is committed, and the last blob before
// the topic goes quiet is committed without waiting for another URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_blob_is_committed_in_order_and_the_last_without_a_successor() {
    let rig = Rig::start("c-overlap").await;
    let uris: Vec<_> = (0..4)
        .map(|b| {
            let id = rig
                .sim
                .publish_records(TENANT, ContentType::Exchange, good(50, &format!("o{b}")))
                .expect("published");
            uri_for(&rig.sim, TENANT, CT, &id)
        })
        .collect();
    put_uris(&rig.kafka, &uris).await;
    let stats = rig.stats();
    assert!(
        eventually(Duration::from_secs(40), || {
            let stats = stats.clone();
            async move { stats.blobs_fetched.get() >= 4 }
        })
        .await,
        "blobs fetched: {}",
        stats.blobs_fetched.get()
    );
    // No waiting here: counted means committed. All four URIs share one stream, so one
    // partition; its committed offset is its end.
    let group = m365_consumer::ConsumerSettings::group_id(&rig.kafka.topic_prefix);
    let uris = rig.kafka.topics().uris;
    let committed = testkit::committed_offsets(&rig.kafka, &group, &[&uris]);
    let ends = testkit::end_offsets(&rig.kafka, &[&uris]);
    let busy: Vec<_> = ends.iter().filter(|(_, end)| **end > 0).collect();
    assert_eq!(busy.len(), 1, "one partition holds the URIs: {ends:?}");
    let (partition, end) = busy[0];
    assert_eq!(
        committed.get(partition),
        Some(end),
        "committed {committed:?}, ends {ends:?}"
    );
    let events = read_events(&rig.kafka).await;
    assert_eq!(events.len(), 200);
    assert_eq!(ids(&events).into_iter().collect::<BTreeSet<_>>().len(), 200);
    rig.stop().await;
}

// Elements that are not records (a number, an object without Id, an array) are skipped and
// counted, with a warning record; the records around them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_record_elements_are_skipped_and_reported() {
    let rig = Rig::start("c-nonrecord").await;
    let mut elements = good(2, "n");
    elements.insert(1, "42".into());
    elements.insert(2, r#"{"Workload":"Exchange","Operation":"NoId"}"#.into());
    elements.push("[1,2]".into());
    rig.publish(elements).await;
    let events = rig.settle(1, 0).await;
    assert_eq!(ids(&events), vec!["n-000", "n-001"]);
    let s = rig.stats();
    assert_eq!(s.elements_rejected.get("not_an_object"), 2);
    assert_eq!(s.elements_rejected.get("missing_id"), 1);
    let warned = read_health(&rig.kafka)
        .await
        .into_iter()
        .any(|h| h.counters.get("missing_id") == Some(&1));
    assert!(warned, "a health record reports the skipped elements");
    rig.stop().await;
}

// A record over max_record_bytes is skipped and counted; the others arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_is_skipped_and_counted() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-oversized").unwrap();
    let kafka = ordered(&broker);
    let sim = start_quiet_sim(&[TENANT]).await;
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    let mut settings = fast_settings("0");
    settings.split.max_record_bytes = 4096;
    let consumer =
        RunningConsumer::spawn(settings, kafka.clone(), vec![consumer_tenant(&sim, TENANT)]);
    let mut elements = good(2, "o");
    elements.insert(
        1,
        format!(
            r#"{{"Id":"big","Workload":"Exchange","Pad":"{}"}}"#,
            "x".repeat(10_000)
        ),
    );
    let id = sim
        .publish_records(TENANT, ContentType::Exchange, elements)
        .unwrap();
    put_uris(&kafka, &[uri_for(&sim, TENANT, CT, &id)]).await;
    let stats = consumer.stats.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = stats.clone();
            async move { s.blobs_fetched.get() >= 1 }
        })
        .await
    );
    assert_eq!(ids(&read_events(&kafka).await), vec!["o-000", "o-001"]);
    assert_eq!(stats.elements_rejected.get("too_large"), 1);
    consumer.stop().await;
    sim.shutdown().await;
}

// Records without a Workload get the fallback tag and are counted; others get their
// workload's tag, and a stream's override_tag replaces both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_follow_workload_fallback_and_override() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-tags").unwrap();
    let kafka = ordered(&broker);
    let sim = start_quiet_sim(&[TENANT]).await;
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    let mut tenant = consumer_tenant(&sim, TENANT);
    tenant
        .streams
        .get_mut("Audit.SharePoint")
        .unwrap()
        .override_tag = Some("my.app.sharepoint".into());
    let consumer = RunningConsumer::spawn(fast_settings("0"), kafka.clone(), vec![tenant]);
    let a = sim
        .publish_records(
            TENANT,
            ContentType::Exchange,
            vec![record("w1", Some("MicrosoftTeams")), record("w2", None)],
        )
        .unwrap();
    let b = sim
        .publish_records(
            TENANT,
            ContentType::SharePoint,
            vec![record("s1", Some("SharePoint"))],
        )
        .unwrap();
    put_uris(
        &kafka,
        &[
            uri_for(&sim, TENANT, CT, &a),
            uri_for(&sim, TENANT, "Audit.SharePoint", &b),
        ],
    )
    .await;
    let stats = consumer.stats.clone();
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = stats.clone();
            async move { s.blobs_fetched.get() >= 2 }
        })
        .await
    );
    let events = read_events(&kafka).await;
    let tag = |id: &str| {
        events
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.headers["tag"].clone())
            .unwrap()
    };
    assert_eq!(tag("w1"), "cloud.office365.management.microsoftteams");
    assert_eq!(tag("w2"), "cloud.office365.management.unknown");
    assert_eq!(tag("s1"), "my.app.sharepoint");
    assert_eq!(stats.records_without_workload.get(), 1);
    let w1 = events.iter().find(|e| e.id == "w1").unwrap();
    assert_eq!(
        String::from_utf8(w1.payload.clone()).unwrap(),
        record("w1", Some("MicrosoftTeams")),
        "bytes forwarded as sent"
    );
    assert_eq!(w1.headers["content_id"], a);
    consumer.stop().await;
    sim.shutdown().await;
}

// The dedup state survives a restart through m365.state: after a clean stop the snapshot
// (with its seed) is on the state topic, and a new blob repeating old records after the
// restart sends only the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_state_survives_restart() {
    let mut rig = Rig::start("c-restart").await;
    rig.publish(good(10, "r")).await;
    rig.settle(1, 0).await;
    rig.consumer.take().unwrap().stop().await;
    let table = m365_common::kafka::read_table(&rig.kafka, &rig.kafka.topics().state)
        .await
        .unwrap();
    assert!(
        table.contains_key(&format!("dedup/{TENANT}/{CT}/meta")),
        "{:?}",
        table.keys().collect::<Vec<_>>()
    );
    rig.consumer = Some(RunningConsumer::spawn(
        fast_settings("0"),
        rig.kafka.clone(),
        vec![consumer_tenant(&rig.sim, TENANT)],
    ));
    let mut again = good(10, "r");
    again.extend(good(3, "new"));
    rig.publish(again).await;
    let events = rig.settle(1, 0).await;
    assert_eq!(events.len(), 13, "only the 3 new records were sent again");
    let s = rig.stats();
    assert_eq!(
        s.dedup_restored.get(),
        1,
        "the filter came from the snapshot"
    );
    assert_eq!(s.records_deduplicated.get(), 10);
    rig.stop().await;
}
