//! Entry points for the fuzz targets in `fuzz/` (hidden from the docs; not a stable API).
//!
//! The listing's next-page handling and the error-body reader are private steps of
//! [`ApiClient::list_content`] and friends; these wrappers expose exactly those steps, without
//! the HTTP round trip, so a fuzzer can drive them directly.

use reqwest::header::HeaderMap;
use url::Url;

use super::{AfCode, ApiClient, ApiError};

/// What [`ApiClient::list_content`] does with one page's headers: `Ok(None)` when there is no
/// next-page link, `Ok(Some(url))` for the next page it would request, `Err` when it refuses
/// the link.
#[allow(clippy::result_large_err)]
pub fn next_page(
    client: &ApiClient,
    current: &Url,
    headers: &HeaderMap,
    content_type: &str,
) -> Result<Option<Url>, ApiError> {
    match super::next_page_link(headers) {
        None => Ok(None),
        Some(raw) => client.next_page_url(current, &raw, content_type).map(Some),
    }
}

/// The AF code and message read from an error response body.
pub fn error_body(body: &[u8]) -> (Option<AfCode>, String) {
    super::parse_error_body(body)
}
