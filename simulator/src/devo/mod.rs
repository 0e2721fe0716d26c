//! A fake Devo ingestion endpoint for tests, the demo and benchmarks.
//!
//! Listeners (all on `bind`, port 0 = ephemeral):
//! * syslog over TLS that REQUIRES a client certificate signed by the run's test CA
//!   (as Devo's event load balancers do), built from a [`TestPki`];
//! * optional syslog over plain TCP (devo-sdk's `SenderConfigTCP`, relays);
//! * optional HTTP ingestion API (`/event/...`, `/stream/...`, see [`http`]).
//!
//! Every syslog connection is parsed incrementally ([`parse::StreamParser`]): LF lines,
//! octet-counted frames and gzip members in the stream. The fake keeps the raw bytes per
//! connection (for byte-exact golden comparisons), the parsed events, per-tag counts,
//! handshake failures with their TLS error text, and can persist events to
//! `<out_dir>/<tag>.log`. Tests can stop and resume the listeners on the same ports, drop
//! all open connections, and wait for lines or any other condition with a timeout.
//!
//! When a client half-closes (shuts down its write side), the fake reads to EOF, parses
//! the tail and then closes its own side, which is what devo-sdk waits for. Like a real
//! TLS 1.3 server it sends session tickets after the handshake: a client that closes its
//! socket without reading them makes the kernel send a reset, which can discard data the
//! fake has not read yet (seen as `DevoStats::connection_errors`). Senders must therefore
//! drain the socket until the server's EOF, as devo-sdk does.

pub mod http;
pub mod parse;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::certs::{CertError, TestPki};

pub use parse::{Framing, LineRef, ParseError, StreamParser, UNKNOWN_TAG};
pub use store::{ConnectionInfo, DevoStats, ReceivedLine, Transport, tag_file_name};

/// Devo's documented HTTP request limit (32 MB).
pub const DEFAULT_MAX_HTTP_BODY: usize = 32 * 1024 * 1024;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing our side after the peer's EOF may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Socket read size.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the fake Devo.
#[derive(Debug, thiserror::Error)]
pub enum DevoError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address we tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS material could not be generated or loaded.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The persistence directory could not be prepared.
    #[error("cannot persist received lines under {path}: {source}")]
    Persist {
        /// The `out_dir`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A wait did not see its condition in time.
    #[error("timed out after {timeout:?} waiting for {what}; last stats: {stats}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        timeout: Duration,
        /// Summary of the counters at the time.
        stats: String,
    },
}

/// Configuration of a [`FakeDevo`].
#[derive(Clone)]
pub struct FakeDevoConfig {
    /// Address to bind every listener on.
    pub bind: IpAddr,
    /// TLS syslog port (0 = ephemeral).
    pub tls_port: u16,
    /// Plain TCP syslog port; `None` disables the listener.
    pub tcp_port: Option<u16>,
    /// HTTP ingestion port; `None` disables the listener.
    pub http_port: Option<u16>,
    /// The token the HTTP API expects in its `token!<token>` path segment.
    pub http_token: String,
    /// TLS material; `None` generates a fresh [`TestPki`].
    pub pki: Option<TestPki>,
    /// Whether clients must present a certificate signed by the CA (default `true`).
    pub require_client_cert: bool,
    /// Append every event to `<out_dir>/<tag>.log` (rebuilt syslog lines).
    pub out_dir: Option<PathBuf>,
    /// Keep parsed events in memory (turn off for long benchmarks; counts are always kept).
    pub keep_lines: bool,
    /// Keep raw bytes per connection in memory (turn off for long benchmarks).
    pub keep_raw: bool,
    /// HTTP body limit (default 32 MB).
    pub max_http_body: usize,
    /// Cap on one syslog frame and on one inflated gzip member / HTTP body (default 64 MB).
    pub max_frame: usize,
}

impl Default for FakeDevoConfig {
    fn default() -> Self {
        FakeDevoConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls_port: 0,
            tcp_port: Some(0),
            http_port: Some(0),
            http_token: "fakedevohttptoken000000000000001".to_owned(),
            pki: None,
            require_client_cert: true,
            out_dir: None,
            keep_lines: true,
            keep_raw: true,
            max_http_body: DEFAULT_MAX_HTTP_BODY,
            max_frame: parse::DEFAULT_MAX_FRAME,
        }
    }
}

impl fmt::Debug for FakeDevoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDevoConfig")
            .field("bind", &self.bind)
            .field("tls_port", &self.tls_port)
            .field("tcp_port", &self.tcp_port)
            .field("http_port", &self.http_port)
            .field("http_token", &"<redacted>")
            .field("pki", &self.pki)
            .field("require_client_cert", &self.require_client_cert)
            .field("out_dir", &self.out_dir)
            .field("keep_lines", &self.keep_lines)
            .field("keep_raw", &self.keep_raw)
            .field("max_http_body", &self.max_http_body)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// State shared by listeners, connection tasks and the HTTP handlers.
