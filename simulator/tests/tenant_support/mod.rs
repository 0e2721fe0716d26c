//! Helpers shared by the `tenant_*` integration tests: an HTTPS client trusting the
//! simulator's CA, token fetching and Activity API calls.
#![allow(dead_code)]

use m365_sim::tenant::{
    ContentType, SimConfig, Simulator, TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_PUBLISHER_ID,
};
use reqwest::{Client, Response};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

/// A deterministic config: no live generation, so content only changes when a test says so.
pub fn quiet_config() -> SimConfig {
    let mut cfg = SimConfig::for_tests(&[TENANT, OTHER_TENANT]);
    cfg.live_generation = false;
    cfg
}

/// Client trusting only the simulator CA; transparent gzip off so tests see raw bodies.
pub fn client(sim: &Simulator) -> Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("CA PEM");
    Client::builder()
        .tls_certs_only([ca])
        .no_gzip()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn token(sim: &Simulator, http: &Client, tenant: &str) -> String {
    let res = http
        .post(sim.token_url(tenant, true))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", TEST_CLIENT_ID),
            ("client_secret", TEST_CLIENT_SECRET),
            ("scope", "https://manage.office.com/.default"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.expect("token json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// Call `{api_root}{op}` with the given query pairs plus PublisherIdentifier.
pub async fn api(
    sim: &Simulator,
    http: &Client,
    token: &str,
    method: reqwest::Method,
    tenant: &str,
    op: &str,
    query: &[(&str, &str)],
) -> Response {
    let mut url = sim.api_root(tenant).join(op).expect("url");
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
        pairs.append_pair("PublisherIdentifier", TEST_PUBLISHER_ID);
    }
    http.request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .expect("api request")
}

pub async fn start_sub(
    sim: &Simulator,
    http: &Client,
    token: &str,
    tenant: &str,
    ct: ContentType,
) -> Response {
    api(
        sim,
        http,
        token,
        reqwest::Method::POST,
        tenant,
        "subscriptions/start",
        &[("contentType", ct.as_str())],
    )
    .await
}

pub async fn error_code(res: Response) -> (u16, String) {
    let status = res.status().as_u16();
    let v: serde_json::Value = res.json().await.expect("error json");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `YYYY-MM-DDTHH:MM:SS` as the API expects.
pub fn fmt(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}
