//! Token endpoint and API authentication behaviour of the fake tenant.

mod tenant_support;

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use m365_sim::certs::rsa_self_signed;
use m365_sim::tenant::{AppSpec, ContentType, Simulator, TEST_CLIENT_ID, thumbprints};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tenant_support::*;

const CERT_APP: &str = "0d2f4c6e-8a1b-4c3d-9e5f-7a9b1c3d5e7f";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn post_form(http: &reqwest::Client, url: url::Url, form: &[(&str, &str)]) -> (u16, Value) {
    let res = http.post(url).form(form).send().await.expect("token call");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

// Proves v2 secret tokens work with numeric fields, v1 returns strings, and wrong secrets,
// `resource` on v2 and unknown apps get the documented AADSTS codes.
#[tokio::test]
async fn secret_tokens_v1_v2_and_errors() {
    let sim = Simulator::start(quiet_config()).await.expect("start");
    let http = client(&sim);
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, true),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", m365_sim::tenant::TEST_CLIENT_SECRET),
            ("scope", "https://manage.office.com/.default"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["expires_in"].is_number());
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, false),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", m365_sim::tenant::TEST_CLIENT_SECRET),
            ("resource", "https://manage.office.com"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["expires_in"].is_string() && v["expires_on"].is_string());
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, true),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", "wrong"),
            ("scope", "https://manage.office.com/.default"),
        ],
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(7000215)));
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, true),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", "x"),
            ("resource", "https://manage.office.com"),
        ],
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(901002)));
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, true),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CERT_APP),
            ("client_secret", "x"),
            ("scope", "https://manage.office.com/.default"),
        ],
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(700016)));
    assert_eq!(sim.tokens_issued(), 2);
    sim.shutdown().await;
}

// Proves an expired secret is refused with AADSTS7000222.
#[tokio::test]
async fn expired_secret_is_refused() {
    let mut cfg = quiet_config();
    cfg.tenants[0].apps[0].secret_expires_at = Some(Utc::now() - chrono::Duration::days(1));
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let (s, v) = post_form(
        &http,
        sim.token_url(TENANT, true),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", m365_sim::tenant::TEST_CLIENT_SECRET),
            ("scope", "https://manage.office.com/.default"),
        ],
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(7000222)));
    sim.shutdown().await;
}

struct Signer {
    key: EncodingKey,
    x5t: String,
    x5t_s256: String,
}

fn assertion(signer: &Signer, alg: Algorithm, aud: &str, nbf: i64, exp: i64, jti: &str) -> String {
    let mut header = Header::new(alg);
    header.x5t = Some(signer.x5t.clone());
    if alg == Algorithm::PS256 {
        header.x5t = None;
        header.x5t_s256 = Some(signer.x5t_s256.clone());
    }
    let claims = json!({"aud": aud, "iss": CERT_APP, "sub": CERT_APP, "jti": jti, "nbf": nbf, "exp": exp, "iat": nbf});
    jsonwebtoken::encode(&header, &claims, &signer.key).expect("sign")
}

