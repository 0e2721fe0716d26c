//! m365-consumer: downloads the content blobs listed on `m365.uris`, splits them into audit
//! records, drops records already seen, and produces the rest to `m365.events` (design.md §5).
//!
//! # Layout
//!
//! * [`split`] — the streaming blob splitter: a push parser that turns a JSON-array body, fed in
//!   chunks, into records (exact original bytes plus `Id`, `Workload`, `CreationTime`,
//!   `RecordType`) and per-element rejections, with memory bounded by the record size cap.
//! * [`dedup`] — record-`Id` deduplication per stream: a bloom filter of rotating generations
//!   sized so that a wrongly dropped record is expected less than once per thousand filter
//!   lifetimes, with a versioned, checksummed snapshot format for `m365.state`.
//!
//! The download loop and the uri_retry service are not here yet.

pub mod dedup;
pub mod split;
