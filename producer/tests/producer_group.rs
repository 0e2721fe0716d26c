//! Several producer instances sharing the streams through the producer group (issue #6):
//! every stream is run by exactly one instance at a time, the streams of an instance killed
//! with SIGKILL move to the survivor, and `m365.uris` still holds every published blob exactly
//! once. Ownership is read from the per-stream `start`/`stop` records each instance writes on
//! `m365.health` (tagged with its own `job_id`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use m365_common::health::{HealthRecord, Kind};
use m365_common::kafka::{self, KafkaSettings, TransactionMode};
use m365_common::testkit::{BrokerKind, TestBroker};
use m365_producer::ProducerSettings;
use m365_sim::Simulator;
use m365_sim::tenant::config::{ContentType, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use support::*;

/// Session timeout of the test instances (the lowest a Kafka broker accepts by default).
const SESSION_MS: u64 = 6000;
const HEARTBEAT_MS: u64 = 1000;

/// Every stream of the test configuration, as `tenant/content_type`.
fn all_streams() -> BTreeSet<String> {
    TENANTS
        .iter()
        .flat_map(|t| {
            ContentType::ALL
                .iter()
                .map(move |ct| format!("{t}/{}", ct.as_str()))
        })
        .collect()
}

/// One instance's hold on one stream: from its `start` record to its `stop` record (open
/// while it still runs the stream, or if it died).
#[derive(Debug, Clone)]
struct Hold {
    job: String,
    stream: String,
    from: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

/// The holds written on `m365.health` by every instance, per stream.
async fn holds(kafka: &KafkaSettings) -> BTreeMap<String, Vec<Hold>> {
    let mut records: Vec<HealthRecord> = read_health(kafka)
        .await
        .into_iter()
        .filter(|r| r.input_name != "office365" && matches!(r.kind, Kind::Start | Kind::Stop))
        .collect();
    records.sort_by_key(|r| r.time);
    let mut out: BTreeMap<String, Vec<Hold>> = BTreeMap::new();
    for r in records {
        let stream = format!("{}/{}", r.input_name, r.service_name);
        let list = out.entry(stream.clone()).or_default();
        match r.kind {
            Kind::Start => list.push(Hold {
                job: r.job_id,
                stream,
                from: r.time,
                until: None,
            }),
            _ => {
                if let Some(h) = list
                    .iter_mut()
                    .rev()
                    .find(|h| h.job == r.job_id && h.until.is_none())
                {
                    h.until = Some(r.time);
                }
            }
        }
    }
    out
}

/// Streams each job holds now (an open hold), by job.
fn current(holds: &BTreeMap<String, Vec<Hold>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in holds.values().flatten().filter(|h| h.until.is_none()) {
        out.entry(h.job.clone())
            .or_default()
            .insert(h.stream.clone());
    }
    out
}

/// True when `jobs` instances each run some streams and together all of `all` (between
/// a release and the matching adoption, a stream is briefly run by none).
fn settled(c: &BTreeMap<String, BTreeSet<String>>, jobs: usize, all: &BTreeSet<String>) -> bool {
    let union: BTreeSet<&String> = c.values().flatten().collect();
    c.len() == jobs && c.values().all(|s| !s.is_empty()) && union.len() == all.len()
}

/// Polls the holds until `done` accepts them (or `limit` passes) and returns the last seen.
async fn wait_for_holds(
    kafka: &KafkaSettings,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, BTreeSet<String>>) -> bool,
) -> BTreeMap<String, Vec<Hold>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let h = holds(kafka).await;
        if done(&current(&h)) || tokio::time::Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asserts that no two holds of one stream overlap in time: each new owner started after the
/// previous one stopped, or after `dead_at` for the holds of jobs that were killed.
fn assert_never_shared(
    holds: &BTreeMap<String, Vec<Hold>>,
    dead_at: &BTreeMap<String, DateTime<Utc>>,
) {
    for (stream, list) in holds {
        let mut list = list.clone();
        list.sort_by_key(|h| h.from);
        for pair in list.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            let ended = before.until.or_else(|| dead_at.get(&before.job).copied());
            let Some(ended) = ended else {
                panic!(
                    "{stream}: {} still held it when {} took it: {list:?}",
                    before.job, after.job
                );
            };
            assert!(
                ended <= after.from,
                "{stream}: held by {} until {ended} and by {} from {}: {list:?}",
                before.job,
                after.job,
                after.from
            );
        }
    }
}

