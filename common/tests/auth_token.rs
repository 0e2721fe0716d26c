//! Tests of the token client against a local fake Entra token endpoint (axum on 127.0.0.1):
//! v1/v2 form fields, the certificate assertion (verified with the certificate's public key),
//! thumbprints, caching, refresh before expiry, single-flight, and AADSTS classification.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use m365_common::auth::{
    AuthError, Credential, SigningAlg, TokenClient, TokenEndpoint, TokenErrorClass, TokenSettings,
    thumbprints,
};
use secrecy::{ExposeSecret as _, SecretString};
use sha1::Digest as _;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SECRET: &str = "very-secret-value~123";
const RESOURCE: &str = "https://manage.office.com";

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    form: HashMap<String, String>,
}

/// Scripted answer: status and body.
type Answer = (StatusCode, String);

#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    delay: Mutex<Duration>,
}

struct Fake {
    base: url::Url,
    state: Arc<FakeState>,
}

impl Fake {
    async fn start() -> Fake {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/{tenant}/oauth2/token", post(handle))
            .route("/{tenant}/oauth2/v2.0/token", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            base: url::Url::parse(&format!("http://{addr}")).unwrap(),
            state,
        }
    }

    fn push(&self, status: u16, body: &str) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((StatusCode::from_u16(status).unwrap(), body.to_string()));
    }

    fn set_default(&self, status: u16, body: &str) {
        *self.state.default.lock().unwrap() =
            Some((StatusCode::from_u16(status).unwrap(), body.to_string()));
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    Path(tenant): Path<String>,
    uri: axum::http::Uri,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let n = {
        let mut seen = state.seen.lock().unwrap();
        seen.push(Seen {
            path: uri.path().to_string(),
            form,
        });
        seen.len()
    };
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let scripted = state.script.lock().unwrap().pop_front();
    let (status, body) = scripted
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or_else(|| (StatusCode::OK, v2_ok(&fake_jwt(n, &tenant), 3599)));
    (status, [("content-type", "application/json")], body).into_response()
}

/// A JWT-shaped (unsigned) token whose payload carries `roles`; `n` makes each unique.
fn fake_jwt(n: usize, tenant: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"tid":"{tenant}","roles":["ActivityFeed.Read","ServiceHealth.Read"],"n":{n}}}"#
    ));
    format!("{header}.{payload}.c2ln")
}

fn v2_ok(token: &str, expires_in: u64) -> String {
    format!(
        r#"{{"token_type":"Bearer","expires_in":{expires_in},"ext_expires_in":{expires_in},"access_token":"{token}"}}"#
    )
}

fn settings(fake: &Fake, endpoint: TokenEndpoint, credential: Credential) -> TokenSettings {
    TokenSettings {
        authority_base: fake.base.clone(),
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        credential,
        endpoint,
        resource: RESOURCE.into(),
    }
}

fn secret() -> Credential {
    Credential::ClientSecret(SecretString::from(SECRET))
}

fn http() -> reqwest::Client {
    m365_common::api::http_client(None).unwrap()
}

/// A fresh RSA certificate and its key, both PEM.
fn rsa_cert() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["m365-devo-test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn keys(form: &HashMap<String, String>) -> Vec<&str> {
    let mut k: Vec<&str> = form.keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

// Proves the v1 request carries exactly grant_type, client_id, client_secret and resource,
// and that a v1 answer with string-typed numbers parses (roles decoded too).
#[tokio::test]
async fn v1_secret_request_and_string_numbers() {
    let fake = Fake::start().await;
    let token = fake_jwt(1, TENANT);
    fake.push(
        200,
        &format!(
            r#"{{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"0","expires_on":"1431659094","not_before":"1431655194","resource":"{RESOURCE}","access_token":"{token}"}}"#
        ),
    );
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V1, secret()), http()).unwrap();
    let got = client.token().await.unwrap();

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/{TENANT}/oauth2/token"));
    let form = &seen[0].form;
    assert_eq!(
        keys(form),
        ["client_id", "client_secret", "grant_type", "resource"]
    );
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["resource"], RESOURCE);
    assert_eq!(got.secret().expose_secret(), token);
    assert!(got.remaining() > Duration::from_secs(3500));
    assert_eq!(got.roles(), ["ActivityFeed.Read", "ServiceHealth.Read"]);
}

// Proves the v2 request sends scope={resource}/.default and no resource.
#[tokio::test]
async fn v2_secret_request_uses_scope() {
    let fake = Fake::start().await;
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap();
    client.token().await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        keys(&seen[0].form),
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    assert_eq!(seen[0].form["scope"], "https://manage.office.com/.default");
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    aud: String,
    iss: String,
    sub: String,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

fn verify_assertion(
    assertion: &str,
    cert_pem: &str,
    alg: jsonwebtoken::Algorithm,
    aud: &str,
) -> (jsonwebtoken::Header, AssertionClaims) {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(cert_pem.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[CLIENT_ID]);
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).unwrap();
    (data.header, data.claims)
}

