//! The runtime control API (`m365_sim::control`) over HTTP: fault bursts (and their end),
//! early token expiry, blob expiry on listing, fake Devo stop/resume, truth.

mod tenant_support;

use std::sync::Arc;
use std::time::Duration;

use m365_sim::control::{ControlServer, ControlState, DevoStatus};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::{ContentType, Simulator};
use serde_json::{Value, json};
use tenant_support::*;

struct Fixture {
    sim: Simulator,
    devo: Arc<FakeDevo>,
    control: ControlServer,
    http: reqwest::Client,
    plain: reqwest::Client,
}

async fn fixture() -> Fixture {
    let sim = Simulator::start(quiet_config()).await.expect("simulator");
    let devo = Arc::new(
        FakeDevo::start(FakeDevoConfig::default())
            .await
            .expect("fake Devo"),
    );
    let control = ControlServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        ControlState::new(sim.handle(), Some(devo.clone())),
    )
    .await
    .expect("control API");
    let http = client(&sim);
    Fixture {
        sim,
        devo,
        control,
        http,
        plain: reqwest::Client::new(),
    }
}

impl Fixture {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .plain
            .post(format!("{}{path}", self.control.url()))
            .json(&body)
            .send()
            .await
            .expect("control request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        self.plain
            .get(format!("{}{path}", self.control.url()))
            .send()
            .await
            .expect("control request")
            .json()
            .await
            .expect("JSON answer")
    }

    async fn list_status(&self, token: &str) -> u16 {
        api(
            &self.sim,
            &self.http,
            token,
            reqwest::Method::GET,
            TENANT,
            "subscriptions/list",
            &[],
        )
        .await
        .status()
        .as_u16()
    }
}

// Proves `POST /tokens/expire` makes every token issued before it answer 401 while a token
// fetched afterwards works.
#[tokio::test]
async fn tokens_expire_on_request() {
    let f = fixture().await;
    let old = token(&f.sim, &f.http, TENANT).await;
    assert_eq!(f.list_status(&old).await, 200);
    // Expiry has one-second resolution: tokens of the same second stay valid.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = f.post("/tokens/expire", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(f.list_status(&old).await, 401);
    let fresh = token(&f.sim, &f.http, TENANT).await;
    assert_eq!(f.list_status(&fresh).await, 200);
    f.control.shutdown().await;
    f.sim.shutdown().await;
}

// Proves a burst sets the rates (every request throttled at 1.0), a burst with `for_secs`
// restores them by itself, and an out-of-range fraction is refused with 400.
#[tokio::test]
async fn fault_bursts_apply_and_end() {
    let f = fixture().await;
    let t = token(&f.sim, &f.http, TENANT).await;
    let (status, spec) = f.post("/faults", json!({"throttle_fraction": 1.0})).await;
    assert_eq!(status, 200);
    assert_eq!(spec["throttle_fraction"], 1.0);
    assert_eq!(
        f.list_status(&t).await,
        403,
        "AF429 with the default status"
    );
    f.post("/faults", json!({"throttle_fraction": 0.0})).await;
    assert_eq!(f.list_status(&t).await, 200);

    let (status, _) = f
        .post("/faults", json!({"error_500_fraction": 1.0, "for_secs": 1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.list_status(&t).await, 500);
    let mut restored = false;
    for _ in 0..100 {
        if f.get("/faults").await["error_500_fraction"] == 0.0 {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restored, "the burst ends by itself");
    assert_eq!(f.list_status(&t).await, 200);

    let (status, body) = f.post("/faults", json!({"throttle_fraction": 2.0})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("throttle_fraction")
    );
    f.control.shutdown().await;
    f.sim.shutdown().await;
}

// Proves `POST /blobs/expire-next-listed` with count 1 makes exactly the next listed blob
// expire, as the truth served at `GET /truth` shows.
#[tokio::test]
async fn next_listed_blob_expires() {
    let f = fixture().await;
    f.sim
        .enable_subscription(TENANT, ContentType::Exchange)
        .expect("subscription");
    let id = f
        .sim
        .publish_generated(TENANT, ContentType::Exchange, 3)
        .expect("blob");
    let (status, _) = f
        .post("/blobs/expire-next-listed", json!({"count": 1}))
        .await;
    assert_eq!(status, 200);
    let t = token(&f.sim, &f.http, TENANT).await;
    let now = f.sim.now();
    let start = (now - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let end = (now + chrono::Duration::minutes(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let listing = api(
        &f.sim,
        &f.http,
        &t,
        reqwest::Method::GET,
        TENANT,
        "subscriptions/content",
        &[
            ("contentType", "Audit.Exchange"),
            ("startTime", &start),
            ("endTime", &end),
        ],
    )
    .await;
    assert_eq!(listing.status(), 200);
    let items: Vec<Value> = listing.json().await.expect("listing JSON");
    assert!(items.iter().any(|i| i["contentId"] == id.as_str()));
    let truth = f.get("/truth").await;
    let blobs = truth["tenants"][TENANT]["Audit.Exchange"]["blobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expired_of = |content_id: &Value| {
        blobs
            .iter()
            .find(|b| &b["content_id"] == content_id)
            .map(|b| b["expired"].clone())
    };
    assert_eq!(expired_of(&items[0]["contentId"]), Some(Value::Bool(true)));
    for later in &items[1..] {
        assert_eq!(expired_of(&later["contentId"]), Some(Value::Bool(false)));
    }
    f.control.shutdown().await;
    f.sim.shutdown().await;
}

// Proves `POST /devo/stop` closes the fake Devo's listeners (connects are refused) and
// `POST /devo/resume` opens them again on the same port.
#[tokio::test]
async fn devo_stops_and_resumes() {
    let f = fixture().await;
    let addr = f.devo.tls_addr();
    let (status, body) = f.post("/devo/stop", json!({})).await;
    assert_eq!(status, 200);
    let stopped: DevoStatus = serde_json::from_value(body).expect("status");
    assert!(!stopped.listening);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let (status, body) = f.post("/devo/resume", json!({})).await;
    assert_eq!(status, 200);
    let resumed: DevoStatus = serde_json::from_value(body).expect("status");
    assert!(resumed.listening);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    let stats: DevoStatus = serde_json::from_value(f.get("/devo/stats").await).expect("stats");
    assert!(stats.listening);
    f.control.shutdown().await;
    f.sim.shutdown().await;
}
