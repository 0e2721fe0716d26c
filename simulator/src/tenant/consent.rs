//! Fake Entra ID admin consent: the authorization-code flow a multi-tenant app uses to be
//! consented in a customer tenant (management-activity-api.md §3.1), without a browser.
//!
//! - `GET /{tenant}/oauth2/authorize` (v1: `response_type=code`, `client_id`, `redirect_uri`,
//!   `resource`, optional `state`, `prompt`) and `GET /{tenant}/oauth2/v2.0/authorize` (v2:
//!   `scope` naming the Activity API resource instead of `resource`). `{tenant}` may be
//!   `common`/`organizations`/`consumers` or a tenant id or verified domain. There is no sign-in
//!   page: an administrator of the *consenting tenant* consents at once and the answer is a
//!   `302` to `redirect_uri?code=…&state=…` (errors go there too, as `error=…`, once the
//!   redirect URI is known to be usable; otherwise a `400` page).
//! - The consenting tenant is the one in the path; for `common` it is the tenant named by
//!   `login_hint` (`admin@contoso.onmicrosoft.com`) or `domain_hint`, else the one set with
//!   [`Simulator::set_consenting_tenant`], else the first configured tenant.
//! - The app must be listed in that tenant's [`TenantSpec::apps`](super::TenantSpec): the
//!   simulator cannot register service principals at run time, so `apps` stands for "apps an
//!   administrator may consent to".
//! - Codes are single use, expire after [`CODE_LIFETIME_SECS`], and are bound to the client id
//!   and the exact redirect URI. They are redeemed on the existing token endpoints with
//!   `grant_type=authorization_code` (`code`, `redirect_uri`, `client_id`, and the client's
//!   secret or certificate assertion), which answer a token of the consenting tenant: its
//!   claims carry that tenant's `tid` and the app's roles there. (Real Entra would issue a
//!   delegated token for the administrator; the simulator issues its usual app-only token,
//!   which is what the product reads `tid` from.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use url::Url;

use super::auth::{self, TokenError, TokenRequest, TokenVersion};
use super::{Shared, SimError, Simulator};

/// How long an authorization code can be redeemed (Entra: about 10 minutes).
pub const CODE_LIFETIME_SECS: i64 = 600;

/// Tenant path segments that mean "the tenant of whoever signs in".
const MULTI_TENANT_SEGMENTS: [&str; 3] = ["common", "organizations", "consumers"];

/// Scopes that may accompany the resource scope in a v2 request.
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "offline_access", "email"];

/// One consent given through the authorize endpoint, as seen by tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentGrant {
    /// The consenting tenant.
    pub tenant_id: String,
    /// The app consented to.
    pub client_id: String,
    /// Where the code was sent.
    pub redirect_uri: String,
    /// When the code was issued (server clock).
    pub issued_at: DateTime<Utc>,
    /// Whether the code has been exchanged for a token.
    pub redeemed: bool,
}

/// An issued authorization code.
struct Grant {
    tenant: usize,
    client_id: String,
    redirect_uri: String,
    issued_at: DateTime<Utc>,
    redeemed: bool,
}

#[derive(Default)]
struct Inner {
    /// Tenant index that consents at `/common` when the request names none.
    consenting_tenant: Option<usize>,
    /// Codes by value, in issue order kept by `order`.
    codes: HashMap<String, Grant>,
    order: Vec<String>,
}

/// Consent state of one simulator run.
#[derive(Default)]
pub(crate) struct ConsentState {
    inner: Mutex<Inner>,
}

impl ConsentState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data; keep serving after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The authorize routes, merged into the tenant router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/{tenant}/oauth2/authorize", get(authorize_v1))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_v2))
}

/// Whether a token request is an authorization-code redemption.
pub(crate) fn is_code_grant(form: &HashMap<String, String>) -> bool {
    form.get("grant_type").map(String::as_str) == Some("authorization_code")
}

