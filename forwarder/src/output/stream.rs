//! One long-lived syslog connection to Devo (`devo_tls`) or to a relay (`tcp`), with the
//! lifecycle Devo's balancers expect (`shared/docs/devo.md` §1.6):
//!
//! * connect lazily, on the first write;
//! * before each write, replace the connection when it has been idle longer than
//!   `max_idle` (25 s by default, below the balancers' 30 s), is older than `max_age` (1 h),
//!   or the peer has closed it (a non-blocking read sees EOF, a TLS alert or an error);
//! * write in chunks and count the bytes handed to the socket, so that after a failure the
//!   batch resumes on a new connection from the last line boundary already sent instead of
//!   from the start (devo-sdk re-sends the whole buffer, duplicating the prefix);
//! * on failure, reconnect with jittered exponential backoff and keep trying (by default
//!   until success: the caller does not commit meanwhile);
//! * close gracefully: half-close (TLS: close_notify, then TCP FIN), wait up to
//!   `close_timeout` for the server to close its side, then drop. Connections replaced
//!   while running are closed this way in a background task.
//!
//! For TLS 1.3 a server checks our client certificate only after the handshake completed on
//! our side; a rejection then arrives as an alert on the first read. So after connecting we
//! wait (bounded by `handshake_confirm`) for the server's first post-handshake message (a
//! session ticket) or an alert, and never report a batch as written on a connection the
//! server is about to refuse.
//!
//! Residual risk, by the nature of the protocol: Devo never acknowledges. `Ok` means the
//! bytes were written and flushed into the kernel; if the connection dies afterwards, what
//! was still in the send buffer or in flight is lost without notice. The idle/age limits,
//! the EOF check before each write and the graceful close keep that window small.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::OutputError;
use super::retry::{Backoff, RetryPolicy};
use super::stats::OutputStats;
use super::tls::TlsSettings;

/// Where a retried batch restarts after a partial write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// After the last LF already sent: the partial line is re-sent whole. Right for plain
    /// one-line-per-event framing (the default).
    #[default]
    LineBoundary,
    /// From the start of the batch (for gzip members or octet-counted multiline framing,
    /// where an LF is not an event boundary). May duplicate events.
    BatchStart,
}

/// Settings of one stream connection.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `host:port` to connect to.
    pub addr: String,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<TlsSettings>,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for writing one chunk (a stalled peer fails the write after this).
    pub write_timeout: Duration,
    /// Reconnect before a write when nothing was written for longer than this.
    pub max_idle: Duration,
    /// Reconnect before a write when the connection is older than this.
    pub max_age: Duration,
    /// How long a graceful close waits for the server to close its side.
    pub close_timeout: Duration,
    /// After a TLS 1.3 handshake, how long to wait for the server to confirm (ticket) or
    /// refuse (alert) the client certificate. Zero disables the wait.
    pub handshake_confirm: Duration,
    /// Where a batch resumes after a partial write.
    pub resume: Resume,
    /// Backoff and attempts for connects and writes.
    pub retry: RetryPolicy,
    /// Bytes handed to the socket per write call (and counted as written after each).
    pub chunk_bytes: usize,
}

impl StreamSettings {
    /// Defaults from devo.md §1.6 for `addr`, plain TCP.
    pub fn new(addr: impl Into<String>) -> Self {
        StreamSettings {
            addr: addr.into(),
            tls: None,
            connect_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_idle: Duration::from_secs(25),
            max_age: Duration::from_secs(3600),
            close_timeout: Duration::from_secs(30),
            handshake_confirm: Duration::from_secs(2),
            resume: Resume::default(),
            retry: RetryPolicy::default(),
            chunk_bytes: 256 * 1024,
        }
    }

    /// The same defaults with TLS.
    pub fn with_tls(addr: impl Into<String>, tls: TlsSettings) -> Self {
        StreamSettings {
            tls: Some(tls),
            ..StreamSettings::new(addr)
        }
    }
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Io::Tcp(s) => s.write(buf).await,
            Io::Tls(s) => s.write(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Io::Tcp(s) => s.flush().await,
            Io::Tls(s) => s.flush().await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Tcp(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
        }
    }

