//! The `devo_http` output against a small axum stand-in for Devo HTTP ingestion (loopback,
//! plain HTTP), and the `file` output.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use m365_forwarder::framing::LineFormat;
use m365_forwarder::output::{
    FileOutput, HttpOutput, HttpSettings, Output, OutputError, OutputStats, RetryPolicy, Sink,
};
use secrecy::SecretString;

const TOKEN: &str = "abcdefghijklmnopqrstuvwxyz012345";

#[derive(Clone, Debug)]
struct Request {
    path: String,
    encoding: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Fake {
    requests: Arc<Mutex<Vec<Request>>>,
    /// Status codes to answer with, in order; 200 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
}

async fn ingest(State(fake): State<Fake>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let code = fake.script.lock().unwrap().pop_front().unwrap_or(200);
    fake.requests.lock().unwrap().push(Request {
        path: uri.path().to_owned(),
        encoding: headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    });
    StatusCode::from_u16(code).unwrap()
}

async fn start_fake() -> (Fake, url::Url) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(ingest))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, url::Url::parse(&format!("http://{addr}")).unwrap())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::write::GzDecoder::new(Vec::new());
    d.write_all(data).unwrap();
    d.finish().unwrap()
}

fn settings(endpoint: url::Url) -> HttpSettings {
    let mut s = HttpSettings::new(
        endpoint,
        "mydomain",
        SecretString::from(TOKEN),
        "collector-1",
    );
    s.retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: Some(5),
    };
    s
}

fn record(n: usize) -> String {
    format!(
        r#"{{"Id":"{n:06}","Workload":"Exchange","Pad":"{}"}}"#,
        "x".repeat(40)
    )
}

// Proves requests use /stream/{domain}/token!{token}/{host}/{tag}, a gzip body of one record
// per line, one group per tag, and bodies split below a small size cap without losing lines.
#[tokio::test]
async fn http_requests_are_well_formed_and_split() {
    let (fake, endpoint) = start_fake().await;
    let mut s = settings(endpoint);
    s.max_request_bytes = 1000;
    let stats = Arc::new(OutputStats::default());
    let http = HttpOutput::new(s, stats.clone()).unwrap();
    let mut out = Output::new(Sink::Http(http), LineFormat::sdk_default("h"));
    let ex: Vec<String> = (0..40).map(record).collect();
    let sp: Vec<String> = (100..105).map(record).collect();
    let mut batch: Vec<(&str, &[u8])> = Vec::new();
    for (i, r) in ex.iter().enumerate() {
        batch.push(("cloud.office365.management.exchange", r.as_bytes()));
        if let Some(s) = sp.get(i) {
            batch.push(("cloud.office365.management.sharepoint", s.as_bytes()));
        }
    }
    out.write_records(&batch).await.unwrap();

    let reqs = fake.requests.lock().unwrap().clone();
    let ex_path =
        format!("/stream/mydomain/token!{TOKEN}/collector-1/cloud.office365.management.exchange");
    let sp_path =
        format!("/stream/mydomain/token!{TOKEN}/collector-1/cloud.office365.management.sharepoint");
    let mut ex_body = Vec::new();
    let mut sp_body = Vec::new();
    for r in &reqs {
        assert_eq!(r.encoding.as_deref(), Some("gzip"));
        let plain = gunzip(&r.body);
        assert!(
            plain.len() <= 1000,
            "request of {} bytes exceeds the cap",
            plain.len()
        );
        assert!(plain.ends_with(b"\n"));
        if r.path == ex_path {
            ex_body.extend(plain);
        } else if r.path == sp_path {
            sp_body.extend(plain);
        } else {
            panic!("unexpected path {}", r.path);
        }
    }
    assert!(reqs.len() > 2, "exchange records must have been split");
    let lines = |v: &[String]| {
        v.iter()
            .flat_map(|r| format!("{r}\n").into_bytes())
            .collect::<Vec<u8>>()
    };
    assert_eq!(ex_body, lines(&ex));
    assert_eq!(sp_body, lines(&sp));
    let snap = stats.snapshot();
    assert_eq!(
        snap.per_tag["cloud.office365.management.exchange"].lines,
        40
    );
    assert_eq!(
        snap.per_tag["cloud.office365.management.sharepoint"].lines,
        5
    );
}

