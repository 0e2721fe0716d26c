//! m365-producer: manages subscriptions and lists content into `m365.uris` (design.md §4).
//!
//! # Layout
//! - [`settings`] — polling periods, horizons, instance identity.
//! - [`state`] — cursors and the content-id ledger in the compacted `m365.state` topic.
//! - [`stream`] — one stream's window listing, late-content sweep and commit.
//! - [`run`](mod@run) — start-up (topics, transactions probe), adopting streams (fencing, state
//!   recovery, subscriptions, one task per stream), releasing them, heartbeats, clean shutdown.
//! - [`group`] — several instances sharing the streams through a Kafka consumer group.
//! - [`internal_events`] — counters and per-stream cursors.
//! - [`metrics`] — their Prometheus export and the producer's readiness.

pub mod group;
pub mod internal_events;
pub mod metrics;
pub mod run;
pub mod settings;
pub mod state;
pub mod stream;

pub use run::{StreamSpec, TenantRuntime, run};
pub use settings::{Coordination, ProducerSettings};
