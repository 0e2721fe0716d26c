//! Shared pieces of the producer's end-to-end tests: a simulator with several tenants, the
//! producer running in-process against it, and a reader of what reached `m365.uris`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use m365_common::envelope::UriMessage;
use m365_common::health::HealthRecord;
use m365_common::kafka::{self, KafkaSettings};
use m365_common::testkit::sim_api_client;
use m365_producer::internal_events::ProducerStats;
use m365_producer::{ProducerSettings, StreamSpec, TenantRuntime};
use m365_sim::tenant::config::{ContentType, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use m365_sim::tenant::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

pub const TENANTS: [&str; 3] = [
    "8a1c2f4e-1b2c-4d5e-8f90-a1b2c3d4e5f6",
    "5b6c7d8e-9f01-4a2b-8c3d-4e5f60718293",
    "c0ffee00-1234-4abc-9def-0123456789ab",
];

/// Producer settings that make a test run in seconds.
pub fn fast_settings() -> ProducerSettings {
    ProducerSettings {
        poll_interval: Duration::from_millis(500),
        settle: chrono::Duration::seconds(1),
        sweep_horizon: chrono::Duration::hours(24),
        sweep_interval: chrono::Duration::seconds(2),
        subscription_cooldown: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(5),
        error_backoff_max: Duration::from_secs(2),
        ..ProducerSettings::default()
    }
}

/// One runtime per tenant, every content type, each stream starting at `start`.
pub fn tenants_for(
    sim: &Simulator,
    ids: &[&str],
    start: Option<DateTime<Utc>>,
) -> Vec<TenantRuntime> {
    ids.iter()
        .map(|t| TenantRuntime {
            tenant_id: t.to_string(),
            api: sim_api_client(
                &sim.base_url(),
                Some(sim.ca_pem()),
                sim.resource(),
                t,
                TEST_CLIENT_ID,
                TEST_CLIENT_SECRET,
            ),
            streams: ContentType::ALL
                .iter()
                .map(|ct| StreamSpec {
                    content_type: ct.as_str().to_string(),
                    start_time: start,
                })
                .collect(),
        })
        .collect()
}

/// The producer running on a task of this test.
pub struct RunningProducer {
    pub cancel: CancellationToken,
    pub stats: Arc<ProducerStats>,
    pub handle: tokio::task::JoinHandle<Result<(), m365_producer::run::ProducerError>>,
}

impl RunningProducer {
    pub fn spawn(
        settings: ProducerSettings,
        kafka: KafkaSettings,
        tenants: Vec<TenantRuntime>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let stats = Arc::new(ProducerStats::default());
        let handle = tokio::spawn(m365_producer::run(
            settings,
            kafka,
            tenants,
            stats.clone(),
            cancel.clone(),
        ));
        Self {
            cancel,
            stats,
            handle,
        }
    }

    /// Asks for a clean shutdown and waits for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the producer failed: {e}"),
            Ok(Err(e)) => panic!("the producer task panicked: {e}"),
            Err(_) => panic!("the producer did not stop within 60 s"),
        }
    }
}

/// Every URI message on the topic, in topic order.
pub async fn read_uris(kafka: &KafkaSettings) -> Vec<UriMessage> {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = out.clone();
    kafka::scan_topic(kafka, &kafka.topics().uris, Default::default(), move |r| {
        let m: UriMessage = serde_json::from_slice(&r.payload.unwrap_or_default())
            .expect("a URI message on m365.uris is valid JSON");
        sink.lock().unwrap().push(m);
    })
    .await
    .expect("m365.uris can be read");
    out.lock().unwrap().clone()
}

