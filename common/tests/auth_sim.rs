//! End-to-end tests of the token client against the real fake tenant (`m365_sim::Simulator`,
//! HTTPS with its own CA): certificate client assertions (RS256 + `x5t`, PS256 + `x5t#S256`,
//! v1 and v2) that yield tokens the Management API accepts; assertions the simulator must
//! refuse (wrong signing key, unregistered certificate, expired or not-yet-valid from the
//! server's skewed clock); refresh inside the refresh margin; and a wrong client secret that
//! is classified fatal without leaking into the error text.

use std::sync::Arc;
use std::time::Duration;

use m365_common::api::{ApiClient, ApiSettings, http_client};
use m365_common::auth::{
    AuthError, Credential, SigningAlg, TokenClient, TokenEndpoint, TokenErrorClass, TokenSettings,
};
use m365_sim::certs::rsa_self_signed;
use m365_sim::tenant::{
    AppSpec, ContentType, ROLE_ACTIVITY_FEED_READ, SimConfig, Simulator, TEST_CLIENT_ID,
    TEST_CLIENT_SECRET, TenantSpec,
};
use secrecy::SecretString;

const TENANT: &str = "3c5e7a91-0b2d-4f46-8e13-5a7c9d1b2e40";
/// App registered with a certificate only.
const CERT_CLIENT_ID: &str = "b7e2c4d6-1a3f-4e58-9c0b-7d2e4f6a8c10";

/// The simulator's tenant with the secret test app, a certificate app registered with
/// `cert_pem` (if any), and Exchange + SharePoint subscriptions already enabled.
fn sim_config(cert_pem: Option<&str>) -> SimConfig {
    let mut tenant = TenantSpec::new(TENANT);
    if let Some(pem) = cert_pem {
        tenant
            .apps
            .push(AppSpec::with_certificate(CERT_CLIENT_ID, pem));
    }
    tenant.subscribed = vec![ContentType::Exchange, ContentType::SharePoint];
    SimConfig {
        tenants: vec![tenant],
        // Keep start-up cheap: the tests only need tokens and the subscription list.
        history_hours: 0.0,
        live_generation: false,
        ..SimConfig::default()
    }
}

/// An HTTPS client that trusts the simulator's CA.
fn sim_http(sim: &Simulator) -> reqwest::Client {
    http_client(Some(sim.ca_pem())).expect("HTTP client with the simulator CA")
}

/// A token client for `client_id` at the simulator.
fn token_client(
    sim: &Simulator,
    client_id: &str,
    credential: Credential,
    endpoint: TokenEndpoint,
) -> TokenClient {
    TokenClient::new(
        TokenSettings {
            authority_base: sim.base_url(),
            tenant: TENANT.to_string(),
            client_id: client_id.to_string(),
            credential,
            endpoint,
            resource: sim.resource().to_string(),
        },
        sim_http(sim),
    )
    .expect("valid token settings")
}

/// A certificate credential with the given algorithm and thumbprint headers.
fn cert_credential(cert_pem: &str, key_pem: &str, alg: SigningAlg, s256: bool) -> Credential {
    Credential::Certificate {
        cert_pem: cert_pem.to_string(),
        key_pem: SecretString::from(key_pem.to_string()),
        alg,
        x5t: !s256,
        x5t_s256: s256,
    }
}

/// Unpacks a `Rejected` error: (status, OAuth error, AADSTS, class).
fn rejected(err: &AuthError) -> (u16, String, Option<u32>, TokenErrorClass) {
    match err {
        AuthError::Rejected {
            status,
            error,
            aadsts,
            class,
            ..
        } => (*status, error.clone(), *aadsts, *class),
        other => panic!("expected AuthError::Rejected, got {other:?}"),
    }
}

/// Asserts `err` is the simulator's AADSTS700027 refusal (401 invalid_client, fatal) and
/// that its Display names the code and contains `what` (the reason), but no key material.
fn assert_assertion_refused(err: &AuthError, what: &str) {
    let (status, error, aadsts, class) = rejected(err);
    assert_eq!(status, 401, "{err}");
    assert_eq!(error, "invalid_client", "{err}");
    assert_eq!(aadsts, Some(700_027), "{err}");
    assert_eq!(class, TokenErrorClass::Fatal, "{err}");
    assert!(!err.is_transient());
    let shown = err.to_string();
    assert!(shown.contains("AADSTS700027"), "{shown}");
    assert!(shown.contains(TENANT), "{shown}");
    assert!(shown.contains(what), "expected {what:?} in: {shown}");
    let debug = format!("{err:?}");
    for text in [&shown, &debug] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("eyJ"), "a JWT leaked: {text}");
    }
}