impl Simulator {
    /// Authorize endpoint URL (`/{tenant}/oauth2/authorize`, or `/oauth2/v2.0/authorize`
    /// with `v2`); pass `common` for the multi-tenant form.
    pub fn authorize_url(&self, tenant: &str, v2: bool) -> Url {
        let path = if v2 {
            "oauth2/v2.0/authorize"
        } else {
            "oauth2/authorize"
        };
        let mut u = self.shared.base_url.clone();
        u.set_path(&format!("{tenant}/{path}"));
        u
    }

    /// Choose the tenant whose administrator consents at `/common/…/authorize` when the
    /// request carries no `login_hint`/`domain_hint` (default: the first tenant).
    pub fn set_consenting_tenant(&self, tenant: &str) -> Result<(), SimError> {
        let ti = self
            .shared
            .env
            .tenant_index(tenant)
            .ok_or_else(|| SimError::UnknownTenant(tenant.to_owned()))?;
        self.shared.consent.lock().consenting_tenant = Some(ti);
        Ok(())
    }

    /// Every consent given so far, oldest first.
    pub fn consent_grants(&self) -> Vec<ConsentGrant> {
        let tenants = &self.shared.env.cfg.tenants;
        let st = self.shared.consent.lock();
        st.order
            .iter()
            .filter_map(|code| st.codes.get(code))
            .map(|g| ConsentGrant {
                tenant_id: tenants[g.tenant].tenant_id.clone(),
                client_id: g.client_id.clone(),
                redirect_uri: g.redirect_uri.clone(),
                issued_at: g.issued_at,
                redeemed: g.redeemed,
            })
            .collect()
    }
}

async fn authorize_v1(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
) -> Response {
    authorize(&sh, TokenVersion::V1, &tenant, &uri)
}

async fn authorize_v2(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    uri: Uri,
) -> Response {
    authorize(&sh, TokenVersion::V2, &tenant, &uri)
}

