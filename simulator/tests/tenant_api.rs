//! Management Activity API behaviour of the fake tenant: subscriptions, listing rules,
//! pagination, blob downloads, faults, throttling and ground truth.

mod tenant_support;

use std::collections::BTreeSet;
use std::io::Read;

use chrono::{Duration, Utc};
use m365_sim::tenant::{
    ContentType, FaultKind, FaultTarget, RecordFileSpec, SimConfig, Simulator, ThrottleSpec,
    ViolationKind,
};
use reqwest::Method;
use serde_json::Value;
use tenant_support::*;

fn gunzip(data: &[u8]) -> Vec<u8> {
    // Test-only: decompressing the simulator's own small output.
    #[allow(clippy::disallowed_types)]
    let mut d = flate2::read::GzDecoder::new(data);
    let mut out = Vec::new();
    d.read_to_end(&mut out).expect("gunzip");
    out
}

/// List a whole window following NextPageUri; returns (content ids, pages).
async fn list_all(
    sim: &Simulator,
    http: &reqwest::Client,
    token: &str,
    ct: ContentType,
    start: &str,
    end: &str,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut res = api(
        sim,
        http,
        token,
        Method::GET,
        TENANT,
        "subscriptions/content",
        &[
            ("contentType", ct.as_str()),
            ("startTime", start),
            ("endTime", end),
        ],
    )
    .await;
    loop {
        assert_eq!(res.status(), 200);
        pages += 1;
        let next = res
            .headers()
            .get("nextpageuri")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let items: Vec<Value> = res.json().await.expect("listing");
        ids.extend(
            items
                .iter()
                .map(|i| i["contentId"].as_str().expect("contentId").to_owned()),
        );
        let Some(next) = next else { break };
        assert!(next.contains("nextPage=") && next.contains("startTime="));
        let url = format!(
            "{next}&PublisherIdentifier={}",
            m365_sim::tenant::TEST_PUBLISHER_ID
        );
        res = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("next page");
    }
    (ids, pages)
}

// Proves the subscription lifecycle: absent → AF20022, start → enabled, start again →
// AF20024, list shows it, stop → AF20022, admin disable → AF20023.
#[tokio::test]
async fn subscription_lifecycle() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let (s, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &[("contentType", "Audit.Exchange")],
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "AF20022"));
    let res = start_sub(&sim, &http, &t, TENANT, ContentType::Exchange).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    assert_eq!(v["status"], "enabled");
    assert!(v["webhook"].is_null());
    let (s, code) =
        error_code(start_sub(&sim, &http, &t, TENANT, ContentType::Exchange).await).await;
    assert_eq!((s, code.as_str()), (400, "AF20024"));
    let list: Vec<Value> = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await
    .json()
    .await
    .expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["contentType"], "Audit.Exchange");
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::POST,
            TENANT,
            "subscriptions/start",
            &[("contentType", "Audit.Nope")],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20020");
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::POST,
            TENANT,
            "subscriptions/start",
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20001");
    let res = api(
        &sim,
        &http,
        &t,
        Method::POST,
        TENANT,
        "subscriptions/stop",
        &[("contentType", "Audit.Exchange")],
    )
    .await;
    assert_eq!(res.status(), 200);
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &[("contentType", "Audit.Exchange")],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20022");
    start_sub(&sim, &http, &t, TENANT, ContentType::Exchange).await;
    sim.disable_subscription(TENANT, ContentType::Exchange)
        .expect("disable");
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &[("contentType", "Audit.Exchange")],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20023");
    sim.shutdown().await;
}

