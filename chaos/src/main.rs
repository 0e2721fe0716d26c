//! `m365-chaos`: runs the chaos scenario (see the `m365_chaos` crate docs) and prints its
//! table. Exit codes: 0 nothing lost and every gap record matches a blob the simulator
//! expired; 1 otherwise; 2 the run could not be carried out (missing binary, broker...).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use m365_chaos::{ChaosOptions, run};

/// Kills and restarts the m365-devo stages, the broker and the fake Devo at random moments,
/// throttles and fails the API, expires tokens; then counts lost and duplicated records.
#[derive(Parser, Debug)]
#[command(name = "m365-chaos", version)]
struct Cli {
    /// Seed of the plan (which fault, when, how long) and of the simulated tenant.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of trials (one fault with its recovery each).
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// Audit records per minute the simulated tenant produces.
    #[arg(long, default_value_t = 200.0)]
    records_per_minute: f64,
    /// Hours of tenant history present at the start.
    #[arg(long, default_value_t = 0.1)]
    history_hours: f64,
    /// Folder for configuration, logs, broker data and received events (emptied first).
    #[arg(long, default_value = "m365-chaos-run")]
    out: PathBuf,
    /// Folder holding m365-producer, m365-consumer, m365-forwarder and m365-sim (default:
    /// next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The tansu broker binary (default: `tansu` on PATH, then ~/.cargo/bin/tansu).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Longest wait, in seconds, for the pipeline to deliver everything after the last trial.
    #[arg(long, default_value_t = 1800)]
    drain_timeout_secs: u64,
    /// The drain also gives up when Devo received nothing new for this many seconds.
    #[arg(long, default_value_t = 240)]
    drain_idle_secs: u64,
    /// Kafka group session timeout of the stages, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    session_timeout_ms: u64,
    /// Dynamic group membership for the stages (no `group.instance.id`): shows tansu 0.6's
    /// coordinator bugs with members that vanish without leaving.
    #[arg(long)]
    dynamic_membership: bool,
    /// `M365_PRODUCER_COORDINATION` for the producer (`none` or `group`); unset: the
    /// driver's own environment decides.
    #[arg(long)]
    producer_coordination: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut opts = ChaosOptions::new(cli.seed, cli.trials, &cli.out);
    opts.records_per_minute = cli.records_per_minute;
    opts.history_hours = cli.history_hours;
    opts.bin_dir = cli.bin_dir;
    opts.broker_bin = cli.broker_bin;
    opts.drain_timeout = Duration::from_secs(cli.drain_timeout_secs);
    opts.drain_idle_timeout = Duration::from_secs(cli.drain_idle_secs);
    opts.session_timeout = Duration::from_millis(cli.session_timeout_ms);
    opts.static_membership = !cli.dynamic_membership;
    opts.producer_coordination = cli.producer_coordination;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(&opts)) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("m365-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    // Proves the flag definitions are consistent.
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
