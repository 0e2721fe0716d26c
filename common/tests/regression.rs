//! Regression tests for bugs found by fuzzing (`fuzz/`), each named after its bug.

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use m365_common::auth::{
    Credential, MAX_TOKEN_LIFETIME, TokenClient, TokenEndpoint, TokenSettings,
};
use secrecy::SecretString;

/// A token endpoint on 127.0.0.1 answering every request with `body` (HTTP 200, JSON).
async fn token_endpoint(body: &'static str) -> url::Url {
    let app = Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move || async move { ([("content-type", "application/json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url::Url::parse(&format!("http://{addr}")).unwrap()
}

fn client(authority: url::Url) -> TokenClient {
    TokenClient::new(
        TokenSettings {
            authority_base: authority,
            tenant: "8f4c6b2e-1a3d-4e5f-9a7b-0c1d2e3f4a5b".into(),
            client_id: "3c9d1e2f-7a4b-4c5d-8e6f-0a1b2c3d4e5f".into(),
            credential: Credential::ClientSecret(SecretString::from("regression-secret")),
            endpoint: TokenEndpoint::V2,
            resource: "https://manage.office.com".into(),
        },
        reqwest::Client::new(),
    )
    .unwrap()
}

// Fuzz finding (token_response): an `expires_in` of 18 000 000 000 000 s panicked with
// "`DateTime + TimeDelta` overflowed" (and u64::MAX would overflow `Instant + Duration`).
// Proves huge lifetimes, as a number or a string, give a token whose lifetime is clamped.
#[tokio::test]
async fn token_expires_in_overflow_does_not_panic() {
    for body in [
        r#"{"token_type":"Bearer","expires_in":18000000000000,"access_token":"tok-a"}"#,
        r#"{"token_type":"Bearer","expires_in":18446744073709551615,"access_token":"tok-b"}"#,
        r#"{"token_type":"Bearer","expires_in":"9223372036854775807","access_token":"tok-c"}"#,
    ] {
        let tokens = client(token_endpoint(body).await);
        let token = tokens
            .token()
            .await
            .expect("a token despite the absurd lifetime");
        assert!(token.remaining() <= MAX_TOKEN_LIFETIME, "{body}");
        assert!(
            token.remaining() > MAX_TOKEN_LIFETIME - Duration::from_secs(60),
            "{body}"
        );
        let horizon = chrono::Utc::now() + chrono::Duration::hours(25);
        assert!(token.expires_at() < horizon, "{body}");
    }
}

// Found by the config-error security test: `client_secret: {s3cret}` (a secret mistyped as a
// YAML flow map) was reported as "unknown field `s3cret`", echoing the secret. Proves the key of
// a bad secret reference is never shown, in YAML and JSON, for every secret position.
#[test]
fn secret_reference_unknown_key_is_not_echoed() {
    use m365_common::config::{Format, LoadOptions, from_text};
    let secret = "regression-s3cret-Vw4Kd";
    let tenant = "8f4c6b2e-1a3d-4e5f-9a7b-0c1d2e3f4a5b";
    let client = "3c9d1e2f-7a4b-4c5d-8e6f-0a1b2c3d4e5f";
    let cases = [
        (
            format!(
                "tenants:\n  - tenant_id: {tenant}\n    client_id: {client}\n    auth:\n      type: client_secret\n      client_secret: {{{secret}}}\n"
            ),
            Format::Yaml,
            "tenants[0].auth.client_secret",
        ),
        (
            format!(r#"{{"kafka":{{"properties":{{"sasl.password":{{"{secret}":1}}}}}}}}"#),
            Format::Json,
            "kafka.properties.sasl.password",
        ),
        (
            format!(
                r#"{{"devo":{{"type":"devo_http","endpoint":"https://h","domain":"d","token":{{"{secret}":1}}}}}}"#
            ),
            Format::Json,
            "devo.token",
        ),
    ];
    for (text, format, path) in cases {
        let options = LoadOptions::new().allow_no_tenants();
        let errors = from_text(
            &text,
            format,
            std::path::Path::new("/nonexistent"),
            &options,
        )
        .expect_err("a bad secret reference is refused");
        let rendered = format!("{errors}\n{errors:?}");
        assert!(errors.has_path(path), "{rendered}");
        assert!(rendered.contains("`env` or `file`"), "{rendered}");
        assert!(!rendered.contains(secret), "secret echoed: {rendered}");
    }
}
