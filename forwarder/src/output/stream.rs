//! One long-lived syslog connection to Devo (`devo_tls`) or to a relay (`tcp`), with the
//! lifecycle Devo's balancers expect (`shared/docs/devo.md` §1.6):
//!
//! * connect lazily, on the first write;
//! * before each write, replace the connection when the peer has closed it (a non-blocking
//!   read sees EOF, a TLS alert or an error), it has been idle longer than `max_idle` (25 s
//!   by default, below the balancers' 30 s), or it is older than `max_age` (1 h);
//! * write in chunks, flush, and report which physical connection carried the batch (a
//!   [`Carrier`]);
//! * on failure, reconnect with jittered exponential backoff and keep trying (by default
//!   until success: the caller does not commit meanwhile). The retry writes the batch again
//!   **from its start** on the new connection: whatever of it the failed connection took
//!   may or may not have been read, so it must be sent again, and sending it again inside
//!   the same write keeps the batch whole and in order on one live connection (the part
//!   never handed to the failed connection is sent once, not twice);
//! * close gracefully: half-close (TLS: close_notify, then TCP FIN), wait up to
//!   `close_timeout` for the server to close its side, then drop. Connections replaced
//!   while running are closed this way in a background task.
//!
//! # Lost connections
//! A connection is **lost** when it ends without that graceful close: a write on it failed
//! or timed out, the server closed or reset it on its own (seen before a write, or by
//! [`StreamOutput::watch`] while idle), or its graceful close failed. A planned replacement
//! (idle, age) whose graceful close completes is not a loss: the server closing its side
//! after our half-close means it read everything. Each connection's [`Carrier`] tells
//! where it stands ([`LinkState`]: open, closing, closed, lost), so a caller re-sends only
//! what a lost connection carried, and may trust at once what a closed one carried.
//! Connect failures never mark anything lost: no connection existed.
//!
//! For TLS 1.3 a server checks our client certificate only after the handshake completed on
//! our side; a rejection then arrives as an alert on the first read. So after connecting we
//! wait (bounded by `handshake_confirm`) for the server's first post-handshake message (a
//! session ticket) or an alert, and never report a batch as written on a connection the
//! server is about to refuse.
//!
//! Residual risk, by the nature of the protocol: Devo never acknowledges. `Ok` means the
//! bytes were written and flushed into the kernel; if the connection dies afterwards, what
//! was still in the send buffer or in flight is lost without notice to Devo, and only a
//! later read, write or close tells us. The idle/age limits, the EOF check before each
//! write, the watch while idle and the graceful close keep that window small.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
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

/// The standing of one physical connection, shared by every [`Carrier`] of it.
#[derive(Debug)]
struct Link {
    connection: usize,
    serial: u64,
    state: AtomicU8,
}

/// Where a physical connection stands (see [`Carrier::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// In use, or idle; no loss seen.
    Open,
    /// Half-closed by us; waiting for the server to close its side.
    Closing,
    /// The server closed its side after our half-close: it read everything we sent.
    Closed,
    /// Ended without a graceful close: what it carried lately may not have been read.
    Lost,
}

impl LinkState {
    const ALL: [LinkState; 4] = [
        LinkState::Open,
        LinkState::Closing,
        LinkState::Closed,
        LinkState::Lost,
    ];

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(LinkState::Lost)
    }
}

/// Which physical connection carried a batch, and whether that connection was lost since.
///
/// Syslog has no acknowledgement, so nobody knows whether Devo read the bytes a write
/// handed to the kernel. What can be known is whether the connection that carried them
/// ended without a graceful close (see the module docs: *lost*). A caller that commits a
/// batch only when its carrier is still not lost a while after the write (the forwarder's
/// `commit_delay`) re-sends what such a loss may have taken, and nothing that another,
/// healthy connection carried.
#[derive(Debug, Clone)]
pub struct Carrier(Arc<Link>);

impl Carrier {
    /// A carrier, not lost, for connection number `serial` of pool slot `connection`.
    pub fn new(connection: usize, serial: u64) -> Self {
        Carrier(Arc::new(Link {
            connection,
            serial,
            state: AtomicU8::new(LinkState::Open as u8),
        }))
    }

