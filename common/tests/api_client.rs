//! Tests of the Management Activity API client against small local fakes (axum on
//! 127.0.0.1, plus a raw TCP server for a cut-off body): pagination, PublisherIdentifier,
//! foreign links refused, throttling and retries, AF code mapping, 401 refresh, clock skew,
//! and blob streaming with its size cap, gzip and truncation.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use chrono::{TimeZone as _, Utc};
use m365_common::api::{
    Action, AfCode, ApiClient, ApiError, ApiSettings, Endpoint, RetryPolicy, TransportKind,
    http_client,
};
use m365_common::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const PUBLISHER: &str = "99999999-8888-7777-6666-555555555555";

/// What the fake saw of one API request.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    auth: Option<String>,
}

impl Req {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: body.as_bytes().to_vec(),
        }
    }

    fn af(status: u16, code: &str) -> Answer {
        Answer::json(
            status,
            &format!(r#"{{"error":{{"code":"{code}","message":"Fake {code}."}}}}"#),
        )
    }

    fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Box<dyn Fn(&Req, usize) -> Answer + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Req>>,
    tokens_issued: Mutex<usize>,
    handler: Mutex<Option<Handler>>,
}

/// Fake Entra (v2 token endpoint) and Management API on one loopback port.
struct Fake {
    base: url::Url,
    shared: Arc<Shared>,
}

impl Fake {
    async fn start() -> Fake {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            tokens_issued: Mutex::new(0),
            handler: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            base: url::Url::parse(&format!("http://{addr}")).unwrap(),
            shared,
        }
    }

    /// Sets the API handler: gets the request and its 0-based index among API requests.
    fn on(&self, f: impl Fn(&Req, usize) -> Answer + Send + Sync + 'static) {
        *self.shared.handler.lock().unwrap() = Some(Box::new(f));
    }

    fn requests(&self) -> Vec<Req> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn tokens_issued(&self) -> usize {
        *self.shared.tokens_issued.lock().unwrap()
    }

    fn feed(&self) -> String {
        format!("{}api/v1.0/{TENANT}/activity/feed", self.base)
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if uri.path().ends_with("/oauth2/v2.0/token") {
        let n = {
            let mut issued = shared.tokens_issued.lock().unwrap();
            *issued += 1;
            *issued
        };
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!(
                r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"token-{n}"}}"#
            )))
            .unwrap();
    }
    let query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let req = Req {
        method,
        path: uri.path().to_string(),
        query,
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let index = {
        let mut all = shared.requests.lock().unwrap();
        all.push(req.clone());
        all.len() - 1
    };
    let answer = match shared.handler.lock().unwrap().as_ref() {
        Some(h) => h(&req, index),
        None => Answer::json(404, "{}"),
    };
    let mut builder = Response::builder().status(StatusCode::from_u16(answer.status).unwrap());
    for (k, v) in &answer.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder.body(Body::from(answer.body)).unwrap()
}

fn token_client(authority: &url::Url) -> Arc<TokenClient> {
    let settings = TokenSettings {
        authority_base: authority.clone(),
        tenant: TENANT.into(),
        client_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
        credential: Credential::ClientSecret(SecretString::from("s3cret")),
        endpoint: TokenEndpoint::V2,
        resource: "https://manage.office.com".into(),
    };
    Arc::new(TokenClient::new(settings, http_client(None).unwrap()).unwrap())
}

fn api_settings(base: &url::Url) -> ApiSettings {
    let mut s = ApiSettings::new(base.clone(), TENANT);
    s.publisher_identifier = PUBLISHER.into();
    s.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    };
    s
}

fn client(fake: &Fake) -> ApiClient {
    client_with(fake, api_settings(&fake.base))
}

fn client_with(fake: &Fake, settings: ApiSettings) -> ApiClient {
    ApiClient::new(
        settings,
        token_client(&fake.base),
        http_client(None).unwrap(),
    )
}

fn blob_json(feed: &str, id: &str) -> String {
    format!(
        r#"{{"contentType":"Audit.Exchange","contentId":"{id}","contentUri":"{feed}/audit/{id}","contentCreated":"2026-11-27T10:00:00.000Z","contentExpiration":"2026-12-04T10:00:00.000Z"}}"#
    )
}