pub(crate) struct Shared {
    pub(crate) store: store::Store,
    pub(crate) http_token: String,
    pub(crate) max_http_body: usize,
    pub(crate) max_frame: usize,
    acceptor: TlsAcceptor,
    next_conn: AtomicU64,
    /// Cancelled to drop every open syslog connection; replaced by a fresh token after.
    conn_token: Mutex<CancellationToken>,
    tasks: TaskTracker,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn conn_token(&self) -> CancellationToken {
        self.conn_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn drop_connections(&self) {
        let old = {
            let mut guard = self.conn_token.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *guard, CancellationToken::new())
        };
        old.cancel();
    }
}

/// One running listener: cancelled to stop; `closed` resolves once its socket is dropped.
struct RunningListener {
    cancel: CancellationToken,
    closed: oneshot::Receiver<()>,
}

/// A running fake Devo. Dropping it stops every task; prefer [`FakeDevo::shutdown`].
pub struct FakeDevo {
    shared: Arc<Shared>,
    pki: TestPki,
    tls_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    listeners: tokio::sync::Mutex<Vec<RunningListener>>,
    root: CancellationToken,
}

impl fmt::Debug for FakeDevo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDevo")
            .field("tls_addr", &self.tls_addr)
            .field("tcp_addr", &self.tcp_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, DevoError> {
    let err = |source| DevoError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

fn local_addr(l: &TcpListener, fallback: SocketAddr) -> Result<SocketAddr, DevoError> {
    l.local_addr().map_err(|source| DevoError::Bind {
        addr: fallback,
        source,
    })
}

impl FakeDevo {
    /// Binds every configured listener and starts serving.
    pub async fn start(cfg: FakeDevoConfig) -> Result<FakeDevo, DevoError> {
        let pki = match cfg.pki.clone() {
            Some(p) => p,
            None => TestPki::generate("fake-devo")?,
        };
        let server_config = pki.server_config(cfg.require_client_cert)?;
        let store = store::Store::new(cfg.keep_lines, cfg.keep_raw, cfg.out_dir.as_deref())
            .map_err(|source| DevoError::Persist {
                path: cfg.out_dir.clone().unwrap_or_default(),
                source,
            })?;
        let shared = Arc::new(Shared {
            store,
            http_token: cfg.http_token.clone(),
            max_http_body: cfg.max_http_body,
            max_frame: cfg.max_frame,
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            next_conn: AtomicU64::new(1),
            conn_token: Mutex::new(CancellationToken::new()),
            tasks: TaskTracker::new(),
        });

        // Bind everything first so a failure leaves nothing running.
        let want_tls = SocketAddr::new(cfg.bind, cfg.tls_port);
        let tls = bind(want_tls)?;
        let tls_addr = local_addr(&tls, want_tls)?;
        let tcp = match cfg.tcp_port {
            Some(p) => {
                let want = SocketAddr::new(cfg.bind, p);
                let l = bind(want)?;
                let a = local_addr(&l, want)?;
                Some((l, a))
            }
            None => None,
        };
        let http = match cfg.http_port {
            Some(p) => {
                let want = SocketAddr::new(cfg.bind, p);
                let l = bind(want)?;
                let a = local_addr(&l, want)?;
                Some((l, a))
            }
            None => None,
        };

        let devo = FakeDevo {
            shared,
            pki,
            tls_addr,
            tcp_addr: tcp.as_ref().map(|(_, a)| *a),
            http_addr: http.as_ref().map(|(_, a)| *a),
            listeners: tokio::sync::Mutex::new(Vec::new()),
            root: CancellationToken::new(),
        };
        let mut running = vec![devo.spawn_syslog(tls, Transport::Tls)];
        if let Some((l, _)) = tcp {
            running.push(devo.spawn_syslog(l, Transport::Tcp));
        }
        if let Some((l, _)) = http {
            running.push(devo.spawn_http(l));
        }
        *devo.listeners.lock().await = running;
        tracing::info!(tls = %devo.tls_addr, tcp = ?devo.tcp_addr, http = ?devo.http_addr, "fake Devo listening");
        Ok(devo)
    }

    fn spawn_syslog(&self, listener: TcpListener, transport: Transport) -> RunningListener {
        let cancel = self.root.child_token();
        let (closed_tx, closed) = oneshot::channel::<()>();
        let shared = self.shared.clone();
        let stop = cancel.clone();
        self.shared.tasks.spawn(async move {
            // Dropped together with the listener when this task ends.
            let _closed_tx = closed_tx;
            accept_loop(listener, transport, shared, stop).await;
        });
        RunningListener { cancel, closed }
    }

    fn spawn_http(&self, listener: TcpListener) -> RunningListener {
        let cancel = self.root.child_token();
        let (closed_tx, closed) = oneshot::channel::<()>();
        let app = http::router(self.shared.clone());
        let listener = SignalListener {
            inner: listener,
            _closed: closed_tx,
        };
        let stop = cancel.clone();
        self.shared.tasks.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake Devo HTTP server stopped with an error");
            }
        });
        RunningListener { cancel, closed }
    }

    /// Address of the mutual-TLS syslog listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// Address of the plain TCP syslog listener, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Address of the HTTP ingestion listener, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// `http://<addr>` of the HTTP ingestion listener, if enabled.
    pub fn http_base_url(&self) -> Option<String> {
        self.http_addr.map(|a| format!("http://{a}"))
    }

    /// The TLS material (CA to trust, client certificate to present).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The token the HTTP API expects.
    pub fn http_token(&self) -> &str {
        &self.shared.http_token
    }

    /// Directory where events are persisted as `<tag>.log`, if configured.
    pub fn out_dir(&self) -> Option<&Path> {
        self.shared.store.out_dir()
    }

    /// Every event received so far, in arrival order (per connection order is exact).
    pub fn received(&self) -> Vec<ReceivedLine> {
        self.shared.store.received()
    }

    /// Removes and returns the events received so far (counters are kept).
    pub fn take_received(&self) -> Vec<ReceivedLine> {
        self.shared.store.take_received()
    }

    /// Events routed to `tag`.
    pub fn lines_for_tag(&self, tag: &str) -> Vec<ReceivedLine> {
        self.shared.store.lines_for_tag(tag)
    }

    /// Number of events per tag (kept even when `keep_lines` is off).
    pub fn count_by_tag(&self) -> BTreeMap<String, u64> {
        self.shared.store.count_by_tag()
    }

    /// Number of events routed to `tag`.
    pub fn count_for_tag(&self, tag: &str) -> u64 {
        self.shared.store.count_for_tag(tag)
    }

    /// Raw application bytes of every connection, concatenated in connection-id order.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.shared.store.raw_bytes()
    }

    /// Raw application bytes of one connection.
    pub fn raw_bytes_for(&self, conn_id: u64) -> Option<Vec<u8>> {
        self.shared.store.raw_bytes_for(conn_id)
    }

    /// Every connection (and HTTP request) seen, by id.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.store.connections()
    }

    /// Counters and error texts.
    pub fn stats(&self) -> DevoStats {
        self.shared.store.stats()
    }

    /// Forgets everything received (lines, raw bytes, counts, closed connections, errors).
    pub fn clear(&self) {
        self.shared.store.clear();
    }

    /// Waits until everything received so far is written to the `out_dir` files.
    pub async fn flush_persisted(&self) {
        let shared = self.shared.clone();
        // The flush blocks on the writer thread; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || shared.store.flush_persisted()).await;
    }

    /// Drops every open syslog connection (listeners keep accepting).
    pub fn close_all_connections(&self) {
        self.shared.drop_connections();
    }

    /// Closes the listening sockets (new connects are refused) and drops every open
    /// connection; in-flight HTTP requests are finished first. Returns once the sockets
    /// are closed.
    pub async fn stop_listening(&self) {
        let running = std::mem::take(&mut *self.listeners.lock().await);
        for l in &running {
            l.cancel.cancel();
        }
        self.shared.drop_connections();
        for l in running {
            // Err means the sender was dropped, i.e. the socket is closed.
            let _ = l.closed.await;
        }
    }

    /// Whether the listeners are currently open.
    pub async fn is_listening(&self) -> bool {
        !self.listeners.lock().await.is_empty()
    }

    /// Re-opens the listeners on the SAME addresses after [`stop_listening`](Self::stop_listening).
    /// Does nothing if they are open.
    pub async fn resume_listening(&self) -> Result<(), DevoError> {
        let mut guard = self.listeners.lock().await;
        if !guard.is_empty() {
            return Ok(());
        }
        let tls = bind(self.tls_addr)?;
        let tcp = self.tcp_addr.map(bind).transpose()?;
        let http = self.http_addr.map(bind).transpose()?;
        guard.push(self.spawn_syslog(tls, Transport::Tls));
        if let Some(l) = tcp {
            guard.push(self.spawn_syslog(l, Transport::Tcp));
        }
        if let Some(l) = http {
            guard.push(self.spawn_http(l));
        }
        Ok(())
    }

    /// Waits until at least `n` events have been received in total.
    pub async fn wait_for_lines(&self, n: u64, timeout: Duration) -> Result<(), DevoError> {
        self.wait_until(&format!("{n} lines"), timeout, |s| s.lines_received >= n)
            .await
            .map(|_| ())
    }

    /// Waits until at least `n` events have been routed to `tag`.
    pub async fn wait_for_tag(
        &self,
        tag: &str,
        n: u64,
        timeout: Duration,
    ) -> Result<(), DevoError> {
        let what = format!("{n} lines for tag {tag}");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.store.subscribe();
        loop {
            rx.borrow_and_update();
            if self.count_for_tag(tag) >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(self.timeout_error(what, timeout));
            }
        }
    }

    /// Waits until `pred` holds for the current stats; returns those stats.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&DevoStats) -> bool,
    ) -> Result<DevoStats, DevoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.store.subscribe();
        loop {
            rx.borrow_and_update();
            let stats = self.stats();
            if pred(&stats) {
                return Ok(stats);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(self.timeout_error(what.to_owned(), timeout));
            }
        }
    }

    fn timeout_error(&self, what: String, timeout: Duration) -> DevoError {
        let s = self.stats();
        DevoError::Timeout {
            what,
            timeout,
            stats: format!(
                "lines={} bytes={} accepted={} open={} handshake_failures={} http_requests={} parse_errors={:?} connection_errors={:?}",
                s.lines_received,
                s.bytes_received,
                s.connections_accepted,
                s.open_connections,
                s.handshake_failures,
                s.http_requests,
                s.parse_errors,
                s.connection_errors
            ),
        }
    }

    /// Stops listeners and connections, waits (bounded) for the tasks, flushes persisted files.
    pub async fn shutdown(self) {
        self.stop_listening().await;
        self.root.cancel();
        self.shared.tasks.close();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.shared.tasks.wait()).await;
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.store.close_persister()).await;
    }
}

