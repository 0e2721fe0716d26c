//! Logging set-up shared by every binary: `tracing` with an env filter, human or JSON output.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a filter directive (`info`, `m365=debug` …);
/// `RUST_LOG` wins when set. Calling it twice is harmless.
pub fn init_logging(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Cancels `cancel` on SIGTERM or SIGINT: the clean-shutdown trigger of every binary.
pub async fn cancel_on_signal(cancel: tokio_util::sync::CancellationToken) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops cleanly.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("Shutdown requested; finishing the work in flight.");
    cancel.cancel();
}