    /// Half-close: TLS close_notify (tokio-rustls then shuts the TCP write side), or FIN.
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Io::Tcp(s) => s.shutdown().await,
            Io::Tls(s) => s.shutdown().await,
        }
    }
}

/// What a non-blocking look at the read side found.
enum PeerState {
    Open,
    Closed(String),
    /// A TLS alert or error that explains the close (e.g. client certificate refused).
    Failed(std::io::Error),
}

struct Conn {
    io: Io,
    opened: Instant,
    last_write: Instant,
}

impl Conn {
    /// Polls the read side once without waiting. Devo never sends application data, so
    /// anything readable is EOF, an alert, or post-handshake TLS messages (handled inside
    /// rustls); stray bytes are discarded.
    fn peer_state(&mut self) -> PeerState {
        let mut buf = [0u8; 512];
        loop {
            let polled = {
                let fut = self.io.read(&mut buf);
                futures::FutureExt::now_or_never(fut)
            };
            match polled {
                None => return PeerState::Open,
                Some(Ok(0)) => return PeerState::Closed("the server closed the connection".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return PeerState::Open;
                }
                Some(Err(e)) => return PeerState::Failed(e),
            }
        }
    }
}

/// Why a connection is being replaced (log field and reconnect reason).
fn stale_reason(
    conn: &mut Conn,
    settings: &StreamSettings,
) -> Option<(String, Option<std::io::Error>)> {
    let now = Instant::now();
    if now.duration_since(conn.last_write) > settings.max_idle {
        return Some(("idle".into(), None));
    }
    if now.duration_since(conn.opened) > settings.max_age {
        return Some(("max_age".into(), None));
    }
    match conn.peer_state() {
        PeerState::Open => None,
        PeerState::Closed(why) => Some((why, None)),
        PeerState::Failed(e) => Some(("peer_error".into(), Some(e))),
    }
}

/// A `devo_tls` or `tcp` output over one connection.
pub struct StreamOutput {
    settings: StreamSettings,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    conn: Option<Conn>,
    /// Whether any connection has been opened before (to count reconnects).
    connected_before: bool,
    backoff: Backoff,
    stats: Arc<OutputStats>,
    label: &'static str,
}

