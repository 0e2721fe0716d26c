//! The `m365-forwarder` binary at trace level (`RUST_LOG=trace`) with known secrets — the
//! Devo client key, the Devo HTTP token (which travels in the request path) and a Kafka SASL
//! password property — never shows any of them on stdout, stderr, `/metrics`, `/healthz` or
//! `/readyz`, whether it delivers or Devo refuses its token.

mod forwarder_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use forwarder_support::populate;
use m365_common::kafka::{EmbeddedBroker, KafkaSettings, ensure_topics};
use m365_common::testkit::assert_absent;
use m365_common::testkit::free_port;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_m365-forwarder");
const DEVO_TOKEN: &str = "fwdsecretDevoToken8Kd2Lp5Qx";
const WRONG_TOKEN: &str = "fwdsecretWrongToken4Hs9Vb1Ne";
const SASL_PASSWORD: &str = "fwd-secret-SaslPassword-7Tg3Mc6Wy";
const EVENTS: usize = 200;

fn assert_no_secrets(text: &str, key_pem: &str) {
    assert_absent(text, "the Devo token", DEVO_TOKEN);
    assert_absent(text, "the wrong Devo token", WRONG_TOKEN);
    assert_absent(text, "the SASL password", SASL_PASSWORD);
    assert_absent(text, "a private key header", "PRIVATE KEY");
    for line in key_pem.lines().filter(|l| l.len() >= 40) {
        assert_absent(text, "a line of the client key", line);
    }
}

async fn broker_with_events(prefix: &str) -> (EmbeddedBroker, KafkaSettings) {
    let b = EmbeddedBroker::start(1).unwrap();
    let mut s = b.settings();
    s.topic_prefix = format!("{prefix}-{}", rand::rng().random::<u32>());
    s.partitions = 2;
    ensure_topics(&s).await.unwrap();
    populate(&s, EVENTS, 0).await;
    (b, s)
}

fn spawn(dir: &Path, kafka: &KafkaSettings, devo: serde_json::Value, port: u16) -> Child {
    let cfg = serde_json::json!({
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic_prefix": kafka.topic_prefix,
            "partitions": kafka.partitions,
            "properties": {"security.protocol": "PLAINTEXT", "sasl.password": SASL_PASSWORD}
        },
        "devo": devo,
        "metrics": {"enabled": true, "listen_address": format!("127.0.0.1:{port}")},
        "logging": {"level": "trace"}
    });
    let config = dir.join("forwarder.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("forwarder starts")
}

/// `/metrics`, `/healthz` and `/readyz` bodies, concatenated; empty while not listening.
async fn scrape(port: u16) -> String {
    let client = reqwest::Client::new();
    let mut all = String::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        if let Ok(resp) = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            && let Ok(body) = resp.text().await
        {
            all.push_str(&body);
        }
    }
    all
}

/// SIGTERM, then waits (bounded) for the exit; SIGKILL if it hangs.
async fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

// Proves the forwarder delivering over devo_tls with a client key and over devo_http with a
// token, at trace level, logs and serves neither, nor the SASL password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivering_at_trace_shows_no_secret() {
    let devo = FakeDevo::start(FakeDevoConfig {
        http_token: DEVO_TOKEN.to_string(),
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = devo.pki().write_to(dir.path()).unwrap();
    let key_pem = std::fs::read_to_string(&paths.client_key).unwrap();
    let outputs = [
        serde_json::json!({
            "type": "devo_tls", "address": "127.0.0.1", "port": devo.tls_addr().port(),
            "sni": "localhost", "cert_file": paths.client_cert, "key_file": paths.client_key,
            "chain_file": paths.ca
        }),
        serde_json::json!({
            "type": "devo_http", "endpoint": devo.http_base_url().expect("HTTP listener"),
            "domain": "mydomain", "token": DEVO_TOKEN
        }),
    ];
    for (n, output) in outputs.into_iter().enumerate() {
        let (_broker, kafka) = broker_with_events(&format!("fwd-secrets-{n}")).await;
        let before = devo.stats().lines_received;
        let port = free_port();
        let run_dir = dir.path().join(format!("run{n}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let child = spawn(&run_dir, &kafka, output, port);
        devo.wait_for_lines(before + EVENTS as u64, Duration::from_secs(90))
            .await
            .expect("the forwarder delivers every event");
        let served = scrape(port).await;
        assert!(
            served.contains("m365_"),
            "run {n}: /metrics was scraped: {}",
            &served[..served.len().min(200)]
        );
        stop(child).await;
        let log = std::fs::read_to_string(run_dir.join("run.log")).unwrap();
        assert!(log.contains("TRACE"), "run {n} logged at trace level");
        assert_no_secrets(&log, &key_pem);
        assert_no_secrets(&served, &key_pem);
    }
    devo.shutdown().await;
}

// Proves a token Devo refuses ends the run with an error that does not show the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_error_shows_no_secret() {
    let devo = FakeDevo::start(FakeDevoConfig {
        http_token: DEVO_TOKEN.to_string(),
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let (_broker, kafka) = broker_with_events("fwd-secrets-wrong").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let output = serde_json::json!({
        "type": "devo_http", "endpoint": devo.http_base_url().expect("HTTP listener"),
        "domain": "mydomain", "token": WRONG_TOKEN
    });
    let mut child = spawn(dir.path(), &kafka, output, port);
    // Scrape while it runs (it may already have stopped on the refusal).
    let mut served = String::new();
    for _ in 0..20 {
        served.push_str(&scrape(port).await);
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let code = match tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait().map(|s| s.code())),
    )
    .await
    {
        Ok(Ok(Ok(code))) => code,
        other => panic!("the forwarder did not stop on a refused token: {other:?}"),
    };
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert_eq!(code, Some(1), "a refused token is a failure: {log}");
    assert!(
        log.contains("401") || log.contains("403") || log.to_lowercase().contains("token"),
        "the error says Devo refused the token"
    );
    assert_no_secrets(&log, "");
    assert_no_secrets(&served, "");
    assert_eq!(devo.stats().lines_received, 0, "nothing was accepted");
    devo.shutdown().await;
}
