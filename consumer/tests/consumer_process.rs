//! The consumer binary as a separate process: killed with SIGKILL mid-run ten times in a row
//! and still exact; a 300 MB blob with its peak RSS (VmHWM from /proc) under 150 MB; and two
//! consumers in one group with a forced rebalance, still exact.

mod consumer_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consumer_support::*;
use m365_common::kafka::KafkaSettings;
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_sim::Simulator;
use m365_sim::tenant::ContentType;

const CT: &str = "Audit.Exchange";

/// A configuration file for the binary: the simulator as the tenant's cloud, the test broker.
fn write_config(dir: &Path, sim: &Simulator, kafka: &KafkaSettings) -> std::path::PathBuf {
    std::fs::write(dir.join("ca.pem"), sim.ca_pem()).unwrap();
    let base = sim.base_url().to_string();
    let svc = serde_json::json!({"override_bloom_filter_size": 20000, "override_bloom_filter_buffer_size": 2});
    let cfg = serde_json::json!({
        "tenants": [{
            "tenant_id": TENANT,
            "client_id": m365_sim::tenant::TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": m365_sim::tenant::TEST_CLIENT_SECRET},
            "cloud": {"api_base": base, "authority_base": base, "resource": sim.resource()},
            "ca_file": "ca.pem",
            "services": {"exchange": svc, "uri_retry": {}}
        }],
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic_prefix": kafka.topic_prefix,
            "partitions": kafka.partitions,
            "replication_factor": 1,
            "transactions": "off"
        },
        "uri_retry": {"backoff_base_secs": 1, "backoff_max_secs": 2},
        "metrics": {"enabled": false},
        "logging": {"level": "warn"}
    });
    let path = dir.join("consumer.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

fn spawn_binary(config: &Path, instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m365-consumer"))
        .arg("--config")
        .arg(config)
        .arg("--instance-id")
        .arg(instance)
        .env("M365_CONSUMER_SESSION_TIMEOUT_MS", "6000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the consumer binary starts")
}

fn stop_binary(mut child: Child) {
    // SIGTERM, then wait for the clean shutdown.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Peak resident set of a process, from /proc/{pid}/status (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Publishes `blobs` blobs of `records` generated records, plus one blob repeating records of
/// the others, and writes their URIs; returns the expected ids.
async fn publish(
    sim: &Simulator,
    kafka: &KafkaSettings,
    blobs: usize,
    records: usize,
) -> std::collections::BTreeSet<String> {
    let mut uris = Vec::new();
    for _ in 0..blobs {
        let id = sim
            .publish_generated(TENANT, ContentType::Exchange, records)
            .unwrap();
        uris.push(uri_for(sim, TENANT, CT, &id));
    }
    let (_, may) = expected_ids(sim, sim.now() + chrono::Duration::seconds(1));
    put_uris(kafka, &uris).await;
    may
}

// Killed with SIGKILL ten times in a row at varying points of the run (restarted each time
// with the same instance id), then left to finish: every record on m365.events exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ten_times_is_still_exact() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-sigkill").unwrap();
    let kafka = ordered(&broker);
    let mut cfg = quiet_sim(&[TENANT], 0.0);
    cfg.max_blob_records = 100_000;
    let sim = Simulator::start(cfg).await.unwrap();
    sim.enable_subscription(TENANT, ContentType::Exchange)
        .unwrap();
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    let expected = publish(&sim, &kafka, 12, 3000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &kafka);
    for round in 0..10u64 {
        let mut child = spawn_binary(&config, "0");
        tokio::time::sleep(Duration::from_millis(4000 + 600 * round)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
    let child = spawn_binary(&config, "0");
    let events = wait_for_ids(&kafka, &expected, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_binary(child);
    let events = if events.len() < expected.len() {
        events
    } else {
        read_events(&kafka).await
    };
    assert_exact(&events, &expected, &expected);
    sim.shutdown().await;
}

// A 300 MB blob (3,000 records of 100 KB) passes through the binary with its peak RSS under
// 150 MB: the blob is streamed, never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_of_300_mb_stays_under_150_mb_rss() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-rss").unwrap();
    let kafka = ordered(&broker);
    let sim = start_quiet_sim(&[TENANT]).await;
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    let pad = "p".repeat(100_000);
    let records: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"CreationTime":"2026-11-27T10:00:00","Id":"big-{i:05}","RecordType":2,"Workload":"Exchange","Pad":"{pad}"}}"#))
        .collect();
    let id = sim
        .publish_records(TENANT, ContentType::Exchange, records)
        .unwrap();
    put_uris(&kafka, &[uri_for(&sim, TENANT, CT, &id)]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &kafka);
    let child = spawn_binary(&config, "0");
    let expected: std::collections::BTreeSet<String> =
        (0..3000).map(|i| format!("big-{i:05}")).collect();
    let events = wait_for_ids(&kafka, &expected, Duration::from_secs(300)).await;
    let rss = peak_rss(child.id());
    stop_binary(child);
    assert_eq!(events.len(), 3000);
    assert!(
        rss < 150 * 1024 * 1024,
        "peak RSS {} MB",
        rss / (1024 * 1024)
    );
    eprintln!(
        "peak RSS of the consumer for a 300 MB blob: {} MB",
        rss / (1024 * 1024)
    );
    sim.shutdown().await;
}

// Two consumers in one group share the work; a third joins and the first leaves mid-run
// (two forced rebalances): every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_and_a_rebalance_are_exact() {
    let broker = TestBroker::start(BrokerKind::Embedded, "c-group").unwrap();
    let kafka = ordered(&broker);
    let sim = start_quiet_sim(&[TENANT, OTHER_TENANT]).await;
    m365_common::kafka::ensure_topics(&kafka).await.unwrap();
    let mut uris = Vec::new();
    for round in 0..6 {
        for t in [TENANT, OTHER_TENANT] {
            for ct in ContentType::ALL {
                let id = sim.publish_generated(t, ct, 150 + round).unwrap();
                uris.push(uri_for(&sim, t, ct.as_str(), &id));
            }
        }
    }
    put_uris(&kafka, &uris).await;
    let tenants = || {
        vec![
            consumer_tenant(&sim, TENANT),
            consumer_tenant(&sim, OTHER_TENANT),
        ]
    };
    let a = RunningConsumer::spawn(fast_settings("a"), kafka.clone(), tenants());
    let b = RunningConsumer::spawn(fast_settings("b"), kafka.clone(), tenants());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = RunningConsumer::spawn(fast_settings("c"), kafka.clone(), tenants());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_stats = a.stats.clone();
    a.stop().await;
    let (must, may) = expected_ids(&sim, sim.now() + chrono::Duration::seconds(1));
    let events = wait_for_ids(&kafka, &must, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (b_stats, c_stats) = (b.stats.clone(), c.stats.clone());
    b.stop().await;
    c.stop().await;
    let events = if events.len() < must.len() {
        events
    } else {
        read_events(&kafka).await
    };
    assert_exact(&events, &must, &may);
    let fetched = [&a_stats, &b_stats, &c_stats].map(|s| s.blobs_fetched.get());
    assert!(
        fetched.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {fetched:?}"
    );
    sim.shutdown().await;
}
