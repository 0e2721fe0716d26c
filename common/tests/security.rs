//! Security properties of the shared pieces, as tests:
//! * TLS verification cannot be switched off by a default: the API client built by
//!   `http_client` refuses the simulator's HTTPS when the simulator's CA is not configured
//!   (certificate error, no request served), and no configuration key turns verification off
//!   (such keys are rejected as unknown in our sections, and only warned about and ignored in
//!   Devo's own block);
//! * configuration errors never echo secret values, whatever the shape of the mistake.
//!
//! Covered elsewhere, not repeated here: a forged `content_uri` never causes a request
//! (`consumer/tests/consumer_faults.rs::forged_content_uris_are_refused_without_a_request`,
//! `common/tests/api_client.rs::foreign_content_uris_are_refused`); a decompression bomb in a
//! blob is capped (`common/tests/api_client.rs::blob_size_cap_is_enforced`); the Devo TLS output
//! refuses a server not signed by the configured chain
//! (`forwarder/tests/output_stream.rs::wrong_server_ca_is_reported_with_chain_file`).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{TimeZone, Utc};
use std::sync::Arc;

use m365_common::api::{ApiClient, ApiError, ApiSettings, http_client};
use m365_common::auth::{AuthError, Credential, TokenClient, TokenEndpoint, TokenSettings};
use m365_common::config::{self, Format, LoadOptions};
use m365_sim::tenant::{SimConfig, Simulator, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use secrecy::SecretString;

const TENANT: &str = "8f4c6b2e-1a3d-4e5f-9a7b-0c1d2e3f4a5b";
const CLIENT: &str = "3c9d1e2f-7a4b-4c5d-8e6f-0a1b2c3d4e5f";

fn opts() -> LoadOptions {
    LoadOptions::new()
        .with_now(Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap())
        .with_env(BTreeMap::new())
}

/// The full text of an error and its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(" / ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// Proves the API client refuses the simulator's HTTPS when its CA is not configured: the
// token request fails with a certificate error before any request is served.
#[tokio::test]
async fn api_client_refuses_an_unknown_ca() {
    let sim = Simulator::start(SimConfig::for_tests(&[TENANT]))
        .await
        .unwrap();
    assert_eq!(sim.base_url().scheme(), "https");
    // The product's HTTP client with no extra root: only the platform's roots are trusted.
    let http = http_client(None).expect("HTTP client");
    let tokens = TokenClient::new(
        TokenSettings {
            authority_base: sim.base_url(),
            tenant: TENANT.into(),
            client_id: TEST_CLIENT_ID.into(),
            credential: Credential::ClientSecret(SecretString::from(TEST_CLIENT_SECRET)),
            endpoint: TokenEndpoint::V2,
            resource: sim.resource().into(),
        },
        http.clone(),
    )
    .expect("token client");
    let mut settings = ApiSettings::new(sim.base_url(), TENANT);
    // One attempt: the refusal is the same on every retry.
    settings.retry.max_attempts = 1;
    let api = ApiClient::new(settings, Arc::new(tokens), http);
    let err = api.list_subscriptions().await.unwrap_err();
    let text = chain(&err).to_ascii_lowercase();
    assert!(
        matches!(
            &err,
            ApiError::Token {
                source: AuthError::Transport { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.contains("certificate") || text.contains("issuer"),
        "not a TLS error: {text}"
    );
    assert_eq!(
        sim.tokens_issued(),
        0,
        "a token was issued over an unverified connection"
    );
    assert!(
        sim.requests().is_empty(),
        "the simulator served {:?}",
        sim.requests()
    );
    sim.shutdown().await;
}

/// A minimal valid configuration (JSON), with `tenant_extra`, `devo_extra` and `top_extra`
/// members added to the tenant, the devo section and the top level.
fn config_with(tenant_extra: &str, devo_extra: &str, top_extra: &str) -> String {
    format!(
        r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"{CLIENT}",
            "auth":{{"type":"client_secret","client_secret":"x"}}{tenant_extra}}}],
           "devo":{{"type":"devo_http","endpoint":"https://http-eu.devo.io","domain":"d","token":"t"{devo_extra}}}
           {top_extra}}}"#
    )
}

