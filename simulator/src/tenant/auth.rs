//! Fake Microsoft Entra ID token endpoints (v1 and v2, client secret and certificate client
//! assertion) and verification of the access tokens the simulator issues.
//!
//! Issued tokens are HS256 JWTs signed with a per-run random key and carry the claims the
//! Activity API checks (`tid`, `roles`, `aud`, `exp`). Assertions are verified the way Entra
//! does: `alg` RS256/PS256, `x5t`/`x5t#S256` naming a registered certificate, signature,
//! `aud` = the token URL, `iss` = `sub` = client id, `nbf <= now < exp`, `jti` not replayed.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha1::Digest;

use super::config::{AppSpec, ROLE_ACTIVITY_FEED_READ, SimConfig};
use super::generator::{guid, hash_str};
use super::state::{Env, SimState};

/// Which token endpoint was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenVersion {
    V1,
    V2,
}

/// Problems with configured certificates, found at start.
#[derive(Debug, thiserror::Error)]
pub enum CertConfigError {
    /// A registered certificate is not valid PEM/X.509.
    #[error("tenant {tenant}, app {client_id}: certificate not usable: {reason}")]
    Invalid {
        /// Tenant.
        tenant: String,
        /// App.
        client_id: String,
        /// Why.
        reason: String,
    },
}

/// One registered certificate, ready for assertion checks.
#[derive(Clone)]
pub(crate) struct CertKey {
    x5t: String,
    x5t_s256: String,
    key: DecodingKey,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

/// base64url-no-pad SHA-1 and SHA-256 thumbprints of a DER certificate.
pub fn thumbprints(der: &[u8]) -> (String, String) {
    let s1 = sha1::Sha1::digest(der);
    let s256 = sha2::Sha256::digest(der);
    (URL_SAFE_NO_PAD.encode(s1), URL_SAFE_NO_PAD.encode(s256))
}

fn cert_keys(pem: &str) -> Result<Vec<CertKey>, String> {
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("bad PEM: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("bad X.509: {e}"))?;
        let spki = cert.public_key();
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => {}
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                return Err(format!(
                    "RSA key of {} bits; at least 2048 required",
                    rsa.key_size()
                ));
            }
            _ => return Err("not an RSA key".to_owned()),
        }
        // For RSA the SubjectPublicKeyInfo bit string is the PKCS#1 RSAPublicKey.
        let key = DecodingKey::from_rsa_der(&spki.subject_public_key.data);
        let (x5t, x5t_s256) = thumbprints(der.as_ref());
        out.push(CertKey { x5t, x5t_s256, key });
    }
    if out.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(out)
}

/// Registered certificates per (tenant index, client id lower case).
pub(crate) type AppKeys = HashMap<(usize, String), Vec<CertKey>>;

pub(crate) fn load_app_keys(cfg: &SimConfig) -> Result<AppKeys, CertConfigError> {
    let mut keys = HashMap::new();
    for (ti, t) in cfg.tenants.iter().enumerate() {
        for app in &t.apps {
            if let Some(pem) = &app.cert_pem {
                let k = cert_keys(pem).map_err(|reason| CertConfigError::Invalid {
                    tenant: t.tenant_id.clone(),
                    client_id: app.client_id.clone(),
                    reason,
                })?;
                keys.insert((ti, app.client_id.to_ascii_lowercase()), k);
            }
        }
    }
    Ok(keys)
}

/// A token-endpoint error (Entra's JSON shape).
#[derive(Debug)]
pub(crate) struct TokenError {
    pub(crate) status: u16,
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    pub(crate) description: String,
}

impl TokenError {
    fn new(
        status: u16,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> TokenError {
        TokenError {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    pub(crate) fn body(&self, now: DateTime<Utc>) -> String {
        let trace = guid(hash_str(&self.description) ^ now.timestamp() as u64);
        serde_json::json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}\r\nTimestamp: {}", self.code, self.description, now.format("%Y-%m-%d %H:%M:%SZ")),
            "error_codes": [self.code],
            "timestamp": now.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": trace,
            "correlation_id": trace,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        })
        .to_string()
    }
}

