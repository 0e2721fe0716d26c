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

/// An error and its causes on one line, `outer: cause: root`, leaving out a cause whose text
/// the line already holds: many errors here (ours and librdkafka's) repeat their source in
/// their own message, and `{:#}` would print it twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Quiet {
        source: std::io::Error,
    }

    // Proves a cause already in the message is not repeated, and one that is not is added.
    #[test]
    fn causes_appear_once() {
        let e = Repeats {
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(error_chain(&e), "outer: disk gone");
        let e = Quiet {
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(error_chain(&e), "outer: disk gone");
    }
}
