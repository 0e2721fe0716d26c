//! All three stages in one process, on the configured Kafka or on the embedded broker: the
//! code behind `m365-devo run` and the demo. Each stage runs exactly the library code its own
//! binary runs; only the process is shared (and with it each tenant's API client, so listing
//! and downloads share one rate governor).

use std::sync::Arc;

use anyhow::Context;

use m365_common::backlog::Backlog;
use m365_common::config::Config;
use m365_common::kafka::{self, EmbeddedBroker, KafkaSettings};
use m365_common::runtime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Event bytes (key, value, headers) per partition the consumer may run ahead of what the
/// forwarder read on the embedded broker, whose log keeps 5 MiB of (compressed)
/// batches per partition. Audit JSON compresses several-fold, so this leaves a wide margin.
const EMBEDDED_BACKLOG_BYTES: u64 = 3 << 20;
/// Event bytes sent and not yet acknowledged per blob, on the embedded broker.
const EMBEDDED_IN_FLIGHT_BYTES: usize = 2 << 20;

/// Counters of every stage, for progress displays.
pub struct PipelineStats {
    pub producer: Arc<m365_producer::internal_events::ProducerStats>,
    pub consumer: Arc<m365_consumer::internal_events::ConsumerStats>,
    pub forwarder: Arc<m365_forwarder::internal_events::ForwarderStats>,
}

/// The running stages.
pub struct Pipeline {
    cancel: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    pub stats: PipelineStats,
    pub kafka: KafkaSettings,
    /// Dropped last: the stages must be gone before the broker is.
    _embedded: Option<EmbeddedBroker>,
}

impl Pipeline {
    /// Starts the broker if none is configured, creates the topics, and starts every stage the
    /// configuration asks for (the producer and consumer when there are tenants, the
    /// forwarder when there is a `devo` section).
    pub async fn start(cfg: &Config) -> anyhow::Result<Pipeline> {
        let (embedded, kafka) = match &cfg.kafka.bootstrap_servers {
            Some(servers) => (None, runtime::kafka_settings(&cfg.kafka, servers)),
            None => {
                let broker =
                    EmbeddedBroker::start(1).context("starting the embedded Kafka broker")?;
                warn!(
                    bootstrap_servers = broker.bootstrap_servers(),
                    "NO KAFKA CONFIGURED: running on the embedded in-memory broker. Nothing survives a restart: cursors, dedup state and undelivered events are lost when this process stops. Set kafka.bootstrap_servers for production."
                );
                let mut k = runtime::kafka_settings(&cfg.kafka, broker.bootstrap_servers());
                k.embedded = broker.topics();
                k.replication_factor = 1;
                // The mock cluster accepts transactions but does not hide aborted records from
                // read_committed readers, so the ordered path (which is exact without them)
                // is the right one here.
                k.transactions = m365_common::kafka::TransactionMode::Off;
                (Some(broker), k)
            }
        };
        kafka::ensure_topics(&kafka)
            .await
            .context("creating the Kafka topics")?;

        let tenants = runtime::build_tenants(cfg)?;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let stats = PipelineStats {
            producer: Arc::default(),
            consumer: Arc::default(),
            forwarder: Arc::default(),
        };

        // On the embedded broker, which drops a partition's oldest records beyond 5 MiB, the
        // consumer may run only so far ahead of the forwarder (see m365_common::backlog).
        let backlog = match (&embedded, &cfg.devo, tenants.is_empty()) {
            (Some(_), Some(_), false) => Some(Arc::new(Backlog::new(EMBEDDED_BACKLOG_BYTES))),
            _ => None,
        };

        if !tenants.is_empty() {
            let mut settings = m365_producer::ProducerSettings::from_config(cfg);
            if embedded.is_some() {
                // Nobody else can reach the in-process broker: no instance to share with.
                settings.coordination = m365_producer::Coordination::None;
            }
            let fut = m365_producer::run(
                settings,
                kafka.clone(),
                m365_producer::run::tenants_from_runtime(&tenants),
                stats.producer.clone(),
                cancel.clone(),
            );
            tasks.spawn(async move { ("producer", fut.await.map_err(anyhow::Error::from)) });

            let mut settings = m365_consumer::ConsumerSettings::from_config(cfg);
            if let Some(backlog) = &backlog {
                settings.backlog = Some(Arc::clone(backlog));
                // Unacknowledged sends are not in the backlog yet: keep them few too.
                settings.max_in_flight_bytes =
                    settings.max_in_flight_bytes.min(EMBEDDED_IN_FLIGHT_BYTES);
            }
            let fut = m365_consumer::run(
                settings,
                kafka.clone(),
                m365_consumer::settings::tenants_from_runtime(cfg, &tenants),
                stats.consumer.clone(),
                cancel.clone(),
            );
            tasks.spawn(async move { ("consumer", fut.await.map_err(anyhow::Error::from)) });
        }
        if let Some(devo) = &cfg.devo {
            let mut settings = m365_forwarder::ForwarderSettings::from_config(cfg, None)?;
            settings.read_progress = backlog.clone();
            let output = m365_forwarder::build_output(devo, Arc::clone(&stats.forwarder.output))?;
            let fut = m365_forwarder::run(
                settings,
                kafka.clone(),
                output,
                stats.forwarder.clone(),
                cancel.clone(),
            );
            tasks.spawn(async move { ("forwarder", fut.await.map_err(anyhow::Error::from)) });
        }
        if tasks.is_empty() {
            anyhow::bail!("nothing to run: the configuration has no tenant and no devo output");
        }
        if cfg.metrics.enabled {
            start_metrics(cfg, &kafka, &tenants, &stats, &cancel).await?;
        }
        info!(stages = tasks.len(), "Pipeline started.");
        Ok(Pipeline {
            cancel,
            tasks,
            stats,
            kafka,
            _embedded: embedded,
        })
    }

