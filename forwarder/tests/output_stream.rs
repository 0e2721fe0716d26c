//! The `devo_tls` and `tcp` outputs against a small recording syslog listener defined here
//! (rustls server from `m365_sim::certs::TestPki`, loopback only): byte-exact delivery,
//! certificate errors, reconnects after a peer close or idleness, the connection pool, and
//! the per-connection loss evidence ([`Carrier`]) the forwarder's commits rely on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use m365_forwarder::framing::LineFormat;
use m365_forwarder::output::{
    Carrier, LinkState, Output, OutputError, OutputStats, Pool, RetryPolicy, Sink, StreamOutput,
    StreamSettings, TlsSettings, TlsVersions,
};
use m365_sim::certs::{PkiPaths, TestPki};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const EXCHANGE: &str = "cloud.office365.management.exchange";
const SHAREPOINT: &str = "cloud.office365.management.sharepoint";

/// Bytes received on one accepted connection, and whether it has ended.
#[derive(Default)]
struct ConnLog {
    bytes: Vec<u8>,
    closed: bool,
    /// Notified to make the server drop this one connection.
    drop_now: Arc<tokio::sync::Notify>,
}

/// A recording listener: TLS (client certificate required) or plain TCP.
struct Recorder {
    addr: String,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>>,
    handshake_errors: Arc<Mutex<Vec<String>>>,
    kick: watch::Sender<u64>,
}

impl Recorder {
    async fn start(tls: Option<rustls::ServerConfig>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>> = Arc::default();
        let handshake_errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (kick, _) = watch::channel(0u64);
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let (c2, e2, k2) = (conns.clone(), handshake_errors.clone(), kick.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::new(Mutex::new(ConnLog::default()));
                c2.lock().unwrap().push(log.clone());
                let (acceptor, errors, kick_rx) = (acceptor.clone(), e2.clone(), k2.subscribe());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => match a.accept(tcp).await {
                            Ok(s) => serve(s, log, kick_rx).await,
                            Err(e) => {
                                errors.lock().unwrap().push(e.to_string());
                                log.lock().unwrap().closed = true;
                            }
                        },
                        None => serve(tcp, log, kick_rx).await,
                    }
                });
            }
        });
        Recorder {
            addr,
            conns,
            handshake_errors,
            kick,
        }
    }

    /// All bytes received, connections in accept order.
    fn all_bytes(&self) -> Vec<u8> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .flat_map(|c| c.lock().unwrap().bytes.clone())
            .collect()
    }

    fn connection_count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Waits (bounded) until `cond` holds.
    async fn wait_for(&self, what: &str, cond: impl Fn(&Recorder) -> bool) {
        for _ in 0..1000 {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Server-side drop of the connection whose bytes contain `marker`; waits until closed.
    async fn drop_connection_with(&self, marker: &[u8]) {
        let log = {
            let conns = self.conns.lock().unwrap();
            conns
                .iter()
                .find(|c| {
                    c.lock()
                        .unwrap()
                        .bytes
                        .windows(marker.len())
                        .any(|w| w == marker)
                })
                .cloned()
                .expect("a connection carried the marker")
        };
        let notify = log.lock().unwrap().drop_now.clone();
        notify.notify_one();
        for _ in 0..1000 {
            if log.lock().unwrap().closed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the connection did not close");
    }

    /// Server-side close of every open connection; waits until all are closed.
    async fn close_all(&self) {
        self.kick.send_modify(|v| *v += 1);
        self.wait_for("connections closed", |r| {
            r.conns
                .lock()
                .unwrap()
                .iter()
                .all(|c| c.lock().unwrap().closed)
        })
        .await;
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    log: Arc<Mutex<ConnLog>>,
    mut kick: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let drop_now = log.lock().unwrap().drop_now.clone();
    loop {
        tokio::select! {
            _ = drop_now.notified() => break,
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    // Client half-closed: close our side too (the client waits for this).
                    let _ = s.shutdown().await;
                    break;
                }
                Ok(n) => log.lock().unwrap().bytes.extend_from_slice(&buf[..n]),
            },
            _ = kick.changed() => break,
        }
    }
    drop(s);
    log.lock().unwrap().closed = true;
}

fn pki_files(pki: &TestPki) -> (tempfile::TempDir, PkiPaths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = pki.write_to(dir.path()).unwrap();
    (dir, paths)
}

fn tls_settings(addr: &str, paths: &PkiPaths) -> StreamSettings {
    let mut s = StreamSettings::with_tls(
        addr,
        TlsSettings::new(
            "localhost",
            &paths.ca,
            &paths.client_cert,
            &paths.client_key,
        ),
    );
    s.retry = RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        max_attempts: Some(20),
    };
    s
}

