//! The OAuth2 client-credentials token client for the Management Activity API
//! (management-activity-api.md §2–§3).
//!
//! [`TokenClient`] asks Entra ID (or a local fake) for an app-only token, with a client secret
//! or a certificate-signed JWT assertion, against the v1 (`resource=`) or v2
//! (`scope={resource}/.default`) endpoint. Tokens are cached and refreshed when less than
//! [`DEFAULT_REFRESH_MARGIN`] remains; concurrent callers share one refresh (single-flight).
//! After a 401 from the API, [`TokenClient::invalidate`] forces the next call to fetch anew.
//!
//! Secrets (client secret, private key, assertion, access token) are held in `secrecy`
//! wrappers or private fields and never appear in `Debug`, `Display`, logs or errors.

mod assertion;
mod error;
#[doc(hidden)]
pub mod fuzz_hooks;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use url::Url;

pub use assertion::{CertificateError, Thumbprints, thumbprints, thumbprints_of_der};
pub use error::{AuthError, TokenErrorClass, classify_token_error};

use assertion::AssertionSigner;

/// Refresh a cached token when less than this remains (Microsoft's advice: 5 minutes).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Longest lifetime taken from a token answer's `expires_in` (Entra issues 60–90 minutes, at
/// most about a day with continuous access evaluation); a longer claim is cut to this.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest token-endpoint answer we read (a real one is a few kilobytes).
const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;

/// Which Entra token endpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenEndpoint {
    /// `/{tenant}/oauth2/token` with `resource=`.
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope={resource}/.default`.
    #[default]
    V2,
}

/// Signature algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what MSAL has long sent).
    #[default]
    Rs256,
    /// RSASSA-PSS with SHA-256 (shown on the current Entra page).
    Ps256,
}

/// How the app proves its identity.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret (`client_secret=`).
    ClientSecret(SecretString),
    /// A certificate: JWT client assertion signed with `key_pem`.
    Certificate {
        /// PEM of the certificate registered on the app (the first certificate is used).
        cert_pem: String,
        /// PEM of its RSA private key (PKCS#8 or PKCS#1, unencrypted).
        key_pem: SecretString,
        /// Assertion signature algorithm.
        alg: SigningAlg,
        /// Send the SHA-1 thumbprint header `x5t`.
        x5t: bool,
        /// Send the SHA-256 thumbprint header `x5t#S256`.
        x5t_s256: bool,
    },
}

/// Everything the token client needs; the lead maps the configuration onto it.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Authority base URL, e.g. `https://login.microsoftonline.com` (may carry a path prefix).
    pub authority_base: Url,
    /// Tenant GUID or verified domain the token is for.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: Credential,
    /// v1 or v2 endpoint.
    pub endpoint: TokenEndpoint,
    /// Resource, e.g. `https://manage.office.com` (v2 scope is `{resource}/.default`).
    pub resource: String,
}

/// An access token with its expiry and the `roles` it grants.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    expires_at: Instant,
    expires_at_utc: chrono::DateTime<chrono::Utc>,
    roles: Vec<String>,
    serial: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("expires_at", &self.expires_at_utc)
            .field("roles", &self.roles)
            .finish()
    }
}

impl AccessToken {
    /// The bearer token; expose it only to put it in an `Authorization` header.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// When the token expires (wall clock, as computed from `expires_in`).
    pub fn expires_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.expires_at_utc
    }

    /// Time left before expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// The `roles` claim of the token payload (e.g. `ActivityFeed.Read`), decoded without
    /// checking the signature; empty when the token is not a readable JWT. For diagnostics.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
}

/// Fetches and caches app-only access tokens for one tenant.
pub struct TokenClient {
    tenant: String,
    client_id: String,
    resource: String,
    endpoint: TokenEndpoint,
    endpoint_url: Url,
    secret: Option<SecretString>,
    signer: Option<AssertionSigner>,
    http: reqwest::Client,
    refresh_margin: Duration,
    cached: Mutex<Option<AccessToken>>,
    refresh: tokio::sync::Mutex<()>,
    fetched: AtomicU64,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("endpoint_url", &self.endpoint_url.as_str())
            .field("certificate", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// Accepts `3599` and `"3599"` (the v1 endpoint sends numbers as strings).
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("expires_in is not a number")),
    }
}