fn window() -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    (
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 30, 5).unwrap(),
    )
}

// Proves listing follows NextPageUri and NextPageUrl (any header casing), adds
// PublisherIdentifier to followed links, formats times without zone, sends the bearer token
// on every page, and drops a content id repeated across pages.
#[tokio::test]
async fn list_content_follows_all_pages() {
    let fake = Fake::start().await;
    let feed = fake.feed();
    fake.on(move |req, _| {
        let page = req.param("nextPage").unwrap_or("1").to_string();
        let next = |n: &str| {
            format!(
                "{feed}/subscriptions/content?contentType=Audit.Exchange&startTime=2026-11-27T09:00:00&endTime=2026-11-27T10:30:05&nextPage={n}"
            )
        };
        match page.as_str() {
            "1" => Answer::json(200, &format!("[{},{}]", blob_json(&feed, "a$1"), blob_json(&feed, "b$2")))
                .header("NextPageUri", &next("2")),
            "2" => Answer::json(200, &format!("[{},{}]", blob_json(&feed, "b$2"), blob_json(&feed, "c$3")))
                .header("nextpageurl", &next("3")),
            _ => Answer::json(200, &format!("[{}]", blob_json(&feed, "d$4"))),
        }
    });
    let api = client(&fake);
    let (start, end) = window();
    let blobs = api
        .list_content("Audit.Exchange", start, end)
        .await
        .unwrap();
    let ids: Vec<&str> = blobs.iter().map(|b| b.content_id.as_str()).collect();
    assert_eq!(ids, ["a$1", "b$2", "c$3", "d$4"]);
    assert_eq!(
        blobs[0].content_created,
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
    );

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.param("PublisherIdentifier"), Some(PUBLISHER), "{r:?}");
        assert_eq!(r.auth.as_deref(), Some("Bearer token-1"));
        assert_eq!(
            r.path,
            format!("/api/v1.0/{TENANT}/activity/feed/subscriptions/content")
        );
        assert_eq!(r.param("startTime"), Some("2026-11-27T09:00:00"));
        assert_eq!(r.param("endTime"), Some("2026-11-27T10:30:05"));
    }
    assert_eq!(reqs[0].param("contentType"), Some("Audit.Exchange"));
    assert_eq!(reqs[2].param("nextPage"), Some("3"));
    assert_eq!(api.counters().requests(Endpoint::ListContent, "200"), 3);
}

// Proves a next-page link to another host is refused and never requested.
#[tokio::test]
async fn next_page_on_another_host_is_refused() {
    let fake = Fake::start().await;
    let port = fake.base.port().unwrap();
    fake.on(move |_, _| {
        Answer::json(200, "[]").header(
            "NextPageUri",
            &format!("http://localhost:{port}/api/v1.0/{TENANT}/activity/feed/subscriptions/content?nextPage=2"),
        )
    });
    let api = client(&fake);
    let (start, end) = window();
    let err = api
        .list_content("Audit.Exchange", start, end)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::ForeignUrl { .. }), "{err:?}");
    assert_eq!(err.error_type(), "foreign_url");
    assert!(!err.is_transient());
    assert_eq!(fake.requests().len(), 1);
}

// Proves AF20031 (bad nextPage) restarts the window from page 1 and then completes.
#[tokio::test]
async fn bad_next_page_restarts_the_window() {
    let fake = Fake::start().await;
    let feed = fake.feed();
    fake.on(move |req, index| match req.param("nextPage") {
        None => Answer::json(200, &format!("[{}]", blob_json(&feed, "a$1"))).header(
            "NextPageUri",
            &format!("{feed}/subscriptions/content?contentType=Audit.Exchange&nextPage=2"),
        ),
        Some(_) if index == 1 => Answer::af(400, "AF20031"),
        Some(_) => Answer::json(200, &format!("[{}]", blob_json(&feed, "b$2"))),
    });
    let api = client(&fake);
    let (start, end) = window();
    let blobs = api
        .list_content("Audit.Exchange", start, end)
        .await
        .unwrap();
    assert_eq!(blobs.len(), 2);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4, "page 1, bad page 2, page 1 again, page 2");
    assert_eq!(reqs[2].param("nextPage"), None);
}

