//! `m365-devo`: the all-in-one command.
//!
//! Sub-commands today: `check-config`, `doctor` (see `doctor.rs`) and `onboard` (see
//! `onboard.rs`). (`run` and `demo` come with the consumer and forwarder loops; see the
//! README's status table.)
//!
//! Exit codes: 0 success, 1 runtime failure (for `doctor`: a check failed), 2 invalid
//! configuration or usage.

mod doctor;
mod onboard;

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
