//! Kafka glue shared by every stage: client configuration, topic names and creation, the
//! embedded broker, reading a compacted table, and the [`Committer`] that makes a group of
//! records durable either in one Kafka transaction or, on brokers without transactions, in
//! ordered phases (each phase acknowledged before the next is sent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

/// How long a blocking Kafka call (metadata, transaction control) may take.
pub const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Default partition count of the producers' coordination topic `<prefix>.streams` (its
/// partitions are the "stream slots" producer instances share).
pub const STREAM_SLOTS: i32 = 12;

/// Errors of the Kafka glue. They carry the topic or operation, never a property value (those
/// may hold SASL passwords).
#[derive(Debug, thiserror::Error)]
pub enum KafkaGlueError {
    #[error("Kafka client could not be created for {what}: {source}")]
    Client {
        what: &'static str,
        source: KafkaError,
    },
    #[error("Kafka topic {topic} could not be created: {source}")]
    CreateTopic { topic: String, source: KafkaError },
    #[error("Kafka metadata for topic {topic} could not be read: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("reading topic {topic} failed: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("producing to topic {topic} failed: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("Kafka transaction {step} failed: {source}")]
    Transaction {
        step: &'static str,
        source: KafkaError,
    },
    #[error("the embedded Kafka broker could not start: {0}")]
    Embedded(String),
    #[error("a blocking Kafka task ended unexpectedly: {0}")]
    Join(String),
}

impl KafkaGlueError {
    /// A fixed label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Client { .. } => "kafka_client",
            Self::CreateTopic { .. } => "kafka_create_topic",
            Self::Metadata { .. } => "kafka_metadata",
            Self::Read { .. } => "kafka_read",
            Self::Produce { .. } => "kafka_produce",
            Self::Transaction { .. } => "kafka_transaction",
            Self::Embedded(_) => "kafka_embedded",
            Self::Join(_) => "kafka_join",
        }
    }
}

/// Whether to use Kafka transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionMode {
    /// Use them when the broker supports them (probed at start), otherwise fall back to the
    /// ordered at-least-once path.
    #[default]
    Auto,
    /// Require them: start fails on a broker without transactions.
    On,
    /// Never use them.
    Off,
}

/// `fetch.wait.max.ms` of readers on the embedded broker (see [`KafkaSettings::reader_config`]).
pub const EMBEDDED_FETCH_WAIT_MS: &str = "10";

/// Everything a stage needs to talk to Kafka.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `host:port,…`. Set by the embedded broker when the config gives none.
    pub bootstrap_servers: String,
    /// Topic name prefix (default `m365`).
    pub topic_prefix: String,
    /// Partitions of each topic created by us.
    pub partitions: i32,
    /// Replication factor of each topic created by us.
    pub replication_factor: i32,
    pub transactions: TransactionMode,
    /// librdkafka properties passed through unchanged (SASL, TLS …). Values are secret-wrapped
    /// because some are passwords.
    pub properties: BTreeMap<String, SecretString>,
    /// Set when the broker is the embedded one, which has no CreateTopics API: topics are
    /// then created through the mock cluster itself.
    pub embedded: Option<EmbeddedTopics>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("transactions", &self.transactions)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSettings {
    /// Settings for a broker at `bootstrap_servers` with every other value at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: "m365".into(),
            partitions: 6,
            replication_factor: 1,
            transactions: TransactionMode::Auto,
            properties: BTreeMap::new(),
            embedded: None,
        }
    }

    pub fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    /// The base client configuration: bootstrap servers plus every pass-through property.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        cfg.set("client.id", "m365-devo");
        for (k, v) in &self.properties {
            cfg.set(k, v.expose_secret());
        }
        cfg
    }

    /// Configuration of an idempotent producer (acks=all, in-order, no duplicates on retry).
    /// `enable.idempotence` and `acks` are not negotiable; `linger.ms`, `compression.type`
    /// and `message.timeout.ms` are defaults a `kafka.properties` entry replaces.
    pub fn producer_config(&self) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("enable.idempotence", "true").set("acks", "all");
        for (key, value) in [
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("message.timeout.ms", "300000"),
        ] {
            if !self.properties.contains_key(key) {
                cfg.set(key, value);
            }
        }
        cfg
    }

    /// `read_committed`, except with transactions off, where nothing is transactional and
    /// `read_uncommitted` reads the same records — and does not depend on the broker's last
    /// stable offset, which tansu 0.6 (a broker without transactions) reports late, holding
    /// back the tail of a partition until the next write.
    pub fn isolation_level(&self) -> &'static str {
        match self.transactions {
            TransactionMode::Off => "read_uncommitted",
            TransactionMode::Auto | TransactionMode::On => "read_committed",
        }
    }

    /// The base configuration of a client that fetches records. On the embedded broker the
    /// fetch wait is cut to [`EMBEDDED_FETCH_WAIT_MS`] (unless configured): librdkafka's mock
    /// cluster answers a fetch that finds no data only after the whole `fetch.wait.max.ms`
    /// (500 ms by default) instead of as soon as data arrives, as a real broker does, so
    /// every reader that caught up stalled half a second, and every scan ended with one.
    pub fn reader_config(&self) -> ClientConfig {
        let mut cfg = self.client_config();
        if self.embedded.is_some() && !self.properties.contains_key("fetch.wait.max.ms") {
            cfg.set("fetch.wait.max.ms", EMBEDDED_FETCH_WAIT_MS);
        }
        cfg
    }

    /// Configuration of a consumer that reads only committed records.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut cfg = self.reader_config();
        cfg.set("group.id", group_id)
            .set("isolation.level", self.isolation_level())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        cfg
    }
}

