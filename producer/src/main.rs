//! `m365-producer`: manages subscriptions and lists content into `m365.uris`.
//!
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 runtime failure, 2 invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use m365_common::{metrics, runtime};
use m365_producer::internal_events::ProducerStats;
use m365_producer::{Coordination, ProducerSettings, run::tenants_from_runtime};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: m365_common::Jemalloc = m365_common::Jemalloc;

/// Lists Microsoft 365 audit content into Kafka (topic `<prefix>.uris`).
#[derive(Parser, Debug)]
#[command(name = "m365-producer", version, about, long_about = None)]
struct Args {
    /// Configuration file (JSON or YAML; Devo's collector JSON is accepted as it is).
    #[arg(short, long, env = "M365_CONFIG")]
    config: PathBuf,
    /// Names this instance in logs and health records (and, with `--coordination none`, its
    /// Kafka transactional id: two such instances with the same id fence each other).
    #[arg(long, env = "M365_PRODUCER_INSTANCE", default_value = "0")]
    instance_id: String,
    /// `group`: share the streams with every other instance of this configuration (each
    /// stream runs on exactly one). `none`: run every stream here, alone.
    /// Overrides `producer.coordination` of the configuration (default `group`).
    #[arg(long, env = "M365_PRODUCER_COORDINATION")]
    coordination: Option<Coordination>,
    /// Group session timeout: a killed instance's streams move after about this long.
    /// Overrides `producer.group_session_timeout_ms` (default 10000).
    #[arg(long, env = "M365_PRODUCER_GROUP_SESSION_TIMEOUT_MS")]
    group_session_timeout_ms: Option<u64>,
    /// Group heartbeat interval, at most a third of the session timeout.
    /// Overrides `producer.group_heartbeat_interval_ms` (default 3000).
    #[arg(long, env = "M365_PRODUCER_GROUP_HEARTBEAT_INTERVAL_MS")]
    group_heartbeat_interval_ms: Option<u64>,
    /// Partitions of `<prefix>.streams` if this instance creates it (an existing topic keeps
    /// its count).
    #[arg(long, env = "M365_PRODUCER_STREAM_SLOTS", default_value_t = 12)]
    stream_slots: i32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime::StageSetup {
        config: cfg,
        tenants,
        kafka,
    } = match runtime::stage_setup(&args.config, "m365-producer") {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut settings = ProducerSettings::from_config(&cfg);
    settings.instance_id = args.instance_id;
    if let Some(c) = args.coordination {
        settings.coordination = c;
    }
    if let Some(ms) = args.group_session_timeout_ms {
        settings.group_session_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.group_heartbeat_interval_ms {
        settings.group_heartbeat_interval = Duration::from_millis(ms);
    }
    settings.stream_slots = args.stream_slots;
    if let Err(e) = settings.validate() {
        eprintln!("invalid producer option: {e}");
        return ExitCode::from(2);
    }

    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(m365_common::telemetry::cancel_on_signal(cancel.clone()));
        let stats = std::sync::Arc::new(ProducerStats::default());
        let tenants = tenants_from_runtime(&tenants);
        // Metrics stay up while the producer drains, and stop once it has returned.
        let metrics_cancel = CancellationToken::new();
        let _stop_metrics = metrics_cancel.clone().drop_guard();
        if cfg.metrics.enabled
            && let Err(e) =
                start_metrics(&cfg.metrics, &stats, &tenants, &kafka, &metrics_cancel).await
        {
            tracing::error!(error = %e, "The metrics endpoint could not start.");
            return ExitCode::from(1);
        }
        match m365_producer::run(settings, kafka, tenants, stats, cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "The producer stopped on an error.");
                ExitCode::from(1)
            }
        }
    })
}

/// Registers the producer's metrics and readiness and serves them on the configured address.
async fn start_metrics(
    settings: &m365_common::config::MetricsSettings,
    stats: &std::sync::Arc<ProducerStats>,
    tenants: &[m365_producer::TenantRuntime],
    kafka: &m365_common::kafka::KafkaSettings,
    cancel: &CancellationToken,
) -> Result<(), metrics::MetricsError> {
    let registry = metrics::new_registry();
    let readiness = metrics::Readiness::new();
    m365_producer::metrics::install(
        &registry,
        &readiness,
        stats.clone(),
        tenants,
        kafka,
        metrics::KafkaMonitorSettings::default(),
        cancel,
    )?;
    metrics::serve(settings.listen_address, registry, readiness, cancel.clone()).await?;
    Ok(())
}
