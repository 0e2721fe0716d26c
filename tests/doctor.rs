//! `m365-devo doctor` against the fake tenant, an embedded Kafka broker and a fake Devo: all
//! checks pass on a healthy setup, and a wrong secret, a disabled subscription, a skewed
//! clock, a wrong Devo CA, missing topics and a missing role each fail with their own message.
//! No secret ever appears in the output.

use std::path::{Path, PathBuf};

use m365_common::kafka::{EmbeddedBroker, ensure_topics};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::{
    AppSpec, ContentType, ROLE_ACTIVITY_FEED_READ, SimConfig, Simulator, TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
};
use serde_json::json;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const WRONG_SECRET: &str = "wrong-secret-Zq8vK3pL0xR7";

/// A simulator, a fake Devo and a Kafka broker with the product's topics.
struct Setup {
    sim: Simulator,
    devo: FakeDevo,
    broker: EmbeddedBroker,
    dir: tempfile::TempDir,
}

fn sim_config() -> SimConfig {
    let mut cfg = SimConfig::for_tests(&[TENANT]);
    cfg.live_generation = false;
    cfg.history_hours = 0.0;
    cfg.tenants[0].subscribed = ContentType::ALL.to_vec();
    cfg
}

async fn setup(sim_cfg: SimConfig, create_topics: bool) -> Setup {
    let sim = Simulator::start(sim_cfg).await.expect("simulator starts");
    let devo = FakeDevo::start(FakeDevoConfig::default())
        .await
        .expect("fake Devo starts");
    let broker = EmbeddedBroker::start(1).expect("embedded broker starts");
    if create_topics {
        ensure_topics(&broker.settings()).await.expect("topics");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    Setup {
        sim,
        devo,
        broker,
        dir,
    }
}

/// Writes the configuration; `secret` is the client secret, `chain` the Devo CA file.
fn write_config(s: &Setup, secret: &str, chain: Option<&Path>) -> PathBuf {
    let ca = s.dir.path().join("sim-ca.pem");
    std::fs::write(&ca, s.sim.ca_pem()).expect("write the simulator CA");
    let pki = s
        .devo
        .pki()
        .write_to(&s.dir.path().join("devo"))
        .expect("write the Devo PKI");
    let base = s.sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    let cfg = json!({
        "tenants": [{
            "name": "contoso",
            "tenant_id": TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": secret},
            "cloud": {"api_base": base, "authority_base": base, "resource": s.sim.resource()},
            "ca_file": ca,
        }],
        "kafka": {"bootstrap_servers": s.broker.bootstrap_servers()},
        "devo": {
            "type": "devo_tls",
            "address": "127.0.0.1",
            "port": s.devo.tls_addr().port(),
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
            "chain_file": chain.map(Path::to_path_buf).unwrap_or(pki.ca),
            "timeout_secs": 10,
        },
        "logging": {"level": "warn"},
    });
    let path = s.dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
    path
}

/// Runs `m365-devo doctor --config path`; returns the exit code and stdout + stderr.
async fn doctor(path: &Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .arg("doctor")
        .arg("--config")
        .arg(path)
        .output()
        .await
        .expect("run m365-devo doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(TEST_CLIENT_SECRET), "secret leaked:\n{text}");
    assert!(!text.contains(WRONG_SECRET), "secret leaked:\n{text}");
    assert!(!text.contains("PRIVATE KEY"), "key leaked:\n{text}");
    assert!(!text.contains("eyJ"), "token leaked:\n{text}");
    // Shown with `--nocapture`.
    println!("{text}");
    (out.status.code().unwrap_or(-1), text)
}

/// The output line of the check whose name starts with `name`.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.strip_prefix("✔ ")
                .or_else(|| l.strip_prefix("✘ "))
                .is_some_and(|rest| rest.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{text}"))
}

fn failed_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("✘ ")).collect()
}

