//! Admin-consent flow of the fake tenant: the v1 and v2 authorize endpoints redirect with a
//! code, and the token endpoints redeem it for a token of the consenting tenant.

mod tenant_support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use m365_sim::tenant::{Simulator, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use serde_json::Value;
use tenant_support::*;
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:8400/callback";

/// A client that does not follow redirects, so tests can read `Location`.
fn no_redirect_client(sim: &Simulator) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET the authorize URL with `query`; returns the status and the `Location` target, if any.
async fn authorize(
    http: &reqwest::Client,
    mut url: Url,
    query: &[(&str, &str)],
) -> (u16, Option<Url>) {
    url.query_pairs_mut().extend_pairs(query);
    let res = http.get(url).send().await.expect("authorize request");
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| Url::parse(v).expect("absolute Location"));
    (status, location)
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Redeem `code` at the token endpoint of `segment`; returns the status and the JSON body.
async fn redeem(
    sim: &Simulator,
    http: &reqwest::Client,
    segment: &str,
    v2: bool,
    code: &str,
    redirect_uri: &str,
    secret: &str,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", TEST_CLIENT_ID),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_secret", secret),
    ];
    if v2 {
        form.push(("scope", "https://manage.office.com/.default"));
    } else {
        form.push(("resource", "https://manage.office.com"));
    }
    let res = http
        .post(sim.token_url(segment, v2))
        .form(&form)
        .send()
        .await
        .expect("token request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("token json"))
}

/// The claims of a JWT, read without checking the signature.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("claims")
}

/// Redeem the code in `location` at `/common` and return the token's `tid`.
async fn tid_of(sim: &Simulator, http: &reqwest::Client, location: Option<Url>) -> Value {
    let code = param(&location.expect("Location"), "code").expect("code");
    let (s, body) = redeem(
        sim,
        http,
        "common",
        false,
        &code,
        REDIRECT,
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    claims(body["access_token"].as_str().expect("token"))["tid"].clone()
}

fn v1_query(state: &str) -> Vec<(&str, &str)> {
    vec![
        ("response_type", "code"),
        ("client_id", TEST_CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("resource", "https://manage.office.com"),
        ("prompt", "admin_consent"),
        ("state", state),
    ]
}

// Proves the v1 /common authorize endpoint redirects to the redirect URI with a code and the
// state, the code redeems once for a token whose `tid` is the consenting (first) tenant, and a
// second redemption is refused with AADSTS54005.
#[tokio::test]
async fn v1_common_consent_code_redeems_once_for_the_tenant() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = no_redirect_client(&sim);
    let (status, location) = authorize(
        &http,
        sim.authorize_url("common", false),
        &v1_query("xyz-1"),
    )
    .await;
    assert_eq!(status, 302);
    let location = location.expect("Location header");
    assert!(location.as_str().starts_with(REDIRECT), "{location}");
    assert_eq!(param(&location, "state").as_deref(), Some("xyz-1"));
    assert_eq!(param(&location, "admin_consent").as_deref(), Some("True"));
    let code = param(&location, "code").expect("code");

    let (s, body) = redeem(
        &sim,
        &http,
        "common",
        false,
        &code,
        REDIRECT,
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let c = claims(body["access_token"].as_str().expect("access_token"));
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], TEST_CLIENT_ID);
    assert!(c["roles"].as_array().is_some_and(|r| !r.is_empty()));
    let grants = sim.consent_grants();
    assert_eq!(grants.len(), 1);
    assert!(grants[0].redeemed);
    assert_eq!(grants[0].tenant_id, TENANT);

    let (s, body) = redeem(
        &sim,
        &http,
        "common",
        false,
        &code,
        REDIRECT,
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"][0], 54005);
    sim.shutdown().await;
}

// Proves the consenting tenant follows the path segment, then `login_hint`, then the tenant
// chosen with `set_consenting_tenant`.
#[tokio::test]
async fn consenting_tenant_is_chosen_by_path_hint_or_setting() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = no_redirect_client(&sim);
    let (_, loc) = authorize(
        &http,
        sim.authorize_url(OTHER_TENANT, false),
        &v1_query("s"),
    )
    .await;
    assert_eq!(tid_of(&sim, &http, loc).await, OTHER_TENANT);

    let other_domain = sim
        .config()
        .tenant(OTHER_TENANT)
        .expect("other tenant")
        .primary_domain();
    let hint = format!("admin@{other_domain}");
    let mut q = v1_query("s");
    q.push(("login_hint", &hint));
    let (_, loc) = authorize(&http, sim.authorize_url("common", false), &q).await;
    assert_eq!(tid_of(&sim, &http, loc).await, OTHER_TENANT);

    sim.set_consenting_tenant(OTHER_TENANT)
        .expect("known tenant");
    let (_, loc) = authorize(&http, sim.authorize_url("common", false), &v1_query("s")).await;
    assert_eq!(tid_of(&sim, &http, loc).await, OTHER_TENANT);
    assert!(sim.set_consenting_tenant("not-a-tenant").is_err());
    sim.shutdown().await;
}