/// Claims of an issued access token.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub(crate) struct AccessClaims {
    pub(crate) aud: String,
    pub(crate) iss: String,
    pub(crate) iat: i64,
    pub(crate) nbf: i64,
    pub(crate) exp: i64,
    pub(crate) ver: String,
    pub(crate) tid: String,
    pub(crate) roles: Vec<String>,
    pub(crate) appid: String,
    pub(crate) appidacr: String,
    pub(crate) oid: String,
    pub(crate) sub: String,
    pub(crate) idp: String,
}

/// Token signing key of one run.
pub(crate) struct TokenKey {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub(crate) fn random() -> TokenKey {
        let secret: [u8; 32] = rand::random();
        TokenKey {
            enc: EncodingKey::from_secret(&secret),
            dec: DecodingKey::from_secret(&secret),
        }
    }
}

/// Everything the token endpoint needs from the request.
pub(crate) struct TokenRequest<'a> {
    pub(crate) version: TokenVersion,
    pub(crate) tenant_segment: &'a str,
    /// Absolute URLs (without query) the client may have used; `aud` must equal one.
    pub(crate) endpoint_urls: Vec<String>,
    pub(crate) form: HashMap<String, String>,
    pub(crate) basic_auth: Option<(String, String)>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct AssertionClaims {
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn bad_assertion(msg: impl Into<String>) -> TokenError {
    TokenError::new(401, "invalid_client", 700027, msg)
}

#[allow(clippy::too_many_arguments)]
fn check_assertion(
    env: &Env,
    keys: &AppKeys,
    state: &mut SimState,
    tenant: usize,
    app: &AppSpec,
    req: &TokenRequest<'_>,
    assertion: &str,
    now: DateTime<Utc>,
) -> Result<(), TokenError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
        bad_assertion(format!(
            "Client assertion failed signature validation. The client assertion is malformed: {e}."
        ))
    })?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(bad_assertion(format!(
            "Client assertion failed signature validation. Unsupported algorithm {:?}; use RS256 or PS256.",
            header.alg
        )));
    }
    if header.x5t.is_none() && header.x5t_s256.is_none() {
        return Err(bad_assertion(
            "Client assertion failed signature validation. The header carries neither 'x5t' nor 'x5t#S256'.",
        ));
    }
    let registered = keys
        .get(&(tenant, app.client_id.to_ascii_lowercase()))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let shown = header
        .x5t
        .clone()
        .or(header.x5t_s256.clone())
        .unwrap_or_default();
    let cert = registered
        .iter()
        .find(|k| {
            header.x5t.as_ref().is_none_or(|t| *t == k.x5t)
                && header.x5t_s256.as_ref().is_none_or(|t| *t == k.x5t_s256)
        })
        .ok_or_else(|| {
            bad_assertion(format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{shown}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]",
                app.client_id
            ))
        })?;
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &cert.key, &validation).map_err(|e| {
        bad_assertion(format!(
            "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value ({e}), Thumbprint of key used by client: '{shown}']"
        ))
    })?;
    let c = data.claims;
    let aud_ok = match &c.aud {
        Some(serde_json::Value::String(a)) => req.endpoint_urls.iter().any(|u| u == a),
        Some(serde_json::Value::Array(items)) => {
            items.len() == 1
                && items[0]
                    .as_str()
                    .is_some_and(|a| req.endpoint_urls.iter().any(|u| u == a))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(bad_assertion(format!(
            "The audience claim value is invalid: {}. The audience must be the token endpoint URL {}.",
            c.aud
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(missing)".to_owned()),
            req.endpoint_urls
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        )));
    }
    let iss_ok = c
        .iss
        .as_deref()
        .is_some_and(|i| i.eq_ignore_ascii_case(&app.client_id));
    let sub_ok = c
        .sub
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(&app.client_id));
    if !iss_ok || !sub_ok {
        return Err(bad_assertion(format!(
            "Client assertion 'iss' and 'sub' must both equal the client id {}.",
            app.client_id
        )));
    }
    let leeway = i64::try_from(env.cfg.assertion_leeway_secs).unwrap_or(0);
    let ts = now.timestamp();
    let (Some(nbf), Some(exp)) = (c.nbf, c.exp) else {
        return Err(bad_assertion(
            "Client assertion must carry 'nbf' and 'exp'.",
        ));
    };
    if ts + leeway < nbf {
        return Err(bad_assertion(format!(
            "Client assertion is not yet valid: nbf {nbf} is after the current time {ts}."
        )));
    }
    if ts - leeway >= exp {
        return Err(bad_assertion(format!(
            "Client assertion has expired: exp {exp} is not after the current time {ts}."
        )));
    }
    let Some(jti) = c.jti.filter(|j| !j.is_empty()) else {
        return Err(bad_assertion("Client assertion must carry a unique 'jti'."));
    };
    if !state
        .jtis
        .insert(format!("{}|{jti}", app.client_id.to_ascii_lowercase()))
    {
        return Err(bad_assertion(format!(
            "The jti '{jti}' has already been used. Each client assertion must carry a new jti (replay)."
        )));
    }
    Ok(())
}

