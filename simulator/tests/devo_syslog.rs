//! Fake Devo syslog listeners: mutual TLS, plain TCP, octet-counted and gzip framing,
//! stop/resume on the same port, dropping connections, concurrency and persistence.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use m365_sim::certs::{self, ClientIdentity, TestPki};
use m365_sim::devo::{FakeDevo, FakeDevoConfig, Framing, UNKNOWN_TAG};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(20);
const EXCHANGE: &str = "cloud.office365.management.exchange";
const AAD: &str = "cloud.office365.management.azureactivedirectory";

fn line(tag: &str, msg: &str) -> String {
    format!("<14>Jan  1 00:00:00 test-host {tag}: {msg}\n")
}

async fn start() -> FakeDevo {
    FakeDevo::start(FakeDevoConfig::default()).await.unwrap()
}

async fn tls_connect(
    addr: SocketAddr,
    pki: &TestPki,
    identity: Option<&ClientIdentity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = pki.client_config_with(identity).unwrap();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(certs::localhost_server_name(), tcp).await
}

/// Half-closes and waits for the server to close its side (devo-sdk's close sequence).
async fn close_and_wait_eof<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("server must close its side after our half-close")
        .unwrap();
    assert_eq!(n, 0, "the fake Devo never answers on syslog");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// Proves a client with a CA-signed certificate gets its lines parsed per tag over mutual TLS,