// Proves the listing window rules answer AF20030/AF20055/AF20002 and that each breach, and
// a request without PublisherIdentifier, lands in the violation list.
#[tokio::test]
async fn window_rules_and_violations() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    start_sub(&sim, &http, &t, TENANT, ContentType::SharePoint).await;
    let now = Utc::now();
    let ct = ("contentType", "Audit.SharePoint");
    let wide = [
        ct,
        ("startTime", &*fmt(now - Duration::hours(30))),
        ("endTime", &*fmt(now)),
    ];
    let (s, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &wide,
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "AF20030"));
    let old = [
        ct,
        ("startTime", &*fmt(now - Duration::days(8))),
        (
            "endTime",
            &*fmt(now - Duration::days(8) + Duration::hours(1)),
        ),
    ];
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &old,
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20030");
    let reversed = [
        ct,
        ("startTime", &*fmt(now)),
        ("endTime", &*fmt(now - Duration::hours(1))),
    ];
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &reversed,
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20055");
    let half = [ct, ("startTime", &*fmt(now - Duration::hours(1)))];
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &half,
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20030");
    let bad = [ct, ("startTime", "yesterday"), ("endTime", "today")];
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &bad,
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20002");
    // Date-only and minute forms are accepted; parameter names are case-insensitive.
    let day = (now - Duration::hours(20)).format("%Y-%m-%d").to_string();
    let ok = [
        ("CONTENTTYPE", "Audit.SharePoint"),
        ("starttime", &*day),
        (
            "ENDTIME",
            &*(now - Duration::hours(20) + Duration::hours(5))
                .format("%Y-%m-%dT%H:%M")
                .to_string(),
        ),
    ];
    assert_eq!(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &ok
        )
        .await
        .status(),
        200
    );
    let url = sim
        .api_root(TENANT)
        .join("subscriptions/list")
        .expect("url");
    assert_eq!(
        http.get(url)
            .bearer_auth(&t)
            .send()
            .await
            .expect("list")
            .status(),
        200
    );
    let kinds: Vec<ViolationKind> = sim.violations().iter().map(|v| v.kind).collect();
    for k in [
        ViolationKind::WindowTooWide,
        ViolationKind::StartTooOld,
        ViolationKind::StartNotBeforeEnd,
        ViolationKind::HalfWindow,
        ViolationKind::BadTimeFormat,
        ViolationKind::MissingPublisherIdentifier,
    ] {
        assert!(kinds.contains(&k), "missing violation {k:?} in {kinds:?}");
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ViolationKind::MissingPublisherIdentifier)
            .count(),
        1
    );
    let logged = sim.requests();
    assert!(logged.iter().any(|r| r.publisher_identifier.is_none()));
    assert!(
        logged
            .iter()
            .filter(|r| r.error_code.as_deref() == Some("AF20030"))
            .count()
            >= 3
    );
    sim.shutdown().await;
}

// Proves lenient mode answers a >24h window with partial results (and still records it).
#[tokio::test]
async fn lenient_wide_window_is_partial() {
    let mut cfg = quiet_config();
    cfg.strict_window = false;
    cfg.history_hours = 30.0;
    cfg.tenants[0].subscribed = vec![ContentType::AzureActiveDirectory];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let now = Utc::now();
    let start = now - Duration::hours(29);
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/content",
        &[
            ("contentType", "Audit.AzureActiveDirectory"),
            ("startTime", &fmt(start)),
            ("endTime", &fmt(now)),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let items: Vec<Value> = res.json().await.expect("json");
    let limit = start + Duration::hours(24);
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| {
        i["contentCreated"]
            .as_str()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .is_some_and(|c| c < limit)
    }));
    assert!(
        sim.violations()
            .iter()
            .any(|v| v.kind == ViolationKind::WindowTooWide)
    );
    sim.shutdown().await;
}

