//! The short chaos variant for CI: the three stage binaries, m365-sim and its own tansu
//! broker as separate processes; one trial of every fault kind (SIGKILL + restart of each
//! stage, broker restart, fake Devo outage, API throttle and 500 bursts, token expiry, blob
//! expiry); then nothing may be lost and every gap record must name a blob the simulator
//! really expired. The driver's table goes to stderr whatever the outcome; the watchdog lines
//! in it list what the driver did about tansu's own failures (none of them an injected fault).
//!
//! Needs tansu (it starts its own on a free port with its own sqlite file, since it must
//! restart it): skipped, with the reason printed, when no `tansu` binary is found and
//! `M365_TEST_KAFKA` is unset; when a broker is promised (`M365_TEST_KAFKA` set, or CI) a
//! missing tansu fails the test instead.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use m365_chaos::procs::find_tansu;
use m365_chaos::{ChaosOptions, FaultKind, run};

/// Builds the four binaries the driver runs (a no-op when they are up to date): `cargo test
/// -p m365-chaos` alone builds only this crate's targets.
fn build_binaries() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "m365-producer",
            "-p",
            "m365-consumer",
            "-p",
            "m365-forwarder",
            "-p",
            "m365-sim",
            "--bins",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the stage binaries failed");
    // This test runs from target/<profile>/deps; the binaries are one folder up.
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

// Proves the pipeline loses nothing through one trial of every fault kind, and that every
// gap record it reports names a blob the simulator expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_once_loses_nothing() {
    let tansu = match find_tansu(None) {
        Ok(t) => t,
        Err(e) => {
            if std::env::var_os("M365_TEST_KAFKA").is_some()
                || std::env::var("CI").is_ok_and(|v| v == "true")
            {
                panic!("the chaos test needs the tansu binary: {e}");
            }
            eprintln!("skipped: the chaos test needs the tansu broker ({e})");
            return;
        }
    };
    let bin_dir = build_binaries();
    let out = tempfile::tempdir().expect("temp dir");
    let seed = std::env::var("M365_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xc4a05);
    let mut opts = ChaosOptions::new(seed, FaultKind::ALL.len(), &out.path().join("run"));
    opts.records_per_minute = 120.0;
    opts.history_hours = 0.1;
    opts.bin_dir = Some(bin_dir);
    opts.broker_bin = Some(tansu);
    opts.drain_timeout = Duration::from_secs(600);
    opts.drain_idle_timeout = Duration::from_secs(180);
    // The producer's coordination mode: `none` (one producer runs every stream) until its
    // `group` mode is settled; M365_PRODUCER_COORDINATION overrides.
    opts.producer_coordination =
        Some(std::env::var("M365_PRODUCER_COORDINATION").unwrap_or_else(|_| "none".to_owned()));
    let report = run(&opts).await;
    let passed = report.as_ref().is_ok_and(|r| r.passed());
    if !passed {
        // Keep the logs, configuration and received events for the investigation.
        eprintln!("chaos run files kept in {}", out.keep().display());
    }
    let report = report.expect("the chaos run completes");
    // Straight to stderr, past the test harness's capture: the table shows on success too.
    let _ = writeln!(std::io::stderr(), "{report}");
    assert_eq!(report.trial_count(), FaultKind::ALL.len() as u64);
    assert!(
        FaultKind::ALL
            .iter()
            .all(|k| report.trials.get(k).copied().unwrap_or(0) == 1),
        "one trial of each kind: {:?}",
        report.trials
    );
    assert!(report.records > 0, "records flowed");
    assert_eq!(report.lost, 0, "lost records: {:?}", report.diagnosis);
    assert!(
        report.gaps_invalid.is_empty(),
        "gap records not matching an expired blob: {:?}",
        report.gaps_invalid
    );
    assert_eq!(report.bogus, 0, "records the tenant never published");
}