fn records(range: std::ops::Range<u32>) -> Vec<(String, String)> {
    range
        .map(|n| {
            let tag = if n % 3 == 0 { SHAREPOINT } else { EXCHANGE };
            (
                tag.to_owned(),
                format!(r#"{{"Id":"{n:08}","Workload":"x","Subject":"é {n}"}}"#),
            )
        })
        .collect()
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &[u8])> {
    v.iter().map(|(t, r)| (t.as_str(), r.as_bytes())).collect()
}

fn framed(fmt: &LineFormat, v: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, r) in v {
        fmt.frame_into(t, r.as_bytes(), &mut out);
    }
    out
}

// Proves lines sent over mutual TLS arrive byte-exact, in order, with per-tag counters, and
// that shutdown half-closes and completes once the server closed.
#[tokio::test]
async fn tls_delivers_lines_byte_exact() {
    let pki = TestPki::generate("tls-ok").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let stats = Arc::new(OutputStats::default());
    let stream = StreamOutput::new(tls_settings(&server.addr, &paths), stats.clone()).unwrap();
    let fmt = LineFormat::sdk_default("golden-collector-host");
    let mut out = Output::new(Sink::Stream(stream), fmt.clone());
    let b1 = records(0..50);
    let b2 = records(50..120);
    out.write_records(&as_refs(&b1)).await.unwrap();
    out.write_records(&as_refs(&b2)).await.unwrap();
    out.shutdown().await.unwrap();
    let mut expected = framed(&fmt, &b1);
    expected.extend(framed(&fmt, &b2));
    server
        .wait_for("all bytes", |r| r.all_bytes().len() >= expected.len())
        .await;
    assert_eq!(server.all_bytes(), expected);
    assert_eq!(server.connection_count(), 1);
    let snap = stats.snapshot();
    assert_eq!(snap.lines, 120);
    assert_eq!(snap.per_tag[SHAREPOINT].lines, 40);
    assert_eq!(snap.per_tag[EXCHANGE].lines, 80);
    assert_eq!(snap.bytes, expected.len() as u64);
    assert_eq!(snap.reconnects, 0);
}

// Proves a client certificate from another CA yields a clear "client certificate rejected"
// error (not a silent success) and nothing is accepted by the server.
#[tokio::test]
async fn wrong_client_certificate_is_reported() {
    let pki = TestPki::generate("tls-wrong-client").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let intruder = pki.other_client().unwrap();
    std::fs::write(&paths.client_cert, &intruder.cert_pem).unwrap();
    std::fs::write(&paths.client_key, &intruder.key_pem).unwrap();
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let stats = Arc::new(OutputStats::default());
    let mut stream = StreamOutput::new(tls_settings(&server.addr, &paths), stats.clone()).unwrap();
    let err = stream
        .write_batch(b"<14>Jan  1 00:00:00 h t: x\n")
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutputError::ClientCertRejected { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("rejected the client certificate"), "{msg}");
    assert!(msg.contains("client.pem"), "{msg}");
    assert!(!msg.contains("PRIVATE KEY"));
    assert!(server.all_bytes().is_empty());
    assert!(stats.snapshot().last_error.is_some());
}

