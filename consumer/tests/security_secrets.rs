//! The consumer binary at trace level (`RUST_LOG=trace` and `logging.level: trace`) with known
//! secrets in every secret position — a client secret, a certificate private key, a Kafka SASL
//! password property and the Devo HTTP token — downloads blobs of two tenants (one per
//! credential kind) from the simulator and never prints any of them, nor an access token, on
//! stdout or stderr. (`/metrics` is not covered here: it is being added separately.)

mod consumer_support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consumer_support::*;
use m365_common::kafka::KafkaSettings;
use m365_common::testkit::assert_absent;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_sim::Simulator;
use m365_sim::tenant::{AppSpec, ContentType, TEST_CLIENT_ID};

const CT: &str = "Audit.Exchange";
const CLIENT_SECRET: &str = "consumer-secret-ClientSecret-8Jd2Qw7Lm";
const SASL_PASSWORD: &str = "consumer-secret-SaslPassword-3Rt6Yb1Xk";
const DEVO_TOKEN: &str = "consumersecretDevoToken5Pz9Hc4Vn";

/// Writes the config, the certificate and its key; returns the config path.
fn write_config(
    dir: &Path,
    sim: &Simulator,
    kafka: &KafkaSettings,
    cert: &str,
    key: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), sim.ca_pem()).unwrap();
    std::fs::write(dir.join("app.crt"), cert).unwrap();
    std::fs::write(dir.join("app.key"), key).unwrap();
    let base = sim.base_url().to_string();
    let cloud =
        serde_json::json!({"api_base": base, "authority_base": base, "resource": sim.resource()});
    let cfg = serde_json::json!({
        "tenants": [{
            "name": "secret-tenant",
            "tenant_id": TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": CLIENT_SECRET},
            "cloud": cloud,
            "ca_file": "ca.pem",
            "services": {"exchange": {}, "uri_retry": {}}
        }, {
            "name": "cert-tenant",
            "tenant_id": OTHER_TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "certificate", "cert_file": "app.crt", "key_file": "app.key"},
            "cloud": cloud,
            "ca_file": "ca.pem",
            "services": {"exchange": {}, "uri_retry": {}}
        }],
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic_prefix": kafka.topic_prefix,
            "partitions": kafka.partitions,
            "replication_factor": 1,
            "transactions": "off",
            "properties": {"security.protocol": "PLAINTEXT", "sasl.password": SASL_PASSWORD}
        },
        "devo": {"type": "devo_http", "endpoint": "http://127.0.0.1:9", "domain": "d", "token": DEVO_TOKEN},
        "metrics": {"enabled": false},
        "logging": {"level": "trace"}
    });
    let path = dir.join("consumer.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

/// Starts the binary at trace level with both output streams captured.
fn spawn_binary(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m365-consumer"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "trace")
        .env("M365_CONSUMER_SESSION_TIMEOUT_MS", "6000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the consumer binary starts")
}

/// Reads a child stream to the end on its own thread (so a full pipe never blocks the child).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

// Proves that a consumer run at trace level, which fetched tokens with a client secret and with
// a certificate assertion and downloaded blobs of both tenants, prints none of the configured
// secrets (client secret, private key, SASL password, Devo token) nor any access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_secrets() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-secrets").unwrap();
    let kafka = ordered(&broker);
    let (cert_pem, key_pem) = m365_sim::certs::rsa_self_signed("consumer-secrets").unwrap();
    let mut cfg = quiet_sim(&[TENANT, OTHER_TENANT], 0.0);
    cfg.tenants[0].apps = vec![AppSpec::with_secret(TEST_CLIENT_ID, CLIENT_SECRET)];
    cfg.tenants[1].apps = vec![AppSpec::with_certificate(TEST_CLIENT_ID, &cert_pem)];
    let sim = Simulator::start(cfg).await.unwrap();
    let mut uris = Vec::new();
    for tenant in [TENANT, OTHER_TENANT] {
        sim.enable_subscription(tenant, ContentType::Exchange)
            .unwrap();
        let id = sim
            .publish_generated(tenant, ContentType::Exchange, 20)
            .unwrap();
        uris.push(uri_for(&sim, tenant, CT, &id));
    }
    let (_, expected) = expected_ids(&sim, sim.now() + chrono::Duration::seconds(1));
    put_uris(&kafka, &uris).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &kafka, &cert_pem, &key_pem);

    let mut child = spawn_binary(&config);
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let events = wait_for_ids(&kafka, &expected, Duration::from_secs(60)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());

    // The run did the work that handles every secret: both tenants got tokens and were read.
    let tail = &text[text.len().saturating_sub(3000)..];
    assert!(
        sim.tokens_issued() >= 2,
        "tokens issued: {}; log tail:\n{tail}",
        sim.tokens_issued()
    );
    let got: std::collections::BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(
        expected.iter().all(|id| got.contains(id.as_str())),
        "not every record arrived"
    );
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