// Proves a certificate-registered app gets tokens from the simulator with RS256 + x5t and
// with PS256 + x5t#S256 on both v1 and v2, and each token lists subscriptions via ApiClient.
#[tokio::test]
async fn certificate_credential_round_trip_v1_v2_rs256_ps256() {
    let (cert_pem, key_pem) = rsa_self_signed("auth-sim-app").expect("RSA certificate");
    let sim = Simulator::start(sim_config(Some(&cert_pem)))
        .await
        .expect("simulator starts");
    let http = sim_http(&sim);

    let cases = [
        (SigningAlg::Rs256, false, TokenEndpoint::V1),
        (SigningAlg::Rs256, false, TokenEndpoint::V2),
        (SigningAlg::Ps256, true, TokenEndpoint::V1),
        (SigningAlg::Ps256, true, TokenEndpoint::V2),
    ];
    for (n, (alg, s256, endpoint)) in cases.into_iter().enumerate() {
        let label = format!("{alg:?} x5t#S256={s256} {endpoint:?}");
        let tokens = Arc::new(token_client(
            &sim,
            CERT_CLIENT_ID,
            cert_credential(&cert_pem, &key_pem, alg, s256),
            endpoint,
        ));
        let token = tokens
            .token()
            .await
            .unwrap_or_else(|e| panic!("{label}: token refused: {e}"));
        assert!(
            token.roles().iter().any(|r| r == ROLE_ACTIVITY_FEED_READ),
            "{label}: roles {:?}",
            token.roles()
        );
        assert!(token.remaining() > Duration::from_secs(3000), "{label}");
        assert_eq!(sim.tokens_issued(), n as u64 + 1, "{label}");

        let api = ApiClient::new(
            ApiSettings::new(sim.base_url(), TENANT),
            tokens.clone(),
            http.clone(),
        );
        let subs = api
            .list_subscriptions()
            .await
            .unwrap_or_else(|e| panic!("{label}: listing subscriptions failed: {e}"));
        let mut enabled: Vec<&str> = subs
            .iter()
            .filter(|s| s.is_enabled())
            .map(|s| s.content_type.as_str())
            .collect();
        enabled.sort_unstable();
        assert_eq!(
            enabled,
            vec!["Audit.Exchange", "Audit.SharePoint"],
            "{label}"
        );
        // The API call reused the cached token instead of fetching another.
        assert_eq!(tokens.tokens_fetched(), 1, "{label}");
    }
    assert_eq!(sim.tokens_issued(), 4);
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    sim.shutdown().await;
}

// Proves an assertion naming the registered certificate but signed with another key is
// refused with AADSTS700027 (fatal, signature mismatch), and so is an unregistered
// certificate (key not found), with no token issued.
#[tokio::test]
async fn tampered_or_unknown_certificate_is_refused() {
    let (cert_pem, _registered_key) = rsa_self_signed("auth-sim-registered").expect("cert");
    let (other_cert, other_key) = rsa_self_signed("auth-sim-other").expect("cert");
    let sim = Simulator::start(sim_config(Some(&cert_pem)))
        .await
        .expect("simulator starts");

    for (alg, s256) in [(SigningAlg::Rs256, false), (SigningAlg::Ps256, true)] {
        // Registered certificate's thumbprint, foreign private key.
        let tampered = token_client(
            &sim,
            CERT_CLIENT_ID,
            cert_credential(&cert_pem, &other_key, alg, s256),
            TokenEndpoint::V2,
        );
        let err = tampered.token().await.expect_err("tampered assertion");
        assert_assertion_refused(&err, "signature value did not match");
        assert!(!format!("{err:?}").contains(other_key.trim()));

        // A certificate that is not registered on the app at all.
        let unknown = token_client(
            &sim,
            CERT_CLIENT_ID,
            cert_credential(&other_cert, &other_key, alg, s256),
            TokenEndpoint::V1,
        );
        let err = unknown.token().await.expect_err("unregistered certificate");
        assert_assertion_refused(&err, "key was not found");
    }
    assert_eq!(sim.tokens_issued(), 0);
    sim.shutdown().await;
}