/// An error shown on Entra's own page because the redirect URI cannot be used.
fn error_page(status: StatusCode, code: u32, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
         <h1>Sorry, but we're having trouble signing you in.</h1>\
         <p>AADSTS{code}: {}</p></body></html>",
        html_escape(message)
    );
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A `302` to `target`.
fn redirect(target: &Url) -> Response {
    let mut res = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(target.as_str()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// `redirect_uri` with the given answer parameters appended (and `state` echoed).
fn answer(redirect_uri: &Url, pairs: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut target = redirect_uri.clone();
    {
        let mut q = target.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
    }
    redirect(&target)
}

fn error_answer(
    redirect_uri: &Url,
    error: &str,
    code: u32,
    description: &str,
    state: Option<&str>,
) -> Response {
    let description = format!("AADSTS{code}: {description}");
    let codes = code.to_string();
    answer(
        redirect_uri,
        &[
            ("error", error),
            ("error_description", &description),
            ("error_codes", &codes),
        ],
        state,
    )
}

fn authorize(sh: &Shared, version: TokenVersion, segment: &str, uri: &Uri) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let get = |name: &str| q.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let cfg = &sh.env.cfg;

    // Without a usable client id and redirect URI, errors can only be shown on the page.
    let Some(client_id) = get("client_id") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if !cfg.tenants.iter().any(|t| {
        t.apps
            .iter()
            .any(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }) {
        return error_page(
            StatusCode::BAD_REQUEST,
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory. \
                 This can happen if the application has not been installed by the administrator \
                 of the tenant or consented to by any user in the tenant."
            ),
        );
    }
    let Some(raw_redirect) = get("redirect_uri") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            900144,
            "The request body must contain the following parameter: 'redirect_uri'.",
        );
    };
    let redirect_uri = match Url::parse(raw_redirect) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => u,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                50011,
                &format!(
                    "The redirect URI '{raw_redirect}' specified in the request does not match \
                     the redirect URIs configured for the application '{client_id}'."
                ),
            );
        }
    };
    let state = get("state");

    match get("response_type") {
        Some("code") => {}
        other => {
            return error_answer(
                &redirect_uri,
                "unsupported_response_type",
                700054,
                &format!(
                    "response_type '{}' is not enabled for the application; use 'code'.",
                    other.unwrap_or_default()
                ),
                state,
            );
        }
    }
    if let Some(mode) = get("response_mode")
        && mode != "query"
    {
        return error_answer(
            &redirect_uri,
            "invalid_request",
            900144,
            &format!("response_mode '{mode}' is not supported by the simulator; use 'query'."),
            state,
        );
    }
    let resource_norm = cfg.resource.trim_end_matches('/');
    match version {
        TokenVersion::V1 => {
            let Some(resource) = get("resource") else {
                return error_answer(
                    &redirect_uri,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'resource'.",
                    state,
                );
            };
            if resource.trim_end_matches('/') != resource_norm {
                return error_answer(
                    &redirect_uri,
                    "invalid_resource",
                    500011,
                    &format!(
                        "The resource principal named {resource} was not found in the tenant."
                    ),
                    state,
                );
            }
        }
        TokenVersion::V2 => {
            let scope = get("scope").unwrap_or_default();
            let mut resource_scopes = 0;
            let mut bad = Vec::new();
            for s in scope.split_whitespace() {
                if OIDC_SCOPES.contains(&s) {
                    continue;
                }
                match s.rsplit_once('/') {
                    Some((res, perm))
                        if res.trim_end_matches('/') == resource_norm && !perm.is_empty() =>
                    {
                        resource_scopes += 1;
                    }
                    _ => bad.push(s),
                }
            }
            if resource_scopes == 0 || !bad.is_empty() {
                return error_answer(
                    &redirect_uri,
                    "invalid_scope",
                    70011,
                    &format!(
                        "The provided value for the input parameter 'scope' is not valid: '{scope}'. \
                         Name the Activity API resource, e.g. {resource_norm}/.default."
                    ),
                    state,
                );
            }
        }
    }

    let Some(tenant) = consenting_tenant(sh, segment, get("login_hint"), get("domain_hint")) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            90002,
            &format!(
                "Tenant '{segment}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        );
    };
    let spec = &cfg.tenants[tenant];
    if !spec
        .apps
        .iter()
        .any(|a| a.client_id.eq_ignore_ascii_case(client_id))
    {
        return error_answer(
            &redirect_uri,
            "access_denied",
            65004,
            &format!(
                "The administrator of tenant {} declined to consent to application '{client_id}' \
                 (the simulator consents only to apps listed in the tenant's apps).",
                spec.tenant_id
            ),
            state,
        );
    }

    let code = new_code();
    let now = sh.now();
    {
        let mut st = sh.consent.lock();
        st.codes.insert(
            code.clone(),
            Grant {
                tenant,
                client_id: client_id.to_ascii_lowercase(),
                redirect_uri: raw_redirect.to_owned(),
                issued_at: now,
                redeemed: false,
            },
        );
        st.order.push(code.clone());
    }
    tracing::debug!(tenant = %spec.tenant_id, client_id, "Admin consent granted.");
    let session = super::generator::guid(super::generator::hash_str(&code));
    let mut pairs = vec![("code", code.as_str()), ("session_state", session.as_str())];
    if version == TokenVersion::V1 && get("prompt") == Some("admin_consent") {
        pairs.push(("admin_consent", "True"));
    }
    answer(&redirect_uri, &pairs, state)
}

/// The tenant whose administrator consents.
fn consenting_tenant(
    sh: &Shared,
    segment: &str,
    login_hint: Option<&str>,
    domain_hint: Option<&str>,
) -> Option<usize> {
    let by_name = |name: &str| {
        sh.env.cfg.tenants.iter().position(|t| {
            t.tenant_id.eq_ignore_ascii_case(name)
                || t.domains.iter().any(|d| d.eq_ignore_ascii_case(name))
                || t.primary_domain().eq_ignore_ascii_case(name)
        })
    };
    if !MULTI_TENANT_SEGMENTS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(segment))
    {
        return by_name(segment);
    }
    if let Some(domain) = login_hint.and_then(|h| h.rsplit_once('@')).map(|(_, d)| d) {
        return by_name(domain);
    }
    if let Some(domain) = domain_hint {
        return by_name(domain);
    }
    let chosen = sh.consent.lock().consenting_tenant;
    Some(chosen.unwrap_or(0)).filter(|&i| i < sh.env.cfg.tenants.len())
}

