//! HTTP surface of the fake tenant: token endpoints, the Management Activity API under
//! `/api/v1.0/{tenant}/activity/feed/` (and `/api/v1/`), and the `/_sim/*` inspection
//! endpoints (truth, violations, requests).
//!
//! Every Activity API request goes through one pipeline: parse the query (names matched
//! case-insensitively), authenticate, check the tenant, take a throttle token, apply
//! injected faults, dispatch, and finally log the request with its outcome.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use super::Shared;
use super::auth::{self, TokenRequest, TokenVersion};
use super::config::{ContentType, NextPageHeader};
use super::faults::FaultKind;
use super::state::{ApiError, PageKey, api_time, content_id_well_formed};
use super::truth::{Endpoint, RequestLog, ViolationKind};

const JSON: &str = "application/json; charset=utf-8";
const ZERO_PUBLISHER: &str = "00000000-0000-0000-0000-000000000000";

/// Build the router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/api/{ver}/{tenant}/activity/feed/{*rest}", any(api))
        .route("/_sim/truth", get(sim_truth))
        .route("/_sim/violations", get(sim_violations))
        .route("/_sim/requests", get(sim_requests))
        .merge(super::consent::routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            shared.clone(),
            standard_headers,
        ))
        .with_state(shared)
}

/// Headers every answer carries, with `Date` from the (possibly skewed) server clock.
async fn standard_headers(State(sh): State<Arc<Shared>>, mut res: Response) -> Response {
    let date = sh.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&date) {
        h.insert(header::DATE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static("Microsoft-IIS/10.0"),
    );
    h.insert("x-aspnet-version", HeaderValue::from_static("4.0.30319"));
    res
}

/// Query parameters, looked up case-insensitively by name.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn json_response(status: u16, body: impl Into<Body>) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    res
}

fn af(entry: &mut RequestLog, err: ApiError) -> Response {
    entry.error_code = Some(err.code.to_owned());
    let body = serde_json::json!({"error": {"code": err.code, "message": err.message}});
    json_response(err.status, body.to_string())
}

fn unauthorized() -> Response {
    let mut res = json_response(
        401,
        r#"{"Message":"Authorization has been denied for this request."}"#,
    );
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let zero_q = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !zero_q
        })
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

/// A JSON 200 answer, compressed when allowed and asked for.
fn ok_body(sh: &Shared, headers: &HeaderMap, entry: &mut RequestLog, body: Vec<u8>) -> Response {
    if sh.env.cfg.gzip
        && accepts_gzip(headers)
        && let Some(zipped) = gzip(&body)
    {
        entry.gzip = true;
        let mut res = json_response(200, zipped);
        res.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return res;
    }
    json_response(200, body)
}

/// Response for an injected request-level fault.
fn fault_response(sh: &Shared, entry: &mut RequestLog, kind: FaultKind) -> Response {
    entry.fault = Some(kind.name().to_owned());
    match kind {
        FaultKind::Throttle => {
            let t = sh.faults.throttle();
            throttled(entry, t.status, t.retry_after_secs)
        }
        FaultKind::Internal500 => af(
            entry,
            ApiError::new(
                500,
                "AF50000",
                "An internal error occurred. Retry the request.",
            ),
        ),
        FaultKind::Unavailable503 => {
            html(503, "Service Unavailable", "The service is unavailable.")
        }
        FaultKind::Timeout408 => html(408, "Request Timeout", "The request timed out."),
        FaultKind::HtmlError => html(
            502,
            "502 - Web server received an invalid response while acting as a gateway or proxy server.",
            "There is a problem with the page you are looking for, and it cannot be displayed.",
        ),
        FaultKind::Reset => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"[{\"contentType\":\"Audit.")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                )),
            ];
            json_response(200, Body::from_stream(futures::stream::iter(chunks)))
        }
        // Body faults are applied by the blob handler; elsewhere they mean nothing.
        FaultKind::TruncatedBody | FaultKind::GarbledBody | FaultKind::Stall(_) => {
            json_response(200, "[]")
        }
    }
}

