//! Fuzz target `listing`: what the API client does with a content listing answer — the JSON
//! array of `ContentBlob`s, the `NextPageUri`/`NextPageUrl` headers, and the error body
//! reader — plus the content-URI guard applied to every listed `contentUri`.
//!
//! Input: header lines `Name: value` up to the first blank line, then the body. The listing
//! steps are driven through `m365_common::api::fuzz_hooks` (the private steps of
//! `ApiClient::list_content`, without the HTTP round trip). Invariants: no panic; a parsed
//! blob list round-trips through serde unchanged; a `contentUri` accepted as the tenant's own
//! is on the API host with the tenant's feed path; a followed next-page link stays on the API
//! origin, under `/api/`, without user info, and carries `PublisherIdentifier`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use m365_common::api::fuzz_hooks::{error_body, next_page};
use m365_common::api::{ApiClient, ApiSettings, ContentBlob};
use m365_common::auth::{Credential, TokenClient, TokenEndpoint, TokenSettings};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;
use url::Url;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const BASE: &str = "https://manage.office.com";

fn client() -> &'static ApiClient {
    static CLIENT: OnceLock<ApiClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let tokens = TokenClient::new(
            TokenSettings {
                authority_base: Url::parse("https://login.example.test").expect("valid URL"),
                tenant: TENANT.to_string(),
                client_id: String::from("fuzz-client"),
                credential: Credential::ClientSecret(SecretString::from("fuzz-secret")),
                endpoint: TokenEndpoint::V2,
                resource: BASE.to_string(),
            },
            reqwest::Client::new(),
        )
        .expect("valid settings");
        let settings = ApiSettings::new(Url::parse(BASE).expect("valid URL"), TENANT);
        ApiClient::new(settings, Arc::new(tokens), reqwest::Client::new())
    })
}

fn split_input(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&data[..0], data),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, body)
}

fuzz_target!(|data: &[u8]| {
    let api = client();
    let (headers, body) = split_input(data);
    let base = Url::parse(BASE).expect("valid URL");
    let feed = format!("/api/v1.0/{TENANT}/activity/feed/");

    if let Ok(blobs) = serde_json::from_slice::<Vec<ContentBlob>>(body) {
        let text = serde_json::to_vec(&blobs).expect("blobs serialise");
        let back: Vec<ContentBlob> = serde_json::from_slice(&text).expect("blobs parse back");
        assert_eq!(blobs, back, "ContentBlob does not round-trip");
        for blob in &blobs {
            if api.is_own_content_uri(&blob.content_uri) {
                let url = Url::parse(&blob.content_uri).expect("accepted URI parses");
                assert_eq!(url.scheme(), base.scheme());
                assert_eq!(
                    url.host_str().map(str::to_ascii_lowercase),
                    base.host_str().map(str::to_string)
                );
                assert_eq!(url.port_or_known_default(), base.port_or_known_default());
                assert!(url.username().is_empty() && url.password().is_none());
                assert!(url.path().to_ascii_lowercase().starts_with(&feed));
            }
        }
    }

    let (code, message) = error_body(body);
    let _ = (code.map(|c| c.to_string()), message);

    let current = Url::parse(&format!(
        "{BASE}{feed}subscriptions/content?contentType=Audit.General&PublisherIdentifier={TENANT}"
    ))
    .expect("valid URL");
    match next_page(api, &current, &headers, "Audit.General") {
        Ok(None) => {}
        Ok(Some(url)) => {
            assert_eq!(url.scheme(), base.scheme());
            assert_eq!(url.host_str(), base.host_str());
            assert_eq!(url.port_or_known_default(), base.port_or_known_default());
            assert!(url.username().is_empty() && url.password().is_none());
            assert!(
                url.path().starts_with("/api/"),
                "next page off the API path: {url}"
            );
            assert!(
                url.query_pairs()
                    .any(|(k, _)| k.eq_ignore_ascii_case("PublisherIdentifier")),
                "next page without PublisherIdentifier: {url}"
            );
        }
        Err(e) => {
            let _ = format!("{e} {e:?}");
        }
    }
});