// Proves AF429 (status 403) with Retry-After is honoured once and the call then succeeds.
#[tokio::test]
async fn af429_with_retry_after_then_success() {
    let fake = Fake::start().await;
    fake.on(|_, index| {
        if index == 0 {
            Answer::af(403, "AF429").header("Retry-After", "1")
        } else {
            Answer::json(
                200,
                r#"[{"contentType":"Audit.Exchange","status":"enabled","webhook":null}]"#,
            )
        }
    });
    let api = client(&fake);
    let subs = api.list_subscriptions().await.unwrap();
    assert_eq!(subs.len(), 1);
    assert!(subs[0].is_enabled());
    assert_eq!(api.counters().throttles(), 1);
    assert_eq!(
        api.counters()
            .requests(Endpoint::ListSubscriptions, "AF429"),
        1
    );
    assert_eq!(
        api.counters().requests(Endpoint::ListSubscriptions, "200"),
        1
    );
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.param("PublisherIdentifier") == Some(PUBLISHER))
    );
}

// Proves 503 (HTML body) and AF50000 are retried until success.
#[tokio::test]
async fn server_errors_are_retried() {
    let fake = Fake::start().await;
    fake.on(|_, index| match index {
        0 => Answer {
            status: 503,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html><body>Service Unavailable</body></html>".to_vec(),
        },
        1 => Answer::af(500, "AF50000"),
        _ => Answer::json(200, "[]"),
    });
    let api = client(&fake);
    assert!(api.list_subscriptions().await.unwrap().is_empty());
    assert_eq!(api.counters().retries(), 2);
    assert_eq!(fake.requests().len(), 3);
}

// Proves retries stop at max_attempts and the last error is transient with its AF code.
#[tokio::test]
async fn retries_are_bounded() {
    let fake = Fake::start().await;
    fake.on(|_, _| Answer::af(500, "AF50005"));
    let api = client(&fake);
    let err = api.list_subscriptions().await.unwrap_err();
    assert_eq!(err.af_code(), Some(&AfCode::Af50005));
    assert_eq!(err.status(), Some(500));
    assert!(err.is_transient());
    assert_eq!(err.action(), Action::Retry);
    assert_eq!(fake.requests().len(), 4);
}

// Proves a 502 with an HTML page yields no AF code, keeps an excerpt, and is retryable.
#[tokio::test]
async fn html_error_body_has_no_af_code() {
    let fake = Fake::start().await;
    fake.on(|_, _| Answer {
        status: 502,
        headers: vec![],
        body: b"<html><h1>Bad Gateway</h1></html>".to_vec(),
    });
    let mut settings = api_settings(&fake.base);
    settings.retry.max_attempts = 1;
    let api = client_with(&fake, settings);
    let err = api.list_subscriptions().await.unwrap_err();
    assert_eq!(err.af_code(), None);
    assert!(err.to_string().contains("Bad Gateway"), "{err}");
    assert_eq!(err.error_type(), "server_error");
    assert!(err.is_transient());
}

// Proves start treats AF20024 as success and sends PublisherIdentifier and contentType.
#[tokio::test]
async fn start_already_enabled_is_ok() {
    let fake = Fake::start().await;
    fake.on(|_, _| Answer::af(400, "AF20024"));
    let api = client(&fake);
    let sub = api.start_subscription("Audit.General").await.unwrap();
    assert_eq!(sub.content_type, "Audit.General");
    assert!(sub.is_enabled());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "AF20024 is not retried");
    assert_eq!(reqs[0].method, Method::POST);
    assert!(reqs[0].path.ends_with("/subscriptions/start"));
    assert_eq!(reqs[0].param("contentType"), Some("Audit.General"));
    assert_eq!(reqs[0].param("PublisherIdentifier"), Some(PUBLISHER));
}