// its certificate subject is recorded, and the server closes after the client's half-close.
#[tokio::test]
async fn tls_with_right_client_cert_delivers_lines_per_tag() {
    let devo = start().await;
    let mut s = tls_connect(
        devo.tls_addr(),
        devo.pki(),
        Some(&devo.pki().client_identity()),
    )
    .await
    .unwrap();
    let mut payload = String::new();
    for i in 0..5 {
        payload.push_str(&line(EXCHANGE, &format!("{{\"n\":{i}}}")));
    }
    payload.push_str(&line(AAD, "{\"aad\":true}"));
    s.write_all(payload.as_bytes()).await.unwrap();
    close_and_wait_eof(s).await;

    devo.wait_for_lines(6, WAIT).await.unwrap();
    let ex = devo.lines_for_tag(EXCHANGE);
    assert_eq!(ex.len(), 5);
    assert_eq!(ex[3].message_str(), "{\"n\":3}");
    assert_eq!(ex[3].pri, Some(14));
    assert_eq!(&*ex[3].host, "test-host");
    assert_eq!(&*ex[3].date, "Jan  1 00:00:00");
    assert_eq!(devo.count_for_tag(AAD), 1);
    assert_eq!(devo.raw_bytes(), payload.as_bytes());
    let conns = devo.connections();
    assert_eq!(conns.len(), 1);
    let subject = conns[0].client_cert_subject.clone().unwrap();
    assert!(subject.contains("fake-devo client"), "{subject}");
    let stats = devo
        .wait_until("connection closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    assert_eq!(stats.tls_handshakes, 1);
    assert_eq!(stats.handshake_failures, 0);
    devo.shutdown().await;
}

// Proves a client certificate from an unrelated CA, or no certificate at all, is refused and
// the handshake failure is counted with a TLS error text; no line gets through.
#[tokio::test]
async fn wrong_or_missing_client_cert_is_refused() {
    let devo = start().await;
    let intruder = devo.pki().other_client().unwrap();
    for identity in [Some(&intruder), None] {
        // With TLS 1.3 the client may believe the handshake succeeded; the server refuses.
        if let Ok(mut s) = tls_connect(devo.tls_addr(), devo.pki(), identity).await {
            let _ = s.write_all(line(EXCHANGE, "{}").as_bytes()).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        }
    }
    let stats = devo
        .wait_until("2 handshake failures", WAIT, |s| s.handshake_failures >= 2)
        .await
        .unwrap();
    assert_eq!(stats.tls_handshakes, 0);
    assert_eq!(stats.lines_received, 0);
    for e in &stats.handshake_errors {
        assert!(e.to_lowercase().contains("certificate"), "{e}");
    }
    assert!(devo.received().is_empty());
    devo.shutdown().await;
}

// Proves a client that trusts a different CA refuses the fake Devo's server certificate.
#[tokio::test]
async fn client_trusting_wrong_ca_fails() {
    let devo = start().await;
    let wrong = devo.pki().unrelated().unwrap();
    let err = tls_connect(devo.tls_addr(), &wrong, Some(&wrong.client_identity()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    devo.shutdown().await;
}

// Proves plain TCP delivery with octet-counted multiline frames and header-less lines.
#[tokio::test]
async fn plain_tcp_with_multiline_framing() {
    let devo = start().await;
    let mut s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
    let framed = line(EXCHANGE, "first line\nsecond line");
    let mut payload = Vec::new();
    payload.extend_from_slice(line(EXCHANGE, "before").as_bytes());
    payload.extend_from_slice(format!("{} {framed}", framed.len()).as_bytes());
    payload.extend_from_slice(b"no header here\n");
    payload.extend_from_slice(line(EXCHANGE, "after").as_bytes());
    // Byte-by-byte writes in a few places exercise frames split across reads.
    let (head, tail) = payload.split_at(40);
    s.write_all(head).await.unwrap();
    s.flush().await.unwrap();
    s.write_all(tail).await.unwrap();
    close_and_wait_eof(s).await;

    devo.wait_for_lines(4, WAIT).await.unwrap();
    let got = devo.received();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].message_str(), "before");
    assert_eq!(got[1].framing, Framing::OctetCounted);
    assert_eq!(got[1].message_str(), "first line\nsecond line");
    assert_eq!(&*got[1].tag, EXCHANGE);
    assert_eq!(&*got[2].tag, UNKNOWN_TAG);
    assert_eq!(got[2].message_str(), "no header here");
    assert_eq!(got[3].message_str(), "after");
    assert_eq!(devo.raw_bytes(), payload);
    devo.shutdown().await;
}

// Proves a gzip member written into the TLS stream between plain lines is inflated and parsed.
#[tokio::test]
async fn gzip_member_inside_tls_stream() {
    let devo = start().await;
    let mut s = tls_connect(
        devo.tls_addr(),
        devo.pki(),
        Some(&devo.pki().client_identity()),
    )
    .await
    .unwrap();
    let mut zipped = String::new();
    for i in 0..100 {
        zipped.push_str(&line(AAD, &format!("zipped {i}")));
    }
    let mut payload = line(EXCHANGE, "plain before").into_bytes();
    payload.extend_from_slice(&gzip(zipped.as_bytes()));
    payload.extend_from_slice(line(EXCHANGE, "plain after").as_bytes());
    s.write_all(&payload).await.unwrap();
    close_and_wait_eof(s).await;

    devo.wait_for_lines(102, WAIT).await.unwrap();
    let aad = devo.lines_for_tag(AAD);
    assert_eq!(aad.len(), 100);
    assert!(aad.iter().all(|l| l.framing == Framing::Gzip));
    assert_eq!(aad[99].message_str(), "zipped 99");
    let ex = devo.lines_for_tag(EXCHANGE);
    assert_eq!(ex[1].message_str(), "plain after");
    assert_eq!(devo.raw_bytes(), payload);
    assert!(devo.stats().parse_errors.is_empty());
    devo.shutdown().await;
}

// Proves stop_listening refuses new connects and drops open ones, and resume_listening
// serves again on the same ports.
#[tokio::test]
async fn stop_and_resume_on_same_port() {
    let devo = start().await;
    let tcp = devo.tcp_addr().unwrap();
    let tls = devo.tls_addr();
    let mut open = TcpStream::connect(tcp).await.unwrap();
    devo.wait_until("1 connection", WAIT, |s| s.open_connections == 1)
        .await
        .unwrap();

    devo.stop_listening().await;
    assert!(!devo.is_listening().await);
    let refused = TcpStream::connect(tcp).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(TcpStream::connect(tls).await.is_err());
    assert!(TcpStream::connect(devo.http_addr().unwrap()).await.is_err());
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "open connection must be dropped: {r:?}"
    );

    devo.resume_listening().await.unwrap();
    assert_eq!(devo.tcp_addr(), Some(tcp));
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.write_all(line(EXCHANGE, "after resume").as_bytes())
        .await
        .unwrap();
    close_and_wait_eof(s).await;
    let mut t = tls_connect(tls, devo.pki(), Some(&devo.pki().client_identity()))
        .await
        .unwrap();
    t.write_all(line(EXCHANGE, "tls after resume").as_bytes())
        .await
        .unwrap();
    close_and_wait_eof(t).await;
    let http = format!(
        "{}/event/d/token!{}/h/{EXCHANGE}?http%20after%20resume",
        devo.http_base_url().unwrap(),
        devo.http_token()
    );
    assert_eq!(reqwest::get(http).await.unwrap().status(), 204);
    devo.wait_for_tag(EXCHANGE, 3, WAIT).await.unwrap();
    assert_eq!(
        devo.lines_for_tag(EXCHANGE)[0].message_str(),
        "after resume"
    );
    devo.shutdown().await;
}

