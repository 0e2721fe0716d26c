//! Entry points for the fuzz targets in `fuzz/` (hidden from the docs; not a stable API).
//!
//! The token endpoint's answer is parsed inside [`TokenClient`]'s private fetch; this exposes
//! exactly that parsing step, without the HTTP round trip, so a fuzzer can drive it directly.

use std::time::{Duration, Instant};

use super::{AccessToken, AuthError, TokenClient};

/// Interprets a token endpoint answer as [`TokenClient::token`] would after the request:
/// `status` and `body` as received, the request taken to have left just now.
pub fn interpret_token_response(
    client: &TokenClient,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<AccessToken, AuthError> {
    client.interpret(status, retry_after, body, Instant::now())
}
