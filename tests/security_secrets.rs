//! `m365-devo check-config` and `m365-devo doctor` at trace level (`RUST_LOG=trace` and
//! `logging.level: trace`) with known secrets in every secret position — a client secret, a
//! certificate private key, a Kafka SASL password property and the Devo HTTP token — never
//! print any of them, nor an access token, on stdout or stderr; and check-config's errors
//! about a broken file with the same secrets never echo them. `m365-devo run` (producer,
//! consumer and forwarder in one process) at trace level, working against the simulator and
//! the fake Devo over HTTP (the token travels in the request path), prints none of them
//! either, nor does its `/metrics`, `/healthz` or `/readyz`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use m365_common::kafka::{EmbeddedBroker, ensure_topics};
use m365_common::testkit::assert_absent;
use m365_common::testkit::free_port;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::{AppSpec, ContentType, SimConfig, Simulator, TEST_CLIENT_ID};
use serde_json::json;

const SECRET_TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CERT_TENANT: &str = "66666666-7777-4888-9999-aaaaaaaaaaaa";
const CLIENT_SECRET: &str = "devo-secret-ClientSecret-5Nq8Wd2Kx";
const SASL_PASSWORD: &str = "devo-secret-SaslPassword-1Zr4Fh7Ju";
const DEVO_TOKEN: &str = "devosecretDevoToken3Ym6Gb9Tc";

/// Asserts none of the configured secrets (nor a JWT) is in `text`.
fn assert_no_secrets(text: &str, key_pem: &str) {
    assert_absent(text, "the client secret", CLIENT_SECRET);
    assert_absent(text, "the SASL password", SASL_PASSWORD);
    assert_absent(text, "the Devo token", DEVO_TOKEN);
    assert_absent(text, "a private key header", "PRIVATE KEY");
    for line in key_pem.lines().filter(|l| l.len() >= 40) {
        assert_absent(text, "a line of the private key", line);
    }
    // The simulator issues JWTs; any `eyJ` (base64 of `{"`) would be one.
    assert_absent(text, "an access token (JWT)", "eyJ");
}

/// Runs `m365-devo <args>` at trace level; returns the exit code and stdout + stderr.
fn run(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .expect("m365-devo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The configuration with every secret, the simulator as both tenants' cloud.
fn config(
    dir: &Path,
    sim: &Simulator,
    broker: &EmbeddedBroker,
    devo: &FakeDevo,
) -> serde_json::Value {
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/').to_string();
    let cloud = json!({"api_base": base, "authority_base": base, "resource": sim.resource()});
    json!({
        "tenants": [{
            "name": "secret-tenant",
            "tenant_id": SECRET_TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": CLIENT_SECRET},
            "cloud": cloud,
            "ca_file": dir.join("ca.pem"),
            "content_types": ["Audit.Exchange"],
        }, {
            "name": "cert-tenant",
            "tenant_id": CERT_TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "certificate", "cert_file": dir.join("app.crt"), "key_file": dir.join("app.key")},
            "cloud": cloud,
            "ca_file": dir.join("ca.pem"),
            "content_types": ["Audit.Exchange"],
        }],
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers(),
            "properties": {"security.protocol": "PLAINTEXT", "sasl.password": SASL_PASSWORD}
        },
        "devo": {
            "type": "devo_http",
            "endpoint": devo.http_base_url().expect("fake Devo serves HTTP"),
            "domain": "mydomain",
            "token": DEVO_TOKEN,
        },
        "metrics": {"enabled": false},
        "logging": {"level": "trace"},
    })
}

