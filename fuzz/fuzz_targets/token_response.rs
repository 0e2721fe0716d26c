//! Fuzz target `token_response`: the token client's parsing of the token endpoint's answer
//! (success body, error body with AADSTS codes, `expires_in` as number or string, the JWT
//! `roles` claim), through `m365_common::auth::fuzz_hooks::interpret_token_response`, the exact
//! step `TokenClient::token` runs after the HTTP request.
//!
//! Input: bytes 0–1 pick the HTTP status (mostly 200; else 400, 401, 429, 500 or the raw
//! value), the rest is the body. Invariants: no panic; a token is never empty, its `Debug`
//! never shows it, and it never outlives the request by more than `expires_in`; an error
//! renders, and its text never contains the client secret.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use m365_common::auth::fuzz_hooks::interpret_token_response;
use m365_common::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use secrecy::{ExposeSecret as _, SecretString};

const CLIENT_SECRET: &str = "fuzz-client-secret-Q7x";

fn client() -> &'static TokenClient {
    static CLIENT: OnceLock<TokenClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let settings = TokenSettings {
            authority_base: url::Url::parse("https://login.example.test").expect("valid URL"),
            tenant: String::from("00000000-0000-0000-0000-000000000001"),
            client_id: String::from("fuzz-client"),
            credential: Credential::ClientSecret(SecretString::from(CLIENT_SECRET)),
            endpoint: TokenEndpoint::V2,
            resource: String::from("https://manage.office.com"),
        };
        TokenClient::new(settings, reqwest::Client::new()).expect("valid settings")
    })
}

fn expires_in_of(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("expires_in")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = match data[0] % 8 {
        0..=3 => 200,
        4 => 400,
        5 => 401,
        6 => [429, 500, 503][usize::from(data[1]) % 3],
        _ => u16::from(data[1]) * 4,
    };
    let retry_after = (data[1] & 1 == 1).then(|| Duration::from_secs(u64::from(data[1])));
    let body = &data[2..];
    match interpret_token_response(client(), status, retry_after, body) {
        Ok(token) => {
            assert!((200..300).contains(&status));
            let secret = token.secret().expose_secret();
            assert!(!secret.is_empty(), "empty token accepted");
            // (Short tokens would match ordinary words of the Debug text.)
            if secret.len() >= 12 {
                assert!(
                    !format!("{token:?}").contains(secret),
                    "token in Debug output"
                );
            }
            if let Some(expires_in) = expires_in_of(body) {
                assert!(token.remaining() <= Duration::from_secs(expires_in));
            }
            let _ = (token.expires_at(), token.roles());
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(CLIENT_SECRET), "client secret in an error");
            let _ = (
                e.class(),
                e.is_transient(),
                e.aadsts(),
                e.retry_after(),
                e.error_type(),
            );
        }
    }
});
