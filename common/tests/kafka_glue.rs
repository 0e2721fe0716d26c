//! The Kafka glue on both brokers: topics are created once, the Committer uses transactions
//! where the broker has them and falls back where it does not (without losing the probe
//! record), and a compacted table reads back the latest value of each key.

use m365_common::kafka::{self, Committer, OutRecord, TransactionMode};
use m365_common::testkit::{BrokerKind, TestBroker};

async fn committer_round_trip(kind: BrokerKind, mode: TransactionMode, expect_transactional: bool) {
    let Some(mut broker) = TestBroker::start(kind, "glue") else {
        return;
    };
    broker.settings.transactions = mode;
    let s = &broker.settings;
    kafka::ensure_topics(s).await.expect("topics are created");
    // A second call finds them and does nothing.
    kafka::ensure_topics(s)
        .await
        .expect("existing topics are fine");
    let topics = s.topics();
    let probe = OutRecord::new(&topics.health, "probe", b"start".to_vec());
    let c = Committer::new(s, &format!("{}-glue", s.topic_prefix), probe)
        .await
        .expect("committer");
    assert_eq!(
        c.is_transactional(),
        expect_transactional,
        "transactions on {kind:?} with {mode:?}"
    );

    c.commit(vec![
        vec![
            OutRecord::new(&topics.state, "k1", b"v1".to_vec()),
            OutRecord::new(&topics.state, "k2", b"v2".to_vec()),
        ],
        vec![
            OutRecord::new(&topics.state, "k1", b"v1-new".to_vec()),
            OutRecord::tombstone(&topics.state, "k2"),
        ],
    ])
    .await
    .expect("commit");
    let table = kafka::read_table(s, &topics.state)
        .await
        .expect("read the state table");
    assert_eq!(table.get("k1").map(Vec::as_slice), Some(&b"v1-new"[..]));
    assert!(!table.contains_key("k2"), "a tombstone removes the key");

    let health = kafka::read_table(s, &topics.health)
        .await
        .expect("read health");
    assert_eq!(
        health.get("probe").map(Vec::as_slice),
        Some(&b"start"[..]),
        "the probe record is never lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_commits_in_transactions() {
    committer_round_trip(BrokerKind::Embedded, TransactionMode::Auto, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_off_uses_ordered_phases() {
    committer_round_trip(BrokerKind::Embedded, TransactionMode::Off, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_without_transactions_falls_back_in_auto_mode() {
    committer_round_trip(BrokerKind::Real, TransactionMode::Auto, false).await;
}
