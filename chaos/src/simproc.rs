//! The `m365-sim` process of a run (fake tenant + fake Devo + control API) and a client of
//! its control API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use m365_sim::control::{DevoStatus, FaultBurst};
use m365_sim::tenant::Truth;
use serde::Deserialize;

/// Errors of the simulator process and its control API.
#[derive(Debug, thiserror::Error)]
pub enum SimProcError {
    /// It could not be started.
    #[error("starting m365-sim: {0}")]
    Spawn(#[source] std::io::Error),
    /// It ended or printed something else before its ready line.
    #[error("m365-sim did not print its ready line ({0}); see {1}")]
    NotReady(String, String),
    /// A control request failed.
    #[error("control API {what}: {source}")]
    Control {
        /// The request.
        what: &'static str,
        /// Cause.
        source: reqwest::Error,
    },
}

/// The ready line's fields this driver uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// Base URL of the tenant API and token endpoints.
    pub base_url: String,
    /// Audience of the tokens.
    pub resource: String,
    /// The tenant's CA (PEM file).
    pub ca_pem: PathBuf,
    /// Control API URL.
    pub control_url: String,
    /// The fake Devo.
    pub devo: ReadyDevo,
}

/// The fake Devo part of the ready line.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadyDevo {
    /// TLS syslog port.
    pub tls_port: u16,
    /// Where received events are written, one file per tag.
    pub out_dir: PathBuf,
    /// CA of the fake Devo (the forwarder's chain file).
    pub ca_pem: PathBuf,
    /// Client certificate for the forwarder.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The tenant id.
    pub tenant: String,
    /// Seed of its content and faults.
    pub seed: u64,
    /// Generated records per minute.
    pub records_per_minute: f64,
    /// Hours of history present at start.
    pub history_hours: f64,
    /// Seconds between blobs of one content type.
    pub blob_interval_secs: u64,
    /// Token lifetime.
    pub token_lifetime_secs: u64,
    /// Share of generated blobs repeating a record of the previous one.
    pub duplicate_record_fraction: f64,
}

/// The running simulator.
#[derive(Debug)]
pub struct SimProcess {
    child: Child,
    /// What it announced.
    pub ready: Ready,
    log: PathBuf,
}

impl SimProcess {
    /// Starts `bin` with certificates and received events under `dir`, its log in
    /// `log_dir/sim.log`, and waits for its ready line.
    pub fn start(
        bin: &Path,
        dir: &Path,
        log_dir: &Path,
        opts: &SimOptions,
    ) -> Result<SimProcess, SimProcError> {
        let log = log_dir.join("sim.log");
        let log_file = std::fs::File::create(&log).map_err(SimProcError::Spawn)?;
        let mut child = Command::new(bin)
            .arg("--tenant")
            .arg(&opts.tenant)
            .arg("--subscribed")
            .arg("--seed")
            .arg(opts.seed.to_string())
            .arg("--records-per-minute")
            .arg(opts.records_per_minute.to_string())
            .arg("--history-hours")
            .arg(opts.history_hours.to_string())
            .arg("--blob-interval-secs")
            .arg(opts.blob_interval_secs.to_string())
            .arg("--token-lifetime-secs")
            .arg(opts.token_lifetime_secs.to_string())
            .arg("--duplicate-record-fraction")
            .arg(opts.duplicate_record_fraction.to_string())
            .arg("--cert-dir")
            .arg(dir.join("sim-certs"))
            .arg("--control")
            .arg("--devo")
            .arg("--devo-no-tcp")
            .arg("--devo-no-http")
            .arg("--devo-out")
            .arg(dir.join("devo-received"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(SimProcError::Spawn)?;
        let not_ready = |why: String| SimProcError::NotReady(why, log.display().to_string());
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(not_ready("no stdout".into()));
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let ready = match read {
            Ok(n) if n > 0 => serde_json::from_str::<Ready>(&line)
                .map_err(|e| not_ready(format!("unexpected line {line:?}: {e}"))),
            Ok(_) => Err(not_ready("it ended".into())),
            Err(e) => Err(not_ready(e.to_string())),
        };
        match ready {
            Ok(ready) => Ok(SimProcess { child, ready, log }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// If it ended on its own, how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGTERM (it flushes the received-event files), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Client of the simulator's control API.
#[derive(Debug, Clone)]
pub struct Control {
    http: reqwest::Client,
    base: String,
}

impl Control {
    /// A client of the API at `base` (`http://127.0.0.1:port`).
    pub fn new(base: &str) -> Control {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Control {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn post(
        &self,
        what: &'static str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), SimProcError> {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| SimProcError::Control { what, source })?;
        Ok(())
    }

    /// Sets fault rates, optionally for a while.
    pub async fn burst(&self, burst: &FaultBurst) -> Result<(), SimProcError> {
        let body = serde_json::to_value(burst).unwrap_or_default();
        self.post("POST /faults", "/faults", body).await
    }

    /// Expires every token issued so far.
    pub async fn expire_tokens(&self) -> Result<(), SimProcError> {
        self.post(
            "POST /tokens/expire",
            "/tokens/expire",
            serde_json::json!({}),
        )
        .await
    }

    /// Makes the next `count` listed blobs expire right after their listing.
    pub async fn expire_next_listed(&self, count: u32) -> Result<(), SimProcError> {
        self.post(
            "POST /blobs/expire-next-listed",
            "/blobs/expire-next-listed",
            serde_json::json!({"count": count}),
        )
        .await
    }

    /// The fake Devo stops listening.
    pub async fn devo_stop(&self) -> Result<(), SimProcError> {
        self.post("POST /devo/stop", "/devo/stop", serde_json::json!({}))
            .await
    }

    /// The fake Devo listens again.
    pub async fn devo_resume(&self) -> Result<(), SimProcError> {
        self.post("POST /devo/resume", "/devo/resume", serde_json::json!({}))
            .await
    }

    /// The fake Devo's counters.
    pub async fn devo_stats(&self) -> Result<DevoStatus, SimProcError> {
        let what = "GET /devo/stats";
        self.http
            .get(format!("{}/devo/stats", self.base))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| SimProcError::Control { what, source })?
            .json()
            .await
            .map_err(|source| SimProcError::Control { what, source })
    }

    /// The tenant's ground truth.
    pub async fn truth(&self) -> Result<Truth, SimProcError> {
        let what = "GET /truth";
        self.http
            .get(format!("{}/truth", self.base))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| SimProcError::Control { what, source })?
            .json()
            .await
            .map_err(|source| SimProcError::Control { what, source })
    }
}
