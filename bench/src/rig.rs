//! What the measurements run against, all on 127.0.0.1: the brokers (the embedded one — a
//! librdkafka mock cluster that listens on a real loopback port — and the real broker the
//! script started), the simulated tenant serving the data set's blobs, and the fake Devo
//! (TLS with client certificates) with the certificate files every sender uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use m365_common::api::{ApiClient, ApiSettings, http_client};
use m365_common::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use m365_common::envelope::UriMessage;
use m365_common::kafka::{self, EmbeddedBroker, KafkaSettings, TransactionMode};
use m365_sim::certs::TestPki;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::config::{ContentType, TEST_CLIENT_ID, TEST_CLIENT_SECRET, ThrottleSpec};
use m365_sim::{SimConfig, Simulator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::SecretString;

use crate::dataset::Blob;

/// The tenant whose blobs the stages download.
pub const TENANT: &str = "7c4e2a1b-5d6f-4b8a-9c0d-1e2f3a4b5c6d";

/// Partitions of every benchmark topic. Twice the product's default, so that the whole data
/// set (200,000 records, ~50 MB after LZ4) fits in the embedded broker's 5 MiB per partition
/// and the forwarder and rsyslog read all of it: with 6, little more than half was left, and
/// their windows were under a second long.
pub const PARTITIONS: i32 = 12;

/// A broker to run on, with the librdkafka properties the in-process stages get.
pub struct Broker {
    kind: BrokerKind,
    /// Extra librdkafka properties (`--kafka-property`), for tuning experiments.
    pub properties: Vec<(String, String)>,
}

enum BrokerKind {
    /// The embedded broker, kept alive by this handle.
    Embedded(EmbeddedBroker),
    /// A real Kafka-protocol broker at `servers`, named `name` in the results.
    Real { servers: String, name: String },
}

impl Broker {
    pub fn embedded(properties: Vec<(String, String)>) -> anyhow::Result<Broker> {
        Ok(Broker {
            kind: BrokerKind::Embedded(
                EmbeddedBroker::start(1).context("starting the embedded broker")?,
            ),
            properties,
        })
    }

    pub fn real(servers: &str, name: &str, properties: Vec<(String, String)>) -> Broker {
        Broker {
            kind: BrokerKind::Real {
                servers: servers.into(),
                name: name.into(),
            },
            properties,
        }
    }

    /// Short name for the tables.
    pub fn name(&self) -> &str {
        match &self.kind {
            BrokerKind::Embedded(_) => "embedded",
            BrokerKind::Real { name, .. } => name,
        }
    }

    /// The real broker's address; `None` for the embedded one.
    pub fn real_servers(&self) -> Option<&str> {
        match &self.kind {
            BrokerKind::Embedded(_) => None,
            BrokerKind::Real { servers, .. } => Some(servers),
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match &self.kind {
            BrokerKind::Embedded(b) => b.bootstrap_servers().to_string(),
            BrokerKind::Real { servers, .. } => servers.clone(),
        }
    }

    /// Settings for topics named `prefix.*`: ordered path (no transactions: neither the
    /// embedded broker nor tansu implements them), [`PARTITIONS`] partitions.
    pub fn settings(&self, prefix: &str) -> KafkaSettings {
        let mut s = match &self.kind {
            BrokerKind::Embedded(b) => b.settings(),
            BrokerKind::Real { servers, .. } => KafkaSettings::new(servers.clone()),
        };
        s.topic_prefix = prefix.to_string();
        s.partitions = PARTITIONS;
        s.replication_factor = 1;
        s.transactions = TransactionMode::Off;
        for (k, v) in &self.properties {
            s.properties
                .insert(k.clone(), SecretString::from(v.clone()));
        }
        s
    }
}

/// A fresh topic prefix.
pub fn new_prefix(what: &str) -> String {
    format!(
        "bench-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A simulator configuration for the benchmarks: HTTPS, no quotas, no faults, no
/// generation of its own; `gzip` as asked.
pub fn sim_config(tenants: &[&str], gzip: bool) -> SimConfig {
    let mut cfg = SimConfig::for_tests(tenants);
    cfg.history_hours = 0.0;
    cfg.live_generation = false;
    cfg.gzip = gzip;
    cfg.expected_publisher_id = None;
    cfg.throttle = ThrottleSpec {
        tenant_per_minute: 0,
        anonymous_per_minute: 0,
        ..ThrottleSpec::default()
    };
    cfg
}

/// The simulated tenant serving blobs to the consumer.
pub struct StageSim {
    pub sim: Simulator,
    pub api: Arc<ApiClient>,
}

impl StageSim {
    pub async fn start(gzip: bool) -> anyhow::Result<StageSim> {
        let sim = Simulator::start(sim_config(&[TENANT], gzip))
            .await
            .context("starting the simulated tenant")?;
        for ct in ContentType::ALL {
            sim.enable_subscription(TENANT, ct)
                .map_err(|e| anyhow::anyhow!("enabling {}: {e}", ct.as_str()))?;
        }
        let api = api_client(&sim)?;
        Ok(StageSim { sim, api })
    }

    /// Publishes `blob` now; returns its URI message as the producer would write it.
    pub fn publish(&self, blob: &Blob) -> anyhow::Result<UriMessage> {
        let id = self
            .sim
            .publish_records(TENANT, blob.content_type, blob.record_strings())
            .map_err(|e| anyhow::anyhow!("publishing a blob: {e}"))?;
        Ok(uri_message(&self.sim, TENANT, blob.content_type, &id))
    }

    /// Writes the simulator's CA to `dir/sim-ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let p = dir.join("sim-ca.pem");
        std::fs::write(&p, self.sim.ca_pem()).context("writing the simulator CA")?;
        Ok(p)
    }
}

/// An API client on `sim` for [`TENANT`] with the quota governor opened wide (the benchmark
/// measures the software, not Microsoft's 2,000 requests per minute).
fn api_client(sim: &Simulator) -> anyhow::Result<Arc<ApiClient>> {
    let http = http_client(Some(sim.ca_pem())).context("HTTP client")?;
    let tokens = TokenClient::new(
        TokenSettings {
            authority_base: sim.base_url(),
            tenant: TENANT.into(),
            client_id: TEST_CLIENT_ID.into(),
            credential: Credential::ClientSecret(SecretString::from(
                TEST_CLIENT_SECRET.to_string(),
            )),
            endpoint: TokenEndpoint::V2,
            resource: sim.resource().into(),
        },
        http.clone(),
    )
    .map_err(|e| anyhow::anyhow!("token client: {e}"))?;
    let mut settings = ApiSettings::new(sim.base_url(), TENANT);
    settings.requests_per_minute = 60_000;
    Ok(Arc::new(ApiClient::new(settings, Arc::new(tokens), http)))
}

/// The URI message of blob `content_id`.
pub fn uri_message(sim: &Simulator, tenant: &str, ct: ContentType, content_id: &str) -> UriMessage {
    let now = Utc::now();
    UriMessage {
        tenant_id: tenant.into(),
        content_type: ct.as_str().into(),
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

/// Writes `uris` to `prefix.uris` and waits for every acknowledgement.
pub async fn write_uris(kafka: &KafkaSettings, uris: &[UriMessage]) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka.producer_config().create().context("URI producer")?;
    let topic = kafka.topics().uris;
    let mut pending = Vec::with_capacity(uris.len());
    for u in uris {
        let payload = serde_json::to_vec(u)?;
        let key = u.key();
        let rec = FutureRecord::to(&topic).key(&key).payload(&payload);
        pending.push(
            producer
                .send_result(rec)
                .map_err(|(e, _)| anyhow::anyhow!("queueing a URI: {e}"))?,
        );
    }
    for p in pending {
        match p.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("writing a URI: {e}"),
            Err(_) => anyhow::bail!("writing a URI: the producer went away"),
        }
    }
    Ok(())
}

/// Records still readable on `prefix.events`. The embedded broker (librdkafka's mock
/// cluster) keeps at most 5 MiB of record batches per partition and deletes the oldest beyond
/// that, so a large preloaded topic holds fewer records than were produced to it.
pub fn readable_events(kafka: &KafkaSettings) -> anyhow::Result<u64> {
    let client: rdkafka::consumer::BaseConsumer =
        kafka.client_config().create().context("watermark client")?;
    crate::external::events_on(&client, &kafka.topics().events)
}

/// Creates the `prefix.*` topics.
pub async fn create_topics(kafka: &KafkaSettings) -> anyhow::Result<()> {
    kafka::ensure_topics(kafka)
        .await
        .context("creating the benchmark topics")
}

/// The fake Devo and the certificate files of its senders.
pub struct DevoRig {
    pub devo: FakeDevo,
    pub pki_dir: PathBuf,
    /// Tag of the forwarder's health lines (not counted as events).
    pub health_tag: String,
}

/// When the lines of one run arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// First time any event line was seen, and how many had arrived by then.
    pub first: Instant,
    pub first_count: u64,
    /// When the expected count was reached.
    pub last: Instant,
    pub count: u64,
}

impl Arrival {
    /// Lines after the first observation over the time from first to last.
    pub fn rate_window(&self) -> Duration {
        self.last.saturating_duration_since(self.first)
    }
}

/// Why the lines of a run stopped coming, and what had arrived by then.
#[derive(Debug)]
pub struct Stalled {
    pub message: String,
    /// First line to the last progress, when any line arrived.
    pub partial: Option<Arrival>,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stalled {}

impl DevoRig {
    pub async fn start(dir: &Path) -> anyhow::Result<DevoRig> {
        let pki = TestPki::generate("m365-bench").context("Devo certificates")?;
        let pki_dir = dir.join("devo-certs");
        pki.write_to(&pki_dir)
            .context("writing Devo certificates")?;
        let devo = FakeDevo::start(FakeDevoConfig {
            pki: Some(pki),
            tcp_port: None,
            http_port: None,
            keep_lines: false,
            keep_raw: false,
            ..FakeDevoConfig::default()
        })
        .await
        .context("starting the fake Devo")?;
        Ok(DevoRig {
            devo,
            pki_dir,
            health_tag: m365_common::config::DEFAULT_HEALTH_TAG.to_string(),
        })
    }

    pub fn port(&self) -> u16 {
        self.devo.tls_addr().port()
    }

    pub fn ca(&self) -> PathBuf {
        self.pki_dir.join("ca.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.pki_dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.pki_dir.join("client.key")
    }

    /// Event lines received (health lines excluded).
    pub fn events(&self) -> u64 {
        let s = self.devo.stats();
        s.lines_received
            .saturating_sub(self.devo.count_for_tag(&self.health_tag))
    }

    /// Forgets what came before a run.
    pub fn reset(&self) {
        self.devo.clear();
    }

    /// Waits until `expected` event lines have arrived. Fails after `idle` without any
    /// progress (or, before the first line, after `start_timeout`), or when `alive` says the
    /// sender is gone.
    pub async fn wait_events(
        &self,
        expected: u64,
        start_timeout: Duration,
        idle: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Arrival, Stalled> {
        let started = Instant::now();
        let mut first: Option<(Instant, u64)> = None;
        let mut last_progress = (Instant::now(), 0u64);
        loop {
            let n = self.events();
            let now = Instant::now();
            if n > 0 && first.is_none() {
                first = Some((now, n));
            }
            if n >= expected {
                let (f, fc) = first.unwrap_or((now, n));
                return Ok(Arrival {
                    first: f,
                    first_count: fc,
                    last: now,
                    count: n,
                });
            }
            if n != last_progress.1 {
                last_progress = (now, n);
            }
            let partial = first.map(|(f, fc)| Arrival {
                first: f,
                first_count: fc,
                last: last_progress.0,
                count: last_progress.1,
            });
            if let Err(e) = alive() {
                return Err(Stalled {
                    message: format!("{e} ({n} of {expected} lines had arrived)"),
                    partial,
                });
            }
            if first.is_none() && started.elapsed() > start_timeout {
                return Err(Stalled {
                    message: format!(
                        "no line reached the fake Devo within {} s",
                        start_timeout.as_secs()
                    ),
                    partial,
                });
            }
            if first.is_some() && last_progress.0.elapsed() > idle {
                return Err(Stalled {
                    message: format!(
                        "stalled: {n} of {expected} lines after {} s without progress",
                        idle.as_secs()
                    ),
                    partial,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// JSON `devo` section of a configuration sending to this fake.
    pub fn config_section(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "devo_tls",
            "address": "127.0.0.1",
            "port": self.port(),
            "sni": "localhost",
            "cert_file": self.client_cert(),
            "key_file": self.client_key(),
            "chain_file": self.ca(),
        })
    }
}