    /// The pool slot of the connection (0 for a lone output).
    pub fn connection(&self) -> usize {
        self.0.connection
    }

    /// Which connection of its slot this is (1 for the first one opened).
    pub fn serial(&self) -> u64 {
        self.0.serial
    }

    /// Where the connection stands now.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.0.state.load(Ordering::Acquire))
    }

    /// True once the connection ended without a graceful close: what it carried may not
    /// have been read.
    pub fn is_lost(&self) -> bool {
        self.state() == LinkState::Lost
    }

    fn transition(&self, from: LinkState, to: LinkState) -> bool {
        self.0
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the connection lost unless it already ended; true when it was open or closing.
    pub(crate) fn mark_lost(&self) -> bool {
        self.transition(LinkState::Open, LinkState::Lost)
            || self.transition(LinkState::Closing, LinkState::Lost)
    }

    /// Marks the start of a graceful close (open -> closing).
    pub(crate) fn mark_closing(&self) {
        self.transition(LinkState::Open, LinkState::Closing);
    }

    /// Marks a completed graceful close (closing -> closed).
    pub(crate) fn mark_closed(&self) {
        self.transition(LinkState::Closing, LinkState::Closed);
    }
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
    link: Carrier,
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

/// Why a connection must be replaced before the next write.
enum Stale {
    /// Planned (idle, age): closed gracefully, lost only if that close fails.
    Rotate(&'static str),
    /// The server closed or reset it: lost. The error may explain why (a TLS alert).
    Lost(String, Option<std::io::Error>),
}

/// Whether `conn` must be replaced. The peer is looked at first, so that a connection the
/// server already dropped is never mistaken for a planned rotation.
fn stale_reason(conn: &mut Conn, settings: &StreamSettings) -> Option<Stale> {
    match conn.peer_state() {
        PeerState::Open => {}
        PeerState::Closed(why) => return Some(Stale::Lost(why, None)),
        PeerState::Failed(e) => return Some(Stale::Lost("peer_error".into(), Some(e))),
    }
    let now = Instant::now();
    if now.duration_since(conn.last_write) > settings.max_idle {
        return Some(Stale::Rotate("idle"));
    }
    if now.duration_since(conn.opened) > settings.max_age {
        return Some(Stale::Rotate("max_age"));
    }
    None
}

/// A `devo_tls` or `tcp` output over one connection.
pub struct StreamOutput {
    settings: StreamSettings,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    conn: Option<Conn>,
    /// Whether any connection has been opened before (to count reconnects).
    connected_before: bool,
    /// Pool slot of this output, named in every [`Carrier`].
    index: usize,
    /// Connections opened so far (the next one's serial is this plus one).
    opened: u64,
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
            index: 0,
            opened: 0,
            stats,
        })
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// Sets the pool slot this output stands for (named in its [`Carrier`]s).
    pub(crate) fn set_index(&mut self, index: usize) {
        self.index = index;
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
                self.opened += 1;
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
        let io = result?;
        let now = Instant::now();
        Ok(Conn {
            io,
            opened: now,
            last_write: now,
            link: Carrier::new(self.index, self.opened),
        })
    }

    async fn open_inner(&self) -> Result<Io, OutputError> {
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
        Ok(io)
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

    /// Returns a usable connection, replacing a stale one (closed by the peer, idle, old).
    async fn ready_conn(&mut self) -> Result<Conn, OutputError> {
        if let Some(mut conn) = self.conn.take() {
            match stale_reason(&mut conn, &self.settings) {
                None => return Ok(conn),
                Some(Stale::Rotate(reason)) => {
                    tracing::debug!(addr = %self.settings.addr, reason, "Replacing Devo connection.");
                    self.close_in_background(conn);
                }
                Some(Stale::Lost(reason, err)) => {
                    self.lose(conn, &reason);
                    // An alert that explains the close (certificate refused) is an error.
                    if let (Some(e), Some(t)) = (&err, &self.settings.tls) {
                        let classified = t.classify(e);
                        if classified.is_permanent() {
                            return Err(classified);
                        }
                    }
                }
            }
        }
        self.open().await
    }

    /// Marks `conn` lost (counted and logged once) and drops it.
    fn lose(&self, conn: Conn, reason: &str) {
        if conn.link.mark_lost() {
            self.stats.record_connection_lost();
            tracing::info!(
                kind = self.label,
                addr = %self.settings.addr,
                connection = conn.link.connection(),
                reason,
                "Devo connection lost; what it carried lately may not have been read."
            );
        }
    }

    /// Closes `conn` gracefully in a background task; marks it lost if that fails.
    fn close_in_background(&self, conn: Conn) {
        let limit = self.settings.close_timeout;
        let stats = Arc::clone(&self.stats);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                conn.link.mark_closing();
                handle.spawn(async move {
                    if close_gracefully(conn.io, limit).await {
                        conn.link.mark_closed();
                    } else if conn.link.mark_lost() {
                        stats.record_connection_lost();
                        tracing::info!(
                            connection = conn.link.connection(),
                            "A replaced Devo connection did not close gracefully; what it carried lately may not have been read."
                        );
                    }
                });
            }
            Err(_) => self.lose(conn, "no runtime to close it gracefully"),
        }
    }

    /// Writes `bytes` once on a ready connection and returns its carrier; on failure the
    /// connection is marked lost and dropped, and the error tells how many bytes reached
    /// the socket.
    async fn write_once(&mut self, bytes: &[u8]) -> Result<Carrier, OutputError> {
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
            let source = match timeout(self.settings.write_timeout, step).await {
                Ok(Ok(())) => {
                    written = end;
                    continue;
                }
                Ok(Err(source)) => source,
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no progress for {secs} s"),
                ),
            };
            self.lose(conn, "write failed");
            return Err(OutputError::Write {
                addr: self.settings.addr.clone(),
                written,
                total,
                source,
            });
        }
        conn.last_write = Instant::now();
        let carrier = conn.link.clone();
        self.conn = Some(conn);
        Ok(carrier)
    }

    /// Writes the whole batch and flushes it to the socket, reconnecting and retrying with
    /// backoff as configured. Returns `Ok` only once every byte was handed to the kernel,
    /// with the [`Carrier`] that took the batch whole (`None` for an empty batch).
    ///
    /// A retry writes the batch again from its start (see the module docs): the connection
    /// that failed may have lost any part of what it took, and the carrier returned is then
    /// the new connection, which holds the whole batch.
    ///
    /// Cancel-safe in the sense that dropping the future drops the connection in use (the
    /// next call reconnects); the dropped batch may have been partly sent.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<Option<Carrier>, OutputError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        loop {
            match self.write_once(bytes).await {
                Ok(carrier) => {
                    self.backoff.reset();
                    self.stats.record_batch(bytes.len());
                    return Ok(Some(carrier));
                }
                Err(e) => {
                    self.stats.record_write_error(&e);
                    if e.is_permanent() {
                        tracing::error!(kind = self.label, error = %e, "Devo output failed permanently.");
                        return Err(e);
                    }
                    match self.backoff.next_delay() {
                        Some(delay) => {
                            tracing::warn!(kind = self.label, error = %e, handed_over = e.written(), retry_in_ms = delay.as_millis() as u64, "Devo write failed; will reconnect and write the batch again from its start.");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            return Err(OutputError::RetriesExhausted {
                                attempts: self.backoff.attempts(),
                                written: e.written(),
                                last: Box::new(e),
                            });
                        }
                    }
                }
            }
        }
    }

    /// [`StreamOutput::send`] without the carrier: `Ok` once every byte was handed to the
    /// kernel.
    pub async fn write_batch(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.send(bytes).await.map(|_| ())
    }

    /// Watches the open connection while no batch is being written: when the server closes
    /// or resets it, marks it lost and drops it; when it has been idle for `max_idle`,
    /// closes it gracefully (in the background) before Devo's balancer would drop it. The
    /// next write reconnects either way. Pending for ever while no connection is open.
    ///
    /// Cancel-safe: meant to be raced against the next batch, so that a connection Devo
    /// dropped is known lost within moments rather than at the next write, and batches it
    /// carried are not committed meanwhile.
    pub async fn watch(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return std::future::pending().await;
        };
        let idle_deadline = conn.last_write + self.settings.max_idle;
        let mut buf = [0u8; 512];
        let reason = loop {
            tokio::select! {
                read = conn.io.read(&mut buf) => match read {
                    Ok(0) => break "the server closed the connection",
                    // Devo sends no data; TLS messages (tickets) are handled by rustls.
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(addr = %self.settings.addr, error = %e, "Devo connection read failed.");
                        break "the connection failed";
                    }
                },
                () = tokio::time::sleep_until(idle_deadline) => {
                    if let Some(conn) = self.conn.take() {
                        tracing::debug!(addr = %self.settings.addr, "Closing idle Devo connection.");
                        self.close_in_background(conn);
                    }
                    return;
                }
            }
        };
        if let Some(conn) = self.conn.take() {
            self.lose(conn, reason);
        }
    }

    /// Everything is flushed at the end of each `write_batch`; this only checks that the
    /// connection (if any) is still open and drops it (lost) if not, so the next write
    /// reconnects.
    pub async fn flush(&mut self) -> Result<(), OutputError> {
        if let Some(conn) = self.conn.as_mut()
            && let Some(e) = conn.io.flush().await.err()
        {
            if let Some(conn) = self.conn.take() {
                self.lose(conn, "flush failed");
            }
            return Err(OutputError::Write {
                addr: self.settings.addr.clone(),
                written: 0,
                total: 0,
                source: e,
            });
        }
        Ok(())
    }

    /// Half-closes, waits (bounded by `close_timeout`) for the server to close, then drops;
    /// the connection counts as lost when the server did not close its side in time.
    pub async fn shutdown(&mut self) -> Result<(), OutputError> {
        if let Some(conn) = self.conn.take() {
            conn.link.mark_closing();
            if close_gracefully(conn.io, self.settings.close_timeout).await {
                conn.link.mark_closed();
            } else if conn.link.mark_lost() {
                self.stats.record_connection_lost();
                tracing::warn!(
                    kind = self.label,
                    addr = %self.settings.addr,
                    "The Devo connection did not close gracefully; what it carried lately may not have been read."
                );
            }
        }
        Ok(())
    }

    /// Drops the current connection without a graceful close (tests, fatal errors); it
    /// counts as lost.
    pub fn abort_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.lose(conn, "aborted");
        }
    }
}

