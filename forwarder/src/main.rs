//! `m365-forwarder`: reads audit and health records from Kafka and delivers them to Devo,
//! committing offsets only after each batch is written and flushed.
//!
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT: the batches in flight are delivered and
//! committed, the output half-closed), 1 runtime failure (e.g. Devo refused our client
//! certificate), 2 invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use m365_common::config::{self, LoadOptions};
use m365_common::{kafka, metrics, runtime, telemetry};
use m365_forwarder::internal_events::ForwarderStats;
use m365_forwarder::{ForwarderSettings, build_output};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: m365_common::Jemalloc = m365_common::Jemalloc;

/// Forwards Microsoft 365 audit records from Kafka (`<prefix>.events`, `<prefix>.health`)
/// to Devo.
#[derive(Parser, Debug)]
#[command(name = "m365-forwarder", version, about, long_about = None)]
struct Args {
    /// Configuration file (JSON or YAML); tenants are optional for the forwarder.
    #[arg(short, long, env = "M365_CONFIG")]
    config: PathBuf,
    /// Kafka consumer group (default `<topic_prefix>-forwarder`).
    #[arg(long, env = "M365_FORWARDER_GROUP")]
    group_id: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config::load_with(&args.config, &LoadOptions::new().allow_no_tenants()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&cfg.logging.level, cfg.logging.json);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let Some(bootstrap) = cfg.kafka.bootstrap_servers.clone() else {
        eprintln!(
            "kafka.bootstrap_servers: expected the Kafka brokers for m365-forwarder, e.g. \"kafka-1:9092,kafka-2:9092\" (m365-devo runs an embedded broker when none is given; the separate binaries need a real one)"
        );
        return ExitCode::from(2);
    };
    let settings = match ForwarderSettings::from_config(&cfg, args.group_id.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(devo) = cfg.devo.clone() else {
        eprintln!("{}", m365_forwarder::SettingsError::MissingDevo);
        return ExitCode::from(2);
    };
    let kafka_settings = runtime::kafka_settings(&cfg.kafka, &bootstrap);

    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let stats = Arc::new(ForwarderStats::default());
        let output = match build_output(&devo, Arc::clone(&stats.output)) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        // The forwarder only reads; creating missing topics is a courtesy (it needs admin
        // rights), so a failure is a warning.
        if let Err(e) = kafka::ensure_topics(&kafka_settings).await {
            tracing::warn!(error = %e, "Could not check or create the Kafka topics; consuming anyway.");
        }
        // Metrics stay up while the forwarder drains, and stop once it has returned.
        let metrics_cancel = CancellationToken::new();
        let _stop_metrics = metrics_cancel.clone().drop_guard();
        if cfg.metrics.enabled
            && let Err(e) = start_metrics(
                &cfg.metrics,
                &stats,
                &settings,
                &kafka_settings,
                &metrics_cancel,
            )
            .await
        {
            tracing::error!(error = %e, "The metrics endpoint could not start.");
            eprintln!("m365-forwarder: {e}");
            return ExitCode::from(1);
        }
        let cancel = CancellationToken::new();
        tokio::spawn(m365_common::telemetry::cancel_on_signal(cancel.clone()));
        match m365_forwarder::run(settings, kafka_settings, output, stats, cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "The forwarder stopped on an error.");
                eprintln!("m365-forwarder: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Registers the forwarder's metrics and readiness (with the lag of its group on the events
/// and health topics) and serves them on the configured address.
async fn start_metrics(
    settings: &m365_common::config::MetricsSettings,
    stats: &Arc<ForwarderStats>,
    forwarder: &ForwarderSettings,
    kafka: &kafka::KafkaSettings,
    cancel: &CancellationToken,
) -> Result<(), metrics::MetricsError> {
    let registry = metrics::new_registry();
    let readiness = metrics::Readiness::new();
    m365_forwarder::metrics::install(
        &registry,
        &readiness,
        Arc::clone(stats),
        forwarder,
        kafka,
        metrics::KafkaMonitorSettings::default(),
        cancel,
    )?;
    metrics::serve(settings.listen_address, registry, readiness, cancel.clone()).await?;
    Ok(())
}
