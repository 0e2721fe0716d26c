//! Helpers for tests across the workspace: a broker to test against (the embedded one, or
//! the real broker the test script started, named by `M365_TEST_KAFKA`), and API clients
//! wired to a local simulator. Nothing here reaches beyond 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use secrecy::SecretString;
use url::Url;

use crate::api::{ApiClient, ApiSettings, http_client};
use crate::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use crate::kafka::{EmbeddedBroker, KafkaSettings, TransactionMode};

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// librdkafka's mock cluster in this process.
    Embedded,
    /// The real Kafka-protocol broker started by `scripts/test.sh` (`M365_TEST_KAFKA`):
    /// tansu on memory storage, fast.
    Real,
    /// The same broker on SQLite storage (`M365_TEST_KAFKA_SQLITE`): much slower, but it
    /// serves a fetch that starts inside a record batch from the requested offset, where the
    /// memory engine skips to the next batch. For tests whose readers pause and resume
    /// mid-batch.
    RealSqlite,
}

impl BrokerKind {
    /// The environment variable naming a real broker of this kind.
    fn env_var(self) -> &'static str {
        match self {
            BrokerKind::RealSqlite => "M365_TEST_KAFKA_SQLITE",
            BrokerKind::Real | BrokerKind::Embedded => "M365_TEST_KAFKA",
        }
    }
}

/// A broker for one test, with topic names unique to that test.
pub struct TestBroker {
    pub kind: BrokerKind,
    pub settings: KafkaSettings,
    _embedded: Option<EmbeddedBroker>,
}

impl TestBroker {
    /// Starts (or finds) a broker of `kind`. Topics get the prefix `{test}-{random}` so tests
    /// sharing the real broker never see each other's data.
    ///
    /// Returns `None` for [`BrokerKind::Real`] when `M365_TEST_KAFKA` is unset outside CI (the
    /// test is then skipped with a note); in CI (`CI` set) a missing broker is a failure.
    pub fn start(kind: BrokerKind, test: &str) -> Option<TestBroker> {
        let prefix = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        match kind {
            BrokerKind::Embedded => {
                let embedded = match EmbeddedBroker::start(1) {
                    Ok(b) => b,
                    Err(e) => panic!("the embedded broker did not start: {e}"),
                };
                let mut settings = embedded.settings();
                // librdkafka's mock cluster accepts transactions but shows aborted records to
                // read_committed readers and drops transactional offset commits, so a crash
                // test on it must use the ordered path; tests of the transactional path opt in.
                settings.transactions = TransactionMode::Off;
                settings.topic_prefix = prefix;
                settings.partitions = 3;
                Some(TestBroker {
                    kind,
                    settings,
                    _embedded: Some(embedded),
                })
            }
            BrokerKind::Real | BrokerKind::RealSqlite => match std::env::var(kind.env_var()) {
                Ok(servers) if !servers.is_empty() => {
                    let mut settings = KafkaSettings::new(servers);
                    settings.topic_prefix = prefix;
                    settings.partitions = 3;
                    // The real test broker (tansu 0.6) has no transactions: say so rather
                    // than spend the probe's timeout finding out.
                    settings.transactions = TransactionMode::Off;
                    Some(TestBroker {
                        kind,
                        settings,
                        _embedded: None,
                    })
                }
                _ if std::env::var_os("CI").is_some() => {
                    panic!(
                        "{} is not set: run the tests with scripts/test.sh",
                        kind.env_var()
                    )
                }
                _ => {
                    eprintln!(
                        "skipped: {} is not set (scripts/test.sh starts a real broker)",
                        kind.env_var()
                    );
                    None
                }
            },
        }
    }
}

/// An API client for `tenant_id` on a local simulator at `base` (token endpoint and API on
/// the same server), authenticating with a client secret on the v2 endpoint.
pub fn sim_api_client(
    base: &Url,
    ca_pem: Option<&str>,
    resource: &str,
    tenant_id: &str,
    client_id: &str,
    secret: &str,
) -> Arc<ApiClient> {
    let http = match http_client(ca_pem) {
        Ok(h) => h,
        Err(e) => panic!("HTTP client: {e}"),
    };
    let tokens = TokenClient::new(
        TokenSettings {
            authority_base: base.clone(),
            tenant: tenant_id.into(),
            client_id: client_id.into(),
            credential: Credential::ClientSecret(SecretString::from(secret.to_string())),
            endpoint: TokenEndpoint::V2,
            resource: resource.into(),
        },
        http.clone(),
    );
    let tokens = match tokens {
        Ok(t) => Arc::new(t),
        Err(e) => panic!("token client: {e}"),
    };
    Arc::new(ApiClient::new(
        ApiSettings::new(base.clone(), tenant_id),
        tokens,
        http,
    ))
}

/// Fails naming `what` (and up to 80 characters before it, never the secret or the whole
/// text) if `text` holds `secret`. For the tests that run a binary with known secrets.
pub fn assert_absent(text: &str, what: &str, secret: &str) {
    if let Some(at) = text.find(secret) {
        let from = text[..at]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        panic!("{what} appears in the output, after: {:?}", &text[from..at]);
    }
}

/// Polls `check` every 200 ms until it holds (true) or `limit` passes (false).
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A free loopback port: bound, then released for a child process to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The group's committed offset per `(topic, partition)` of `topics` (partitions without one
/// are left out).
pub fn committed_offsets(
    settings: &KafkaSettings,
    group: &str,
    topics: &[&str],
) -> BTreeMap<(String, i32), i64> {
    let c: BaseConsumer = settings.consumer_config(group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..settings.partitions {
            tpl.add_partition(t, p);
        }
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// The end offset (high watermark) per `(topic, partition)` of `topics`.
pub fn end_offsets(settings: &KafkaSettings, topics: &[&str]) -> BTreeMap<(String, i32), i64> {
    let c: BaseConsumer = settings.client_config().create().expect("client");
    let mut out = BTreeMap::new();
    for t in topics {
        for p in 0..settings.partitions {
            let (_, high) = c
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .expect("watermarks");
            out.insert((t.to_string(), p), high);
        }
    }
    out
}