/// Topic names, all sharing one prefix (design.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub uris: String,
    pub retry: String,
    pub dead: String,
    pub events: String,
    pub state: String,
    pub health: String,
    /// Where the transaction probe writes (one partition nobody reads): on a broker that
    /// accepts a transaction but cannot end it, only this topic is left with it open.
    pub txn_probe: String,
    /// The producers' coordination topic: never written; its partitions are the "stream
    /// slots" the producer instances share through a consumer group (see
    /// [`ensure_streams_topic`]). Not in [`Topics::all`]: only the producer creates it.
    pub streams: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            uris: format!("{prefix}.uris"),
            retry: format!("{prefix}.uris.retry"),
            dead: format!("{prefix}.uris.dead"),
            events: format!("{prefix}.events"),
            state: format!("{prefix}.state"),
            health: format!("{prefix}.health"),
            txn_probe: format!("{prefix}.txn-probe"),
            streams: format!("{prefix}.streams"),
        }
    }

    /// Every topic with whether it is compacted.
    pub fn all(&self) -> [(&str, bool); 7] {
        [
            (&self.uris, false),
            (&self.retry, false),
            (&self.dead, false),
            (&self.events, false),
            (&self.state, true),
            (&self.health, false),
            (&self.txn_probe, false),
        ]
    }
}

