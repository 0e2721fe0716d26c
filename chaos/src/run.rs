//! The chaos run: start tansu, `m365-sim` (tenant + fake Devo + control API) and the three
//! stage binaries as separate processes; run the planned trials (faults with their
//! recoveries, overlapping a little); then stop injecting, let the pipeline drain, and
//! compare what Devo received with the simulator's truth.
//!
//! The driver is also the supervisor a deployment would have: a stage or broker that ends
//! on its own is restarted; a broker that stops answering is restarted; a stage whose
//! consumer groups have records waiting but commit nothing for a long time is stopped
//! cleanly and started again. The report lists each of these, apart from the faults the
//! trials inject.
//!
//! The stages join their consumer groups with static membership (`group.instance.id`) by
//! default: tansu 0.6's group coordinator mishandles a member that vanishes without leaving
//! (a SIGKILLed stage) while its replacement joins — it can form the group with no partition
//! assigned, or keep waiting for a leader that already left — and a static member that comes
//! back takes its old place instead. [`ChaosOptions::static_membership`] turns it off to
//! show those broker bugs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use m365_sim::control::FaultBurst;
use m365_sim::tenant::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::diagnose::{diagnose, duplicate_origins, group_lag_lines};
use crate::plan::{FaultKind, Trial, plan};
use crate::procs::{Broker, Managed, find_binary, find_tansu, free_port};
use crate::received::Received;
use crate::report::{Report, compare};
use crate::simproc::{Control, SimOptions, SimProcess};
use crate::watchdog::{GroupWatch, blocking, probe_broker};

/// The simulated tenant.
const TENANT: &str = "c4a05e11-7d3b-4f2a-9e61-0b8d2c6f4a17";
/// Topic prefix of the run.
const PREFIX: &str = "chaos";
/// Devo tag of the health records.
const HEALTH_TAG: &str = "my.app.m365devo.health";
/// Access-token lifetime: the stages refresh 300 s before expiry, so this makes them fetch a
/// new token every 20 s or so, all run long.
const TOKEN_LIFETIME_SECS: u64 = 320;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Seed of the plan and of the simulated tenant.
    pub seed: u64,
    /// Number of trials.
    pub trials: usize,
    /// Records per minute the tenant produces.
    pub records_per_minute: f64,
    /// Hours of history present at the start.
    pub history_hours: f64,
    /// Folder for configuration, logs, broker data and received events (emptied first).
    pub out: PathBuf,
    /// Folder holding m365-producer, m365-consumer, m365-forwarder and m365-sim (default:
    /// next to the running executable, or its parent).
    pub bin_dir: Option<PathBuf>,
    /// The tansu binary (default: `tansu` on PATH, then `~/.cargo/bin/tansu`).
    pub broker_bin: Option<PathBuf>,
    /// Longest wait for the pipeline to deliver everything after the trials.
    pub drain_timeout: Duration,
    /// The drain also gives up when Devo received nothing new for this long (so a bigger
    /// run, with more to deliver, gets a longer drain as long as it keeps delivering).
    pub drain_idle_timeout: Duration,
    /// Kafka group session timeout of the stages: how soon a vanished member's partitions
    /// move. Generous: tansu serves every storage operation (heartbeats included) from one
    /// task, and one fetch far behind the end of a partition holds it for seconds (its
    /// sqlite query reads the partition to its end), longer on a busy disk; a live member
    /// must not lose its session to that. With static membership a killed stage that comes
    /// back takes its place at once, so a long timeout costs little.
    pub session_timeout: Duration,
    /// Stages join their groups with a `group.instance.id` of their own (see the module
    /// docs); `false` gives them dynamic membership.
    pub static_membership: bool,
    /// `M365_PRODUCER_COORDINATION` for the producer (`none` or `group`); `None` leaves the
    /// driver's own environment to decide.
    pub producer_coordination: Option<String>,
    /// A broker that answers no metadata request for this long is restarted.
    pub broker_stall_after: Duration,
    /// A stage whose groups have records waiting but commit nothing for this long is
    /// stopped cleanly and started again. Long: a consumer that starts again first rebuilds
    /// its dedup filter from the state and events topics, which on tansu takes minutes.
    pub stage_stall_after: Duration,
    /// A consumer group stuck this long by one of tansu 0.6's coordinator bugs gets its
    /// membership state reset (see [`crate::tansu`]).
    pub group_repair_after: Duration,
}