// Proves the baseline of the next test is valid, so its rejections come from the added keys.
#[test]
fn baseline_config_is_valid() {
    let text = config_with("", "", "");
    if let Err(e) = config::from_text(&text, Format::Json, Path::new("/nonexistent"), &opts()) {
        panic!("baseline rejected: {e}");
    }
}

// Proves no configuration key can switch TLS verification off: every usual spelling, in the
// tenant, its cloud, the devo section or at the top level, is rejected as an unknown key.
#[test]
fn keys_disabling_tls_verification_are_rejected() {
    let keys = [
        r#""insecure_skip_verify": true"#,
        r#""tls_verify": false"#,
        r#""verify_tls": false"#,
        r#""danger_accept_invalid_certs": true"#,
        r#""ssl_verify": false"#,
        r#""insecure": true"#,
    ];
    for key in keys {
        let member = format!(",{key}");
        for (place, text) in [
            ("tenant", config_with(&member, "", "")),
            ("devo", config_with("", &member, "")),
            ("top level", config_with("", "", &member)),
        ] {
            match config::from_text(&text, Format::Json, Path::new("/nonexistent"), &opts()) {
                Ok(_) => panic!("{key} accepted in the {place}"),
                Err(e) => {
                    let name = key.split('"').nth(1).unwrap();
                    assert!(e.to_string().contains(name), "{key} in the {place}: {e}");
                }
            }
        }
    }
    // Inside the tenant's explicit cloud hosts too.
    let cloud = r#","cloud":{"api_base":"https://a.example","authority_base":"https://b.example","resource":"https://a.example","tls_verify":false}"#;
    assert!(
        config::from_text(
            &config_with(cloud, "", ""),
            Format::Json,
            Path::new("/x"),
            &opts()
        )
        .is_err(),
        "tls_verify accepted in cloud"
    );
}

// Proves a TLS-disabling key in Devo's own collector block (where unknown keys are tolerated
// for compatibility) does not switch anything off: it is reported as a warning and ignored.
#[test]
fn devo_block_tls_key_is_only_a_warning() {
    let text = format!(
        r#"{{"inputs":{{"office365":{{"id":"1","enabled":true,"insecure_skip_verify":true,
            "credentials":{{"client_id":"{CLIENT}","tenant_id":"{TENANT}","client_secret":"x"}},
            "services":{{"exchange":{{}}}}}}}}}}"#
    );
    match config::from_text(&text, Format::Json, Path::new("/x"), &opts()) {
        Ok(c) => assert!(
            c.warnings
                .iter()
                .any(|w| w.to_string().contains("insecure_skip_verify")),
            "no warning for the ignored key: {:?}",
            c.warnings
        ),
        Err(e) => assert!(e.to_string().contains("insecure_skip_verify"), "{e}"),
    }
}

const S_CLIENT: &str = "cfgsecretClient7Mz2Kq";
const S_DEVO_BLOCK: &str = "cfgsecretDevoBlock4Xw9";
const S_SASL: &str = "cfgsecretSasl1Pv6Rt";
const S_TOKEN: &str = "cfgsecretToken8Hd3Ln";
const S_FILE: &str = "cfgsecretFileBody5Gc0";
const ALL_SECRETS: [&str; 5] = [S_CLIENT, S_DEVO_BLOCK, S_SASL, S_TOKEN, S_FILE];

