//! Where the forwarder's records go: Devo over TLS syslog (`devo_tls`), a relay over plain
//! TCP (`tcp`), Devo HTTP ingestion (`devo_http`), or a `file`/`stdout` for debugging.
//!
//! [`Output`] is the one type the forwarder loop uses. It owns the [`LineFormat`] and a
//! reused framing buffer, so the loop hands it `(tag, record)` pairs:
//!
//! * [`Output::write_records`] frames and writes one batch and returns `Ok` only after the
//!   bytes are written and flushed (socket, file) or accepted (HTTP 2xx); the caller then
//!   commits the batch's Kafka offsets;
//! * [`Output::submit_records`] does the same but returns a [`Delivery`] to await later, so
//!   a [`Pool`] of parallel connections can have several batches in flight;
//! * [`Output::write_batch`] writes pre-framed bytes (stream, file and stdout outputs).
//!
//! Modules: [`stream`] (connection lifecycle for TLS and TCP), [`tls`] (certificates and
//! error classification), [`http`], [`file`], [`pool`], [`retry`] (backoff), [`stats`]
//! (counters), [`error`].

pub mod error;
pub mod file;
pub mod http;
pub mod pool;
pub mod retry;
pub mod stats;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;

pub use error::OutputError;
pub use file::{FileOutput, StdoutOutput};
pub use http::{HttpOutput, HttpSettings};
pub use pool::{Delivery, Pool};
pub use retry::RetryPolicy;
pub use stats::{OutputStats, StatsSnapshot, TagCounts};
pub use stream::{Carrier, LinkState, StreamOutput, StreamSettings};
pub use tls::{TlsSettings, TlsVersions};

use crate::framing::{LineFormat, ZipBatcher};
use stats::TagTally;

/// The concrete destination behind an [`Output`].
#[derive(Debug)]
pub enum Sink {
    /// `devo_tls` or `tcp`, one connection.
    Stream(StreamOutput),
    /// `devo_tls` or `tcp`, several connections.
    Pool(Pool),
    /// `devo_http`.
    Http(HttpOutput),
    /// `file`.
    File(FileOutput),
    /// `stdout`.
    Stdout(StdoutOutput),
}

impl Sink {
    fn stats(&self) -> Arc<OutputStats> {
        Arc::clone(match self {
            Sink::Stream(s) => s.stats(),
            Sink::Pool(p) => p.stats(),
            Sink::Http(h) => h.stats(),
            Sink::File(f) => f.stats(),
            Sink::Stdout(s) => s.stats(),
        })
    }

    /// Short name used in logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Stream(s) => s.kind(),
            Sink::Pool(_) => "pool",
            Sink::Http(_) => "devo_http",
            Sink::File(_) => "file",
            Sink::Stdout(_) => "stdout",
        }
    }
}

/// An output plus the line format it writes.
#[derive(Debug)]
pub struct Output {
    sink: Sink,
    format: LineFormat,
    zip: Option<ZipBatcher>,
    scratch: Vec<u8>,
    stats: Arc<OutputStats>,
}

impl Output {
    /// Wraps `sink`, framing records with `format`.
    pub fn new(sink: Sink, format: LineFormat) -> Self {
        Output {
            stats: sink.stats(),
            sink,
            format,
            zip: None,
            scratch: Vec::with_capacity(1 << 20),
        }
    }

    /// Sends each batch as one gzip member (devo-sdk's `zip=True`; not for `devo_http`,
    /// which compresses on its own). A failed write is sent again from the start of the
    /// batch anyway, so a member is never cut.
    pub fn with_zip(mut self, zip: ZipBatcher) -> Self {
        self.zip = Some(zip);
        self
    }

    /// The counters of this output.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// The destination.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// The destination, mutably (health checks, tests).
    pub fn sink_mut(&mut self) -> &mut Sink {
        &mut self.sink
    }

    /// The line format in use.
    pub fn format(&self) -> &LineFormat {
        &self.format
    }

    /// Frames `records` into the scratch buffer and returns per-tag counts.
    fn frame(&mut self, records: &[(&str, &[u8])]) -> Vec<(String, TagCounts)> {
        self.scratch.clear();
        let mut tally = TagTally::default();
        match &mut self.zip {
            None => {
                for (tag, record) in records {
                    let before = self.scratch.len();
                    self.format.frame_into(tag, record, &mut self.scratch);
                    tally.add(tag, self.scratch.len() - before);
                }
            }
            Some(zip) => {
                for (tag, record) in records {
                    zip.push_record(&self.format, tag, record, &mut self.scratch);
                    tally.add(tag, self.format.line_len(tag, record));
                }
                zip.flush(&mut self.scratch);
            }
        }
        tally.into_owned()
    }

