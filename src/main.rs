//! `m365-devo`: the all-in-one command.
//!
//! Sub-commands today: `check-config`. (`run`, `demo` and `doctor` come with the consumer and
//! forwarder loops; see the README's status table.)
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use m365_common::config;

/// Microsoft 365 audit logs to Devo, through Kafka.
#[derive(Parser, Debug)]
#[command(name = "m365-devo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and validate a configuration file, report every error with its key path, and
    /// touch no network. Exit 0 when valid, 2 when not.
    CheckConfig {
        /// Configuration file (JSON or YAML; Devo's collector JSON is accepted as it is).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
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
                cfg.kafka.bootstrap_servers.as_deref().unwrap_or("embedded broker"),
                cfg.devo.as_ref().map(|d| d.output.kind()).unwrap_or("none configured"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