/// Every health record on the topic.
pub async fn read_health(kafka: &KafkaSettings) -> Vec<HealthRecord> {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = out.clone();
    kafka::scan_topic(
        kafka,
        &kafka.topics().health,
        Default::default(),
        move |r| {
            let m: HealthRecord = serde_json::from_slice(&r.payload.unwrap_or_default())
                .expect("a health record is valid JSON");
            sink.lock().unwrap().push(m);
        },
    )
    .await
    .expect("m365.health can be read");
    out.lock().unwrap().clone()
}

/// Content ids emitted per stream key, with how often each was emitted.
pub fn emitted_by_stream(uris: &[UriMessage]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for u in uris {
        *out.entry(u.key())
            .or_default()
            .entry(u.content_id.clone())
            .or_default() += 1;
    }
    out
}

/// Content ids the simulator published per stream key, split into those visible before
/// `cutoff` (which must have been emitted by now) and all of them (which may have been).
pub fn published_by_stream(
    sim: &Simulator,
    cutoff: DateTime<Utc>,
) -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let truth = sim.truth();
    let mut must = BTreeMap::new();
    let mut all = BTreeSet::new();
    for (tenant, streams) in &truth.tenants {
        for (ct, s) in streams {
            let key = format!("{tenant}/{ct}");
            let set: &mut BTreeSet<String> = must.entry(key).or_default();
            for b in &s.blobs {
                if b.published {
                    all.insert(b.content_id.clone());
                    if b.visible_at < cutoff {
                        set.insert(b.content_id.clone());
                    }
                }
            }
        }
    }
    (must, all)
}

/// Waits until every blob visible before `cutoff` is on the topic (or `limit` passes), and
/// returns the URIs read last.
pub async fn wait_for_all(
    sim: &Simulator,
    kafka: &KafkaSettings,
    cutoff: DateTime<Utc>,
    limit: Duration,
) -> Vec<UriMessage> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let uris = read_uris(kafka).await;
        let emitted = emitted_by_stream(&uris);
        let (must, _) = published_by_stream(sim, cutoff);
        let complete = must.iter().all(|(k, ids)| {
            let got = emitted.get(k);
            ids.iter().all(|id| got.is_some_and(|g| g.contains_key(id)))
        });
        if complete || tokio::time::Instant::now() > deadline {
            return uris;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asserts the exactness contract: every blob visible before `cutoff` emitted, nothing
/// emitted twice, nothing emitted that the simulator never published.
pub fn assert_exact(sim: &Simulator, uris: &[UriMessage], cutoff: DateTime<Utc>) {
    let emitted = emitted_by_stream(uris);
    let (must, all) = published_by_stream(sim, cutoff);
    let mut missing = Vec::new();
    for (k, ids) in &must {
        for id in ids {
            if !emitted.get(k).is_some_and(|g| g.contains_key(id)) {
                missing.push(format!("{k} {id}"));
            }
        }
    }
    let twice: Vec<String> = emitted
        .iter()
        .flat_map(|(k, m)| {
            m.iter()
                .filter(|(_, n)| **n > 1)
                .map(move |(id, n)| format!("{k} {id} ×{n}"))
        })
        .collect();
    let bogus: Vec<&UriMessage> = uris
        .iter()
        .filter(|u| !all.contains(&u.content_id))
        .collect();
    let expected: usize = must.values().map(BTreeSet::len).sum();
    assert!(
        expected > 0,
        "the simulator published nothing to compare with"
    );
    assert!(
        missing.is_empty(),
        "{} of {expected} blobs missing on m365.uris: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "blobs emitted more than once: {:?}",
        &twice[..twice.len().min(10)]
    );
    assert!(
        bogus.is_empty(),
        "blobs emitted that the simulator never published: {bogus:?}"
    );
}

pub fn base_sim_config(tenants: &[&str]) -> SimConfig {
    let mut cfg = SimConfig::for_tests(tenants);
    cfg.history_hours = 48.0;
    cfg.blob_interval_secs = 1800;
    cfg.records_per_minute = 2.0;
    cfg.page_size = 4;
    cfg.expected_publisher_id = None;
    cfg
}
