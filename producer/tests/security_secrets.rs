//! The producer binary at trace level (`RUST_LOG=trace` and `logging.level: trace`) with known
//! secrets in every secret position — a client secret, a certificate private key, a Kafka SASL
//! password property and the Devo HTTP token — lists the content of two tenants (one per
//! credential kind) on the simulator and never prints any of them, nor an access token, on
//! stdout or stderr. (`/metrics` is not covered here: it is being added separately.)

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use m365_common::testkit::assert_absent;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_sim::Simulator;
use m365_sim::tenant::config::TEST_CLIENT_ID;
use m365_sim::tenant::{AppSpec, ContentType, SimConfig};
use support::*;

const CLIENT_SECRET: &str = "producer-secret-ClientSecret-6Tg1Wq9Az";
const SASL_PASSWORD: &str = "producer-secret-SaslPassword-2Kx5Mv8Bp";
const DEVO_TOKEN: &str = "producersecretDevoToken7Lf3Ns0Ye";

/// Writes the config, the certificate and its key; returns the config path.
fn write_config(
    dir: &Path,
    sim: &Simulator,
    broker: &TestBroker,
    cert: &str,
    key: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), sim.ca_pem()).unwrap();
    std::fs::write(dir.join("app.crt"), cert).unwrap();
    std::fs::write(dir.join("app.key"), key).unwrap();
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    let cloud =
        serde_json::json!({"api_base": base, "authority_base": base, "resource": sim.resource()});
    let cfg = serde_json::json!({
        "tenants": [{
            "name": "secret-tenant",
            "tenant_id": TENANTS[0],
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": CLIENT_SECRET},
            "cloud": cloud,
            "ca_file": "ca.pem",
            "content_types": ["Audit.Exchange"],
        }, {
            "name": "cert-tenant",
            "tenant_id": TENANTS[1],
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "certificate", "cert_file": "app.crt", "key_file": "app.key"},
            "cloud": cloud,
            "ca_file": "ca.pem",
            "content_types": ["Audit.Exchange"],
        }],
        "kafka": {
            "bootstrap_servers": broker.settings.bootstrap_servers,
            "topic_prefix": broker.settings.topic_prefix,
            "partitions": broker.settings.partitions,
            "replication_factor": 1,
            "transactions": "off",
            "properties": {"security.protocol": "PLAINTEXT", "sasl.password": SASL_PASSWORD}
        },
        "devo": {"type": "devo_http", "endpoint": "https://127.0.0.1:9", "domain": "d", "token": DEVO_TOKEN},
        "producer": {"poll_interval_secs": 1, "settle_secs": 1, "sweep_interval_secs": 2, "sweep_horizon_hours": 24},
        "metrics": {"enabled": false},
        "logging": {"level": "trace"},
    });
    let path = dir.join("producer.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

/// Starts the binary at trace level with both output streams captured.
fn spawn_binary(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m365-producer"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the producer binary starts")
}

/// Reads a child stream to the end on its own thread (so a full pipe never blocks the child).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

// Proves that a producer run at trace level, which fetched tokens with a client secret and with
// a certificate assertion and listed both tenants' content onto m365.uris, prints none of the
// configured secrets (client secret, private key, SASL password, Devo token) nor any token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_secrets() {
    let broker = TestBroker::start(BrokerKind::Embedded, "p-secrets").unwrap();
    let (cert_pem, key_pem) = m365_sim::certs::rsa_self_signed("producer-secrets").unwrap();
    let mut cfg = SimConfig::for_tests(&TENANTS[..2]);
    cfg.live_generation = false;
    cfg.history_hours = 0.0;
    cfg.tenants[0].apps = vec![AppSpec::with_secret(TEST_CLIENT_ID, CLIENT_SECRET)];
    cfg.tenants[1].apps = vec![AppSpec::with_certificate(TEST_CLIENT_ID, &cert_pem)];
    let sim = Simulator::start(cfg).await.unwrap();
    for tenant in &TENANTS[..2] {
        sim.enable_subscription(tenant, ContentType::Exchange)
            .unwrap();
        sim.publish_generated(tenant, ContentType::Exchange, 5)
            .unwrap();
    }
    let cutoff = sim.now() + chrono::Duration::seconds(1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &broker, &cert_pem, &key_pem);
    // The embedded broker has no CreateTopics API: create the topics through it first.
    m365_common::kafka::ensure_topics(&broker.settings)
        .await
        .expect("topics");

    let mut child = spawn_binary(&config);
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let uris = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(60)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());

    // The run did the work that handles every secret: both tenants got tokens and were listed.
    let tail = &text[text.len().saturating_sub(3000)..];
    assert!(
        sim.tokens_issued() >= 2,
        "tokens issued: {}; log tail:\n{tail}",
        sim.tokens_issued()
    );
    for tenant in &TENANTS[..2] {
        assert!(
            uris.iter().any(|u| u.tenant_id == *tenant),
            "no URI listed for {tenant}"
        );
    }
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "trace logging was not on"
    );

    assert_absent(&text, "the client secret", CLIENT_SECRET);
    assert_absent(&text, "the SASL password", SASL_PASSWORD);
    assert_absent(&text, "the Devo token", DEVO_TOKEN);
    assert_absent(&text, "a private key header", "PRIVATE KEY");
    for line in key_pem.lines().filter(|l| l.len() >= 40) {
        assert_absent(&text, "a line of the private key", line);
    }
    // The simulator issues JWTs; any `eyJ` (base64 of `{"`) would be one.
    assert_absent(&text, "an access token (JWT)", "eyJ");
    sim.shutdown().await;
}
