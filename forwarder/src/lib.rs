//! m365-forwarder: reads audit records from Kafka (`m365.events`) and delivers them to Devo,
//! committing offsets only after the batch is written and flushed.
//!
//! # Layout
//!
//! * [`framing`]: the Devo line format, byte-identical to Devo's Python SDK
//!   (`<14>Jan  1 00:00:00 HOST TAG: RECORD\n`), octet-counted multiline and the SDK's
//!   gzip ("zip") mode. Pure, allocation-free per line, on the hot path.
//! * [`output`]: connections to Devo and debug sinks behind one [`output::Output`] type:
//!   `devo_tls` (syslog over TLS with the domain's client certificate), `tcp` (plain, for a
//!   relay), `devo_http` (HTTP ingestion, stream mode, gzip), `file` and `stdout`; plus a
//!   [`output::Pool`] of parallel connections. Each write returns only once the bytes are
//!   written and flushed to the socket/file, so the caller may then commit Kafka offsets.
//!   Connection lifecycle (lazy connect, reconnect when idle, old or closed by the peer,
//!   half-close on shutdown, jittered backoff) follows `shared/docs/devo.md` §1.6.
//! * [`settings`]: the stage's settings from the configuration, and the output they build.
//! * [`run`]: the stage loop: consumer group on `m365.events` and `m365.health`, batching
//!   by size and time, commit after delivery, pause while Devo is away, clean drain.
//! * Counters of the stage and its output: [`internal_events`]; exported as Prometheus
//!   metrics with the `output` readiness by [`metrics`].

pub mod framing;
pub mod internal_events;
pub mod metrics;
pub mod output;
pub mod run;
pub mod settings;

pub use run::{RunError, run};
pub use settings::{ForwarderSettings, SettingsError, build_output};
