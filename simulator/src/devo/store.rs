//! What the fake Devo has received: parsed events, raw bytes per connection, per-tag
//! counts, connection records and error counters, plus optional persistence to disk.
//!
//! Connection tasks parse a whole read into a [`Batch`] without holding any lock and
//! commit it under one short mutex section, so throughput does not depend on lock
//! traffic per line. A `watch` channel ticks on every change so tests can wait.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::parse::{Framing, LineRef};

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Syslog over mutual TLS.
    Tls,
    /// Syslog over plain TCP.
    Tcp,
    /// One request on the HTTP ingestion API.
    Http,
}

/// One event as the fake Devo parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedLine {
    /// `<PRI>` value; `None` for header-less lines and HTTP events.
    pub pri: Option<u16>,
    /// Date field as sent; empty when absent.
    pub date: Arc<str>,
    /// Host name from the header (or the HTTP URL); empty when absent.
    pub host: Arc<str>,
    /// Tag (table) the event is routed to; `unknown.unknown` for header-less lines.
    pub tag: Arc<str>,
    /// The payload bytes (no trailing LF).
    pub message: Vec<u8>,
    /// Connection (or HTTP request) the event arrived on.
    pub conn_id: u64,
    /// How the event was framed on the wire.
    pub framing: Framing,
    /// `false` if the connection ended before the event's terminator.
    pub terminated: bool,
}

impl ReceivedLine {
    /// The payload as text (lossy for invalid UTF-8).
    pub fn message_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.message)
    }

    /// The event rebuilt as a syslog line `<PRI>DATE HOST TAG: MESSAGE\n` (just
    /// `MESSAGE\n` when it had no header).
    pub fn to_syslog_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.message.len() + 64);
        render(
            &mut out,
            self.pri,
            self.date.as_bytes(),
            self.host.as_bytes(),
            self.tag.as_bytes(),
            &self.message,
        );
        out
    }
}

fn render(out: &mut Vec<u8>, pri: Option<u16>, date: &[u8], host: &[u8], tag: &[u8], msg: &[u8]) {
    if let Some(pri) = pri {
        out.push(b'<');
        out.extend_from_slice(pri.to_string().as_bytes());
        out.push(b'>');
        out.extend_from_slice(date);
        out.push(b' ');
        out.extend_from_slice(host);
        out.push(b' ');
        out.extend_from_slice(tag);
        out.extend_from_slice(b": ");
    }
    out.extend_from_slice(msg);
    out.push(b'\n');
}

/// What is known about one connection (or HTTP request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Connection id (also [`ReceivedLine::conn_id`]).
    pub id: u64,
    /// Listener it came in on.
    pub transport: Transport,
    /// Remote address, when known.
    pub peer: Option<SocketAddr>,
    /// Subject of the client certificate presented over TLS.
    pub client_cert_subject: Option<String>,
    /// Application bytes received (decrypted for TLS, decoded body for HTTP).
    pub bytes: u64,
    /// Events parsed from it.
    pub lines: u64,
    /// Still open.
    pub open: bool,
    /// Why it ended abnormally (handshake failure, parse error, I/O error, closed by us).
    pub error: Option<String>,
}

/// Counters and error texts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevoStats {
    /// TCP connections accepted on the TLS and plain listeners.
    pub connections_accepted: u64,
    /// Connections whose TLS handshake succeeded.
    pub tls_handshakes: u64,
    /// Connections whose TLS handshake failed (wrong client cert, no cert, timeout...).
    pub handshake_failures: u64,
    /// Error text of every failed handshake, in order.
    pub handshake_errors: Vec<String>,
    /// Syslog connections currently open.
    pub open_connections: u64,
    /// HTTP ingestion requests received.
    pub http_requests: u64,
    /// HTTP requests refused (bad token, too large, bad encoding...).
    pub http_rejected: u64,
    /// Why each refused HTTP request was refused.
    pub http_errors: Vec<String>,
    /// Streams that could not be parsed further (corrupt gzip, overlong line...).
    pub parse_errors: Vec<String>,
    /// Syslog connections that ended with a read error (e.g. "connection reset by peer",
    /// typical of a TLS client that closes without reading the server's session tickets).
    pub connection_errors: Vec<String>,
    /// Application bytes received over all transports.
    pub bytes_received: u64,
    /// Events parsed over all transports.
    pub lines_received: u64,
}