// Proves pagination with page size 2: following NextPageUri visits every blob of the window
// exactly once in contentCreated order, matching the truth; a bad nextPage gets AF20031.
#[tokio::test]
async fn pagination_page_size_two() {
    let mut cfg = quiet_config();
    cfg.page_size = 2;
    cfg.tenants[0].subscribed = vec![ContentType::Exchange];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let now = Utc::now();
    let (start, end) = (
        fmt(now - Duration::hours(4)),
        fmt(now + Duration::minutes(1)),
    );
    let (ids, pages) = list_all(&sim, &http, &t, ContentType::Exchange, &start, &end).await;
    let truth = sim.truth();
    let expected: Vec<String> = truth
        .stream(TENANT, "Audit.Exchange")
        .expect("stream")
        .blobs
        .iter()
        .filter(|b| b.published)
        .map(|b| b.content_id.clone())
        .collect();
    assert!(
        expected.len() > 10,
        "want many blobs, got {}",
        expected.len()
    );
    assert_eq!(ids, expected);
    assert_eq!(pages, expected.len().div_ceil(2));
    let (s, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &[
                ("contentType", "Audit.Exchange"),
                ("startTime", &start),
                ("endTime", &end),
                ("nextPage", "garbage"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "AF20031"));
    sim.shutdown().await;
}

// Proves blob downloads: gzip only when asked, identical JSON either way, record Ids equal
// the truth; unknown id → 404 AF20050; malformed → AF20052; expired → AF20051.
#[tokio::test]
async fn blob_download_gzip_and_errors() {
    let mut cfg = quiet_config();
    cfg.tenants[0].subscribed = vec![ContentType::General];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let id = sim
        .publish_generated(TENANT, ContentType::General, 25)
        .expect("publish");
    let uri = format!("{}audit/{id}?PublisherIdentifier=x", sim.api_root(TENANT));
    let plain = http.get(&uri).bearer_auth(&t).send().await.expect("get");
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(
        plain
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json; charset=utf-8")
    );
    let plain = plain.bytes().await.expect("body");
    let zipped = http
        .get(&uri)
        .bearer_auth(&t)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(
        zipped
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let zipped = zipped.bytes().await.expect("body");
    assert_eq!(&zipped[..2], &[0x1f, 0x8b]);
    assert_eq!(gunzip(&zipped), plain.to_vec());
    let records: Vec<Value> = serde_json::from_slice(&plain).expect("array");
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["Id"].as_str().expect("Id").to_owned())
        .collect();
    let truth = sim.truth();
    let blob = truth
        .stream(TENANT, "Audit.General")
        .expect("stream")
        .blobs
        .iter()
        .find(|b| b.content_id == id)
        .expect("blob");
    assert_eq!(blob.record_ids, ids);
    assert_eq!(blob.times_downloaded, 2);
    let unknown = format!(
        "{}audit/20990101000000000000001$x$y$01",
        sim.api_root(TENANT)
    );
    let (s, code) = error_code(http.get(unknown).bearer_auth(&t).send().await.expect("get")).await;
    assert_eq!((s, code.as_str()), (404, "AF20050"));
    let malformed = format!("{}audit/not*valid", sim.api_root(TENANT));
    let (_, code) = error_code(
        http.get(malformed)
            .bearer_auth(&t)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(code, "AF20052");
    sim.expire_blob(&id).expect("expire");
    let (_, code) = error_code(http.get(&uri).bearer_auth(&t).send().await.expect("get")).await;
    assert_eq!(code, "AF20051");
    sim.shutdown().await;
}

// Proves the expiry race: a blob listed and then expired (scripted) answers AF20051.
#[tokio::test]
async fn expiry_race_after_listing() {
    let mut cfg = quiet_config();
    cfg.tenants[0].subscribed = vec![ContentType::Dlp];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    sim.publish_generated(TENANT, ContentType::Dlp, 3)
        .expect("publish");
    sim.faults().expire_next_listed(1);
    let now = Utc::now();
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/content",
        &[
            ("contentType", "DLP.All"),
            ("startTime", &fmt(now - Duration::hours(4))),
            ("endTime", &fmt(now + Duration::minutes(1))),
        ],
    )
    .await;
    let items: Vec<Value> = res.json().await.expect("json");
    let first = items[0]["contentUri"].as_str().expect("uri").to_owned();
    let (_, code) = error_code(
        http.get(format!("{first}?PublisherIdentifier=x"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(code, "AF20051");
    sim.shutdown().await;
}

// Proves throttling answers: scripted AF429 with 403 and the documented message, 429 with
// Retry-After after reconfiguration, and the per-tenant bucket refusing excess requests.
#[tokio::test]
async fn throttling_bodies_and_bucket() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let faults = sim.faults();
    faults.inject(FaultTarget::AnyApi, FaultKind::Throttle, 1);
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.expect("json");
    assert_eq!(v["error"]["code"], "AF429");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with("Too many requests. Method=ListSubscriptions, PublisherId="),
        "{msg}"
    );
    faults.set_throttle(ThrottleSpec {
        status: 429,
        retry_after_secs: Some(7),
        ..ThrottleSpec::default()
    });
    faults.inject(FaultTarget::AnyApi, FaultKind::Throttle, 1);
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    faults.set_throttle(ThrottleSpec {
        tenant_per_minute: 3,
        ..ThrottleSpec::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            api(
                &sim,
                &http,
                &t,
                Method::GET,
                TENANT,
                "subscriptions/list",
                &[],
            )
            .await
            .status()
            .as_u16(),
        );
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|s| *s == 403));
    // The other tenant has its own bucket.
    let t2 = token(&sim, &http, OTHER_TENANT).await;
    assert_eq!(
        api(
            &sim,
            &http,
            &t2,
            Method::GET,
            OTHER_TENANT,
            "subscriptions/list",
            &[]
        )
        .await
        .status(),
        200
    );
    sim.shutdown().await;
}

// Proves scripted faults: 500 AF50000, HTML 502, truncated blob body (not counted as a
// download in the truth), then normal service again.
#[tokio::test]
async fn injected_faults() {
    let mut cfg = quiet_config();
    cfg.tenants[0].subscribed = vec![ContentType::General];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let faults = sim.faults();
    faults.inject(FaultTarget::Listing, FaultKind::Internal500, 1);
    let (s, code) = error_code(
        api(
            &sim,
            &http,
            &t,
            Method::GET,
            TENANT,
            "subscriptions/content",
            &[("contentType", "Audit.General")],
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (500, "AF50000"));
    faults.inject(FaultTarget::AnyApi, FaultKind::HtmlError, 1);
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.expect("text").contains("<html>"));
    let id = sim
        .publish_generated(TENANT, ContentType::General, 10)
        .expect("publish");
    let uri = format!("{}audit/{id}?PublisherIdentifier=x", sim.api_root(TENANT));
    faults.inject(FaultTarget::Blob, FaultKind::TruncatedBody, 1);
    let body = http
        .get(&uri)
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    let truth = sim.truth();
    assert!(
        !truth
            .stream(TENANT, "Audit.General")
            .expect("s")
            .downloaded_content_ids
            .contains(&id)
    );
    let body = http
        .get(&uri)
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(serde_json::from_slice::<Vec<Value>>(&body).is_ok());
    assert!(
        sim.truth()
            .stream(TENANT, "Audit.General")
            .expect("s")
            .downloaded_content_ids
            .contains(&id)
    );
    sim.shutdown().await;
}

// Proves the truth: after listing and downloading everything of one stream, downloaded
// record ids equal published ones; stopping hides content published while stopped.
#[tokio::test]
async fn truth_matches_listed_and_downloaded() {
    let mut cfg = quiet_config();
    cfg.page_size = 5;
    cfg.tenants[0].subscribed = vec![ContentType::AzureActiveDirectory];
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let now = Utc::now();
    let (ids, _) = list_all(
        &sim,
        &http,
        &t,
        ContentType::AzureActiveDirectory,
        &fmt(now - Duration::hours(4)),
        &fmt(now + Duration::minutes(1)),
    )
    .await;
    let mut seen = BTreeSet::new();
    for id in &ids {
        let body = http
            .get(format!(
                "{}audit/{id}?PublisherIdentifier=x",
                sim.api_root(TENANT)
            ))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let records: Vec<Value> = serde_json::from_slice(&body).expect("json");
        seen.extend(
            records
                .iter()
                .map(|r| r["Id"].as_str().expect("Id").to_owned()),
        );
    }
    let truth = sim.truth();
    let st = truth
        .stream(TENANT, "Audit.AzureActiveDirectory")
        .expect("stream");
    assert!(!seen.is_empty());
    assert_eq!(seen, st.published_record_ids);
    assert_eq!(st.downloaded_record_ids, st.published_record_ids);
    assert_eq!(st.listed_content_ids, st.published_content_ids);
    // Stop, publish while stopped, restart: that blob is never listable.
    api(
        &sim,
        &http,
        &t,
        Method::POST,
        TENANT,
        "subscriptions/stop",
        &[("contentType", "Audit.AzureActiveDirectory")],
    )
    .await;
    let hidden = sim
        .publish_generated(TENANT, ContentType::AzureActiveDirectory, 2)
        .expect("publish");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    start_sub(&sim, &http, &t, TENANT, ContentType::AzureActiveDirectory).await;
    let now = Utc::now();
    let (after, _) = list_all(
        &sim,
        &http,
        &t,
        ContentType::AzureActiveDirectory,
        &fmt(now - Duration::hours(4)),
        &fmt(now + Duration::minutes(1)),
    )
    .await;
    assert!(!after.contains(&hidden));
    let truth = sim.truth();
    let blob = truth
        .stream(TENANT, "Audit.AzureActiveDirectory")
        .expect("s")
        .blobs
        .iter()
        .find(|b| b.content_id == hidden)
        .expect("blob");
    assert!(!blob.published);
    sim.shutdown().await;
}

// Proves records from files are served byte for byte under the right content type, with the
// Panther `event` wrapper detected, and that the intrusion scenario is in the truth.
#[tokio::test]
async fn file_records_and_scenario() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples");
    let mut cfg: SimConfig = quiet_config();
    cfg.records_per_minute = 0.0;
    cfg.tenants[0].subscribed = ContentType::ALL.to_vec();
    cfg.record_files = vec![RecordFileSpec::new(
        samples.join("microsoft-docs-sample-response.jsonl"),
    )];
    cfg.scenario = Some(m365_sim::tenant::Intrusion::default());
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let now = Utc::now();
    let (ids, _) = list_all(
        &sim,
        &http,
        &t,
        ContentType::AzureActiveDirectory,
        &fmt(now - Duration::hours(20)),
        &fmt(now + Duration::minutes(1)),
    )
    .await;
    let source = std::fs::read_to_string(samples.join("microsoft-docs-sample-response.jsonl"))
        .expect("sample");
    let first_line = source.lines().next().expect("line");
    let mut found = false;
    for id in ids {
        let body = http
            .get(format!(
                "{}audit/{id}?PublisherIdentifier=x",
                sim.api_root(TENANT)
            ))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        found |= body.contains(first_line);
    }
    assert!(found, "file record not served byte for byte");
    let truth = sim.truth();
    assert_eq!(
        truth.scenario_record_ids.get("spray_success").map(Vec::len),
        Some(1)
    );
    assert!(
        truth
            .stream(TENANT, "Audit.Exchange")
            .expect("s")
            .published_record_ids
            .contains(&truth.scenario_record_ids["inbox_rule_forwarding"][0])
    );
    // Panther file published at runtime: records are the `event` objects.
    let mut spec = RecordFileSpec::new(samples.join("panther-labeled-tests.jsonl"));
    spec.tenant_id = Some(OTHER_TENANT.to_owned());
    let published = sim.publish_file(&spec).expect("publish file");
    assert!(!published.is_empty());
    let truth = sim.truth();
    let other = &truth.tenants[OTHER_TENANT];
    assert!(
        other
            .values()
            .flat_map(|s| s.blobs.iter())
            .any(|b| b.record_ids.iter().any(|i| i == "abc-def-123"))
    );
    sim.shutdown().await;
}

// Proves plain-HTTP mode and the clock skew: the Date header follows the skewed clock.
#[tokio::test]
async fn plain_http_and_skewed_date() {
    let mut cfg = quiet_config();
    cfg.tls = false;
    cfg.clock_skew_secs = 3 * 3600;
    let sim = Simulator::start(cfg).await.expect("start");
    assert_eq!(sim.base_url().scheme(), "http");
    assert!(sim.ca_pem().is_empty());
    let http = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let t = token(&sim, &http, TENANT).await;
    let res = api(
        &sim,
        &http,
        &t,
        Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    let date = res
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .expect("date")
        .to_owned();
    let parsed = chrono::DateTime::parse_from_rfc2822(&date).expect("http date");
    let ahead = parsed.with_timezone(&Utc) - Utc::now();
    assert!(ahead > Duration::hours(2), "Date {date} not skewed");
    sim.shutdown().await;
}