// Proves the v2 authorize endpoint takes `scope`, and that a redemption with the wrong redirect
// URI (AADSTS500112) or the wrong secret (AADSTS7000215) fails without spending the code.
#[tokio::test]
async fn v2_consent_failed_redemptions_do_not_spend_the_code() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = no_redirect_client(&sim);
    let (status, loc) = authorize(
        &http,
        sim.authorize_url("organizations", true),
        &[
            ("response_type", "code"),
            ("client_id", TEST_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("scope", "https://manage.office.com/.default offline_access"),
            ("state", "v2-state"),
        ],
    )
    .await;
    assert_eq!(status, 302);
    let loc = loc.expect("Location");
    assert_eq!(param(&loc, "state").as_deref(), Some("v2-state"));
    let code = param(&loc, "code").expect("code");

    let (s, body) = redeem(
        &sim,
        &http,
        "common",
        true,
        &code,
        "http://127.0.0.1:9999/elsewhere",
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error_codes"][0], 500112);
    let (s, body) = redeem(&sim, &http, "common", true, &code, REDIRECT, "wrong-secret").await;
    assert_eq!(s, 401);
    assert_eq!(body["error_codes"][0], 7000215);
    let (s, body) = redeem(
        &sim,
        &http,
        "common",
        true,
        &code,
        REDIRECT,
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().expect("token"))["tid"],
        TENANT
    );
    sim.shutdown().await;
}

// Proves request errors are answered as Entra does: unknown app and missing redirect URI on an
// error page (400), a wrong resource or scope as an `error=` redirect carrying the state, and
// an unknown code as invalid_grant AADSTS70000.
#[tokio::test]
async fn consent_request_errors() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = no_redirect_client(&sim);
    let (s, loc) = authorize(
        &http,
        sim.authorize_url("common", false),
        &[
            ("response_type", "code"),
            ("client_id", "00000000-1111-2222-3333-444444444444"),
            ("redirect_uri", REDIRECT),
            ("resource", "https://manage.office.com"),
        ],
    )
    .await;
    assert_eq!((s, loc), (400, None));
    let (s, loc) = authorize(
        &http,
        sim.authorize_url("common", false),
        &[
            ("response_type", "code"),
            ("client_id", TEST_CLIENT_ID),
            ("resource", "https://manage.office.com"),
        ],
    )
    .await;
    assert_eq!((s, loc), (400, None));

    let (s, loc) = authorize(
        &http,
        sim.authorize_url("common", false),
        &[
            ("response_type", "code"),
            ("client_id", TEST_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("resource", "https://graph.microsoft.com"),
            ("state", "st"),
        ],
    )
    .await;
    assert_eq!(s, 302);
    let loc = loc.expect("Location");
    assert_eq!(param(&loc, "error").as_deref(), Some("invalid_resource"));
    assert_eq!(param(&loc, "state").as_deref(), Some("st"));
    assert!(param(&loc, "code").is_none());

    let (s, loc) = authorize(
        &http,
        sim.authorize_url("common", true),
        &[
            ("response_type", "code"),
            ("client_id", TEST_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(s, 302);
    assert_eq!(
        param(&loc.expect("Location"), "error").as_deref(),
        Some("invalid_scope")
    );

    let (s, body) = redeem(
        &sim,
        &http,
        "common",
        false,
        "0.SIMnot-a-code",
        REDIRECT,
        TEST_CLIENT_SECRET,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["error_codes"][0], 70000);
    assert!(sim.consent_grants().is_empty());
    sim.shutdown().await;
}
