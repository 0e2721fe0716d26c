//! m365-consumer: downloads the content blobs listed on `m365.uris`, splits them into audit
//! records, drops records already seen, and produces the rest to `m365.events`; its uri_retry
//! service brings failed blobs back when their backoff has passed (design.md §5).
//!
//! # Layout
//!
//! * [`split`] — the streaming blob splitter: a push parser that turns a JSON-array body, fed in
//!   chunks, into records (exact original bytes plus `Id`, `Workload`, `CreationTime`,
//!   `RecordType`) and per-element rejections, with memory bounded by the record size cap.
//! * [`dedup`] — record-`Id` deduplication per stream: a bloom filter of rotating generations
//!   sized so that a wrongly dropped record is expected less than once per thousand filter
//!   lifetimes, with a versioned, checksummed snapshot format for `m365.state`.
//! * [`settings`] — runtime settings from the configuration, per-tenant/stream options.
//! * [`kafka_io`] — group consumers, the output producer (transactional or ordered), bounded
//!   in-flight sends.
//! * [`state`] — dedup snapshots on `m365.state` and their recovery from `m365.events`.
//! * [`blob`] — one blob: fetch, split, tag, dedup, produce.
//! * [`retry`] — failure classification, retry/dead routing, the uri_retry service.
//! * [`run`] — start-up, the download loop, heartbeats, shutdown.
//! * [`internal_events`] — counters.
//! * [`metrics`] — their Prometheus export and the consumer's readiness.
//!
//! [`split`] and [`dedup`] are pure (no I/O).

pub mod blob;
pub mod dedup;
pub mod internal_events;
pub mod kafka_io;
pub mod metrics;
pub mod retry;
pub mod run;
pub mod settings;
pub mod split;
pub mod state;

pub use run::{ConsumerError, run};
pub use settings::{ConsumerSettings, ConsumerTenant, StreamOptions};