// Proves 5xx answers are retried until success and 4xx fails with a clear, token-free error.
#[tokio::test]
async fn http_retries_5xx_and_reports_4xx_without_token() {
    let (fake, endpoint) = start_fake().await;
    fake.script.lock().unwrap().extend([503, 500]);
    let stats = Arc::new(OutputStats::default());
    let mut http = HttpOutput::new(settings(endpoint), stats.clone()).unwrap();
    let r = record(1);
    http.write_records(&[("t.a.b.c", r.as_bytes())])
        .await
        .unwrap();
    assert_eq!(fake.requests.lock().unwrap().len(), 3);
    assert_eq!(stats.snapshot().write_errors, 2);

    fake.script.lock().unwrap().push_back(403);
    let err = http
        .write_records(&[("t.a.b.c", r.as_bytes())])
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutputError::HttpStatus { status: 403, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(!msg.contains(TOKEN), "token leaked: {msg}");
    assert!(msg.contains("token!***"), "{msg}");
    assert!(!format!("{http:?}").contains(TOKEN));
    assert!(!stats.snapshot().last_error.unwrap().contains(TOKEN));
}

// Proves a record larger than the cap is refused clearly instead of being sent or dropped.
#[tokio::test]
async fn http_record_over_cap_is_an_error() {
    let (_fake, endpoint) = start_fake().await;
    let mut s = settings(endpoint);
    s.max_request_bytes = 10;
    let mut http = HttpOutput::new(s, Arc::default()).unwrap();
    let err = http
        .write_records(&[("t", b"0123456789abc")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutputError::RecordTooLarge {
                size: 14,
                cap: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

// Proves the file output appends exactly the framed lines, across reopenings.
#[tokio::test]
async fn file_output_appends_framed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devo.log");
    let fmt = LineFormat::sdk_default("h");
    for round in 0..2 {
        let file = FileOutput::new(&path, round == 1, Arc::default());
        let mut out = Output::new(Sink::File(file), fmt.clone());
        let r = format!("{{\"round\":{round}}}");
        out.write_records(&[("t.x", r.as_bytes())]).await.unwrap();
        out.flush().await.unwrap();
        out.shutdown().await.unwrap();
    }
    let got = std::fs::read(&path).unwrap();
    assert_eq!(
        got,
        b"<14>Jan  1 00:00:00 h t.x: {\"round\":0}\n<14>Jan  1 00:00:00 h t.x: {\"round\":1}\n"
    );
}

// Proves a batch framed by the caller reaches the file exactly as records framed by the
// output would, with the same per-tag counts, in plain and in octet-counted mode.
#[tokio::test]
async fn preframed_batch_writes_what_records_would() {
    let dir = tempfile::tempdir().unwrap();
    let records: [(&str, &[u8]); 3] = [
        ("t.a", b"{\"n\":1}"),
        ("t.b", b"{\"n\":2}\n"),
        ("t.a", b"{\"n\":3}"),
    ];
    let mut multiline = LineFormat::sdk_default("h");
    multiline.multiline = true;
    for (i, fmt) in [LineFormat::sdk_default("h"), multiline]
        .into_iter()
        .enumerate()
    {
        let mut written = Vec::new();
        let mut counts = Vec::new();
        for framed_by_caller in [false, true] {
            let path = dir.path().join(format!("{i}-{framed_by_caller}.log"));
            let stats = Arc::new(OutputStats::default());
            let file = FileOutput::new(&path, false, Arc::clone(&stats));
            let mut out = Output::new(Sink::File(file), fmt.clone());
            let delivery = if framed_by_caller {
                let mut lines = Vec::new();
                for (t, r) in &records {
                    fmt.frame_into(t, r, &mut lines);
                }
                out.submit_framed(lines.into(), &records).await.unwrap()
            } else {
                out.submit_records(&records).await.unwrap()
            };
            delivery.wait().await.unwrap();
            out.shutdown().await.unwrap();
            written.push(std::fs::read(&path).unwrap());
            let mut per_tag: Vec<_> = stats.snapshot().per_tag.into_iter().collect();
            per_tag.sort_by(|a, b| a.0.cmp(&b.0));
            counts.push(format!("{per_tag:?}"));
        }
        assert_eq!(written[0], written[1], "format {i}");
        assert_eq!(counts[0], counts[1], "format {i}");
        assert!(counts[0].contains("t.b"), "{}", counts[0]);
    }
}

// Proves pre-framed bytes are refused by the HTTP output (the tag must be in the URL).
#[tokio::test]
async fn http_refuses_preframed_bytes() {
    let (_fake, endpoint) = start_fake().await;
    let mut http = HttpOutput::new(settings(endpoint), Arc::default()).unwrap();
    assert!(matches!(
        http.write_batch(b"x\n").await,
        Err(OutputError::NeedsRecords(_))
    ));
}