impl std::fmt::Debug for StreamOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOutput")
            .field("kind", &self.label)
            .field("addr", &self.settings.addr)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl StreamOutput {
    /// Builds the output; reads and checks TLS files now, connects nothing yet.
    pub fn new(settings: StreamSettings, stats: Arc<OutputStats>) -> Result<Self, OutputError> {
        let tls = match &settings.tls {
            Some(t) => Some((TlsConnector::from(t.build()?), t.server_name()?)),
            None => None,
        };
        Ok(StreamOutput {
            label: if tls.is_some() { "devo_tls" } else { "tcp" },
            backoff: Backoff::new(settings.retry.clone()),
            settings,
            tls,
            conn: None,
            connected_before: false,
            stats,
        })
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// Changes where failed batches resume (see [`Resume`]).
    pub fn set_resume(&mut self, resume: Resume) {
        self.settings.resume = resume;
    }

    /// `devo_tls` or `tcp`.
    pub fn kind(&self) -> &'static str {
        self.label
    }

    /// Opens the connection now (normally lazy) — for health checks like `doctor`.
    pub async fn connect_now(&mut self) -> Result<(), OutputError> {
        if self.conn.is_none() {
            let conn = self.open().await?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    async fn open(&mut self) -> Result<Conn, OutputError> {
        let addr = self.settings.addr.clone();
        let secs = self.settings.connect_timeout.as_secs();
        let result = timeout(self.settings.connect_timeout, self.open_inner()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(OutputError::Timeout {
                what: "connect",
                addr,
                secs,
            }),
        };
        match &result {
            Ok(_) => {
                self.stats.record_connect(self.connected_before);
                if self.connected_before {
                    tracing::info!(kind = self.label, addr = %self.settings.addr, "Reconnected to Devo.");
                } else {
                    tracing::info!(kind = self.label, addr = %self.settings.addr, "Connected to Devo.");
                }
                self.connected_before = true;
            }
            Err(e) => self.stats.record_connect_failure(e),
        }
        result
    }

    async fn open_inner(&self) -> Result<Conn, OutputError> {
        let tcp = TcpStream::connect(&self.settings.addr)
            .await
            .map_err(|source| OutputError::Connect {
                addr: self.settings.addr.clone(),
                source,
            })?;
        // Syslog lines are written in large chunks; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        let io = match (&self.tls, &self.settings.tls) {
            (Some((connector, name)), Some(tls_settings)) => {
                let mut stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| tls_settings.classify(&e))?;
                self.confirm_handshake(&mut stream, tls_settings).await?;
                Io::Tls(Box::new(stream))
            }
            _ => Io::Tcp(tcp),
        };
        let now = Instant::now();
        Ok(Conn {
            io,
            opened: now,
            last_write: now,
        })
    }

    /// TLS 1.3: wait briefly for the server's session ticket (certificate accepted) or an
    /// alert (certificate refused). A server that sends neither is accepted after the wait.
    async fn confirm_handshake(
        &self,
        stream: &mut TlsStream<TcpStream>,
        tls_settings: &TlsSettings,
    ) -> Result<(), OutputError> {
        let wait = self.settings.handshake_confirm;
        if wait.is_zero()
            || stream.get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        {
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if stream.get_ref().1.tls13_tickets_received() > 0 {
                return Ok(());
            }
            let slice =
                Duration::from_millis(10).min(deadline.saturating_duration_since(Instant::now()));
            match timeout(slice, stream.read(&mut buf)).await {
                Err(_) | Ok(Ok(1..)) => continue,
                Ok(Ok(0)) => {
                    return Err(OutputError::ClientCertRejected {
                        server: tls_settings.server_name.clone(),
                        cert: tls_settings.client_cert_label(),
                        detail: "server closed the connection right after the handshake".into(),
                    });
                }
                Ok(Err(e)) => return Err(tls_settings.classify(&e)),
            }
        }
        tracing::debug!(addr = %self.settings.addr, "TLS server sent no session ticket; assuming the client certificate was accepted.");
        Ok(())
    }

    /// Returns a usable connection, replacing a stale one (idle, old, closed by the peer).
    async fn ready_conn(&mut self) -> Result<Conn, OutputError> {
        if let Some(mut conn) = self.conn.take() {
            match stale_reason(&mut conn, &self.settings) {
                None => return Ok(conn),
                Some((reason, err)) => {
                    // An alert that explains the close (certificate refused) is an error.
                    if let (Some(e), Some(t)) = (&err, &self.settings.tls) {
                        let classified = t.classify(e);
                        if classified.is_permanent() {
                            return Err(classified);
                        }
                    }
                    tracing::debug!(addr = %self.settings.addr, reason = %reason, "Replacing Devo connection.");
                    self.close_in_background(conn);
                }
            }
        }
        self.open().await
    }

    fn close_in_background(&self, conn: Conn) {
        let limit = self.settings.close_timeout;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(close_gracefully(conn.io, limit));
        }
    }

    /// Writes `bytes` once on a ready connection; on failure the connection is dropped and
    /// the error tells how many bytes reached the socket.
    async fn write_once(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        let mut conn = self.ready_conn().await?;
        let mut written = 0usize;
        let total = bytes.len();
        let chunk = self.settings.chunk_bytes.max(1);
        let secs = self.settings.write_timeout.as_secs();
        while written < total {
            let end = (written + chunk).min(total);
            let step = async {
                let mut pos = written;
                while pos < end {
                    let n = conn.io.write(&bytes[pos..end]).await?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                    }
                    pos += n;
                }
                conn.io.flush().await
            };
            let stepped = timeout(self.settings.write_timeout, step).await;
            match stepped {
                Ok(Ok(())) => written = end,
                Ok(Err(source)) => {
                    return Err(OutputError::Write {
                        addr: self.settings.addr.clone(),
                        written,
                        total,
                        source,
                    });
                }
                Err(_) => {
                    return Err(OutputError::Write {
                        addr: self.settings.addr.clone(),
                        written,
                        total,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no progress for {secs} s"),
                        ),
                    });
                }
            }
        }
        conn.last_write = Instant::now();
        self.conn = Some(conn);
        Ok(())
    }

    /// Writes the whole batch and flushes it to the socket, reconnecting and retrying with
    /// backoff as configured. Returns `Ok` only once every byte was handed to the kernel.
    ///
    /// Cancel-safe in the sense that dropping the future drops the connection in use (the
    /// next call reconnects); the dropped batch may have been partly sent.
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut offset = 0usize;
        loop {
            match self.write_once(&bytes[offset..]).await {
                Ok(()) => {
                    self.backoff.reset();
                    self.stats.record_batch(bytes.len());
                    return Ok(());
                }
                Err(e) => {
                    let sent = e.written();
                    offset = resume_offset(bytes, offset, sent, self.settings.resume);
                    self.stats.record_write_error(&e);
                    if e.is_permanent() {
                        tracing::error!(kind = self.label, error = %e, "Devo output failed permanently.");
                        return Err(e);
                    }
                    match self.backoff.next_delay() {
                        Some(delay) => {
                            tracing::warn!(kind = self.label, error = %e, resume_at = offset, retry_in_ms = delay.as_millis() as u64, "Devo write failed; will reconnect.");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            return Err(OutputError::RetriesExhausted {
                                attempts: self.backoff.attempts(),
                                written: offset,
                                last: Box::new(e),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Everything is flushed at the end of each `write_batch`; this only checks that the
    /// connection (if any) is still open and drops it if not, so the next write reconnects.
    pub async fn flush(&mut self) -> Result<(), OutputError> {
        if let Some(conn) = self.conn.as_mut()
            && let Some(e) = conn.io.flush().await.err()
        {
            self.conn = None;
            return Err(OutputError::Write {
                addr: self.settings.addr.clone(),
                written: 0,
                total: 0,
                source: e,
            });
        }
        Ok(())
    }

    /// Half-closes, waits (bounded by `close_timeout`) for the server to close, then drops.
    pub async fn shutdown(&mut self) -> Result<(), OutputError> {
        if let Some(conn) = self.conn.take() {
            close_gracefully(conn.io, self.settings.close_timeout).await;
        }
        Ok(())
    }

    /// Drops the current connection without a graceful close (tests, fatal errors).
    pub fn abort_connection(&mut self) {
        self.conn = None;
    }
}

/// Where a batch restarts after `sent` more bytes (from `offset`) reached the socket before
/// a failure: after the last complete line for [`Resume::LineBoundary`], else at 0.
pub fn resume_offset(bytes: &[u8], offset: usize, sent: usize, resume: Resume) -> usize {
    match resume {
        Resume::LineBoundary => {
            let sent = sent.min(bytes.len().saturating_sub(offset));
            offset
                + bytes[offset..offset + sent]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1)
        }
        Resume::BatchStart => 0,
    }
}

/// Half-close, then read and discard until the server closes or `limit` passes.
async fn close_gracefully(mut io: Io, limit: Duration) {
    let wait = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    if timeout(limit, wait).await.is_err() {
        tracing::debug!("Devo server did not close its side in time; dropping the connection.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a retry resumes after the last fully sent line (the partial line is re-sent
    // whole), stays put when no line was completed, and restarts for BatchStart.
    #[test]
    fn resume_points() {
        let b = b"aaa\nbbb\nccc\n";
        assert_eq!(resume_offset(b, 0, 6, Resume::LineBoundary), 4);
        assert_eq!(resume_offset(b, 0, 8, Resume::LineBoundary), 8);
        assert_eq!(resume_offset(b, 4, 2, Resume::LineBoundary), 4);
        assert_eq!(resume_offset(b, 4, 100, Resume::LineBoundary), 12);
        assert_eq!(resume_offset(b, 0, 0, Resume::LineBoundary), 0);
        assert_eq!(resume_offset(b, 4, 6, Resume::BatchStart), 0);
    }
}
