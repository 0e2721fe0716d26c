//! m365-producer: manages subscriptions and lists content into `m365.uris` (design.md §4).
//!
//! # Layout
//! - [`settings`] — polling periods, horizons, instance identity.
//! - [`state`] — cursors and the content-id ledger in the compacted `m365.state` topic.
//! - [`stream`] — one stream's window listing, late-content sweep and commit.
//! - [`run`] — start-up (topics, transactions probe, state recovery, subscriptions), one task
//!   per stream, heartbeats and clean shutdown.
//! - [`internal_events`] — counters and per-stream cursors.
//! - [`metrics`] — their Prometheus export and the producer's readiness.

pub mod internal_events;
pub mod metrics;
pub mod run;
pub mod settings;
pub mod state;
pub mod stream;

pub use run::{StreamSpec, TenantRuntime, run};
pub use settings::ProducerSettings;
