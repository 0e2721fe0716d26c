//! Debug outputs: `file` (append to a local file) and `stdout`.
//!
//! `write_batch` returns once the bytes are handed to the operating system (written and
//! flushed out of our buffers); `flush` additionally fsyncs the file. With
//! `fsync_each_batch` every batch is fsynced before `write_batch` returns, for setups that
//! commit Kafka offsets against a file and must survive a power cut.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::OutputError;
use super::stats::OutputStats;

/// Appends framed lines to a file, creating it if needed.
#[derive(Debug)]
pub struct FileOutput {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    fsync_each_batch: bool,
    stats: Arc<OutputStats>,
}

impl FileOutput {
    /// A file output for `path`; the file is opened on the first write.
    pub fn new(path: impl Into<PathBuf>, fsync_each_batch: bool, stats: Arc<OutputStats>) -> Self {
        FileOutput {
            path: path.into(),
            file: None,
            fsync_each_batch,
            stats,
        }
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    fn err(&self, what: &'static str, source: std::io::Error) -> OutputError {
        OutputError::File {
            what,
            path: self.path.display().to_string(),
            source,
        }
    }

    async fn file(&mut self) -> Result<&mut tokio::fs::File, OutputError> {
        if self.file.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| self.err("cannot open output file", e))?;
            self.file = Some(f);
        }
        // Just set above when it was empty.
        self.file.as_mut().ok_or(OutputError::Closed)
    }

    /// Appends `bytes` and flushes them to the OS (and to disk with `fsync_each_batch`).
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        let fsync = self.fsync_each_batch;
        let file = self.file().await?;
        let result = async {
            file.write_all(bytes).await?;
            file.flush().await?;
            if fsync {
                file.sync_data().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            // Reopen on the next write; a partially appended batch may remain in the file.
            self.file = None;
            let e = self.err("cannot write output file", e);
            self.stats.record_write_error(&e);
            return Err(e);
        }
        self.stats.record_batch(bytes.len());
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub async fn flush(&mut self) -> Result<(), OutputError> {
        if let Some(f) = self.file.as_mut() {
            let r = async {
                f.flush().await?;
                f.sync_data().await
            }
            .await;
            r.map_err(|e| self.err("cannot sync output file", e))?;
        }
        Ok(())
    }

    /// Flushes, fsyncs and closes the file.
    pub async fn shutdown(&mut self) -> Result<(), OutputError> {
        self.flush().await?;
        self.file = None;
        Ok(())
    }
}

/// Writes framed lines to standard output.
#[derive(Debug)]
pub struct StdoutOutput {
    out: tokio::io::Stdout,
    stats: Arc<OutputStats>,
}

impl StdoutOutput {
    /// A stdout output.
    pub fn new(stats: Arc<OutputStats>) -> Self {
        StdoutOutput {
            out: tokio::io::stdout(),
            stats,
        }
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// Writes and flushes `bytes`.
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        let r = async {
            self.out.write_all(bytes).await?;
            self.out.flush().await
        }
        .await;
        r.map_err(|source| OutputError::File {
            what: "cannot write",
            path: "stdout".into(),
            source,
        })?;
        self.stats.record_batch(bytes.len());
        Ok(())
    }

    /// Flushes standard output.
    pub async fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush().await.map_err(|source| OutputError::File {
            what: "cannot flush",
            path: "stdout".into(),
            source,
        })
    }
}
