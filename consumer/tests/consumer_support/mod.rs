//! Shared pieces of the consumer's tests: a simulator, API clients on it, the consumer (and
//! producer) running in-process, URI messages written by hand, and readers of the output
//! topics with the exactness check against the simulator's truth.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use m365_common::api::{ApiClient, ApiSettings, http_client};
use m365_common::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use m365_common::envelope::UriMessage;
use m365_common::health::HealthRecord;
use m365_common::kafka::{self, KafkaSettings, OutRecord};
use m365_consumer::internal_events::ConsumerStats;
use m365_consumer::settings::{RetryPolicy, StreamOptions, dedup_settings};
use m365_consumer::{ConsumerSettings, ConsumerTenant};
use m365_sim::tenant::config::{ContentType, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use m365_sim::tenant::{SimConfig, Simulator};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "8a1c2f4e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
pub const OTHER_TENANT: &str = "5b6c7d8e-9f01-4a2b-8c3d-4e5f60718293";

/// A simulator config without live generation or faults: only what a test publishes, plus
/// `history_hours` of generated history.
pub fn quiet_sim(tenants: &[&str], history_hours: f64) -> SimConfig {
    let mut cfg = SimConfig::for_tests(tenants);
    cfg.history_hours = history_hours;
    cfg.live_generation = false;
    cfg.expected_publisher_id = None;
    cfg
}

/// The broker's settings with Kafka transactions off. librdkafka's mock cluster (the embedded
/// broker) accepts transactions but does not implement them: aborted records stay visible to
/// `read_committed` readers and `TxnOffsetCommit` stores nothing. Tests that abort (faults) or
/// restart therefore run the ordered path there; the transactional path is covered by the
/// fault-free end-to-end test.
pub fn ordered(broker: &m365_common::testkit::TestBroker) -> KafkaSettings {
    let mut k = broker.settings.clone();
    k.transactions = kafka::TransactionMode::Off;
    k
}

/// Starts a quiet simulator with every subscription of `tenants` enabled (as the producer
/// would have left them), so blobs published by the test can be downloaded.
pub async fn start_quiet_sim(tenants: &[&str]) -> Simulator {
    let sim = Simulator::start(quiet_sim(tenants, 0.0))
        .await
        .expect("simulator starts");
    for t in tenants {
        for ct in ContentType::ALL {
            sim.enable_subscription(t, ct)
                .expect("subscription enabled");
        }
    }
    sim
}

/// An API client on the simulator that makes one attempt per request, so every transient
/// failure reaches the consumer's retry path (the uri_retry service) instead of the client's
/// own retry loop.
pub fn one_shot_client(sim: &Simulator, tenant: &str) -> Arc<ApiClient> {
    let http = http_client(Some(sim.ca_pem())).expect("HTTP client");
    let tokens = TokenClient::new(
        TokenSettings {
            authority_base: sim.base_url(),
            tenant: tenant.into(),
            client_id: TEST_CLIENT_ID.into(),
            credential: Credential::ClientSecret(SecretString::from(
                TEST_CLIENT_SECRET.to_string(),
            )),
            endpoint: TokenEndpoint::V2,
            resource: sim.resource().into(),
        },
        http.clone(),
    )
    .expect("token client");
    let mut settings = ApiSettings::new(sim.base_url(), tenant);
    settings.retry.max_attempts = 1;
    Arc::new(ApiClient::new(settings, Arc::new(tokens), http))
}

/// Consumer settings that make a test run in seconds.
pub fn fast_settings(instance: &str) -> ConsumerSettings {
    ConsumerSettings {
        instance_id: instance.into(),
        retry: RetryPolicy {
            max_attempts: None,
            backoff_base: Duration::from_millis(300),
            backoff_max: Duration::from_secs(1),
            damaged_body_retries: 2,
        },
        snapshot_interval: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(2),
        session_timeout: Duration::from_secs(6),
        ..ConsumerSettings::default()
    }
}

/// Small dedup filters (fast snapshots) for every content type.
pub fn small_streams() -> HashMap<String, StreamOptions> {
    ContentType::ALL
        .iter()
        .map(|ct| {
            (
                ct.as_str().to_string(),
                StreamOptions {
                    override_tag: None,
                    dedup: dedup_settings(20_000, 2, 1e-9),
                },
            )
        })
        .collect()
}

pub fn consumer_tenant(sim: &Simulator, tenant: &str) -> ConsumerTenant {
    ConsumerTenant {
        tenant_id: tenant.into(),
        name: tenant.into(),
        api: one_shot_client(sim, tenant),
        streams: small_streams(),
        uri_retry: true,
    }
}

/// The consumer running on a task of this test.
pub struct RunningConsumer {
    pub cancel: CancellationToken,
    pub stats: Arc<ConsumerStats>,
    pub handle: tokio::task::JoinHandle<Result<(), m365_consumer::ConsumerError>>,
}

impl RunningConsumer {
    pub fn spawn(
        settings: ConsumerSettings,
        kafka: KafkaSettings,
        tenants: Vec<ConsumerTenant>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let stats = Arc::new(ConsumerStats::default());
        let handle = tokio::spawn(m365_consumer::run(
            settings,
            kafka,
            tenants,
            stats.clone(),
            cancel.clone(),
        ));
        RunningConsumer {
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
            Ok(Ok(Err(e))) => panic!("the consumer failed: {e}"),
            Ok(Err(e)) => panic!("the consumer task panicked: {e}"),
            Err(_) => panic!("the consumer did not stop within 60 s"),
        }
    }
}

/// The URI message the producer would write for a blob the simulator published.
pub fn uri_for(sim: &Simulator, tenant: &str, content_type: &str, content_id: &str) -> UriMessage {
    let now = Utc::now();
    UriMessage {
        tenant_id: tenant.into(),
        content_type: content_type.into(),
        content_id: content_id.into(),
        content_uri: format!("{}audit/{content_id}", sim.api_root(tenant)),
        content_created: now,
        content_expiration: now + chrono::Duration::days(7),
        listed_at: now,
        attempt: 0,
        not_before: None,
        last_error: None,
        reason: None,
    }
}

/// Writes URI messages to `m365.uris` (creating the topics first).
pub async fn put_uris(kafka: &KafkaSettings, uris: &[UriMessage]) {
    kafka::ensure_topics(kafka).await.expect("topics");
    let mut cfg = kafka.clone();
    cfg.transactions = kafka::TransactionMode::Off;
    let topic = kafka.topics().uris;
    let records: Vec<OutRecord> = uris
        .iter()
        .map(|u| OutRecord::new(&topic, u.key(), serde_json::to_vec(u).unwrap()))
        .collect();
    let probe = records[0].clone();
    let committer = kafka::Committer::new(&cfg, "test-uris", probe)
        .await
        .expect("producer");
    committer
        .commit(vec![records[1..].to_vec()])
        .await
        .expect("URIs written");
}

/// One event read back.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

pub async fn read_events(kafka: &KafkaSettings) -> Vec<Event> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    kafka::scan_topic(
        kafka,
        &kafka.topics().events,
        Default::default(),
        move |r| {
            let id = String::from_utf8(r.key.unwrap_or_default()).unwrap();
            let headers = r
                .headers
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
                .collect();
            sink.lock().unwrap().push(Event {
                id,
                payload: r.payload.unwrap_or_default(),
                headers,
            });
        },
    )
    .await
    .expect("m365.events can be read");
    std::mem::take(&mut *out.lock().unwrap())
}