/// Renders one event per tag file as it arrives (`<out_dir>/<tag>.log`).
struct Persister {
    tx: Option<mpsc::Sender<PersistMsg>>,
    thread: Option<JoinHandle<()>>,
}

enum PersistMsg {
    Lines(Vec<(Arc<str>, Vec<u8>)>),
    Flush(mpsc::Sender<()>),
}

/// File name used for a tag's persisted lines.
pub fn tag_file_name(tag: &str) -> String {
    let safe: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    format!("{}.log", if safe.is_empty() { "_" } else { safe })
}

impl Persister {
    fn start(dir: &Path) -> std::io::Result<Persister> {
        fs::create_dir_all(dir)?;
        let dir = dir.to_path_buf();
        let (tx, rx) = mpsc::channel::<PersistMsg>();
        let thread = std::thread::Builder::new()
            .name("fake-devo-persist".into())
            .spawn(move || persist_loop(&dir, &rx))?;
        Ok(Persister {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, lines: Vec<(Arc<str>, Vec<u8>)>) {
        if let Some(tx) = &self.tx {
            // A send error means the writer thread died; it already logged why.
            let _ = tx.send(PersistMsg::Lines(lines));
        }
    }

    fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(PersistMsg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    fn close(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.close();
    }
}

fn persist_loop(dir: &Path, rx: &mpsc::Receiver<PersistMsg>) {
    let mut files: HashMap<Arc<str>, BufWriter<fs::File>> = HashMap::new();
    let write = |files: &mut HashMap<Arc<str>, BufWriter<fs::File>>,
                 tag: Arc<str>,
                 bytes: &[u8]| {
        if !files.contains_key(&tag) {
            let path = dir.join(tag_file_name(&tag));
            match fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    files.insert(tag.clone(), BufWriter::with_capacity(256 * 1024, f));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "fake Devo cannot persist lines");
                    return;
                }
            }
        }
        if let Some(f) = files.get_mut(&tag)
            && let Err(e) = f.write_all(bytes)
        {
            tracing::warn!(error = %e, "fake Devo persist write failed");
        }
    };
    let flush_all = |files: &mut HashMap<Arc<str>, BufWriter<fs::File>>| {
        for f in files.values_mut() {
            let _ = f.flush();
        }
    };
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                PersistMsg::Lines(lines) => {
                    for (tag, bytes) in lines {
                        write(&mut files, tag, &bytes);
                    }
                }
                PersistMsg::Flush(done) => {
                    flush_all(&mut files);
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Channel drained: make what we have visible on disk.
        flush_all(&mut files);
    }
    flush_all(&mut files);
}

#[derive(Default)]
struct Inner {
    lines: Vec<ReceivedLine>,
    tag_counts: BTreeMap<Arc<str>, u64>,
    raw: BTreeMap<u64, Vec<u8>>,
    connections: BTreeMap<u64, ConnectionInfo>,
    stats: DevoStats,
}

/// Shared receive state.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    keep_lines: bool,
    keep_raw: bool,
    persister: Mutex<Option<Persister>>,
    out_dir: Option<PathBuf>,
}