// Proves check-config and doctor, at trace level, against a simulator that issues real tokens to
// both credential kinds, print no configured secret and no access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_check_config_at_trace_print_no_secret() {
    let (cert_pem, key_pem) = m365_sim::certs::rsa_self_signed("devo-secrets").unwrap();
    let mut cfg = SimConfig::for_tests(&[SECRET_TENANT, CERT_TENANT]);
    cfg.live_generation = false;
    cfg.history_hours = 0.0;
    cfg.tenants[0].apps = vec![AppSpec::with_secret(TEST_CLIENT_ID, CLIENT_SECRET)];
    cfg.tenants[1].apps = vec![AppSpec::with_certificate(TEST_CLIENT_ID, &cert_pem)];
    for t in &mut cfg.tenants {
        t.subscribed = vec![ContentType::Exchange];
    }
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let devo = FakeDevo::start(FakeDevoConfig {
        http_token: DEVO_TOKEN.to_string(),
        ..FakeDevoConfig::default()
    })
    .await
    .expect("fake Devo starts");
    let broker = EmbeddedBroker::start(1).expect("embedded broker starts");
    ensure_topics(&broker.settings()).await.expect("topics");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.pem"), sim.ca_pem()).unwrap();
    std::fs::write(dir.path().join("app.crt"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("app.key"), &key_pem).unwrap();
    let path: PathBuf = dir.path().join("config.json");
    let value = config(dir.path(), &sim, &broker, &devo);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();

    let (code, text) = run(&["check-config".as_ref(), path.as_os_str()]);
    assert_eq!(code, 0, "check-config: {text}");
    assert_no_secrets(&text, &key_pem);

    let (code, text) = run(&["doctor".as_ref(), "--config".as_ref(), path.as_os_str()]);
    // Both tenants got a token: the secret and the key were used during this run.
    assert!(
        sim.tokens_issued() >= 2,
        "tokens issued: {}\n{}",
        sim.tokens_issued(),
        code
    );
    assert!(
        text.contains("tenant secret-tenant: token"),
        "doctor ran its checks"
    );
    assert!(
        text.contains("tenant cert-tenant: token"),
        "doctor ran its checks"
    );
    assert_no_secrets(&text, &key_pem);

    // The same secrets in a file broken everywhere else: errors are reported, none echoed.
    let mut broken = value.clone();
    broken["tenants"][0]["tenant_id"] = json!(CLIENT_SECRET);
    broken["tenants"][1]["auth"]["key_file"] = json!(dir.path().join("missing.key"));
    broken["kafka"]["partitions"] = json!(0);
    broken["devo"]["endpoint"] = json!(DEVO_TOKEN);
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let (code, text) = run(&["check-config".as_ref(), bad.as_os_str()]);
    assert_eq!(code, 2, "check-config refuses the broken file: {text}");
    assert!(
        text.contains("tenants[0].tenant_id") || text.contains("tenant_id"),
        "{text}"
    );
    assert_no_secrets(&text, &key_pem);

    sim.shutdown().await;
    devo.shutdown().await;
}

/// `GET path` on the run's metrics listener; the body, or None while it is not up.
async fn get(port: u16, path: &str) -> Option<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

// Proves `m365-devo run` at trace level, while it collects with both credential kinds and
// delivers to Devo over HTTP with the token, prints no secret and no access token on stdout
// or stderr, and that `/metrics`, `/healthz` and `/readyz` scraped mid-run hold none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_prints_and_serves_no_secret() {
    let (cert_pem, key_pem) = m365_sim::certs::rsa_self_signed("devo-secrets-run").unwrap();
    let mut cfg = SimConfig::for_tests(&[SECRET_TENANT, CERT_TENANT]);
    cfg.history_hours = 2.0;
    cfg.tenants[0].apps = vec![AppSpec::with_secret(TEST_CLIENT_ID, CLIENT_SECRET)];
    cfg.tenants[1].apps = vec![AppSpec::with_certificate(TEST_CLIENT_ID, &cert_pem)];
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let devo = FakeDevo::start(FakeDevoConfig {
        http_token: DEVO_TOKEN.to_string(),
        ..FakeDevoConfig::default()
    })
    .await
    .expect("fake Devo starts");
    let broker = EmbeddedBroker::start(1).expect("embedded broker starts");
    // The mock cluster takes topic creation only from its owner, not over the wire.
    ensure_topics(&broker.settings()).await.expect("topics");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.pem"), sim.ca_pem()).unwrap();
    std::fs::write(dir.path().join("app.crt"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("app.key"), &key_pem).unwrap();
    let port = free_port();
    let mut value = config(dir.path(), &sim, &broker, &devo);
    value["metrics"] = json!({"enabled": true, "listen_address": format!("127.0.0.1:{port}")});
    value["producer"] = json!({"poll_interval_secs": 1, "settle_secs": 1});
    let path = dir.path().join("run.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();

    let log_path = dir.path().join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .args(["run".as_ref(), "--config".as_ref(), path.as_os_str()])
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("m365-devo run starts");

    // Work happened with every secret: both tenants got tokens and Devo took lines over HTTP.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut scraped = String::new();
    loop {
        let working = sim.tokens_issued() >= 2 && devo.stats().lines_received > 0;
        if working && let Some(metrics) = get(port, "/metrics").await {
            scraped.push_str(&metrics);
            for p in ["/healthz", "/readyz"] {
                scraped.push_str(&get(port, p).await.unwrap_or_default());
            }
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut text = String::new();
            let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
            let why: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
                .collect();
            panic!(
                "m365-devo run exited early ({status}); its log above debug level: {:#?}",
                &why[why.len().saturating_sub(40)..]
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never got both tokens and delivered (tokens {}, lines {})",
            sim.tokens_issued(),
            devo.stats().lines_received
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        scraped.contains("m365_"),
        "the scrape returned the metrics: {}",
        &scraped[..scraped.len().min(300)]
    );
    // SIGTERM: the clean stop logs too.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if stopped.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        text.contains("TRACE") || text.contains("trace"),
        "the run logged at trace level"
    );
    assert_no_secrets(&text, &key_pem);
    assert_no_secrets(&scraped, &key_pem);
    assert!(stopped.is_ok(), "m365-devo run stops on SIGTERM");

    sim.shutdown().await;
    devo.shutdown().await;
}