// Proves the RS256 assertion verifies with the certificate's public key, carries the right
// header (typ, x5t) and claims (aud = endpoint URL, iss = sub = client id, fresh jti,
// 10-minute lifetime), and replaces client_secret in the form.
#[tokio::test]
async fn certificate_assertion_rs256_verifies() {
    let fake = Fake::start().await;
    let (cert_pem, key_pem, der) = rsa_cert();
    let credential = Credential::Certificate {
        cert_pem: cert_pem.clone(),
        key_pem: SecretString::from(key_pem.clone()),
        alg: SigningAlg::Rs256,
        x5t: true,
        x5t_s256: false,
    };
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V2, credential), http()).unwrap();
    client.token().await.unwrap();
    client.invalidate();
    client.token().await.unwrap();
    assert_eq!(client.tokens_fetched(), 2);

    let seen = fake.seen();
    let form = &seen[0].form;
    assert_eq!(
        keys(form),
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ]
    );
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    let aud = format!("{}{TENANT}/oauth2/v2.0/token", fake.base);
    assert_eq!(client.endpoint_url().as_str(), aud);
    let (header, claims) = verify_assertion(
        &form["client_assertion"],
        &cert_pem,
        jsonwebtoken::Algorithm::RS256,
        &aud,
    );
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let expected_x5t = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der));
    assert_eq!(header.x5t.as_deref(), Some(expected_x5t.as_str()));
    assert_eq!(header.x5t_s256, None);
    assert_eq!(claims.aud, aud);
    assert_eq!(
        (claims.iss.as_str(), claims.sub.as_str()),
        (CLIENT_ID, CLIENT_ID)
    );
    assert_eq!(claims.exp - claims.nbf, 600);
    assert_eq!(claims.iat, claims.nbf);
    assert!(uuid::Uuid::parse_str(&claims.jti).is_ok());

    let (_, second) = verify_assertion(
        &seen[1].form["client_assertion"],
        &cert_pem,
        jsonwebtoken::Algorithm::RS256,
        &aud,
    );
    assert_ne!(claims.jti, second.jti, "each assertion needs a fresh jti");
}

// Proves PS256 assertions on the v1 endpoint carry x5t#S256 only, verify with the
// certificate, and use the v1 endpoint URL as audience.
#[tokio::test]
async fn certificate_assertion_ps256_with_sha256_thumbprint() {
    let fake = Fake::start().await;
    let (cert_pem, key_pem, der) = rsa_cert();
    let credential = Credential::Certificate {
        cert_pem: cert_pem.clone(),
        key_pem: SecretString::from(key_pem),
        alg: SigningAlg::Ps256,
        x5t: false,
        x5t_s256: true,
    };
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V1, credential), http()).unwrap();
    client.token().await.unwrap();
    let form = &fake.seen()[0].form;
    assert_eq!(form["resource"], RESOURCE);
    let aud = format!("{}{TENANT}/oauth2/token", fake.base);
    let (header, _) = verify_assertion(
        &form["client_assertion"],
        &cert_pem,
        jsonwebtoken::Algorithm::PS256,
        &aud,
    );
    assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256);
    assert_eq!(header.x5t, None);
    let expected = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der));
    assert_eq!(header.x5t_s256.as_deref(), Some(expected.as_str()));
}

// Proves thumbprints() computes base64url-no-pad SHA-1 and SHA-256 of the DER certificate.
#[test]
fn thumbprints_match_independent_hashes() {
    let (cert_pem, _, der) = rsa_cert();
    let (x5t, x5t_s256) = thumbprints(&cert_pem).unwrap();
    assert_eq!(x5t, URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)));
    assert_eq!(x5t_s256, URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)));
    assert!(!x5t.contains('=') && !x5t.contains('+') && !x5t.contains('/'));
    assert!(thumbprints("not a pem").is_err());
}

// Proves a key that is not a key is refused at construction, without echoing the input.
#[test]
fn unreadable_key_is_refused_at_new() {
    let (cert_pem, _, _) = rsa_cert();
    let bogus =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    let credential = Credential::Certificate {
        cert_pem,
        key_pem: SecretString::from(bogus),
        alg: SigningAlg::Rs256,
        x5t: true,
        x5t_s256: true,
    };
    let settings = TokenSettings {
        authority_base: url::Url::parse("http://127.0.0.1:9").unwrap(),
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        credential,
        endpoint: TokenEndpoint::V2,
        resource: RESOURCE.into(),
    };
    let err = TokenClient::new(settings, http()).unwrap_err();
    assert!(matches!(err, AuthError::InvalidSettings { .. }));
    let text = format!("{err} {err:?}");
    assert!(!text.contains("c2VjcmV0"), "{text}");
}