impl TokenClient {
    /// Checks the settings (tenant shape, certificate and key readable) and builds the client.
    /// Does not touch the network.
    pub fn new(settings: TokenSettings, http: reqwest::Client) -> Result<Self, AuthError> {
        let invalid = |message: String| AuthError::InvalidSettings {
            tenant: settings.tenant.clone(),
            message,
        };
        let tenant_ok = !settings.tenant.is_empty()
            && settings
                .tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !tenant_ok {
            return Err(invalid(
                "tenant must be a GUID or a domain such as contoso.onmicrosoft.com".into(),
            ));
        }
        if settings.client_id.trim().is_empty() {
            return Err(invalid("client_id is empty".into()));
        }
        if settings.resource.trim().is_empty() {
            return Err(invalid("resource is empty".into()));
        }
        if !matches!(settings.authority_base.scheme(), "https" | "http") {
            return Err(invalid("authority_base must be an http(s) URL".into()));
        }
        let path = match settings.endpoint {
            TokenEndpoint::V1 => "oauth2/token",
            TokenEndpoint::V2 => "oauth2/v2.0/token",
        };
        let base = settings.authority_base.as_str().trim_end_matches('/');
        let endpoint_url = Url::parse(&format!("{base}/{}/{path}", settings.tenant))
            .map_err(|e| invalid(format!("token endpoint URL: {e}")))?;

        let (secret, signer) = match settings.credential {
            Credential::ClientSecret(secret) => {
                if secret.expose_secret().is_empty() {
                    return Err(invalid("client secret is empty".into()));
                }
                (Some(secret), None)
            }
            Credential::Certificate {
                cert_pem,
                key_pem,
                alg,
                x5t,
                x5t_s256,
            } => {
                let signer =
                    AssertionSigner::new(&cert_pem, key_pem.expose_secret(), alg, x5t, x5t_s256)
                        .map_err(|m| invalid(format!("certificate credential: {m}")))?;
                (None, Some(signer))
            }
        };
        Ok(TokenClient {
            tenant: settings.tenant,
            client_id: settings.client_id,
            resource: settings.resource,
            endpoint: settings.endpoint,
            endpoint_url,
            secret,
            signer,
            http,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            fetched: AtomicU64::new(0),
        })
    }

    /// Changes how long before expiry a cached token is refreshed (default 5 minutes).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The token endpoint URL (also the assertion audience).
    pub fn endpoint_url(&self) -> &Url {
        &self.endpoint_url
    }