// Proves that when the server clock runs an hour ahead our 10-minute assertion is already
// expired from the server's view (AADSTS700027, "expired"), that assertion_leeway_secs
// covering the skew makes the same kind of assertion acceptable, and that a clock an hour
// behind refuses it as not yet valid.
#[tokio::test]
async fn assertion_expired_or_not_yet_valid_by_server_clock() {
    let (cert_pem, key_pem) = rsa_self_signed("auth-sim-clock").expect("cert");
    let credential = || cert_credential(&cert_pem, &key_pem, SigningAlg::Rs256, false);

    // Server one hour ahead, no leeway: exp (now + 600 s) is in the server's past.
    let sim = Simulator::start(SimConfig {
        clock_skew_secs: 3600,
        ..sim_config(Some(&cert_pem))
    })
    .await
    .expect("simulator starts");
    assert!(sim.now() > chrono::Utc::now() + chrono::Duration::minutes(50));
    let tokens = token_client(&sim, CERT_CLIENT_ID, credential(), TokenEndpoint::V2);
    let err = tokens.token().await.expect_err("expired assertion");
    assert_assertion_refused(&err, "expired");
    assert_eq!(sim.tokens_issued(), 0);
    sim.shutdown().await;

    // Same skew, but a leeway as large as the skew: exp is within the tolerance.
    let sim = Simulator::start(SimConfig {
        clock_skew_secs: 3600,
        assertion_leeway_secs: 3600,
        ..sim_config(Some(&cert_pem))
    })
    .await
    .expect("simulator starts");
    let tokens = token_client(&sim, CERT_CLIENT_ID, credential(), TokenEndpoint::V2);
    tokens
        .token()
        .await
        .expect("leeway covers the skew, assertion accepted");
    assert_eq!(sim.tokens_issued(), 1);
    sim.shutdown().await;

    // Server one hour behind: nbf (now) is in the server's future.
    let sim = Simulator::start(SimConfig {
        clock_skew_secs: -3600,
        ..sim_config(Some(&cert_pem))
    })
    .await
    .expect("simulator starts");
    let tokens = token_client(&sim, CERT_CLIENT_ID, credential(), TokenEndpoint::V1);
    let err = tokens.token().await.expect_err("not-yet-valid assertion");
    assert_assertion_refused(&err, "not yet valid");
    assert_eq!(sim.tokens_issued(), 0);
    sim.shutdown().await;
}

// Proves a cached token is replaced once less than the refresh margin remains although it
// has not expired, and that the fresh token is then served from the cache.
#[tokio::test]
async fn token_is_refreshed_inside_the_margin_before_expiry() {
    let margin = Duration::from_secs(300);
    let sim = Simulator::start(SimConfig {
        token_lifetime_secs: 303,
        ..sim_config(None)
    })
    .await
    .expect("simulator starts");
    let tokens = token_client(
        &sim,
        TEST_CLIENT_ID,
        Credential::ClientSecret(SecretString::from(TEST_CLIENT_SECRET)),
        TokenEndpoint::V2,
    )
    .with_refresh_margin(margin);

    let first = tokens.token().await.expect("first token");
    assert_eq!(sim.tokens_issued(), 1);
    assert_eq!(tokens.tokens_fetched(), 1);

    // Wait (a few seconds, bounded) until the first token is inside the refresh margin.
    let mut waited = Duration::ZERO;
    while first.remaining() >= margin {
        assert!(
            waited < Duration::from_secs(30),
            "first token never entered the margin"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        waited += Duration::from_millis(250);
    }
    assert!(
        first.remaining() > Duration::ZERO,
        "first token must still be valid"
    );

    let second = tokens.token().await.expect("refreshed token");
    assert_eq!(
        sim.tokens_issued(),
        2,
        "a new token was fetched before expiry"
    );
    assert_eq!(tokens.tokens_fetched(), 2);
    assert!(second.expires_at() > first.expires_at());
    assert!(second.remaining() > margin);
    {
        use secrecy::ExposeSecret as _;
        assert_ne!(
            first.secret().expose_secret(),
            second.secret().expose_secret()
        );
    }

    let third = tokens.token().await.expect("cached token");
    assert_eq!(
        sim.tokens_issued(),
        2,
        "the fresh token came from the cache"
    );
    assert_eq!(tokens.tokens_fetched(), 2);
    assert_eq!(third.expires_at(), second.expires_at());
    sim.shutdown().await;
}

// Proves a wrong client secret is refused with AADSTS7000215, classified fatal, and that
// the secret appears neither in the error's Display nor its Debug (nor the client's Debug).
#[tokio::test]
async fn wrong_client_secret_is_fatal_and_not_leaked() {
    const WRONG: &str = "Wr0ng~Secret.value-7f3a9c2e";
    let sim = Simulator::start(sim_config(None))
        .await
        .expect("simulator starts");
    for endpoint in [TokenEndpoint::V1, TokenEndpoint::V2] {
        let tokens = token_client(
            &sim,
            TEST_CLIENT_ID,
            Credential::ClientSecret(SecretString::from(WRONG)),
            endpoint,
        );
        let err = tokens.token().await.expect_err("wrong secret");
        let (status, error, aadsts, class) = rejected(&err);
        assert_eq!(status, 401, "{err}");
        assert_eq!(error, "invalid_client", "{err}");
        assert_eq!(aadsts, Some(7_000_215), "{err}");
        assert_eq!(class, TokenErrorClass::Fatal);
        assert_eq!(err.error_type(), "token_rejected");
        let shown = err.to_string();
        let debug = format!("{err:?}");
        assert!(shown.contains("AADSTS7000215"), "{shown}");
        assert!(shown.contains("Invalid client secret"), "{shown}");
        for text in [&shown, &debug, &format!("{tokens:?}")] {
            assert!(!text.contains(WRONG), "secret leaked: {text}");
            assert!(!text.contains(TEST_CLIENT_SECRET), "secret leaked: {text}");
        }
    }
    assert_eq!(sim.tokens_issued(), 0);
    sim.shutdown().await;
}