/// Creates every topic that does not exist yet, with the configured partitions and the right
/// cleanup policy (`compact` for the state topic, `delete` with 8 days' retention for the rest,
/// so a URI outlives its blob). Existing topics are left as they are.
///
/// On the embedded broker the producers' coordination topic is created too (with
/// [`STREAM_SLOTS`] partitions), since only the process owning the embedded broker can create
/// topics on it; elsewhere the producer creates it itself ([`ensure_streams_topic`]).
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), KafkaGlueError> {
    if let Some(embedded) = &settings.embedded {
        for (name, _) in settings.topics().all() {
            embedded.create(name, settings.partitions)?;
        }
        embedded.create(&settings.topics().streams, STREAM_SLOTS)?;
        return Ok(());
    }
    let topics = settings.topics();
    let missing = missing_topics(settings, &topics).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        settings
            .client_config()
            .create()
            .map_err(|source| KafkaGlueError::Client {
                what: "admin",
                source,
            })?;
    let retention_ms = (8 * 24 * 3600 * 1000_i64).to_string();
    let new: Vec<NewTopic<'_>> = topics
        .all()
        .iter()
        .filter(|(name, _)| missing.iter().any(|m| m == name))
        .map(|(name, compacted)| {
            let t = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t.set("cleanup.policy", "delete")
                    .set("retention.ms", &retention_ms)
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_CALL_TIMEOUT));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|source| KafkaGlueError::CreateTopic {
            topic: "(all)".into(),
            source,
        })?;
    for r in results {
        match r {
            Ok(topic) => info!(topic = %topic, "Created Kafka topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaGlueError::CreateTopic {
                    topic,
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    // Wait until the metadata shows every topic with all its partitions, so that the first
    // produce or assignment does not race the creation.
    let probe: BaseConsumer =
        settings
            .client_config()
            .create()
            .map_err(|source| KafkaGlueError::Client {
                what: "metadata",
                source,
            })?;
    let names: Vec<String> = topics.all().iter().map(|(n, _)| n.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        for name in names {
            let deadline = std::time::Instant::now() + KAFKA_CALL_TIMEOUT;
            loop {
                let ok = probe
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .map(|m| {
                        m.topics()
                            .first()
                            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
                    })
                    .unwrap_or(false);
                if ok {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(KafkaGlueError::Metadata {
                        topic: name,
                        source: KafkaError::MetadataFetch(
                            RDKafkaErrorCode::UnknownTopicOrPartition,
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| KafkaGlueError::Join(e.to_string()))?
}

/// Creates the producers' coordination topic `<prefix>.streams` with `partitions` partitions
/// when it does not exist yet (nothing is ever written to it: short retention, `delete`
/// policy), and returns the partition count it has — an existing topic keeps its own count,
/// which is the one every producer instance must use.
pub async fn ensure_streams_topic(
    settings: &KafkaSettings,
    partitions: i32,
) -> Result<i32, KafkaGlueError> {
    let name = settings.topics().streams;
    let count = |s: KafkaSettings, n: String| async move {
        tokio::task::spawn_blocking(move || partition_count(&s, &n))
            .await
            .map_err(|e| KafkaGlueError::Join(e.to_string()))?
    };
    if let Some(embedded) = &settings.embedded {
        embedded.create(&name, partitions)?;
    } else if count(settings.clone(), name.clone()).await.unwrap_or(0) == 0 {
        let admin: AdminClient<DefaultClientContext> =
            settings
                .client_config()
                .create()
                .map_err(|source| KafkaGlueError::Client {
                    what: "admin",
                    source,
                })?;
        let topic = NewTopic::new(
            &name,
            partitions,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("cleanup.policy", "delete")
        .set("retention.ms", "3600000");
        let opts = AdminOptions::new().operation_timeout(Some(KAFKA_CALL_TIMEOUT));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|source| KafkaGlueError::CreateTopic {
                topic: name.clone(),
                source,
            })?;
        for r in results {
            match r {
                Ok(t) => info!(topic = %t, "Created Kafka topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaGlueError::CreateTopic {
                        topic,
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
    }
    // Wait until the metadata shows the partitions, so the group's first assignment sees them.
    let deadline = std::time::Instant::now() + KAFKA_CALL_TIMEOUT;
    loop {
        match count(settings.clone(), name.clone()).await {
            Ok(c) if c > 0 => return Ok(c),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            _ if std::time::Instant::now() > deadline => {
                return Err(KafkaGlueError::Metadata {
                    topic: name,
                    source: KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The topics of `topics` the broker does not have yet (so that a deployment whose Kafka
/// user may not create topics runs once they exist).
async fn missing_topics(
    settings: &KafkaSettings,
    topics: &Topics,
) -> Result<Vec<String>, KafkaGlueError> {
    let probe: BaseConsumer<QuietContext> = settings
        .client_config()
        .create_with_context(QuietContext)
        .map_err(|source| KafkaGlueError::Client {
            what: "metadata",
            source,
        })?;
    let wanted: Vec<String> = topics.all().iter().map(|(n, _)| n.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let md = probe
            .fetch_metadata(None, KAFKA_CALL_TIMEOUT)
            .map_err(|source| KafkaGlueError::Metadata {
                topic: "(all)".into(),
                source,
            })?;
        Ok(wanted
            .into_iter()
            .filter(|w| {
                !md.topics()
                    .iter()
                    .any(|t| t.name() == w && t.error().is_none() && !t.partitions().is_empty())
            })
            .collect())
    })
    .await
    .map_err(|e| KafkaGlueError::Join(e.to_string()))?
}

/// A client context that logs like the default one but keeps quiet about end-of-partition
/// events, which the scanner asks for on purpose.
#[derive(Clone, Copy, Default)]
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::error!(error = %error, reason, "librdkafka reported an error.");
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Partition count of `topic`.
pub fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<i32, KafkaGlueError> {
    let probe: BaseConsumer =
        settings
            .client_config()
            .create()
            .map_err(|source| KafkaGlueError::Client {
                what: "metadata",
                source,
            })?;
    let md = probe
        .fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)
        .map_err(|source| KafkaGlueError::Metadata {
            topic: topic.into(),
            source,
        })?;
    let n = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    Ok(n as i32)
}

/// librdkafka's in-process mock cluster on 127.0.0.1: the embedded broker of `m365-devo` when
/// no Kafka is configured. Nothing in it survives the process.
///
/// The mock cluster is not `Send`, so it lives on a thread of its own until this handle drops.
pub struct EmbeddedBroker {
    bootstrap_servers: String,
    commands: Option<std_mpsc::Sender<MockCommand>>,
    thread: Option<JoinHandle<()>>,
}

enum MockCommand {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: std_mpsc::Sender<Result<(), String>>,
    },
    Stop,
}

/// Creates topics on the embedded broker (the mock cluster has no CreateTopics API).
#[derive(Clone)]
pub struct EmbeddedTopics {
    commands: std_mpsc::Sender<MockCommand>,
}

impl std::fmt::Debug for EmbeddedTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedTopics")
    }
}

impl EmbeddedTopics {
    /// Creates `name` with `partitions` partitions; an existing topic is left as it is.
    pub fn create(&self, name: &str, partitions: i32) -> Result<(), KafkaGlueError> {
        let (reply, answer) = std_mpsc::channel();
        self.commands
            .send(MockCommand::CreateTopic {
                name: name.into(),
                partitions,
                reply,
            })
            .map_err(|_| KafkaGlueError::Embedded("the embedded broker has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| KafkaGlueError::Embedded("the embedded broker has stopped".into()))?
            .map_err(|e| KafkaGlueError::CreateTopic {
                topic: name.into(),
                source: KafkaError::AdminOpCreation(e),
            })
    }
}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, KafkaGlueError> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<String, String>>();
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<MockCommand>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || match MockCluster::new(brokers) {
                Ok(cluster) => {
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    let mut created: HashSet<String> = HashSet::new();
                    // Serve commands until the broker handle is dropped.
                    while let Ok(cmd) = cmd_rx.recv() {
                        match cmd {
                            MockCommand::Stop => break,
                            MockCommand::CreateTopic {
                                name,
                                partitions,
                                reply,
                            } => {
                                let r = if created.contains(&name) {
                                    Ok(())
                                } else {
                                    cluster
                                        .create_topic(&name, partitions, brokers.min(3))
                                        .map(|()| {
                                            created.insert(name);
                                        })
                                        .map_err(|e| e.to_string())
                                };
                                let _ = reply.send(r);
                            }
                        }
                    }
                    drop(cluster);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| KafkaGlueError::Embedded(e.to_string()))?;
        let bootstrap_servers = ready_rx
            .recv()
            .map_err(|e| KafkaGlueError::Embedded(e.to_string()))?
            .map_err(KafkaGlueError::Embedded)?;
        Ok(Self {
            bootstrap_servers,
            commands: Some(cmd_tx),
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Kafka settings pointing at this broker, able to create its topics.
    pub fn settings(&self) -> KafkaSettings {
        let mut s = KafkaSettings::new(self.bootstrap_servers.clone());
        s.embedded = self.topics();
        s
    }

    /// A handle that creates topics on this broker.
    pub fn topics(&self) -> Option<EmbeddedTopics> {
        self.commands.as_ref().map(|c| EmbeddedTopics {
            commands: c.clone(),
        })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(c) = self.commands.take() {
            let _ = c.send(MockCommand::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (deletes the key from a compacted topic).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    pub fn new(topic: &str, key: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            payload: Some(payload.into()),
            headers: Vec::new(),
        }
    }

    pub fn tombstone(topic: &str, key: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            payload: None,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Makes groups of records durable: in one Kafka transaction where the broker supports it,
/// otherwise as ordered phases on an idempotent producer (every record of a phase is
/// acknowledged before the next phase is sent, so "URIs, then the cursor" can never be seen
/// in the other order).
#[derive(Clone)]
pub struct Committer {
    producer: FutureProducer,
    transactional: bool,
}

impl Committer {
    /// Creates the producer. With [`TransactionMode::Auto`] it probes the broker with a real
    /// transaction carrying `probe` (e.g. a health "start" record) and falls back to the
    /// ordered at-least-once path when the broker refuses; the probe record is then sent
    /// without a transaction, so it is never lost.
    pub async fn new(
        settings: &KafkaSettings,
        transactional_id: &str,
        probe: OutRecord,
    ) -> Result<Self, KafkaGlueError> {
        if settings.transactions != TransactionMode::Off {
            match Self::try_transactional(settings, transactional_id, probe.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) if settings.transactions == TransactionMode::Auto => {
                    warn!(
                        error = %e,
                        "The broker did not accept a Kafka transaction; using the ordered at-least-once path with deduplication."
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let producer: FutureProducer =
            settings
                .producer_config()
                .create()
                .map_err(|source| KafkaGlueError::Client {
                    what: "producer",
                    source,
                })?;
        let c = Self {
            producer,
            transactional: false,
        };
        c.commit(vec![vec![probe]]).await?;
        Ok(c)
    }

    async fn try_transactional(
        settings: &KafkaSettings,
        transactional_id: &str,
        probe: OutRecord,
    ) -> Result<Self, KafkaGlueError> {
        let mut cfg = settings.producer_config();
        // A crashed instance's open transaction holds back read_committed readers until the
        // next instance fences it or this timeout passes; messages must time out before it.
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000")
            .set("message.timeout.ms", "55000");
        let producer: FutureProducer = cfg.create().map_err(|source| KafkaGlueError::Client {
            what: "transactional producer",
            source,
        })?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(15)))
            .await
            .map_err(|e| KafkaGlueError::Join(e.to_string()))?
            .map_err(|source| KafkaGlueError::Transaction {
                step: "init",
                source,
            })?;
        let c = Self {
            producer,
            transactional: true,
        };
        // First a throwaway transaction on the probe topic: a broker that takes the records but
        // cannot end the transaction fails here without holding back a topic anyone reads.
        let marker = OutRecord::new(
            &settings.topics().txn_probe,
            transactional_id,
            b"probe".to_vec(),
        );
        c.commit(vec![vec![marker]]).await?;
        c.commit(vec![vec![probe]]).await?;
        Ok(c)
    }

    /// True when records are committed in Kafka transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// The underlying producer (for a consumer's `send_offsets_to_transaction`).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Makes every phase durable, in order. Returns only when all records are acknowledged
    /// (and, when transactional, the transaction committed). On error nothing of a
    /// transactional commit is visible to `read_committed` readers; on the ordered path a
    /// prefix of the phases may be durable, which callers make harmless (ledger, dedup).
    pub async fn commit(&self, phases: Vec<Vec<OutRecord>>) -> Result<(), KafkaGlueError> {
        if self.transactional {
            self.commit_transaction(phases).await
        } else {
            for phase in phases {
                self.send_all(&phase).await?;
            }
            Ok(())
        }
    }

    async fn commit_transaction(&self, phases: Vec<Vec<OutRecord>>) -> Result<(), KafkaGlueError> {
        let p = self.producer.clone();
        blocking(move || p.begin_transaction())
            .await
            .map_err(|source| KafkaGlueError::Transaction {
                step: "begin",
                source,
            })?;
        let mut result = Ok(());
        for phase in &phases {
            if let Err(e) = self.send_all(phase).await {
                result = Err(e);
                break;
            }
        }
        let p = self.producer.clone();
        match result {
            Ok(()) => blocking(move || p.commit_transaction(KAFKA_CALL_TIMEOUT))
                .await
                .map_err(|source| KafkaGlueError::Transaction {
                    step: "commit",
                    source,
                }),
            Err(e) => {
                let _ = blocking(move || p.abort_transaction(KAFKA_CALL_TIMEOUT)).await;
                Err(e)
            }
        }
    }

    /// Sends records and waits for every acknowledgement.
    pub async fn send_all(&self, records: &[OutRecord]) -> Result<(), KafkaGlueError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(p) = &r.payload {
                rec = rec.payload(p.as_slice());
            }
            if !r.headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
                for (name, value) in &r.headers {
                    h = h.insert(Header {
                        key: name,
                        value: Some(value.as_slice()),
                    });
                }
                rec = rec.headers(h);
            }
            let fut =
                self.producer
                    .send_result(rec)
                    .map_err(|(source, _)| KafkaGlueError::Produce {
                        topic: r.topic.clone(),
                        source,
                    })?;
            pending.push((r.topic.as_str(), fut));
        }
        for (topic, fut) in pending {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(KafkaGlueError::Produce {
                        topic: topic.into(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(KafkaGlueError::Produce {
                        topic: topic.into(),
                        source: KafkaError::Canceled,
                    });
                }
            }
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads every committed record of `topic` from `start` (per partition; absent partitions
/// from the beginning) up to the end as it is now, and hands each to `f`. Runs on a
/// blocking thread.
pub async fn scan_topic(
    settings: &KafkaSettings,
    topic: &str,
    start: HashMap<i32, i64>,
    mut f: impl FnMut(ReadRecord) + Send + 'static,
) -> Result<(), KafkaGlueError> {
    let mut cfg = settings.reader_config();
    cfg.set("group.id", "m365-devo-scan")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<QuietContext> =
        cfg.create_with_context(QuietContext)
            .map_err(|source| KafkaGlueError::Client {
                what: "scanner",
                source,
            })?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic), KAFKA_CALL_TIMEOUT)
            .map_err(|source| KafkaGlueError::Metadata {
                topic: topic.clone(),
                source,
            })?;
        let partitions: Vec<i32> = md
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        let mut remaining: HashSet<i32> = HashSet::new();
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, *p, KAFKA_CALL_TIMEOUT)
                .map_err(|source| KafkaGlueError::Read {
                    topic: topic.clone(),
                    source,
                })?;
            let from = start.get(p).copied().unwrap_or(low).max(low);
            if from < high {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(from))
                    .map_err(|source| KafkaGlueError::Read {
                        topic: topic.clone(),
                        source,
                    })?;
                remaining.insert(*p);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        consumer
            .assign(&tpl)
            .map_err(|source| KafkaGlueError::Read {
                topic: topic.clone(),
                source,
            })?;
        while !remaining.is_empty() {
            match consumer.poll(KAFKA_CALL_TIMEOUT) {
                None => {
                    return Err(KafkaGlueError::Read {
                        topic: topic.clone(),
                        source: KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    remaining.remove(&p);
                }
                Some(Err(source)) => {
                    return Err(KafkaGlueError::Read {
                        topic: topic.clone(),
                        source,
                    });
                }
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    f(ReadRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| KafkaGlueError::Join(e.to_string()))?
}

/// Reads a compacted topic into a table: the latest value of every key, tombstones removed.
pub async fn read_table(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<BTreeMap<String, Vec<u8>>, KafkaGlueError> {
    let table = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let sink = table.clone();
    scan_topic(settings, topic, HashMap::new(), move |r| {
        let Some(key) = r.key.and_then(|k| String::from_utf8(k).ok()) else {
            return;
        };
        let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
        match r.payload {
            Some(v) => {
                t.insert(key, v);
            }
            None => {
                t.remove(&key);
            }
        }
    })
    .await?;
    let mut guard = table.lock().unwrap_or_else(|e| e.into_inner());
    Ok(std::mem::take(&mut *guard))
}

/// For each partition of `topic`, the first offset whose timestamp is at or after `ms`
/// (partitions with none are left out).
pub async fn offsets_for_time(
    settings: &KafkaSettings,
    topic: &str,
    ms: i64,
) -> Result<HashMap<i32, i64>, KafkaGlueError> {
    let consumer: BaseConsumer =
        settings
            .client_config()
            .create()
            .map_err(|source| KafkaGlueError::Client {
                what: "offsets",
                source,
            })?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic), KAFKA_CALL_TIMEOUT)
            .map_err(|source| KafkaGlueError::Metadata {
                topic: topic.clone(),
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        if let Some(t) = md.topics().first() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(ms))
                    .map_err(|source| KafkaGlueError::Read {
                        topic: topic.clone(),
                        source,
                    })?;
            }
        }
        let found = consumer
            .offsets_for_times(tpl, KAFKA_CALL_TIMEOUT)
            .map_err(|source| KafkaGlueError::Read {
                topic: topic.clone(),
                source,
            })?;
        let mut out = HashMap::new();
        for e in found.elements() {
            if let Offset::Offset(o) = e.offset() {
                out.insert(e.partition(), o);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| KafkaGlueError::Join(e.to_string()))?
}
