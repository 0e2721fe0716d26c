//! The fake Devo HTTP ingestion API (docs/devo.md §2):
//! `/event/<domain>/token!<token>/<host>/<tag>?<message>` (GET or POST, one event, 204) and
//! `POST /stream/<domain>/token!<token>/<host>/<tag>` (body of LF-separated events,
//! `Content-Encoding: gzip` accepted, 200). Bodies over the configured limit (32 MB by
//! default) get 413; a wrong token gets 401.
//!
//! Each request is recorded as a connection of transport `Http`; its "raw bytes" are the
//! decoded event bytes (the message for `/event`, the decompressed body for `/stream`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};

use super::Shared;
use super::parse::{Framing, LineRef, gunzip_all};
use super::store::Transport;

/// Builds the router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/event/{domain}/{token}/{host}/{tag}", any(event))
        .route("/stream/{domain}/{token}/{host}/{tag}", post(stream))
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

type Segments = Path<(String, String, String, String)>;

fn reject(shared: &Shared, id: u64, status: StatusCode, reason: &str) -> Response {
    shared
        .store
        .http_rejected(id, format!("{status}: {reason}"));
    (status, reason.to_owned()).into_response()
}

fn token_ok(shared: &Shared, segment: &str) -> bool {
    segment
        .strip_prefix("token!")
        .is_some_and(|t| t == shared.http_token)
}

/// Reads the body, enforcing the size limit first from `Content-Length`, then while reading.
async fn read_body(
    shared: &Shared,
    id: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Response> {
    let limit = shared.max_http_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(reject(
            shared,
            id,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over the size limit",
        ));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        reject(
            shared,
            id,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over the size limit or unreadable",
        )
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    if gzip {
        gunzip_all(&bytes, shared.max_frame).map_err(|e| {
            reject(
                shared,
                id,
                StatusCode::BAD_REQUEST,
                &format!("bad gzip body: {e}"),
            )
        })
    } else {
        Ok(bytes.to_vec())
    }
}

/// Decodes `%XX` escapes; `+` is kept as is (Devo's examples encode spaces as `%20`).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn http_line<'a>(host: &'a str, tag: &'a str, message: &'a [u8]) -> LineRef<'a> {
    LineRef {
        pri: None,
        date: b"",
        host: host.as_bytes(),
        tag: tag.as_bytes(),
        message,
        framing: Framing::Http,
        terminated: true,
    }
}

async fn event(
    State(shared): State<Arc<Shared>>,
    Path((_domain, token, host, tag)): Segments,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = shared.next_id();
    shared.store.opened(id, Transport::Http, None);
    if !token_ok(&shared, &token) {
        return reject(&shared, id, StatusCode::UNAUTHORIZED, "invalid token");
    }
    let message = match query.filter(|q| !q.is_empty()) {
        Some(q) => percent_decode(&q),
        None => match read_body(&shared, id, &headers, body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        },
    };
    let mut batch = shared.store.batch(id);
    batch.push(http_line(&host, &tag, strip_lf(&message)));
    shared.store.commit(&message, &mut batch);
    StatusCode::NO_CONTENT.into_response()
}

fn strip_lf(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    Path((_domain, token, host, tag)): Segments,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = shared.next_id();
    shared.store.opened(id, Transport::Http, None);
    if !token_ok(&shared, &token) {
        return reject(&shared, id, StatusCode::UNAUTHORIZED, "invalid token");
    }
    let data = match read_body(&shared, id, &headers, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let mut batch = shared.store.batch(id);
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        batch.push(http_line(&host, &tag, line));
    }
    shared.store.commit(&data, &mut batch);
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves %XX escapes are decoded and malformed escapes are kept literally.
    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("this%20is%20a+log"), b"this is a+log");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%e2%9c%93%zz"), "✓%zz".as_bytes());
    }
}
