//! The one error type of every output, with the classification the retry loops and the
//! caller need: is it worth retrying, how many bytes reached the socket before it happened,
//! and a fixed `error_type` label for metrics.
//!
//! Messages name the file, address or (redacted) URL involved and never contain a private
//! key, a password or a Devo token.

use std::io;
use std::path::PathBuf;

/// Why writing to an output failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A PEM/PKCS#12 file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A credentials file was read but holds nothing usable.
    #[error("{what} file {path} contains no usable {expected}")]
    BadCredentials {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// The TLS settings are inconsistent (e.g. key does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
    /// A feature the configuration asks for is not built in.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The server's certificate does not chain to the configured CA file.
    #[error(
        "TLS handshake with {server} failed: server certificate not trusted by chain file {chain}: {detail}"
    )]
    ServerNotTrusted {
        server: String,
        chain: PathBuf,
        detail: String,
    },
    /// The server's certificate is valid but not for the configured server name.
    #[error(
        "TLS handshake with {server} failed: server certificate is not valid for name {server}: {detail}"
    )]
    ServerNameMismatch { server: String, detail: String },
    /// The server refused our client certificate (alert during or right after the handshake).
    #[error(
        "TLS: the server {server} rejected the client certificate {cert} ({detail}); check that the certificate, key and Devo domain belong together"
    )]
    ClientCertRejected {
        server: String,
        cert: String,
        detail: String,
    },
    /// Any other TLS handshake failure.
    #[error("TLS handshake with {server} failed: {detail}")]
    Handshake { server: String, detail: String },
    /// Writing failed; `written` bytes of `total` had been handed to the socket before.
    #[error("writing to {addr} failed after {written} of {total} bytes: {source}")]
    Write {
        addr: String,
        written: usize,
        total: usize,
        #[source]
        source: io::Error,
    },
    /// An operation did not finish in time.
    #[error("{what} with {addr} timed out after {secs} s")]
    Timeout {
        what: &'static str,
        addr: String,
        secs: u64,
    },
    /// The HTTP request could not be made or got no answer (URL redacted).
    #[error("HTTP request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    /// Devo answered with an error status (URL redacted).
    #[error("Devo HTTP ingestion answered {status} for {url}: {body}")]
    HttpStatus {
        status: u16,
        url: String,
        body: String,
    },
    /// One record alone is bigger than the HTTP request size cap.
    #[error("a record of {size} bytes for tag {tag} exceeds the HTTP request cap of {cap} bytes")]
    RecordTooLarge {
        tag: String,
        size: usize,
        cap: usize,
    },
    /// The output needs tagged records (`write_records`), not pre-framed bytes.
    #[error("output {0} cannot take pre-framed bytes; use write_records")]
    NeedsRecords(&'static str),
    /// A file or stdout operation failed.
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The output (or the pool worker) has been shut down.
    #[error("output is shut down")]
    Closed,
    /// Retries were exhausted; the last error is attached.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        attempts: u32,
        /// Bytes of the batch known to have reached the socket before the last failure.
        written: usize,
        #[source]
        last: Box<OutputError>,
    },
}

impl OutputError {
    /// True when retrying cannot help without an operator changing something (credentials,
    /// configuration, a rejected request).
    pub fn is_permanent(&self) -> bool {
        match self {
            OutputError::ReadFile { .. }
            | OutputError::BadCredentials { .. }
            | OutputError::TlsConfig(_)
            | OutputError::Unsupported(_)
            | OutputError::ServerNotTrusted { .. }
            | OutputError::ServerNameMismatch { .. }
            | OutputError::ClientCertRejected { .. }
            | OutputError::RecordTooLarge { .. }
            | OutputError::NeedsRecords(_)
            | OutputError::Closed => true,
            // 4xx other than 408/429 is a request Devo will never accept as is.
            OutputError::HttpStatus { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            OutputError::RetriesExhausted { last, .. } => last.is_permanent(),
            _ => false,
        }
    }

    /// Bytes of the failed batch that had been handed to the socket before the failure.
    ///
    /// TCP gives no acknowledgement, so "handed to the socket" is not "stored by Devo": a
    /// connection that dies can still lose what sat in the kernel's send buffer.
    pub fn written(&self) -> usize {
        match self {
            OutputError::Write { written, .. } | OutputError::RetriesExhausted { written, .. } => {
                *written
            }
            _ => 0,
        }
    }

    /// A fixed, low-cardinality label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            OutputError::ReadFile { .. } | OutputError::BadCredentials { .. } => "credentials",
            OutputError::TlsConfig(_) | OutputError::Unsupported(_) => "config",
            OutputError::Connect { .. } => "connect",
            OutputError::ServerNotTrusted { .. } | OutputError::ServerNameMismatch { .. } => {
                "server_not_trusted"
            }
            OutputError::ClientCertRejected { .. } => "client_cert_rejected",
            OutputError::Handshake { .. } => "handshake",
            OutputError::Write { .. } => "write",
            OutputError::Timeout { .. } => "timeout",
            OutputError::Http { .. } => "http",
            OutputError::HttpStatus { .. } => "http_status",
            OutputError::RecordTooLarge { .. } => "record_too_large",
            OutputError::NeedsRecords(_) => "usage",
            OutputError::File { .. } => "file",
            OutputError::Closed => "closed",
            OutputError::RetriesExhausted { last, .. } => last.error_type(),
        }
    }
}