    /// The tenant the tokens are for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// A valid token: the cached one while more than the refresh margin remains, otherwise
    /// a freshly fetched one. Concurrent callers share a single fetch. If a refresh fails
    /// transiently while the cached token is still valid, the cached token is returned.
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        if let Some(t) = self.fresh_cached() {
            return Ok(t);
        }
        let _guard = self.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(t) = self.fresh_cached() {
            return Ok(t);
        }
        match self.fetch().await {
            Ok(token) => {
                *self.lock_cache() = Some(token.clone());
                Ok(token)
            }
            Err(e) => {
                let still_valid = self
                    .lock_cache()
                    .as_ref()
                    .filter(|t| t.remaining() > Duration::from_secs(30))
                    .cloned();
                match still_valid {
                    Some(t) if e.is_transient() => {
                        tracing::warn!(tenant = %self.tenant, error = %e,
                            "Token refresh failed; using the cached token until it expires.");
                        Ok(t)
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// Drops the cached token so the next [`token`](Self::token) call fetches a new one.
    pub fn invalidate(&self) {
        *self.lock_cache() = None;
    }

    /// Drops the cached token only if it is still `token` (so concurrent 401s on one token
    /// cause a single refresh).
    pub fn invalidate_token(&self, token: &AccessToken) {
        let mut cache = self.lock_cache();
        if cache.as_ref().is_some_and(|c| c.serial == token.serial) {
            *cache = None;
        }
    }

    /// How many tokens were fetched from the endpoint so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<AccessToken>> {
        // A poisoned lock only means another thread panicked mid-assignment of an Option;
        // the value is still a valid Option, so keep using it.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_cached(&self) -> Option<AccessToken> {
        self.lock_cache()
            .as_ref()
            .filter(|t| t.remaining() > self.refresh_margin)
            .cloned()
    }

    async fn fetch(&self) -> Result<AccessToken, AuthError> {
        let url = self.endpoint_url.as_str();
        let scope;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
        ];
        match self.endpoint {
            TokenEndpoint::V1 => form.push(("resource", &self.resource)),
            TokenEndpoint::V2 => {
                scope = format!("{}/.default", self.resource.trim_end_matches('/'));
                form.push(("scope", &scope));
            }
        }
        let assertion;
        if let Some(signer) = &self.signer {
            assertion =
                SecretString::from(signer.sign(url, &self.client_id).map_err(|message| {
                    AuthError::Signing {
                        tenant: self.tenant.clone(),
                        message,
                    }
                })?);
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            form.push(("client_assertion", assertion.expose_secret()));
        } else if let Some(secret) = &self.secret {
            form.push(("client_secret", secret.expose_secret()));
        }

        let started = Instant::now();
        let transport = |source: reqwest::Error| AuthError::Transport {
            tenant: self.tenant.clone(),
            url: url.to_string(),
            source: source.without_url(),
        };
        let response = self
            .http
            .post(self.endpoint_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(response, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(transport)?;
        self.interpret(status, retry_after, &body, started)
    }

    /// Turns the token endpoint's answer (status, `Retry-After`, body) into a token or a typed
    /// error; no I/O. `started` is when the request left (the expiry is measured from it).
    fn interpret(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
        started: Instant,
    ) -> Result<AccessToken, AuthError> {
        let url = self.endpoint_url.as_str();
        if !(200..300).contains(&status) {
            let parsed: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
            let description = if parsed.error_description.is_empty() && parsed.error.is_empty() {
                excerpt(body)
            } else {
                parsed.error_description.clone()
            };
            let aadsts = error::extract_aadsts(&parsed.error_codes, &parsed.error_description);
            let class = classify_token_error(aadsts, status, &parsed.error);
            tracing::warn!(tenant = %self.tenant, status, aadsts = ?aadsts, error = %parsed.error,
                "Token request refused.");
            return Err(AuthError::Rejected {
                tenant: self.tenant.clone(),
                url: url.to_string(),
                status,
                error: parsed.error,
                aadsts,
                description,
                class,
                retry_after,
            });
        }

        let invalid = |message: &str| AuthError::InvalidResponse {
            tenant: self.tenant.clone(),
            url: url.to_string(),
            message: message.to_string(),
        };
        let parsed: TokenResponse =
            serde_json::from_slice(body).map_err(|_| invalid("not a JSON token response"))?;
        let access_token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("no access_token"))?;
        let expires_in = parsed.expires_in.ok_or_else(|| invalid("no expires_in"))?;
        // Clamped: a huge `expires_in` would overflow the expiry instants (and a token is
        // never valid that long); refreshing earlier than announced is always safe.
        let lifetime = Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME);
        let roles = decode_roles(&access_token);
        let serial = self.fetched.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(tenant = %self.tenant, expires_in, roles = ?roles, "Fetched an access token.");
        Ok(AccessToken {
            secret: SecretString::from(access_token),
            // Measured from before the request, so the cached expiry is never optimistic.
            expires_at: started + lifetime,
            expires_at_utc: chrono::Utc::now()
                + chrono::Duration::from_std(lifetime - started.elapsed().min(lifetime))
                    .unwrap_or_else(|_| chrono::Duration::zero()),
            roles,
            serial,
        })
    }
}

/// Reads a response body up to `max` bytes (the rest is dropped).
async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
}

/// A short printable excerpt of an unparsable error body.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().is_empty() {
        "empty or unparsable body".into()
    } else {
        format!("unparsable body: {}", text.trim())
    }
}

/// Reads the `roles` claim from a JWT payload without verifying it (diagnostics only).
fn decode_roles(token: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default)]
        roles: Vec<String>,
    }
    let Some(payload) = token.split('.').nth(1) else {
        return Vec::new();
    };
    URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Payload>(&bytes).ok())
        .map(|p| p.roles)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the roles claim is read from an unsigned JWT payload and garbage yields nothing.
    #[test]
    fn roles_are_decoded_without_verification() {
        let payload =
            URL_SAFE_NO_PAD.encode(r#"{"roles":["ActivityFeed.Read","ServiceHealth.Read"]}"#);
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(
            decode_roles(&token),
            vec!["ActivityFeed.Read", "ServiceHealth.Read"]
        );
        assert!(decode_roles("opaque-token").is_empty());
    }

    // Proves expires_in parses from a number and from a string.
    #[test]
    fn expires_in_number_or_string() {
        let a: TokenResponse =
            serde_json::from_str(r#"{"access_token":"x","expires_in":"3599"}"#).unwrap();
        let b: TokenResponse =
            serde_json::from_str(r#"{"access_token":"x","expires_in":3599}"#).unwrap();
        assert_eq!(a.expires_in, Some(3599));
        assert_eq!(b.expires_in, Some(3599));
    }
}
