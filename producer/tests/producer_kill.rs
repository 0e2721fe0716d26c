//! The `m365-producer` binary killed with SIGKILL at random moments and restarted, over and
//! over: `m365.uris` still holds every published blob exactly once. Then SIGTERM stops it
//! cleanly with exit code 0.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use m365_common::kafka::TransactionMode;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_sim::Simulator;
use m365_sim::tenant::config::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use rand::{Rng, SeedableRng};
use support::*;

fn write_config(dir: &std::path::Path, sim: &Simulator, broker: &TestBroker) -> std::path::PathBuf {
    let ca = dir.join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem()).expect("write the simulator CA");
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    let tenants: Vec<serde_json::Value> = TENANTS
        .iter()
        .map(|t| {
            serde_json::json!({
                "tenant_id": t,
                "client_id": TEST_CLIENT_ID,
                "auth": {"type": "client_secret", "client_secret": TEST_CLIENT_SECRET},
                "cloud": {"api_base": base, "authority_base": base, "resource": sim.resource()},
                "ca_file": ca,
            })
        })
        .collect();
    let transactions = match broker.settings.transactions {
        TransactionMode::Off => "off",
        TransactionMode::On => "on",
        TransactionMode::Auto => "auto",
    };
    // The group hand-over is covered by producer_group.rs. tansu 0.6 does not elect a new
    // group leader after the leader dies (the producer works around it by rejoining after
    // three session timeouts, ~30 s), which six restarts in a row would turn into minutes of
    // nothing listed; on the real broker this test is about crash exactness, run alone.
    let coordination = match broker.kind {
        BrokerKind::Real | BrokerKind::RealSqlite => "none",
        BrokerKind::Embedded => "group",
    };
    let cfg = serde_json::json!({
        "tenants": tenants,
        "kafka": {
            "bootstrap_servers": broker.settings.bootstrap_servers,
            "topic_prefix": broker.settings.topic_prefix,
            "partitions": broker.settings.partitions,
            "replication_factor": 1,
            "transactions": transactions,
        },
        "producer": {
            "poll_interval_secs": 1, "settle_secs": 1, "sweep_interval_secs": 2, "sweep_horizon_hours": 24,
            "coordination": coordination,
        },
        "logging": {"level": "warn"},
        // Both tests of this file run at once: each process on a loopback port of its own.
        "metrics": {"enabled": true, "listen_address": "127.0.0.1:0"},
    });
    let path = dir.join("producer.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&cfg).expect("config serialises"),
    )
    .expect("write the config");
    path
}

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m365-producer"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the producer binary starts")
}

async fn killed_and_restarted(kind: BrokerKind, name: &str) {
    let Some(broker) = TestBroker::start(kind, name) else {
        return;
    };
    let mut cfg = base_sim_config(&TENANTS);
    cfg.page_size = 2;
    cfg.faults.late_blob_fraction = 0.2;
    cfg.faults.late_blob_delay_secs = 5;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &sim, &broker);
    // The embedded broker has no CreateTopics API: create the topics through it first (the
    // binary then finds them); on the real broker the binary creates them itself.
    if kind == BrokerKind::Embedded {
        m365_common::kafka::ensure_topics(&broker.settings)
            .await
            .expect("topics");
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..6 {
        let mut child = spawn(&config);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        child.kill().expect("SIGKILL the producer");
        let _ = child.wait();
    }

    let mut child = spawn(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(120)).await;
    // A sweep period more, so a duplicate emission would be on the topic by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait for the producer");
    assert_eq!(exit.code(), Some(0), "SIGTERM stops the producer cleanly");

    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_stays_exact_embedded_broker() {
    killed_and_restarted(BrokerKind::Embedded, "kill-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_stays_exact_real_broker() {
    killed_and_restarted(BrokerKind::Real, "kill-real").await;
}
