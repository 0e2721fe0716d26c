//! `m365-bench`: the benchmark of issue #8. On one data set of ~1 KB audit records made by the
//! simulator's generator it measures, each several times (the median is quoted):
//!
//! * the limit: serde_json parsing the blob bodies (records/s on one core), and the
//!   consumer's splitter alone;
//! * per stage, on the embedded broker and on a real broker (`--kafka`): the consumer
//!   (simulator → split, dedup → `events`) and the forwarder (`events` → TLS → fake Devo);
//! * the tools people use today on the same records: devo-sdk's Python `Sender` and rsyslog
//!   (imkafka → omfwd with gnutls);
//! * end to end, `m365-devo run` from the simulated tenant to the fake Devo;
//! * the consumer binary's peak RSS against blob size.
//!
//! It prints a table and writes `bench/RESULTS.md`. `scripts/bench.sh` installs what is
//! needed, starts the real broker and runs this; see `--help` for the options.

mod dataset;
mod external;
mod machine;
mod report;
mod rig;
mod stages;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use m365_sim::tenant::config::ContentType;

use crate::dataset::{Blob, Dataset, Generator};
use crate::report::Results;
use crate::rig::{Broker, DevoRig, StageSim};
use crate::stages::Filled;
use crate::stats::{Measurement, MemoryPoint, Sample};

#[global_allocator]
static ALLOCATOR: m365_common::Jemalloc = m365_common::Jemalloc;

/// Parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// serde_json and the splitter on one core.
    Baseline,
    /// The consumer stage (also needed by forwarder and rsyslog: they read what it wrote).
    Consumer,
    Forwarder,
    Rsyslog,
    DevoSdk,
    E2e,
    Memory,
}

/// Benchmarks m365-devo's stages, end to end and against serde_json, devo-sdk and rsyslog;
/// prints a table and writes bench/RESULTS.md.
#[derive(Parser, Debug)]
#[command(name = "m365-bench", version, about, long_about = None)]
struct Args {
    /// Smoke test: a small data set, small memory blobs.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (the median is quoted). Default 5: the short windows of the fastest
    /// senders vary by a factor of two between runs on this machine.
    #[arg(long)]
    runs: Option<usize>,
    /// Records in the data set. Default 200,000 (quick: 10,000).
    #[arg(long)]
    records: Option<usize>,
    /// Records per blob.
    #[arg(long, default_value_t = 1000)]
    blob_records: usize,
    /// A real Kafka-protocol broker (`host:port`); the embedded broker is always measured.
    #[arg(long, env = "M365_BENCH_KAFKA")]
    kafka: Option<String>,
    /// Name of that broker in the results.
    #[arg(long, default_value = "tansu")]
    kafka_name: String,
    /// Folder of the release binaries (m365-devo, m365-consumer).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Python with devo-sdk installed (devo-sdk is skipped without it).
    #[arg(long, env = "M365_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// The devo-sdk sender script.
    #[arg(long, default_value = "bench/scripts/devo_sdk_send.py")]
    sdk_script: PathBuf,
    /// Most records devo-sdk sends per run (it is slow).
    #[arg(long, default_value_t = 50_000)]
    sdk_records: u64,
    /// Blob sizes of the memory measurement, in MB. Default 1,10,100,200,300 (quick: 1,10).
    #[arg(long, value_delimiter = ',')]
    memory_mb: Option<Vec<u64>>,
    /// The simulator compresses blobs (gzip) as the API may; off by default so the
    /// simulator's compression does not eat the consumer's CPU.
    #[arg(long)]
    gzip: bool,
    /// A librdkafka property (`key=value`) for the in-process consumer and forwarder, for
    /// tuning experiments; repeatable.
    #[arg(long = "kafka-property")]
    kafka_property: Vec<String>,
    /// Only these parts (comma separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Leave these parts out (comma separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Part>,
    /// Where to write the results.
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,
    /// Scratch folder (configurations, logs, certificates).
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
}