    /// Waits until a stage stops on its own (an error) or `stop` fires; then stops the rest.
    /// Returns the first error.
    pub async fn run_until(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let first = tokio::select! {
            _ = stop.cancelled() => None,
            done = self.tasks.join_next() => done,
        };
        let mut result = Ok(());
        if let Some(done) = first {
            result = stage_result(done);
            if result.is_ok() {
                warn!("A stage stopped on its own; stopping the others.");
            }
        }
        let rest = self.shutdown().await;
        result.and(rest)
    }

    /// Asks every stage to drain and stop, and waits for them.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = stage_result(done)
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}

fn stage_result(
    done: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match done {
        Ok((_, Ok(()))) => Ok(()),
        Ok((stage, Err(e))) => {
            error!(stage, error = %m365_common::telemetry::error_chain(e.as_ref()), "A stage failed.");
            Err(e.context(format!("the {stage} stage failed")))
        }
        Err(e) => Err(anyhow::anyhow!("a stage panicked: {e}")),
    }
}

/// One registry and one readiness for the whole process: every stage's metrics, the API
/// clients of every tenant (each once), one token probe, one Kafka monitor over all groups.
async fn start_metrics(
    cfg: &Config,
    kafka: &KafkaSettings,
    tenants: &[runtime::TenantRuntime],
    stats: &PipelineStats,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    use m365_common::metrics::{self, KafkaMonitorSettings};
    let registry = metrics::new_registry();
    let readiness = metrics::Readiness::new();
    let mut monitor = KafkaMonitorSettings::default();
    if !tenants.is_empty() {
        m365_producer::metrics::register(&registry, stats.producer.clone())?;
        m365_consumer::metrics::register(&registry, stats.consumer.clone())?;
        metrics::register_api(&registry, tenants.iter().map(|t| t.api.clone()).collect())?;
        let p = stats.producer.clone();
        readiness.probe("output:producer", move || p.is_output_connected());
        let c = stats.consumer.clone();
        readiness.probe("output:consumer", move || c.output_connected.get());
        metrics::spawn_token_probe(
            &readiness,
            tenants.iter().map(|t| t.api.tokens().clone()).collect(),
            monitor.interval,
            cancel.clone(),
        );
        let settings = m365_consumer::ConsumerSettings::from_config(cfg);
        monitor
            .groups
            .extend(m365_consumer::metrics::watched_groups(&settings, kafka));
    }
    if cfg.devo.is_some() {
        m365_forwarder::metrics::register(&registry, stats.forwarder.clone())?;
        m365_forwarder::metrics::add_readiness(&readiness, stats.forwarder.clone());
        let settings = m365_forwarder::ForwarderSettings::from_config(cfg, None)?;
        monitor
            .groups
            .extend(m365_forwarder::metrics::lag_groups(&settings));
    }
    readiness.register(&registry)?;
    metrics::spawn_kafka_monitor(kafka, monitor, &registry, &readiness, cancel.clone())?;
    let server = metrics::serve(
        cfg.metrics.listen_address,
        registry,
        readiness,
        cancel.clone(),
    )
    .await?;
    info!(address = %server.local_addr(), "Serving /metrics, /healthz and /readyz.");
    Ok(())
}