// Proves a healthy setup passes every check (token, roles, clock, each subscription, Kafka and
// topics, Devo handshake, certificate) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_setup_all_checks_pass() {
    let s = setup(sim_config(), true).await;
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, None)).await;
    assert_eq!(code, 0, "{text}");
    assert!(failed_lines(&text).is_empty(), "{text}");
    for name in [
        "tenant contoso: token",
        "tenant contoso: permissions",
        "tenant contoso: clock",
        "tenant contoso: subscription Audit.Exchange",
        "tenant contoso: subscription DLP.All",
        "kafka",
        "kafka topics",
        "devo TLS handshake",
        "devo client certificate",
    ] {
        assert!(line(&text, name).starts_with("✔ "), "{name}: {text}");
    }
    assert!(line(&text, "tenant contoso: permissions").contains("ActivityFeed.ReadDlp"));
    assert!(
        text.contains("All ") && text.contains("checks passed"),
        "{text}"
    );
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a wrong client secret fails the token check with AADSTS7000215 and the fix, and the
// checks needing a token say so; exit code 1; neither secret is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_fails_the_token_check() {
    let s = setup(sim_config(), true).await;
    let (code, text) = doctor(&write_config(&s, WRONG_SECRET, None)).await;
    assert_eq!(code, 1, "{text}");
    let token = line(&text, "tenant contoso: token");
    assert!(token.starts_with("✘ "), "{token}");
    assert!(token.contains("AADSTS7000215"), "{token}");
    assert!(token.contains("not its Secret ID"), "{token}");
    assert!(line(&text, "tenant contoso: subscriptions").contains("no access token"));
    // Checks that need no token still run and pass.
    assert!(
        line(&text, "tenant contoso: clock").starts_with("✔ "),
        "{text}"
    );
    assert!(
        line(&text, "devo TLS handshake").starts_with("✔ "),
        "{text}"
    );
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a subscription disabled by an administrator fails its own line (and only it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_subscription_fails_its_line() {
    let s = setup(sim_config(), true).await;
    s.sim
        .disable_subscription(TENANT, ContentType::Exchange)
        .expect("disable");
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, None)).await;
    assert_eq!(code, 1, "{text}");
    let exchange = line(&text, "tenant contoso: subscription Audit.Exchange");
    assert!(
        exchange.starts_with("✘ ") && exchange.contains("disabled"),
        "{exchange}"
    );
    assert!(exchange.contains("start it again"), "{exchange}");
    assert_eq!(failed_lines(&text), vec![exchange], "{text}");
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a server clock an hour ahead of ours fails the clock check with the amount and the
// NTP advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clock_fails_the_clock_check() {
    let mut cfg = sim_config();
    cfg.clock_skew_secs = 3600;
    let s = setup(cfg, true).await;
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, None)).await;
    assert_eq!(code, 1, "{text}");
    let clock = line(&text, "tenant contoso: clock");
    assert!(clock.starts_with("✘ "), "{clock}");
    // `Date` has whole seconds, so the measure is an hour give or take a second.
    assert!(
        clock.contains("1 h 0 min behind") || clock.contains("59 min 59 s behind"),
        "{clock}"
    );
    assert!(clock.contains("NTP"), "{clock}");
    assert_eq!(failed_lines(&text), vec![clock], "{text}");
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a Devo chain file holding an unrelated CA fails the handshake as "not trusted", naming
// the chain file and what to download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_devo_ca_fails_the_handshake() {
    let s = setup(sim_config(), true).await;
    let other = s.devo.pki().unrelated().expect("unrelated PKI");
    let chain = s.dir.path().join("wrong-chain.pem");
    std::fs::write(&chain, &other.ca_cert_pem).expect("write chain");
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, Some(&chain))).await;
    assert_eq!(code, 1, "{text}");
    let tls = line(&text, "devo TLS handshake");
    assert!(tls.starts_with("✘ "), "{tls}");
    assert!(tls.contains("not trusted"), "{tls}");
    assert!(tls.contains("wrong-chain.pem"), "{tls}");
    assert!(tls.contains("CA chain of your Devo domain"), "{tls}");
    assert_eq!(failed_lines(&text), vec![tls], "{text}");
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a reachable broker without the product's topics fails the topics check, listing them
// with how to create them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_fail_the_topics_check() {
    let s = setup(sim_config(), false).await;
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, None)).await;
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "kafka —").starts_with("✔ "), "{text}");
    let topics = line(&text, "kafka topics");
    assert!(
        topics.starts_with("✘ ") && topics.contains("missing m365.uris"),
        "{topics}"
    );
    assert!(topics.contains("kafka-topics.sh --create"), "{topics}");
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves a token without ActivityFeed.ReadDlp fails the permissions check while DLP.All is
// collected, naming the missing role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dlp_role_fails_the_permissions_check() {
    let mut cfg = sim_config();
    cfg.tenants[0].apps = vec![AppSpec {
        roles: vec![ROLE_ACTIVITY_FEED_READ.to_owned()],
        ..AppSpec::with_secret(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    }];
    let s = setup(cfg, true).await;
    let (code, text) = doctor(&write_config(&s, TEST_CLIENT_SECRET, None)).await;
    assert_eq!(code, 1, "{text}");
    let perms = line(&text, "tenant contoso: permissions");
    assert!(
        perms.starts_with("✘ ") && perms.contains("lacks ActivityFeed.ReadDlp"),
        "{perms}"
    );
    assert_eq!(failed_lines(&text), vec![perms], "{text}");
    s.sim.shutdown().await;
    s.devo.shutdown().await;
}

// Proves an invalid configuration exits 2 without running any check.
#[tokio::test]
async fn invalid_config_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.json");
    std::fs::write(&path, r#"{"tenants": [{"tenant_id": "not-a-guid"}]}"#).expect("write");
    let (code, text) = doctor(&path).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        failed_lines(&text).is_empty() && !text.contains("✔"),
        "{text}"
    );
}