impl Args {
    fn wants(&self, p: Part) -> bool {
        (self.only.is_empty() || self.only.contains(&p)) && !self.skip.contains(&p)
    }

    fn runs(&self) -> usize {
        self.runs.unwrap_or(5).max(1)
    }

    fn records(&self) -> usize {
        self.records
            .unwrap_or(if self.quick { 10_000 } else { 200_000 })
            .max(1)
    }

    fn kafka_properties(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.kafka_property
            .iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--kafka-property {p:?}: expected key=value"))
            })
            .collect()
    }

    fn memory_mb(&self) -> Vec<u64> {
        self.memory_mb.clone().unwrap_or_else(|| {
            if self.quick {
                vec![1, 10]
            } else {
                vec![1, 10, 100, 200, 300]
            }
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    m365_common::telemetry::init_logging("error", false);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("m365-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[m365-bench] {}", msg.as_ref());
}

async fn run(args: Args) -> anyhow::Result<()> {
    let machine = machine::Machine::describe();
    say(format!("machine: {machine}"));
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let work = std::fs::canonicalize(&args.work)?;
    let runs = args.runs();

    say(format!(
        "generating {} records in blobs of {}",
        args.records(),
        args.blob_records
    ));
    let mut generator = Generator::start(20_261_208).await?;
    let data = generator.dataset(args.records(), args.blob_records)?;
    // One single-record blob per content type, downloaded before the clock starts.
    let warmup = generator
        .content_types
        .clone()
        .iter()
        .map(|&ct| {
            Ok(Blob {
                content_type: ct,
                records: generator.records(ct, 1)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    say(format!(
        "data set: {} records, {:.1} MB, mean record {:.0} bytes, {} blobs",
        data.records(),
        data.record_bytes() as f64 / 1e6,
        data.mean_record_bytes(),
        data.blobs.len()
    ));

    let mut results = Results {
        machine,
        setup: setup_lines(&args, &data, &generator),
        measurements: Vec::new(),
        memory: Vec::new(),
        notes: Vec::new(),
    };

    if args.wants(Part::Baseline) {
        baselines(&data, runs, &mut results)?;
    }

    let devo = DevoRig::start(&work).await?;
    let stage_sim = StageSim::start(args.gzip).await?;
    let props = args.kafka_properties()?;
    if !props.is_empty() {
        results.notes.push(format!(
            "extra librdkafka properties of the in-process consumer and forwarder: {}",
            props
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    results.notes.push(
        "The embedded broker is librdkafka's mock cluster, which keeps at most 5 MiB of (compressed) record batches per partition and silently deletes the oldest beyond that (rdkafka_mock.c, max_size). The forwarder and rsyslog on the embedded broker therefore read only what is still there (counted from the watermarks before each run). `m365-devo run` on the embedded broker is protected from the same limit: its consumer waits while the forwarder's commits are more than 3 MiB per partition behind (m365_common::backlog).".into(),
    );
    let mut brokers = vec![Broker::embedded(props.clone())?];
    if let Some(k) = &args.kafka {
        brokers.push(Broker::real(k, &args.kafka_name, props));
    } else {
        results
            .notes
            .push("No real broker given (--kafka): only the embedded broker was measured.".into());
    }

    let needs_fill =
        args.wants(Part::Consumer) || args.wants(Part::Forwarder) || args.wants(Part::Rsyslog);
    for broker in &brokers {
        if !needs_fill {
            break;
        }
        let name = broker.name().to_string();
        let mut consumer = Measurement::new(
            &format!("consumer/{name}"),
            "consumer: simulator → split, dedup → events",
            &name,
        );
        let mut filled: Vec<Filled> = Vec::new();
        for i in 0..runs {
            say(format!("consumer on {name}, run {}/{runs}", i + 1));
            match stages::consumer_run(broker, &stage_sim, &data, &warmup).await {
                Ok((s, f)) => {
                    report_sample(&s);
                    consumer.samples.push(s);
                    filled.push(f);
                }
                Err(e) => fail(&mut consumer, e),
            }
        }
        results.measurements.push(consumer);

        if args.wants(Part::Forwarder) {
            let mut fwd = Measurement::new(
                &format!("forwarder/{name}"),
                "forwarder: events → frame → TLS → fake Devo",
                &name,
            );
            for (i, f) in filled.iter().enumerate() {
                say(format!(
                    "forwarder on {name}, run {}/{}",
                    i + 1,
                    filled.len()
                ));
                match stages::forwarder_run(broker, f, &devo, &work).await {
                    Ok((s, stalled)) => {
                        report_sample(&s);
                        fwd.samples.push(s);
                        if let Some(why) = stalled {
                            say(format!("  stalled: {why}"));
                            fwd.stalls.push(why);
                        }
                    }
                    Err(e) => fail(&mut fwd, e),
                }
            }
            fwd.note = Some("timed from the first line at the fake Devo to the last".into());
            results.measurements.push(fwd);
        }

        if args.wants(Part::Rsyslog) {
            let mut rs = Measurement::new(
                &format!("rsyslog/{name}"),
                "rsyslog: imkafka → omfwd gnutls → fake Devo",
                &name,
            );
            rs.note = Some(format!(
                "rsyslog 8 from Debian (rsyslog-kafka, rsyslog-gnutls), its own librdkafka; one fixed tag ({}); timed from the first line at the fake Devo to the last",
                external::RSYSLOG_TAG
            ));
            for (i, f) in filled.iter().enumerate() {
                say(format!("rsyslog on {name}, run {}/{}", i + 1, filled.len()));
                match external::rsyslog_run(broker, f, &devo, &work).await {
                    Ok(s) => {
                        report_sample(&s);
                        rs.samples.push(s);
                    }
                    Err(e) => {
                        let first_failed = rs.samples.is_empty();
                        fail(&mut rs, e);
                        if first_failed {
                            let why = match external::system_librdkafka_refused(
                                &broker.bootstrap_servers(),
                            )
                            .await
                            {
                                Some(e) => format!(
                                    " The system's librdkafka, which rsyslog's imkafka links, cannot talk to this broker at all: kcat (same library) says `{e}`."
                                ),
                                None => String::new(),
                            };
                            results.notes.push(format!(
                                "rsyslog could not read from the {name} broker; its comparison uses the other broker where it worked.{why}"
                            ));
                            break;
                        }
                    }
                }
            }
            results.measurements.push(rs);
        }
    }

    if args.wants(Part::DevoSdk) {
        devo_sdk(&args, &data, &devo, &work, runs, &mut results).await?;
    }

    if args.wants(Part::E2e) {
        for broker in &brokers {
            let name = broker.name().to_string();
            let servers = broker.real_servers();
            let mut steady = Measurement::new(
                &format!("e2e/{name}"),
                "end to end: m365-devo run, tenant → Devo",
                &name,
            );
            steady.note = Some("from the first line at the fake Devo to the last".into());
            let mut wall = Measurement::new(
                &format!("e2e-wall/{name}"),
                "end to end incl. start-up and listing",
                &name,
            );
            wall.note =
                Some("from starting `m365-devo run` to the last line at the fake Devo".into());
            for i in 0..runs {
                say(format!("end to end on {name}, run {}/{runs}", i + 1));
                match external::e2e_run(&args.bin_dir, servers, &data, &devo, &work, args.gzip)
                    .await
                {
                    Ok(r) => {
                        report_sample(&r.steady);
                        steady.samples.push(r.steady);
                        wall.samples.push(r.wall);
                        if let Some(why) = r.stalled {
                            say(format!("  stalled: {why}"));
                            steady.stalls.push(why.clone());
                            wall.stalls.push(why);
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        wall.failures.push(msg.clone());
                        fail(&mut steady, anyhow::anyhow!(msg));
                    }
                }
            }
            results.measurements.push(steady);
            results.measurements.push(wall);
        }
    }

    if args.wants(Part::Memory) {
        memory(
            &args,
            &mut generator,
            &brokers[0],
            &stage_sim,
            &work,
            runs,
            &mut results,
        )
        .await;
    }

    generator.shutdown().await;
    stage_sim.sim.shutdown().await;
    devo.devo.shutdown().await;

    println!();
    println!("{}", results.table());
    for line in results.target_lines() {
        println!("{line}");
    }
    results
        .write(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    say(format!("wrote {}", args.out.display()));
    Ok(())
}

fn setup_lines(args: &Args, data: &Dataset, generator: &Generator) -> Vec<String> {
    let names = |v: &[ContentType]| v.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
    vec![
        format!(
            "data set: {} audit records from the simulator's generator, those of {}–{} bytes kept ({} in turn{}), {:.1} MB, mean {:.0} bytes per record, {} blobs of up to {} records",
            data.records(),
            dataset::RECORD_BYTES_MIN,
            dataset::RECORD_BYTES_MAX,
            names(&generator.content_types),
            if generator.left_out.is_empty() {
                String::new()
            } else {
                format!("; left out, no ~1 KB records: {}", names(&generator.left_out))
            },
            data.record_bytes() as f64 / 1e6,
            data.mean_record_bytes(),
            data.blobs.len(),
            args.blob_records
        ),
        format!("runs per figure: {}{}", args.runs(), if args.quick { " (quick mode)" } else { "" }),
        "allocator: jemalloc, in every m365-devo binary and in this benchmark's process (so in the serde_json baseline too, which allocates per field: measured back to back, 48–57k records/s with glibc's allocator, 143–146k with jemalloc)".into(),
        format!(
            "brokers: embedded (librdkafka mock cluster in the benchmark process, on a loopback port){}; topics with {} partitions, Kafka transactions off (neither broker implements them: the stages use their ordered at-least-once path)",
            args.kafka
                .as_ref()
                .map(|k| format!(" and {} at {k} (memory storage, as scripts/bench.sh starts it; its engine skips records when a reader resumes mid-batch, which the forwarder does only after waiting 3 s for Devo; every run checks that all records arrived)", args.kafka_name))
                .unwrap_or_default(),
            rig::PARTITIONS
        ),
        format!(
            "simulated tenant over HTTPS on 127.0.0.1, no quotas, gzip {}; fake Devo: TLS with a required client certificate, on 127.0.0.1; both run in the benchmark process and share the machine's cores with what is measured",
            if args.gzip { "on" } else { "off" }
        ),
        "consumer and forwarder: the library run loops their binaries run, in this process; end to end: the `m365-devo run` binary; memory: the `m365-consumer` binary".into(),
        "consumer: clock from writing the blobs' URIs (after a warm-up blob per content type) to the last record produced; forwarder, rsyslog, devo-sdk and end to end: from the first line at the fake Devo to the last".into(),
        "MB/s counts the records' JSON bytes".into(),
    ]
}

fn report_sample(s: &Sample) {
    say(format!(
        "  {:.0} records/s, {:.1} MB/s ({} records in {:.2} s)",
        s.records_per_sec(),
        s.mb_per_sec(),
        s.records,
        s.elapsed.as_secs_f64()
    ));
}

fn fail(m: &mut Measurement, e: anyhow::Error) {
    let msg = format!("{e:#}");
    say(format!("  failed: {msg}"));
    m.failures.push(msg);
}

/// serde_json (Value and RawValue) and the splitter over the blob bodies, one core.
fn baselines(data: &Dataset, runs: usize, results: &mut Results) -> anyhow::Result<()> {
    let bodies = stages::bodies(data);
    type Bench = fn(&[Vec<u8>], &Dataset) -> anyhow::Result<Sample>;
    let benches: [(&str, &str, Bench); 3] = [
        (
            "serde/value",
            "serde_json → Vec<Value> (the limit), 1 core",
            stages::serde_value_run,
        ),
        (
            "serde/raw",
            "serde_json → Vec<&RawValue>, 1 core",
            stages::serde_raw_run,
        ),
        (
            "splitter/-",
            "consumer splitter alone, 1 core",
            stages::splitter_run,
        ),
    ];
    for (key, label, f) in benches {
        let mut m = Measurement::new(key, label, "—");
        for i in 0..runs {
            say(format!("{label}, run {}/{runs}", i + 1));
            match f(&bodies, data) {
                Ok(s) => {
                    report_sample(&s);
                    m.samples.push(s);
                }
                Err(e) => fail(&mut m, e),
            }
        }
        results.measurements.push(m);
    }
    Ok(())
}

/// devo-sdk's Sender on the first `--sdk-records` records.
async fn devo_sdk(
    args: &Args,
    data: &Dataset,
    devo: &DevoRig,
    work: &Path,
    runs: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut m = Measurement::new(
        "devo-sdk/-",
        "devo-sdk Sender (Python) → TLS → fake Devo",
        "—",
    );
    let Some(python) = &args.python else {
        m.failures
            .push("no Python with devo-sdk given (--python); skipped".into());
        results.measurements.push(m);
        return Ok(());
    };
    let lines = work.join("devo-sdk-lines.tsv");
    let counts = external::write_sdk_lines(data, args.sdk_records, &lines)?;
    m.note = Some(format!(
        "devo-sdk 7 `Sender.send` per record, {} records per run; timed from the first line at the fake Devo to the last",
        counts.0
    ));
    let script = std::fs::canonicalize(&args.sdk_script)
        .with_context(|| format!("finding {}", args.sdk_script.display()))?;
    for i in 0..runs {
        say(format!("devo-sdk, run {}/{runs}", i + 1));
        match external::devo_sdk_run(python, &script, &lines, counts, devo, work).await {
            Ok(s) => {
                report_sample(&s);
                m.samples.push(s);
            }
            Err(e) => fail(&mut m, e),
        }
    }
    results.measurements.push(m);
    Ok(())
}

/// Peak RSS of the consumer binary per blob size.
async fn memory(
    args: &Args,
    generator: &mut Generator,
    broker: &Broker,
    sim: &StageSim,
    work: &Path,
    runs: usize,
    results: &mut Results,
) {
    let sizes = args.memory_mb();
    let Some(&largest) = sizes.iter().max() else {
        return;
    };
    say(format!(
        "generating a {largest} MB blob for the memory measurement"
    ));
    let big = match generator.blob_of_size(largest * 1_000_000) {
        Ok(b) => b,
        Err(e) => {
            results
                .notes
                .push(format!("memory measurement skipped: {e:#}"));
            return;
        }
    };
    for mb in sizes {
        let blob = prefix_blob(&big, mb * 1_000_000);
        let mut point = MemoryPoint {
            blob_bytes: blob.body().len() as u64,
            records: blob.records.len() as u64,
            peaks: Vec::new(),
            failures: Vec::new(),
        };
        for i in 0..runs {
            say(format!(
                "consumer memory, {mb} MB blob, run {}/{runs}",
                i + 1
            ));
            match external::memory_run(&args.bin_dir, broker, sim, &blob, work).await {
                Ok(peak) => {
                    say(format!("  peak RSS {:.1} MB", peak as f64 / 1e6));
                    point.peaks.push(peak);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    say(format!("  failed: {msg}"));
                    point.failures.push(msg);
                }
            }
            // Let the broker's memory of the previous blob settle before the next run.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        results.memory.push(point);
    }
}

/// The leading records of `big` whose body is at least `bytes` (all of it if smaller).
fn prefix_blob(big: &Blob, bytes: u64) -> Blob {
    let mut size = 2u64;
    let mut n = 0;
    for r in &big.records {
        if size >= bytes {
            break;
        }
        size += r.json.len() as u64 + 1;
        n += 1;
    }
    Blob {
        content_type: big.content_type,
        records: big.records[..n].to_vec(),
    }
}