/// Half-close, then read and discard until the server closes or `limit` passes. True when
/// the server closed its side (it read everything we sent).
async fn close_gracefully(mut io: Io, limit: Duration) -> bool {
    let wait = async {
        if io.shutdown().await.is_err() {
            return false;
        }
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(_) => continue,
            }
        }
    };
    match timeout(limit, wait).await {
        Ok(closed) => closed,
        Err(_) => {
            tracing::debug!("Devo server did not close its side in time; dropping the connection.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a carrier starts not lost, is marked lost exactly once, and its clones share it.
    #[test]
    fn carrier_loss_is_shared_and_counted_once() {
        let c = Carrier::new(1, 3);
        let seen_by_caller = c.clone();
        assert!(!seen_by_caller.is_lost());
        assert!(c.mark_lost(), "first mark");
        assert!(!c.mark_lost(), "second mark is not a new loss");
        assert!(seen_by_caller.is_lost());
        assert_eq!(
            (seen_by_caller.connection(), seen_by_caller.serial()),
            (1, 3)
        );
    }

    // Proves a graceful close goes open -> closing -> closed and can no longer become lost,
    // while a close that fails midway ends lost.
    #[test]
    fn carrier_graceful_close_states() {
        let c = Carrier::new(0, 1);
        c.mark_closing();
        assert_eq!(c.state(), LinkState::Closing);
        c.mark_closed();
        assert_eq!(c.state(), LinkState::Closed);
        assert!(!c.mark_lost(), "a completed graceful close stays closed");
        let d = Carrier::new(0, 2);
        d.mark_closing();
        assert!(d.mark_lost());
        assert_eq!(d.state(), LinkState::Lost);
    }
}