// Proves start and stop succeed on 200 and use POST.
#[tokio::test]
async fn start_and_stop_succeed() {
    let fake = Fake::start().await;
    fake.on(|req, _| {
        if req.path.ends_with("/start") {
            Answer::json(
                200,
                r#"{"contentType":"DLP.All","status":"enabled","webhook":null}"#,
            )
        } else {
            Answer {
                status: 200,
                headers: vec![],
                body: Vec::new(),
            }
        }
    });
    let api = client(&fake);
    let sub = api.start_subscription("DLP.All").await.unwrap();
    assert_eq!(sub.content_type, "DLP.All");
    api.stop_subscription("DLP.All").await.unwrap();
    let reqs = fake.requests();
    assert!(reqs[1].path.ends_with("/subscriptions/stop"));
    assert!(reqs.iter().all(|r| r.method == Method::POST));
}

// Proves AF20022, AF20051 and AF20050 map to their documented actions without retries,
// and the error carries tenant, content type, status and AF code.
#[tokio::test]
async fn af_codes_map_to_actions() {
    let fake = Fake::start().await;
    let feed = fake.feed();
    fake.on(|req, _| {
        if req.path.ends_with("/subscriptions/content") {
            Answer::af(400, "AF20022")
        } else if req.path.ends_with("expired$1") {
            Answer::af(400, "AF20051")
        } else {
            Answer::af(404, "AF20050")
        }
    });
    let api = client(&fake);
    let (start, end) = window();
    let err = api
        .list_content("Audit.SharePoint", start, end)
        .await
        .unwrap_err();
    assert_eq!(err.af_code(), Some(&AfCode::Af20022));
    assert_eq!(err.action(), Action::RestartSubscription);
    assert_eq!(err.tenant(), TENANT);
    assert_eq!(err.content_type(), Some("Audit.SharePoint"));
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_transient());

    let err = api
        .fetch_blob(&format!("{feed}/audit/expired$1"))
        .await
        .unwrap_err();
    assert_eq!(err.action(), Action::SkipExpired);
    assert_eq!(err.error_type(), "content_expired");

    let err = api
        .fetch_blob(&format!("{feed}/audit/gone$2"))
        .await
        .unwrap_err();
    assert_eq!(err.action(), Action::Skip);
    assert_eq!(err.status(), Some(404));
    assert_eq!(fake.requests().len(), 3, "none of these is retried");
}

// Proves a 401 drops the token, a new one is fetched, and the request is retried once.
#[tokio::test]
async fn unauthorized_refreshes_token_once() {
    let fake = Fake::start().await;
    fake.on(|req, _| {
        if req.auth.as_deref() == Some("Bearer token-1") {
            Answer::json(
                401,
                r#"{"Message":"Authorization has been denied for this request."}"#,
            )
            .header("WWW-Authenticate", "Bearer")
        } else {
            Answer::json(200, "[]")
        }
    });
    let api = client(&fake);
    api.list_subscriptions().await.unwrap();
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].auth.as_deref(), Some("Bearer token-2"));
    assert_eq!(fake.tokens_issued(), 2);
    assert_eq!(api.counters().token_refreshes(), 1);
}

// Proves a persistent 401 is retried only once and then reported as fatal.
#[tokio::test]
async fn persistent_unauthorized_is_fatal() {
    let fake = Fake::start().await;
    fake.on(|_, _| {
        Answer::json(
            401,
            r#"{"Message":"Authorization has been denied for this request."}"#,
        )
    });
    let api = client(&fake);
    let err = api.list_subscriptions().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.af_code(), None);
    assert_eq!(err.action(), Action::Fatal);
    assert_eq!(err.error_type(), "unauthorized");
    assert!(err.to_string().contains("Authorization has been denied"));
    assert!(
        !err.to_string().contains("token-"),
        "no token in errors: {err}"
    );
    assert_eq!(fake.requests().len(), 2);
}

// Proves clock skew is measured from the Date header and applied to server_now().
#[tokio::test]
async fn skew_is_measured_from_date_header() {
    let fake = Fake::start().await;
    fake.on(|_, _| {
        let server = Utc::now() + chrono::Duration::hours(1);
        Answer::json(200, "[]").header(
            "Date",
            &server.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        )
    });
    let api = client(&fake);
    assert_eq!(api.skew(), chrono::Duration::zero());
    api.list_subscriptions().await.unwrap();
    let skew = api.skew().num_seconds();
    assert!((3590..=3610).contains(&skew), "skew {skew}");
    let ahead = (api.server_now() - Utc::now()).num_seconds();
    assert!(
        (3590..=3610).contains(&ahead),
        "server_now ahead by {ahead}"
    );
}