fn write_config(dir: &Path, sim: &Simulator, broker: &TestBroker) -> PathBuf {
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
    let cfg = serde_json::json!({
        "tenants": tenants,
        "kafka": {
            "bootstrap_servers": broker.settings.bootstrap_servers,
            "topic_prefix": broker.settings.topic_prefix,
            "partitions": broker.settings.partitions,
            "replication_factor": 1,
            "transactions": "off",
        },
        "producer": {"poll_interval_secs": 1, "settle_secs": 1, "sweep_interval_secs": 2, "sweep_horizon_hours": 24},
        "logging": {"level": "warn"},
        // Two processes on one machine: each on a port of its own, loopback only.
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

fn spawn(config: &Path, instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_m365-producer"))
        .arg("--config")
        .arg(config)
        .args(["--instance-id", instance])
        .args(["--group-session-timeout-ms", &SESSION_MS.to_string()])
        .args(["--group-heartbeat-interval-ms", &HEARTBEAT_MS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the producer binary starts")
}

/// Kills the child with SIGKILL (dropping it would leave it running).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two `m365-producer` processes on one configuration split the 15 streams without sharing
/// any; one is SIGKILLed, the other takes its streams over; the URIs equal the truth.
async fn two_processes_one_killed(kind: BrokerKind, name: &str) {
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
    // binaries then find them); on the real broker the binaries create them themselves.
    if kind == BrokerKind::Embedded {
        kafka::ensure_topics(&broker.settings)
            .await
            .expect("topics");
        kafka::ensure_streams_topic(&broker.settings, 12)
            .await
            .expect("coordination topic");
    }
    let all = all_streams();

    // A alone takes every stream.
    let mut a = KillOnDrop(Some(spawn(&config, "a")));
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        c.values().any(|s| *s == all)
    })
    .await;
    let now = current(&h);
    let job_a = now
        .iter()
        .find(|(_, s)| **s == all)
        .map(|(j, _)| j.clone())
        .unwrap_or_else(|| panic!("instance a never ran every stream: {now:?}"));

    // B joins: once the hand-over is done, the streams are split, every one run by exactly
    // one of them.
    let b = KillOnDrop(Some(spawn(&config, "b")));
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        settled(c, 2, &all)
    })
    .await;
    let split = current(&h);
    assert_eq!(split.len(), 2, "both instances run streams: {split:?}");
    let job_b = split
        .keys()
        .find(|j| **j != job_a)
        .cloned()
        .expect("a second job");
    let (sa, sb) = (&split[&job_a], &split[&job_b]);
    assert!(
        sa.is_disjoint(sb),
        "a stream runs on both: {:?}",
        sa.intersection(sb)
    );
    let union: BTreeSet<String> = sa.union(sb).cloned().collect();
    assert_eq!(union, all, "every stream runs somewhere");

    eprintln!(
        "split: instance a runs {} streams, instance b {}",
        sa.len(),
        sb.len()
    );

    // Let both list for a while, then kill A without warning.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut child = a.0.take().expect("a runs");
    child.kill().expect("SIGKILL instance a");
    let _ = child.wait();
    let killed_at = Utc::now();

    // B takes every stream over.
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        c.get(&job_b).is_some_and(|s| *s == all)
    })
    .await;
    assert_eq!(
        current(&h).get(&job_b),
        Some(&all),
        "the survivor runs every stream"
    );

    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(120)).await;
    // A sweep period more, so a duplicate emission would be on the topic by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = b;
    let child = b.0.take().expect("b runs");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait for the producer");
    assert_eq!(exit.code(), Some(0), "SIGTERM stops the survivor cleanly");

    let h = holds(&broker.settings).await;
    assert_never_shared(&h, &BTreeMap::from([(job_a.clone(), killed_at)]));
    assert!(
        current(&h).is_empty() || current(&h).keys().all(|j| *j == job_a),
        "the survivor recorded the stop of every stream: {:?}",
        current(&h)
    );
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
async fn two_processes_share_and_take_over_embedded_broker() {
    two_processes_one_killed(BrokerKind::Embedded, "group-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_and_take_over_real_broker() {
    two_processes_one_killed(BrokerKind::Real, "group-real").await;
}

fn group_settings() -> ProducerSettings {
    ProducerSettings {
        group_session_timeout: Duration::from_millis(SESSION_MS),
        group_heartbeat_interval: Duration::from_millis(HEARTBEAT_MS),
        ..fast_settings()
    }
}

/// Two in-process instances with Kafka transactions (embedded broker): each slot commits
/// under its own transactional id; when one instance stops cleanly mid-run the other adopts
/// its slots (fencing them), and the URIs still equal the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_instances_hand_over_on_clean_stop() {
    let Some(mut broker) = TestBroker::start(BrokerKind::Embedded, "group-txn") else {
        return;
    };
    // No crash here, so the mock cluster's transactions are exact enough.
    broker.settings.transactions = TransactionMode::Auto;
    let mut cfg = base_sim_config(&TENANTS);
    cfg.faults.late_blob_fraction = 0.2;
    cfg.faults.late_blob_delay_secs = 5;
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let all = all_streams();

    let first = RunningProducer::spawn(
        ProducerSettings {
            instance_id: "first".into(),
            ..group_settings()
        },
        broker.settings.clone(),
        tenants_for(&sim, &TENANTS, None),
    );
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        c.values().any(|s| *s == all)
    })
    .await;
    let job_first = current(&h)
        .into_iter()
        .find(|(_, s)| *s == all)
        .map(|(j, _)| j)
        .expect("the first instance runs every stream");
    let second = RunningProducer::spawn(
        ProducerSettings {
            instance_id: "second".into(),
            ..group_settings()
        },
        broker.settings.clone(),
        tenants_for(&sim, &TENANTS, None),
    );
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        settled(c, 2, &all)
    })
    .await;
    let split = current(&h);
    assert_eq!(split.len(), 2, "both instances run streams: {split:?}");
    let owned: usize = split.values().map(BTreeSet::len).sum();
    assert_eq!(
        owned,
        all.len(),
        "every stream runs exactly once: {split:?}"
    );
    assert!(first.stats.windows_listed.get() > 0);

    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop().await;
    let h = wait_for_holds(&broker.settings, Duration::from_secs(90), |c| {
        c.len() == 1 && c.values().all(|s| *s == all)
    })
    .await;
    let now = current(&h);
    assert!(
        !now.contains_key(&job_first) && now.values().all(|s| *s == all),
        "the second instance took every stream over: {now:?}"
    );
    assert!(
        second.stats.streams.snapshot().len() == all.len(),
        "the second instance exports every stream's cursor"
    );

    let cutoff = sim.now() - chrono::Duration::seconds(2);
    let _ = wait_for_all(&sim, &broker.settings, cutoff, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.stop().await;

    let h = holds(&broker.settings).await;
    assert_never_shared(&h, &BTreeMap::new());
    let uris = read_uris(&broker.settings).await;
    assert_exact(&sim, &uris, cutoff);
    assert!(
        sim.violations().is_empty(),
        "violations: {:?}",
        sim.violations()
    );
    sim.shutdown().await;
}

/// An unknown coordination mode is refused before anything starts, naming both modes.
#[test]
fn unknown_coordination_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("missing.json");
    let out = Command::new(env!("CARGO_BIN_EXE_m365-producer"))
        .arg("--config")
        .arg(&config)
        .args(["--coordination", "leader"])
        .output()
        .expect("the producer binary runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`group`") && err.contains("`none`"), "{err}");
}
