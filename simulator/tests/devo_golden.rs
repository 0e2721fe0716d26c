//! The fake Devo against the golden captures of Devo's own Python sender
//! (/work/shared/golden): parsed events, lossless rebuild and byte-exact raw bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use m365_sim::certs;
use m365_sim::devo::{FakeDevo, FakeDevoConfig, Framing, ReceivedLine, UNKNOWN_TAG};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);
const EXCHANGE: &str = "cloud.office365.management.exchange";
const HOST: &str = "golden-collector-host";

fn golden(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("M365_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/golden"));
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("golden file {name}: {e}"))
}

/// Writes in uneven chunks (so frames straddle reads), half-closes, waits for the server's EOF.
async fn send<S: AsyncWrite + tokio::io::AsyncRead + Unpin>(mut s: S, data: &[u8]) {
    for chunk in data.chunks(4093) {
        s.write_all(chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

/// Rebuilds the wire bytes from parsed events (octet-counted frames get their prefix back).
fn rebuild(lines: &[ReceivedLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        let wire = l.to_syslog_line();
        if l.framing == Framing::OctetCounted {
            out.extend_from_slice(format!("{} ", wire.len()).as_bytes());
        }
        out.extend_from_slice(&wire);
    }
    out
}

fn check_capture_events(lines: &[ReceivedLine]) {
    assert_eq!(lines.len(), 10, "{lines:#?}");
    for (i, l) in lines.iter().enumerate() {
        if i != 3 {
            assert_eq!(&*l.tag, EXCHANGE, "event {i}");
        }
    }
    assert_eq!(lines[0].pri, Some(14));
    assert_eq!(&*lines[0].date, "Jan  1 00:00:00");
    assert_eq!(&*lines[0].host, HOST);
    assert!(
        lines[0]
            .message_str()
            .starts_with("{\"CreationTime\":\"2024-05-01T10:01:00\"")
    );
    assert!(lines[1].message_str().contains("東京 ✓ 🚀"));
    // multiline=False: the embedded LF splits the event; the tail has no header.
    assert_eq!(lines[2].message_str(), "first line");
    assert_eq!(&*lines[3].tag, UNKNOWN_TAG);
    assert_eq!(lines[3].message_str(), "second line");
    // multiline=True: one octet-counted event keeps its LF.
    assert_eq!(lines[4].framing, Framing::OctetCounted);
    assert_eq!(lines[4].message_str(), "first line\nsecond line");
    assert!(lines[5].message_str().contains("2024-05-01T10:03:00"));
    assert!(lines[6].message_str().contains("2024-05-01T10:04:00"));
    let header = format!("<14>Jan  1 00:00:00 {HOST} {EXCHANGE}: ");
    assert_eq!(lines[7].message.len(), 205_207 - header.len() - 1);
    assert_eq!(&*lines[8].host, "vm");
    assert_eq!(lines[9].pri, Some(131));
    assert_eq!(&*lines[9].date, "May  1 10:07:00");
    assert!(lines.iter().all(|l| l.terminated));
}

// Proves the devo-sdk TCP capture parses into the expected 10 events, rebuilds byte for byte,
// and is kept raw unchanged.
#[tokio::test]
async fn sdk_capture_over_tcp() {
    let data = golden("devo-sdk-sender-capture.bin");
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
    send(s, &data).await;
    devo.wait_for_lines(10, WAIT).await.unwrap();
    devo.wait_until("closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    let lines = devo.received();
    check_capture_events(&lines);
    assert_eq!(rebuild(&lines), data);
    assert_eq!(devo.raw_bytes(), data);
    assert!(devo.stats().parse_errors.is_empty());
    devo.shutdown().await;
}

// Proves the same capture sent over mutual TLS gives the same events and raw bytes.
#[tokio::test]
async fn sdk_capture_over_tls() {
    let data = golden("devo-sdk-sender-capture.bin");
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let config = devo.pki().client_config().unwrap();
    let tcp = TcpStream::connect(devo.tls_addr()).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(certs::localhost_server_name(), tcp)
        .await
        .unwrap();
    send(s, &data).await;
    devo.wait_for_lines(10, WAIT).await.unwrap();
    devo.wait_until("closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    check_capture_events(&devo.received());
    assert_eq!(devo.raw_bytes(), data);
    devo.shutdown().await;
}

// Proves the zip-mode capture (one gzip member in the stream) parses into its 4 events.
#[tokio::test]
async fn sdk_zip_capture() {
    let data = golden("devo-sdk-sender-capture-zip.bin");
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let s = TcpStream::connect(devo.tcp_addr().unwrap()).await.unwrap();
    send(s, &data).await;
    devo.wait_for_lines(4, WAIT).await.unwrap();
    devo.wait_until("closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    let lines = devo.lines_for_tag(EXCHANGE);
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.framing, Framing::Gzip);
        assert_eq!(l.pri, Some(14));
        assert_eq!(&*l.host, HOST);
        let id = format!("\"Id\":\"00000000-0000-0000-0000-0000000000{}\"", 10 + i);
        assert!(
            l.message_str().contains(&id),
            "event {i}: {}",
            l.message_str()
        );
        assert_eq!(l.to_syslog_line().len(), 398);
    }
    assert_eq!(devo.stats().lines_received, 4);
    assert_eq!(devo.raw_bytes(), data);
    devo.shutdown().await;
}