// Proves a token is cached while far from expiry and fetched again after invalidate().
#[tokio::test]
async fn token_is_cached_until_invalidated() {
    let fake = Fake::start().await;
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap();
    let a = client.token().await.unwrap();
    let b = client.token().await.unwrap();
    assert_eq!(a.secret().expose_secret(), b.secret().expose_secret());
    assert_eq!(client.tokens_fetched(), 1);
    client.invalidate();
    let c = client.token().await.unwrap();
    assert_ne!(a.secret().expose_secret(), c.secret().expose_secret());
    assert_eq!(client.tokens_fetched(), 2);
}

// Proves a token inside the refresh margin is refreshed on the next call, and that a smaller
// margin keeps it cached.
#[tokio::test]
async fn token_inside_refresh_margin_is_refreshed() {
    let fake = Fake::start().await;
    fake.set_default(200, &v2_ok("short-lived", 120));
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap();
    client.token().await.unwrap();
    client.token().await.unwrap();
    assert_eq!(
        client.tokens_fetched(),
        2,
        "120 s left is inside the 5-minute margin"
    );

    let relaxed = TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http())
        .unwrap()
        .with_refresh_margin(Duration::from_secs(10));
    relaxed.token().await.unwrap();
    relaxed.token().await.unwrap();
    assert_eq!(relaxed.tokens_fetched(), 1);
}

// Proves concurrent callers share one fetch.
#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let fake = Fake::start().await;
    *fake.state.delay.lock().unwrap() = Duration::from_millis(50);
    let client =
        Arc::new(TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.token()
                    .await
                    .map(|t| t.secret().expose_secret().to_string())
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap());
    }
    assert_eq!(client.tokens_fetched(), 1);
    assert_eq!(fake.seen().len(), 1);
    assert!(tokens.iter().all(|t| t == &tokens[0]));
}

// Proves a transient refresh failure falls back to the cached token while it is still valid.
#[tokio::test]
async fn transient_refresh_failure_keeps_valid_cached_token() {
    let fake = Fake::start().await;
    fake.push(200, &v2_ok("still-valid", 120));
    fake.push(503, "<html>Service Unavailable</html>");
    let client = TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap();
    client.token().await.unwrap();
    let again = client.token().await.unwrap();
    assert_eq!(again.secret().expose_secret(), "still-valid");
    assert_eq!(fake.seen().len(), 2, "a refresh was attempted");
}

fn aad_error(error: &str, code: u32, text: &str) -> String {
    format!(
        r#"{{"error":"{error}","error_description":"AADSTS{code}: {text} Trace ID: x","error_codes":[{code}],"timestamp":"2026-11-27 10:00:00Z","trace_id":"t","correlation_id":"c"}}"#
    )
}

// Proves token errors are parsed and classified (fatal, transient, throttled), and that the
// secret never shows in Display or Debug of the error or the client.
#[tokio::test]
async fn aadsts_errors_are_classified() {
    let fake = Fake::start().await;
    let cases: Vec<(u16, String, Option<u32>, TokenErrorClass)> = vec![
        (401, aad_error("invalid_client", 7_000_215, "Invalid client secret is provided."), Some(7_000_215), TokenErrorClass::Fatal),
        (401, aad_error("invalid_client", 7_000_222, "The provided client secret keys are expired."), Some(7_000_222), TokenErrorClass::Fatal),
        (400, aad_error("unauthorized_client", 700_016, "Application not found."), Some(700_016), TokenErrorClass::Fatal),
        (400, aad_error("invalid_request", 90_002, "Tenant not found."), Some(90_002), TokenErrorClass::Fatal),
        (400, aad_error("temporarily_unavailable", 50_033, "Retry."), Some(50_033), TokenErrorClass::Transient),
        (400, aad_error("invalid_request", 90_055, "Throttled."), Some(90_055), TokenErrorClass::Throttled),
        (
            400,
            r#"{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation."}"#.into(),
            Some(700_027),
            TokenErrorClass::Fatal,
        ),
        (503, "<html><body>Service Unavailable</body></html>".into(), None, TokenErrorClass::Transient),
    ];
    for (status, body, code, class) in cases {
        fake.push(status, &body);
        let client =
            TokenClient::new(settings(&fake, TokenEndpoint::V2, secret()), http()).unwrap();
        let err = client.token().await.unwrap_err();
        assert_eq!(err.aadsts(), code, "{body}");
        assert_eq!(err.class(), class, "{body}");
        assert_eq!(err.is_transient(), class != TokenErrorClass::Fatal);
        let text = format!("{err} {err:?} {client:?}");
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        if let Some(code) = code {
            assert!(text.contains(&format!("AADSTS{code}")), "{text}");
        }
    }
}

// Proves Debug output of credentials, settings and tokens never shows secrets.
#[tokio::test]
async fn debug_output_redacts_secrets() {
    let fake = Fake::start().await;
    fake.push(200, &v2_ok("the-access-token-value", 3599));
    let s = settings(&fake, TokenEndpoint::V2, secret());
    let settings_text = format!("{s:?}");
    let client = TokenClient::new(s, http()).unwrap();
    let token = client.token().await.unwrap();
    let text = format!("{settings_text} {client:?} {token:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("the-access-token-value"), "{text}");
}
