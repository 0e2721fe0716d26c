//! `m365-consumer`: downloads the blobs listed on `m365.uris` into `m365.events`, and runs the
//! uri_retry service when the configuration enables it.
//!
//! Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 runtime failure, 2 invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use m365_common::{metrics, runtime};
use m365_consumer::ConsumerSettings;
use m365_consumer::internal_events::ConsumerStats;
use m365_consumer::settings::tenants_from_runtime;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: m365_common::Jemalloc = m365_common::Jemalloc;

/// Downloads Microsoft 365 audit blobs into Kafka (topic `<prefix>.events`).
#[derive(Parser, Debug)]
#[command(name = "m365-consumer", version, about, long_about = None)]
struct Args {
    /// Configuration file (JSON or YAML; Devo's collector JSON is accepted as it is).
    #[arg(short, long, env = "M365_CONFIG")]
    config: PathBuf,
    /// Names this instance (part of its Kafka transactional ids). Keep it stable across
    /// restarts and unique among running instances.
    #[arg(long, env = "M365_CONSUMER_INSTANCE", default_value = "0")]
    instance_id: String,
    /// Group session timeout in milliseconds: how soon the partitions of a member that
    /// vanished move to the others.
    #[arg(
        long,
        env = "M365_CONSUMER_SESSION_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    session_timeout_ms: u64,
    /// Run only the uri_retry service (no downloads from `<prefix>.uris`).
    #[arg(long, conflicts_with = "no_uri_retry")]
    uri_retry_only: bool,
    /// Do not run the uri_retry service even if the configuration enables it.
    #[arg(long)]
    no_uri_retry: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime::StageSetup {
        config: cfg,
        tenants,
        kafka,
    } = match runtime::stage_setup(&args.config, "m365-consumer") {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut settings = ConsumerSettings::from_config(&cfg);
    settings.instance_id = args.instance_id;
    settings.session_timeout = std::time::Duration::from_millis(args.session_timeout_ms);
    if args.uri_retry_only {
        settings.run_consumer = false;
        if !settings.run_uri_retry {
            eprintln!(
                "uri_retry: --uri-retry-only needs the uri_retry service enabled in the configuration, e.g. \"services\": {{\"uri_retry\": {{}}}}"
            );
            return ExitCode::from(2);
        }
    }
    if args.no_uri_retry {
        settings.run_uri_retry = false;
    }
    let tenants = tenants_from_runtime(&cfg, &tenants);

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
        let stats = Arc::new(ConsumerStats::default());
        // Metrics stay up while the consumer drains, and stop once it has returned.
        let metrics_cancel = CancellationToken::new();
        let _stop_metrics = metrics_cancel.clone().drop_guard();
        if cfg.metrics.enabled
            && let Err(e) = start_metrics(
                &cfg.metrics,
                &stats,
                &settings,
                &tenants,
                &kafka,
                &metrics_cancel,
            )
            .await
        {
            tracing::error!(error = %e, "The metrics endpoint could not start.");
            return ExitCode::from(1);
        }
        match m365_consumer::run(settings, kafka, tenants, stats, cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "The consumer stopped on an error.");
                ExitCode::from(1)
            }
        }
    })
}

/// Registers the consumer's metrics and readiness and serves them on the configured address.
async fn start_metrics(
    config: &m365_common::config::MetricsSettings,
    stats: &Arc<ConsumerStats>,
    settings: &ConsumerSettings,
    tenants: &[m365_consumer::ConsumerTenant],
    kafka: &m365_common::kafka::KafkaSettings,
    cancel: &CancellationToken,
) -> Result<(), metrics::MetricsError> {
    let registry = metrics::new_registry();
    let readiness = metrics::Readiness::new();
    m365_consumer::metrics::install(
        &registry,
        &readiness,
        stats.clone(),
        settings,
        tenants,
        kafka,
        metrics::KafkaMonitorSettings::default(),
        cancel,
    )?;
    metrics::serve(config.listen_address, registry, readiness, cancel.clone()).await?;
    Ok(())
}
