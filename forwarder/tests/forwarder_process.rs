//! The `m365-forwarder` binary: SIGKILLed repeatedly mid-stream it loses nothing (the
//! duplicates are counted and bounded by the uncommitted batches), a SIGTERM stops it
//! cleanly, and a wrong client certificate or server CA ends it with a clear error.

mod forwarder_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use forwarder_support::{Received, populate, produce_events, received};
use m365_common::kafka::{EmbeddedBroker, KafkaSettings, ensure_topics};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureProducer;

const BIN: &str = env!("CARGO_BIN_EXE_m365-forwarder");
const BATCH_MAX_BYTES: usize = 16 * 1024;
const CONNECTIONS: usize = 2;

/// A group's committed offset per `(topic, partition)`.
type Committed = BTreeMap<(String, i32), i64>;

/// librdkafka's session timeout in these runs: how long a SIGKILLed member stays in the
/// group (holding its partitions) before the broker evicts it.
const SESSION_TIMEOUT_MS: u64 = 4000;

fn broker(prefix: &str) -> (EmbeddedBroker, KafkaSettings) {
    let b = EmbeddedBroker::start(1).unwrap();
    let mut s = b.settings();
    s.topic_prefix = format!("{prefix}-{}", rand::rng().random::<u32>());
    s.partitions = 3;
    (b, s)
}

fn write_config(dir: &Path, kafka: &KafkaSettings, devo: serde_json::Value) -> PathBuf {
    // A killed member must leave the group quickly for the restart to take over; the mock
    // broker delays a group's first join by 3 s, so the session must outlast that.
    let mut properties = serde_json::json!({
        "session.timeout.ms": SESSION_TIMEOUT_MS.to_string(),
        "heartbeat.interval.ms": "1000"
    });
    // Debugging aid: e.g. M365_TEST_RDKAFKA_DEBUG=cgrp,consumer with
    // M365_TEST_FORWARDER_LOG=info,librdkafka=debug writes librdkafka's group traces to the
    // runs' logs.
    if let Ok(debug) = std::env::var("M365_TEST_RDKAFKA_DEBUG") {
        properties["debug"] = debug.into();
    }
    let cfg = serde_json::json!({
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "topic_prefix": kafka.topic_prefix,
            "partitions": 3,
            "properties": properties
        },
        "devo": devo,
        "metrics": {"enabled": false},
        "logging": {"level": "info"}
    });
    let path = dir.join("forwarder.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    path
}