// Proves a blob GET keeps the `$` id verbatim, adds PublisherIdentifier, sends the token,
// and decodes a gzip body.
#[tokio::test]
async fn gzip_blob_is_decoded() {
    let fake = Fake::start().await;
    let records =
        br#"[{"Id":"1","Workload":"Exchange"},{"Id":"2","Workload":"Exchange"}]"#.to_vec();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&records).unwrap();
    let gz = enc.finish().unwrap();
    fake.on(move |_, _| Answer {
        status: 200,
        headers: vec![
            (
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            ),
            ("content-encoding".into(), "gzip".into()),
        ],
        body: gz.clone(),
    });
    let api = client(&fake);
    let uri = format!(
        "{}/audit/20261127$20261127$audit_exchange$Audit_Exchange",
        fake.feed()
    );
    assert!(api.is_own_content_uri(&uri));
    let body = api.fetch_blob(&uri).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), records.as_slice());
    let req = &fake.requests()[0];
    assert!(
        req.path
            .ends_with("/audit/20261127$20261127$audit_exchange$Audit_Exchange"),
        "{}",
        req.path
    );
    assert_eq!(req.param("PublisherIdentifier"), Some(PUBLISHER));
    assert_eq!(req.auth.as_deref(), Some("Bearer token-1"));
}

// Proves an existing PublisherIdentifier (any casing) is not added twice, and the body can
// be consumed chunk by chunk.
#[tokio::test]
async fn blob_streams_in_chunks() {
    let fake = Fake::start().await;
    let big = vec![b'x'; 3 * 1024 * 1024];
    let expected = big.len() as u64;
    fake.on(move |_, _| Answer {
        status: 200,
        headers: vec![],
        body: big.clone(),
    });
    let api = client(&fake);
    let uri = format!("{}/audit/abc?publisheridentifier={PUBLISHER}", fake.feed());
    let mut body = api.fetch_blob(&uri).await.unwrap();
    let mut total = 0u64;
    let mut chunks = 0;
    while let Some(chunk) = body.chunk().await.unwrap() {
        total += chunk.len() as u64;
        chunks += 1;
    }
    assert_eq!(total, expected);
    assert!(chunks > 1, "delivered as a stream");
    let req = &fake.requests()[0];
    let publisher_params = req
        .query
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("PublisherIdentifier"))
        .count();
    assert_eq!(publisher_params, 1);
}

// Proves the blob cap applies to a declared length and to decompressed bytes (gzip bomb).
#[tokio::test]
async fn blob_size_cap_is_enforced() {
    let fake = Fake::start().await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 4 * 1024 * 1024]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 * 1024);
    fake.on(move |req, _| {
        if req.path.ends_with("plain") {
            Answer {
                status: 200,
                headers: vec![],
                body: vec![b'['; 200_000],
            }
        } else {
            Answer {
                status: 200,
                headers: vec![("content-encoding".into(), "gzip".into())],
                body: bomb.clone(),
            }
        }
    });
    let mut settings = api_settings(&fake.base);
    settings.max_blob_bytes = 100_000;
    let api = client_with(&fake, settings);

    let err = api
        .fetch_blob(&format!("{}/audit/plain", fake.feed()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::BlobTooLarge { limit: 100_000, .. }),
        "{err:?}"
    );

    let body = api
        .fetch_blob(&format!("{}/audit/bomb", fake.feed()))
        .await
        .unwrap();
    let err = body.bytes().await.unwrap_err();
    assert!(
        matches!(err, ApiError::BlobTooLarge { limit: 100_000, .. }),
        "{err:?}"
    );
    assert_eq!(err.error_type(), "blob_too_large");
}

