//! `m365-devo demo`: a simulated tenant's day of activity with an intrusion in it, the whole
//! pipeline on the embedded broker, and a fake Devo that requires a client certificate. At
//! the end, a table compares what Devo received with the simulator's truth.
//!
//! Everything runs on 127.0.0.1. The demo writes its configuration, certificates and the
//! received lines to one folder (`m365-devo-demo/` by default) so they can be inspected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use m365_common::config;
use m365_common::tags::tag_for_workload;
use m365_sim::certs::TestPki;
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::config::{Intrusion, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use m365_sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;

/// The demo tenant.
const TENANT: &str = "6d3c2b1a-4e5f-4a6b-9c8d-7e6f5a4b3c2d";

/// Options of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Folder for the configuration, certificates and received lines.
    #[arg(long, default_value = "m365-devo-demo")]
    pub out: PathBuf,
    /// Hours of tenant history to collect.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Audit records per minute the simulated tenant produces.
    #[arg(long, default_value_t = 40.0)]
    pub records_per_minute: f64,
    /// Give up waiting for missing records after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Stop the fake Devo's listeners this many seconds right after the start, to watch the
    /// pipeline hold its backlog and catch up (0: no outage).
    #[arg(long, default_value_t = 0)]
    pub devo_outage_secs: u64,
    /// Partitions per topic of the embedded broker.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
}

/// What arrived at Devo for one record id.
#[derive(Default)]
struct Received {
    /// record id → (tag, times received)
    ids: HashMap<String, (String, u32)>,
    health_lines: u64,
    unparsable: u64,
}

impl Received {
    fn absorb(&mut self, devo: &FakeDevo, health_tag: &str) {
        for line in devo.take_received() {
            if &*line.tag == health_tag {
                self.health_lines += 1;
                continue;
            }
            match record_id(&line.message) {
                Some(id) => {
                    let e = self
                        .ids
                        .entry(id)
                        .or_insert_with(|| (line.tag.to_string(), 0));
                    e.1 += 1;
                }
                None => self.unparsable += 1,
            }
        }
    }
}

fn record_id(message: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(rename = "Id")]
        id: String,
    }
    serde_json::from_slice::<IdOnly>(message).ok().map(|r| r.id)
}

/// The records the simulator published in blobs visible before `cutoff`, with their tags
/// (blob bodies are rendered once and cached by content id).
fn expected(
    sim: &Simulator,
    cutoff: DateTime<Utc>,
    cache: &mut HashMap<String, Vec<(String, String)>>,
) -> HashMap<String, String> {
    let truth = sim.truth();
    let mut out = HashMap::new();
    for streams in truth.tenants.values() {
        for s in streams.values() {
            for b in s
                .blobs
                .iter()
                .filter(|b| b.published && b.visible_at < cutoff)
            {
                let recs = cache.entry(b.content_id.clone()).or_insert_with(|| {
                    sim.blob_records(&b.content_id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| {
                            let workload = serde_json::from_str::<serde_json::Value>(&r.bytes)
                                .ok()
                                .and_then(|v| {
                                    v.get("Workload")
                                        .and_then(|w| w.as_str())
                                        .map(str::to_string)
                                });
                            let tag = workload
                                .map(|w| tag_for_workload(&w))
                                .unwrap_or_else(|| "(no workload)".into());
                            (r.id, tag)
                        })
                        .collect()
                });
                for (id, tag) in recs.iter() {
                    out.insert(id.clone(), tag.clone());
                }
            }
        }
    }
    out
}

