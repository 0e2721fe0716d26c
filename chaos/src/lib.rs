//! m365-chaos: the chaos driver of m365-devo. It runs the three stage binaries, `m365-sim`
//! (fake tenant + fake Devo) and a real Kafka-protocol broker (tansu) as separate processes;
//! from a seed it kills stages and the broker with SIGKILL and restarts them, stops the fake
//! Devo for a while, makes the API throttle or fail in bursts, expires tokens and blobs; then
//! it compares the record ids Devo received with the simulator's truth.
//!
//! Layout:
//! - [`plan`]     — the seeded trials (fault kind, start, hold).
//! - [`procs`]    — child processes, binary lookup, the tansu broker.
//! - [`simproc`]  — the `m365-sim` process and its control API client.
//! - [`received`] — what the fake Devo wrote to disk: record ids and gap records.
//! - [`report`]   — the comparison with the truth and the table.
//! - [`diagnose`] — which stage lost what, read from the topics.
//! - [`tansu`]    — tansu 0.6's stuck consumer groups: recognising and resetting them.
//! - [`watchdog`] — the broker probe and the consumer-group progress reads.
//! - [`run`]      — the scenario itself ([`run::run`]).

pub mod diagnose;
pub mod plan;
pub mod procs;
pub mod received;
pub mod report;
pub mod run;
pub mod simproc;
pub mod tansu;
pub mod watchdog;

pub use plan::{FaultKind, Trial, plan};
pub use report::Report;
pub use run::{ChaosOptions, run};