// Proves configuration errors never echo a secret value: with distinctive values in every
// secret position (tenant and Devo-block client secrets, a SASL password property, the Devo
// token, a secret file's content), broken in many ways — wrong shapes, wrong types, syntax
// errors on the secret's own line, bad neighbours, key files that are not keys — the
// rendered errors (Display and Debug) hold none of them.
#[test]
fn config_errors_never_echo_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), format!("{S_FILE}\n")).unwrap();
    std::fs::write(dir.path().join("not-a-key.pem"), format!("{S_FILE}\n")).unwrap();
    let good_tenant = |secret: &str| {
        format!(
            r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"client_secret","client_secret":{secret}}}}}"#
        )
    };
    let json_cases: Vec<String> = vec![
        // Valid secrets, everything around them wrong.
        format!(
            r#"{{"inputs":{{"office365":{{"id":"1","credentials":{{"client_id":"bad","tenant_id":"bad","client_secret":"{S_DEVO_BLOCK}"}}}}}},
               "tenants":[{{"tenant_id":"nope","client_id":"","auth":{{"type":"client_secret","client_secret":"{S_CLIENT}"}}}}],
               "kafka":{{"partitions":0,"properties":{{"sasl.password":"{S_SASL}","":"x"}}}},
               "devo":{{"type":"devo_http","endpoint":"not a url","token":"{S_TOKEN}"}}}}"#
        ),
        // Secrets of the wrong shape: objects with the secret as a key or an unknown member.
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#"{{"{S_CLIENT}":1}}"#))
        ),
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#"{{"value":"{S_CLIENT}"}}"#))
        ),
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#"{{"env":"X","file":"{S_CLIENT}"}}"#))
        ),
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#"["{S_CLIENT}"]"#))
        ),
        format!(
            r#"{{"tenants":[{}],"kafka":{{"properties":{{"sasl.password":["{S_SASL}"]}}}}}}"#,
            good_tenant("\"x\"")
        ),
        format!(
            r#"{{"tenants":[{}],"kafka":{{"properties":{{"sasl.password":{{"{S_SASL}":true}}}}}}}}"#,
            good_tenant("\"x\"")
        ),
        format!(
            r#"{{"tenants":[{}],"devo":{{"type":"devo_http","endpoint":"https://h","domain":"d","token":{{"{S_TOKEN}":1}}}}}}"#,
            good_tenant("\"x\"")
        ),
        // The token where it does not belong, and as an unknown output type.
        format!(
            r#"{{"tenants":[{}],"devo":{{"type":"devo_tls","address":"a","token":"{S_TOKEN}"}}}}"#,
            good_tenant("\"x\"")
        ),
        format!(
            r#"{{"tenants":[{}],"devo":{{"type":"{S_TOKEN}"}}}}"#,
            good_tenant("\"x\"")
        ),
        // JSON syntax errors right at the secret.
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#""{S_CLIENT}"#))
        ),
        format!(
            r#"{{"tenants":[{}]}}"#,
            good_tenant(&format!(r#""{S_CLIENT}" "x""#))
        ),
        // The secret's file is fine but the key file holds no key (its text must not show).
        format!(
            r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"certificate","cert_file":"not-a-key.pem","key_file":"not-a-key.pem"}}}}],
               "kafka":{{"partitions":0,"properties":{{"sasl.password":{{"file":"secret.txt"}}}}}}}}"#
        ),
    ];
    let yaml_cases: Vec<String> = vec![
        // YAML syntax errors on the secret's own line.
        format!(
            "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    auth:\n      type: client_secret\n      client_secret: \"{S_CLIENT}\n"
        ),
        format!(
            "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    auth:\n      type: client_secret\n      client_secret: {S_CLIENT}: x\n"
        ),
        format!(
            "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    auth: {{type: client_secret, client_secret: [{S_CLIENT}}}\n"
        ),
        format!("kafka:\n  properties:\n    sasl.password: {S_SASL}\n  - x\n"),
        format!("devo:\n  type: devo_http\n  token: {S_TOKEN}\n\tendpoint: x\n"),
        // A mis-indented secret and a wrong type next to it.
        format!(
            "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    auth:\n      type: client_secret\n    client_secret: {S_CLIENT}\n"
        ),
        format!(
            "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    auth:\n      type: client_secret\n      client_secret: {S_CLIENT}\n    requests_per_minute: lots\n"
        ),
    ];
    let cases = json_cases
        .iter()
        .map(|t| (t, Format::Json))
        .chain(yaml_cases.iter().map(|t| (t, Format::Yaml)));
    let mut checked = 0;
    let mut leaks = Vec::new();
    for (text, format) in cases {
        let errors = match config::from_text(text, format, dir.path(), &opts()) {
            Ok(c) => {
                // Accepted: then nothing may be echoed in its Debug or warnings either.
                format!("{c:?} {:?}", c.warnings)
            }
            Err(e) => {
                assert!(!e.is_empty());
                format!("{e}\n{e:?}")
            }
        };
        if ALL_SECRETS.iter().any(|secret| errors.contains(secret)) {
            leaks.push(format!("{format:?} case {checked}:\n{errors}"));
        }
        checked += 1;
    }
    assert_eq!(checked, json_cases.len() + yaml_cases.len());
    assert!(
        leaks.is_empty(),
        "secret values echoed:\n{}",
        leaks.join("\n")
    );
}