impl Store {
    pub(crate) fn new(
        keep_lines: bool,
        keep_raw: bool,
        out_dir: Option<&Path>,
    ) -> std::io::Result<Store> {
        let persister = out_dir.map(Persister::start).transpose()?;
        Ok(Store {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            keep_lines,
            keep_raw,
            persister: Mutex::new(persister),
            out_dir: out_dir.map(Path::to_path_buf),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn out_dir(&self) -> Option<&Path> {
        self.out_dir.as_deref()
    }

    pub(crate) fn batch(&self, conn_id: u64) -> Batch {
        Batch {
            conn_id,
            keep_lines: self.keep_lines,
            persist: self.out_dir.is_some(),
            lines: Vec::new(),
            rendered: Vec::new(),
            tag_counts: HashMap::new(),
            count: 0,
            last_tag: None,
            last_host: None,
            last_date: None,
        }
    }

    /// Records a new connection (or HTTP request).
    pub(crate) fn opened(&self, id: u64, transport: Transport, peer: Option<SocketAddr>) {
        {
            let mut inner = self.lock();
            match transport {
                Transport::Http => inner.stats.http_requests += 1,
                Transport::Tls | Transport::Tcp => {
                    inner.stats.connections_accepted += 1;
                    inner.stats.open_connections += 1;
                }
            }
            inner.connections.insert(
                id,
                ConnectionInfo {
                    id,
                    transport,
                    peer,
                    client_cert_subject: None,
                    bytes: 0,
                    lines: 0,
                    open: transport != Transport::Http,
                    error: None,
                },
            );
        }
        self.bump();
    }

    pub(crate) fn handshake_ok(&self, id: u64, subject: Option<String>) {
        {
            let mut inner = self.lock();
            inner.stats.tls_handshakes += 1;
            if let Some(c) = inner.connections.get_mut(&id) {
                c.client_cert_subject = subject;
            }
        }
        self.bump();
    }

    pub(crate) fn handshake_failed(&self, id: u64, error: String) {
        {
            let mut inner = self.lock();
            inner.stats.handshake_failures += 1;
            inner.stats.handshake_errors.push(error.clone());
            close_conn(
                &mut inner,
                id,
                Some(format!("TLS handshake failed: {error}")),
            );
        }
        self.bump();
    }

    pub(crate) fn parse_failed(&self, id: u64, error: String) {
        {
            let mut inner = self.lock();
            inner
                .stats
                .parse_errors
                .push(format!("connection {id}: {error}"));
            if let Some(c) = inner.connections.get_mut(&id) {
                c.error = Some(error);
            }
        }
        self.bump();
    }

    /// Records a connection that ended with a read error.
    pub(crate) fn read_failed(&self, id: u64, error: String) {
        {
            let mut inner = self.lock();
            inner
                .stats
                .connection_errors
                .push(format!("connection {id}: {error}"));
            close_conn(&mut inner, id, Some(format!("read error: {error}")));
        }
        self.bump();
    }

    pub(crate) fn closed(&self, id: u64, error: Option<String>) {
        {
            let mut inner = self.lock();
            close_conn(&mut inner, id, error);
        }
        self.bump();
    }

    pub(crate) fn http_rejected(&self, id: u64, reason: String) {
        {
            let mut inner = self.lock();
            inner.stats.http_rejected += 1;
            inner.stats.http_errors.push(reason.clone());
            if let Some(c) = inner.connections.get_mut(&id) {
                c.error = Some(reason);
            }
        }
        self.bump();
    }

    /// Commits the raw bytes of one read and the events parsed from them.
    pub(crate) fn commit(&self, raw: &[u8], batch: &mut Batch) {
        let lines = std::mem::take(&mut batch.lines);
        let counts = std::mem::take(&mut batch.tag_counts);
        let rendered = std::mem::take(&mut batch.rendered);
        let count = std::mem::take(&mut batch.count);
        if raw.is_empty() && count == 0 {
            return;
        }
        {
            let mut inner = self.lock();
            inner.stats.bytes_received += raw.len() as u64;
            inner.stats.lines_received += count;
            if let Some(c) = inner.connections.get_mut(&batch.conn_id) {
                c.bytes += raw.len() as u64;
                c.lines += count;
            }
            if self.keep_raw && !raw.is_empty() {
                inner
                    .raw
                    .entry(batch.conn_id)
                    .or_default()
                    .extend_from_slice(raw);
            }
            if self.keep_lines {
                inner.lines.extend(lines);
            }
            for (tag, n) in counts {
                *inner.tag_counts.entry(tag).or_insert(0) += n;
            }
        }
        if !rendered.is_empty()
            && let Some(p) = self.persister_guard().as_ref()
        {
            p.send(rendered);
        }
        self.bump();
    }

    fn persister_guard(&self) -> MutexGuard<'_, Option<Persister>> {
        self.persister.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until everything committed so far is written to the tag files.
    pub(crate) fn flush_persisted(&self) {
        if let Some(p) = self.persister_guard().as_ref() {
            p.flush();
        }
    }

    /// Flushes and stops the persistence thread.
    pub(crate) fn close_persister(&self) {
        if let Some(mut p) = self.persister_guard().take() {
            p.close();
        }
    }

    pub(crate) fn received(&self) -> Vec<ReceivedLine> {
        self.lock().lines.clone()
    }

    pub(crate) fn take_received(&self) -> Vec<ReceivedLine> {
        std::mem::take(&mut self.lock().lines)
    }

    pub(crate) fn lines_for_tag(&self, tag: &str) -> Vec<ReceivedLine> {
        self.lock()
            .lines
            .iter()
            .filter(|l| &*l.tag == tag)
            .cloned()
            .collect()
    }

    pub(crate) fn count_by_tag(&self) -> BTreeMap<String, u64> {
        self.lock()
            .tag_counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    pub(crate) fn count_for_tag(&self, tag: &str) -> u64 {
        self.lock().tag_counts.get(tag).copied().unwrap_or(0)
    }

    pub(crate) fn raw_bytes(&self) -> Vec<u8> {
        self.lock().raw.values().flatten().copied().collect()
    }

    pub(crate) fn raw_bytes_for(&self, id: u64) -> Option<Vec<u8>> {
        self.lock().raw.get(&id).cloned()
    }

    pub(crate) fn connections(&self) -> Vec<ConnectionInfo> {
        self.lock().connections.values().cloned().collect()
    }

    pub(crate) fn stats(&self) -> DevoStats {
        self.lock().stats.clone()
    }

    /// Forgets received lines, raw bytes, tag counts, connection records and counters
    /// (open connections stay counted as open).
    pub(crate) fn clear(&self) {
        {
            let mut inner = self.lock();
            let open = inner.stats.open_connections;
            inner.lines.clear();
            inner.tag_counts.clear();
            inner.raw.clear();
            inner.connections.retain(|_, c| c.open);
            inner.stats = DevoStats {
                open_connections: open,
                ..DevoStats::default()
            };
        }
        self.bump();
    }
}

fn close_conn(inner: &mut Inner, id: u64, error: Option<String>) {
    if let Some(c) = inner.connections.get_mut(&id)
        && c.open
    {
        c.open = false;
        if c.error.is_none() {
            c.error = error;
        }
        inner.stats.open_connections = inner.stats.open_connections.saturating_sub(1);
    }
}

/// Events parsed from one read, built without holding the store lock.
pub(crate) struct Batch {
    conn_id: u64,
    keep_lines: bool,
    persist: bool,
    lines: Vec<ReceivedLine>,
    rendered: Vec<(Arc<str>, Vec<u8>)>,
    tag_counts: HashMap<Arc<str>, u64>,
    count: u64,
    last_tag: Option<Arc<str>>,
    last_host: Option<Arc<str>>,
    last_date: Option<Arc<str>>,
}

/// Returns the cached `Arc<str>` when the bytes repeat (the common case: one tag, one host
/// and one date per connection), otherwise allocates a new one.
fn intern(cache: &mut Option<Arc<str>>, bytes: &[u8]) -> Arc<str> {
    if let Some(c) = cache
        && c.as_bytes() == bytes
    {
        return c.clone();
    }
    let fresh: Arc<str> = Arc::from(String::from_utf8_lossy(bytes).as_ref());
    *cache = Some(fresh.clone());
    fresh
}

impl Batch {
    /// Adds one parsed event.
    pub(crate) fn push(&mut self, l: LineRef<'_>) {
        let tag = intern(&mut self.last_tag, l.tag);
        self.count += 1;
        *self.tag_counts.entry(tag.clone()).or_insert(0) += 1;
        if self.persist {
            let mut out = Vec::with_capacity(l.message.len() + 64);
            render(&mut out, l.pri, l.date, l.host, l.tag, l.message);
            self.rendered.push((tag.clone(), out));
        }
        if self.keep_lines {
            let host = intern(&mut self.last_host, l.host);
            let date = intern(&mut self.last_date, l.date);
            self.lines.push(ReceivedLine {
                pri: l.pri,
                date,
                host,
                tag,
                message: l.message.to_vec(),
                conn_id: self.conn_id,
                framing: l.framing,
                terminated: l.terminated,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves tag names become safe file names (no path separators).
    #[test]
    fn tag_file_names_are_safe() {
        assert_eq!(
            tag_file_name("cloud.office365.management.exchange"),
            "cloud.office365.management.exchange.log"
        );
        assert_eq!(tag_file_name("../etc/passwd"), "_etc_passwd.log");
        assert_eq!(tag_file_name(""), "_.log");
    }

    // Proves to_syslog_line rebuilds the devo-sdk line format byte for byte.
    #[test]
    fn syslog_line_round_trip() {
        let l = ReceivedLine {
            pri: Some(14),
            date: "Jan  1 00:00:00".into(),
            host: "h".into(),
            tag: "a.b".into(),
            message: b"{}".to_vec(),
            conn_id: 1,
            framing: Framing::Line,
            terminated: true,
        };
        assert_eq!(l.to_syslog_line(), b"<14>Jan  1 00:00:00 h a.b: {}\n");
    }
}