fn write_config(
    dir: &Path,
    sim: &Simulator,
    devo: &FakeDevo,
    pki_dir: &Path,
    partitions: u32,
) -> anyhow::Result<PathBuf> {
    let ca = dir.join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem())?;
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    let cfg = serde_json::json!({
        "tenants": [{
            "name": "contoso-demo",
            "tenant_id": TENANT,
            "client_id": TEST_CLIENT_ID,
            "auth": {"type": "client_secret", "client_secret": TEST_CLIENT_SECRET},
            "cloud": {"api_base": base, "authority_base": base, "resource": sim.resource()},
            "ca_file": ca,
        }],
        "devo": {
            "type": "devo_tls",
            "address": "127.0.0.1",
            "port": devo.tls_addr().port(),
            "sni": "localhost",
            "cert_file": pki_dir.join("client.pem"),
            "key_file": pki_dir.join("client.key"),
            "chain_file": pki_dir.join("ca.pem"),
            "batch_max_wait_ms": 200,
        },
        "kafka": {"partitions": partitions},
        "producer": {"poll_interval_secs": 2, "settle_secs": 1, "sweep_interval_secs": 5},
        "metrics": {"enabled": false},
        "logging": {"level": "warn"},
    });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(path)
}

/// Runs the demo; `Ok(true)` when nothing is missing.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Absolute, because the paths written into the config are read relative to the config's
    // own folder.
    let dir = std::fs::canonicalize(&args.out)
        .with_context(|| format!("resolving {}", args.out.display()))?;
    let received_dir = dir.join("received");
    let _ = std::fs::remove_dir_all(&received_dir);
    eprintln!(
        "m365-devo demo: a simulated tenant, the pipeline on the embedded broker, a fake Devo. Files in {}/",
        dir.display()
    );

    let mut sim_cfg = SimConfig::for_tests(&[TENANT]);
    sim_cfg.history_hours = args.hours;
    sim_cfg.records_per_minute = args.records_per_minute;
    sim_cfg.blob_interval_secs = 300;
    sim_cfg.seed = 20261127;
    sim_cfg.scenario = Some(Intrusion::default());
    sim_cfg.faults.duplicate_record_fraction = 0.05;
    sim_cfg.faults.late_blob_fraction = 0.05;
    sim_cfg.faults.late_blob_delay_secs = 8;
    let sim = Simulator::start(sim_cfg)
        .await
        .context("starting the simulated tenant")?;

    let pki = TestPki::generate("m365-devo-demo").context("generating the Devo certificates")?;
    let pki_dir = dir.join("devo-certs");
    pki.write_to(&pki_dir)
        .context("writing the Devo certificates")?;
    let devo = FakeDevo::start(FakeDevoConfig {
        pki: Some(pki),
        tcp_port: None,
        http_port: None,
        out_dir: Some(received_dir.clone()),
        keep_raw: false,
        ..FakeDevoConfig::default()
    })
    .await
    .context("starting the fake Devo")?;

    let config_path = write_config(&dir, &sim, &devo, &pki_dir, args.partitions)?;
    let cfg = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let health_tag = cfg.health.tag.clone();

    let started = Instant::now();
    let pipeline = Pipeline::start(&cfg).await?;
    if args.devo_outage_secs > 0 {
        devo.stop_listening().await;
        eprintln!(
            "m365-devo demo: Devo is down for {} s; the pipeline holds what it collects meanwhile.",
            args.devo_outage_secs
        );
        tokio::time::sleep(Duration::from_secs(args.devo_outage_secs)).await;
        devo.resume_listening()
            .await
            .context("reopening the fake Devo")?;
        eprintln!("m365-devo demo: Devo is back.");
    }

    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} records at Devo {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut received = Received::default();
    let mut cache = HashMap::new();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut expect;
    let mut first_complete: Option<Duration> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        received.absorb(&devo, &health_tag);
        // Everything published up to a few seconds ago must arrive; newer blobs may still be
        // on their way and are counted only if they did.
        let cutoff = sim.now() - chrono::Duration::seconds(10);
        expect = expected(&sim, cutoff, &mut cache);
        let have = expect
            .keys()
            .filter(|id| received.ids.contains_key(*id))
            .count();
        if let Some(b) = &bar {
            let st = &pipeline.stats;
            b.set_length(expect.len() as u64);
            b.set_position(have as u64);
            b.set_message(format!(
                "(blobs listed {}, records to Kafka {}, events forwarded {})",
                st.producer.blobs_emitted.get(),
                st.consumer.records_out.total(),
                st.forwarder.events_in.get()
            ));
        }
        let complete = have == expect.len() && !expect.is_empty();
        if complete && first_complete.is_none() {
            first_complete = Some(started.elapsed());
        }
        if !complete {
            first_complete = None;
        }
        // Once complete, keep watching a little longer so late-published blobs (and any
        // duplicate) have time to show.
        let settled =
            first_complete.is_some_and(|t| started.elapsed() > t + Duration::from_secs(12));
        if settled || Instant::now() > deadline {
            break;
        }
    }
    let elapsed = first_complete.unwrap_or_else(|| started.elapsed());
    let gaps = count_gaps(&pipeline.kafka).await;
    let stop = CancellationToken::new();
    stop.cancel();
    let pipeline_result = pipeline.run_until(stop).await;
    received.absorb(&devo, &health_tag);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    devo.flush_persisted().await;

    // The table.
    let mut rows: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new(); // truth, received, missing, dup
    for (id, tag) in &expect {
        let row = rows.entry(tag.clone()).or_default();
        row.0 += 1;
        match received.ids.get(id) {
            Some((_, n)) => {
                row.1 += 1;
                row.3 += u64::from(n.saturating_sub(1));
            }
            None => row.2 += 1,
        }
    }
    let extra: Vec<&String> = received
        .ids
        .keys()
        .filter(|id| !expect.contains_key(*id))
        .collect();
    let truth = sim.truth();
    let all_published: HashSet<String> = truth.all_published_record_ids().into_iter().collect();
    let bogus = extra
        .iter()
        .filter(|id| !all_published.contains(**id))
        .count();

    println!();
    println!(
        "{:<56} {:>8} {:>9} {:>8} {:>11}",
        "Devo tag", "truth", "received", "missing", "duplicates"
    );
    let mut tot = (0, 0, 0, 0);
    for (tag, (t, r, m, d)) in &rows {
        println!("{tag:<56} {t:>8} {r:>9} {m:>8} {d:>11}");
        tot = (tot.0 + t, tot.1 + r, tot.2 + m, tot.3 + d);
    }
    println!(
        "{:<56} {:>8} {:>9} {:>8} {:>11}",
        "total", tot.0, tot.1, tot.2, tot.3
    );
    println!();
    println!(
        "newer records that also arrived: {}; records Devo got that the tenant never published: {bogus}",
        extra.len()
    );
    println!(
        "gap records (data the API could no longer serve): {gaps}; health lines at Devo ({health_tag}): {}",
        received.health_lines
    );
    let secs = elapsed.as_secs_f64().max(0.001);
    println!(
        "throughput: {:.0} records/s end to end ({} records collected, split, deduplicated and delivered in {secs:.1} s)",
        tot.1 as f64 / secs,
        tot.1
    );
    println!();
    println!("The intrusion, as Devo received it:");
    for (step, ids) in &truth.scenario_record_ids {
        let got: Vec<&(String, u32)> = ids.iter().filter_map(|id| received.ids.get(id)).collect();
        let tags: HashSet<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        println!(
            "  {step:<28} {}/{} records under {}",
            got.len(),
            ids.len(),
            tags.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    println!();
    println!(
        "Received lines, one file per tag: {}/",
        received_dir.display()
    );
    if let Err(e) = &pipeline_result {
        println!(
            "The pipeline reported an error while stopping: {}",
            m365_common::telemetry::error_chain(e.as_ref())
        );
    }
    devo.shutdown().await;
    sim.shutdown().await;
    Ok(tot.2 == 0 && tot.0 > 0 && bogus == 0)
}

/// Gap records on the health topic (blobs or windows the API could no longer serve).
async fn count_gaps(kafka: &m365_common::kafka::KafkaSettings) -> String {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = n.clone();
    let r =
        m365_common::kafka::scan_topic(kafka, &kafka.topics().health, HashMap::new(), move |rec| {
            let is_gap = rec
                .payload
                .and_then(|p| serde_json::from_slice::<m365_common::health::HealthRecord>(&p).ok())
                .is_some_and(|h| h.kind == m365_common::health::Kind::Gap);
            if is_gap {
                sink.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
    match r {
        Ok(()) => n.load(std::sync::atomic::Ordering::Relaxed).to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}
