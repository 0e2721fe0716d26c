//! The outputs against the project's fake Devo (`m365_sim::devo::FakeDevo`): mutual-TLS and
//! plain syslog, the zip mode, outages and dropped connections, and HTTP stream ingestion.

use std::sync::Arc;
use std::time::Duration;

use m365_forwarder::framing::{LineFormat, ZipBatcher};
use m365_forwarder::output::{
    HttpOutput, HttpSettings, Output, OutputError, OutputStats, RetryPolicy, Sink, StreamOutput,
    StreamSettings, TlsSettings,
};
use m365_sim::certs::PkiPaths;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use secrecy::SecretString;

const EXCHANGE: &str = "cloud.office365.management.exchange";
const TEAMS: &str = "cloud.office365.management.microsoftteams";
const WAIT: Duration = Duration::from_secs(20);

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        multiplier: 2.0,
        max_attempts: None,
    }
}

async fn devo() -> (FakeDevo, tempfile::TempDir, PkiPaths) {
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = devo.pki().write_to(dir.path()).unwrap();
    (devo, dir, paths)
}

fn tls_output(devo: &FakeDevo, paths: &PkiPaths, stats: Arc<OutputStats>) -> StreamOutput {
    let mut s = StreamSettings::with_tls(
        devo.tls_addr().to_string(),
        TlsSettings::new(
            "localhost",
            &paths.ca,
            &paths.client_cert,
            &paths.client_key,
        ),
    );
    s.retry = quick_retry();
    StreamOutput::new(s, stats).unwrap()
}