/// Handle one token request; returns the JSON body on success.
pub(crate) fn issue_token(
    env: &Env,
    keys: &AppKeys,
    token_key: &TokenKey,
    state: &mut SimState,
    req: &TokenRequest<'_>,
    now: DateTime<Utc>,
) -> Result<String, TokenError> {
    let cfg = &env.cfg;
    let seg = req.tenant_segment;
    let tenant = cfg
        .tenants
        .iter()
        .position(|t| t.tenant_id.eq_ignore_ascii_case(seg) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(seg)))
        .ok_or_else(|| {
            TokenError::new(400, "invalid_request", 90002, format!("Tenant '{seg}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."))
        })?;
    let spec = &cfg.tenants[tenant];
    let form = &req.form;
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant.is_empty() {
        return Err(TokenError::new(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        ));
    }
    if grant != "client_credentials" {
        return Err(TokenError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| req.basic_auth.as_ref().map(|(u, _)| u.clone()))
        .unwrap_or_default();
    if client_id.is_empty() {
        return Err(TokenError::new(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    }
    let resource_norm = cfg.resource.trim_end_matches('/');
    match req.version {
        TokenVersion::V1 => {
            let resource = form.get("resource").map(String::as_str).unwrap_or_default();
            if resource.is_empty() {
                return Err(TokenError::new(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'resource'.",
                ));
            }
            if resource.trim_end_matches('/') != resource_norm {
                return Err(TokenError::new(
                    400,
                    "invalid_resource",
                    500011,
                    format!(
                        "The resource principal named {resource} was not found in the tenant named {}.",
                        spec.tenant_id
                    ),
                ));
            }
        }
        TokenVersion::V2 => {
            if form.contains_key("resource") {
                return Err(TokenError::new(
                    400,
                    "invalid_request",
                    901002,
                    "The 'resource' request parameter is not supported.",
                ));
            }
            let scope = form.get("scope").map(String::as_str).unwrap_or_default();
            if scope.trim().is_empty() {
                return Err(TokenError::new(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'scope'.",
                ));
            }
            let scopes: Vec<&str> = scope.split_whitespace().collect();
            if scopes.len() > 1 {
                return Err(TokenError::new(
                    400,
                    "invalid_scope",
                    70011,
                    format!(
                        "The provided request must include a 'scope' input parameter naming exactly one resource; got '{scope}'."
                    ),
                ));
            }
            let Some(res) = scopes[0].strip_suffix("/.default") else {
                return Err(TokenError::new(
                    400,
                    "invalid_scope",
                    1002012,
                    format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                ));
            };
            if res.trim_end_matches('/') != resource_norm {
                return Err(TokenError::new(
                    400,
                    "invalid_resource",
                    500011,
                    format!(
                        "The resource principal named {res} was not found in the tenant named {}.",
                        spec.tenant_id
                    ),
                ));
            }
        }
    }
    let app = spec
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(&client_id))
        .ok_or_else(|| {
            TokenError::new(400, "unauthorized_client", 700016, format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", spec.tenant_id))
        })?;
    let appidacr;
    if let Some(assertion) = form.get("client_assertion") {
        let kind = form
            .get("client_assertion_type")
            .map(String::as_str)
            .unwrap_or_default();
        if kind != ASSERTION_TYPE {
            return Err(TokenError::new(
                400,
                "invalid_request",
                7000216,
                format!("'client_assertion_type' must be '{ASSERTION_TYPE}'."),
            ));
        }
        check_assertion(env, keys, state, tenant, app, req, assertion, now)?;
        appidacr = "2";
    } else {
        let given = form
            .get("client_secret")
            .cloned()
            .or_else(|| match req.version {
                TokenVersion::V2 => req.basic_auth.as_ref().map(|(_, p)| p.clone()),
                TokenVersion::V1 => None,
            });
        let Some(given) = given else {
            return Err(TokenError::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        };
        let ok = app
            .secret
            .as_ref()
            .is_some_and(|s| constant_time_eq(s.as_bytes(), given.as_bytes()));
        if !ok {
            return Err(TokenError::new(
                401,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.client_id
                ),
            ));
        }
        if app.secret_expires_at.is_some_and(|e| e <= now) {
            return Err(TokenError::new(
                401,
                "invalid_client",
                7000222,
                format!(
                    "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app.",
                    app.client_id
                ),
            ));
        }
        appidacr = "1";
    }
    let lifetime = i64::try_from(cfg.token_lifetime_secs).unwrap_or(3599);
    let iat = now.timestamp();
    let exp = iat + lifetime;
    let sp_oid = guid(hash_str(&app.client_id) ^ hash_str(&spec.tenant_id));
    let claims = AccessClaims {
        aud: cfg.resource.clone(),
        iss: format!("https://sts.windows.net/{}/", spec.tenant_id),
        iat,
        nbf: iat,
        exp,
        ver: "1.0".to_owned(),
        tid: spec.tenant_id.clone(),
        roles: app.roles.clone(),
        appid: app.client_id.clone(),
        appidacr: appidacr.to_owned(),
        oid: sp_oid.clone(),
        sub: sp_oid,
        idp: format!("https://sts.windows.net/{}/", spec.tenant_id),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("m365-sim".to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &token_key.enc).map_err(|e| {
        TokenError::new(
            500,
            "server_error",
            90033,
            format!("Token signing failed: {e}."),
        )
    })?;
    state.tokens_issued += 1;
    *state
        .tokens_by_client
        .entry(app.client_id.clone())
        .or_default() += 1;
    let body = match req.version {
        TokenVersion::V1 => serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "expires_on": exp.to_string(),
            "not_before": iat.to_string(),
            "resource": cfg.resource,
            "access_token": token,
        }),
        TokenVersion::V2 => serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
    };
    Ok(body.to_string())
}

/// Verify a bearer token issued by this simulator. `None` = 401.
pub(crate) fn verify_bearer(
    env: &Env,
    token_key: &TokenKey,
    authorization: Option<&str>,
    now: DateTime<Utc>,
) -> Option<AccessClaims> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<AccessClaims>(token.trim(), &token_key.dec, &validation).ok()?;
    let c = data.claims;
    let resource = env.cfg.resource.trim_end_matches('/');
    if c.aud.trim_end_matches('/') != resource || c.exp <= now.timestamp() {
        return None;
    }
    Some(c)
}

/// Whether the token carries `ActivityFeed.Read`.
pub(crate) fn has_read_role(c: &AccessClaims) -> bool {
    c.roles.iter().any(|r| r == ROLE_ACTIVITY_FEED_READ)
}

/// Decode `Authorization: Basic` (v2 allows the secret there).
pub(crate) fn basic_auth(header: Option<&str>) -> Option<(String, String)> {
    let (scheme, rest) = header?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(u), dec(p)))
}