pub async fn read_uri_topic(kafka: &KafkaSettings, topic: &str) -> Vec<UriMessage> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    kafka::scan_topic(kafka, topic, Default::default(), move |r| {
        sink.lock()
            .unwrap()
            .push(serde_json::from_slice::<UriMessage>(&r.payload.unwrap_or_default()).unwrap());
    })
    .await
    .expect("topic can be read");
    std::mem::take(&mut *out.lock().unwrap())
}

pub async fn read_health(kafka: &KafkaSettings) -> Vec<HealthRecord> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    kafka::scan_topic(
        kafka,
        &kafka.topics().health,
        Default::default(),
        move |r| {
            sink.lock().unwrap().push(
                serde_json::from_slice::<HealthRecord>(&r.payload.unwrap_or_default()).unwrap(),
            );
        },
    )
    .await
    .expect("m365.health can be read");
    std::mem::take(&mut *out.lock().unwrap())
}

/// Record ids that must be on `m365.events` (published blobs visible before `cutoff`) and
/// ids that may be (every published record).
pub fn expected_ids(
    sim: &Simulator,
    cutoff: DateTime<Utc>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let truth = sim.truth();
    let mut must = BTreeSet::new();
    let mut may = BTreeSet::new();
    for streams in truth.tenants.values() {
        for s in streams.values() {
            for b in s.blobs.iter().filter(|b| b.published) {
                may.extend(b.record_ids.iter().cloned());
                if b.visible_at < cutoff {
                    must.extend(b.record_ids.iter().cloned());
                }
            }
        }
    }
    (must, may)
}

/// Polls `m365.events` until every id of `must` is there (or `limit` passes).
pub async fn wait_for_ids(
    kafka: &KafkaSettings,
    must: &BTreeSet<String>,
    limit: Duration,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let events = read_events(kafka).await;
        let got: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if must.iter().all(|id| got.contains(id.as_str())) || tokio::time::Instant::now() > deadline
        {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The exactness contract: every id of `must` once, none twice, none unknown.
pub fn assert_exact(events: &[Event], must: &BTreeSet<String>, may: &BTreeSet<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = must
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let bogus: Vec<&&str> = counts.keys().filter(|id| !may.contains(**id)).collect();
    assert!(
        !must.is_empty(),
        "the simulator published nothing to compare with"
    );
    assert!(
        missing.is_empty(),
        "{} of {} records missing: {:?}",
        missing.len(),
        must.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        twice.is_empty(),
        "{} records on m365.events more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert!(
        bogus.is_empty(),
        "records the simulator never published: {:?}",
        &bogus[..bogus.len().min(5)]
    );
}

/// Producer settings that list quickly (with sweeps, so listings overlap).
pub fn fast_producer() -> m365_producer::ProducerSettings {
    m365_producer::ProducerSettings {
        poll_interval: Duration::from_millis(500),
        settle: chrono::Duration::seconds(1),
        sweep_horizon: chrono::Duration::hours(24),
        sweep_interval: chrono::Duration::seconds(2),
        subscription_cooldown: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(5),
        error_backoff_max: Duration::from_secs(2),
        ..m365_producer::ProducerSettings::default()
    }
}

/// The producer's view of the simulator's tenants (every content type).
pub fn producer_tenants(sim: &Simulator, tenants: &[&str]) -> Vec<m365_producer::TenantRuntime> {
    tenants
        .iter()
        .map(|t| m365_producer::TenantRuntime {
            tenant_id: t.to_string(),
            api: m365_common::testkit::sim_api_client(
                &sim.base_url(),
                Some(sim.ca_pem()),
                sim.resource(),
                t,
                TEST_CLIENT_ID,
                TEST_CLIENT_SECRET,
            ),
            streams: ContentType::ALL
                .iter()
                .map(|ct| m365_producer::StreamSpec {
                    content_type: ct.as_str().to_string(),
                    start_time: None,
                })
                .collect(),
        })
        .collect()
}