/// Starts the binary with its log (stderr) going to `log`: a file, so a chatty run can
/// never block on a full pipe.
fn spawn(config: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(file);
    if let Ok(filter) = std::env::var("M365_TEST_FORWARDER_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd.spawn().expect("forwarder starts")
}

/// The last `n` lines of a run's log.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits (bounded) until the fake Devo has read every connection to its end, so what a
/// killed run had written is all counted.
async fn wait_connections_closed(devo: &FakeDevo) {
    let _ = devo
        .wait_until("connections closed", Duration::from_secs(10), |s| {
            s.open_connections == 0
        })
        .await;
}

/// Events the fake Devo holds whose offsets the group has not committed: what the next run
/// re-reads and sends again.
fn delivered_uncommitted(
    got: &Received,
    positions: &HashMap<(i32, i64), String>,
    committed: &Committed,
    events_topic: &str,
) -> u64 {
    positions
        .iter()
        .filter(|((p, o), id)| {
            let c = committed
                .get(&(events_topic.to_owned(), *p))
                .copied()
                .unwrap_or(0);
            *o >= c && got.ids.contains_key(*id)
        })
        .count() as u64
}

/// True when the group's committed offsets reach the end of every non-empty partition.
fn all_committed(kafka: &KafkaSettings, group: &str) -> bool {
    let committed = forwarder_support::committed(kafka, group);
    forwarder_support::end_offsets(kafka)
        .iter()
        .all(|(k, end)| committed.get(k).is_some_and(|c| c >= end))
}

// Proves the issue's crash scenario: while events keep arriving (a backlog, then a live
// stream), the binary SIGKILLed 10 times at random (seeded) moments loses no event; every
// duplicate is accounted for by a kill (an event Devo had whose offset was not committed
// yet) and the count is printed; a final run commits everything and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ten_times_loses_nothing() {
    const BACKLOG: usize = 5_000;
    const HEALTH: usize = 10;
    const KILLS: usize = 10;
    /// Live events produced per tick, and the tick: about 250 events/s.
    const LIVE_CHUNK: usize = 50;
    const LIVE_TICK: Duration = Duration::from_millis(200);
    let seed = std::env::var("M365_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6677_6b69_6c6c_u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let (_broker, kafka) = broker("fwd-kill");
    let group = format!("{}-forwarder", kafka.topic_prefix);
    let events_topic = kafka.topics().events;
    ensure_topics(&kafka).await.unwrap();
    let mut ids = populate(&kafka, BACKLOG, HEALTH).await;

    // The live stream: runs until the kills are over.
    let stop_live = tokio_util::sync::CancellationToken::new();
    let live = {
        let producer: FutureProducer = kafka.producer_config().create().unwrap();
        let topic = events_topic.clone();
        let stop = stop_live.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut next = BACKLOG;
            while !stop.is_cancelled() {
                let produced = produce_events(&producer, &topic, next..next + LIVE_CHUNK).await;
                ids.extend(produced);
                next += LIVE_CHUNK;
                tokio::time::sleep(LIVE_TICK).await;
            }
            ids
        })
    };

    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcp = devo.tcp_addr().unwrap();
    let config = write_config(
        dir.path(),
        &kafka,
        serde_json::json!({
            "type": "tcp", "address": "127.0.0.1", "port": tcp.port(),
            "batch_max_bytes": BATCH_MAX_BYTES, "batch_max_wait_ms": 100,
            "connections": CONNECTIONS, "hostname": "fwd-kill"
        }),
    );
    let log = |run: usize| dir.path().join(format!("run-{run:02}.log"));

    // Each run first waits out the previous run's ghost membership (session timeout), then
    // forwards; it is killed at a random moment of its first 1.5 s of delivery, which spans
    // the commit delay (0.5 s): some kills find the run's commits done, some not. What Devo
    // held and what the group had committed is recorded at every kill.
    let mut at_kills: Vec<(Received, Committed)> = Vec::new();
    let mut after_commit = 0;
    let mut last_committed = 0i64;
    for run in 0..KILLS {
        let before = devo.stats().lines_received;
        let mut child = spawn(&config, &log(run));
        let progressed = devo
            .wait_until("progress", Duration::from_secs(30), |s| {
                s.lines_received > before
            })
            .await;
        if let Err(e) = progressed {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "run {run} delivered nothing: {e}\n{}",
                log_tail(&log(run), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        wait_connections_closed(&devo).await;
        let committed = forwarder_support::committed(&kafka, &group);
        let committed_sum: i64 = committed.values().sum();
        if committed_sum > last_committed {
            after_commit += 1;
        }
        last_committed = committed_sum;
        at_kills.push((received(&devo), committed));
    }
    stop_live.cancel();
    ids.extend(live.await.unwrap());
    let events = ids.len();

    // A last run finishes the topic and stops cleanly on SIGTERM. It first waits for the
    // last ghost to be evicted (the session timeout), then until the group has committed
    // every partition to its end: committed, not merely delivered.
    let last = log(KILLS);
    let mut child = spawn(&config, &last);
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(SESSION_TIMEOUT_MS) * 2
        + Duration::from_secs(60);
    let mut done = false;
    while tokio::time::Instant::now() < deadline {
        if devo.stats().lines_received >= (events + HEALTH) as u64 && all_committed(&kafka, &group)
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM is a clean stop:\n{}",
        log_tail(&last, 40)
    );

    let got = received(&devo);
    let missing = got.missing(&ids);
    assert!(
        done && missing.is_empty(),
        "{} events lost, e.g. {:?}; committed {:?}, end {:?}; log of the last run:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        forwarder_support::committed(&kafka, &group),
        forwarder_support::end_offsets(&kafka),
        log_tail(&last, 60)
    );

    // Every kill found events delivered but not committed: the next run sends them again.
    let positions = forwarder_support::event_positions(&kafka).await;
    assert_eq!(positions.len(), events);
    let at_risk: Vec<u64> = at_kills
        .iter()
        .map(|(got, committed)| delivered_uncommitted(got, &positions, committed, &events_topic))
        .collect();
    let accounted: u64 = at_risk.iter().sum();
    let duplicates = got.duplicates();
    eprintln!(
        "forwarder SIGKILL x{KILLS} (seed {seed:#x}): {events} events, 0 lost, {duplicates} duplicates \
         ({after_commit} kills after the run had committed; delivered but uncommitted at each kill: {at_risk:?})"
    );
    assert!(
        at_risk.iter().filter(|&&n| n > 0).count() >= KILLS / 3,
        "the kills must hit uncommitted deliveries: {at_risk:?}"
    );
    // A duplicate can only come from a kill: an event Devo already had whose offset was not
    // committed is read and sent again by the next run.
    assert!(
        duplicates <= accounted,
        "{duplicates} duplicates, but the kills left only {accounted} delivered events uncommitted"
    );
    devo.shutdown().await;
}

/// Runs the binary against a fake Devo requiring client certificates, with `tls` as the
/// TLS part of the `devo` section; returns its exit code and stderr.
async fn run_with_tls(
    name: &str,
    tls: impl Fn(&m365_sim::certs::PkiPaths, &Path) -> serde_json::Value,
) -> (Option<i32>, String) {
    let (_broker, kafka) = broker(name);
    ensure_topics(&kafka).await.unwrap();
    populate(&kafka, 20, 0).await;
    let devo = FakeDevo::start(FakeDevoConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = devo.pki().write_to(dir.path()).unwrap();
    let mut section = tls(&paths, dir.path());
    section["type"] = "devo_tls".into();
    section["address"] = "127.0.0.1".into();
    section["sni"] = "localhost".into();
    section["port"] = devo.tls_addr().port().into();
    let config = write_config(dir.path(), &kafka, section);
    let log = dir.path().join("run.log");
    let mut child = spawn(&config, &log);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    devo.shutdown().await;
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

// Proves a client certificate the fake Devo does not trust stops the binary with exit code
// 1 and an error naming the rejected certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_certificate_fails_clearly() {
    let (code, stderr) = run_with_tls("fwd-badcert", |paths, dir| {
        let other = m365_sim::certs::TestPki::generate("other").unwrap();
        let other_paths = other.write_to(&dir.join("other")).unwrap();
        serde_json::json!({
            "cert_file": other_paths.client_cert, "key_file": other_paths.client_key,
            "chain_file": paths.ca
        })
    })
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected the client certificate"),
        "{stderr}"
    );
}

// Proves a CA file that does not verify the fake Devo's server certificate stops the
// binary with exit code 1 and an error naming the chain file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_ca_fails_clearly() {
    let (code, stderr) = run_with_tls("fwd-badca", |paths, dir| {
        let other = m365_sim::certs::TestPki::generate("other").unwrap();
        let other_paths = other.write_to(&dir.join("other")).unwrap();
        serde_json::json!({
            "cert_file": paths.client_cert, "key_file": paths.client_key,
            "chain_file": other_paths.ca
        })
    })
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not trusted by chain file"), "{stderr}");
}

// Proves a configuration without a `devo` section is refused with exit code 2.
#[test]
fn missing_devo_section_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, r#"{"kafka": {"bootstrap_servers": "127.0.0.1:1"}}"#).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("devo"));
}
