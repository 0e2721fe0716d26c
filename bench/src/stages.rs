//! The stages timed in this process through their library run loops (the code their
//! binaries run), and the single-core references:
//!
//! * consumer — URIs on `prefix.uris` → download from the simulator, split, dedup, produce to
//!   `prefix.events`. A warm-up blob per content type first (group join, dedup filters
//!   loaded), then the clock runs from writing the data set's URIs until the consumer has
//!   produced every record.
//! * forwarder — `prefix.events` preloaded by a consumer run → frame → TLS to the fake Devo;
//!   timed from the first line at the fake Devo to the last.
//! * serde_json — every blob body parsed into `Vec<serde_json::Value>`, one core.
//! * splitter — the consumer's own splitter over the same bodies, one core, no I/O.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use m365_consumer::internal_events::ConsumerStats;
use m365_consumer::split::{SplitItem, SplitLimits, Splitter};
use m365_consumer::{ConsumerSettings, ConsumerTenant};
use m365_forwarder::internal_events::ForwarderStats;
use tokio_util::sync::CancellationToken;

use crate::dataset::{Blob, Dataset};
use crate::rig::{self, Broker, DevoRig, StageSim, TENANT};
use crate::stats::Sample;

/// How long a stage may go without progress before the run counts as failed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a consumer run leaves for the forwarder and rsyslog: the topics it filled.
#[derive(Debug, Clone)]
pub struct Filled {
    pub prefix: String,
    /// Event records on `prefix.events` (data set plus warm-up).
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Filled {
    /// What is still readable of it: the embedded broker drops the oldest batches of a
    /// partition beyond 5 MiB (see [`rig::readable_events`]).
    pub fn readable(&self, kafka: &m365_common::kafka::KafkaSettings) -> anyhow::Result<Filled> {
        let events = rig::readable_events(kafka)?.min(self.events);
        Ok(Filled {
            prefix: self.prefix.clone(),
            events,
            bytes: (self.bytes as f64 * events as f64 / self.events.max(1) as f64) as u64,
        })
    }
}

/// One consumer run on `broker`; returns the timing and the filled topics.
pub async fn consumer_run(
    broker: &Broker,
    sim: &StageSim,
    data: &Dataset,
    warmup: &[Blob],
) -> anyhow::Result<(Sample, Filled)> {
    let prefix = rig::new_prefix("c");
    let kafka = broker.settings(&prefix);
    rig::create_topics(&kafka).await?;
    let warm_uris = warmup
        .iter()
        .map(|b| sim.publish(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let uris = data
        .blobs
        .iter()
        .map(|b| sim.publish(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let warm_records: u64 = warmup.iter().map(|b| b.records.len() as u64).sum();
    let warm_bytes: u64 = warmup.iter().map(Blob::record_bytes).sum();

    let settings = ConsumerSettings {
        instance_id: prefix.clone(),
        run_uri_retry: false,
        ..ConsumerSettings::default()
    };
    let tenant = ConsumerTenant {
        tenant_id: TENANT.into(),
        name: "bench".into(),
        api: sim.api.clone(),
        streams: HashMap::new(),
        uri_retry: false,
    };
    let stats = Arc::new(ConsumerStats::default());
    let cancel = CancellationToken::new();
    let mut task = tokio::spawn(m365_consumer::run(
        settings,
        kafka.clone(),
        vec![tenant],
        stats.clone(),
        cancel.clone(),
    ));
    let _stop = cancel.clone().drop_guard();

    rig::write_uris(&kafka, &warm_uris).await?;
    wait_records(&stats, warm_records, &mut task, Duration::from_secs(120))
        .await
        .context("consumer warm-up")?;
    let t0 = Instant::now();
    rig::write_uris(&kafka, &uris).await?;
    let total = warm_records + data.records();
    wait_records(&stats, total, &mut task, IDLE_TIMEOUT).await?;
    let elapsed = t0.elapsed();
    cancel.cancel();
    match tokio::time::timeout(Duration::from_secs(60), &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => anyhow::bail!("the consumer failed while stopping: {e}"),
        Ok(Err(e)) => anyhow::bail!("the consumer task ended abnormally: {e}"),
        Err(_) => anyhow::bail!("the consumer did not stop within 60 s"),
    }
    Ok((
        Sample {
            records: data.records(),
            bytes: data.record_bytes(),
            elapsed,
        },
        Filled {
            prefix,
            events: total,
            bytes: data.record_bytes() + warm_bytes,
        },
    ))
}

/// Waits until the consumer has produced `n` records; fails when it stops or makes no
/// progress for `idle`.
async fn wait_records(
    stats: &ConsumerStats,
    n: u64,
    task: &mut tokio::task::JoinHandle<Result<(), m365_consumer::ConsumerError>>,
    idle: Duration,
) -> anyhow::Result<()> {
    let mut last = (Instant::now(), 0u64);
    loop {
        let out = stats.records_out_total();
        if out >= n {
            return Ok(());
        }
        if out != last.1 {
            last = (Instant::now(), out);
        }
        if task.is_finished() {
            anyhow::bail!("the consumer stopped early ({out} of {n} records produced)");
        }
        if last.0.elapsed() > idle {
            anyhow::bail!(
                "the consumer stalled: {out} of {n} records produced, blobs fetched {}, retried {}, dead {}",
                stats.blobs_fetched.get(),
                stats.blobs_retried.get(),
                stats.blobs_dead.get()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One forwarder run over the topics a consumer run filled. A run that stalls gives the rate
/// of what arrived before the stall, with why it stalled.
pub async fn forwarder_run(
    broker: &Broker,
    filled: &Filled,
    devo: &DevoRig,
    work: &Path,
) -> anyhow::Result<(Sample, Option<String>)> {
    let kafka = broker.settings(&filled.prefix);
    let filled = &filled.readable(&kafka)?;
    let cfg_path = work.join(format!("{}-forwarder.json", filled.prefix));
    let cfg = serde_json::json!({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers(), "topic_prefix": filled.prefix, "transactions": "off"},
        "devo": devo.config_section(),
        "metrics": {"enabled": false},
        "logging": {"level": "warn"},
    });
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let cfg = m365_common::config::load_with(
        &cfg_path,
        &m365_common::config::LoadOptions::new().allow_no_tenants(),
    )
    .map_err(|e| anyhow::anyhow!("forwarder configuration: {e}"))?;
    let devo_cfg = cfg
        .devo
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no devo section"))?;
    let settings = m365_forwarder::ForwarderSettings::from_config(&cfg, None)?;
    let stats = Arc::new(ForwarderStats::default());
    devo.reset();
    let output = m365_forwarder::build_output(devo_cfg, Arc::clone(&stats.output))?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m365_forwarder::run(
        settings,
        kafka,
        output,
        stats.clone(),
        cancel.clone(),
    ));
    let _stop = cancel.clone().drop_guard();
    let waited = devo
        .wait_events(filled.events, IDLE_TIMEOUT, IDLE_TIMEOUT, || {
            if task.is_finished() {
                Err("the forwarder stopped early".into())
            } else {
                Ok(())
            }
        })
        .await;
    let (arrival, stalled) = match waited {
        Ok(a) => (a, None),
        Err(e) => {
            let why = format!("{e}; {}", forwarder_summary(&stats, devo));
            match e.partial {
                Some(a) if a.count > a.first_count => (a, Some(why)),
                _ => anyhow::bail!(why),
            }
        }
    };
    eprintln!("[m365-bench]   {}", forwarder_summary(&stats, devo));
    cancel.cancel();
    match tokio::time::timeout(Duration::from_secs(60), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => anyhow::bail!("the forwarder failed while stopping: {e}"),
        Ok(Err(e)) => anyhow::bail!("the forwarder task ended abnormally: {e}"),
        Err(_) => anyhow::bail!("the forwarder did not stop within 60 s"),
    }
    Ok((
        window_sample(&arrival, filled.events, filled.bytes),
        stalled,
    ))
}

/// The forwarder's and the fake Devo's counters, for the log and for a stalled run's reason.
fn forwarder_summary(stats: &ForwarderStats, devo: &DevoRig) -> String {
    let o = stats.output_snapshot();
    let d = devo.devo.stats();
    format!(
        "forwarder: events_in {}, batches {}, resent {}, commits {}, committed records {}, pauses {}, rebalances {}, mean batch latency {:?}; output: batches {}, lines {}, connects {}, reconnects {}, write errors {}, last error {:?}; fake Devo: connections {}, open {}, connection errors {:?}, parse errors {:?}",
        stats.events_in.get(),
        stats.batches.get(),
        stats.batches_resent.get(),
        stats.commits.get(),
        stats.committed_records.get(),
        stats.pauses.get(),
        stats.rebalances.get(),
        stats.batch_latency.sum() / stats.batch_latency.count().max(1) as u32,
        o.batches,
        o.lines,
        o.connects,
        o.reconnects,
        o.write_errors,
        o.last_error,
        d.connections_accepted,
        d.open_connections,
        d.connection_errors,
        d.parse_errors
    )
}

/// The records counted between the first and the last observation, scaled to bytes by the
/// mean record size.
pub fn window_sample(a: &rig::Arrival, records: u64, bytes: u64) -> Sample {
    let counted = a.count.min(records).saturating_sub(a.first_count).max(1);
    let mean = bytes as f64 / records.max(1) as f64;
    Sample {
        records: counted,
        bytes: (counted as f64 * mean) as u64,
        elapsed: a.rate_window().max(Duration::from_millis(1)),
    }
}

/// The blob bodies, built once before timing.
pub fn bodies(data: &Dataset) -> Vec<Vec<u8>> {
    data.blobs.iter().map(Blob::body).collect()
}

/// serde_json parsing every body into `Vec<Value>`, on this thread.
pub fn serde_value_run(bodies: &[Vec<u8>], data: &Dataset) -> anyhow::Result<Sample> {
    let t = Instant::now();
    let mut n = 0u64;
    for b in bodies {
        let v: Vec<serde_json::Value> = serde_json::from_slice(b).context("parsing a blob")?;
        n += v.len() as u64;
        black_box(&v);
    }
    let elapsed = t.elapsed();
    anyhow::ensure!(n == data.records(), "serde_json saw {n} records");
    Ok(Sample {
        records: n,
        bytes: data.record_bytes(),
        elapsed,
    })
}

/// serde_json cutting every body into `Vec<&RawValue>` (no value tree), on this thread.
pub fn serde_raw_run(bodies: &[Vec<u8>], data: &Dataset) -> anyhow::Result<Sample> {
    let t = Instant::now();
    let mut n = 0u64;
    for b in bodies {
        let v: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(b).context("parsing a blob")?;
        n += v.len() as u64;
        black_box(&v);
    }
    let elapsed = t.elapsed();
    anyhow::ensure!(n == data.records(), "serde_json saw {n} records");
    Ok(Sample {
        records: n,
        bytes: data.record_bytes(),
        elapsed,
    })
}

/// The consumer's splitter alone over every body in 64 KiB chunks, on this thread.
pub fn splitter_run(bodies: &[Vec<u8>], data: &Dataset) -> anyhow::Result<Sample> {
    let t = Instant::now();
    let mut n = 0u64;
    let mut items = Vec::new();
    for b in bodies {
        let mut s = Splitter::new(SplitLimits::default());
        for chunk in b.chunks(64 * 1024) {
            s.feed_into(chunk, &mut items);
            n += items
                .iter()
                .filter(|i| matches!(i, SplitItem::Record(_)))
                .count() as u64;
            black_box(&items);
            items.clear();
        }
        s.finish()
            .map_err(|e| anyhow::anyhow!("the splitter found a blob incomplete: {e}"))?;
    }
    let elapsed = t.elapsed();
    anyhow::ensure!(n == data.records(), "the splitter saw {n} records");
    Ok(Sample {
        records: n,
        bytes: data.record_bytes(),
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The windowed rate counts only records after the first observation.
    #[test]
    fn window_sample_counts_after_first_line() {
        let first = Instant::now();
        let a = rig::Arrival {
            first,
            first_count: 100,
            last: first + Duration::from_secs(2),
            count: 1100,
        };
        let s = window_sample(&a, 1100, 1_100_000);
        assert_eq!(s.records, 1000);
        assert_eq!(s.bytes, 1_000_000);
        assert_eq!(s.records_per_sec(), 500.0);
    }
}