impl ChaosOptions {
    /// Defaults for `seed` and `trials`, writing under `out`.
    pub fn new(seed: u64, trials: usize, out: &Path) -> ChaosOptions {
        ChaosOptions {
            seed,
            trials,
            records_per_minute: 200.0,
            history_hours: 0.1,
            out: out.to_path_buf(),
            bin_dir: None,
            broker_bin: None,
            drain_timeout: Duration::from_secs(1800),
            drain_idle_timeout: Duration::from_secs(240),
            session_timeout: Duration::from_secs(30),
            static_membership: true,
            producer_coordination: None,
            broker_stall_after: Duration::from_secs(60),
            stage_stall_after: Duration::from_secs(240),
            group_repair_after: Duration::from_secs(15),
        }
    }
}

/// Prints one progress line to stderr, stamped with the run's elapsed time.
fn say(start: Instant, msg: impl std::fmt::Display) {
    eprintln!("[chaos {:>7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// The components trials act on. Each lock serialises the faults of one component; the
/// supervisor only looks at a component nobody holds.
struct Components {
    producer: Mutex<Managed>,
    consumer: Mutex<Managed>,
    forwarder: Mutex<Managed>,
    broker: Mutex<Broker>,
    devo: Mutex<()>,
    api: Mutex<()>,
    control: Control,
    exits: std::sync::Mutex<Vec<String>>,
    broker_stalls: std::sync::Mutex<Vec<String>>,
    group_repairs: std::sync::Mutex<Vec<String>>,
    stage_stalls: std::sync::Mutex<Vec<String>>,
    /// False while the broker probe fails (the stage watchdog then waits).
    broker_answers: std::sync::atomic::AtomicBool,
    start: Instant,
}

impl Components {
    fn stage(&self, kind: FaultKind) -> Option<&Mutex<Managed>> {
        match kind {
            FaultKind::KillProducer => Some(&self.producer),
            FaultKind::KillConsumer => Some(&self.consumer),
            FaultKind::KillForwarder => Some(&self.forwarder),
            _ => None,
        }
    }

    fn note_exit(&self, what: String) {
        say(self.start, format!("supervisor: {what}"));
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    fn note(&self, list: &std::sync::Mutex<Vec<String>>, what: String) {
        say(self.start, format!("watchdog: {what}"));
        let at = self.start.elapsed().as_secs_f64();
        list.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("at {at:.0} s: {what}"));
    }
}

/// Runs one trial: the fault, the hold, the recovery.
async fn run_trial(c: &Components, t: &Trial) -> anyhow::Result<()> {
    let hold = t.hold;
    match t.kind {
        FaultKind::KillProducer | FaultKind::KillConsumer | FaultKind::KillForwarder => {
            let Some(lock) = c.stage(t.kind) else {
                return Ok(());
            };
            let mut stage = lock.lock().await;
            tokio::task::block_in_place(|| stage.kill())?;
            tokio::time::sleep(hold).await;
            stage.start()?;
        }
        FaultKind::BrokerRestart => {
            let mut broker = c.broker.lock().await;
            tokio::task::block_in_place(|| broker.kill())?;
            tokio::time::sleep(hold).await;
            tokio::task::block_in_place(|| broker.start(Duration::from_secs(60)))?;
        }
        FaultKind::DevoOutage => {
            let _devo = c.devo.lock().await;
            c.control.devo_stop().await?;
            tokio::time::sleep(hold).await;
            c.control.devo_resume().await?;
        }
        FaultKind::ApiThrottle | FaultKind::Api500 => {
            let _api = c.api.lock().await;
            let (on, off) = if t.kind == FaultKind::ApiThrottle {
                (
                    FaultBurst {
                        throttle_fraction: Some(0.8),
                        ..FaultBurst::default()
                    },
                    FaultBurst {
                        throttle_fraction: Some(0.0),
                        ..FaultBurst::default()
                    },
                )
            } else {
                (
                    FaultBurst {
                        error_500_fraction: Some(0.8),
                        ..FaultBurst::default()
                    },
                    FaultBurst {
                        error_500_fraction: Some(0.0),
                        ..FaultBurst::default()
                    },
                )
            };
            c.control.burst(&on).await?;
            tokio::time::sleep(hold).await;
            c.control.burst(&off).await?;
        }
        FaultKind::TokenExpiry => c.control.expire_tokens().await?,
        FaultKind::BlobExpiry => c.control.expire_next_listed(1).await?,
    }
    Ok(())
}

/// Restarts whatever ended on its own, every half second, until `stop`.
async fn supervise(c: Arc<Components>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        for lock in [&c.producer, &c.consumer, &c.forwarder] {
            if let Ok(mut stage) = lock.try_lock()
                && let Some(status) = stage.exited()
            {
                let what = format!(
                    "{} ended on its own ({status}; log {}); restarted",
                    stage.name(),
                    stage.log_path().display()
                );
                c.note_exit(what);
                if let Err(e) = stage.start() {
                    c.note_exit(format!("{} could not be restarted: {e}", stage.name()));
                }
            }
        }
        if let Ok(mut broker) = c.broker.try_lock()
            && let Some(status) = broker.process().exited()
        {
            c.note_exit(format!("the broker ended on its own ({status}); restarted"));
            if let Err(e) = tokio::task::block_in_place(|| broker.start(Duration::from_secs(60))) {
                c.note_exit(format!("the broker could not be restarted: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Probes the broker every 2 s; one that answered no probe for `stall_after` (while running
/// and not being restarted by a trial) is killed and started again on the same storage.
async fn watch_broker(c: Arc<Components>, stop: CancellationToken, stall_after: Duration) {
    use std::sync::atomic::Ordering;
    // (first failed probe, broker run it belongs to, last error)
    let mut failing: Option<(Instant, u32, String)> = None;
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(mut broker) = c.broker.try_lock() else {
            // A trial is restarting it.
            failing = None;
            continue;
        };
        let (addr, run, running) = (
            broker.bootstrap(),
            broker.process().runs(),
            broker.process().is_running(),
        );
        drop(broker);
        if !running {
            failing = None;
            continue;
        }
        // tansu answers nothing while one slow fetch holds its storage task (seconds, on a
        // busy machine ten or more): only a long silence counts.
        match probe_broker(&addr, Duration::from_secs(10)).await {
            Ok(_) => {
                failing = None;
                c.broker_answers.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                c.broker_answers.store(false, Ordering::Relaxed);
                let entry = match failing.take() {
                    Some((since, r, _)) if r == run => (since, r, e.to_string()),
                    _ => (Instant::now(), run, e.to_string()),
                };
                let silent_for = entry.0.elapsed();
                if silent_for < stall_after {
                    failing = Some(entry);
                    continue;
                }
                let mut broker = c.broker.lock().await;
                if broker.process().runs() != run {
                    continue;
                }
                let what = format!(
                    "the broker answered no metadata request for {:.0} s (last: {}); restarted it (log {})",
                    silent_for.as_secs_f64(),
                    entry.2,
                    broker.process().log_path().display()
                );
                let restarted = tokio::task::block_in_place(|| {
                    broker.kill()?;
                    broker.start(Duration::from_secs(60))
                });
                match restarted {
                    Ok(()) => c.note(&c.broker_stalls, what),
                    Err(e) => c.note(&c.broker_stalls, format!("{what}; the restart failed: {e}")),
                }
            }
        }
    }
}

/// One stage as the stage watchdog sees it.
struct StageWatch {
    name: &'static str,
    groups: Arc<Vec<GroupWatch>>,
    /// Committed-offset total at the last progress, since when, and the stage and broker
    /// runs it was seen in.
    progress: Option<(i64, Instant, (u32, u32))>,
}

/// Every 5 s, reads the committed offsets and watermarks of the consumer's and the
/// forwarder's groups. A stage with records waiting whose groups committed nothing for
/// `stall_after` (while it runs, no trial holds it and the broker answers) is stopped with
/// SIGTERM and started again; the report lists it with how the broker described its groups.
async fn watch_stages(
    c: Arc<Components>,
    stop: CancellationToken,
    bootstrap: String,
    stall_after: Duration,
) {
    use std::sync::atomic::Ordering;
    let topics = m365_common::kafka::Topics::new(PREFIX);
    let timeout = Duration::from_secs(5);
    let watch =
        |group: String, topics: Vec<String>| GroupWatch::new(&bootstrap, &group, &topics, timeout);
    let built = (|| -> Result<Vec<StageWatch>, crate::watchdog::WatchError> {
        Ok(vec![
            StageWatch {
                name: "consumer",
                groups: Arc::new(vec![
                    watch(format!("{PREFIX}-consumer"), vec![topics.uris.clone()])?,
                    watch(format!("{PREFIX}-uri-retry"), vec![topics.retry.clone()])?,
                ]),
                progress: None,
            },
            StageWatch {
                name: "forwarder",
                groups: Arc::new(vec![watch(
                    format!("{PREFIX}-forwarder"),
                    vec![topics.events.clone(), topics.health.clone()],
                )?]),
                progress: None,
            },
        ])
    })();
    let mut stages = match built {
        Ok(s) => s,
        Err(e) => {
            c.note(
                &c.stage_stalls,
                format!("the stage watchdog could not start: {e}"),
            );
            return;
        }
    };
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for sw in &mut stages {
            let lock = if sw.name == "consumer" {
                &c.consumer
            } else {
                &c.forwarder
            };
            let run = match lock.try_lock() {
                Ok(stage) if stage.is_running() => stage.runs(),
                // Held by a trial, or not running: the trial / the supervisor acts.
                _ => {
                    sw.progress = None;
                    continue;
                }
            };
            let broker_run = match c.broker.try_lock() {
                Ok(b) if c.broker_answers.load(Ordering::Relaxed) => b.runs(),
                _ => {
                    sw.progress = None;
                    continue;
                }
            };
            let run = (run, broker_run);
            let groups = sw.groups.clone();
            let lags = blocking(move || groups.iter().map(GroupWatch::lag).collect()).await;
            let lags: Vec<crate::watchdog::GroupLag> = match lags {
                Ok(l) => l,
                Err(_) => {
                    // The broker is busy or restarting: no judgement this round.
                    sw.progress = None;
                    continue;
                }
            };
            let committed: i64 = lags.iter().map(|l| l.committed).sum();
            let waiting: i64 = lags.iter().map(|l| l.lag()).sum();
            let now = Instant::now();
            let since = match sw.progress {
                Some((at, since, r)) if r == run && at == committed && waiting > 0 => since,
                _ => {
                    sw.progress = Some((committed, now, run));
                    continue;
                }
            };
            let stalled_for = now.duration_since(since);
            if stalled_for < stall_after {
                continue;
            }
            sw.progress = None;
            let groups = sw.groups.clone();
            let views = blocking(move || {
                Ok(groups
                    .iter()
                    .map(|w| match w.describe() {
                        Ok(v) => format!(
                            "{} {} with {} member(s)",
                            w.group(),
                            v.state,
                            v.members.len()
                        ),
                        Err(_) => format!("{} (not described)", w.group()),
                    })
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap_or_default();
            let detail = lags
                .iter()
                .flat_map(|l| l.topics.iter())
                .map(|(t, (done, high))| format!("{t} {done}/{high}"))
                .collect::<Vec<_>>()
                .join(", ");
            let Ok(mut stage) = lock.try_lock() else {
                continue;
            };
            let outcome = tokio::task::block_in_place(|| {
                stage
                    .terminate(Duration::from_secs(20))
                    .and_then(|_| stage.start())
            });
            let what = format!(
                "{}: {waiting} records waiting, nothing committed for {:.0} s (committed/written: {detail}; the broker describes {}); stopped with SIGTERM and started again",
                sw.name,
                stalled_for.as_secs_f64(),
                views.join(", ")
            );
            match outcome {
                Ok(()) => c.note(&c.stage_stalls, what),
                Err(e) => c.note(&c.stage_stalls, format!("{what}; the restart failed: {e}")),
            }
        }
    }
}

/// Every 5 s, reads the consumer groups' state from tansu's database; a group stuck by one
/// of tansu 0.6's coordinator bugs (see [`crate::tansu`]) for `repair_after` gets its
/// membership state reset while the broker is stopped and started again.
async fn watch_tansu_groups(
    c: Arc<Components>,
    stop: CancellationToken,
    db: PathBuf,
    repair_after: Duration,
) {
    let topics = m365_common::kafka::Topics::new(PREFIX);
    let topics_of: BTreeMap<String, Vec<String>> = [
        (format!("{PREFIX}-consumer"), vec![topics.uris.clone()]),
        (format!("{PREFIX}-uri-retry"), vec![topics.retry.clone()]),
        (
            format!("{PREFIX}-forwarder"),
            vec![topics.events.clone(), topics.health.clone()],
        ),
    ]
    .into_iter()
    .collect();
    let topics_of = Arc::new(topics_of);
    // group -> (what is wrong, since when, broker run)
    let mut seen: BTreeMap<String, (String, Instant, u32)> = BTreeMap::new();
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let run = match c.broker.try_lock() {
            Ok(b) if b.is_running() => b.runs(),
            _ => {
                seen.clear();
                continue;
            }
        };
        let (db2, t2) = (db.clone(), topics_of.clone());
        let stuck = match tokio::task::spawn_blocking(move || crate::tansu::stuck_groups(&db2, &t2))
            .await
        {
            Ok(Ok(s)) => s,
            // Locked or mid-write: judge next round.
            _ => continue,
        };
        let now = Instant::now();
        seen.retain(|g, (why, _, r)| {
            *r == run && stuck.iter().any(|s| &s.group == g && s.why == *why)
        });
        for s in &stuck {
            seen.entry(s.group.clone())
                .or_insert_with(|| (s.why.clone(), now, run));
        }
        let due: Vec<(String, String, Duration)> = seen
            .iter()
            .filter(|(_, (_, since, _))| now.duration_since(*since) >= repair_after)
            .map(|(g, (why, since, _))| (g.clone(), why.clone(), now.duration_since(*since)))
            .collect();
        if due.is_empty() {
            continue;
        }
        seen.clear();
        let mut broker = c.broker.lock().await;
        if broker.process().runs() != run {
            continue;
        }
        let groups: Vec<String> = due.iter().map(|(g, _, _)| g.clone()).collect();
        let repaired = tokio::task::block_in_place(|| -> anyhow::Result<()> {
            broker.kill()?;
            let reset = crate::tansu::reset_groups(&db, &groups);
            // Started again whether or not the reset worked.
            broker.start(Duration::from_secs(60))?;
            Ok(reset?)
        });
        for (g, why, for_) in &due {
            let what = format!(
                "tansu group {g} stuck for {:.0} s by {why}; reset its membership state (offsets kept) with the broker stopped",
                for_.as_secs_f64()
            );
            match &repaired {
                Ok(()) => c.note(&c.group_repairs, what),
                Err(e) => c.note(
                    &c.group_repairs,
                    format!("{what}; the repair failed: {e:#}"),
                ),
            }
        }
    }
}

/// The configuration of one stage (`config-<stage>.json`): the same for all three but for
/// the static group membership id.
fn write_config(
    dir: &Path,
    sim: &SimProcess,
    bootstrap: &str,
    stage: &str,
    opts: &ChaosOptions,
) -> anyhow::Result<PathBuf> {
    let r = &sim.ready;
    let mut properties = serde_json::json!({
        "session.timeout.ms": opts.session_timeout.as_millis().to_string(),
        // Each heartbeat is a write to tansu's database: not more often than needed.
        "heartbeat.interval.ms": (opts.session_timeout.as_millis() / 10).clamp(1000, 3000).to_string(),
    });
    if opts.static_membership {
        properties["group.instance.id"] = serde_json::Value::String(format!("{PREFIX}-{stage}"));
    }
    let base = r.base_url.trim_end_matches('/');
    let cfg = serde_json::json!({
        "tenants": [{
            "name": "chaos",
            "tenant_id": TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": TEST_CLIENT_SECRET},
            "cloud": {"api_base": base, "authority_base": base, "resource": r.resource},
            "ca_file": r.ca_pem,
        }],
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": PREFIX,
            "partitions": 3,
            "replication_factor": 1,
            "transactions": "off",
            "properties": properties,
        },
        "devo": {
            "type": "devo_tls",
            "address": "127.0.0.1",
            "port": r.devo.tls_port,
            "sni": "localhost",
            "cert_file": r.devo.client_cert,
            "key_file": r.devo.client_key,
            "chain_file": r.devo.ca_pem,
            "batch_max_wait_ms": 200,
        },
        "producer": {"poll_interval_secs": 2, "settle_secs": 1, "sweep_interval_secs": 30, "sweep_horizon_hours": 1},
        "uri_retry": {"backoff_base_secs": 1, "backoff_max_secs": 5},
        "health": {"heartbeat_secs": 30, "tag": HEALTH_TAG},
        "metrics": {"enabled": false},
        "logging": {"level": "info"},
    });
    let path = dir.join(format!("config-{stage}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs the whole scenario and returns the report.
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<Report> {
    let start = Instant::now();
    let bin = |name: &str| {
        let explicit = opts.bin_dir.as_ref().map(|d| d.join(name));
        find_binary(name, explicit.as_deref())
    };
    let producer_bin = bin("m365-producer")?;
    let consumer_bin = bin("m365-consumer")?;
    let forwarder_bin = bin("m365-forwarder")?;
    let sim_bin = bin("m365-sim")?;
    let tansu = find_tansu(opts.broker_bin.as_deref())?;

    if opts.out.exists() {
        std::fs::remove_dir_all(&opts.out)
            .with_context(|| format!("emptying {}", opts.out.display()))?;
    }
    let logs = opts.out.join("logs");
    let broker_dir = opts.out.join("broker");
    for d in [&logs, &broker_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let out = std::fs::canonicalize(&opts.out)?;
    let logs = out.join("logs");
    say(
        start,
        format!(
            "seed {}, {} trials; files in {}",
            opts.seed,
            opts.trials,
            out.display()
        ),
    );

    let port = free_port()?;
    let mut broker = Broker::new(&tansu, &out.join("broker"), &logs, port);
    tokio::task::block_in_place(|| broker.start(Duration::from_secs(30)))?;
    say(start, format!("tansu listening on {}", broker.bootstrap()));

    let sim_opts = SimOptions {
        tenant: TENANT.to_owned(),
        seed: opts.seed,
        records_per_minute: opts.records_per_minute,
        history_hours: opts.history_hours,
        blob_interval_secs: 10,
        token_lifetime_secs: TOKEN_LIFETIME_SECS,
        duplicate_record_fraction: 0.05,
    };
    let mut sim =
        tokio::task::block_in_place(|| SimProcess::start(&sim_bin, &out, &logs, &sim_opts))?;
    say(start, format!("m365-sim ready at {}", sim.ready.base_url));
    let bootstrap = broker.bootstrap();
    let control = Control::new(&sim.ready.control_url);
    let stage = |name: &str, program: &Path| -> anyhow::Result<Managed> {
        let config = write_config(&out, &sim, &bootstrap, name, opts)?;
        Ok(Managed::new(name, program, &logs)
            .args([std::ffi::OsString::from("--config"), config.into()]))
    };
    let mut producer = stage("producer", &producer_bin)?;
    if let Some(mode) = &opts.producer_coordination {
        producer = producer.env("M365_PRODUCER_COORDINATION", mode);
    }
    let consumer = stage("consumer", &consumer_bin)?.env(
        "M365_CONSUMER_SESSION_TIMEOUT_MS",
        &opts.session_timeout.as_millis().to_string(),
    );
    let forwarder = stage("forwarder", &forwarder_bin)?;
    // The producer first: it creates the topics the others read.
    producer.start()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = Arc::new(Components {
        producer: Mutex::new(producer),
        consumer: Mutex::new(consumer),
        forwarder: Mutex::new(forwarder),
        broker: Mutex::new(broker),
        devo: Mutex::new(()),
        api: Mutex::new(()),
        control: control.clone(),
        exits: std::sync::Mutex::new(Vec::new()),
        broker_stalls: std::sync::Mutex::new(Vec::new()),
        group_repairs: std::sync::Mutex::new(Vec::new()),
        stage_stalls: std::sync::Mutex::new(Vec::new()),
        broker_answers: std::sync::atomic::AtomicBool::new(true),
        start,
    });
    c.consumer.lock().await.start()?;
    c.forwarder.lock().await.start()?;
    let stop = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(c.clone(), stop.clone()));
    let broker_watch = tokio::spawn(watch_broker(
        c.clone(),
        stop.clone(),
        opts.broker_stall_after,
    ));
    let stage_watch = tokio::spawn(watch_stages(
        c.clone(),
        stop.clone(),
        bootstrap.clone(),
        opts.stage_stall_after,
    ));
    let tansu_watch = if crate::tansu::sqlite3_available() {
        Some(tokio::spawn(watch_tansu_groups(
            c.clone(),
            stop.clone(),
            crate::tansu::db_path(&out.join("broker")),
            opts.group_repair_after,
        )))
    } else {
        say(
            start,
            "sqlite3 not found: the check of tansu's consumer groups is off",
        );
        None
    };
    // On any early return the supervisor stops, so the components (and their processes,
    // killed on drop) go away with the last reference.
    let _stop_on_return = stop.clone().drop_guard();

    let mut received = Received::new(&sim.ready.devo.out_dir, HEALTH_TAG);
    // Warm-up: the pipeline must deliver something before the chaos starts.
    let warm_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        received.poll()?;
        if !received.ids.is_empty() {
            break;
        }
        if Instant::now() > warm_deadline {
            stop.cancel();
            anyhow::bail!(
                "the pipeline delivered nothing to Devo within 180 s before any fault; see the logs in {}",
                logs.display()
            );
        }
        if let Some(status) = sim.exited() {
            anyhow::bail!("m365-sim ended ({status}); see {}", sim.log().display());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(start, "pipeline delivering; trials begin");

    // The trials.
    let trials = plan(opts.seed, opts.trials);
    let mut counts: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let trials_start = Instant::now();
    let mut running = Vec::new();
    let total = trials.len();
    for t in trials {
        let due = trials_start + t.at;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        received.poll()?;
        if let Some(status) = sim.exited() {
            anyhow::bail!("m365-sim ended ({status}); see {}", sim.log().display());
        }
        *counts.entry(t.kind).or_default() += 1;
        say(
            start,
            format!(
                "trial {}/{total}: {} (hold {:.1} s); Devo has {} records",
                t.number,
                t.kind,
                t.hold.as_secs_f64(),
                received.ids.len()
            ),
        );
        let comps = c.clone();
        running.push(tokio::spawn(async move {
            run_trial(&comps, &t)
                .await
                .with_context(|| format!("trial {} ({})", t.number, t.kind))
        }));
    }
    let mut failure = None;
    for r in running {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a trial task failed: {e}"));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let trials_time = trials_start.elapsed();
    // Nothing is injected any more: the API is healthy and Devo listens (each trial ended
    // with its recovery).
    let cutoff = chrono::Utc::now();
    say(start, "trials done; draining");

    // Drain: until every expected record is at Devo (then a little longer, so duplicates
    // and gap records still in flight show); or until Devo received nothing new for the idle
    // timeout; or the overall timeout.
    let drain_start = Instant::now();
    let mut complete_since: Option<Instant> = None;
    let mut last_log = Instant::now();
    let mut last_growth = (received.receptions(), Instant::now());
    let report = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        received.poll()?;
        if let Some(status) = sim.exited() {
            anyhow::bail!("m365-sim ended ({status}); see {}", sim.log().display());
        }
        let truth = control.truth().await?;
        let report = compare(&truth, &received, cutoff);
        if report.lost == 0 {
            complete_since.get_or_insert_with(Instant::now);
        } else {
            complete_since = None;
        }
        if last_log.elapsed() > Duration::from_secs(15) {
            say(
                start,
                format!(
                    "draining: {} of {} records at Devo",
                    report.delivered, report.records
                ),
            );
            last_log = Instant::now();
        }
        let settled = complete_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10));
        if received.receptions() != last_growth.0 {
            last_growth = (received.receptions(), Instant::now());
        }
        let idle = last_growth.1.elapsed() > opts.drain_idle_timeout;
        if idle && !settled {
            say(
                start,
                format!(
                    "draining: nothing new at Devo for {:.0} s; giving up",
                    last_growth.1.elapsed().as_secs_f64()
                ),
            );
        }
        if settled || idle || drain_start.elapsed() > opts.drain_timeout {
            let mut report = report;
            report.drained = settled;
            break report;
        }
    };
    let drain_time = complete_since
        .map(|t| t.duration_since(drain_start))
        .unwrap_or_else(|| drain_start.elapsed());

    let mut report = report;
    report.seed = opts.seed;
    report.trials = counts;
    report.trials_time = trials_time;
    report.drain_time = drain_time;
    match duplicate_origins(&bootstrap, PREFIX, &received.ids).await {
        Ok(o) => report.duplicate_origins = Some(o),
        Err(e) => say(start, format!("duplicates not split by origin: {e}")),
    }
    if report.lost > 0 {
        match diagnose(&bootstrap, PREFIX, &report).await {
            Ok(found) => {
                report.diagnosis = found
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {} lost, uris x{}, retry x{}, dead x{}, {} of them on events -> {}",
                            d.content_id, d.lost, d.on_uris, d.on_retry, d.on_dead, d.lost_on_events, d.verdict
                        )
                    })
                    .collect();
            }
            Err(e) => report.diagnosis = vec![format!("diagnosis failed: {e}")],
        }
        report
            .diagnosis
            .extend(group_lag_lines(&bootstrap, PREFIX).await);
    }

    // Stop everything: stages cleanly (SIGTERM), then the simulator (flushes its files).
    stop.cancel();
    let _ = supervisor.await;
    let _ = broker_watch.await;
    let _ = stage_watch.await;
    if let Some(t) = tansu_watch {
        let _ = t.await;
    }
    for lock in [&c.forwarder, &c.consumer, &c.producer] {
        let mut stage = lock.lock().await;
        let name = stage.name().to_owned();
        let log = stage.log_path();
        match tokio::task::block_in_place(|| stage.terminate(Duration::from_secs(20))) {
            Ok(Some(status)) if status.success() => {}
            Ok(Some(status)) => say(
                start,
                format!("{name} stopped with {status}; log {}", log.display()),
            ),
            Ok(None) => say(
                start,
                format!("{name} did not stop within 20 s of SIGTERM; killed"),
            ),
            Err(e) => say(start, format!("stopping {name}: {e}")),
        }
    }
    {
        let mut broker = c.broker.lock().await;
        if let Err(e) = tokio::task::block_in_place(|| broker.kill()) {
            say(start, format!("stopping the broker: {e}"));
        }
    }
    tokio::task::block_in_place(|| sim.stop(Duration::from_secs(10)));
    report.unexpected_exits = c.exits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.broker_stalls = c
        .broker_stalls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.group_repairs = c
        .group_repairs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.stage_stalls = c
        .stage_stalls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.static_membership = opts.static_membership;
    Ok(report)
}