    /// Frames and delivers one batch of `(tag, record)` pairs. `Ok` means written and
    /// flushed (stream, file), or accepted with 2xx (HTTP): the caller may commit.
    pub async fn write_records(&mut self, records: &[(&str, &[u8])]) -> Result<(), OutputError> {
        self.submit_records(records).await?.wait().await
    }

    /// Like [`Output::write_records`], but with a [`Pool`] returns as soon as the batch is
    /// queued; await the [`Delivery`] before committing. Other sinks finish the write first.
    pub async fn submit_records(
        &mut self,
        records: &[(&str, &[u8])],
    ) -> Result<Delivery, OutputError> {
        if records.is_empty() {
            return Ok(Delivery::ready(Ok(())));
        }
        if let Sink::Http(h) = &mut self.sink {
            // HTTP groups by tag and counts per tag itself.
            return Ok(Delivery::ready(h.write_records(records).await));
        }
        let tags = self.frame(records);
        let framed = Bytes::copy_from_slice(&self.scratch);
        self.deliver(framed, tags).await
    }

    /// Hands framed bytes to the sink; the delivery records `tags` when it succeeds.
    async fn deliver(
        &mut self,
        framed: Bytes,
        tags: Vec<(String, TagCounts)>,
    ) -> Result<Delivery, OutputError> {
        let stats = Arc::clone(&self.stats);
        let delivery = match &mut self.sink {
            Sink::Pool(p) => p.submit(framed).await?,
            Sink::Stream(s) => Delivery::carried(s.send(&framed).await),
            Sink::File(f) => Delivery::ready(f.write_batch(&framed).await),
            Sink::Stdout(s) => Delivery::ready(s.write_batch(&framed).await),
            Sink::Http(_) => Delivery::ready(Err(OutputError::NeedsRecords("devo_http"))),
        };
        Ok(delivery.with_tags(tags, stats))
    }

    /// Delivers one batch that the caller already framed with this output's
    /// [`Output::format`]: `framed` holds the lines of `records`, in order. Stream, file and
    /// stdout sinks send `framed` as it is (a pool without copying it); `devo_http` and the
    /// gzip mode work from `records`, as [`Output::submit_records`] does.
    pub async fn submit_framed(
        &mut self,
        framed: Bytes,
        records: &[(&str, &[u8])],
    ) -> Result<Delivery, OutputError> {
        if records.is_empty() {
            return Ok(Delivery::ready(Ok(())));
        }
        if self.zip.is_some() || matches!(self.sink, Sink::Http(_)) {
            return self.submit_records(records).await;
        }
        debug_assert_eq!(
            framed.len(),
            records
                .iter()
                .map(|(t, r)| self.format.framed_len(t, r))
                .sum::<usize>(),
            "framed bytes and records disagree"
        );
        let mut tally = TagTally::default();
        for (tag, record) in records {
            tally.add(tag, self.format.framed_len(tag, record));
        }
        let tags = tally.into_owned();
        self.deliver(framed, tags).await
    }

    /// Writes pre-framed bytes as they are (not valid for `devo_http`).
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        match &mut self.sink {
            Sink::Stream(s) => s.write_batch(bytes).await,
            Sink::Pool(p) => p.write_batch(bytes).await,
            Sink::Http(h) => h.write_batch(bytes).await,
            Sink::File(f) => f.write_batch(bytes).await,
            Sink::Stdout(s) => s.write_batch(bytes).await,
        }
    }

    /// Makes everything written so far durable where the sink can (fsync for files). Stream
    /// and HTTP writes are already flushed when they return.
    pub async fn flush(&mut self) -> Result<(), OutputError> {
        match &mut self.sink {
            Sink::Stream(s) => s.flush().await,
            Sink::Pool(_) | Sink::Http(_) => Ok(()),
            Sink::File(f) => f.flush().await,
            Sink::Stdout(s) => s.flush().await,
        }
    }

    /// Closes gracefully: streams half-close and wait for the server to close (bounded),
    /// a pool drains its queues first, files are fsynced.
    pub async fn shutdown(&mut self) -> Result<(), OutputError> {
        match &mut self.sink {
            Sink::Stream(s) => s.shutdown().await,
            Sink::Pool(p) => p.shutdown().await,
            Sink::Http(_) => Ok(()),
            Sink::File(f) => f.shutdown().await,
            Sink::Stdout(s) => s.flush().await,
        }
    }
}
