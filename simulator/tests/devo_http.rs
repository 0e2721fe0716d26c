//! The fake Devo HTTP ingestion API: stream mode (plain and gzip bodies), event mode,
//! token checking and the body size limit.

use std::io::Write;
use std::time::Duration;

use m365_sim::devo::{FakeDevo, FakeDevoConfig, Framing, Transport};

const WAIT: Duration = Duration::from_secs(20);
const TAG: &str = "cloud.office365.management.sharepoint";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn stream_url(devo: &FakeDevo, token: &str) -> String {
    format!(
        "{}/stream/mydomain/token!{token}/collector-1/{TAG}",
        devo.http_base_url().unwrap()
    )
}

// Proves a gzip-encoded stream body with the right token is accepted (200) and split into
// one event per line under the URL's host and tag.
#[tokio::test]
async fn stream_mode_gzip_body_with_token() {
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let body = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n";
    let resp = reqwest::Client::new()
        .post(stream_url(&devo, devo.http_token()))
        .header("Content-Encoding", "gzip")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    devo.wait_for_lines(3, WAIT).await.unwrap();
    let lines = devo.lines_for_tag(TAG);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2].message_str(), "{\"a\":3}");
    assert_eq!(&*lines[0].host, "collector-1");
    assert_eq!(lines[0].framing, Framing::Http);
    assert_eq!(devo.raw_bytes(), body.as_bytes());
    assert_eq!(devo.connections()[0].transport, Transport::Http);
    devo.shutdown().await;
}

// Proves a wrong token is refused with 401, counted, and stores nothing.
#[tokio::test]
async fn wrong_token_is_refused() {
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let resp = reqwest::Client::new()
        .post(stream_url(&devo, "not-the-token"))
        .body("{\"a\":1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let stats = devo.stats();
    assert_eq!(stats.http_rejected, 1);
    assert_eq!(stats.lines_received, 0);
    assert!(!stats.http_errors[0].contains("not-the-token"));
    devo.shutdown().await;
}

// Proves event mode takes the URL-decoded query string as the message and answers 204.
#[tokio::test]
async fn event_mode_query_message() {
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let url = format!(
        "{}/event/mydomain/token!{}/local1/my.app.http.js?this%20is%20a%20log",
        devo.http_base_url().unwrap(),
        devo.http_token()
    );
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 204);
    let lines = devo.lines_for_tag("my.app.http.js");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].message_str(), "this is a log");
    assert_eq!(&*lines[0].host, "local1");
    devo.shutdown().await;
}

// Proves bodies over the limit get 413 (declared by Content-Length, and after gzip inflation).
#[tokio::test]
async fn body_over_limit_is_rejected() {
    let devo = FakeDevo::start(FakeDevoConfig {
        max_http_body: 1024,
        max_frame: 4096,
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let resp = client
        .post(stream_url(&devo, devo.http_token()))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Small on the wire, but inflates past the cap: refused as a bad body.
    let resp = client
        .post(stream_url(&devo, devo.http_token()))
        .header("Content-Encoding", "gzip")
        .body(gzip(&vec![b'y'; 100_000]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let stats = devo.stats();
    assert_eq!(stats.http_rejected, 2);
    assert_eq!(stats.lines_received, 0);
    devo.shutdown().await;
}