// Proves certificate assertions (RS256/x5t and PS256/x5t#S256) are accepted, and that a
// tampered signature, an expired assertion, a wrong audience and a replayed jti are all
// refused with AADSTS700027.
#[tokio::test]
async fn certificate_assertions() {
    let (cert_pem, key_pem) = rsa_self_signed("sim-assertion-test").expect("cert");
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("der");
    let (x5t, x5t_s256) = thumbprints(der.as_ref());
    let signer = Signer {
        key: EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("key"),
        x5t,
        x5t_s256,
    };
    let mut cfg = quiet_config();
    cfg.tenants[0]
        .apps
        .push(AppSpec::with_certificate(CERT_APP, &cert_pem));
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let url = sim.token_url(TENANT, true);
    let aud = url.as_str().to_owned();
    let now = Utc::now().timestamp();
    let call = |a: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            post_form(
                &http,
                url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", CERT_APP),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &a),
                    ("scope", "https://manage.office.com/.default"),
                ],
            )
            .await
        }
    };
    let (s, v) = call(assertion(
        &signer,
        Algorithm::RS256,
        &aud,
        now,
        now + 600,
        "jti-1",
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(assertion(
        &signer,
        Algorithm::PS256,
        &aud,
        now,
        now + 600,
        "jti-2",
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    // Replay of jti-1.
    let (s, v) = call(assertion(
        &signer,
        Algorithm::RS256,
        &aud,
        now,
        now + 600,
        "jti-1",
    ))
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("jti")
    );
    // Tampered: flip a character of the signature.
    let good = assertion(&signer, Algorithm::RS256, &aud, now, now + 600, "jti-3");
    let mut tampered = good.into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let (s, v) = call(String::from_utf8(tampered).expect("ascii")).await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("signature")
    );
    // Expired.
    let (s, v) = call(assertion(
        &signer,
        Algorithm::RS256,
        &aud,
        now - 1200,
        now - 600,
        "jti-4",
    ))
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
    // Wrong audience (the v1 endpoint URL used against v2).
    let (s, v) = call(assertion(
        &signer,
        Algorithm::RS256,
        sim.token_url(TENANT, false).as_str(),
        now,
        now + 600,
        "jti-5",
    ))
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("audience")
    );
    // An unregistered certificate.
    let (_, other_key) = rsa_self_signed("other").expect("cert");
    let stranger = Signer {
        key: EncodingKey::from_rsa_pem(other_key.as_bytes()).expect("key"),
        x5t: "bm90LXJlZ2lzdGVyZWQ".to_owned(),
        x5t_s256: String::new(),
    };
    let (s, v) = call(assertion(
        &stranger,
        Algorithm::RS256,
        &aud,
        now,
        now + 600,
        "jti-6",
    ))
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (401, Some(700027)));
    assert_eq!(sim.tokens_issued(), 2);
    sim.shutdown().await;
}

// Proves the API's auth checks: missing/garbled token → 401 with the ASP.NET body, token of
// another tenant → AF20010, malformed tenant → AF20013, unknown tenant → AF20011, and a
// token without ActivityFeed.Read → AF10001.
#[tokio::test]
async fn api_auth_checks() {
    let mut cfg = quiet_config();
    let mut noperm = AppSpec::with_secret("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", "s3cret");
    noperm.roles = vec!["ServiceHealth.Read".to_owned()];
    cfg.tenants[0].apps.push(noperm);
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let res = api(
        &sim,
        &http,
        "garbage.token.here",
        reqwest::Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let v: Value = res.json().await.expect("json");
    assert_eq!(
        v["Message"],
        "Authorization has been denied for this request."
    );
    let other = token(&sim, &http, OTHER_TENANT).await;
    let (s, code) = error_code(
        api(
            &sim,
            &http,
            &other,
            reqwest::Method::GET,
            TENANT,
            "subscriptions/list",
            &[],
        )
        .await,
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "AF20010"));
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &other,
            reqwest::Method::GET,
            "not-a-guid",
            "subscriptions/list",
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20013");
    let (_, code) = error_code(
        api(
            &sim,
            &http,
            &other,
            reqwest::Method::GET,
            "99999999-9999-9999-9999-999999999999",
            "subscriptions/list",
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(code, "AF20011");
    let res = http
        .post(sim.token_url(TENANT, true))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"),
            ("client_secret", "s3cret"),
            ("scope", "https://manage.office.com/.default"),
        ])
        .send()
        .await
        .expect("token");
    let weak = res.json::<Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (s, code) =
        error_code(start_sub(&sim, &http, &weak, TENANT, ContentType::Exchange).await).await;
    assert_eq!((s, code.as_str()), (403, "AF10001"));
    sim.shutdown().await;
}

// Proves a short token lifetime makes the API answer 401 once the token expired.
#[tokio::test]
async fn expired_access_token_gets_401() {
    let mut cfg = quiet_config();
    cfg.token_lifetime_secs = 0;
    let sim = Simulator::start(cfg).await.expect("start");
    let http = client(&sim);
    let t = token(&sim, &http, TENANT).await;
    let res = api(
        &sim,
        &http,
        &t,
        reqwest::Method::GET,
        TENANT,
        "subscriptions/list",
        &[],
    )
    .await;
    assert_eq!(res.status(), 401);
    sim.shutdown().await;
}