impl Drop for FakeDevo {
    fn drop(&mut self) {
        self.root.cancel();
        self.shared.drop_connections();
    }
}

/// An axum listener that signals (by dropping `_closed`) when axum drops it.
struct SignalListener {
    inner: TcpListener,
    _closed: oneshot::Sender<()>,
}

impl axum::serve::Listener for SignalListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok(pair) => return pair,
                Err(e) => {
                    // Typically EMFILE under load: back off instead of spinning.
                    tracing::debug!(error = %e, "fake Devo HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "fake Devo accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn_cancel = shared.conn_token();
        let id = shared.next_id();
        shared.store.opened(id, transport, Some(peer));
        let task_shared = shared.clone();
        shared.tasks.spawn(async move {
            match transport {
                Transport::Tls => serve_tls(task_shared, id, stream, conn_cancel).await,
                _ => read_loop(task_shared, id, stream, conn_cancel).await,
            }
        });
    }
}

async fn serve_tls(shared: Arc<Shared>, id: u64, stream: TcpStream, cancel: CancellationToken) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(stream));
    let result = tokio::select! {
        _ = cancel.cancelled() => {
            shared.store.closed(id, Some("dropped by the fake Devo during the handshake".into()));
            return;
        }
        r = handshake => r,
    };
    match result {
        Ok(Ok(tls)) => {
            let subject = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|der| {
                    x509_parser::parse_x509_certificate(der)
                        .ok()
                        .map(|(_, c)| c.subject().to_string())
                });
            shared.store.handshake_ok(id, subject);
            read_loop(shared, id, tls, cancel).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(conn = id, error = %e, "fake Devo TLS handshake failed");
            shared.store.handshake_failed(id, e.to_string());
        }
        Err(_) => shared
            .store
            .handshake_failed(id, "handshake timed out".into()),
    }
}

/// Reads a syslog stream to EOF, parsing and committing each read, then closes our side.
async fn read_loop<S>(shared: Arc<Shared>, id: u64, mut stream: S, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let store = &shared.store;
    let mut parser = StreamParser::new(shared.max_frame);
    let mut batch = store.batch(id);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                store.closed(id, Some("dropped by the fake Devo".into()));
                return;
            }
            r = stream.read(&mut buf) => r,
        };
        let (n, eof_error) = match read {
            Ok(n) => (n, None),
            // A TLS peer that closes without close_notify: treat as EOF, but note it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (0, Some(e.to_string())),
            Err(e) => {
                store.read_failed(id, e.to_string());
                return;
            }
        };
        let data = &buf[..n];
        let parsed = if n == 0 {
            parser.finish(b"", &mut |l| batch.push(l))
        } else {
            parser.feed(data, &mut |l| batch.push(l))
        };
        store.commit(data, &mut batch);
        if let Err(e) = parsed {
            store.parse_failed(id, e.to_string());
            store.closed(id, Some(format!("unparsable stream: {e}")));
            return;
        }
        if n == 0 {
            // Peer finished sending (half-close): close our side too.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
            store.closed(id, eof_error);
            return;
        }
    }
}