// Proves the same clear error with TLS 1.2, where the refusal comes during the handshake.
#[tokio::test]
async fn wrong_client_certificate_is_reported_tls12() {
    let pki = TestPki::generate("tls12-wrong-client").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let intruder = pki.other_client().unwrap();
    std::fs::write(&paths.client_cert, &intruder.cert_pem).unwrap();
    std::fs::write(&paths.client_key, &intruder.key_pem).unwrap();
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let mut settings = tls_settings(&server.addr, &paths);
    if let Some(t) = settings.tls.as_mut() {
        t.versions = TlsVersions::Tls12Only;
    }
    let mut stream = StreamOutput::new(settings, Arc::default()).unwrap();
    let err = stream.write_batch(b"x\n").await.unwrap_err();
    assert!(
        matches!(err, OutputError::ClientCertRejected { .. }),
        "{err:?}"
    );
}

// Proves trusting the wrong CA fails with an error naming the chain file.
#[tokio::test]
async fn wrong_server_ca_is_reported_with_chain_file() {
    let pki = TestPki::generate("tls-wrong-ca").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let other = pki.unrelated().unwrap();
    std::fs::write(&paths.ca, &other.ca_cert_pem).unwrap();
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let mut stream = StreamOutput::new(tls_settings(&server.addr, &paths), Arc::default()).unwrap();
    let err = stream.write_batch(b"x\n").await.unwrap_err();
    assert!(
        matches!(err, OutputError::ServerNotTrusted { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("server certificate not trusted by chain file"),
        "{msg}"
    );
    assert!(msg.contains(&paths.ca.display().to_string()), "{msg}");
}

// Proves a missing key file and a PKCS#12 request fail at build time with clear errors.
#[tokio::test]
async fn bad_tls_files_fail_before_connecting() {
    let pki = TestPki::generate("tls-files").unwrap();
    let (dir, paths) = pki_files(&pki);
    let mut missing = TlsSettings::new(
        "localhost",
        &paths.ca,
        &paths.client_cert,
        dir.path().join("nope.key"),
    );
    let err = missing.build().unwrap_err();
    assert!(
        err.to_string().contains("cannot read client key file"),
        "{err}"
    );
    missing.pkcs12 = Some(dir.path().join("bundle.p12"));
    let err = missing.build().unwrap_err();
    assert!(matches!(err, OutputError::Unsupported(_)), "{err:?}");
}

// Proves that when the server closes the connection, the next write detects it, reconnects,
// and both batches arrive complete.
#[tokio::test]
async fn server_close_triggers_reconnect_without_loss() {
    let pki = TestPki::generate("tls-kick").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let stats = Arc::new(OutputStats::default());
    let stream = StreamOutput::new(tls_settings(&server.addr, &paths), stats.clone()).unwrap();
    let fmt = LineFormat::sdk_default("h");
    let mut out = Output::new(Sink::Stream(stream), fmt.clone());
    let b1 = records(0..10);
    out.write_records(&as_refs(&b1)).await.unwrap();
    let first = framed(&fmt, &b1);
    server
        .wait_for("first batch", |r| r.all_bytes().len() >= first.len())
        .await;
    server.close_all().await;
    let b2 = records(10..20);
    out.write_records(&as_refs(&b2)).await.unwrap();
    out.shutdown().await.unwrap();
    let mut expected = first;
    expected.extend(framed(&fmt, &b2));
    server
        .wait_for("second batch", |r| r.all_bytes().len() >= expected.len())
        .await;
    assert_eq!(server.all_bytes(), expected);
    assert_eq!(server.connection_count(), 2);
    assert_eq!(stats.snapshot().reconnects, 1);
}

// Proves a connection idle longer than max_idle is replaced before the next write.
#[tokio::test]
async fn idle_connection_is_replaced() {
    let server = Recorder::start(None).await;
    let stats = Arc::new(OutputStats::default());
    let mut settings = StreamSettings::new(server.addr.clone());
    settings.max_idle = Duration::from_millis(30);
    let mut stream = StreamOutput::new(settings, stats.clone()).unwrap();
    stream.write_batch(b"one\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_batch(b"two\n").await.unwrap();
    stream.shutdown().await.unwrap();
    server
        .wait_for("both lines", |r| r.all_bytes().len() >= 8)
        .await;
    assert_eq!(server.connection_count(), 2);
    assert_eq!(server.all_bytes(), b"one\ntwo\n");
    assert_eq!(stats.snapshot().reconnects, 1);
    assert_eq!(stats.snapshot().connects, 2);
}

// Proves writes keep retrying with backoff while Devo is down and succeed once it is back
// (retry-until-success is what keeps offsets uncommitted during an outage).
#[tokio::test]
async fn connect_failures_back_off_then_succeed() {
    // Reserve a port, free it, and start the listener there only after a few failures.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let stats = Arc::new(OutputStats::default());
    let mut settings = StreamSettings::new(addr.to_string());
    settings.retry = RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        multiplier: 2.0,
        max_attempts: None,
    };
    let mut stream = StreamOutput::new(settings, stats.clone()).unwrap();
    let stats2 = stats.clone();
    let late = tokio::spawn(async move {
        while stats2.snapshot().connect_failures < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let listener = TcpListener::bind(addr).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    stream.write_batch(b"after outage\n").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(late.await.unwrap(), b"after outage\n");
    assert!(stats.snapshot().connect_failures >= 3);
}

// Proves a pool spreads batches over N connections and every line arrives exactly once.
#[tokio::test]
async fn pool_spreads_batches_over_connections() {
    let pki = TestPki::generate("pool").unwrap();
    let (_dir, paths) = pki_files(&pki);
    let server = Recorder::start(Some(pki.server_config(true).unwrap())).await;
    let stats = Arc::new(OutputStats::default());
    let pool = Pool::new(tls_settings(&server.addr, &paths), 3, stats.clone()).unwrap();
    let fmt = LineFormat::sdk_default("h");
    let mut out = Output::new(Sink::Pool(pool), fmt.clone());
    let mut deliveries = Vec::new();
    let mut expected_lines = Vec::new();
    for i in 0..9 {
        let batch = records(i * 100..i * 100 + 100);
        expected_lines.extend(
            framed(&fmt, &batch)
                .split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec),
        );
        deliveries.push(out.submit_records(&as_refs(&batch)).await.unwrap());
    }
    for d in deliveries {
        d.wait().await.unwrap();
    }
    out.shutdown().await.unwrap();
    let total: usize = expected_lines.iter().map(Vec::len).sum();
    server
        .wait_for("all lines", |r| r.all_bytes().len() >= total)
        .await;
    let mut got: Vec<Vec<u8>> = server
        .all_bytes()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    got.sort();
    expected_lines.sort();
    assert_eq!(got, expected_lines);
    assert_eq!(server.connection_count(), 3);
    assert_eq!(stats.snapshot().lines, 900);
    assert!(server.handshake_errors.lock().unwrap().is_empty());
}

/// Waits (bounded) until `carrier` is lost.
async fn wait_lost(carrier: &Carrier) {
    for _ in 0..1000 {
        if carrier.is_lost() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("connection {} never marked lost", carrier.connection());
}

// Proves each delivery names the connection that carried it, an idle pool connection the
// server drops is marked lost without any further write while the other connection stays
// healthy, the next batch on that slot goes over a new connection, and a graceful shutdown
// marks the connections closed (not lost).
#[tokio::test]
async fn pool_reports_carriers_and_detects_drops_per_connection() {
    let server = Recorder::start(None).await;
    let stats = Arc::new(OutputStats::default());
    let pool = Pool::new(StreamSettings::new(server.addr.clone()), 2, stats.clone()).unwrap();
    let mut out = Output::new(Sink::Pool(pool), LineFormat::sdk_default("h"));
    let (a, b) = (records(0..5), records(5..10));
    let da = out.submit_records(&as_refs(&a)).await.unwrap();
    let db = out.submit_records(&as_refs(&b)).await.unwrap();
    let ca = da.wait_carrier().await.unwrap().expect("a connection");
    let cb = db.wait_carrier().await.unwrap().expect("a connection");
    assert_ne!(
        ca.connection(),
        cb.connection(),
        "round-robin over two slots"
    );
    assert_eq!((ca.serial(), cb.serial()), (1, 1));
    let fmt = LineFormat::sdk_default("h");
    let total = framed(&fmt, &a).len() + framed(&fmt, &b).len();
    server
        .wait_for("both batches", |r| r.all_bytes().len() >= total)
        .await;

    server.drop_connection_with(a[0].1.as_bytes()).await;
    wait_lost(&ca).await;
    assert!(!cb.is_lost(), "the other connection is not affected");
    assert_eq!(stats.snapshot().connections_lost, 1);

    // Round-robin: the third batch goes to `ca`'s slot again, over a new connection.
    let c = records(10..15);
    let cc = out
        .submit_records(&as_refs(&c))
        .await
        .unwrap()
        .wait_carrier()
        .await
        .unwrap()
        .expect("a connection");
    assert_eq!((cc.connection(), cc.serial()), (ca.connection(), 2));
    assert_eq!(cc.state(), LinkState::Open);
    out.shutdown().await.unwrap();
    assert_eq!(
        cc.state(),
        LinkState::Closed,
        "the server closed after our half-close"
    );
    assert_eq!(cb.state(), LinkState::Closed);
    assert_eq!(stats.snapshot().connections_lost, 1);
}

// Proves a write that fails part-way (the server stops reading; the write times out) is
// written again from the start of the batch on a new connection: the new connection gets
// the whole batch exactly once, in order, and is the carrier reported; the stalled one
// counts as lost.
#[tokio::test]
async fn failed_write_restarts_whole_batch_on_new_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        // First connection: never read (the client's write stalls), held until the second
        // one has everything.
        let (stalled, _) = listener.accept().await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        second.read_to_end(&mut got).await.unwrap();
        drop(stalled);
        got
    });
    // Larger than loopback socket buffers on both sides, so the first write must stall.
    let line = [b'x'; 1023];
    let mut batch = Vec::new();
    let mut n = 0u32;
    while batch.len() < 48 << 20 {
        batch.extend_from_slice(format!("{n:08} ").as_bytes());
        batch.extend_from_slice(&line[..1014]);
        batch.push(b'\n');
        n += 1;
    }
    let stats = Arc::new(OutputStats::default());
    let mut settings = StreamSettings::new(addr);
    settings.write_timeout = Duration::from_millis(300);
    settings.retry = RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: Some(5),
    };
    let mut stream = StreamOutput::new(settings, stats.clone()).unwrap();
    let carrier = stream.send(&batch).await.unwrap().expect("a connection");
    stream.shutdown().await.unwrap();
    let got = server.await.unwrap();
    assert!(
        got == batch,
        "the new connection got the whole batch, once, in order"
    );
    assert_eq!(carrier.serial(), 2, "the carrier is the new connection");
    assert_eq!(carrier.state(), LinkState::Closed);
    let s = stats.snapshot();
    assert_eq!((s.connections_lost, s.write_errors, s.batches), (1, 1, 1));
}

// Proves an idle pool connection is closed gracefully by its watcher once `max_idle`
// passed (the server read everything: closed, not lost), and the next batch reconnects.
#[tokio::test]
async fn pool_closes_idle_connection_gracefully() {
    let server = Recorder::start(None).await;
    let stats = Arc::new(OutputStats::default());
    let mut settings = StreamSettings::new(server.addr.clone());
    settings.max_idle = Duration::from_millis(50);
    let pool = Pool::new(settings, 1, stats.clone()).unwrap();
    let mut out = Output::new(Sink::Pool(pool), LineFormat::sdk_default("h"));
    let first = out
        .submit_records(&as_refs(&records(0..3)))
        .await
        .unwrap()
        .wait_carrier()
        .await
        .unwrap()
        .expect("a connection");
    for _ in 0..1000 {
        if first.state() == LinkState::Closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(first.state(), LinkState::Closed);
    let second = out
        .submit_records(&as_refs(&records(3..6)))
        .await
        .unwrap()
        .wait_carrier()
        .await
        .unwrap()
        .expect("a connection");
    assert_eq!(second.serial(), 2);
    out.shutdown().await.unwrap();
    assert_eq!(stats.snapshot().connections_lost, 0);
    assert_eq!(server.connection_count(), 2);
}
