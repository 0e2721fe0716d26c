//! `m365-devo demo` and `m365-devo run`, as a user runs them.

use std::process::{Command, Stdio};
use std::time::Duration;

use m365_sim::certs::TestPki;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::config::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use m365_sim::{SimConfig, Simulator};

// The demo run as the README writes it, with a relative output folder (regression: the
// certificate paths in the generated config were resolved twice).
#[test]
fn demo_with_a_relative_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .current_dir(dir.path())
        .args([
            "demo",
            "--hours",
            "1",
            "--records-per-minute",
            "10",
            "--timeout-secs",
            "180",
        ])
        .output()
        .expect("m365-devo demo runs");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("m365-devo-demo/received").is_dir());
}

// A short demo: nothing missing, no duplicates, the intrusion's records at Devo under the right
// tags, exit code 0, and the received lines on disk.
#[test]
fn short_demo_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .args([
            "demo",
            "--hours",
            "2",
            "--records-per-minute",
            "20",
            "--timeout-secs",
            "180",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("m365-devo demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total row");
    let cols: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cols.len(), 5, "{total}");
    assert!(cols[1].parse::<u64>().unwrap() > 0, "{total}");
    assert_eq!(cols[1], cols[2], "received equals truth: {total}");
    assert_eq!(cols[3], "0", "nothing missing: {total}");
    assert_eq!(cols[4], "0", "no duplicates: {total}");
    assert!(stdout.contains("password_spray               25/25 records under cloud.office365.management.azureactivedirectory"), "{stdout}");
    assert!(
        stdout.contains(
            "inbox_rule_forwarding        1/1 records under cloud.office365.management.exchange"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "mailbox_permission           1/1 records under cloud.office365.management.exchange"
        ),
        "{stdout}"
    );
    let exchange = std::fs::read_to_string(
        dir.path()
            .join("received/cloud.office365.management.exchange.log"),
    )
    .expect("received lines on disk");
    assert!(
        exchange.contains("New-InboxRule"),
        "the forwarding rule is among the lines at Devo"
    );
}

// `m365-devo run` on the embedded broker: every record the simulator publishes reaches the
// fake Devo over TLS with a client certificate, and SIGTERM stops it with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_the_embedded_broker_delivers_and_stops_cleanly() {
    let tenant = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let mut sim_cfg = SimConfig::for_tests(&[tenant]);
    sim_cfg.history_hours = 1.0;
    sim_cfg.records_per_minute = 20.0;
    sim_cfg.live_generation = false;
    let sim = Simulator::start(sim_cfg).await.unwrap();
    let pki = TestPki::generate("run-test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = pki.write_to(&dir.path().join("devo")).unwrap();
    let devo = FakeDevo::start(FakeDevoConfig {
        pki: Some(pki),
        tcp_port: None,
        http_port: None,
        ..FakeDevoConfig::default()
    })
    .await
    .unwrap();
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem()).unwrap();
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    let cfg = serde_json::json!({
        "tenants": [{"tenant_id": tenant, "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": TEST_CLIENT_SECRET},
            "cloud": {"api_base": base, "authority_base": base, "resource": sim.resource()}, "ca_file": ca}],
        "devo": {"type": "devo_tls", "address": "127.0.0.1", "port": devo.tls_addr().port(), "sni": "localhost",
            "cert_file": paths.client_cert, "key_file": paths.client_key, "chain_file": paths.ca, "batch_max_wait_ms": 200},
        "producer": {"poll_interval_secs": 1, "settle_secs": 1, "sweep_interval_secs": 5},
        "metrics": {"enabled": false},
        "logging": {"level": "warn"},
    });
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let expected = sim.truth().all_published_record_ids();
    assert!(!expected.is_empty());

    let child = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("m365-devo run starts");
    let mut got = std::collections::BTreeMap::<String, u32>::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline && !expected.iter().all(|id| got.contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for line in devo.take_received() {
            let v: serde_json::Value = match serde_json::from_slice(&line.message) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(id) = v.get("Id").and_then(|i| i.as_str()) {
                *got.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(
        exit.status.code(),
        Some(0),
        "SIGTERM stops cleanly; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("embedded in-memory broker"),
        "the embedded broker is announced loudly:\n{stderr}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !got.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing",
        missing.len(),
        expected.len()
    );
    assert!(got.values().all(|n| *n == 1), "no record twice");
    devo.shutdown().await;
    sim.shutdown().await;
}

// Regression: the embedded broker (librdkafka's mock cluster) deletes a partition's oldest
// batches beyond 5 MiB, so a forwarder held back by a Devo outage used to find its next
// records gone. One partition, ~25 MB of events and a 25 s outage: the consumer now waits for
// the forwarder, and nothing is missing.
#[test]
fn demo_through_a_devo_outage_on_one_partition_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .args([
            "demo",
            "--hours",
            "4",
            "--records-per-minute",
            "100",
            "--partitions",
            "1",
            "--devo-outage-secs",
            "25",
            "--timeout-secs",
            "280",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("m365-devo demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("missing"),
        "the demo printed its table:\n{stdout}"
    );
}