// Proves close_all_connections drops open connections while the listener keeps accepting.
#[tokio::test]
async fn close_all_connections_keeps_listening() {
    let devo = start().await;
    let tcp = devo.tcp_addr().unwrap();
    let mut a = TcpStream::connect(tcp).await.unwrap();
    a.write_all(line(EXCHANGE, "one").as_bytes()).await.unwrap();
    devo.wait_for_lines(1, WAIT).await.unwrap();
    devo.close_all_connections();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(WAIT, a.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    devo.wait_until("closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    let mut b = TcpStream::connect(tcp).await.unwrap();
    b.write_all(line(EXCHANGE, "two").as_bytes()).await.unwrap();
    close_and_wait_eof(b).await;
    devo.wait_for_lines(2, WAIT).await.unwrap();
    let conns = devo.connections();
    assert_eq!(conns.len(), 2);
    assert!(conns[0].error.as_deref().unwrap().contains("dropped"));
    devo.shutdown().await;
}

// Proves many concurrent TLS and TCP connections are all parsed completely and counted per tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let devo = Arc::new(start().await);
    let mut tasks = Vec::new();
    for c in 0..16u32 {
        let devo = devo.clone();
        tasks.push(tokio::spawn(async move {
            let mut payload = String::new();
            for i in 0..500 {
                payload.push_str(&line(EXCHANGE, &format!("{{\"c\":{c},\"i\":{i}}}")));
            }
            if c % 2 == 0 {
                let s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
                send_all_then_close(s, payload.as_bytes()).await;
            } else {
                let id = devo.pki().client_identity();
                let s = tls_connect(devo.tls_addr(), devo.pki(), Some(&id))
                    .await
                    .unwrap();
                send_all_then_close(s, payload.as_bytes()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    devo.wait_for_lines(8000, WAIT).await.unwrap();
    assert_eq!(devo.count_for_tag(EXCHANGE), 8000);
    let conns = devo.connections();
    assert_eq!(conns.len(), 16);
    assert!(conns.iter().all(|c| c.lines == 500), "{conns:?}");
    let devo = Arc::into_inner(devo).unwrap();
    devo.shutdown().await;
}

async fn send_all_then_close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, data: &[u8]) {
    for chunk in data.chunks(7919) {
        s.write_all(chunk).await.unwrap();
    }
    close_and_wait_eof(s).await;
}

// Proves received events are persisted as rebuilt syslog lines in one file per tag.
#[tokio::test]
async fn persists_lines_per_tag() {
    let dir = tempfile::tempdir().unwrap();
    let devo = FakeDevo::start(FakeDevoConfig {
        out_dir: Some(dir.path().join("received")),
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let mut s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
    let payload = format!("{}{}", line(EXCHANGE, "{\"a\":1}"), line(AAD, "{\"b\":2}"));
    s.write_all(payload.as_bytes()).await.unwrap();
    close_and_wait_eof(s).await;
    devo.wait_for_lines(2, WAIT).await.unwrap();
    devo.flush_persisted().await;
    let out = devo.out_dir().unwrap().to_path_buf();
    let ex = std::fs::read_to_string(out.join(format!("{EXCHANGE}.log"))).unwrap();
    assert_eq!(ex, line(EXCHANGE, "{\"a\":1}"));
    let aad = std::fs::read_to_string(out.join(format!("{AAD}.log"))).unwrap();
    assert_eq!(aad, line(AAD, "{\"b\":2}"));
    devo.shutdown().await;
}

// Proves a benchmark configuration (no in-memory lines or raw bytes) still counts per tag.
#[tokio::test]
async fn counting_only_mode() {
    let devo = FakeDevo::start(FakeDevoConfig {
        keep_lines: false,
        keep_raw: false,
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
    let payload: String = (0..1000).map(|i| line(AAD, &i.to_string())).collect();
    send_all_then_close(s, payload.as_bytes()).await;
    devo.wait_for_tag(AAD, 1000, WAIT).await.unwrap();
    assert!(devo.received().is_empty());
    assert!(devo.raw_bytes().is_empty());
    assert_eq!(devo.stats().bytes_received, payload.len() as u64);
    devo.shutdown().await;
}