// Proves content URIs off this tenant's feed are refused before any request is made.
#[tokio::test]
async fn foreign_content_uris_are_refused() {
    let fake = Fake::start().await;
    fake.on(|_, _| Answer::json(200, "[]"));
    let api = client(&fake);
    let port = fake.base.port().unwrap();
    let other_tenant = "00000000-0000-0000-0000-000000000000";
    let refused = [
        format!(
            "http://127.0.0.1:{}/api/v1.0/{TENANT}/activity/feed/audit/x",
            port + 1
        ),
        format!("https://127.0.0.1:{port}/api/v1.0/{TENANT}/activity/feed/audit/x"),
        format!("http://localhost:{port}/api/v1.0/{TENANT}/activity/feed/audit/x"),
        format!("http://127.0.0.1:{port}/api/v1.0/{other_tenant}/activity/feed/audit/x"),
        format!("http://user:pw@127.0.0.1:{port}/api/v1.0/{TENANT}/activity/feed/audit/x"),
        format!(
            "http://127.0.0.1:{port}/api/v1.0/{TENANT}/activity/feed/../../../{other_tenant}/x"
        ),
        "not a url".to_string(),
    ];
    for uri in &refused {
        assert!(!api.is_own_content_uri(uri), "{uri}");
        let err = api.fetch_blob(uri).await.unwrap_err();
        assert!(matches!(err, ApiError::ForeignUrl { .. }), "{uri}: {err:?}");
    }
    assert!(fake.requests().is_empty());
    assert_eq!(fake.tokens_issued(), 0, "no token was even fetched");
}

/// A raw HTTP server that answers every request with `Content-Length: 100000` but sends only
/// 1000 bytes and closes: a body cut off mid-way.
async fn truncating_server() -> url::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&[b' '; 1000]).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url::Url::parse(&format!("http://{addr}")).unwrap()
}

// Proves a body cut off before its Content-Length surfaces as a transient transport error.
#[tokio::test]
async fn truncated_blob_is_transient() {
    let entra = Fake::start().await;
    let api_base = truncating_server().await;
    let api = ApiClient::new(
        api_settings(&api_base),
        token_client(&entra.base),
        http_client(None).unwrap(),
    );
    let uri = format!("{api_base}api/v1.0/{TENANT}/activity/feed/audit/cut");
    let body = api.fetch_blob(&uri).await.unwrap();
    let err = body.bytes().await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transport {
                kind: TransportKind::Body,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.action(), Action::Retry);
}

// Proves a refused connection is retried and then reported as a transient connect error.
#[tokio::test]
async fn connection_refused_is_transient() {
    let entra = Fake::start().await;
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let api = ApiClient::new(
        api_settings(&base),
        token_client(&entra.base),
        http_client(None).unwrap(),
    );
    let err = api.list_subscriptions().await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transport {
                kind: TransportKind::Connect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(api.counters().retries(), 3);
}

// Proves http_client accepts an extra root CA PEM and rejects text without a certificate.
#[test]
fn http_client_extra_root() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["sim.local".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    assert!(http_client(Some(&ca.pem())).is_ok());
    assert!(http_client(Some("no certificate here")).is_err());
}

// Proves the client is usable from spawned tasks (its futures are Send + 'static when the
// client is cloned in) and that clones share counters.
#[tokio::test]
async fn client_futures_are_send() {
    let fake = Fake::start().await;
    fake.on(|_, _| Answer::json(200, "[]"));
    let api = client(&fake);
    let (start, end) = window();
    let a = api.clone();
    let listed = tokio::spawn(async move { a.list_content("Audit.General", start, end).await });
    let b = api.clone();
    let subs = tokio::spawn(async move { b.list_subscriptions().await });
    let c = api.clone();
    let uri = format!("{}/audit/x", fake.feed());
    let blob = tokio::spawn(async move { c.fetch_blob(&uri).await?.bytes().await });
    assert!(listed.await.unwrap().unwrap().is_empty());
    assert!(subs.await.unwrap().unwrap().is_empty());
    assert_eq!(blob.await.unwrap().unwrap().as_ref(), b"[]");
    assert_eq!(api.counters().requests_to(Endpoint::ListContent), 1);
    assert_eq!(api.counters().requests_to(Endpoint::FetchBlob), 1);
}