/// A fresh, unguessable authorization code.
fn new_code() -> String {
    let bytes: [u8; 48] = rand::random();
    format!("0.SIM{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn invalid_grant(code: u32, description: impl Into<String>) -> TokenError {
    TokenError {
        status: 400,
        error: "invalid_grant",
        code,
        description: description.into(),
    }
}

/// Redeem an authorization code at a token endpoint: check the code against the request,
/// then issue the consenting tenant's token through the usual client authentication (secret or
/// assertion). The code is spent only when a token is issued.
pub(crate) fn redeem(
    sh: &Shared,
    req: &TokenRequest<'_>,
    now: DateTime<Utc>,
) -> Result<String, TokenError> {
    let form = &req.form;
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let Some(code) = field("code") else {
        return Err(TokenError {
            status: 400,
            error: "invalid_request",
            code: 900144,
            description: "The request body must contain the following parameter: 'code'."
                .to_owned(),
        });
    };
    let client_id = field("client_id")
        .map(str::to_owned)
        .or_else(|| req.basic_auth.as_ref().map(|(u, _)| u.clone()))
        .unwrap_or_default();
    let (tenant, redirect_uri) = {
        let mut st = sh.consent.lock();
        let Some(grant) = st.codes.get_mut(code) else {
            return Err(invalid_grant(
                70000,
                "The provided authorization code or refresh token has expired or is invalid.",
            ));
        };
        if grant.redeemed {
            return Err(invalid_grant(
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code.",
            ));
        }
        if now - grant.issued_at > Duration::seconds(CODE_LIFETIME_SECS) {
            return Err(invalid_grant(
                70008,
                "The provided authorization code or refresh token has expired due to inactivity.",
            ));
        }
        if !grant.client_id.eq_ignore_ascii_case(&client_id) {
            return Err(invalid_grant(
                70000,
                "The authorization code was issued to a different application.",
            ));
        }
        let given = field("redirect_uri").unwrap_or_default();
        if given != grant.redirect_uri {
            return Err(invalid_grant(
                500112,
                format!(
                    "The reply address '{given}' does not match the reply address '{}' provided \
                     when requesting the authorization code.",
                    grant.redirect_uri
                ),
            ));
        }
        // Reserve the code so a concurrent redemption cannot also succeed.
        grant.redeemed = true;
        (grant.tenant, grant.redirect_uri.clone())
    };
    let spec = &sh.env.cfg.tenants[tenant];
    let segment = req.tenant_segment;
    let segment_ok = MULTI_TENANT_SEGMENTS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(segment))
        || spec.tenant_id.eq_ignore_ascii_case(segment)
        || spec.domains.iter().any(|d| d.eq_ignore_ascii_case(segment));
    let result = if segment_ok {
        let mut inner_form = form.clone();
        inner_form.insert("grant_type".to_owned(), "client_credentials".to_owned());
        inner_form.remove("code");
        inner_form.remove("redirect_uri");
        let resource = sh.env.cfg.resource.trim_end_matches('/').to_owned();
        match req.version {
            TokenVersion::V1 => {
                inner_form.insert("resource".to_owned(), resource);
            }
            TokenVersion::V2 => {
                inner_form.remove("resource");
                inner_form.insert("scope".to_owned(), format!("{resource}/.default"));
            }
        }
        let inner = TokenRequest {
            version: req.version,
            tenant_segment: &spec.tenant_id,
            endpoint_urls: req.endpoint_urls.clone(),
            form: inner_form,
            basic_auth: req.basic_auth.clone(),
        };
        let mut st = sh.lock();
        auth::issue_token(&sh.env, &sh.keys, &sh.token_key, &mut st, &inner, now)
    } else {
        Err(invalid_grant(
            70000,
            format!(
                "The authorization code was issued for tenant {}, not '{segment}'.",
                spec.tenant_id
            ),
        ))
    };
    if result.is_err() {
        // Not spent: the client may retry with the right credentials.
        let mut st = sh.consent.lock();
        if let Some(g) = st.codes.get_mut(code)
            && g.redirect_uri == redirect_uri
        {
            g.redeemed = false;
        }
    }
    result
}
