//! Measurements that run other programs on the same records: the tools people use today
//! (devo-sdk's Python `Sender`, rsyslog with imkafka + omfwd/gnutls), the whole pipeline as
//! its users run it (`m365-devo run`), and the consumer binary's peak memory per blob size.
//!
//! Every child process is started here, watched by its pid, stopped with SIGTERM (SIGKILL
//! after a grace period) and never outlives the benchmark.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use m365_sim::Simulator;
use m365_sim::tenant::config::{TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::process::{Child, Command};

use crate::dataset::{Blob, Dataset};
use crate::machine::peak_rss;
use crate::rig::{self, Broker, DevoRig, StageSim, TENANT};
use crate::stages::{Filled, IDLE_TIMEOUT, window_sample};
use crate::stats::Sample;

/// Tag rsyslog puts on every line (imkafka does not pass the records' `tag` header on).
pub const RSYSLOG_TAG: &str = "cloud.office365.management.bench";

/// A child process of the benchmark, with its log file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    what: &'static str,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in `log`.
    pub fn spawn(what: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Proc { child, log, what })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Err` with the exit status and the log's tail once the process has ended.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail: {}",
                self.what,
                log_tail(&self.log)
            )),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// Waits for the process to end on its own, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} did not finish within {} s",
                    self.what,
                    timeout.as_secs()
                )
            })?
            .map_err(Into::into)
    }
}

/// The last few hundred bytes of a log file, on one line.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

/// Whether the system's librdkafka (the one rsyslog's imkafka is linked with) can talk to
/// the broker at `bootstrap`, asked through kcat, which links the same library: `None` when it
/// can (or kcat is not installed), else kcat's first error line.
pub async fn system_librdkafka_refused(bootstrap: &str) -> Option<String> {
    let out = Command::new("kcat")
        .args(["-L", "-b", bootstrap, "-m", "10"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .ok()?
        .ok()?;
    if out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .or_else(|| err.lines().next())
        .unwrap_or("no message");
    Some(line.trim().to_owned())
}

/// One rsyslog run: imkafka on `filled.prefix.events` (its own consumer group, from the
/// beginning) → omfwd over TLS with the client certificate → the fake Devo; timed from the
/// first line at the fake Devo to the last.
pub async fn rsyslog_run(
    broker: &Broker,
    filled: &Filled,
    devo: &DevoRig,
    work: &Path,
) -> anyhow::Result<Sample> {
    let filled = &filled.readable(&broker.settings(&filled.prefix))?;
    let dir = work.join(format!("rsyslog-{}", rig::new_prefix("r")));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("rsyslog.conf");
    let group = rig::new_prefix("rsyslog");
    std::fs::write(
        &conf,
        rsyslog_conf(
            &dir,
            devo,
            &broker.bootstrap_servers(),
            &format!("{}.events", filled.prefix),
            &group,
        ),
    )?;
    devo.reset();
    let mut cmd = Command::new("rsyslogd");
    cmd.arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"));
    let mut proc = Proc::spawn("rsyslogd", cmd, dir.join("rsyslogd.log"))?;
    let arrival = devo
        .wait_events(filled.events, Duration::from_secs(30), IDLE_TIMEOUT, || {
            proc.alive()
        })
        .await;
    proc.stop(Duration::from_secs(10)).await;
    let arrival = arrival
        .map_err(anyhow::Error::from)
        .with_context(|| format!("rsyslog (log: {})", dir.display()))?;
    Ok(window_sample(&arrival, filled.events, filled.bytes))
}

/// rsyslog's configuration: one imkafka input, one omfwd action with gnutls and the client
/// certificate, a Devo line template (`<14>DATE HOST TAG: RECORD`).
pub fn rsyslog_conf(dir: &Path, devo: &DevoRig, brokers: &str, topic: &str, group: &str) -> String {
    format!(
        r#"# Written by m365-bench: forward {topic} to the fake Devo over TLS.
global(
  workDirectory="{dir}"
  maxMessageSize="1m"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imkafka")
template(name="devo" type="string" string="<14>%timereported:::date-rfc3164% %hostname% {tag}: %msg%\n")
ruleset(name="to_devo" queue.type="LinkedList" queue.size="200000") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="devo"
         streamDriver="gtls" streamDriverMode="1" streamDriverAuthMode="x509/certvalid")
}}
input(type="imkafka" topic="{topic}" broker=["{brokers}"] consumergroup="{group}"
      ruleset="to_devo" confParam=["auto.offset.reset=earliest"])
"#,
        dir = dir.display(),
        ca = devo.ca().display(),
        cert = devo.client_cert().display(),
        key = devo.client_key().display(),
        tag = RSYSLOG_TAG,
        port = devo.port(),
    )
}

/// Writes `tag<TAB>record` lines of the first `limit` records, for devo-sdk.
pub fn write_sdk_lines(data: &Dataset, limit: u64, path: &Path) -> anyhow::Result<(u64, u64)> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(File::create(path)?);
    let (mut n, mut bytes) = (0u64, 0u64);
    for r in data.iter_records().take(limit as usize) {
        writeln!(f, "{}\t{}", r.tag, r.json)?;
        n += 1;
        bytes += r.json.len() as u64;
    }
    f.flush()?;
    Ok((n, bytes))
}

/// One devo-sdk run: the Python `Sender` sends `records` lines over TLS with the client
/// certificate; timed from the first line at the fake Devo to the last.
pub async fn devo_sdk_run(
    python: &Path,
    script: &Path,
    lines: &Path,
    (records, bytes): (u64, u64),
    devo: &DevoRig,
    work: &Path,
) -> anyhow::Result<Sample> {
    devo.reset();
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("127.0.0.1")
        .arg(devo.port().to_string())
        .arg(devo.ca())
        .arg(devo.client_cert())
        .arg(devo.client_key())
        .arg(lines);
    let log = work.join(format!("{}.log", rig::new_prefix("devo-sdk")));
    let mut proc = Proc::spawn("devo-sdk sender", cmd, log.clone())?;
    let arrival = devo
        .wait_events(records, Duration::from_secs(120), IDLE_TIMEOUT, || {
            // The sender may finish before the fake has parsed its last bytes.
            match proc.alive() {
                Err(e) if !e.contains("exit status: 0") => Err(e),
                _ => Ok(()),
            }
        })
        .await;
    let status = proc.wait(Duration::from_secs(60)).await;
    let arrival = arrival?;
    let status = status?;
    anyhow::ensure!(
        status.success(),
        "the devo-sdk sender failed ({status}): {}",
        log_tail(&log)
    );
    Ok(window_sample(&arrival, records, bytes))
}

/// The result of one end-to-end run.
pub struct E2e {
    /// From the first line at the fake Devo to the last (the pipeline's rate once it flows).
    pub steady: Sample,
    /// From starting `m365-devo run` to the last line (start-up, subscription, listing
    /// included).
    pub wall: Sample,
    /// Set when the lines stopped short of the data set: why (the samples then count what
    /// arrived before the stall).
    pub stalled: Option<String>,
}

/// One end-to-end run of `m365-devo run`: a fresh simulated tenant holding the data set's
/// blobs, the producer lists them, the consumer downloads them, the forwarder delivers them
/// to the fake Devo. On the embedded broker when `servers` is `None`.
pub async fn e2e_run(
    bin_dir: &Path,
    servers: Option<&str>,
    data: &Dataset,
    devo: &DevoRig,
    work: &Path,
    gzip: bool,
) -> anyhow::Result<E2e> {
    let sim = Simulator::start(rig::sim_config(&[TENANT], gzip))
        .await
        .context("starting the simulated tenant")?;
    for b in &data.blobs {
        sim.publish_records(TENANT, b.content_type, b.record_strings())
            .map_err(|e| anyhow::anyhow!("publishing a blob: {e}"))?;
    }
    let prefix = rig::new_prefix("e2e");
    let dir = work.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem())?;
    let mut kafka = serde_json::json!({"topic_prefix": prefix, "partitions": rig::PARTITIONS, "transactions": "off"});
    if let Some(s) = servers {
        kafka["bootstrap_servers"] = s.into();
        kafka["replication_factor"] = 1.into();
    }
    let cfg = serde_json::json!({
        "tenants": [tenant_section(&sim, &ca)],
        "devo": devo.config_section(),
        "producer": {"poll_interval_secs": 1, "settle_secs": 0},
        "kafka": kafka,
        "metrics": {"enabled": false},
        "logging": {"level": "warn"},
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    devo.reset();
    let started = Instant::now();
    let mut cmd = Command::new(bin_dir.join("m365-devo"));
    cmd.arg("run").arg("--config").arg(&cfg_path);
    let mut proc = Proc::spawn("m365-devo run", cmd, dir.join("m365-devo.log"))?;
    let n = data.records();
    let waited = devo
        .wait_events(n, Duration::from_secs(120), IDLE_TIMEOUT, || proc.alive())
        .await;
    proc.stop(Duration::from_secs(30)).await;
    sim.shutdown().await;
    let (arrival, stalled) = match waited {
        Ok(a) => (a, None),
        Err(e) => {
            let why = format!("{e} (files: {})", dir.display());
            match e.partial {
                Some(a) if a.count > a.first_count => (a, Some(why)),
                _ => anyhow::bail!(why),
            }
        }
    };
    let wall = arrival.last.saturating_duration_since(started);
    let delivered = arrival.count.min(n);
    Ok(E2e {
        steady: window_sample(&arrival, n, data.record_bytes()),
        wall: Sample {
            records: delivered,
            bytes: (data.mean_record_bytes() * delivered as f64) as u64,
            elapsed: wall,
        },
        stalled,
    })
}

/// The `tenants[]` entry of a configuration reading `sim`'s tenant [`TENANT`].
fn tenant_section(sim: &Simulator, ca: &Path) -> serde_json::Value {
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    serde_json::json!({
        "name": "bench",
        "tenant_id": TENANT,
        "client_id": TEST_CLIENT_ID,
        "auth": {"type": "client_secret", "client_secret": TEST_CLIENT_SECRET},
        "cloud": {"api_base": base, "authority_base": base, "resource": sim.resource()},
        "ca_file": ca,
        "requests_per_minute": 60000,
    })
}

/// Peak RSS (VmHWM) of the `m365-consumer` binary downloading one blob into the embedded
/// broker of this process; returns bytes.
pub async fn memory_run(
    bin_dir: &Path,
    broker: &Broker,
    sim: &StageSim,
    blob: &Blob,
    work: &Path,
) -> anyhow::Result<u64> {
    let prefix = rig::new_prefix("mem");
    let kafka = broker.settings(&prefix);
    rig::create_topics(&kafka).await?;
    let uri = sim.publish(blob)?;
    rig::write_uris(&kafka, std::slice::from_ref(&uri)).await?;
    let dir = work.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let ca = sim.write_ca(&dir)?;
    let cfg = serde_json::json!({
        "tenants": [tenant_section(&sim.sim, &ca)],
        "kafka": {"bootstrap_servers": broker.bootstrap_servers(), "topic_prefix": prefix,
                  "partitions": rig::PARTITIONS, "replication_factor": 1, "transactions": "off"},
        "consumer": {"max_blob_bytes": 1u64 << 30},
        "metrics": {"enabled": false},
        "logging": {"level": "warn"},
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let mut cmd = Command::new(bin_dir.join("m365-consumer"));
    cmd.arg("--config").arg(&cfg_path).arg("--no-uri-retry");
    let mut proc = Proc::spawn("m365-consumer", cmd, dir.join("m365-consumer.log"))?;
    let pid = proc
        .pid()
        .ok_or_else(|| anyhow::anyhow!("m365-consumer has no pid"))?;
    let watcher: BaseConsumer = kafka.client_config().create().context("watermark client")?;
    let topic = kafka.topics().events;
    let want = blob.records.len() as u64;
    let mut peak = 0u64;
    let mut last = (Instant::now(), 0u64);
    let mut next_check = Instant::now();
    let result = loop {
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        if let Err(e) = proc.alive() {
            break Err(anyhow::anyhow!(e));
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(200);
            // A fresh topic: everything produced counts, even what the broker dropped since.
            let n = watermarks(&watcher, &topic)?.0;
            if n >= want {
                break Ok(());
            }
            if n != last.1 {
                last = (Instant::now(), n);
            }
            if last.0.elapsed() > IDLE_TIMEOUT {
                break Err(anyhow::anyhow!(
                    "the consumer stalled at {n} of {want} records"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    peak = peak.max(peak_rss(pid).unwrap_or(0));
    proc.stop(Duration::from_secs(30)).await;
    result.with_context(|| format!("m365-consumer (files: {})", dir.display()))?;
    Ok(peak)
}

/// Records still readable on `topic` (high minus low watermarks) through an existing client.
pub fn events_on(client: &BaseConsumer, topic: &str) -> anyhow::Result<u64> {
    Ok(watermarks(client, topic)?.1)
}

/// Records ever produced to `topic` (sum of the high watermarks) and records still readable
/// (high minus low: the embedded broker deletes the oldest batches beyond 5 MiB a partition).
fn watermarks(client: &BaseConsumer, topic: &str) -> anyhow::Result<(u64, u64)> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("topic metadata")?;
    let (mut produced, mut readable) = (0u64, 0u64);
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = client
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .context("watermarks")?;
            produced += hi.max(0) as u64;
            readable += (hi - lo).max(0) as u64;
        }
    }
    Ok((produced, readable))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rsyslog configuration names the topic, group, certificates and Devo port it is given.
    #[tokio::test]
    async fn rsyslog_conf_wires_everything() {
        let dir = std::env::temp_dir().join(rig::new_prefix("test"));
        let devo = DevoRig::start(&dir).await.unwrap();
        let c = rsyslog_conf(&dir, &devo, "127.0.0.1:9092", "p.events", "g1");
        assert!(c.contains(r#"topic="p.events""#));
        assert!(c.contains(r#"consumergroup="g1""#));
        assert!(c.contains(&format!(r#"port="{}""#, devo.port())));
        assert!(c.contains(&devo.client_key().display().to_string()));
        assert!(c.contains("streamDriverMode=\"1\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