fn throttled(entry: &mut RequestLog, status: u16, retry_after: Option<u64>) -> Response {
    let publisher = entry
        .publisher_identifier
        .clone()
        .unwrap_or_else(|| ZERO_PUBLISHER.to_owned());
    let msg = format!(
        "Too many requests. Method={}, PublisherId={publisher}",
        entry.endpoint.method_name()
    );
    let mut res = af(entry, ApiError::new(status, "AF429", msg));
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

fn html(status: u16, title: &str, text: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\r\n<html><head><title>{title}</title></head>\r\n<body><h1>Server Error</h1><h2>{title}</h2><p>{text}</p></body></html>\r\n"
    );
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

fn classify(method: &Method, rest: &str) -> (Endpoint, Option<String>, Method) {
    let rest = rest.trim_end_matches('/');
    let lower = rest.to_ascii_lowercase();
    match lower.as_str() {
        "subscriptions/start" => (Endpoint::StartSubscription, None, Method::POST),
        "subscriptions/stop" => (Endpoint::StopSubscription, None, Method::POST),
        "subscriptions/list" => (Endpoint::ListSubscriptions, None, Method::GET),
        "subscriptions/content" => (Endpoint::ListContent, None, Method::GET),
        "subscriptions/notifications" => (Endpoint::ListNotifications, None, Method::GET),
        "resources/dlpsensitivetypes" => (Endpoint::DlpSensitiveTypes, None, Method::GET),
        _ if lower.starts_with("audit/") => (
            Endpoint::GetBlob,
            Some(rest["audit/".len()..].to_owned()),
            Method::GET,
        ),
        _ => (Endpoint::Other, None, method.clone()),
    }
}

fn new_entry(
    sh: &Shared,
    method: &Method,
    uri: &Uri,
    endpoint: Endpoint,
    tenant: Option<String>,
    q: &Params,
) -> RequestLog {
    RequestLog {
        at: sh.now(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        endpoint,
        tenant,
        content_type: q.get("contentType").map(str::to_owned),
        publisher_identifier: q.get("PublisherIdentifier").map(str::to_owned),
        window: None,
        next_page: q.get("nextPage").map(str::to_owned),
        status: 0,
        error_code: None,
        gzip: false,
        fault: None,
        items: None,
    }
}

fn finish(sh: &Shared, mut entry: RequestLog, res: Response) -> Response {
    entry.status = res.status().as_u16();
    let limit = sh.env.cfg.request_log_limit;
    sh.lock().push_log(limit, entry);
    res
}

async fn api(
    State(sh): State<Arc<Shared>>,
    method: Method,
    Path((ver, tenant, rest)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = Params::parse(uri.query());
    let (endpoint, content_id, expected_method) = classify(&method, &rest);
    let mut entry = new_entry(&sh, &method, &uri, endpoint, Some(tenant.clone()), &q);
    let res = api_inner(
        &sh,
        &mut entry,
        &ver,
        &tenant,
        &q,
        &headers,
        &method,
        expected_method,
        content_id,
        &body,
    )
    .await;
    finish(&sh, entry, res)
}

#[allow(clippy::too_many_arguments)]
async fn api_inner(
    sh: &Shared,
    entry: &mut RequestLog,
    ver: &str,
    tenant: &str,
    q: &Params,
    headers: &HeaderMap,
    method: &Method,
    expected_method: Method,
    content_id: Option<String>,
    body: &Bytes,
) -> Response {
    let now = sh.now();
    let request_text = match entry.query.is_empty() {
        true => entry.path.clone(),
        false => format!("{}?{}", entry.path, entry.query),
    };
    if !matches!(ver, "v1.0" | "v1") || entry.endpoint == Endpoint::Other {
        return no_resource(&request_text);
    }
    if *method != expected_method {
        return json_response(
            405,
            serde_json::json!({"Message": format!("The requested resource does not support http method '{method}'.")}).to_string(),
        );
    }
    // Publisher identifier bookkeeping (the request is still served).
    {
        let mut st = sh.lock();
        match &entry.publisher_identifier {
            None => st.violate(
                now,
                ViolationKind::MissingPublisherIdentifier,
                Some(tenant),
                &request_text,
                "request without PublisherIdentifier".to_owned(),
            ),
            Some(p) => {
                if let Some(expected) = &sh.env.cfg.expected_publisher_id
                    && !p.eq_ignore_ascii_case(expected)
                {
                    st.violate(
                        now,
                        ViolationKind::WrongPublisherIdentifier,
                        Some(tenant),
                        &request_text,
                        format!("PublisherIdentifier {p} instead of {expected}"),
                    );
                }
            }
        }
    }
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(claims) = auth::verify_bearer(&sh.env, &sh.token_key, authz, now)
        .filter(|c| !sh.faults.token_expired_early(c.iat))
    else {
        return unauthorized();
    };
    if uuid::Uuid::parse_str(tenant).is_err() {
        return af(
            entry,
            ApiError::new(
                400,
                "AF20013",
                format!("The tenant ID passed in the URL ({tenant}) is not a valid GUID."),
            ),
        );
    }
    let Some(ti) = sh.env.tenant_index(tenant) else {
        return af(
            entry,
            ApiError::new(
                400,
                "AF20011",
                format!(
                    "Specified tenant ID ({tenant}) does not exist in the system or has been deleted."
                ),
            ),
        );
    };
    if !claims.tid.eq_ignore_ascii_case(tenant) {
        return af(
            entry,
            ApiError::new(
                403,
                "AF20010",
                format!(
                    "The tenant ID passed in the URL ({tenant}) does not match the tenant ID passed in the access token ({}).",
                    claims.tid
                ),
            ),
        );
    }
    if !sh.env.cfg.tenants[ti].audit_enabled {
        return af(
            entry,
            ApiError::new(
                400,
                "AF20011",
                format!(
                    "Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {tenant} does not exist."
                ),
            ),
        );
    }
    if !auth::has_read_role(&claims) {
        return af(
            entry,
            ApiError::new(
                403,
                "AF10001",
                format!(
                    "The permission set ({}) sent in the request does not include the expected permission ActivityFeed.Read.",
                    claims.roles.join(",")
                ),
            ),
        );
    }
    let (admitted, throttle) = {
        let mut f = sh.faults.lock();
        let ok = f.admit(tenant, entry.publisher_identifier.is_some());
        (ok, f.throttle.clone())
    };
    if !admitted {
        entry.fault = Some("quota".to_owned());
        return throttled(entry, throttle.status, throttle.retry_after_secs);
    }
    let decision = sh.faults.lock().decide(entry.endpoint);
    if let Some(ms) = decision.stall_ms {
        entry.fault = Some("stall".to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let body_fault = match decision.fault {
        Some(k @ (FaultKind::TruncatedBody | FaultKind::GarbledBody))
            if entry.endpoint == Endpoint::GetBlob =>
        {
            Some(k)
        }
        Some(FaultKind::TruncatedBody | FaultKind::GarbledBody) | None => None,
        Some(other) => return fault_response(sh, entry, other),
    };
    let now = sh.now();
    match entry.endpoint {
        Endpoint::StartSubscription => start(sh, entry, ti, q, body, now, &request_text),
        Endpoint::StopSubscription => stop(sh, entry, ti, q, now),
        Endpoint::ListSubscriptions => list_subscriptions(sh, ti),
        Endpoint::ListContent | Endpoint::ListNotifications => {
            list_content(sh, entry, ti, q, headers, now, &request_text)
        }
        Endpoint::GetBlob => get_blob(
            sh,
            entry,
            ti,
            content_id.unwrap_or_default(),
            headers,
            body_fault,
            now,
        ),
        Endpoint::DlpSensitiveTypes => dlp_types(entry, headers),
        _ => no_resource(&request_text),
    }
}

fn no_resource(request: &str) -> Response {
    json_response(
        404,
        serde_json::json!({"Message": format!("No HTTP resource was found that matches the request URI '{request}'.")}).to_string(),
    )
}

fn content_type_param(q: &Params) -> Result<ContentType, ApiError> {
    match q.get("contentType") {
        None | Some("") => Err(ApiError::new(
            400,
            "AF20001",
            "Missing parameter: contentType.",
        )),
        Some(s) => ContentType::parse(s)
            .ok_or_else(|| ApiError::new(400, "AF20020", format!("Invalid content type: {s}."))),
    }
}

fn start(
    sh: &Shared,
    entry: &mut RequestLog,
    ti: usize,
    q: &Params,
    body: &Bytes,
    now: DateTime<Utc>,
    request: &str,
) -> Response {
    let ct = match content_type_param(q) {
        Ok(ct) => ct,
        Err(e) => return af(entry, e),
    };
    if !body.is_empty() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
        match parsed {
            Ok(v) if v.get("webhook").is_some_and(|w| !w.is_null()) => {
                return af(
                    entry,
                    ApiError::new(
                        400,
                        "AF20021",
                        "Webhook validation failed: this simulator does not deliver webhooks; poll /subscriptions/content instead.",
                    ),
                );
            }
            Ok(_) => {}
            Err(_) => {
                return af(
                    entry,
                    ApiError::new(
                        400,
                        "AF20002",
                        "Invalid parameter type: request body. Expected a JSON object.",
                    ),
                );
            }
        }
    }
    let mut st = sh.lock_advanced(now);
    if st.start_too_soon(&sh.env, ti, ct, now) {
        st.violate(
            now,
            ViolationKind::StartTooSoon,
            Some(&sh.env.cfg.tenants[ti].tenant_id),
            request,
            format!(
                "start of {ct} within {} seconds of the previous one",
                sh.env.cfg.start_min_interval_secs
            ),
        );
    }
    match st.start(&sh.env, ti, ct, now) {
        Ok(_) => json_response(
            200,
            serde_json::json!({"contentType": ct.as_str(), "status": "enabled", "webhook": null})
                .to_string(),
        ),
        Err(e) => {
            drop(st);
            af(entry, e)
        }
    }
}

fn stop(
    sh: &Shared,
    entry: &mut RequestLog,
    ti: usize,
    q: &Params,
    now: DateTime<Utc>,
) -> Response {
    let ct = match content_type_param(q) {
        Ok(ct) => ct,
        Err(e) => return af(entry, e),
    };
    let result = sh.lock_advanced(now).stop(ti, ct, now);
    match result {
        Ok(()) => {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::OK;
            res
        }
        Err(e) => af(entry, e),
    }
}

fn list_subscriptions(sh: &Shared, ti: usize) -> Response {
    let subs = sh.lock().subscriptions(ti);
    let items: Vec<serde_json::Value> = subs
        .into_iter()
        .map(|(ct, status)| serde_json::json!({"contentType": ct.as_str(), "status": status, "webhook": null}))
        .collect();
    json_response(200, serde_json::Value::Array(items).to_string())
}

/// Parse one of the accepted time shapes (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`,
/// `YYYY-MM-DDTHH:MM:SS`, optionally with a fraction and/or `Z`).
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let s = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn page_token(key: PageKey) -> String {
    format!("{:013}R{:010}", key.0, key.1)
}

fn parse_page_token(s: &str) -> Option<PageKey> {
    let (ms, seq) = s.split_once('R')?;
    if ms.is_empty()
        || seq.is_empty()
        || !ms.bytes().all(|b| b.is_ascii_digit())
        || !seq.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContentItem<'a> {
    content_type: &'a str,
    content_id: &'a str,
    content_uri: String,
    content_created: String,
    content_expiration: String,
}

fn list_content(
    sh: &Shared,
    entry: &mut RequestLog,
    ti: usize,
    q: &Params,
    headers: &HeaderMap,
    now: DateTime<Utc>,
    request: &str,
) -> Response {
    let ct = match content_type_param(q) {
        Ok(ct) => ct,
        Err(e) => return af(entry, e),
    };
    let tenant_id = sh.env.cfg.tenants[ti].tenant_id.clone();
    let mut st = sh.lock_advanced(now);
    if let Err(e) = st.check_enabled(ti, ct) {
        drop(st);
        return af(entry, e);
    }
    let raw_start = q.get("startTime");
    let raw_end = q.get("endTime");
    let violation = |st: &mut super::state::SimState, kind, detail: String| {
        st.violate(now, kind, Some(&tenant_id), request, detail);
    };
    let (start, end) = match (raw_start, raw_end) {
        (None, None) => (now - Duration::hours(24), now),
        (Some(s), Some(e)) => {
            let (Some(s_t), Some(e_t)) = (parse_time(s), parse_time(e)) else {
                violation(
                    &mut st,
                    ViolationKind::BadTimeFormat,
                    format!("startTime={s} endTime={e}"),
                );
                drop(st);
                return af(
                    entry,
                    ApiError::new(
                        400,
                        "AF20002",
                        "Invalid parameter type: startTime/endTime. Expected type: datetime (YYYY-MM-DD, YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS).",
                    ),
                );
            };
            (s_t, e_t)
        }
        _ => {
            violation(
                &mut st,
                ViolationKind::HalfWindow,
                "only one of startTime/endTime".to_owned(),
            );
            drop(st);
            return af(
                entry,
                ApiError::new(
                    400,
                    "AF20030",
                    "Start time and end time must both be specified (or both omitted), and when specified, the interval between start and end time must be no more than 24 hours, and start time must not be more than 7 days in the past.",
                ),
            );
        }
    };
    entry.window = Some((start, end));
    if start >= end {
        violation(
            &mut st,
            ViolationKind::StartNotBeforeEnd,
            format!("start {start} is not before end {end}"),
        );
        drop(st);
        return af(
            entry,
            ApiError::new(
                400,
                "AF20055",
                "Start time and end time must both be specified (or both omitted) and start time must be before end time, the interval must be no more than 24 hours, and start time must not be more than 7 days in the past.",
            ),
        );
    }
    if start < now - Duration::days(7) {
        violation(
            &mut st,
            ViolationKind::StartTooOld,
            format!("start {start} is more than 7 days before {now}"),
        );
        drop(st);
        return af(
            entry,
            ApiError::new(
                400,
                "AF20030",
                "Start time and end time must both be specified (or both omitted), and when specified, the interval between start and end time must be no more than 24 hours, and start time must not be more than 7 days in the past.",
            ),
        );
    }
    let mut effective_end = end;
    if end - start > Duration::hours(24) {
        violation(
            &mut st,
            ViolationKind::WindowTooWide,
            format!("window of {} seconds", (end - start).num_seconds()),
        );
        if sh.env.cfg.strict_window {
            drop(st);
            return af(
                entry,
                ApiError::new(
                    400,
                    "AF20030",
                    "Start time and end time must both be specified (or both omitted), and when specified, the interval between start and end time must be no more than 24 hours, and start time must not be more than 7 days in the past.",
                ),
            );
        }
        effective_end = start + Duration::hours(24);
    }
    let from = match q.get("nextPage") {
        None => None,
        Some(tok) => match parse_page_token(tok) {
            Some(key) if key.0 >= start.timestamp_millis() && key.0 < end.timestamp_millis() => {
                Some(key)
            }
            _ => {
                drop(st);
                return af(
                    entry,
                    ApiError::new(400, "AF20031", format!("Invalid nextPage value: {tok}.")),
                );
            }
        },
    };
    if entry.endpoint == Endpoint::ListNotifications {
        // No webhooks are delivered, so the delivery history is always empty.
        drop(st);
        entry.items = Some(0);
        return json_response(200, "[]");
    }
    let (page, next) = st.list_page(
        ti,
        ct,
        (start, effective_end),
        from,
        sh.env.cfg.page_size,
        now,
    );
    let base = sh.base_url.as_str().trim_end_matches('/').to_owned();
    let mut items = Vec::with_capacity(page.len());
    let mut expire_now = Vec::new();
    for &idx in &page {
        let b = &st.blobs[idx];
        items.push(ContentItem {
            content_type: ct.as_str(),
            content_id: &b.content_id,
            content_uri: format!(
                "{base}/api/v1.0/{tenant_id}/activity/feed/audit/{}",
                b.content_id
            ),
            content_created: api_time(b.created),
            content_expiration: api_time(b.expiration),
        });
    }
    let body = serde_json::to_vec(&items).unwrap_or_else(|_| b"[]".to_vec());
    {
        let mut f = sh.faults.lock();
        for &idx in &page {
            if f.expire_listed_blob() {
                expire_now.push(idx);
            }
        }
    }
    for idx in expire_now {
        st.blobs[idx].expiration = now;
    }
    drop(st);
    entry.items = Some(page.len());
    let mut res = ok_body(sh, headers, entry, body);
    if let Some(key) = next {
        let ver = if sh.env.cfg.next_page_api_v1 {
            "v1"
        } else {
            "v1.0"
        };
        let path = if entry.endpoint == Endpoint::ListNotifications {
            "notifications"
        } else {
            "content"
        };
        let (s_text, e_text) = match (raw_start, raw_end) {
            (Some(s), Some(e)) => (s.to_owned(), e.to_owned()),
            _ => (
                start.format("%Y-%m-%dT%H:%M:%S").to_string(),
                end.format("%Y-%m-%dT%H:%M:%S").to_string(),
            ),
        };
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("contentType", ct.as_str())
            .append_pair("startTime", &s_text)
            .append_pair("endTime", &e_text)
            .append_pair("nextPage", &page_token(key))
            .finish();
        let next_url =
            format!("{base}/api/{ver}/{tenant_id}/activity/feed/subscriptions/{path}?{query}");
        let name = match sh.env.cfg.next_page_header {
            NextPageHeader::NextPageUri => "NextPageUri",
            NextPageHeader::NextPageUrl => "NextPageUrl",
        };
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            HeaderValue::from_str(&next_url),
        ) {
            res.headers_mut().insert(n, v);
        }
    }
    res
}

fn get_blob(
    sh: &Shared,
    entry: &mut RequestLog,
    ti: usize,
    content_id: String,
    headers: &HeaderMap,
    body_fault: Option<FaultKind>,
    now: DateTime<Utc>,
) -> Response {
    if !content_id_well_formed(&content_id) {
        return af(
            entry,
            ApiError::new(
                400,
                "AF20052",
                format!("Content ID {content_id} in the URL is invalid."),
            ),
        );
    }
    let (records, ct, ctx) = {
        let st = sh.lock_advanced(now);
        let Some(idx) = st.find_blob(ti, &content_id, now) else {
            drop(st);
            return af(
                entry,
                ApiError::new(404, "AF20050", "The specified content does not exist."),
            );
        };
        let b = &st.blobs[idx];
        entry.content_type = Some(b.ct.as_str().to_owned());
        if let Err(e) = st.check_enabled(ti, b.ct) {
            drop(st);
            return af(entry, e);
        }
        if b.expiration <= now {
            drop(st);
            return af(
                entry,
                ApiError::new(
                    400,
                    "AF20051",
                    "The specified content has already expired. Content expires 7 days after it is made available.",
                ),
            );
        }
        (b.records.clone(), b.ct, sh.env.ctxs[ti].clone())
    };
    let mut body = Vec::with_capacity(records.len() * 1200 + 2);
    body.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r.render(&ctx, ct).as_bytes());
    }
    body.push(b']');
    entry.items = Some(records.len());
    match body_fault {
        Some(FaultKind::TruncatedBody) => {
            entry.fault = Some("truncated_body".to_owned());
            body.truncate(body.len() / 2);
        }
        Some(FaultKind::GarbledBody) => {
            entry.fault = Some("garbled_body".to_owned());
            let mid = body.len() / 2;
            let junk = b"\x00#garbled<>{";
            for (i, b) in junk.iter().enumerate() {
                if let Some(slot) = body.get_mut(mid + i) {
                    *slot = *b;
                } else {
                    body.push(*b);
                }
            }
        }
        _ => {
            let mut st = sh.lock();
            if let Some(idx) = st.blob_index(&content_id) {
                st.blobs[idx].times_downloaded += 1;
            }
        }
    }
    ok_body(sh, headers, entry, body)
}

fn dlp_types(entry: &mut RequestLog, headers: &HeaderMap) -> Response {
    if let Some(lang) = headers.get(header::ACCEPT_LANGUAGE) {
        let Ok(text) = lang.to_str() else {
            return af(
                entry,
                ApiError::new(400, "AF20054", "Invalid Accept-Language header."),
            );
        };
        let langs: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if langs.len() > 1 {
            return af(
                entry,
                ApiError::new(
                    400,
                    "AF20053",
                    "More than one language was specified in the Accept-Language header.",
                ),
            );
        }
        let valid = langs.first().is_some_and(|l| {
            let mut parts = l.split('-');
            parts.next().is_some_and(|p| {
                (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic())
            }) && parts
                .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        });
        if !valid {
            return af(
                entry,
                ApiError::new(
                    400,
                    "AF20054",
                    format!("Invalid Accept-Language header: {text}."),
                ),
            );
        }
    }
    let items = serde_json::json!([
        {"id": "50842eb7-edc8-4019-85dd-5a5c1f2bb085", "name": "CreditCardNumber"},
        {"id": "a44669fe-0d48-453d-a9b1-2cc83f2cba77", "name": "U.S. Social Security Number (SSN)"},
        {"id": "e7dc4711-11b7-4cb0-b88b-2c394a771f0e", "name": "International Banking Account Number (IBAN)"}
    ]);
    entry.items = Some(3);
    json_response(200, items.to_string())
}

async fn token_v1(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(sh, TokenVersion::V1, tenant, uri, headers, body).await
}

async fn token_v2(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(sh, TokenVersion::V2, tenant, uri, headers, body).await
}

async fn token(
    sh: Arc<Shared>,
    version: TokenVersion,
    tenant: String,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = match version {
        TokenVersion::V1 => Endpoint::TokenV1,
        TokenVersion::V2 => Endpoint::TokenV2,
    };
    let q = Params::parse(uri.query());
    let mut entry = new_entry(&sh, &Method::POST, &uri, endpoint, Some(tenant.clone()), &q);
    let decision = sh.faults.lock().decide(endpoint);
    if let Some(ms) = decision.stall_ms {
        entry.fault = Some("stall".to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let now = sh.now();
    if let Some(kind) = decision.fault {
        entry.fault = Some(kind.name().to_owned());
        let err = match kind {
            FaultKind::Throttle => Some(auth_error(
                429,
                "temporarily_unavailable",
                90055,
                "The tenant is being throttled. Retry after a delay.",
            )),
            FaultKind::Internal500 => Some(auth_error(
                500,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            )),
            _ => None,
        };
        let res = match err {
            Some(e) => {
                entry.error_code = Some(format!("AADSTS{}", e.code));
                json_response(e.status, e.body(now))
            }
            None => fault_response(&sh, &mut entry, kind),
        };
        return finish(&sh, entry, res);
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let scheme = if sh.env.cfg.tls { "https" } else { "http" };
    let base = sh.base_url.as_str().trim_end_matches('/');
    let mut urls = vec![format!("{base}{}", uri.path())];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        urls.push(format!("{scheme}://{host}{}", uri.path()));
    }
    let req = TokenRequest {
        version,
        tenant_segment: &tenant,
        endpoint_urls: urls,
        form,
        basic_auth: auth::basic_auth(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        ),
    };
    let result = if super::consent::is_code_grant(&req.form) {
        super::consent::redeem(&sh, &req, now)
    } else {
        let mut st = sh.lock();
        auth::issue_token(&sh.env, &sh.keys, &sh.token_key, &mut st, &req, now)
    };
    let res = match result {
        Ok(body) => json_response(200, body),
        Err(e) => {
            entry.error_code = Some(format!("AADSTS{}", e.code));
            json_response(e.status, e.body(now))
        }
    };
    finish(&sh, entry, res)
}

fn auth_error(status: u16, error: &'static str, code: u32, description: &str) -> auth::TokenError {
    auth::TokenError {
        status,
        error,
        code,
        description: description.to_owned(),
    }
}

async fn sim_truth(State(sh): State<Arc<Shared>>) -> Response {
    let truth = sh.truth();
    json_response(200, serde_json::to_vec(&truth).unwrap_or_default())
}

async fn sim_violations(State(sh): State<Arc<Shared>>) -> Response {
    let v = sh.lock().violations();
    json_response(200, serde_json::to_vec(&v).unwrap_or_default())
}

async fn sim_requests(State(sh): State<Arc<Shared>>, uri: Uri) -> Response {
    let q = Params::parse(uri.query());
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
    let (summary, requests) = {
        let st = sh.lock();
        let mut s = st.summary.clone();
        s.tokens_issued = st.tokens_issued;
        let all = st.requests();
        let skip = all.len().saturating_sub(limit);
        (s, all.into_iter().skip(skip).collect::<Vec<_>>())
    };
    let body = serde_json::json!({"summary": summary, "requests": requests});
    json_response(200, body.to_string())
}

async fn not_found(State(sh): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let q = Params::parse(uri.query());
    let entry = new_entry(&sh, &method, &uri, Endpoint::Other, None, &q);
    let res = no_resource(&uri.to_string()).into_response();
    finish(&sh, entry, res)
}
