//! Token errors: what went wrong when asking Entra ID for an access token, and how a
//! collector should react (fatal configuration problem, transient outage, or throttling).
//!
//! Entra answers failures with `{"error","error_description","error_codes"}`; the `AADSTS`
//! number inside decides the class (management-activity-api.md §3.4). No variant ever holds a
//! secret, a private key, an assertion or a token.

use std::time::Duration;

/// How a token failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenErrorClass {
    /// Configuration or consent problem: retrying will not help; alert an operator.
    Fatal,
    /// Identity-service hiccup, 5xx or network trouble: retry with backoff.
    Transient,
    /// The tenant is throttled at the token endpoint (AADSTS90055): back off.
    Throttled,
}

/// AADSTS codes that mean the credential or the app registration is wrong.
const FATAL_AADSTS: &[u32] = &[
    7_000_215, // invalid client secret
    7_000_222, // client secret expired
    700_027,   // client assertion signature validation failed
    700_016,   // application not found in tenant
    500_011,   // resource principal not found in tenant
    90_002,    // tenant not found
    70_011,    // invalid scope
    700_022,   // several resources in scope
    901_002,   // `resource` sent to the v2 endpoint
    7_000_218, // neither client_assertion nor client_secret sent
];

/// AADSTS codes for transient identity-service errors.
const TRANSIENT_AADSTS: &[u32] = &[50_033, 90_006, 90_024, 90_033, 90_090];

/// AADSTS code for throttling at the token endpoint.
const THROTTLED_AADSTS: u32 = 90_055;

/// Classifies a token failure from its AADSTS code, falling back on the HTTP status and the
/// OAuth `error` string when the code is unknown or absent.
pub fn classify_token_error(aadsts: Option<u32>, status: u16, error: &str) -> TokenErrorClass {
    if let Some(code) = aadsts {
        if code == THROTTLED_AADSTS {
            return TokenErrorClass::Throttled;
        }
        if FATAL_AADSTS.contains(&code) {
            return TokenErrorClass::Fatal;
        }
        if TRANSIENT_AADSTS.contains(&code) {
            return TokenErrorClass::Transient;
        }
    }
    match status {
        429 => TokenErrorClass::Throttled,
        408 | 500..=599 => TokenErrorClass::Transient,
        _ if error == "temporarily_unavailable" || error == "server_error" => {
            TokenErrorClass::Transient
        }
        _ => TokenErrorClass::Fatal,
    }
}

/// A failure of the token client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The settings cannot work (bad tenant, unreadable certificate or key). Raised by
    /// [`TokenClient::new`](super::TokenClient::new) before any network use.
    #[error("Invalid token settings for tenant {tenant}: {message}.")]
    InvalidSettings {
        /// Tenant the settings are for.
        tenant: String,
        /// What is wrong, without secret material.
        message: String,
    },
    /// The client assertion could not be signed.
    #[error("Signing the client assertion for tenant {tenant} failed: {message}.")]
    Signing {
        /// Tenant the token was for.
        tenant: String,
        /// The signer's complaint (never contains key material).
        message: String,
    },
    /// Entra rejected the request with an OAuth error body or an error status.
    #[error(
        "Token endpoint {url} refused tenant {tenant}: HTTP {status} {error}{code}: {tidy}",
        code = fmt_code(*.aadsts),
        tidy = tidy_description(*.aadsts, description)
    )]
    Rejected {
        /// Tenant the token was for.
        tenant: String,
        /// Token endpoint URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// OAuth `error` (e.g. `invalid_client`), empty when the body had none.
        error: String,
        /// The AADSTS number, from `error_codes` or the description.
        aadsts: Option<u32>,
        /// `error_description`, or a short excerpt of an unparsable body.
        description: String,
        /// What to do about it.
        class: TokenErrorClass,
        /// `Retry-After`, when the endpoint sent one.
        retry_after: Option<Duration>,
    },
    /// The token endpoint could not be reached or the response was cut off.
    #[error("Token endpoint {url} unreachable for tenant {tenant}: {source}")]
    Transport {
        /// Tenant the token was for.
        tenant: String,
        /// Token endpoint URL.
        url: String,
        /// The HTTP client's error (holds no credentials: they travel in the form body).
        #[source]
        source: reqwest::Error,
    },
    /// A 200 answer that is not a usable token response.
    #[error("Token endpoint {url} sent an unusable answer for tenant {tenant}: {message}.")]
    InvalidResponse {
        /// Tenant the token was for.
        tenant: String,
        /// Token endpoint URL.
        url: String,
        /// What was wrong with it (no token text).
        message: String,
    },
}

fn fmt_code(code: Option<u32>) -> String {
    code.map(|c| format!(" AADSTS{c}")).unwrap_or_default()
}

