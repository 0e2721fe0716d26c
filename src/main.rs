//! `m365-devo`: the all-in-one command.
//!
//! Sub-commands: `run` (the three stages in one process, see `pipeline.rs`), `demo` (the
//! same against the simulated tenant and fake Devo, see `demo.rs`), `check-config`, `doctor`
//! (see `doctor.rs`) and `onboard` (see `onboard.rs`).
//!
//! Exit codes: 0 success, 1 runtime failure (for `doctor`: a check failed), 2 invalid
//! configuration or usage.

mod demo;
mod doctor;
mod onboard;
mod pipeline;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use m365_common::config;

#[global_allocator]
static ALLOCATOR: m365_common::Jemalloc = m365_common::Jemalloc;

/// Microsoft 365 audit logs to Devo, through Kafka.
#[derive(Parser, Debug)]
#[command(name = "m365-devo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the producer, the consumer (with uri_retry) and the forwarder in one process. Without
    /// `kafka.bootstrap_servers` they run on an embedded in-memory broker, which keeps nothing
    /// across restarts.
    #[command(
        after_help = "Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 a stage failed, 2 invalid configuration."
    )]
    Run {
        /// Configuration file (JSON or YAML; Devo's collector JSON is accepted as it is).
        #[arg(long, env = "M365_CONFIG")]
        config: PathBuf,
    },
    /// A simulated tenant's day with an intrusion in it, collected by the whole pipeline on the
    /// embedded broker and delivered to a fake Devo over TLS with client certificates; ends with a
    /// table of what arrived against the simulator's truth. Everything stays on 127.0.0.1.
    #[command(after_help = "Exit codes: 0 nothing missing, 1 records missing or the demo failed.")]
    Demo(demo::DemoArgs),
    /// Parse and validate a configuration file, report every error with its key path, and
    /// touch no network. Exit 0 when valid, 2 when not.
    CheckConfig {
        /// Configuration file (JSON or YAML; Devo's collector JSON is accepted as it is).
        file: PathBuf,
    },
    /// Check everything a run needs against the real services: token and its roles, clock
    /// skew, subscriptions, Kafka brokers and topics, the Devo TLS handshake, certificate
    /// expiry. Prints one ✔/✘ line per check, with what to do for each ✘.
    #[command(
        after_help = "Exit codes: 0 all checks passed, 1 a check failed, 2 invalid configuration."
    )]
    Doctor {
        /// Configuration file (JSON or YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Admin consent of the app in a customer tenant: print the consent URL; with --listen,
    /// receive the redirect, exchange the code and print the tenant block for the configuration.
    #[command(
        after_help = "Exit codes: 0 done, 1 consent or code exchange failed (or timed out), 2 invalid arguments."
    )]
    Onboard(Box<onboard::OnboardArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => run(&config),
        Command::Demo(args) => demo_main(args),
        Command::Doctor { config } => doctor::main(&config),
        Command::Onboard(args) => onboard::main(*args),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match config::load_with(file, &config::LoadOptions::new().allow_no_tenants()) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            let streams: usize = cfg.tenants().iter().map(|t| t.streams.len()).sum();
            println!(
                "{}: valid — {} tenant(s), {} stream(s), Kafka: {}, output: {}.",
                file.display(),
                cfg.tenants().len(),
                streams,
                cfg.kafka
                    .bootstrap_servers
                    .as_deref()
                    .unwrap_or("embedded broker"),
                cfg.devo
                    .as_ref()
                    .map(|d| d.output.kind())
                    .unwrap_or("none configured"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    let cfg = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    m365_common::telemetry::init_logging(&cfg.logging.level, cfg.logging.json);
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "Configuration warning.");
    }
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async move {
        let pipeline = match pipeline::Pipeline::start(&cfg).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "m365-devo: {}",
                    m365_common::telemetry::error_chain(e.as_ref())
                );
                return ExitCode::from(1);
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(m365_common::telemetry::cancel_on_signal(stop.clone()));
        match pipeline.run_until(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "m365-devo: {}",
                    m365_common::telemetry::error_chain(e.as_ref())
                );
                ExitCode::from(1)
            }
        }
    })
}

fn demo_main(args: demo::DemoArgs) -> ExitCode {
    m365_common::telemetry::init_logging("error", false);
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    match rt.block_on(demo::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!(
                "m365-devo demo: {}",
                m365_common::telemetry::error_chain(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}
