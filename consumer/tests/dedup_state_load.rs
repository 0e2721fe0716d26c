//! Loading several streams' dedup filters with one scan of `m365.events`: each stream takes
//! only its own records, and only those its snapshot does not cover.

use std::sync::Arc;
use std::time::Duration;

use m365_common::envelope::EventHeaders;
use m365_common::health::{HealthRecord, Kind, Level};
use m365_common::kafka::{self, OutRecord};
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_consumer::dedup::DedupSettings;
use m365_consumer::internal_events::ConsumerStats;
use m365_consumer::kafka_io::Output;
use m365_consumer::state::{StateStore, StreamId};

fn event(topic: &str, tenant: &str, content_type: &str, id: &str) -> OutRecord {
    OutRecord::new(topic, id.as_bytes().to_vec(), format!(r#"{{"Id":"{id}"}}"#))
        .header(EventHeaders::TENANT_ID, tenant)
        .header(EventHeaders::CONTENT_TYPE, content_type)
}

fn small() -> DedupSettings {
    DedupSettings {
        expected_items: 1_000,
        generation_items: 500,
        max_expected_false_drops: 0.001,
    }
}

// Proves one load_many call gives each stream exactly what one load each would: stream A has
// a snapshot taken after its first records (so the scan starts there for A) and gets its
// later records too; stream B has no snapshot and gets all of its records from the start;
// stream C is on the topic but not asked for and is not touched; records of A never leak
// into B or the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scan_loads_each_stream_from_its_own_snapshot() {
    let broker = TestBroker::start(BrokerKind::Embedded, "state-load").unwrap();
    let kafka = broker.settings.clone();
    kafka::ensure_topics(&kafka).await.unwrap();
    let topics = kafka.topics();
    let start = HealthRecord::new("job", "office365", "test", Level::Info, Kind::Start, "t");
    let out = Output::connect(
        &kafka,
        "state-load-test",
        Duration::from_secs(60),
        start.to_record(&topics.health),
    )
    .await
    .unwrap();
    let stats = Arc::new(ConsumerStats::default());
    let store = StateStore::new(kafka.clone(), 100_000, stats.clone());
    let (a, b, c) = (
        StreamId::new("t1", "Audit.Exchange"),
        StreamId::new("t1", "Audit.General"),
        StreamId::new("t2", "Audit.Exchange"),
    );
    let send = |stream: &StreamId, ids: std::ops::Range<u32>, tag: &str| {
        ids.map(|n| {
            event(
                &topics.events,
                &stream.tenant_id,
                &stream.content_type,
                &format!("{tag}-{n}"),
            )
        })
        .collect::<Vec<_>>()
    };
    out.send_all(&send(&a, 0..20, "a-early")).await.unwrap();
    out.send_all(&send(&b, 0..20, "b-early")).await.unwrap();
    out.send_all(&send(&c, 0..20, "c")).await.unwrap();

    // A's snapshot holds only a-early-0..9 (the loaded filter is replaced before saving) while
    // its offsets cover all 20 early records: a scan that re-read A from the beginning (as B
    // needs) would wrongly bring back a-early-10..19.
    let mut a_state = store.load(&a, small()).await.unwrap();
    assert!(
        a_state.dedup.contains("a-early-19"),
        "a single load scans everything"
    );
    let mut fresh = m365_consumer::dedup::Dedup::new(small());
    for n in 0..10 {
        fresh.check_and_insert(&format!("a-early-{n}"));
    }
    a_state.dedup = fresh;
    a_state.dirty = true;
    store.save(&a, &mut a_state, &out).await.unwrap();

    out.send_all(&send(&a, 0..15, "a-late")).await.unwrap();
    out.send_all(&send(&b, 0..15, "b-late")).await.unwrap();

    let before = stats.dedup_replayed_ids.get();
    let loaded = store
        .load_many(vec![(a.clone(), small()), (b.clone(), small())])
        .await
        .unwrap();
    assert_eq!(
        loaded.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        vec![a.clone(), b.clone()]
    );
    let (la, lb) = (&loaded[0].1.dedup, &loaded[1].1.dedup);
    for n in 0..10 {
        assert!(la.contains(&format!("a-early-{n}")), "A's snapshot");
    }
    for n in 10..20 {
        assert!(
            !la.contains(&format!("a-early-{n}")),
            "before A's snapshot offsets: not re-read"
        );
    }
    for n in 0..15 {
        assert!(la.contains(&format!("a-late-{n}")), "after A's snapshot");
        assert!(lb.contains(&format!("b-late-{n}")));
        assert!(!la.contains(&format!("b-late-{n}")), "B's ids stay in B");
        assert!(!lb.contains(&format!("a-late-{n}")), "A's ids stay in A");
    }
    for n in 0..20 {
        assert!(
            lb.contains(&format!("b-early-{n}")),
            "B has no snapshot: all"
        );
        assert!(!la.contains(&format!("c-{n}")) && !lb.contains(&format!("c-{n}")));
    }
    assert_eq!(
        stats.dedup_replayed_ids.get() - before,
        15 + 35,
        "A replays its 15 late ids, B all 35"
    );
    assert_eq!(stats.dedup_restored.get(), 1, "A came from its snapshot");
}