/// Entra's `error_description` for a log line: without the `AADSTSnnnn: ` prefix the message
/// already shows (it repeats the code), and on one line (Entra appends `Trace ID`,
/// `Correlation ID` and `Timestamp` on lines of their own).
fn tidy_description(code: Option<u32>, description: &str) -> String {
    let mut text = description.trim();
    if let Some(c) = code {
        let prefix = format!("AADSTS{c}:");
        if let Some(rest) = text.strip_prefix(prefix.as_str()) {
            text = rest.trim_start();
        }
    }
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl AuthError {
    /// How to handle this failure.
    pub fn class(&self) -> TokenErrorClass {
        match self {
            AuthError::InvalidSettings { .. } | AuthError::Signing { .. } => TokenErrorClass::Fatal,
            AuthError::Rejected { class, .. } => *class,
            AuthError::Transport { .. } | AuthError::InvalidResponse { .. } => {
                TokenErrorClass::Transient
            }
        }
    }

    /// True when retrying later may succeed (transient or throttled).
    pub fn is_transient(&self) -> bool {
        self.class() != TokenErrorClass::Fatal
    }

    /// The AADSTS code, when Entra sent one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            AuthError::Rejected { aadsts, .. } => *aadsts,
            _ => None,
        }
    }

    /// `Retry-After` sent with the failure, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A fixed label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::InvalidSettings { .. } => "token_invalid_settings",
            AuthError::Signing { .. } => "token_signing",
            AuthError::Rejected { class, .. } => match class {
                TokenErrorClass::Fatal => "token_rejected",
                TokenErrorClass::Transient => "token_transient",
                TokenErrorClass::Throttled => "token_throttled",
            },
            AuthError::Transport { source, .. } if source.is_timeout() => "token_timeout",
            AuthError::Transport { .. } => "token_transport",
            AuthError::InvalidResponse { .. } => "token_invalid_response",
        }
    }
}

/// Finds the AADSTS number: the first of `error_codes`, else `AADSTSnnnn` in the description.
pub(crate) fn extract_aadsts(error_codes: &[u32], description: &str) -> Option<u32> {
    if let Some(code) = error_codes.first() {
        return Some(*code);
    }
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the message names the AADSTS code once and stays on one line.
    #[test]
    fn rejected_message_is_one_line_with_the_code_once() {
        let e = AuthError::Rejected {
            tenant: "t1".into(),
            url: "https://login.example/t1/oauth2/token".into(),
            status: 401,
            error: "invalid_client".into(),
            aadsts: Some(700_027),
            description: "AADSTS700027: Client assertion failed signature validation.\r\nTrace ID: abc\r\nCorrelation ID: def\r\nTimestamp: 2026-11-28 00:00:00Z".into(),
            class: TokenErrorClass::Fatal,
            retry_after: None,
        };
        let text = e.to_string();
        assert_eq!(text.matches("AADSTS700027").count(), 1, "{text}");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        assert!(
            text.ends_with("AADSTS700027: Client assertion failed signature validation.; Trace ID: abc; Correlation ID: def; Timestamp: 2026-11-28 00:00:00Z"),
            "{text}"
        );
    }

    // Proves the documented AADSTS codes land in the documented classes.
    #[test]
    fn documented_codes_are_classified() {
        for code in [
            7_000_215, 7_000_222, 700_027, 700_016, 500_011, 90_002, 70_011, 700_022, 901_002,
            7_000_218,
        ] {
            assert_eq!(
                classify_token_error(Some(code), 400, "invalid_client"),
                TokenErrorClass::Fatal,
                "{code}"
            );
        }
        for code in [50_033, 90_006, 90_024, 90_033, 90_090] {
            assert_eq!(
                classify_token_error(Some(code), 400, "x"),
                TokenErrorClass::Transient,
                "{code}"
            );
        }
        assert_eq!(
            classify_token_error(Some(90_055), 400, "x"),
            TokenErrorClass::Throttled
        );
        assert_eq!(
            classify_token_error(None, 503, ""),
            TokenErrorClass::Transient
        );
        assert_eq!(
            classify_token_error(Some(12_345), 400, "invalid_request"),
            TokenErrorClass::Fatal
        );
    }

    // Proves the code is taken from error_codes first and from the description otherwise.
    #[test]
    fn aadsts_is_extracted() {
        assert_eq!(extract_aadsts(&[7_000_222], "AADSTS1: x"), Some(7_000_222));
        assert_eq!(
            extract_aadsts(&[], "AADSTS700016: Application not found"),
            Some(700_016)
        );
        assert_eq!(extract_aadsts(&[], "no code here"), None);
    }
}