fn batch(from: u32, to: u32) -> Vec<(&'static str, String)> {
    (from..to)
        .map(|n| {
            let tag = if n % 4 == 0 { TEAMS } else { EXCHANGE };
            (tag, format!(r#"{{"Id":"{n:08}","Subject":"Réunion {n}"}}"#))
        })
        .collect()
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a [u8])> {
    v.iter().map(|(t, r)| (*t, r.as_bytes())).collect()
}

fn framed(fmt: &LineFormat, v: &[(&'static str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, r) in v {
        fmt.frame_into(t, r.as_bytes(), &mut out);
    }
    out
}

// Proves mutual TLS to the fake Devo delivers byte-exact lines that it routes per tag.
#[tokio::test]
async fn tls_lines_arrive_per_tag() {
    let (devo, _dir, paths) = devo().await;
    let fmt = LineFormat::sdk_default("golden-collector-host");
    let mut out = Output::new(
        Sink::Stream(tls_output(&devo, &paths, Arc::default())),
        fmt.clone(),
    );
    let b = batch(0, 200);
    out.write_records(&refs(&b)).await.unwrap();
    out.shutdown().await.unwrap();
    devo.wait_for_lines(200, WAIT).await.unwrap();
    assert_eq!(devo.raw_bytes(), framed(&fmt, &b));
    assert_eq!(devo.count_for_tag(TEAMS), 50);
    assert_eq!(devo.count_for_tag(EXCHANGE), 150);
    let teams: Vec<Vec<u8>> = devo
        .lines_for_tag(TEAMS)
        .into_iter()
        .map(|l| l.message)
        .collect();
    let sent: Vec<Vec<u8>> = b
        .iter()
        .filter(|(t, _)| *t == TEAMS)
        .map(|(_, r)| r.clone().into_bytes())
        .collect();
    assert_eq!(teams, sent);
}

// Proves the fake Devo's refusal of a client certificate from another CA is reported as such.
#[tokio::test]
async fn fake_devo_refuses_foreign_client_certificate() {
    let (devo, _dir, paths) = devo().await;
    let intruder = devo.pki().other_client().unwrap();
    std::fs::write(&paths.client_cert, &intruder.cert_pem).unwrap();
    std::fs::write(&paths.client_key, &intruder.key_pem).unwrap();
    let mut out = tls_output(&devo, &paths, Arc::default());
    let err = out
        .write_batch(b"<14>Jan  1 00:00:00 h t: x\n")
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutputError::ClientCertRejected { .. }),
        "{err}"
    );
    assert_eq!(devo.stats().lines_received, 0);
}

// Proves that after the fake Devo drops every connection, the next batch reconnects and
// nothing is lost.
#[tokio::test]
async fn dropped_connections_reconnect_without_loss() {
    let (devo, _dir, paths) = devo().await;
    let stats = Arc::new(OutputStats::default());
    let mut out = Output::new(
        Sink::Stream(tls_output(&devo, &paths, stats.clone())),
        LineFormat::sdk_default("h"),
    );
    out.write_records(&refs(&batch(0, 10))).await.unwrap();
    devo.wait_for_lines(10, WAIT).await.unwrap();
    devo.close_all_connections();
    devo.wait_until("connections closed", WAIT, |s| s.open_connections == 0)
        .await
        .unwrap();
    out.write_records(&refs(&batch(10, 20))).await.unwrap();
    out.shutdown().await.unwrap();
    devo.wait_for_lines(20, WAIT).await.unwrap();
    assert_eq!(devo.stats().lines_received, 20);
    assert_eq!(stats.snapshot().reconnects, 1);
}

// Proves a write during an outage keeps retrying (nothing to commit) and completes, with
// nothing lost, once the fake Devo listens again.
#[tokio::test]
async fn outage_retries_until_devo_returns() {
    let (devo, _dir, paths) = devo().await;
    let stats = Arc::new(OutputStats::default());
    let mut out = Output::new(
        Sink::Stream(tls_output(&devo, &paths, stats.clone())),
        LineFormat::sdk_default("h"),
    );
    out.write_records(&refs(&batch(0, 5))).await.unwrap();
    devo.wait_for_lines(5, WAIT).await.unwrap();
    devo.stop_listening().await;
    let writer = tokio::spawn(async move {
        let b = batch(5, 25);
        let r = out.write_records(&refs(&b)).await;
        (r, out)
    });
    let s2 = stats.clone();
    tokio::time::timeout(WAIT, async move {
        while s2.snapshot().connect_failures < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    devo.resume_listening().await.unwrap();
    let (result, mut out) = writer.await.unwrap();
    result.unwrap();
    out.shutdown().await.unwrap();
    devo.wait_for_lines(25, WAIT).await.unwrap();
    assert_eq!(devo.stats().lines_received, 25);
}

// Proves the zip mode (gzip members in the stream) over plain TCP is decoded by the fake
// Devo into the same events.
#[tokio::test]
async fn zip_mode_over_tcp_is_understood() {
    let (devo, _dir, _paths) = devo().await;
    let mut s = StreamSettings::new(devo.tcp_addr().unwrap().to_string());
    s.retry = quick_retry();
    let stream = StreamOutput::new(s, Arc::default()).unwrap();
    let mut out = Output::new(Sink::Stream(stream), LineFormat::sdk_default("h"))
        .with_zip(ZipBatcher::default());
    let b = batch(0, 300);
    out.write_records(&refs(&b)).await.unwrap();
    out.shutdown().await.unwrap();
    devo.wait_for_lines(300, WAIT).await.unwrap();
    assert_eq!(devo.count_for_tag(TEAMS), 75);
    assert!(devo.stats().parse_errors.is_empty());
}

// Proves HTTP stream mode is accepted by the fake Devo (path, token, gzip) and a wrong token
// is a permanent, clearly reported error that does not reveal the token.
#[tokio::test]
async fn http_stream_mode_to_fake_devo() {
    let (devo, _dir, _paths) = devo().await;
    let endpoint = url::Url::parse(&format!("http://{}", devo.http_addr().unwrap())).unwrap();
    let mut s = HttpSettings::new(
        endpoint.clone(),
        "mydomain",
        SecretString::from(devo.http_token().to_owned()),
        "collector",
    );
    s.retry = quick_retry();
    s.max_request_bytes = 2000;
    let mut out = Output::new(
        Sink::Http(HttpOutput::new(s.clone(), Arc::default()).unwrap()),
        LineFormat::sdk_default("h"),
    );
    let b = batch(0, 100);
    out.write_records(&refs(&b)).await.unwrap();
    devo.wait_for_lines(100, WAIT).await.unwrap();
    assert_eq!(devo.count_for_tag(TEAMS), 25);
    assert!(
        devo.stats().http_requests > 2,
        "split below the 2000-byte cap"
    );

    let bad_token = "wrongwrongwrongwrongwrongwrong99";
    s.token = SecretString::from(bad_token.to_owned());
    let mut bad = HttpOutput::new(s, Arc::default()).unwrap();
    let err = bad.write_records(&refs(&b[..1])).await.unwrap_err();
    assert!(
        matches!(err, OutputError::HttpStatus { status: 401, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains(bad_token));
}
